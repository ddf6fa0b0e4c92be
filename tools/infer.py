"""Runs a detector or segmentor on your own images and videos, through
MMDetection's DetInferencer or MMSegmentation's MMSegInferencer (the
config's ``default_scope`` picks), and writes what it finds.

    python tools/infer.py demo.jpg CONFIG --weights CHECKPOINT --out-dir out
    python tools/infer.py images/ clip.mp4 CONFIG --weights CHECKPOINT \
        --out-dir out --score-thr 0.5 --device cuda:0
    python tools/infer.py images/ CONFIG --weights model.onnx --out-dir out

The weights are a checkpoint (PyTorch), or a graph that
tools/deployment/export_onnx.py exported whole from the config's model
(onnxruntime on the CPU; ``--backend`` picks where the file's name does
not): the inferencer's pipeline, drawing and writing stay the same.

Inputs are image files, videos (run frame by frame) and folders, whose
images and videos are taken in name order. For each input it writes into
--out-dir:

- vis/NAME: the predictions drawn on the image (a video: vis/STEM.mp4);
- preds/STEM.json for a detector: ``labels``, ``label_names``, ``scores``,
  ``bboxes`` (x1, y1, x2, y2 in the input's pixels) and, for instance
  segmentation, ``masks`` as COCO RLE (pycocotools' ``{'size', 'counts'}``),
  of the detections scored above --score-thr;
- preds/STEM.png for a segmentor: the label map, one class index a pixel
  (8-bit, or 16-bit beyond 256 classes);
- for a video, preds/STEM/FRAME.json or .png, frame numbers from 000000.

The checkpoint loads strictly, as in tools/test.py: one of another model is
an error naming the keys that differ. A graph brings its classes (the
checkpoint's, stored at export); it runs whole-image inference on the
image as the test pipeline resized it, and pastes masks at that size,
resized to the original (nearest) where the pipeline resized it.
"""
import argparse
import copy
import os
import os.path as osp
import sys
import warnings

import cv2
import mmcv
import mmengine
import numpy as np
from mmengine.config import Config, DictAction
from rich.progress import MofNCompleteColumn, Progress

import mmcvt  # noqa: F401  registers CvT
from mmcvt.deployment import onnx_export, runtime
from mmcvt.engine import load_checkpoint_strictly
from mmcvt.fileio import install_checkpoint_loaders
from mmcvt.utils.arguments import run_tool
from mmcvt.utils.input_paths import config_file, weights_path
from mmcvt.utils.output_paths import output_dir

# what OpenCV decodes, as MMDetection's inferencer lists them
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg',
                    '.mpeg', '.wmv')
BACKENDS = ('pytorch', 'onnxruntime')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument(
        'inputs',
        nargs='+',
        help='image files, video files and folders of them')
    parser.add_argument(
        'config', type=config_file, help='the model\'s config file')
    parser.add_argument(
        '--weights',
        required=True,
        type=weights_path,
        help='checkpoint, loaded strictly: one that does not fit the '
        'config\'s model is an error naming the keys that differ; or an '
        '.onnx graph of the config\'s whole model')
    parser.add_argument(
        '--backend',
        choices=BACKENDS,
        help='pytorch (a checkpoint) or onnxruntime (an exported graph, on '
        'the CPU); default: onnxruntime for a .onnx file, else pytorch')
    parser.add_argument(
        '--out-dir',
        required=True,
        type=output_dir,
        help='folder to write vis/ and preds/ into')
    parser.add_argument(
        '--score-thr',
        type=float,
        help='detection: keep (draw and write) the detections scored above '
        'this (default 0.3, as MMDetection\'s inferencer draws)')
    parser.add_argument(
        '--device',
        help='e.g. cpu or cuda:0 (default: cuda:0 if there is '
        'a GPU, else the CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.score_thr is not None and not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr is a score between 0 and 1, not '
                     f'{args.score_thr}')
    graph = args.weights.lower().endswith('.onnx')
    args.backend = args.backend or BACKENDS[graph]
    if graph != (args.backend == 'onnxruntime'):
        parser.error(
            f'--backend {args.backend} runs '
            f'{"an exported .onnx graph" if not graph else "a checkpoint"}'
            f', not {args.weights}')
    if args.backend == 'onnxruntime' and args.device not in (None, 'cpu'):
        parser.error(f'--device {args.device}: the onnxruntime backend runs '
                     f'on the CPU')
    return args


def is_video(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def collect_inputs(inputs):
    """The image and video files that ``inputs`` name, folders expanded (not
    recursively) in name order. Checked before any model is built: a
    missing path, a file of another kind, an empty folder, and two inputs
    whose outputs would have the same name are errors."""
    files = []
    for path in inputs:
        if osp.isdir(path):
            found = sorted(
                osp.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
                and osp.isfile(osp.join(path, name)))
            if not found:
                raise FileNotFoundError(
                    f'{path} holds no image or video (files ending in '
                    f'{", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)})')
            files += found
        elif not osp.exists(path):
            raise FileNotFoundError(f'{path} does not exist')
        elif not path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
            raise ValueError(
                f'{path} is neither an image nor a video by its name: '
                f'expected one of {", ".join(IMAGE_EXTENSIONS)} or '
                f'{", ".join(VIDEO_EXTENSIONS)}')
        else:
            files.append(path)
    stems = {}
    for path in files:
        stem = osp.splitext(osp.basename(path))[0]
        if stem in stems:
            raise ValueError(
                f'{stems[stem]} and {path} would write the same outputs '
                f'({stem}.*): run them into different --out-dir')
        stems[stem] = path
    return files


def read_image(path):
    """The image as OpenCV decodes it (BGR), or an error naming it."""
    image = mmcv.imread(path)  # None when OpenCV cannot decode the file
    if image is None:
        raise ValueError(
            f'cannot read the image {path}: it is empty, cut short, or not '
            f'an image OpenCV decodes')
    return image


def open_video(path):
    """A VideoReader of ``path`` whose first frame decodes, or an error
    naming the file."""
    reader = mmcv.VideoReader(path)
    if not reader.opened or reader.frame_cnt < 1 or reader[0] is None:
        raise ValueError(
            f'cannot decode the video {path}: OpenCV reads no frame of it '
            f'(cut short, not a video, or a codec this OpenCV build lacks)')
    return reader


def build_inferencer(inferencer_class, cfg, weights, backend, device,
                     **kwargs):
    """The inferencer of ``cfg``'s model with the checkpoint ``weights``
    loaded strictly, or, for onnxruntime, of the graph ``weights`` (on the
    CPU, ``device`` aside)."""
    if backend == 'pytorch':
        inferencer = inferencer_class(
            model=cfg, weights=weights, device=device, **kwargs)
        # again, strictly, as tools/test.py loads: mmengine's inferencers
        # load what fits and warn about the rest, and have no public way
        # to load otherwise
        load_checkpoint_strictly(inferencer.model, weights)
        return inferencer
    cfg = copy.deepcopy(cfg)
    cfg.model = runtime.onnxruntime_model_cfg(cfg, weights)
    with runtime.without_weights_warnings():
        return inferencer_class(
            model=cfg, weights=None, device='cpu', **kwargs)


def graph_dataset_meta(weights):
    """The classes and palette that the graph carries (its checkpoint's),
    or None, with a warning."""
    meta = runtime.graph_dataset_meta(weights)
    if meta is None:
        warnings.warn(f'{weights} carries no classes (its checkpoint had '
                      f'none): the inferencer\'s defaults are used')
    return meta


class Detection:
    """A DetInferencer, and how its predictions are kept and written."""

    suffix = '.json'

    def __init__(self, cfg, weights, device, score_thr, backend):
        from mmdet.apis import DetInferencer
        self.inferencer = build_inferencer(
            DetInferencer, cfg, weights, backend, device, show_progress=False)
        self.score_thr = 0.3 if score_thr is None else score_thr
        meta = graph_dataset_meta(weights) if backend != 'pytorch' else None
        if meta:
            # as DetInferencer reads a checkpoint's: its classes, and its
            # palette where the config has none
            dataset_meta = dict(
                self.inferencer.model.dataset_meta, classes=meta['classes'])
            if meta.get('palette') and dataset_meta['palette'] == 'random':
                dataset_meta['palette'] = meta['palette']
            self.inferencer.model.dataset_meta = dataset_meta
            self.inferencer.visualizer.dataset_meta = dataset_meta

    def predict(self, image):
        sample = self.inferencer(
            image, return_datasamples=True)['predictions'][0]
        instances = sample.pred_instances
        sample.pred_instances = instances[instances.scores > self.score_thr]
        return sample

    def draw(self, image_rgb, sample):
        return self.inferencer.visualize([image_rgb], [sample],
                                         return_vis=True,
                                         pred_score_thr=self.score_thr)[0]

    def save(self, sample, path):
        result = self.inferencer.pred2dict(sample)
        classes = self.inferencer.model.dataset_meta['classes']
        result['label_names'] = [classes[i] for i in result['labels']]
        mmengine.dump(result, path)


class Segmentation:
    """An MMSegInferencer, and how its predictions are written."""

    suffix = '.png'

    def __init__(self, cfg, weights, device, backend):
        from mmseg.apis import MMSegInferencer
        self.inferencer = build_inferencer(MMSegInferencer, cfg, weights,
                                           backend, device)
        meta = graph_dataset_meta(weights) if backend != 'pytorch' else None
        if meta:
            # as MMSegInferencer reads a checkpoint's
            self.inferencer.model.dataset_meta = dict(
                classes=meta['classes'], palette=meta.get('palette'))

    def predict(self, image):
        return self.inferencer(image, return_datasamples=True)

    def draw(self, image_rgb, sample):
        return self.inferencer.visualize([image_rgb], [sample],
                                         return_vis=True)[0]

    def save(self, sample, path):
        labels = sample.pred_sem_seg.data[0].cpu().numpy()
        dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
        mmcv.imwrite(labels.astype(dtype), path)


def build_task(cfg, weights, device, score_thr, backend='pytorch'):
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        return Detection(cfg, weights, device, score_thr, backend)
    if scope == 'mmseg':
        if score_thr is not None:
            raise ValueError('--score-thr is for detectors: a segmentor '
                             'labels every pixel')
        if backend == 'onnxruntime' and \
                cfg.model.get('test_cfg', {}).get('mode') == 'slide':
            warnings.warn('the config tests in sliding windows; the graph '
                          'runs on the whole image, as the export does')
        return Segmentation(cfg, weights, device, backend)
    raise ValueError(f'{cfg.filename}: default_scope {scope!r}, expected '
                     f'mmdet or mmseg')


def run_image(task, path, out_dir):
    image = read_image(path)
    sample = task.predict(image)
    drawn = task.draw(mmcv.bgr2rgb(image), sample)
    mmcv.imwrite(
        mmcv.rgb2bgr(drawn), osp.join(out_dir, 'vis', osp.basename(path)))
    stem = osp.splitext(osp.basename(path))[0]
    task.save(sample, osp.join(out_dir, 'preds', stem + task.suffix))


def run_video(task, path, out_dir, advance):
    """Runs every frame; returns how many decoded."""
    reader = mmcv.VideoReader(path)  # from its first frame
    stem = osp.splitext(osp.basename(path))[0]
    writer = None
    decoded = 0
    try:
        for index in range(reader.frame_cnt):
            frame = reader.read()
            if frame is None:
                break
            sample = task.predict(frame)
            drawn = task.draw(mmcv.bgr2rgb(frame), sample)
            if writer is None:
                writer = open_video_writer(
                    osp.join(out_dir, 'vis', stem + '.mp4'), reader.fps,
                    drawn.shape)
            writer.write(mmcv.rgb2bgr(drawn))
            task.save(
                sample,
                osp.join(out_dir, 'preds', stem, f'{index:06d}{task.suffix}'))
            decoded += 1
            advance()
    finally:
        if writer is not None:
            writer.release()
    if decoded < reader.frame_cnt:
        warnings.warn(f'{path}: decoded {decoded} of the '
                      f'{reader.frame_cnt} frames its header announces')
    return decoded


def open_video_writer(path, fps, shape):
    mmengine.mkdir_or_exist(osp.dirname(path))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'),
                             fps if fps > 0 else 25, (shape[1], shape[0]))
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot write the video {path}')
    return writer


def run(task, files, out_dir):
    """Runs every image and video frame, with a progress bar over them
    all; returns how many images and frames ran."""
    total = sum(
        open_video(path).frame_cnt if is_video(path) else 1 for path in files)
    num_images = num_frames = 0
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task('Inference', total=total)
        for path in files:
            if is_video(path):
                num_frames += run_video(task, path, out_dir,
                                        lambda: progress.advance(bar))
            else:
                run_image(task, path, out_dir)
                num_images += 1
                progress.advance(bar)
    return num_images, num_frames


def main(argv=None):
    install_checkpoint_loaders()  # weights-only Runner checkpoints
    args = parse_args(argv)
    if args.backend == 'onnxruntime':
        onnx_export.check_onnx_extra()
    files = collect_inputs(args.inputs)
    for path in filter(is_video, files):  # before the model is built
        open_video(path)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    # this tool writes the drawings itself, through no visualizer backend
    cfg.visualizer.vis_backends = None
    task = build_task(cfg, args.weights, args.device, args.score_thr,
                      args.backend)
    num_images, num_frames = run(task, files, args.out_dir)
    kind = ('JSON: labels, scores, boxes, RLE masks' if isinstance(
        task, Detection) else 'label-map PNGs')
    print(f'{num_images} images and {num_frames} video frames -> '
          f'{osp.join(args.out_dir, "vis")} (drawn) and '
          f'{osp.join(args.out_dir, "preds")} ({kind})')


if __name__ == '__main__':
    sys.exit(run_tool(main))
