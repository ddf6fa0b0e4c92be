"""CvT's arch: what each stage is made of, the paper's presets, and the map
sizes that follow from them.

An arch is a preset name or a dict of per-stage values, in MMDetection's
words (``embed_dims``, ``depths``, ``num_heads``, ...); :func:`parse_arch`
turns either into one spec per stage, keyed by the argument names of the
stage modules (``depth``, ``patch_size``, ...). :data:`STAGE_FIELDS` is the
one table of those names, of the official config's names for them and of
their defaults.
"""
import itertools
from numbers import Integral, Real
from typing import Any, Callable, NamedTuple, Optional

PROJ_METHODS = ('dw_bn', 'avg', 'linear')
REQUIRED = None  # the default of a field that an arch dict must give


def is_int(value):
    """An int that is not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _int_at_least(least):
    return lambda value: is_int(value) and value >= least, \
        f'an int >= {least}'


_POSITIVE = (lambda value: isinstance(value, Real) and value > 0,
             'a number > 0')
_BOOL = (lambda value: isinstance(value, bool), 'True or False')


class StageField(NamedTuple):
    """One setting of a stage.

    Attributes:
        key (str): Its name in an arch dict, whose value is a list with one
            entry per stage, or one value for every stage.
        official (str): Its name in the ``MODEL.SPEC`` of the official
            code's configs.
        default: Its value for an arch dict without ``key``: one value for
            every stage, or a list. :data:`REQUIRED` for none.
        valid (tuple[Callable, str], optional): Whether a stage's value is
            valid, and what a valid one is, for the error. None where
            :func:`_check_stage_spec` checks it with the stage's other
            values.
        arg (str, optional): The stage modules' argument, where its name is
            not ``key`` (a singular, for one stage's value).
    """
    key: str
    official: str
    default: Any
    valid: Optional[tuple[Callable[[Any], bool], str]]
    arg: Optional[str] = None

    @property
    def stage_arg(self):
        return self.arg or self.key


STAGE_FIELDS = (
    StageField('embed_dims', 'DIM_EMBED', REQUIRED, _int_at_least(1)),
    StageField('depths', 'DEPTH', REQUIRED, _int_at_least(1), 'depth'),
    StageField('num_heads', 'NUM_HEADS', REQUIRED, _int_at_least(1)),
    StageField('patch_sizes', 'PATCH_SIZE', [7, 3, 3], _int_at_least(1),
               'patch_size'),
    StageField('patch_strides', 'PATCH_STRIDE', [4, 2, 2], _int_at_least(1),
               'patch_stride'),
    StageField('patch_paddings', 'PATCH_PADDING', [2, 1, 1], _int_at_least(0),
               'patch_padding'),
    StageField('mlp_ratios', 'MLP_RATIO', 4., _POSITIVE, 'mlp_ratio'),
    StageField('qkv_bias', 'QKV_BIAS', True, _BOOL),
    StageField('proj_methods', 'QKV_PROJ_METHOD', 'dw_bn', None,
               'proj_method'),
    StageField('kernel_qkv', 'KERNEL_QKV', 3, _int_at_least(1)),
    StageField('stride_q', 'STRIDE_Q', 1, _int_at_least(1)),
    StageField('stride_kv', 'STRIDE_KV', 2, _int_at_least(1)),
    StageField('padding_q', 'PADDING_Q', 1, _int_at_least(0)),
    StageField('padding_kv', 'PADDING_KV', 1, _int_at_least(0)),
)
REQUIRED_ARCH_KEYS = tuple(f.key for f in STAGE_FIELDS
                           if f.default is REQUIRED)
# The paper's models; the fields they leave out take their defaults.
# yapf: disable
ARCH_ZOO = {
    '13': dict(embed_dims=[64, 192, 384], num_heads=[1, 3, 6],
               depths=[1, 2, 10]),
    '21': dict(embed_dims=[64, 192, 384], num_heads=[1, 3, 6],
               depths=[1, 4, 16]),
    'w24': dict(embed_dims=[192, 768, 1024], num_heads=[3, 12, 16],
                depths=[2, 2, 20]),
}
# yapf: enable


def _preset(name):
    """The preset dict of a name such as '13', 13, 'cvt-13' or 'CvT_13'."""
    key = str(name).lower().replace('_', '-')
    key = key[len('cvt'):].lstrip('-') if key.startswith('cvt') else key
    if key not in ARCH_ZOO:
        raise ValueError(
            f'unknown CvT arch {name!r}; choose one of {sorted(ARCH_ZOO)} '
            f'(or e.g. "cvt-13"), or pass a dict with '
            f'{list(REQUIRED_ARCH_KEYS)}')
    return ARCH_ZOO[key]


def _per_stage(field, value, num_stages):
    """One value per stage from a list of them or a single shared value."""
    key = field.key
    if field.default is REQUIRED and not isinstance(value, (list, tuple)):
        raise ValueError(f'arch[{key!r}] must be a list, one entry per '
                         f'stage, got {value!r}')
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f'arch[{key!r}] has {len(value)} entries, but '
                             f'the arch has {num_stages} stages')
        return list(value)
    return [value] * num_stages


def _check_stage_spec(i, spec):
    for field in STAGE_FIELDS:
        if field.valid is None:
            continue
        (is_valid, valid), arg = field.valid, field.stage_arg
        if not is_valid(spec[arg]):
            raise ValueError(f'stage {i}: {arg} must be {valid}, got '
                             f'{spec[arg]!r}')
    dims, heads = spec['embed_dims'], spec['num_heads']
    if dims % heads:
        raise ValueError(f'stage {i}: num_heads={heads} does not divide '
                         f'embed_dims={dims}')
    method = spec['proj_method']
    if method not in PROJ_METHODS:
        raise ValueError(f'stage {i}: unknown projection method {method!r}; '
                         f'choose one of {PROJ_METHODS}')
    # The residual around the attention needs as many queries as tokens;
    # only 'dw_bn' convolves q.
    k, s, p = spec['kernel_qkv'], spec['stride_q'], spec['padding_q']
    if method == 'dw_bn' and (s != 1 or 2 * p != k - 1):
        raise ValueError(
            f'stage {i}: the q projection (kernel {k}, stride {s}, padding '
            f'{p}) changes the map size, which breaks the residual; use '
            f'stride_q=1 and padding_q={(k - 1) // 2}')


def parse_arch(arch):
    """The stages of a preset or an arch dict, checked.

    Args:
        arch (str | int | dict): A preset of :data:`ARCH_ZOO` ('13', 13,
            'cvt-13', ...) or a dict with per-stage lists ``embed_dims``,
            ``depths`` and ``num_heads`` and, optionally, any other key of
            :data:`STAGE_FIELDS` as a list or a single value.

    Returns:
        list[dict]: One spec per stage, whose keys are the stage modules'
        argument names (``depth``, ``kernel_qkv``, ...).
    """
    if is_int(arch) or isinstance(arch, str):
        arch = _preset(arch)
    elif not isinstance(arch, dict):
        raise TypeError(f'arch must be a preset name ({sorted(ARCH_ZOO)}) '
                        f'or a dict, got {arch!r} of type '
                        f'{type(arch).__name__}')
    missing = [k for k in REQUIRED_ARCH_KEYS if k not in arch]
    if missing:
        raise ValueError(f'arch dict lacks {missing}; it needs '
                         f'{list(REQUIRED_ARCH_KEYS)} as lists')
    unknown = set(arch) - {f.key for f in STAGE_FIELDS}
    if unknown:
        optional = [f.key for f in STAGE_FIELDS if f.default is not REQUIRED]
        raise ValueError(f'arch dict has unknown keys {sorted(unknown)}; '
                         f'known optional keys: {optional}')
    if not isinstance(arch['depths'], (list, tuple)) or not arch['depths']:
        raise ValueError(f'arch["depths"] must be a non-empty list, one '
                         f'entry per stage, got {arch["depths"]!r}')
    num_stages = len(arch['depths'])
    values = {
        f.stage_arg: _per_stage(f, arch.get(f.key, f.default), num_stages)
        for f in STAGE_FIELDS
    }
    specs = [{
        arg: per_stage[i]
        for arg, per_stage in values.items()
    } for i in range(num_stages)]
    for i, spec in enumerate(specs):
        _check_stage_spec(i, spec)
    return specs


def arch_from_official_spec(spec):
    """An arch dict from the ``MODEL.SPEC`` of an official config
    (``DIM_EMBED``, ``DEPTH``, ``NUM_HEADS``, ...), for :func:`parse_arch`.

    Only the arch is read. The official per-stage drop rates, ``CLS_TOKEN``
    and ``INIT`` are :class:`CvT`'s ``drop_rate``, ``attn_drop_rate``,
    ``drop_path_rate``, ``with_cls_token`` and ``init_cfg``; the other
    keys (``NUM_STAGES``, ``POS_EMBED``, ...) are left alone.
    """
    return {
        f.key: spec[f.official]
        for f in STAGE_FIELDS if f.official in spec
    }


def conv_out_size(size, kernel, stride, padding):
    """Output size of a convolution along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def stage_sizes(specs, size):
    """Token-map sizes along one image dimension of ``size`` pixels: for
    each stage, the map size and the size of its subsampled k/v map."""
    sizes = []
    for spec in specs:
        size = conv_out_size(size, spec['patch_size'], spec['patch_stride'],
                             spec['patch_padding'])
        kv_size = size if spec['proj_method'] == 'linear' else \
            conv_out_size(size, spec['kernel_qkv'], spec['stride_kv'],
                          spec['padding_kv'])
        sizes.append((size, kv_size))
    return sizes


def min_input_size(specs):
    """Smallest image side for which every stage keeps a token."""
    for size in itertools.count(1):
        if all(min(s) >= 1 for s in stage_sizes(specs, size)):
            return size
