"""The optimizer wrapper constructor of mmcvt's configs: no weight decay on
norms, biases, depthwise convs and the cls token, decided by module type
over the whole model; the backbone's lr multiplier; and optional layer-wise
lr decay, with the depths that the backbone gives.

Why not upstream's: mmengine's ``DefaultOptimWrapperConstructor`` gives a
parameter that a custom key matches that key's ``lr_mult`` and
``decay_mult`` *in place of* ``norm_decay_mult``, ``bias_decay_mult`` and
``dwconv_decay_mult``, so that the recipes' custom key ``'backbone'``
(``lr_mult=0.1``) puts weight decay back on every norm and bias of the
backbone, unless one more key names each of them, block by block, for one
arch. MMDetection's and MMSegmentation's
``LearningRateDecayOptimizerConstructor`` know ConvNeXt (and BEiT, MAE) by
their class names. Here every rule multiplies the others, and the depths
come from the backbone's ``get_layer_depth``, MMPretrain's protocol.
"""
import inspect
from numbers import Real

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                               OPTIMIZERS)
from mmengine.utils.dl_utils import is_norm

from mmcvt.models.backbones.cvt import DECAY_TYPES, CvTStage

BACKBONE = 'backbone'
PREFIX = BACKBONE + '.'
OPTIONS = ('custom_keys', 'backbone_lr_mult', 'layer_decay_rate', 'decay_type')
_BUILT_IN = ('norms, biases, depthwise convs and the cls token take no weight '
             'decay here whatever the config says: remove it')
_UNSUPPORTED = 'not supported here: remove it, or use custom_keys'
# what DefaultOptimWrapperConstructor's options and MMDetection's layer decay
# options become here
REPLACED_OPTIONS = {
    'norm_decay_mult': _BUILT_IN,
    'bias_decay_mult': _BUILT_IN,
    'dwconv_decay_mult': _BUILT_IN,
    'flat_decay_mult': _UNSUPPORTED,
    'bias_lr_mult': _UNSUPPORTED,
    'dcn_offset_lr_mult': _UNSUPPORTED,
    'bypass_duplicate': 'a parameter shared by modules is added once here '
    'anyway: remove it',
    'decay_rate': 'use layer_decay_rate',
    'num_layers': 'the backbone gives the depths (get_layer_depth): remove it',
}


def takes_no_weight_decay(module, param_name):
    """Whether ``module``'s own parameter ``param_name`` trains without
    weight decay: the parameters of norms (mmengine's ``is_norm``: batch,
    instance, group and layer norms), biases, depthwise convs (a Conv2d with
    as many groups as input channels, as mmengine's ``dwconv_decay_mult``
    tells them) and the cls token of a CvT stage."""
    if is_norm(module) or param_name == 'bias':
        return True
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels:
        return True
    return isinstance(module, CvTStage) and param_name == 'cls_token'


def _is_number(value):
    return isinstance(value, Real) and not isinstance(value, bool)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CvTOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Builds the optimizer wrapper with these settings per parameter:

    - lr = ``optimizer.lr`` x lr_mult x ``layer_decay_rate`` ** (depth from
      the top), where lr_mult is the custom key's ``lr_mult`` times
      ``backbone_lr_mult`` for the backbone's parameters, and the depth
      from the top is ``num_layers - 1 - depth`` by the backbone's
      ``get_layer_depth``; 0 outside the backbone, whose lr is never
      decayed.
    - weight_decay = 0 for norms, biases, depthwise convs and the cls token
      (:func:`takes_no_weight_decay`), in the whole model, heads included;
      ``optimizer.weight_decay`` x the custom key's ``decay_mult`` for the
      rest.

    A custom key applies as in mmengine (the longest key in the parameter's
    name, then the first in alphabetical order), but its multipliers
    multiply the rules above instead of replacing them, and its other
    entries (``betas``, say) go into the parameter's group as they are.
    Parameters that do not require a gradient stay out of the optimizer, as
    with mmengine's constructor; those of equal settings and origin share a
    group, and the groups are logged as they are built.

    Args:
        optim_wrapper_cfg (dict): The optimizer wrapper's config, with its
            ``optimizer``, which must give ``lr``.
        paramwise_cfg (dict, optional): ``backbone_lr_mult`` (a number >= 0,
            default 1); ``layer_decay_rate`` (in (0, 1], default: no decay)
            and ``decay_type`` (``'layer_wise'``, the default, or
            ``'stage_wise'``; see :meth:`mmcvt.models.CvT.get_layer_depth`);
            ``custom_keys`` (as in mmengine). The model's backbone is its
            attribute ``backbone``.

    Example:
        >>> optim_wrapper = dict(
        >>>     type='OptimWrapper',
        >>>     constructor='CvTOptimWrapperConstructor',
        >>>     optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        >>>     paramwise_cfg=dict(layer_decay_rate=0.9))
    """

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        # ours first: the parent's checks of the options it knows would
        # tell less
        for option in paramwise_cfg if isinstance(paramwise_cfg, dict) else ():
            if option in REPLACED_OPTIONS:
                raise ValueError(
                    f'paramwise_cfg.{option} is not an option of '
                    f'CvTOptimWrapperConstructor: '
                    f'{REPLACED_OPTIONS[option]} (in a config that '
                    f'inherits it, paramwise_cfg=dict(_delete_=True, ...))')
            if option not in OPTIONS:
                raise ValueError(f'unknown paramwise_cfg option {option!r} '
                                 f'of CvTOptimWrapperConstructor; it takes '
                                 f'{OPTIONS}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_lr is None:
            raise ValueError(
                'CvTOptimWrapperConstructor needs the optimizer\'s lr '
                '(optim_wrapper.optimizer.lr), which its multipliers scale')
        cfg = self.paramwise_cfg
        self.custom_keys = dict(cfg.get('custom_keys', {}))
        for key, settings in self.custom_keys.items():
            if not isinstance(settings, dict):
                raise TypeError(f'custom_keys[{key!r}] must be a dict of '
                                f'settings, got {settings!r}')
            for mult in ('lr_mult', 'decay_mult'):
                if mult in settings and not (_is_number(settings[mult])
                                             and settings[mult] >= 0):
                    raise ValueError(
                        f'custom_keys[{key!r}][{mult!r}] must be a number '
                        f'>= 0, got {settings[mult]!r}')
        # longest first, then alphabetical: the key mmengine would pick
        self.sorted_keys = sorted(
            sorted(self.custom_keys), key=len, reverse=True)
        self.backbone_lr_mult = cfg.get('backbone_lr_mult', 1.)
        if not (_is_number(self.backbone_lr_mult)
                and self.backbone_lr_mult >= 0):
            raise ValueError(f'backbone_lr_mult must be a number >= 0, got '
                             f'{self.backbone_lr_mult!r}')
        self.layer_decay_rate = cfg.get('layer_decay_rate')
        if self.layer_decay_rate is not None and not (_is_number(
                self.layer_decay_rate) and 0 < self.layer_decay_rate <= 1):
            raise ValueError(f'layer_decay_rate must be a number in (0, 1], '
                             f'got {self.layer_decay_rate!r}')
        self.decay_type = cfg.get('decay_type', 'layer_wise')
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(f'unknown decay_type {self.decay_type!r}; '
                             f'choose one of {DECAY_TYPES}')
        if 'decay_type' in cfg and self.layer_decay_rate is None:
            raise ValueError(
                f'paramwise_cfg gives decay_type={self.decay_type!r} but no '
                f'layer_decay_rate, without which nothing is decayed: add '
                f'one, e.g. layer_decay_rate=0.9')
        # 1 without layer decay: every exponent is 0 then
        self.rate = 1. if self.layer_decay_rate is None else \
            self.layer_decay_rate

    def __call__(self, model):
        # DefaultOptimWrapperConstructor.__call__ builds the optimizer from
        # model.parameters() when paramwise_cfg is empty; the rules here
        # apply with any paramwise_cfg.
        if hasattr(model, 'module'):  # a model wrapper, as mmengine unwraps
            model = model.module
        params = []
        self.add_params(params, model)
        optimizer = OPTIMIZERS.build(dict(self.optimizer_cfg, params=params))
        optim_wrapper_cfg = dict(self.optim_wrapper_cfg)
        optim_wrapper_cfg.setdefault('type', 'OptimWrapper')
        return OPTIM_WRAPPERS.build(
            optim_wrapper_cfg, default_args=dict(optimizer=optimizer))

    def add_params(self, params, module, **kwargs):
        """Appends to ``params`` the groups of ``module``'s parameters, each
        parameter that requires a gradient in exactly one group.

        Args:
            params (list[dict]): The parameter groups, extended in place.
            module (nn.Module): The whole model: its ``backbone`` attribute
                is the backbone, and the names of the backbone's parameters
                start with ``'backbone.'``.
        """
        backbone = self._backbone_of(module)
        groups, names = {}, {}
        seen = set()
        for module_name, submodule in module.named_modules():
            for name, param in submodule.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                full_name = f'{module_name}.{name}' if module_name else name
                origin = (full_name.startswith(PREFIX),
                          self._depth_from_top(backbone, full_name),
                          self._custom_key_of(full_name),
                          not takes_no_weight_decay(submodule, name))
                if origin not in groups:
                    groups[origin] = dict(self._settings(*origin), params=[])
                    names[origin] = []
                groups[origin]['params'].append(param)
                names[origin].append(full_name)
        for i, origin in enumerate(groups):
            self._log_group(i, origin, groups[origin], names[origin])
        params.extend(groups.values())

    def _backbone_of(self, model):
        """The model's backbone; checks that it has what the options
        need."""
        backbone = getattr(model, BACKBONE, None)
        options = [
            o for o in ('backbone_lr_mult', 'layer_decay_rate')
            if o in self.paramwise_cfg
        ]
        if options and not isinstance(backbone, nn.Module):
            raise ValueError(f'paramwise_cfg gives {options}, but the model '
                             f'({type(model).__name__}) has no backbone '
                             f'(attribute "{BACKBONE}")')
        if self.layer_decay_rate is not None:
            self._check_layer_depth(backbone)
        if 'backbone_lr_mult' in self.paramwise_cfg:
            self._check_backbone_keys(model)
        return backbone

    def _check_layer_depth(self, backbone):
        get_layer_depth = getattr(backbone, 'get_layer_depth', None)
        if get_layer_depth is None:
            raise ValueError(
                f'layer_decay_rate needs a backbone that gives the depth of '
                f'each parameter by get_layer_depth(param_name, prefix), as '
                f'CvT and MMPretrain\'s backbones do; '
                f'{type(backbone).__name__} does not')
        if (self.decay_type != 'layer_wise' and 'decay_type'
                not in inspect.signature(get_layer_depth).parameters):
            raise ValueError(
                f'decay_type={self.decay_type!r} needs a get_layer_depth '
                f'that takes decay_type, as CvT\'s does; that of '
                f'{type(backbone).__name__} gives layer-wise depths only')

    def _check_backbone_keys(self, model):
        """A custom key that scales the lr of the whole backbone would
        multiply backbone_lr_mult: 0.1 x 0.1 for the recipes' 'backbone'
        key kept beside it."""
        names = [
            n for n, _ in model.named_parameters() if n.startswith(PREFIX)
        ]
        for key in self.sorted_keys:
            if names and 'lr_mult' in self.custom_keys[key] and all(
                    key in name for name in names):
                raise ValueError(
                    f'custom_keys[{key!r}] and backbone_lr_mult both scale '
                    f'the lr of the whole backbone, and their product would '
                    f'apply: keep backbone_lr_mult alone')

    def _depth_from_top(self, backbone, name):
        if self.layer_decay_rate is None or not name.startswith(PREFIX):
            return 0
        kwargs = {} if self.decay_type == 'layer_wise' else dict(
            decay_type=self.decay_type)
        depth, num_layers = backbone.get_layer_depth(name, PREFIX, **kwargs)
        if not 0 <= depth < num_layers:
            raise ValueError(f'{type(backbone).__name__}.get_layer_depth '
                             f'gives {name} depth {depth}, outside [0, '
                             f'{num_layers})')
        return num_layers - 1 - depth

    def _custom_key_of(self, name):
        return next((key for key in self.sorted_keys if key in name), None)

    def _lr_mult(self, in_backbone, custom_key):
        lr_mult = self.custom_keys.get(custom_key, {}).get('lr_mult', 1.)
        return lr_mult * self.backbone_lr_mult if in_backbone else lr_mult

    def _settings(self, in_backbone, depth_from_top, custom_key, decays):
        """The group settings of parameters of that origin."""
        custom = self.custom_keys.get(custom_key, {})
        settings = {
            k: v
            for k, v in custom.items() if k not in ('lr_mult', 'decay_mult')
        }
        settings['lr'] = self.base_lr * self._lr_mult(
            in_backbone, custom_key) * self.rate**depth_from_top
        if not decays:
            settings['weight_decay'] = 0.
        elif self.base_wd is not None:
            settings['weight_decay'] = self.base_wd * custom.get(
                'decay_mult', 1.)
        return settings

    def _log_group(self, index, origin, group, names):
        """One line per group: its lr as base x lr_mult x rate^(depth from
        the top), its weight decay and its parameters."""
        in_backbone, depth_from_top, custom_key, _ = origin
        lr_mult = self._lr_mult(in_backbone, custom_key)
        decay = group.get('weight_decay', 'the optimizer\'s')
        print_log(
            f'param group {index}: lr {group["lr"]!r} = {self.base_lr!r} x '
            f'{lr_mult!r} x {self.rate!r}^{depth_from_top}, weight_decay '
            f'{decay!r}; parameters ({len(names)}): {", ".join(names)}',
            logger='current')
