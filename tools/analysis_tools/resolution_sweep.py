"""Tests one checkpoint at several input scales: the metrics, and one
image's latency and peak memory, at each; writes a table and a plot.

    python tools/analysis_tools/resolution_sweep.py CONFIG CHECKPOINT \
        --scales 0.5 0.75 1 1.5 2 --out-dir work_dirs/sweep

A scale multiplies the size that the config's test pipeline resizes to (its
``Resize``'s ``scale`` or ``scale_factor``); a pipeline without a Resize
gets one, of that factor, after loading the image. The metrics are
computed as tools/test.py computes them, against the ground truth at its
own size (MMDetection and MMSegmentation map predictions back to it).
Latency is the median of --repeat forward passes (``test_step``) of one
test image at that scale, after --warmup; peak memory is what that forward
adds to what the process holds (on CUDA, allocated by torch; on the CPU,
the resident set, after malloc has handed its cached heap back). The plot
shows bbox and segm mAP or mIoU (--metric picks), the table a few more
metrics, and sweep.json all that the evaluator reports. Writes
DIR/sweep.md, DIR/sweep.json and DIR/sweep.png.
"""
import argparse
import copy
import ctypes
import json
import math
import os.path as osp
import sys
import tempfile
import time

import matplotlib
import mmengine
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose, pseudo_collate

import mmcvt  # noqa: F401  registers CvT, the runner and its hooks
from mmcvt.analysis import (PeakMemory, build_test_dataset, median_latency,
                            positive_int)
from mmcvt.engine import build_runner, check_data_paths
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import checkpoint_path, config_file
from mmcvt.utils.output_paths import output_dir

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# the metrics plotted when --metric names none: those of these reported
DEFAULT_METRICS = ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU')
# shown in the table besides the plotted ones; sweep.json has them all
SUMMARY_METRICS = ('coco/bbox_mAP_50', 'aAcc', 'mAcc')
RESIZES = ('Resize', 'mmdet.Resize', 'mmseg.Resize', 'mmcv.Resize')


def positive_float(text):
    """argparse type: a finite float above 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f'{text}: a scale must be a finite number above 0')
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('config', type=config_file)
    parser.add_argument(
        'checkpoint',
        type=checkpoint_path,
        help='loaded strictly, as by tools/test.py')
    parser.add_argument(
        '--scales',
        type=positive_float,
        nargs='+',
        default=[0.5, 0.75, 1., 1.5, 2.],
        help='factors of the test size (default 0.5 0.75 1 '
        '1.5 2)')
    parser.add_argument('--out-dir', required=True, type=output_dir)
    parser.add_argument(
        '--metric',
        nargs='+',
        help='the metrics to plot (default: those of '
        f'{", ".join(DEFAULT_METRICS)} that the evaluator reports)')
    parser.add_argument(
        '--warmup',
        type=int,
        default=2,
        help='untimed forwards before timing (default 2)')
    parser.add_argument(
        '--repeat',
        type=positive_int,
        default=5,
        help='timed forwards; their median is the latency '
        '(default 5)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f'--warmup must be 0 or more, not {args.warmup}')
    if len(set(args.scales)) != len(args.scales):
        parser.error(f'--scales repeats a scale: {args.scales}')
    return args


def scaled_pipeline(pipeline, scale):
    """A copy of a test pipeline that resizes to ``scale`` times its size;
    one without a Resize gets ``Resize(scale_factor=scale)`` after its
    image loading, so that the annotations stay at their size."""
    pipeline = copy.deepcopy(pipeline)
    for transform in pipeline:
        if transform['type'] not in RESIZES:
            continue
        if transform.get('scale') is not None:
            transform['scale'] = tuple(
                round(side * scale) for side in transform['scale'])
        else:
            factor = transform.get('scale_factor') or 1.
            transform['scale_factor'] = (
                tuple(
                    f * scale
                    for f in factor) if isinstance(factor,
                                                   (tuple, list)) else factor *
                scale)
        return pipeline
    load = next((i for i, t in enumerate(pipeline)
                 if t['type'].endswith('LoadImageFromFile')), None)
    if load is None:
        raise ValueError('the test pipeline has neither a Resize to scale '
                         'nor a LoadImageFromFile to put one after')
    pipeline.insert(
        load + 1,
        dict(type='Resize', scale_factor=float(scale), keep_ratio=True))
    return pipeline


def pipeline_dataset(cfg):
    """The config of the test dataset that holds the pipeline, inside the
    wrappers (RepeatDataset and such) if any."""
    dataset = cfg.test_dataloader.dataset
    while 'pipeline' not in dataset:
        dataset = dataset.dataset
    return dataset


def check_scales(cfg, scales):
    """Runs the test pipeline, scaled, on the first test image at each
    scale, before the sweep: a scale at which it fails, such as one that
    leaves the image no pixel (OpenCV's resize asserts) or more than memory
    holds, is an error naming the scale and the image, not a failure
    minutes into the sweep. An empty test set is an error too (see
    :func:`build_test_dataset`)."""
    first = build_test_dataset(cfg).get_data_info(0)
    pipeline = pipeline_dataset(cfg).pipeline
    for scale in scales:
        try:
            Compose(scaled_pipeline(pipeline, scale))(copy.deepcopy(first))
        except Exception as error:  # the transforms' own, whatever they are
            raise SystemExit(
                f'error: --scales {scale:g}: the test pipeline fails on '
                f'{first.get("img_path")} at this scale: '
                f'{str(error).strip()}. Give scales at which the images '
                f'keep at least a pixel a side and fit in memory') from None


def release_cached_heap(device):
    """On the CPU, hands the heap that malloc keeps from earlier work back
    to the OS, so that the resident set grows with what the next forward
    allocates: the sweep's test loops leave it larger than one image's
    forward needs, which would then add nothing to it."""
    if torch.device(device).type == 'cpu' and sys.platform == 'linux':
        ctypes.CDLL('libc.so.6').malloc_trim(0)


def pick_metrics(metrics, names):
    """The metrics to plot: ``names``, or those of DEFAULT_METRICS in
    ``metrics``, or else its first."""
    if names:
        unknown = [name for name in names if name not in metrics]
        if unknown:
            raise KeyError(f'--metric {" ".join(unknown)}: the evaluator '
                           f'reports {", ".join(metrics)}')
        return list(names)
    return [name for name in DEFAULT_METRICS if name in metrics] or \
        [next(iter(metrics))]


def evaluate_at_scale(cfg, checkpoint, scale, work_dir, warmup, repeat):
    """The metrics at ``scale``, and one image's size, latency (s) and the
    peak memory its forward adds (MiB)."""
    cfg = copy.deepcopy(cfg)
    dataset = pipeline_dataset(cfg)
    dataset.pipeline = scaled_pipeline(dataset.pipeline, scale)
    cfg.load_from = checkpoint
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'  # the sweep prints its own table
    # names of their own for the Runner's logger and visualizer, which
    # mmengine keeps per process by name: the libraries' configs name every
    # visualizer 'visualizer', so that a later Runner would write into this
    # one's work dir, deleted by then
    cfg.experiment_name = f'sweep_{scale:g}_{time.time_ns()}'
    cfg.visualizer.name = cfg.experiment_name
    runner = build_runner(cfg)
    metrics = runner.test()

    model = runner.model
    device = next(model.parameters()).device
    batch = pseudo_collate([runner.test_dataloader.dataset[0]])
    with torch.no_grad():
        size = model.test_step(batch)[0].img_shape
        latency = median_latency(lambda: model.test_step(batch), device,
                                 warmup, repeat)
        release_cached_heap(device)
        memory = PeakMemory(device).start()
        model.test_step(batch)
        peak = memory.added_mib()
    return dict(
        scale=scale,
        size=list(size),
        latency_ms=latency * 1e3,
        peak_memory_mib=peak,
        metrics={
            k: float(v)
            for k, v in metrics.items()
        })


def table(rows, plotted):
    names = plotted + [
        name for name in SUMMARY_METRICS
        if name in rows[0]['metrics'] and name not in plotted
    ]
    lines = [
        '| scale | input (h x w) | ' + ' | '.join(names) +
        ' | latency (ms) | peak memory (MiB) |',
        '|---' * (len(names) + 4) + '|'
    ]
    for row in rows:
        values = ' | '.join(f'{row["metrics"][k]:.3f}' for k in names)
        lines.append(f'| {row["scale"]:g} | {row["size"][0]} x '
                     f'{row["size"][1]} | {values} | '
                     f'{row["latency_ms"]:.1f} | '
                     f'{row["peak_memory_mib"]:.0f} |')
    return '\n'.join(lines)


def plot(rows, plotted, title, path, device):
    """Three panels against scale: the plotted metrics, latency and peak
    memory; the scales evenly spaced, each labelled with its input size."""
    scales = range(len(rows))
    labels = [
        f'{row["scale"]:g}\n{row["size"][0]}x{row["size"][1]}' for row in rows
    ]
    memory = 'allocated' if device == 'cuda' else 'resident set'
    panels = [
        (', '.join(plotted), {
            name: [row['metrics'][name] for row in rows]
            for name in plotted
        }),
        (f'latency of one image (ms), {device.upper()}', {
            None: [row['latency_ms'] for row in rows]
        }),
        (f'peak memory it adds (MiB), {memory}', {
            None: [row['peak_memory_mib'] for row in rows]
        }),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (name, lines) in zip(axes, panels):
        for label, values in lines.items():
            ax.plot(scales, values, marker='o', label=label)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(scales, labels, fontsize=8)
        ax.set_xlabel('scale, input size', fontsize=9)
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_data_paths(cfg, ('test', ))
    check_scales(cfg, args.scales)
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for scale in sorted(args.scales):
            rows.append(
                evaluate_at_scale(cfg, args.checkpoint, scale,
                                  osp.join(work_dir, f'scale_{scale:g}'),
                                  args.warmup, args.repeat))
            print(f'scale {scale:g}: {rows[-1]["metrics"]}', flush=True)
    plotted = pick_metrics(rows[0]['metrics'], args.metric)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    mmengine.mkdir_or_exist(args.out_dir)
    markdown = table(rows, plotted)
    with open(osp.join(args.out_dir, 'sweep.md'), 'w') as f:
        f.write(markdown + '\n')
    with open(osp.join(args.out_dir, 'sweep.json'), 'w') as f:
        json.dump(
            dict(
                config=args.config,
                checkpoint=args.checkpoint,
                plotted=plotted,
                device=device,
                rows=rows),
            f,
            indent=1)
    plot(rows, plotted, f'{osp.basename(args.config)}, {device.upper()}',
         osp.join(args.out_dir, 'sweep.png'), device)
    print(markdown)
    print(f'-> {osp.join(args.out_dir, "sweep.md")}, sweep.json, sweep.png')


if __name__ == '__main__':
    run_tool(main)
