"""Draws a model's predictions on the first test images into one PNG, with
the ground truth beside each, through the config's own visualizer
(DetLocalVisualizer or SegLocalVisualizer).

    python tools/misc/show_predictions.py CONFIG CHECKPOINT --out pred.png
"""
import argparse
import inspect
import math
import os.path as osp
import tempfile

import mmcv
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from mmengine.registry import MODELS, VISUALIZERS, init_default_scope

import mmcvt  # noqa: F401  registers CvT and the hooks
from mmcvt.analysis import build_test_dataset
from mmcvt.engine import load_checkpoint_strictly
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import checkpoint_path, config_file
from mmcvt.utils.output_paths import output_file

# what mmcv.imwrite (OpenCV) writes, told by the extension
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', type=config_file)
    parser.add_argument(
        'checkpoint',
        type=checkpoint_path,
        help='loaded strictly: one that does not fit the config\'s model is '
        'an error naming the keys that differ')
    parser.add_argument(
        '--out', required=True, type=output_file, help='PNG file to write')
    parser.add_argument(
        '--num',
        type=int,
        default=8,
        help='how many test images to draw (at most all)')
    parser.add_argument(
        '--pred-score-thr',
        type=float,
        default=0.3,
        help='detection: draw the predicted boxes and masks whose score is '
        'above this, as MMDetection\'s visualizer does (default 0.3)')
    parser.add_argument(
        '--columns',
        type=int,
        default=2,
        help='image pairs per row of the grid')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    # checked before the model runs, not when the drawing is written
    if args.num < 1:
        parser.error(f'--num must be at least 1, not {args.num}')
    if args.columns < 1:
        parser.error(f'--columns must be at least 1, not {args.columns}')
    if not 0 <= args.pred_score_thr <= 1:
        parser.error(f'--pred-score-thr is a score between 0 and 1, not '
                     f'{args.pred_score_thr}')
    if osp.splitext(args.out)[1].lower() not in IMAGE_EXTENSIONS:
        parser.error(f'--out {args.out}: name an image file, one of '
                     f'{", ".join(IMAGE_EXTENSIONS)}')
    return args


def tile(images, columns):
    """Images of one size in a grid, row by row; empty cells stay black."""
    rows = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid[row * height:(row + 1) * height,
             column * width:(column + 1) * width] = image
    return grid


def predict(cfg, checkpoint, num):
    """The first ``num`` test samples, or all if there are fewer, with their
    predictions."""
    dataset = build_test_dataset(cfg)
    model = MODELS.build(cfg.model)
    load_checkpoint_strictly(model, checkpoint)
    model.eval()
    num = min(num, len(dataset))
    samples = []
    with torch.no_grad():
        for start in range(0, num, 4):
            batch = pseudo_collate(
                [dataset[i] for i in range(start, min(start + 4, num))])
            samples += model.test_step(batch)
    return dataset.metainfo, samples


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope'))
    metainfo, samples = predict(cfg, args.checkpoint, args.num)

    visualizer = VISUALIZERS.build(
        dict(cfg.visualizer, name='show_predictions', vis_backends=None))
    visualizer.dataset_meta = metainfo
    # MMSegmentation's visualizer draws every pixel's class: no scores
    thresholded = 'pred_score_thr' in inspect.signature(
        visualizer.add_datasample).parameters
    options = dict(pred_score_thr=args.pred_score_thr) if thresholded else {}
    drawn = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sample in enumerate(samples):
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            # ground truth on the left, predictions on the right; read back
            # from out_file, the one output both libraries' visualizers share
            out_file = osp.join(tmp, f'{i}.png')
            visualizer.add_datasample(
                osp.basename(sample.img_path),
                image,
                sample,
                draw_gt=True,
                draw_pred=True,
                show=False,
                out_file=out_file,
                **options)
            drawn.append(mmcv.imread(out_file))
    mmcv.imwrite(tile(drawn, args.columns), args.out)
    print(f'{len(drawn)} test images' +
          (' (all the test set has)' if len(drawn) < args.num else '') +
          ', ground truth left, predictions right' +
          (f' (scores above {args.pred_score_thr})' if thresholded else '') +
          f' -> {args.out}')


if __name__ == '__main__':
    run_tool(main)
