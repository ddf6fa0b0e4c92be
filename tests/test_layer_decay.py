"""CvTOptimWrapperConstructor (mmcvt.engine.optimizers) and
CvT.get_layer_depth: weight decay by module type over the whole model, the
backbone's lr multiplier, layer-wise and stage-wise lr decay; MMDetection's
constructor for ConvNeXt beside it; and the shipped configs: the CvT-13 and
CvT-21 ones with every parameter's lr and weight decay as they were before
the constructor, every one with other archs, and the CvT-W24 ones."""
import json
import re

import pytest
import torch
import torch.nn as nn
from mmdet.engine.optimizers.layer_decay_optimizer_constructor import (
    LearningRateDecayOptimizerConstructor, get_layer_id_for_convnext,
    get_stage_id_for_convnext)
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
from mmengine.registry import DATASETS, MODELS

from mmcvt.engine.optimizers import CvTOptimWrapperConstructor
from mmcvt.models import CvT
from mmcvt.models.backbones.cvt import DECAY_TYPES
from .tiny_models import write_tiny_config
from .utils import (REPO, TINY, is_weight_decay_free, load_repo_config,
                    load_tool, shapes_options)

train_tool = load_tool('train.py')

BASE_LR, BASE_WD = 1e-4, 0.05
MULT, RATE = 0.1, 0.75
# more blocks in every stage than the TINY arch
DEEPER = dict(embed_dims=[16, 32, 48], num_heads=[1, 2, 3], depths=[2, 3, 4])


class TinyDetector(nn.Module):
    """A CvT, a neck and a head, named as in MMDetection's detectors: a
    conv and a GroupNorm, a Linear and an embedding."""

    def __init__(self, arch=DEEPER, **cvt_kwargs):
        super().__init__()
        self.backbone = CvT(arch, **cvt_kwargs)
        self.neck = nn.Sequential(
            nn.Conv2d(arch['embed_dims'][-1], 8, 3), nn.GroupNorm(2, 8))
        self.head = nn.ModuleDict(
            dict(fc=nn.Linear(8, 4), query_embed=nn.Embedding(3, 8)))


def build(model, **paramwise_cfg):
    return build_optim_wrapper(
        model,
        dict(
            constructor='CvTOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
            paramwise_cfg=paramwise_cfg)).optimizer


def settings_by_name(model, optimizer):
    """The (lr, weight decay) of each of the model's parameters that the
    optimizer holds, by name."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    defaults = optimizer.defaults
    return {
        name: (group_of[id(param)].get('lr', defaults['lr']),
               group_of[id(param)].get('weight_decay',
                                       defaults['weight_decay']))
        for name, param in model.named_parameters() if id(param) in group_of
    }


def lrs_by_name(model, optimizer):
    return {n: s[0] for n, s in settings_by_name(model, optimizer).items()}


def depth_from_top(name, depths, decay_type):
    """The spec of layer decay for a parameter of CvT (its name without the
    'backbone.' prefix): how many depths it lies below the top. The stem
    lies lowest; each block ('layer_wise') or stage ('stage_wise') one
    above the one before; the embedding that opens a later stage, and its
    cls token, with the stage's first block; the output norms at the top."""
    parts = name.split('.')
    units = sum(depths) if decay_type == 'layer_wise' else len(depths)
    if parts[0] != 'stages':
        return 0
    stage = int(parts[1])
    if stage == 0 and parts[2] == 'patch_embed':
        return units + 1
    if decay_type == 'stage_wise':
        return units - stage
    block = int(parts[3]) if parts[2] == 'blocks' else 0
    return units - sum(depths[:stage]) - block


# ---- CvT.get_layer_depth ----------------------------------------------------
@pytest.mark.parametrize('name, layer_wise, stage_wise', [
    ('backbone.stages.0.patch_embed.projection.weight', 0, 0),
    ('backbone.stages.0.blocks.0.norm1.weight', 1, 1),
    ('backbone.stages.1.patch_embed.norm.weight', 2, 2),
    ('backbone.stages.1.blocks.1.attn.proj.weight', 3, 2),
    ('backbone.stages.2.cls_token', 4, 3),
    ('backbone.stages.2.blocks.9.ffn.layers.1.bias', 13, 3),
    ('backbone.norm2.weight', 14, 4),
    ('neck.fpn_convs.0.conv.weight', 14, 4),
])
def test_cvt13_counts_depths_from_the_stem_to_the_heads(
        name, layer_wise, stage_wise):
    # CvT-13: 1, 2 and 10 blocks; 13 + 2 depths layer-wise, 3 + 2 by stage
    cvt13 = CvT('13', with_cls_token=True)
    assert cvt13.get_layer_depth(name, 'backbone.') == (layer_wise, 15)
    assert cvt13.get_layer_depth(
        name, 'backbone.', decay_type='stage_wise') == (stage_wise, 5)


def test_a_name_that_is_no_parameter_of_cvt_is_an_error():
    with pytest.raises(ValueError, match='no parameter of CvT'):
        CvT(TINY).get_layer_depth('backbone.head.weight', 'backbone.')


# ---- groups -----------------------------------------------------------------
def test_every_trainable_parameter_is_in_exactly_one_group():
    model = TinyDetector(frozen_stages=0)
    optimizer = build(model, backbone_lr_mult=MULT, layer_decay_rate=RATE)
    grouped = [id(p) for g in optimizer.param_groups for p in g['params']]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    # the frozen stage 0 stays out, as with mmengine's constructor
    assert len(trainable) < len(list(model.parameters()))


def test_a_parameter_shared_by_two_modules_is_in_one_group():
    model = TinyDetector()
    model.tied = nn.Linear(8, 4)
    model.tied.weight = model.head.fc.weight
    optimizer = build(model)
    grouped = [id(p) for g in optimizer.param_groups for p in g['params']]
    assert grouped.count(id(model.head.fc.weight)) == 1


def logged_lrs(log):
    """Each parameter's lr in the groups that a log lists."""
    return {
        name: float(lr)
        for lr, names in re.findall(r'param group \d+: lr (\S+) .*: (.*)', log)
        for name in names.split(', ')
    }


def test_the_groups_are_logged_with_their_lrs_and_parameters(tmp_path):
    log = tmp_path / 'optimizer.log'
    # the current logger, which the constructor logs to
    MMLogger.get_instance('test_layer_decay', log_file=str(log))
    model = TinyDetector()
    optimizer = build(model, layer_decay_rate=RATE)
    assert logged_lrs(log.read_text()) == lrs_by_name(model, optimizer)


# ---- lr ---------------------------------------------------------------------
def decayed_lrs(decay_type):
    """The lr of each parameter of a TinyDetector, its backbone at MULT
    and decayed at RATE."""
    model = TinyDetector()
    return lrs_by_name(
        model,
        build(
            model,
            backbone_lr_mult=MULT,
            layer_decay_rate=RATE,
            decay_type=decay_type))


@pytest.mark.parametrize('decay_type', DECAY_TYPES)
def test_each_blocks_lr_is_base_x_mult_x_rate_to_its_depth_from_the_top(
        decay_type):
    lr_of = decayed_lrs(decay_type)
    depths = DEEPER['depths']
    for stage, depth in enumerate(depths):
        for block in range(depth):
            if decay_type == 'layer_wise':
                from_top = sum(depths) - sum(depths[:stage]) - block
            else:
                from_top = len(depths) - stage
            prefix = f'backbone.stages.{stage}.blocks.{block}.'
            lrs = {lr for name, lr in lr_of.items() if name.startswith(prefix)}
            assert lrs == {BASE_LR * MULT * RATE**from_top}, prefix


@pytest.mark.parametrize('decay_type', DECAY_TYPES)
def test_the_stem_is_decayed_the_most_and_the_heads_stay_at_one(decay_type):
    lr_of = decayed_lrs(decay_type)
    depths = DEEPER['depths']
    units = sum(depths) if decay_type == 'layer_wise' else len(depths)
    stem = {
        lr
        for name, lr in lr_of.items()
        if name.startswith('backbone.stages.0.patch_embed.')
    }
    assert stem == {BASE_LR * MULT * RATE**(units + 1)}
    assert min(lr_of.values()) in stem
    assert {
        lr
        for name, lr in lr_of.items() if not name.startswith('backbone.')
    } == {BASE_LR}
    # the output norms, on the maps the neck takes: at the top of the backbone
    assert {
        lr
        for name, lr in lr_of.items() if name.startswith('backbone.norm')
    } == {BASE_LR * MULT}


def test_a_stages_embedding_and_cls_token_take_its_first_blocks_lr():
    model = TinyDetector(with_cls_token=True)
    lr_of = lrs_by_name(model, build(model, layer_decay_rate=RATE))
    for stage in (1, 2):
        first_block = lr_of[f'backbone.stages.{stage}.blocks.0.norm1.weight']
        opening = [
            lr for name, lr in lr_of.items()
            if name.startswith(f'backbone.stages.{stage}.patch_embed.')
        ]
        if stage == 2:
            opening.append(lr_of['backbone.stages.2.cls_token'])
        assert set(opening) == {first_block}


def test_without_layer_decay_the_backbone_takes_its_mult_alone():
    model = TinyDetector()
    lr_of = lrs_by_name(model, build(model, backbone_lr_mult=MULT))
    assert {lr
            for name, lr in lr_of.items()
            if name.startswith('backbone.')} == {BASE_LR * MULT}


# ---- weight decay -----------------------------------------------------------
@pytest.mark.parametrize(
    'paramwise_cfg', [
        dict(),
        dict(backbone_lr_mult=MULT, layer_decay_rate=RATE),
        dict(custom_keys={'backbone': dict(decay_mult=1.)}),
    ],
    ids=['plain', 'decayed', 'custom key'])
def test_norms_biases_depthwise_convs_and_the_cls_token_take_no_weight_decay(
        paramwise_cfg):
    model = TinyDetector(with_cls_token=True)
    decay_of = {
        name: s[1]
        for name, s in settings_by_name(model, build(model, **
                                                     paramwise_cfg)).items()
    }
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full_name = f'{module_name}.{name}'
            expected = 0. if is_weight_decay_free(module, name) else BASE_WD
            assert decay_of[full_name] == expected, full_name


def test_custom_keys_multiply_the_rules_instead_of_replacing_them():
    model = TinyDetector()
    settings = settings_by_name(
        model,
        build(
            model,
            backbone_lr_mult=MULT,
            custom_keys={'backbone.stages.1': dict(lr_mult=3.,
                                                   decay_mult=2.)}))
    block = 'backbone.stages.1.blocks.0'
    lr = BASE_LR * (3. * MULT)  # the key's lr_mult times the backbone's
    assert settings[f'{block}.norm1.weight'] == (lr, 0.)
    assert settings[f'{block}.attn.proj.bias'] == (lr, 0.)
    assert settings[f'{block}.attn.proj.weight'] == (lr, BASE_WD * 2.)


def test_a_recipes_custom_keys_still_apply_to_its_heads():
    model = TinyDetector()
    optimizer = build(
        model,
        backbone_lr_mult=MULT,
        custom_keys={
            'query_embed': dict(lr_mult=1., decay_mult=0., betas=(0.8, 0.9))
        })
    embedding = model.head.query_embed.weight
    group, = (
        g for g in optimizer.param_groups
        if any(p is embedding for p in g['params']))
    assert (group['lr'], group['weight_decay'],
            group['betas']) == (BASE_LR, 0., (0.8, 0.9))


# ---- errors -----------------------------------------------------------------
@pytest.mark.parametrize('paramwise_cfg, message', [
    (dict(norm_decay_mult=0.), 'take no weight decay here'),
    (dict(bypass_duplicate=True), 'added once'),
    (dict(decay_rate=0.9), 'use layer_decay_rate'),
    (dict(num_layers=12), 'the backbone gives the depths'),
    (dict(layer_decay=0.9), 'unknown paramwise_cfg option'),
    (dict(layer_decay_rate=1.5), r'in \(0, 1\]'),
    (dict(layer_decay_rate=0), r'in \(0, 1\]'),
    (dict(layer_decay_rate=0.9,
          decay_type='block_wise'), 'unknown decay_type'),
    (dict(decay_type='stage_wise'), 'no layer_decay_rate'),
    (dict(backbone_lr_mult=-0.1), 'backbone_lr_mult must be'),
    (dict(custom_keys={'head': 0.1}), 'must be a dict'),
    (dict(custom_keys={'head': dict(lr_mult='0.1')}), 'must be a number'),
])
def test_a_bad_paramwise_cfg_is_an_error_that_says_what_to_do(
        paramwise_cfg, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CvTOptimWrapperConstructor(
            dict(
                optimizer=dict(type='AdamW', lr=BASE_LR,
                               weight_decay=BASE_WD)), paramwise_cfg)


def test_an_optimizer_without_lr_is_an_error():
    with pytest.raises(ValueError, match='optimizer.lr'):
        CvTOptimWrapperConstructor(dict(optimizer=dict(type='AdamW')))


def test_backbone_lr_mult_and_a_custom_key_on_the_backbone_is_an_error():
    with pytest.raises(ValueError, match='keep backbone_lr_mult alone'):
        build(
            TinyDetector(),
            backbone_lr_mult=MULT,
            custom_keys={'backbone': dict(lr_mult=MULT)})


def test_the_backbone_options_need_a_backbone():
    with pytest.raises(ValueError, match='has no backbone'):
        build(nn.Sequential(nn.Linear(2, 2)), backbone_lr_mult=MULT)


def test_layer_decay_needs_a_backbone_that_gives_depths():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match='get_layer_depth'):
        build(model, layer_decay_rate=RATE)


class LayerWiseOnly(nn.Linear):
    """A backbone with MMPretrain's get_layer_depth, which has no
    decay_type."""

    def get_layer_depth(self, param_name, prefix=''):
        return (0, 2) if param_name.startswith(prefix) else (1, 2)


def test_layer_wise_decay_takes_mmpretrains_get_layer_depth():
    model = nn.Module()
    model.backbone = LayerWiseOnly(2, 2)
    assert set(
        lrs_by_name(model, build(
            model, layer_decay_rate=RATE)).values()) == {BASE_LR * RATE}


def test_stage_wise_decay_needs_a_get_layer_depth_that_takes_decay_type():
    model = nn.Module()
    model.backbone = LayerWiseOnly(2, 2)
    with pytest.raises(ValueError, match='gives layer-wise depths only'):
        build(model, layer_decay_rate=RATE, decay_type='stage_wise')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_both_libraries_configs_find_the_constructor(scope):
    registry = __import__(f'{scope}.registry', fromlist=['registry'])
    assert registry.OPTIM_WRAPPER_CONSTRUCTORS.get(
        'CvTOptimWrapperConstructor') is CvTOptimWrapperConstructor


# ---- beside MMDetection's constructor for ConvNeXt --------------------------
class ConvNeXtBlock(nn.Module):

    def __init__(self, channels):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(
            channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise_conv1 = nn.Linear(channels, 4 * channels)
        self.pointwise_conv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.ones(channels))  # layer scale


class ToyConvNeXt(nn.Module):
    """ConvNeXt-T's depths and parameter names at a few channels, under the
    class name that MMDetection's constructor looks for; its depths are
    MMDetection's, given in MMPretrain's protocol."""
    depths = (2, 2, 6, 2)
    num_layers = 6  # MMDetection's option for these depths

    def __init__(self):
        super().__init__()
        widths = (4, 8, 16, 32)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.LayerNorm(4))] + [
                nn.Sequential(nn.LayerNorm(c), nn.Conv2d(c, c_next, 2, 2))
                for c, c_next in zip(widths, widths[1:])
            ])
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(c) for _ in range(depth)))
            for c, depth in zip(widths, self.depths))

    def get_layer_depth(self, param_name, prefix='', decay_type='layer_wise'):
        num_layers = self.num_layers + 2
        if decay_type == 'layer_wise':
            depth = get_layer_id_for_convnext(param_name, self.num_layers)
        else:
            depth = get_stage_id_for_convnext(param_name, num_layers)
        return depth, num_layers


def convnext_settings(decay_type):
    """Each parameter's (lr, weight decay) of a ConvNeXt and a head, by
    MMDetection's constructor and by ours, at the same rate."""
    model = nn.Module()
    model.backbone = ToyConvNeXt()
    model.head = nn.Linear(32, 4)
    optim_wrapper_cfg = dict(
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))
    mmdet = LearningRateDecayOptimizerConstructor(
        optim_wrapper_cfg,
        dict(
            decay_rate=RATE,
            decay_type=decay_type,
            num_layers=ToyConvNeXt.num_layers))
    ours = CvTOptimWrapperConstructor(
        optim_wrapper_cfg, dict(layer_decay_rate=RATE, decay_type=decay_type))
    return model, (
        settings_by_name(model,
                         constructor(model).optimizer)
        for constructor in (mmdet, ours))


@pytest.mark.parametrize('decay_type', DECAY_TYPES)
def test_the_same_rate_gives_mmdetections_lrs_for_convnext(decay_type):
    _, (mmdet, ours) = convnext_settings(decay_type)
    assert {
        n: s[0]
        for n, s in ours.items()
    } == {
        n: s[0]
        for n, s in mmdet.items()
    }


def test_weight_decay_is_mmdetections_but_on_depthwise_convs_and_layer_scales(
):
    # MMDetection tells no-decay parameters by shape: 1-D ones (norms,
    # biases, and ConvNeXt's layer scales) take none, depthwise conv
    # weights (4-D) take it
    model, (mmdet, ours) = convnext_settings('layer_wise')
    differ = {n for n in ours if ours[n][1] != mmdet[n][1]}
    assert differ == {
        n
        for n, _ in model.named_parameters()
        if n.endswith(('depthwise_conv.weight', '.gamma'))
    }
    assert all(ours[n][1] == (0. if n.endswith('weight') else BASE_WD)
               for n in differ)


# ---- in a training ----------------------------------------------------------
@pytest.fixture(scope='module')
def decayed_run(shapes_seg, tmp_path_factory):
    """A short training of the tiny UperNet demo (3 iterations, the lr
    warming up) with layer-wise decay, and its log."""
    work_dir = tmp_path_factory.mktemp('layer_decay_run')
    config = write_tiny_config(
        'upernet',
        work_dir,
        extra=f'optim_wrapper = dict(optimizer=dict(lr={BASE_LR}), '
        f'paramwise_cfg=dict(backbone_lr_mult={MULT}, '
        f'layer_decay_rate={RATE}))\n'
        'param_scheduler = [dict(type="LinearLR", start_factor=0.1, '
        'by_epoch=False, begin=0, end=3)]\n')
    train_tool.main([str(config)] + shapes_options(
        shapes_seg,
        work_dir,
        'layer_decay_run',
        **{
            'train_cfg.max_iters': '3',
            'train_cfg.val_begin': '4',  # no validation
            'default_hooks.logger.interval': '1',
            'default_hooks.checkpoint.interval': '3',
        }))
    log, = work_dir.glob('*/*.log')
    scalars, = work_dir.glob('*/vis_data/scalars.json')
    return log.read_text(), [json.loads(line) for line in open(scalars)]


@pytest.mark.slow
def test_the_lrs_logged_at_the_start_of_a_training_are_the_specs(decayed_run):
    log, _ = decayed_run
    logged = logged_lrs(log)
    backbone = {
        n[len('backbone.'):]: lr
        for n, lr in logged.items() if n.startswith('backbone.')
    }
    assert backbone and backbone == {
        name:
        BASE_LR * MULT *
        RATE**depth_from_top(name, TINY['depths'], 'layer_wise')
        for name in backbone
    }


@pytest.mark.slow
def test_each_iterations_logged_lr_is_the_stems_scale_of_its_base_lr(
        decayed_run):
    # mmengine logs the first group's lr, the stem's, beside the schedule's
    _, scalars = decayed_run
    steps = [s for s in scalars if 'lr' in s]
    stem_scale = MULT * RATE**(sum(TINY['depths']) + 1)
    assert len(steps) == 3
    assert len({s['base_lr'] for s in steps}) == 3  # warming up
    for step in steps:
        assert step['lr'] == pytest.approx(step['base_lr'] * stem_scale)


# ---- the shipped configs ----------------------------------------------------
def shipped_configs():
    return sorted(
        str(p.relative_to(REPO))
        for p in [*REPO.glob('configs/*.py'), *REPO.glob('configs/demo/*.py')])


W24_CONFIGS = [p for p in shipped_configs() if 'cvtw24' in p]
CVT13_CVT21_CONFIGS = [p for p in shipped_configs() if p not in W24_CONFIGS]
# The optimizers of the CvT-13 and CvT-21 configs before
# CvTOptimWrapperConstructor, as mmengine's DefaultOptimWrapperConstructor
# built them: (lr, weight decay, paramwise_cfg) of each config.
TYPE_RULES = dict(norm_decay_mult=0., bias_decay_mult=0., dwconv_decay_mult=0.)
BLOCK_PARTS_WITHOUT_DECAY = ('norm', 'attn.conv_proj', 'attn.proj_q.bias',
                             'attn.proj_kv.bias', 'attn.proj.bias',
                             'ffn.layers.0.0.bias', 'ffn.layers.1.bias')


def legacy_backbone_tenth(**recipe_keys):
    """The backbone at 0.1x the lr, by the recipe's custom key 'backbone'
    and one key per norm, bias and projection of CvT-21's blocks, as
    configs/_base_/cvt_four_levels.py had them."""
    tenth, tenth_no_decay = (dict(lr_mult=0.1, decay_mult=d) for d in (1., 0.))
    keys = {'backbone': tenth, 'backbone.norm': tenth_no_decay}
    keys.update({
        f'backbone.stages.{stage}.patch_embed.{part}': tenth_no_decay
        for stage in range(3)
        for part in ('norm', 'projection.bias')
    })
    keys.update({
        f'backbone.stages.{stage}.blocks.{block}.{part}':
        tenth_no_decay
        for stage, depth in enumerate((1, 4, 16))
        for block in range(depth)
        for part in BLOCK_PARTS_WITHOUT_DECAY
    })
    return dict(TYPE_RULES, custom_keys=dict(keys, **recipe_keys))


EMBEDDINGS = {
    key: dict(lr_mult=1., decay_mult=0.)
    for key in ('query_embed', 'query_feat', 'level_embed')
}
TWO_STAGE_AND_RETINANET = ('maskrcnn_cvt13_coco', 'maskrcnn_cvt21_coco',
                           'maskrcnn_cvt13_ms-3x_coco',
                           'maskrcnn_cvt13_compiled_coco',
                           'cascade-maskrcnn_cvt13_ms-3x_coco',
                           'retinanet_cvt13_coco')
LEGACY = {
    f'configs/{name}.py': (1e-4, 0.05, TYPE_RULES)
    for name in TWO_STAGE_AND_RETINANET
}
LEGACY.update({
    'configs/demo/maskrcnn_cvt13_shapes.py': (4e-4, 0.05, TYPE_RULES),
    'configs/dino-4scale_cvt13_coco.py': (1e-4, 1e-4, legacy_backbone_tenth()),
    'configs/demo/upernet_cvt13_shapes.py': (4e-4, 0.01, TYPE_RULES),
})
for arch in ('cvt13', 'cvt21'):
    LEGACY.update({
        f'configs/mask2former_{arch}_coco.py':
        (1e-4, 0.05, legacy_backbone_tenth(**EMBEDDINGS)),
        f'configs/mask2former_{arch}_ade20k.py':
        (1e-4, 0.05, legacy_backbone_tenth(**EMBEDDINGS)),
        f'configs/semfpn_{arch}_ade20k.py': (1e-4, 1e-4, TYPE_RULES),
        f'configs/upernet_{arch}_ade20k.py': (6e-5, 0.01, TYPE_RULES),
    })


def test_every_shipped_config_builds_its_optimizer_with_the_constructor():
    constructors = {
        path: load_repo_config(path).optim_wrapper.get('constructor')
        for path in shipped_configs()
    }
    assert set(constructors.values()) == {'CvTOptimWrapperConstructor'}


@pytest.mark.parametrize('path', CVT13_CVT21_CONFIGS)
def test_cvt13_and_cvt21_configs_keep_every_parameters_lr_and_weight_decay(
        path):
    assert path in LEGACY, f'no optimizer from before the constructor for ' \
        f'{path}'
    lr, weight_decay, paramwise_cfg = LEGACY[path]
    cfg = load_repo_config(path)
    model = MODELS.build(cfg.model)
    now = settings_by_name(
        model,
        build_optim_wrapper(model, cfg.optim_wrapper).optimizer)
    legacy = DefaultOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=lr, weight_decay=weight_decay)),
        paramwise_cfg)
    before = settings_by_name(model, legacy(model).optimizer)
    assert now.keys() == before.keys()
    changed = {n: (before[n], now[n]) for n in now if now[n] != before[n]}
    assert not changed


# what each recipe gives the backbone: its lr multiplier, and its layer decay
BACKBONE_LR_MULT = {
    'configs/dino-4scale_cvt13_coco.py': 0.1,
    **{
        f'configs/mask2former_{arch}_{data}.py': 0.1
        for arch in ('cvt13', 'cvt21')
        for data in ('coco', 'ade20k')
    },
}
LAYER_DECAY = {
    'configs/cascade-maskrcnn_cvtw24_ms-3x_coco.py': (0.9, 'layer_wise'),
    'configs/upernet_cvtw24_ade20k.py': (0.95, 'layer_wise'),
}
DEEPEST = dict(embed_dims=[16, 32, 48], num_heads=[1, 2, 3], depths=[3, 6, 24])


@pytest.fixture(scope='module')
def backbone_of():
    """A CvT with only what a config's optimizer needs of its backbone: the
    arch and the stages it returns, whose output norms it has; each built
    once in the module (a CvT-W24 takes seconds)."""
    built = {}

    def backbone(arch_name, out_indices):
        key = arch_name, tuple(out_indices)
        if key not in built:
            arch = DEEPEST if arch_name == 'deepest' else arch_name
            built[key] = CvT(arch, out_indices=out_indices)
        return built[key]

    return backbone


@pytest.mark.parametrize('arch', ['w24', 'deepest'])
@pytest.mark.parametrize('path', shipped_configs())
def test_every_config_is_right_with_any_arch(path, arch, backbone_of):
    cfg = load_repo_config(path)
    # the parameters under the names they have in the detector or segmentor
    model = nn.Module()
    model.backbone = backbone_of(arch, cfg.model.backbone.out_indices)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    settings = settings_by_name(model, optimizer)
    base_lr = optimizer.defaults['lr']
    base_decay = optimizer.defaults['weight_decay']
    lr_mult = BACKBONE_LR_MULT.get(path, 1.)
    rate, decay_type = LAYER_DECAY.get(path, (1., 'layer_wise'))
    depths = [spec['depth'] for spec in model.backbone.stage_specs]
    for module_name, module in model.backbone.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full_name = f'{module_name}.{name}' if module_name else name
            from_top = depth_from_top(full_name, depths, decay_type)
            expected = (base_lr * lr_mult * rate**from_top, 0.
                        if is_weight_decay_free(module, name) else base_decay)
            assert settings[f'backbone.{full_name}'] == expected, full_name


# ---- the CvT-W24 configs ----------------------------------------------------
# what a W24 config's model takes from its backbone, set for a TINY one
TINY_CHANNELS = {
    'configs/cascade-maskrcnn_cvtw24_ms-3x_coco.py':
    dict(neck=dict(in_channels=TINY['embed_dims'])),
    'configs/upernet_cvtw24_ade20k.py':
    dict(
        decode_head=dict(in_channels=TINY['embed_dims']),
        auxiliary_head=dict(in_channels=TINY['embed_dims'][-1])),
}


def test_the_w24_configs_are_those_of_the_tests():
    assert sorted(W24_CONFIGS) == sorted(TINY_CHANNELS) == sorted(LAYER_DECAY)


@pytest.mark.slow  # a CvT-W24 detector or segmentor: 10 to 15 s each
@pytest.mark.parametrize('path', W24_CONFIGS)
def test_a_w24_config_builds_its_arch_and_its_heads_take_its_maps(path):
    cfg = load_repo_config(path)
    cfg.model.backbone.init_cfg = None  # no network for hf:// here
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    assert [(s['embed_dims'], s['depth'])
            for s in model.backbone.stage_specs] == [(192, 2), (768, 2),
                                                     (1024, 20)]
    with torch.no_grad():
        maps = model.extract_feat(torch.rand(1, 3, 64, 64))
        if cfg.default_scope == 'mmseg':
            maps = model.decode_head(maps), model.auxiliary_head(maps)
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.slow
@pytest.mark.parametrize('path', W24_CONFIGS)
def test_a_w24_config_takes_a_finite_training_step_with_a_tiny_arch(
        path, shapes, shapes_seg):
    cfg = load_repo_config(path)
    cfg.merge_from_dict(
        dict(model=dict(TINY_CHANNELS[path], backbone=dict(init_cfg=None))))
    cfg.model.backbone.arch = TINY
    if cfg.default_scope == 'mmdet':
        demo, root = 'configs/demo/maskrcnn_cvt13_shapes.py', shapes
        # 64 RoIs per image for each R-CNN stage, not 512: a CPU step
        for stage in cfg.model.train_cfg.rcnn:
            stage.sampler.num = 64
    else:
        demo, root = 'configs/demo/upernet_cvt13_shapes.py', shapes_seg
        cfg.model.data_preprocessor.size = (128, 128)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = lrs_by_name(model, optim_wrapper.optimizer)
    assert lr_of['backbone.stages.0.patch_embed.projection.weight'] < lr_of[
        'backbone.stages.2.blocks.1.attn.proj.weight']
    dataset = DATASETS.build(
        dict(
            load_repo_config(demo).train_dataloader.dataset,
            data_root=f'{root}/'))
    batch = pseudo_collate([dataset[i] for i in range(2)])
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v) for v in losses.values())
