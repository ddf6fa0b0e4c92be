"""Parameters and FLOPs of a detector or segmentor config, as the model zoos
of MMDetection (at 1280x800) and MMSegmentation (at 512x512) report them.

    python tools/analysis_tools/get_flops.py configs/maskrcnn_cvt13_coco.py
    python tools/analysis_tools/get_flops.py configs/upernet_cvt13_ade20k.py

FLOPs here are multiply-adds, as in the model zoos and the CvT paper, of one
image's forward pass in the model's 'tensor' mode: backbone and neck, and
for detectors also the RPN and the RoI heads on the RPN's proposals. The
count sees attention (see mmcvt.analysis); like the zoos' counters it leaves
out elementwise work. The model has random weights, and the image is
random, which only changes how many proposals a detector keeps.
"""
import argparse
import inspect

import torch
from mmengine.config import DictAction

import mmcvt  # noqa: F401  registers CvT
from mmcvt.analysis import (build_random_model, config_from, count_flops,
                            positive_int)
from mmcvt.utils.input_paths import config_name

# (height, width) each library's model zoo counts at
ZOO_SHAPES = {'mmdet': (1280, 800), 'mmseg': (512, 512)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument(
        'config',
        type=config_name,
        help='a config file, or mmdet::/mmseg:: and a config path')
    parser.add_argument(
        '--shape',
        type=positive_int,
        nargs=2,
        metavar=('H', 'W'),
        help='input size; by default the model zoo\'s for the config\'s '
        f'library: {ZOO_SHAPES}')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def tensor_mode_inputs(scope, height, width):
    """One random image (already as the data preprocessor would make it, in
    shape) and the data samples that 'tensor' mode needs."""
    image = torch.rand(1, 3, height, width)
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        batch_input_shape=(height, width),
        scale_factor=(1., 1.))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return image, [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample
    return image, [SegDataSample(metainfo=meta)]


def run_tensor_mode(model, image, data_samples):
    """The model's forward in 'tensor' mode. MMSegmentation's
    EncoderDecoder runs its decode head there without the data samples,
    which Mask2Former's head needs: such a head runs as tensor mode would
    run it, on the backbone's (and neck's) features, with them."""
    head = getattr(model, 'decode_head', None)
    if head is not None and 'batch_data_samples' in inspect.signature(
            head.forward).parameters:
        return head(model.extract_feat(image), data_samples)
    return model(image, data_samples, mode='tensor')


def complexity(cfg, shape=None):
    """Parameters and multiply-adds of the config's model at ``shape``."""
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in ZOO_SHAPES:
        raise ValueError(f'default_scope {scope!r}: expected one of '
                         f'{list(ZOO_SHAPES)}')
    height, width = shape or ZOO_SHAPES[scope]
    model = build_random_model(cfg).eval()  # weights do not change the count
    image, data_samples = tensor_mode_inputs(scope, height, width)
    with torch.no_grad():
        flops, _ = count_flops(run_tensor_mode, model, image, data_samples)
    return dict(
        shape=(height, width),
        params=sum(p.numel() for p in model.parameters()),
        backbone_params=sum(p.numel() for p in model.backbone.parameters()),
        macs=flops / 2)


def main(argv=None):
    args = parse_args(argv)
    cfg = config_from(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    result = complexity(cfg, args.shape)
    height, width = result['shape']
    print(f'{args.config} at {height}x{width}:\n'
          f'  params  {result["params"] / 1e6:.2f} M '
          f'(backbone {result["backbone_params"] / 1e6:.2f} M)\n'
          f'  FLOPs   {result["macs"] / 1e9:.1f} G (multiply-adds)')
    return result


if __name__ == '__main__':
    main()
