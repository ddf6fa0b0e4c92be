"""Reading CvT checkpoints and renaming their keys to this project's CvT.

Formats, told apart by their keys, never by the file name:

- 'official': the official release (``stage0.patch_embed.proj.weight``,
  ``stage2.cls_token``, ``norm.*``, ``head.*``);
- 'hf': transformers' ``CvtForImageClassification`` or bare ``CvtModel``
  (``[cvt.]encoder.stages.0.embedding.convolution_embeddings...``,
  ``layernorm.*``, ``classifier.*``), the same weights under a 1:1 renaming
  of the official ones;
- 'mmcvt': this project's own :class:`CvT` (``stages.0.patch_embed...``),
  bare or under ``backbone.`` in a detector or segmentor checkpoint.

Files (.pth, .bin, .safetensors, a transformers directory, hf:// and URLs)
are read weights-only by :func:`mmcvt.fileio.load_checkpoint_file`, whatever
mmengine's ``CheckpointLoader`` has registered.
"""
import re

import torch
from mmengine.logging import print_log

from ...fileio import kind_mismatches, load_checkpoint_file, name_keys

# official -> mmcvt; the rest of the names are the same in both
_OFFICIAL_RENAMES = (
    (re.compile(r'^stage(\d+)\.'), r'stages.\1.'),
    (re.compile(r'\.patch_embed\.proj\.'), '.patch_embed.projection.'),
    (re.compile(r'\.mlp\.fc1\.'), '.ffn.layers.0.0.'),
    (re.compile(r'\.mlp\.fc2\.'), '.ffn.layers.1.'),
)
# transformers -> official, applied in order ('attention.output.dense' must
# be renamed before the MLP's 'output.dense'); ([qkv])(?:uery|ey|alue)
# keeps the first letter of query, key and value
_QKV = r'([qkv])(?:uery|ey|alue)'
_HF_RENAMES = (
    (re.compile(r'^(?:cvt\.)?encoder\.stages\.(\d+)\.'), r'stage\1.'),
    (re.compile(r'\.embedding\.convolution_embeddings\.projection\.'),
     '.patch_embed.proj.'),
    (re.compile(r'\.embedding\.convolution_embeddings\.normalization\.'),
     '.patch_embed.norm.'),
    (re.compile(r'\.layers\.(\d+)\.'), r'.blocks.\1.'),
    (re.compile(r'\.attention\.attention\.convolution_projection_' + _QKV +
                r'\.convolution_projection\.convolution\.'),
     r'.attn.conv_proj_\1.conv.'),
    (re.compile(r'\.attention\.attention\.convolution_projection_' + _QKV +
                r'\.convolution_projection\.normalization\.'),
     r'.attn.conv_proj_\1.bn.'),
    (re.compile(r'\.attention\.attention\.projection_' + _QKV + r'\.'),
     r'.attn.proj_\1.'),
    (re.compile(r'\.attention\.output\.dense\.'), '.attn.proj.'),
    (re.compile(r'\.intermediate\.dense\.'), '.mlp.fc1.'),
    (re.compile(r'\.output\.dense\.'), '.mlp.fc2.'),
    (re.compile(r'\.layernorm_before\.'), '.norm1.'),
    (re.compile(r'\.layernorm_after\.'), '.norm2.'),
    (re.compile(r'^layernorm\.'), 'norm.'),
    (re.compile(r'^classifier\.'), 'head.'),
)
# BatchNorm's state, as a state_dict names it: not parameters
BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
_HF_STAGE = _HF_RENAMES[0][0]
_OFFICIAL_STAGE = re.compile(r'^stage(\d+)\.')
_OUT_NORM = re.compile(r'^norm\d+\.')

# The separate k and v projections of the official code, each fused into
# ConvAttention's: the depthwise conv's filters and the BatchNorm's channels
# interleaved (k's channel c at 2c, v's at 2c + 1), the Linears stacked (k's
# rows, then v's).
_KV_INTERLEAVED = ('conv_proj_{}.conv.weight', 'conv_proj_{}.bn.weight',
                   'conv_proj_{}.bn.bias', 'conv_proj_{}.bn.running_mean',
                   'conv_proj_{}.bn.running_var')
_KV_STACKED = ('proj_{}.weight', 'proj_{}.bias')
_KV_SHARED = ('conv_proj_{}.bn.num_batches_tracked', )  # the same count
_SEPARATE_KV = re.compile(r'^(.*\.attn\.)(?:conv_)?proj_[kv]\.')


def fuse_kv_projection(state_dict, prefix):
    """Fuses, in place, the separate k and v projections of the attention
    whose keys start with ``prefix`` into ConvAttention's ``conv_proj_kv``
    and ``proj_kv``. Keys that are already fused, or a k without its v, are
    left as they are (a strict load then names them)."""
    for parts, fuse in ((_KV_INTERLEAVED, lambda k, v: torch.stack(
        (k, v), 1).flatten(0, 1)), (_KV_STACKED, lambda k, v: torch.cat(
            (k, v))), (_KV_SHARED, lambda k, v: k)):
        for part in parts:
            k, v = (prefix + part.format(name) for name in 'kv')
            if k in state_dict and v in state_dict:
                state_dict[prefix + part.format('kv')] = fuse(
                    state_dict.pop(k), state_dict.pop(v))


def fuse_kv_projections(state_dict):
    """:func:`fuse_kv_projection` for every attention of a state_dict with
    mmcvt names. Pure: returns a new dict."""
    fused = dict(state_dict)
    for prefix in {
            m.group(1)
            for m in map(_SEPARATE_KV.match, state_dict) if m
    }:
        fuse_kv_projection(fused, prefix)
    return fused


def _rename(state_dict, renames):
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def hf_to_official(state_dict):
    """transformers CvT keys -> official keys. Pure."""
    return _rename(state_dict, _HF_RENAMES)


def convert_official(state_dict):
    """Official CvT keys -> mmcvt keys, k and v fused.

    ``norm.*``, the classifier's final norm, becomes ``norm{last}.*``, the
    name of the last stage's output norm; ``head.*`` is kept as it is, for
    :func:`fit_state_dict` to drop. Pure: returns a new dict holding the
    same tensors.
    """
    last = max(
        int(m.group(1)) for m in map(_OFFICIAL_STAGE.match, state_dict) if m)
    final_norm = (re.compile(r'^norm\.'), f'norm{last}.')
    return fuse_kv_projections(
        _rename(state_dict, (final_norm, ) + _OFFICIAL_RENAMES))


def convert_hf(state_dict):
    """transformers CvT keys -> mmcvt keys, through the official ones."""
    return convert_official(hf_to_official(state_dict))


_CONVERTERS = {
    'official': convert_official,
    'hf': convert_hf,
    'mmcvt': dict,  # already in mmcvt's names
}


def detect_format(state_dict):
    """'official', 'hf' or 'mmcvt', from the keys."""
    for fmt, stage_key in (('official', _OFFICIAL_STAGE), ('hf', _HF_STAGE),
                           ('mmcvt', re.compile(r'^stages\.\d+\.'))):
        if any(stage_key.match(key) for key in state_dict):
            return fmt
    raise ValueError('not a CvT checkpoint: no key looks like the official '
                     '"stage0.patch_embed.proj.weight", transformers\' '
                     '"cvt.encoder.stages.0.embedding..." or mmcvt\'s '
                     f'"stages.0.patch_embed.projection.weight"; keys: '
                     f'{name_keys(list(state_dict))}')


def _strip_prefix(state_dict, prefix):
    return {
        k[len(prefix):]: v
        for k, v in state_dict.items() if k.startswith(prefix)
    }


def extract_state_dict(checkpoint):
    """The backbone's state_dict from a loaded checkpoint object.

    Unwraps ``state_dict`` or ``model``; keeps only the ``backbone.`` part of
    a detector or segmentor checkpoint; strips DataParallel's ``module.``.
    """
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint, dict) and isinstance(
                checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(
            isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError('expected a state_dict of tensors, plain or under '
                         '"state_dict" or "model"')
    if checkpoint and all(k.startswith('module.') for k in checkpoint):
        checkpoint = _strip_prefix(checkpoint, 'module.')
    if any(k.startswith('backbone.') for k in checkpoint):
        checkpoint = _strip_prefix(checkpoint, 'backbone.')
    return checkpoint


def read_checkpoint(filename):
    """Loads a checkpoint file or URL on the CPU; errors name the file."""
    try:
        return load_checkpoint_file(filename, map_location='cpu')
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f'CvT checkpoint {filename!r} does not exist: {e}') from e
    except Exception as e:
        raise RuntimeError(f'cannot read CvT checkpoint {filename!r}: '
                           f'{type(e).__name__}: {e}') from e


def load_cvt_state_dict(filename):
    """Reads a checkpoint in any supported format.

    Returns:
        tuple[dict, str]: The state_dict with mmcvt key names, and the
        format it came in.
    """
    try:
        state_dict = extract_state_dict(read_checkpoint(filename))
        fmt = detect_format(state_dict)
    except ValueError as e:
        raise ValueError(f'CvT checkpoint {filename!r}: {e}') from e
    return _CONVERTERS[fmt](state_dict), fmt


def fit_state_dict(state_dict, model):
    """Matches a state_dict with mmcvt names against a :class:`CvT`.

    Only these keys may differ between the two:

    - a classifier's ``head.*``: dropped;
    - the last stage's cls token: dropped when ``model`` has none;
    - output norms ``norm{i}.*``: they exist for dense prediction only. One
      the checkpoint lacks keeps its fresh initialisation; one the model
      lacks (a classifier's final norm, say, with ``out_norm=False``) is
      dropped.

    Anything else missing, unexpected, of another shape or holding another
    kind of number (integers for floating point) is an error that names the
    keys: a backbone that silently stays random is the worst
    outcome.

    Returns:
        tuple[dict, list, list]: What to load, the dropped keys, and the
        output-norm keys left to their initialisation.

    Raises:
        ValueError: On any other difference.
    """
    own = model.state_dict()
    cls_token_key = f'stages.{model.num_stages - 1}.cls_token'

    def droppable(key):
        return (key == cls_token_key or key.startswith('head.')
                or _OUT_NORM.match(key))

    unexpected = [k for k in state_dict if k not in own]
    dropped = [k for k in unexpected if droppable(k)]
    unexpected = [k for k in unexpected if not droppable(k)]
    missing = [k for k in own if k not in state_dict]
    fresh = [k for k in missing if _OUT_NORM.match(k)]
    missing = [k for k in missing if k not in fresh]
    mismatched = [
        f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    ]
    other_kinds = kind_mismatches(state_dict, own)
    problems = [
        f'{what} {name_keys(keys)}'
        for what, keys in (('missing keys', missing), ('unexpected keys',
                                                       unexpected),
                           ('shape mismatches', mismatched),
                           ('integers for floating point or the reverse',
                            other_kinds)) if keys
    ]
    if problems:
        raise ValueError(
            f'it does not fit this CvT (embed_dims='
            f'{[s["embed_dims"] for s in model.stage_specs]}, depths='
            f'{[s["depth"] for s in model.stage_specs]}, with_cls_token='
            f'{model.with_cls_token}): ' + '; '.join(problems) +
            '. Check `arch`, `with_cls_token` and the checkpoint.')
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    return kept, dropped, fresh


def load_pretrained(model, filename):
    """Loads a checkpoint file or URL in any supported format into a
    :class:`CvT`, under the rules of :func:`fit_state_dict`."""
    state_dict, fmt = load_cvt_state_dict(filename)
    try:
        kept, dropped, fresh = fit_state_dict(state_dict, model)
    except ValueError as e:
        raise ValueError(
            f'CvT checkpoint {filename!r} ({fmt} format): {e}') from e
    # fit_state_dict has checked every key; only `fresh` ones are missing
    model.load_state_dict(kept, strict=False)
    print_log(
        f'loaded {len(kept)} tensors from {filename} ({fmt} format)' +
        (f'; dropped {name_keys(dropped)}' if dropped else '') +
        (f'; output norms left to their initialisation {name_keys(fresh)}'
         if fresh else ''),
        logger='current')
