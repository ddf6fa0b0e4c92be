"""Tests a checkpoint of a detector or segmentor, as MMDetection's and
MMSegmentation's tools/test.py do; the config's ``default_scope`` decides
which of the two libraries runs.

    python tools/test.py configs/maskrcnn_cvt13_coco.py CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis --out results.pkl
"""
import argparse

import mmcvt  # noqa: F401  registers CvT and the hooks
from mmcvt.engine import (add_runner_arguments, build_runner, check_data_paths,
                          cpu_distributed, load_config)
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import checkpoint_path, config_file
from mmcvt.utils.output_paths import output_dir, output_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'config', type=config_file, help='test config file path')
    parser.add_argument(
        'checkpoint',
        type=checkpoint_path,
        help='checkpoint file or URL, loaded strictly: one that does not fit '
        "the config's model is an error naming the keys that differ")
    parser.add_argument(
        '--out',
        type=output_file,
        help='dump the predictions to this pickle file')
    parser.add_argument(
        '--show-dir',
        type=output_dir,
        help='save images with predictions drawn into this dir')
    parser.add_argument(
        '--tta',
        action='store_true',
        help='test-time augmentation, as the config\'s tta_model and '
        'tta_pipeline define it')
    add_runner_arguments(parser)
    return parser.parse_args(argv)


def build_config(args):
    cfg = load_config(args)
    cfg.load_from = args.checkpoint

    if args.show_dir:
        visualization = cfg.default_hooks.get('visualization')
        if visualization is None:
            raise ValueError('--show-dir needs a visualization hook in '
                             'default_hooks (DetVisualizationHook or '
                             'SegVisualizationHook)')
        visualization.update(draw=True, interval=1, show=False)
        if cfg.get('default_scope') == 'mmseg':  # as mmseg's tools/test.py
            cfg.visualizer['save_dir'] = args.show_dir
        else:  # as mmdet's tools/test.py
            visualization['test_out_dir'] = args.show_dir
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the '
                             'config')
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if args.out is not None:
        # checked here, not when the results are dumped after the test
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl or .pickle file')
        cfg.test_evaluator = [
            *(cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else
              [cfg.test_evaluator]),
            dict(type='DumpResults', out_file_path=args.out),
        ]
    return cfg


def main(argv=None):
    cfg = build_config(parse_args(argv))
    check_data_paths(cfg, ('test', ))
    with cpu_distributed(cfg):
        return build_runner(cfg).test()


if __name__ == '__main__':
    run_tool(main)
