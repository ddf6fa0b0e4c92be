"""Exports a config's model to ONNX, with dynamic sizes, and checks the
graph in onnxruntime against PyTorch.

    python tools/deployment/export_onnx.py configs/upernet_cvt13_ade20k.py \
        CHECKPOINT --out upernet.onnx --verify
    python tools/deployment/export_onnx.py configs/maskrcnn_cvt13_coco.py \
        CHECKPOINT --out maskrcnn.onnx --verify

The graph takes ``image``, (batch, 3, height, width) float32, RGB, 0 to
255; the model's normalisation is inside it. A segmentor is exported whole,
to ``seg_logits`` at the input size, batch, height and width dynamic. A
detector (Mask R-CNN, Cascade Mask R-CNN, RetinaNet, DINO) is exported
whole, one image at any height and width, to ``bboxes`` (x1, y1, x2, y2 in
input pixels), ``scores``, ``labels`` and, for instance segmentation,
``masks`` at the input size: what ``model.predict`` gives, its test_cfg and
its preprocessor's padding inside, NMS and RoIAlign as standard ONNX ops.
Mask2Former is not: its backbone and neck are exported instead (``--part``
picks; see mmcvt/deployment/onnx_export.py). ``--verify`` runs both at
sizes other than the export size: a segmentor's or feature maps' relative
error, a detector's detections one by one. The checkpoint's classes and
palette go into the graph's metadata, for tools/infer.py.
Needs the onnx extra: ``pip install -e '.[onnx]'``.
"""
import argparse
import json
import os
import re
import sys
import time

import mmcv
import mmengine
import torch
from mmengine.config import DictAction

import mmcvt  # noqa: F401  registers CvT
from mmcvt.analysis import config_from, positive_int
from mmcvt.deployment import detection_check, onnx_export
from mmcvt.deployment.detectors import Detections
from mmcvt.deployment.inputs import random_image
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import checkpoint_path, config_name, image_file
from mmcvt.utils.output_paths import output_file

EXAMPLE_BATCH = 2  # not 1 where the batch is dynamic: the exporter fixes 1


def shape_arg(text):
    """'BxCxHxW', e.g. '1x3x96x160'."""
    match = re.fullmatch(r'(\d+)x3x(\d+)x(\d+)', text)
    if not match or 0 in map(int, match.groups()):
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected BATCHx3xHEIGHTxWIDTH, e.g. 1x3x97x161')
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
        choices=('model', 'neck', 'backbone'),
        help='model: the whole model; neck: backbone and neck; backbone. '
        'Default: the whole model where it exports (segmentors that run no '
        'mmcv op, and the detectors named above), else the backbone and '
        'neck (or the backbone alone when the neck runs mmcv ops)')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        default=(256, 320),
        help='the example image\'s size at export (default 256 320); the '
        'graph takes any size. One on which a feature map is 1 pixel high '
        'or wide is refused, naming the smallest that exports')
    parser.add_argument(
        '--verify',
        action='store_true',
        help='run onnxruntime and PyTorch at --verify-shapes (and on '
        '--verify-images) and compare: exit 1 if a relative error is above '
        '--tolerance, or, for a detector, if a detection has no partner '
        '(same label, box IoU >= 0.99, score within 1e-3, mask IoU >= 0.98)'
        '. --verify-shapes and --verify-images imply it')
    parser.add_argument(
        '--verify-shapes',
        type=shape_arg,
        nargs='+',
        metavar='Bx3xHxW',
        help='random images of these shapes; default: two non-square sizes '
        'other than the export size (for a detector, odd ones, batch 1)')
    parser.add_argument(
        '--verify-images',
        nargs='+',
        type=image_file,
        metavar='IMAGE',
        default=[],
        help='image files to verify on too, each at its own size (a '
        'trained detector finds little in random images)')
    parser.add_argument(
        '--tolerance',
        type=float,
        default=1e-4,
        help='largest relative error --verify accepts for segmentors and '
        'feature maps (default 1e-4, for fp32)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    # naming sizes or images to verify on asks for the verification: so
    # MMDeploy's deploy.py runs the converted model on its --test-img, where
    # MMDetection 2's pytorch2onnx.py ignored --test-img without --verify.
    # Refusing them alone would only ask for a flag that says nothing more
    args.verify = args.verify or bool(args.verify_shapes or args.verify_images)
    return args


def odd(size):
    return size | 1


def default_verify_shapes(height, width, detector):
    """Two sizes unlike the export size, neither square: a smaller and
    wider image, and a taller one; for segmentors and feature maps,
    another batch, for detectors, odd sizes (not multiples of 32)."""
    if detector:
        return [(1, 3, odd(height * 3 // 4), odd(width * 5 // 4)),
                (1, 3, odd(width + 40), odd(height // 2 + 8))]
    return [(1, 3, height * 3 // 4, width * 5 // 4),
            (3, 3, width + 40, height // 2 + 8)]


def graph_metadata(part, dataset_meta):
    """The graph's metadata_props: the part exported, and the checkpoint's
    classes and palette (keys in lower case, as MMDetection's inferencer
    reads them)."""
    if not dataset_meta:
        return {'part': part}
    meta = {key.lower(): value for key, value in dataset_meta.items()}
    kept = {
        key: [list(v) if isinstance(v, tuple) else v for v in meta[key]]
        for key in ('classes', 'palette') if key in meta
    }
    return {'part': part, 'dataset_meta': json.dumps(kept)}


def describe(module_name, part):
    return {
        'model': f'the whole {module_name}',
        'neck': f'the backbone and neck of {module_name}',
        'backbone': f'the backbone of {module_name}'
    }[part]


def verify_images(shapes, paths):
    """Random images of ``shapes`` and the images at ``paths``, RGB
    (1, 3, H, W) float, with their names."""
    images = [(random_image(shape, seed), 'x'.join(map(str, shape)))
              for seed, shape in enumerate(shapes)]
    for path in paths:
        bgr = mmcv.imread(str(path))
        if bgr is None:
            raise ValueError(f'--verify-images: cannot read the image {path}')
        rgb = torch.from_numpy(mmcv.bgr2rgb(bgr)).permute(2, 0, 1)
        images.append((rgb[None].float(), os.path.basename(path)))
    return images


def verify_detections(path, model, module, images):
    comparisons = detection_check.verify_detections(
        path, model, module, [image for image, _ in images])
    check = detection_check
    print(f'onnxruntime vs model.predict, detections scored above '
          f'{module.score_threshold} (each needs a partner: same label, box '
          f'IoU >= {check.BOX_IOU}, score within {check.SCORE_DIFFERENCE:.0e}'
          f', mask IoU >= {check.MASK_IOU}, unless its score is at a '
          f'cut-off):')
    for (_, name), comparison in zip(images, comparisons):
        print(f'  {name}: {comparison.describe()}')
    if not all(comparison.ok for comparison in comparisons):
        print('the detections differ beyond those bounds', file=sys.stderr)
        return 1
    return 0


def verify_tensors(path, module, images, tolerance):
    errors = onnx_export.verify(path, module, [image for image, _ in images])
    print(f'onnxruntime vs PyTorch, relative error (tolerance '
          f'{tolerance:.0e}):')
    for (_, name), error in zip(images, errors):
        print(f'  {name}: {error:.2e}')
    if max(errors) > tolerance:
        print(
            f'the error is above the tolerance {tolerance:.0e}',
            file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    onnx_export.check_onnx_extra()
    # before the minutes of the export, not after
    mmengine.mkdir_or_exist(os.path.dirname(os.path.abspath(args.out)))
    cfg = config_from(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        return export_and_verify(cfg, args)
    except ValueError as error:  # what this model cannot export, and how
        print(f'error: {error}', file=sys.stderr)
        return 1


def export_and_verify(cfg, args):
    model, dataset_meta = onnx_export.build_model(cfg, args.checkpoint)
    if args.checkpoint is None:
        print(
            'no checkpoint: exporting the config\'s random initial '
            'weights, which only tries the export',
            file=sys.stderr)
    part = args.part or onnx_export.default_part(model)
    if args.part is None and part != 'model':
        print(f'{onnx_export.whole_model_problem(model)}. Exporting its '
              f'{"backbone and neck" if part == "neck" else "backbone"} '
              f'instead (--part {part}).')
    module = onnx_export.raw_image_module(model, part)
    axes = getattr(module, 'dynamic_axes', onnx_export.DYNAMIC_AXES)
    detector = isinstance(module, Detections)
    shapes = args.verify_shapes or default_verify_shapes(*args.shape, detector)
    if detector and any(shape[0] != 1 for shape in shapes):
        raise ValueError('--verify-shapes: a detector\'s graph takes one '
                         'image, batch 1')
    if args.verify:
        for shape in shapes:
            onnx_export.check_runs_at(module, shape, '--verify-shapes')
        # read before the minutes of the export: one OpenCV cannot decode
        # is an error then
        images = verify_images(shapes, args.verify_images)

    start = time.perf_counter()
    example_shape = (1 if 0 not in axes else EXAMPLE_BATCH, 3, *args.shape)
    outputs = onnx_export.export_onnx(module, args.out, example_shape,
                                      graph_metadata(part, dataset_meta))
    print(f'exported {describe(type(model).__name__, part)} to {args.out} '
          f'({os.path.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.perf_counter() - start:.0f} s, at '
          f'{"x".join(map(str, example_shape))}: image (batch, 3, '
          f'height, width) float32 RGB 0..255 -> {", ".join(outputs)}; '
          f'dynamic: {", ".join(axes.values())}')

    if not args.verify:
        return 0
    if detector:
        return verify_detections(args.out, model, module, images)
    return verify_tensors(args.out, module, images, args.tolerance)


if __name__ == '__main__':
    sys.exit(run_tool(main))
