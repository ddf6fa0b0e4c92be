"""Speed and memory of backbones at dense-prediction sizes, side by side.

    python tools/analysis_tools/benchmark_backbone.py
    python tools/analysis_tools/benchmark_backbone.py --backbones cvt13 \
        hf-cvt13 --sizes 800x1344 --modes forward --repeat 3

Each case (backbone, input size, mode, precision) runs in a fresh process:
a warm-up, then repeated timed runs. A case reports the median latency,
images/s, the peak memory it added (on the CPU the peak RSS over the RSS it
started from; on CUDA ``max_memory_allocated`` over ``memory_allocated``),
its FLOPs (matmuls, convolutions and attention of the forward, see
mmcvt.analysis; three times that for forward and backward) and the
FLOP/s it achieved. The machine's fp32 matmul rate is measured in the same
run, in a process of its own and with the same warm-up and repeats, for
comparison. Results go to a markdown table and a JSON file in --out-dir.

Each eager case also counts the ops of one of its steps that launch a
kernel on a GPU (views and allocations aside, see
mmcvt.analysis.count_kernel_ops): where a GPU step is bound by launching
small ops, that number says more than FLOPs. --compile runs each backbone
through torch.compile with dynamic shapes, as CvT(compile=True) does.

Backbones, all with random weights (--help lists them): see BACKBONES.
"""
import argparse
import copy
import gc
import json
import os
import os.path as osp
import resource
import subprocess
import sys

import torch

from mmcvt.analysis import PeakMemory, image_size, median_latency, positive_int
from mmcvt.utils.machine import cpu_name
from mmcvt.utils.output_paths import output_dir

RESULT_MARK = 'BENCHMARK-RESULT '


def mmcvt_cvt13(**options):

    def build():
        from mmcvt.models import CvT
        return CvT('13', **options)

    return build


def transformers_cvt13():
    from transformers import CvtConfig, CvtModel

    # transformers' defaults are CvT-13's shapes
    return CvtModel(CvtConfig(), add_pooling_layer=False)


def mmdet_backbone(cfg):

    def build():
        from mmdet.registry import MODELS
        from mmengine.registry import init_default_scope
        init_default_scope('mmdet')
        return MODELS.build(cfg)

    return build


# name -> (builder, what it is, whether a default run includes it)
BACKBONES = {
    'cvt13': (mmcvt_cvt13(), 'mmcvt, SDPA attention', True),
    'cvt13-naive': (mmcvt_cvt13(attn_impl='naive'),
                    'mmcvt, the score matrix materialised as in the '
                    'official code', True),
    'cvt13-selective':
    (mmcvt_cvt13(with_cp='selective'), "mmcvt, with_cp='selective'", False),
    'cvt13-cp': (mmcvt_cvt13(with_cp=True), 'mmcvt, with_cp=True', False),
    'hf-cvt13':
    (transformers_cvt13, "transformers' CvtModel, CvT-13 shapes", True),
    'swin-t': (mmdet_backbone(
        dict(
            type='SwinTransformer',
            embed_dims=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            out_indices=(0, 1, 2, 3))), "MMDetection's Swin-T", True),
    'pvtv2-b2': (mmdet_backbone(
        dict(
            type='PyramidVisionTransformerV2',
            embed_dims=64,
            num_layers=[3, 4, 6, 3])), "MMDetection's PVTv2-b2", True),
    'r50': (mmdet_backbone(dict(type='ResNet',
                                depth=50)), "MMDetection's ResNet-50", True),
}


def to_scalar(out):
    """A scalar to backpropagate from, for a tuple of maps or transformers'
    output."""
    if hasattr(out, 'last_hidden_state'):
        return out.last_hidden_state.mean()
    return sum(o.mean() for o in out)


def run_case(case):
    """Runs one case in this process; returns its measurements."""
    from mmcvt.analysis import count_flops, count_kernel_ops

    torch.manual_seed(0)
    device = torch.device(case['device'])
    height, width = case['size']
    model = BACKBONES[case['backbone']][0]()
    model.to(device)
    # not chained: some backbones' train() (mmdet's ResNet) return None
    model.train(case['mode'] == 'train')
    image = torch.randn(case['batch'], 3, height, width, device=device)
    autocast = torch.autocast(
        device.type,
        dtype=getattr(torch, case['precision']),
        enabled=case['precision'] != 'float32')

    def step():
        if case['mode'] == 'forward':
            with torch.no_grad(), autocast:
                return model(image)
        with autocast:
            out = model(image)
        to_scalar(out).backward()
        model.zero_grad(set_to_none=True)
        return out

    # FLOPs of the forward, on the meta device: no compute, no memory. A
    # backward counts as twice its forward, the usual estimate (FLOP
    # counters get the backward of grouped convs wrong).
    with torch.no_grad():
        flops, _ = count_flops(
            copy.deepcopy(model).to('meta'), image.to('meta'))
    if case['mode'] == 'train':
        flops *= 3
    if case['compile']:
        model.compile(dynamic=True)  # what CvT(compile=True) does
    gc.collect()
    memory = PeakMemory(device).start()
    latency = median_latency(step, device, case['warmup'], case['repeat'])
    peak_added_mib = memory.added_mib()
    # after the timed runs, whose memory it would otherwise hide; a
    # compiled step launches inductor's fused kernels, which no dispatch
    # mode sees
    result = {} if case['compile'] else dict(
        kernel_ops=sum(count_kernel_ops(step)[0].values()))
    if case['precision'] != 'float32':
        # the reduced-precision output against fp32's, only now: memory
        # freed by an fp32 pass before the timed runs would hide theirs. In
        # eval mode, where dropout and drop path draw no random masks.
        model.eval()
        with torch.no_grad():
            reference = first_map(model(image))
            with autocast:
                reduced = first_map(model(image)).float()
        result['relative_error'] = ((reduced - reference).norm() /
                                    reference.norm()).item()
    result.update(
        latency_s=latency,
        images_per_s=case['batch'] / latency,
        peak_memory_added_mib=peak_added_mib,
        gflop=flops / 1e9,
        gflop_per_s=flops / 1e9 / latency,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    return result


def first_map(out):
    return out.last_hidden_state if hasattr(out, 'last_hidden_state') \
        else out[0]


def run_matmul(case, n=4096):
    """The machine's matmul rate in FLOP/s, in the case's precision, timed
    as the cases are (same warm-up and repeats)."""
    device = torch.device(case['device'])
    dtype = getattr(torch, case['precision'])
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    latency = median_latency(lambda: a @ b, device, case['warmup'],
                             case['repeat'])
    return dict(
        latency_s=latency,
        gflop=2 * n**3 / 1e9,
        gflop_per_s=2 * n**3 / 1e9 / latency)


def run_in_fresh_process(case, timeout):
    command = [sys.executable, __file__, '--case', json.dumps(case)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f'took over {timeout} s')
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    reason = done.stderr.strip().splitlines()[-1:] or [
        f'exit status {done.returncode}'
    ]
    if done.returncode < 0:
        reason = [f'killed by signal {-done.returncode} (out of memory?)']
    return dict(error=reason[0][:200])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument(
        '--backbones',
        nargs='+',
        choices=list(BACKBONES),
        default=[
            name for name, (_, _, default) in BACKBONES.items() if default
        ],
        help='; '.join(f'{name}: {what}'
                       for name, (_, what, _) in BACKBONES.items()))
    parser.add_argument(
        '--sizes',
        nargs='+',
        type=image_size,
        default=[[224, 224], [512, 512], [800, 1344]],
        metavar='HxW')
    parser.add_argument(
        '--modes',
        nargs='+',
        default=['forward', 'train'],
        choices=['forward', 'train'],
        help='forward: eval, no grad; train: forward and '
        'backward in train mode')
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=['float32'],
        choices=['float32', 'bfloat16', 'float16'],
        help='anything but float32 runs under autocast')
    parser.add_argument('--batch', type=positive_int, default=1)
    parser.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile each backbone (dynamic shapes) before timing it')
    parser.add_argument(
        '--warmup',
        type=int,
        default=1,
        help='untimed runs before the timed ones')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--timeout',
        type=positive_int,
        default=1800,
        help='seconds allowed to one case')
    parser.add_argument(
        '--memory-limit-gb',
        type=float,
        default=default_memory_limit_gb(),
        help='address space allowed to one CPU case, so that a case that '
        'needs more fails with an allocation error instead of bringing the '
        'machine down (default: 90%% of RAM)')
    parser.add_argument(
        '--out-dir', default='work_dirs/benchmark_backbone', type=output_dir)
    parser.add_argument('--case', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        parser.error('--repeat must be at least 1 and --warmup at least 0, '
                     f'not {args.repeat} and {args.warmup}')
    if (torch.device(args.device).type == 'cuda'
            and not torch.cuda.is_available()):
        parser.error(f'--device {args.device}: torch sees no CUDA device '
                     f'here (torch {torch.__version__}); use --device cpu')
    return args


def default_memory_limit_gb():
    with open('/proc/meminfo') as f:
        total_kb = int(f.readline().split()[1])
    return round(0.9 * total_kb / 2**20, 1)


def limit_memory(gigabytes):
    """Caps this process's address space (CPU only: CUDA maps far more
    address space than it uses)."""
    limit = int(gigabytes * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def machine():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f'{cpu_name()}, {os.cpu_count()} cores'


def cell(value, fmt):
    return '-' if value is None else format(value, fmt)


def markdown(results, matmul):
    lines = [
        '| backbone | input | mode | precision | latency (s) | images/s '
        '| peak memory added (MiB) | GFLOP | GFLOP/s | % of matmul '
        '| kernel ops | note |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in results:
        rate = matmul.get(r['precision'], {}).get('gflop_per_s')
        share = (100 * r['gflop_per_s'] /
                 rate if rate and 'gflop_per_s' in r else None)
        note = r.get('error', '')
        if 'relative_error' in r:
            note = f'rel. error vs fp32 {r["relative_error"]:.1e}'
        lines.append(
            f'| {r["backbone"]} | {r["size"][0]}x{r["size"][1]} '
            f'| {r["mode"]} | {r["precision"]} '
            f'| {cell(r.get("latency_s"), ".3f")} '
            f'| {cell(r.get("images_per_s"), ".2f")} '
            f'| {cell(r.get("peak_memory_added_mib"), ".0f")} '
            f'| {cell(r.get("gflop"), ".1f")} '
            f'| {cell(r.get("gflop_per_s"), ".1f")} '
            f'| {cell(share, ".0f")} | {cell(r.get("kernel_ops"), "d")} '
            f'| {note} |')
    for precision, m in matmul.items():
        rate = (f'{m["gflop_per_s"]:.1f} GFLOP/s'
                if 'gflop_per_s' in m else f'failed: {m.get("error")}')
        lines.append(f'\n{precision} matmul, 4096x4096x4096: {rate}')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        if case['device'] == 'cpu':
            limit_memory(case['memory_limit_gb'])
        result = (
            run_matmul(case)
            if case['backbone'] == 'matmul' else run_case(case))
        print(RESULT_MARK + json.dumps(result))
        return

    common = dict(
        batch=args.batch,
        warmup=args.warmup,
        repeat=args.repeat,
        device=args.device,
        memory_limit_gb=args.memory_limit_gb,
        compile=args.compile)
    matmul = {
        precision:
        run_in_fresh_process(
            dict(common, backbone='matmul', precision=precision), args.timeout)
        for precision in args.precisions
    }
    results = []
    for size in args.sizes:
        for mode in args.modes:
            for precision in args.precisions:
                for backbone in args.backbones:
                    case = dict(
                        common,
                        backbone=backbone,
                        size=size,
                        mode=mode,
                        precision=precision)
                    case.update(run_in_fresh_process(case, args.timeout))
                    results.append(case)
                    print(json.dumps(case), flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    report = dict(
        machine=machine(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        command=sys.argv,
        matmul=matmul,
        results=results)
    with open(osp.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(report, f, indent=1)
    table = (f'Machine: {report["machine"]}; torch {report["torch"]}, '
             f'{report["threads"]} threads; batch {args.batch}, median of '
             f'{args.repeat} after {args.warmup} warm-up'
             f'{"; compiled" if args.compile else ""}.\n\n' +
             markdown(results, matmul))
    with open(osp.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(table + '\n')
    print(table)
    if all('error' in result for result in results):
        raise SystemExit(f'every case failed, the first with: '
                         f'{results[0]["error"]}')


if __name__ == '__main__':
    main()
