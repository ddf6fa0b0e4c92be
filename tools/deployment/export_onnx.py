"""Exports a config's model to ONNX, with dynamic batch, height and width,
and checks the graph in onnxruntime against PyTorch.

    python tools/deployment/export_onnx.py configs/upernet_cvt13_ade20k.py \
        CHECKPOINT --out upernet.onnx --verify
    python tools/deployment/export_onnx.py configs/maskrcnn_cvt13_coco.py \
        CHECKPOINT --out cvt13_fpn.onnx --verify

The graph takes ``image``, (batch, 3, height, width) float32, RGB, 0 to
255; the model's normalisation is inside it. A segmentor is exported whole,
to ``seg_logits`` at the input size. A detector is not: its heads run
mmcv's RoIAlign and NMS, which ONNX carries only as custom ops, so its
backbone and neck are exported instead, to their feature maps; so is
Mask2Former, whose pixel decoder runs mmcv's deformable attention (``--part``
picks; see mmcvt/deployment/onnx_export.py). ``--verify`` runs both at
sizes other than the export size and prints the relative error.
Needs the onnx extra: ``pip install -e '.[onnx]'``.
"""
import argparse
import importlib.util
import os
import re
import sys
import time

import mmengine
from mmengine.config import DictAction
from mmengine.runner import load_checkpoint

import mmcvt  # noqa: F401  registers CvT and the checkpoint loaders
from mmcvt.analysis import build_random_model, config_from, positive_int
from mmcvt.deployment.onnx_export import (DYNAMIC_AXES, PARTS, default_part,
                                          export_onnx, raw_image_module,
                                          verify, whole_model_problem)
from mmcvt.engine import explain_checkpoint_mismatch
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.input_paths import checkpoint_path, config_name
from mmcvt.utils.output_paths import output_file

EXAMPLE_BATCH = 2  # not 1: the exporter may fix a size that is 1


def shape_arg(text):
    """'BxCxHxW', e.g. '1x3x96x160'."""
    match = re.fullmatch(r'(\d+)x3x(\d+)x(\d+)', text)
    if not match or 0 in map(int, match.groups()):
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected BATCHx3xHEIGHTxWIDTH, e.g. 1x3x96x160')
    return tuple(int(v) for v in (match[1], 3, match[2], match[3]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument(
        'config',
        type=config_name,
        help='a config file, or mmdet::/mmseg:: and a config path')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        type=checkpoint_path,
        help='loaded strictly; without it the graph has the config\'s random '
        'initial weights, which only tries the export')
    parser.add_argument(
        '--out', required=True, type=output_file, help='the .onnx file')
    parser.add_argument(
        '--part',
        choices=PARTS,
        help='model: a whole segmentor; neck: backbone and neck; backbone. '
        'Default: the whole model for a segmentor that runs no mmcv op, '
        'else the backbone and neck (or the backbone alone when the neck '
        'runs mmcv ops)')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        default=(256, 320),
        help='the example image\'s size at export '
        '(default 256 320); the graph takes any size')
    parser.add_argument(
        '--verify',
        action='store_true',
        help='run onnxruntime and PyTorch at --verify-shapes and print the '
        'relative error; exit 1 if one is above --tolerance')
    parser.add_argument(
        '--verify-shapes',
        type=shape_arg,
        nargs='+',
        metavar='Bx3xHxW',
        help='default: two non-square sizes other than the export size')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-4,
        help='largest relative error --verify accepts '
        '(default 1e-4, for fp32)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def default_verify_shapes(height, width):
    """Two sizes unlike the export size, neither square: another batch, a
    smaller and wider image, and a taller one."""
    return [(1, 3, height * 3 // 4, width * 5 // 4),
            (3, 3, width + 40, height // 2 + 8)]


def build_model(cfg, checkpoint):
    # the exporter traces the backbone's own forward, not torch.compile's
    cfg.model.backbone.pop('compile', None)
    model = build_random_model(cfg)
    if checkpoint is None:
        print(
            'no checkpoint: exporting the config\'s random initial '
            'weights, which only tries the export',
            file=sys.stderr)
    else:
        with explain_checkpoint_mismatch(checkpoint):
            load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model


def describe(module_name, part):
    return {
        'model': f'the whole {module_name}',
        'neck': f'the backbone and neck of {module_name}',
        'backbone': f'the backbone of {module_name}'
    }[part]


def check_onnx_extra():
    for name in ('onnx', 'onnxruntime', 'onnxscript'):
        if importlib.util.find_spec(name) is None:
            raise ImportError(f'{name} is missing: the export needs the onnx '
                              f'extra, `pip install -e ".[onnx]"` in the '
                              f'checkout (make install does it)')


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    check_onnx_extra()
    # before the minutes of the export, not after
    mmengine.mkdir_or_exist(os.path.dirname(os.path.abspath(args.out)))
    cfg = config_from(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg, args.checkpoint)
    part = args.part or default_part(model)
    if args.part is None and part != 'model':
        print(f'{whole_model_problem(model)}. Exporting its '
              f'{"backbone and neck" if part == "neck" else "backbone"} '
              f'instead (--part {part}).')
    module = raw_image_module(model, part)

    start = time.perf_counter()
    example_shape = (EXAMPLE_BATCH, 3, *args.shape)
    outputs = export_onnx(module, args.out, example_shape)
    axes = ', '.join(DYNAMIC_AXES.values())
    print(f'exported {describe(type(model).__name__, part)} to {args.out} '
          f'({os.path.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.perf_counter() - start:.0f} s, at '
          f'{"x".join(map(str, example_shape))}: image (batch, 3, '
          f'height, width) float32 RGB 0..255 -> {", ".join(outputs)}; '
          f'dynamic: {axes}')

    if args.verify:
        shapes = args.verify_shapes or default_verify_shapes(*args.shape)
        errors = verify(args.out, module, shapes)
        print(f'onnxruntime vs PyTorch, relative error (tolerance '
              f'{args.tolerance:.0e}):')
        for shape, error in zip(shapes, errors):
            print(f'  {"x".join(map(str, shape))}: {error:.2e}')
        if max(errors) > args.tolerance:
            print(
                f'the error is above the tolerance {args.tolerance:.0e}',
                file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
