"""Converts a CvT checkpoint to mmcvt's format.

    python tools/model_converters/cvt2mmcvt.py SRC DST [--arch 13] \
        [--safetensors]

SRC is anything ``init_cfg`` reads: an official release file, transformers
weights (.bin, .safetensors or a save_pretrained directory), an ``hf://``
repository, a URL, or an mmcvt, detector or segmentor checkpoint. DST gets
the backbone's state_dict with mmcvt names: a .pth file, or safetensors with
``--safetensors``. Nothing is written when the weights do not fit the arch.
"""
import argparse
import json
import os.path as osp
import sys

import torch

from mmcvt.fileio.checkpoint_loader import HF_WEIGHTS_NAMES
from mmcvt.models import CvT, parse_arch
from mmcvt.models.backbones.cvt_checkpoint import (BN_BUFFERS, fit_state_dict,
                                                   load_cvt_state_dict)
from mmcvt.utils.output_paths import output_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument('src', help='checkpoint to convert')
    parser.add_argument('dst', type=output_file, help='file to write')
    parser.add_argument(
        '--arch',
        help="a preset ('13', '21', 'w24') or a JSON arch dict; by default "
        'the preset whose shapes the weights have')
    parser.add_argument(
        '--safetensors',
        action='store_true',
        help='write safetensors instead of a torch .pth file')
    return parser.parse_args(argv)


def stage_shapes(state_dict):
    """(embed_dims, depths) as the tensors of an mmcvt state_dict show."""
    embed_dims, depths = [], []
    while f'stages.{len(embed_dims)}.patch_embed.projection.weight' in \
            state_dict:
        i = len(embed_dims)
        embed_dims.append(
            state_dict[f'stages.{i}.patch_embed.projection.weight'].shape[0])
        depths.append(
            len({
                k.split('.')[3]
                for k in state_dict if k.startswith(f'stages.{i}.blocks.')
            }))
    return embed_dims, depths


def detect_arch(state_dict):
    """The preset whose widths and depths the weights have."""
    embed_dims, depths = stage_shapes(state_dict)
    for name, arch in CvT.arch_zoo.items():
        if arch['embed_dims'] == embed_dims and arch['depths'] == depths:
            return name
    raise ValueError(f'the weights (embed_dims={embed_dims}, depths={depths}'
                     f') match no preset of {sorted(CvT.arch_zoo)}; pass '
                     f'--arch with a JSON arch dict')


def arch_from_argument(arch):
    return json.loads(arch) if arch.lstrip().startswith('{') else arch


def is_read_from(dst, src):
    """Whether writing ``dst`` would overwrite ``src``, or the weights file
    of ``src`` when it is a transformers directory, under any path."""
    if not osp.exists(dst) or '://' in src:
        return False
    read = [src] + ([osp.join(src, name)
                     for name in HF_WEIGHTS_NAMES] if osp.isdir(src) else [])
    return any(osp.exists(path) and osp.samefile(path, dst) for path in read)


def convert(src, dst, arch=None, safetensors=False):
    """Converts ``src`` to ``dst``; returns the written state_dict.

    Raises:
        ValueError: When the weights do not fit the arch, or ``dst`` is the
            file being converted; nothing is written then.
    """
    if is_read_from(dst, src):
        raise ValueError(f'{dst} is the checkpoint being converted: writing '
                         f'it would overwrite the input. Give another DST.')
    state_dict, fmt = load_cvt_state_dict(src)
    arch_source = 'given' if arch else 'detected from the shapes'
    arch = arch_from_argument(arch) if arch else detect_arch(state_dict)
    last = len(parse_arch(arch)) - 1
    # keep the cls token when there is one: a model without it drops it on
    # loading, one with it needs it
    has_cls_token = f'stages.{last}.cls_token' in state_dict
    model = CvT(arch, with_cls_token=has_cls_token)
    kept, dropped, _ = fit_state_dict(state_dict, model)

    kept = {k: v.contiguous() for k, v in kept.items()}
    if safetensors:
        from safetensors.torch import save_file
        save_file(kept, dst, metadata={'format': 'pt'})
    else:
        torch.save(kept, dst)

    params = sum(v.numel() for k, v in kept.items()
                 if not k.endswith(BN_BUFFERS))
    print(f'source:  {src} ({fmt} format)')
    print(f'arch:    {arch} ({arch_source})')
    print(f'written: {dst} ({"safetensors" if safetensors else "torch"}): '
          f'{len(kept)} tensors, {params:,} parameters without BN statistics'
          f'{", with the cls token" if has_cls_token else ""}')
    print(f'dropped: {", ".join(sorted(dropped)) if dropped else "nothing"}')
    return kept


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args.src, args.dst, args.arch, args.safetensors)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(
            f'error: {e}\nnothing was written to {args.dst}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
