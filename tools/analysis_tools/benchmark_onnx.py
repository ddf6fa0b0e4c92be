"""Speed of an exported graph in onnxruntime against its model in PyTorch
eager, in the same run, on the CPU.

    python tools/analysis_tools/benchmark_onnx.py \
        configs/maskrcnn_cvt13_coco.py maskrcnn.onnx --sizes 800x1333
    python tools/analysis_tools/benchmark_onnx.py \
        configs/demo/maskrcnn_cvt13_shapes.py demo.onnx CHECKPOINT \
        --sizes 128x128 --profile work_dirs/profile

For each size, on one random image: --warmup untimed runs of each, then
--repeat timed runs with PyTorch and onnxruntime taking turns, so that load
that comes and goes on a shared machine weighs on both alike; the medians,
their ratio, and the fastest and slowest runs of each. onnxruntime's
threads sleep when a run ends (by default they spin, taking the cores from
PyTorch's next run). PyTorch runs what tools/test.py runs on an image: the
model's data preprocessor and ``predict`` (a detector's or a segmentor's;
for a graph of feature maps, the backbone and neck); onnxruntime runs the
graph on the raw image. Both use --threads threads (default: all cores).
The model is the config's with the checkpoint loaded strictly, or random
weights without one; --cfg-options must be those the graph was exported
with (a test_cfg's score_thr=0, say, so that a detector keeps its
max_per_img detections whatever the weights).

--profile turns onnxruntime's profiler on for one more run at each size
and prints the share of each op type in the graph's time: where the time
goes.
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time

import torch
from mmengine.config import DictAction

import mmcvt  # noqa: F401  registers CvT
from mmcvt.analysis import config_from, image_size, positive_int
from mmcvt.deployment import onnx_export
from mmcvt.deployment.detection_check import predicted_instances
from mmcvt.deployment.inputs import INPUT_NAME, predicted_samples, random_image
from mmcvt.deployment.runtime import graph_metadata
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import checkpoint_path, config_name, graph_file
from mmcvt.utils.machine import cpu_name
from mmcvt.utils.output_paths import output_dir, output_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument(
        'config',
        type=config_name,
        help='the config the graph was exported from (a file, or mmdet::/'
        'mmseg:: and a config path)')
    parser.add_argument(
        'graph',
        type=graph_file,
        help='the .onnx file of tools/deployment/export_onnx.py')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        type=checkpoint_path,
        help='loaded strictly; default: random')
    parser.add_argument(
        '--sizes',
        type=image_size,
        nargs='+',
        default=[[800, 1333]],
        metavar='HxW',
        help='input sizes (default 800x1333)')
    parser.add_argument('--warmup', type=positive_int, default=1)
    parser.add_argument('--repeat', type=positive_int, default=5)
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=os.cpu_count(),
        help='threads of PyTorch and of onnxruntime\'s ops (default: the '
        'cores)')
    parser.add_argument(
        '--profile',
        metavar='DIR',
        type=output_dir,
        help='write onnxruntime\'s profile of one run at each size here, '
        'and print where its time goes')
    parser.add_argument(
        '--json', type=output_file, help='write the results here as well')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def eager_step(model, graph):
    """What PyTorch runs for an image, for the graph at ``graph``."""
    part = graph_metadata(graph).get('part', 'model')
    if part == 'model' and onnx_export.is_detector(model):
        return lambda image: predicted_instances(model, image)
    if part == 'model':
        from mmseg.structures import SegDataSample
        return lambda image: predicted_samples(model, image, SegDataSample)
    module = onnx_export.raw_image_module(model, part)

    def features(image):
        with torch.no_grad():
            return module(image)

    return features


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def op_shares(profile_path):
    """{op type: share of the nodes' time} in an onnxruntime profile."""
    with open(profile_path) as f:
        events = json.load(f)
    times = collections.Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith(
                '_kernel_time'):
            times[event['args']['op_name']] += event['dur']
    total = sum(times.values())
    return {op: t / total for op, t in times.most_common()}


def benchmark(args):
    cfg = config_from(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model, _ = onnx_export.build_model(cfg, args.checkpoint)
    model = model.eval()
    torch.set_num_threads(args.threads)
    # onnxruntime's threads spinning after a run would slow PyTorch's next
    session = onnx_export.onnxruntime_session(
        args.graph, args.threads, spinning=False)
    eager = eager_step(model, args.graph)
    results = []
    for height, width in args.sizes:
        image = random_image((1, 3, height, width))
        feed = {INPUT_NAME: image.numpy()}
        times = dict(eager=[], onnxruntime=[])
        for i in range(args.warmup + args.repeat):
            for name, step in (('eager', lambda: eager(image)),
                               ('onnxruntime',
                                lambda: session.run(None, feed))):
                seconds = timed(step)
                if i >= args.warmup:
                    times[name].append(seconds)
        result = dict(size=f'{height}x{width}')
        for name, seconds in times.items():
            result[f'{name}_ms'] = statistics.median(seconds) * 1000
            # on a shared machine the spread says how far a median goes
            result[f'{name}_range_ms'] = (min(seconds) * 1000,
                                          max(seconds) * 1000)
        result['speedup'] = result['eager_ms'] / result['onnxruntime_ms']
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
            profiled = onnx_export.onnxruntime_session(
                args.graph,
                args.threads,
                os.path.join(args.profile, f'onnxruntime_{height}x{width}'),
                spinning=False)
            profiled.run(None, feed)
            result['onnxruntime_op_shares'] = op_shares(
                profiled.end_profiling())
        results.append(result)
        print_result(result)
    return results


def print_result(result):

    def timing(name):
        low, high = result[f'{name}_range_ms']
        return f'{result[f"{name}_ms"]:.0f} ms ({low:.0f} to {high:.0f})'

    print(f'{result["size"]}: PyTorch eager {timing("eager")}, onnxruntime '
          f'{timing("onnxruntime")}, {result["speedup"]:.2f}x')
    shares = result.get('onnxruntime_op_shares')
    if shares:
        print('  onnxruntime\'s time by op: ' +
              ', '.join(f'{op} {share:.0%}'
                        for op, share in list(shares.items())[:8]))


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    onnx_export.check_onnx_extra()
    import onnxruntime
    print(f'{cpu_name()}, {args.threads} threads, median of {args.repeat} '
          f'after {args.warmup} warm-up, torch {torch.__version__}, '
          f'onnxruntime {onnxruntime.__version__}')
    results = benchmark(args)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(
                    config=args.config,
                    graph=args.graph,
                    threads=args.threads,
                    repeat=args.repeat,
                    results=results),
                f,
                indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(run_tool(main))
