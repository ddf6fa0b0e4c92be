"""Runs a CvT backbone on a generated image and prints its feature maps.

    python tools/analysis_tools/feature_shapes.py --arch 13 --shape 800 1333
"""
import argparse

import torch

from mmcvt.models import CvT


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='13', help="'13', '21' or 'w24'")
    parser.add_argument(
        '--shape', type=int, nargs=2, default=[224, 320], metavar=('H', 'W'),
        help='input height and width')
    return parser.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    model = CvT(args.arch).eval()
    image = torch.rand(1, 3, *args.shape)
    with torch.no_grad():
        features = model(image)
    params = sum(p.numel() for p in model.parameters())
    print(f'CvT-{args.arch}, {params / 1e6:.2f}M parameters, random weights, '
          f'input {tuple(image.shape)}')
    for index, feature in zip(model.out_indices, features):
        stride = args.shape[0] / feature.shape[2]
        print(f'  stage {index}: {tuple(feature.shape)}, stride ~{stride:.1f}')


if __name__ == '__main__':
    main()
