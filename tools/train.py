"""Trains a detector or segmentor from a config, as MMDetection's and
MMSegmentation's tools/train.py do; the config's ``default_scope`` decides
which of the two libraries runs.

    python tools/train.py configs/maskrcnn_cvt13_coco.py
    python tools/train.py CONFIG --amp --resume --work-dir work_dirs/x \
        --cfg-options train_dataloader.batch_size=4
"""
import argparse

import mmcvt  # noqa: F401  registers CvT and the hooks
from mmcvt.engine import (add_runner_arguments, build_runner, check_data_paths,
                          cpu_distributed, hold_work_dir, load_config, use_amp)
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import config_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'config', type=config_file, help='train config file path')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training (needs a GPU)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the actual batch size over the config\'s '
        'auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, from the latest '
        'checkpoint in the work dir, or from the newest complete one before '
        'it if that one is cut short')
    add_runner_arguments(parser)
    return parser.parse_args(argv)


def build_config(args):
    cfg = load_config(args)
    if args.amp:
        use_amp(cfg)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr = dict('
                             'base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    cfg = build_config(parse_args(argv))
    check_data_paths(cfg, ('train', 'val'))
    # held before the Runner writes anything into the work dir
    with cpu_distributed(cfg), hold_work_dir(cfg) as taken_over:
        runner = build_runner(cfg)
        if taken_over:
            runner.logger.warning(taken_over)
        runner.train()


if __name__ == '__main__':
    run_tool(main)
