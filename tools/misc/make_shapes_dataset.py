"""Generates the built-in shapes data set: circles, squares and triangles
of random bright colors, several to an image, some overlapping, on a dark,
noisy background.

    python tools/misc/make_shapes_dataset.py --task instance --out data/shapes
    python tools/misc/make_shapes_dataset.py --task semseg \
        --out data/shapes_seg

--task instance writes COCO-format instance segmentation (masks as RLE of
the visible part of each shape):
    OUT/train/*.png, OUT/val/*.png,
    OUT/annotations/instances_train.json, OUT/annotations/instances_val.json
--task semseg writes the ADE20K layout, labels 0 (background) to 3:
    OUT/images/{training,validation}/*.png,
    OUT/annotations/{training,validation}/*.png

The output depends only on the arguments: image i of a split is drawn from
its own seed, so the data are the same on every machine and every run.
A complete output made with the same arguments is left as it is.
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CLASSES = ('circle', 'square', 'triangle')
SPLITS = {'train': 'training', 'val': 'validation'}
# a shape whose visible part is smaller than this share of it is left out
# of the annotations, and of the image: it is not drawn at all
MIN_VISIBLE = 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--task', choices=('instance', 'semseg'), default='instance')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument(
        '--size',
        type=int,
        default=128,
        help='side of the square images, in pixels')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def shape_mask(label, center, radius, angle, size):
    """A filled shape as a (size, size) bool mask."""
    canvas = np.zeros((size, size), np.uint8)
    if CLASSES[label] == 'circle':
        cv2.circle(canvas, center, radius, 1, thickness=-1)
    else:
        corners = 4 if CLASSES[label] == 'square' else 3
        angles = angle + np.arange(corners) * 2 * np.pi / corners
        points = np.stack([
            center[0] + radius * np.cos(angles),
            center[1] + radius * np.sin(angles)
        ],
                          axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def shape_color(rng):
    """A bright color, at least one channel above 180: shapes stand out
    from the dark background, while their color says nothing of their
    class."""
    color = rng.randint(60, 256, size=3)
    color[rng.randint(3)] = rng.randint(180, 256)
    return color


def draw_image(seed, size):
    """One image and its shapes, the later ones on top.

    Returns:
        tuple: (size, size, 3) uint8 BGR image; list of (label, visible
        mask) for the shapes that stay visible enough.
    """
    rng = np.random.RandomState(seed)
    background = rng.randint(0, 50, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0,
                    255)
    owner = np.full((size, size), -1, np.int64)  # which shape each pixel shows
    shapes = []
    for index in range(rng.randint(2, 6)):
        label = rng.randint(len(CLASSES))
        radius = rng.randint(size // 12, size // 4)
        center = tuple(int(c) for c in rng.randint(radius, size - radius, 2))
        mask = shape_mask(label, center, radius, rng.uniform(0, 2 * np.pi),
                          size)
        shapes.append((label, mask, shape_color(rng)))
        owner[mask] = index
    kept = [(label, mask, color)
            for index, (label, mask, color) in enumerate(shapes)
            if (owner == index).sum() >= MIN_VISIBLE * mask.sum()]
    owner[:] = -1
    for index, (_, mask, color) in enumerate(kept):
        owner[mask] = index
        image[mask] = color
    objects = [(label, owner == index)
               for index, (label, _, _) in enumerate(kept)]
    return image.astype(np.uint8), objects


def coco_annotations(objects, image_id, first_id):
    annotations = []
    for offset, (label, mask) in enumerate(objects):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode()
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        annotations.append(
            dict(
                id=first_id + offset,
                image_id=image_id,
                category_id=label + 1,
                bbox=[x, y, w, h],
                area=float(mask.sum()),
                segmentation=rle,
                iscrowd=0))
    return annotations


def image_seed(seed, split, index):
    return seed * 1_000_003 + (0 if split == 'train' else 500_009) + index


def write_instance_split(args, split, count):
    image_dir = osp.join(args.out, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, objects = draw_image(
            image_seed(args.seed, split, index), args.size)
        name = f'{index:05d}.png'
        cv2.imwrite(osp.join(image_dir, name), image)
        images.append(
            dict(id=index, file_name=name, height=args.size, width=args.size))
        annotations += coco_annotations(objects, index, len(annotations) + 1)
    coco = dict(
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)
        ])
    os.makedirs(osp.join(args.out, 'annotations'), exist_ok=True)
    with open(instance_ann_file(args.out, split), 'w') as f:
        json.dump(coco, f)
    return len(annotations)


def write_semseg_split(args, split, count):
    image_dir = osp.join(args.out, 'images', SPLITS[split])
    label_dir = osp.join(args.out, 'annotations', SPLITS[split])
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    shapes = 0
    for index in range(count):
        image, objects = draw_image(
            image_seed(args.seed, split, index), args.size)
        labels = np.zeros(image.shape[:2], np.uint8)
        for label, mask in objects:
            labels[mask] = label + 1
        cv2.imwrite(osp.join(image_dir, f'{index:05d}.png'), image)
        cv2.imwrite(osp.join(label_dir, f'{index:05d}.png'), labels)
        shapes += len(objects)
    return shapes


def instance_ann_file(out, split):
    return osp.join(out, 'annotations', f'instances_{split}.json')


def main(argv=None):
    args = parse_args(argv)
    # written last, so that it marks a complete output
    manifest_file = osp.join(args.out, 'shapes_dataset.json')
    manifest = {k: v for k, v in vars(args).items() if k != 'out'}
    if osp.isfile(manifest_file):
        with open(manifest_file) as f:
            existing = json.load(f)
        if existing != manifest:
            raise SystemExit(
                f'{args.out} holds a shapes data set made with {existing}, '
                f'not {manifest}; delete it or choose another --out')
        print(f'{args.out} is already there; delete it to generate anew')
        return
    write_split = (
        write_instance_split
        if args.task == 'instance' else write_semseg_split)
    for split, count in (('train', args.num_train), ('val', args.num_val)):
        shapes = write_split(args, split, count)
        print(f'{args.task} {split}: {count} images of {args.size}x'
              f'{args.size}, {shapes} shapes -> {args.out}')
    with open(manifest_file, 'w') as f:
        json.dump(manifest, f)


if __name__ == '__main__':
    main()
