"""Iteration time and peak memory of full training steps of detector or
segmentor configs, on generated images, side by side.

    python tools/analysis_tools/benchmark_train_step.py \
        configs/maskrcnn_cvt13_coco.py \
        mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py \
        --shape 800 1333 --batch 2 --amp

Each config runs in this process, one after the other, with random weights
(no checkpoint is loaded) on random images that carry a few random boxes and
masks for detectors or a random label map for segmentors. A step is the
Runner's: data preprocessing, forward, loss, backward and optimizer step
through the config's optim_wrapper (AmpOptimWrapper with --amp); with
--compile the config's CvT backbone is built with compile=True
(torch.compile, dynamic shapes) and the warm-up steps compile it. Reported:
the median step time after warm-up, and the peak memory of the steps: on
CUDA ``max_memory_allocated``; on the CPU the process's peak RSS (see
mmcvt.analysis.PeakMemory).
"""
import argparse

import torch
from mmengine.optim import build_optim_wrapper

import mmcvt  # noqa: F401  registers CvT
from mmcvt.analysis import (PeakMemory, build_random_model, config_from,
                            median_latency, positive_int)
from mmcvt.engine import use_amp
from mmcvt.utils.input_paths import config_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument(
        'configs',
        nargs='+',
        type=config_name,
        help='config files, or mmdet::/mmseg:: configs')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        default=(800, 1333),
        metavar=('H', 'W'))
    parser.add_argument('--batch', type=positive_int, default=2)
    parser.add_argument(
        '--amp',
        action='store_true',
        help='train as tools/train.py --amp does')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='build CvT backbones with compile=True (others are left as '
        'they are)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=positive_int, default=5)
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f'--warmup must be at least 0, not {args.warmup}')
    return args


def synthetic_batch(scope, batch, height, width, num_classes):
    """Random uint8 images with random ground truth, as a dataloader gives."""
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randint(
            0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        for _ in range(batch)
    ]
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        scale_factor=(1., 1.))
    samples = []
    for _ in range(batch):
        if scope == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            corners = torch.rand(
                4, 2, 2, generator=generator) * torch.tensor([width, height])
            boxes = torch.cat(
                [corners.min(1).values,
                 corners.max(1).values + 32],
                1).clamp(max=torch.tensor([width, height, width, height]) - 1)
            masks = torch.zeros(4, height, width, dtype=torch.uint8)
            for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
                mask[y1:y2, x1:x2] = 1
            sample = DetDataSample(metainfo=meta)
            sample.gt_instances = InstanceData(
                bboxes=boxes,
                labels=torch.randint(
                    0, num_classes, (4, ), generator=generator),
                masks=BitmapMasks(masks.numpy(), height, width))
        else:
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=meta)
            sample.gt_sem_seg = PixelData(
                data=torch.randint(
                    0, num_classes, (1, height, width), generator=generator))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def num_classes_of(model):
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is not None:
        return roi_head.bbox_head.num_classes
    # RetinaNet's and DINO's bbox_head, Mask2Former's panoptic_head (things
    # and stuff), a segmentor's decode_head
    for name in ('bbox_head', 'panoptic_head', 'decode_head'):
        if hasattr(model, name):
            return getattr(model, name).num_classes
    raise ValueError(f'{type(model).__name__}: no head that says its number '
                     f'of classes, to draw random labels from')


def benchmark(config, args):
    cfg = config_from(config)
    scope = cfg.get('default_scope', 'mmdet')
    if args.compile and cfg.model.backbone.type == 'CvT':
        cfg.model.backbone.compile = True
    model = build_random_model(cfg)
    model.init_weights()
    model.to(args.device).train()
    if args.amp:
        use_amp(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = synthetic_batch(scope, args.batch, *args.shape,
                            num_classes_of(model))

    memory = PeakMemory(args.device).start()
    step_s = median_latency(lambda: model.train_step(batch, optim_wrapper),
                            args.device, args.warmup, args.iters)
    return dict(
        config=config, step_s=step_s, peak_memory_mib=memory.peak_mib())


def main(argv=None):
    args = parse_args(argv)
    results = [benchmark(config, args) for config in args.configs]
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith('cuda') else 'CPU')
    print(f'{device}; {args.batch} images of {args.shape[0]}x{args.shape[1]}'
          f'; {"AMP" if args.amp else "fp32"}'
          f'{"; CvT compiled" if args.compile else ""}; median of '
          f'{args.iters} steps after {args.warmup}')
    print('| config | step (s) | peak memory (MiB) |\n|---|---|---|')
    for r in results:
        print(f'| {r["config"]} | {r["step_s"]:.3f} | '
              f'{r["peak_memory_mib"]:.0f} |')
    return results


if __name__ == '__main__':
    main()
