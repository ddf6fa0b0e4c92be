"""tools/infer.py: a detector's or segmentor's predictions on images, folders
and videos, drawn and written for machines, through MMDetection's and
MMSegmentation's inferencers, with a checkpoint in PyTorch or an exported
graph in onnxruntime; and the errors that bad input gets."""
import contextlib
import io
import json

import cv2
import mmcv
import numpy as np
import pycocotools.mask as mask_util
import pytest
from mmengine.config import Config

from mmcvt.deployment import runtime
from .tiny_models import DEMO_CONFIGS, save_checkpoint, write_tiny_config
from .utils import load_tool

infer = load_tool('infer.py')
export_tool = load_tool('deployment/export_onnx.py')
FEW_DETECTIONS = ['model.test_cfg.rcnn.max_per_img=5']


def shapes_image(path, height=96, width=128, shift=0):
    """A picture of a red disc and a green square on grey."""
    image = np.full((height, width, 3), 90, np.uint8)
    cv2.circle(image, (30 + shift, 40), 18, (40, 30, 220), -1)
    cv2.rectangle(image, (70, 30), (100, 70), (60, 170, 20), -1)
    if path is not None:
        mmcv.imwrite(image, str(path))
    return image


def write_video(path, num_frames, height=64, width=96):
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, (width, height))
    assert writer.isOpened()
    for i in range(num_frames):
        writer.write(shapes_image(None, height, width, shift=8 * i))
    writer.release()
    return path


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp('models')
    found = {}
    for kind in ('maskrcnn', 'upernet'):
        config = write_tiny_config(kind, root)
        found[kind] = (config, save_checkpoint(config, root / f'{kind}.pth'))
    return found


@pytest.fixture(scope='module')
def detections(models, tmp_path_factory):
    """tools/infer.py with the detector on a folder of two images, keeping
    every detection (--score-thr 0: the model is untrained) of the 5 best
    (drawing MMDetection's default 100 masks takes seconds)."""
    root = tmp_path_factory.mktemp('detections')
    (root / 'images').mkdir()
    for i in range(2):
        shapes_image(root / 'images' / f'img{i}.jpg', shift=10 * i)
    config, checkpoint = models['maskrcnn']
    infer.main([
        str(root / 'images'),
        str(config), '--weights',
        str(checkpoint), '--out-dir',
        str(root / 'out'), '--score-thr', '0', '--device', 'cpu',
        '--cfg-options', *FEW_DETECTIONS
    ])
    return root


@pytest.fixture(scope='module')
def segmentations(models, tmp_path_factory):
    """tools/infer.py with the segmentor on a video of 3 frames and an
    image."""
    root = tmp_path_factory.mktemp('segmentations')
    video = write_video(root / 'clip.mp4', 3)
    image = shapes_image(root / 'still.png')
    config, checkpoint = models['upernet']
    infer.main([
        str(video),
        str(root / 'still.png'),
        str(config), '--weights',
        str(checkpoint), '--out-dir',
        str(root / 'out')
    ])
    return root, image


def test_a_detector_draws_each_image_of_a_folder_at_its_size(detections):
    for i in range(2):
        drawn = mmcv.imread(detections / 'out' / 'vis' / f'img{i}.jpg')
        assert drawn.shape == (96, 128, 3)


def test_a_detector_writes_boxes_scores_labels_and_rle_masks_as_json(
        detections):
    result = json.loads((detections / 'out/preds/img0.json').read_text())
    num = len(result['scores'])
    assert num > 0
    assert len(result['labels']) == len(result['bboxes']) == num
    assert len(result['masks']) == len(result['label_names']) == num
    classes = ('circle', 'square', 'triangle')
    assert result['label_names'] == [classes[i] for i in result['labels']]
    for box in result['bboxes']:
        x1, y1, x2, y2 = box
        assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 96
    masks = mask_util.decode(result['masks'])  # COCO RLE
    assert masks.shape == (96, 128, num)


def test_score_thr_keeps_only_the_detections_scored_above_it(
        detections, models, tmp_path):
    every = json.loads((detections / 'out/preds/img0.json').read_text())
    threshold = float(np.median(every['scores']))
    config, checkpoint = models['maskrcnn']
    infer.main([
        str(detections / 'images' / 'img0.jpg'),
        str(config), '--weights',
        str(checkpoint), '--out-dir',
        str(tmp_path), '--score-thr',
        str(threshold), '--cfg-options', *FEW_DETECTIONS
    ])
    kept = json.loads((tmp_path / 'preds/img0.json').read_text())
    assert kept['scores'] == [s for s in every['scores'] if s > threshold]
    assert 0 < len(kept['scores']) < len(every['scores'])


def test_a_video_is_drawn_and_labelled_frame_by_frame(segmentations):
    root, _ = segmentations
    drawn = mmcv.VideoReader(str(root / 'out/vis/clip.mp4'))
    assert (drawn.frame_cnt, drawn.height, drawn.width) == (3, 64, 96)
    for frame in range(3):
        labels = mmcv.imread(root / f'out/preds/clip/{frame:06d}.png',
                             'unchanged')
        assert labels.shape == (64, 96) and labels.dtype == np.uint8


def test_a_segmentor_writes_a_label_map_png_of_the_image_size(segmentations):
    root, image = segmentations
    labels = mmcv.imread(root / 'out/preds/still.png', 'unchanged')
    assert labels.shape == image.shape[:2]
    assert labels.max() < 4  # background and the three shapes
    assert mmcv.imread(root / 'out/vis/still.png').shape == image.shape


def test_a_missing_input_is_an_error_naming_it(models, tmp_path):
    config, checkpoint = models['upernet']
    with pytest.raises(FileNotFoundError, match='absent.png does not exist'):
        infer.main([
            str(tmp_path / 'absent.png'),
            str(config), '--weights',
            str(checkpoint), '--out-dir',
            str(tmp_path)
        ])


def test_an_undecodable_video_is_an_error_naming_it(models, tmp_path):
    (tmp_path / 'broken.mp4').write_bytes(b'no video here' * 100)
    config, checkpoint = models['upernet']
    with pytest.raises(ValueError, match='cannot decode the video .*broken'):
        infer.main([
            str(tmp_path / 'broken.mp4'),
            str(config), '--weights',
            str(checkpoint), '--out-dir',
            str(tmp_path / 'out')
        ])


def test_an_unreadable_image_is_an_error_naming_it(models, tmp_path):
    (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    config, checkpoint = models['upernet']
    with pytest.raises(ValueError, match='cannot read the image .*cut.png'):
        infer.main([
            str(tmp_path / 'cut.png'),
            str(config), '--weights',
            str(checkpoint), '--out-dir',
            str(tmp_path / 'out')
        ])


def test_a_checkpoint_of_another_model_is_an_error_naming_its_keys(
        models, tmp_path):
    shapes_image(tmp_path / 'a.png')
    config, _ = models['upernet']
    _, detector_checkpoint = models['maskrcnn']
    with pytest.raises(
            RuntimeError,
            match=r'(?s)maskrcnn.pth does not fit the model.*'
            r'missing keys.*decode_head'):
        infer.main([
            str(tmp_path / 'a.png'),
            str(config), '--weights',
            str(detector_checkpoint), '--out-dir',
            str(tmp_path)
        ])


def test_two_inputs_that_would_write_the_same_files_are_an_error(
        models, tmp_path):
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        shapes_image(tmp_path / folder / 'x.png')
    config, checkpoint = models['upernet']
    with pytest.raises(ValueError, match='would write the same outputs'):
        infer.main([
            str(tmp_path / 'a'),
            str(tmp_path / 'b'),
            str(config), '--weights',
            str(checkpoint), '--out-dir',
            str(tmp_path / 'out')
        ])


def test_score_thr_with_a_segmentor_is_an_error(models, tmp_path):
    shapes_image(tmp_path / 'a.png')
    config, checkpoint = models['upernet']
    with pytest.raises(ValueError, match='--score-thr is for detectors'):
        infer.main([
            str(tmp_path / 'a.png'),
            str(config), '--weights',
            str(checkpoint), '--out-dir',
            str(tmp_path), '--score-thr', '0.5'
        ])


# ---- the onnxruntime backend ---------------------------------------------


def test_a_segmentors_threshold_of_0_is_the_graphs_threshold():
    cfg = Config(
        dict(
            default_scope='mmseg',
            model=dict(decode_head=dict(out_channels=1, threshold=0.0))))
    model = runtime.onnxruntime_model_cfg(cfg, 'model.onnx')
    assert model['threshold'] == 0.0


def export(config, checkpoint, path, *options):
    """tools/deployment/export_onnx.py, quietly; at the demos' 128x128."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = export_tool.main([
            str(config),
            str(checkpoint), '--out',
            str(path), '--shape', '128', '128', *options
        ])
    assert status == 0
    return path


@pytest.fixture(scope='module')
def both_backends(models, shapes, tmp_path_factory):
    """tools/infer.py with the tiny demo Mask R-CNN on the shapes'
    validation images, once with its checkpoint and once with its graph;
    the 5 best detections per image, every one kept (--score-thr 0). Each
    run from the same state of numpy's RNG, from which MMDetection's
    visualizer jitters the colours of masks."""
    root = tmp_path_factory.mktemp('both_backends')
    config, checkpoint = models['maskrcnn']
    graph = export(config, checkpoint, root / 'maskrcnn.onnx', '--cfg-options',
                   *FEW_DETECTIONS)
    for name, weights in (('pytorch', checkpoint), ('onnxruntime', graph)):
        np.random.seed(0)
        infer.main([
            str(shapes / 'val'),
            str(config), '--weights',
            str(weights), '--out-dir',
            str(root / name), '--score-thr', '0', '--device', 'cpu',
            '--cfg-options', *FEW_DETECTIONS
        ])
    return root, sorted(p.stem for p in (shapes / 'val').glob('*.png'))


def as_detections(result):
    """A JSON of preds/ as the arrays a graph outputs."""
    found = dict(
        bboxes=np.array(result['bboxes'], np.float32).reshape(-1, 4),
        scores=np.array(result['scores'], np.float32),
        labels=np.array(result['labels']))
    if result['masks']:
        found['masks'] = mask_util.decode(result['masks']).transpose(2, 0, 1)
    return found


@pytest.mark.slow
def test_onnxruntime_writes_the_json_pytorch_writes_on_the_demo_images(
        both_backends):
    """Detection by detection, within the export's bounds (box IoU 0.99,
    score 1e-3, mask IoU 0.98), with the same label names."""
    import torch
    from mmengine.structures import InstanceData

    from mmcvt.deployment.detection_check import compare_detections
    root, stems = both_backends
    for stem in stems:
        by = {
            name: json.loads(
                (root / name / 'preds' / f'{stem}.json').read_text())
            for name in ('pytorch', 'onnxruntime')
        }
        assert len(by['pytorch']['scores']) == 5
        assert by['onnxruntime']['label_names'] == [
            ('circle', 'square', 'triangle')[i]
            for i in by['onnxruntime']['labels']
        ]
        reference = InstanceData(
            **{
                key: torch.from_numpy(value)
                for key, value in as_detections(by['pytorch']).items()
            })
        comparison = compare_detections(
            as_detections(by['onnxruntime']), reference, 0, 5)
        assert comparison.ok, (stem, comparison.describe())
        assert comparison.matched >= 4


@pytest.mark.slow
def test_onnxruntime_draws_the_pictures_pytorch_draws(both_backends):
    root, stems = both_backends
    for stem in stems:
        drawn = [
            mmcv.imread(root / name / 'vis' / f'{stem}.png').astype(int)
            for name in ('pytorch', 'onnxruntime')
        ]
        assert drawn[0].shape == drawn[1].shape == (128, 128, 3)
        # the same boxes, labels and masks, up to a pixel of rounding
        assert np.mean(drawn[0] != drawn[1]) < 0.01


@pytest.mark.slow
def test_onnxruntime_labels_the_pixels_pytorch_labels(models, shapes_seg,
                                                      tmp_path):
    config, checkpoint = models['upernet']
    graph = export(config, checkpoint, tmp_path / 'upernet.onnx')
    images = sorted((shapes_seg / 'images' / 'validation').glob('*.png'))[:3]
    assert images
    for name, weights in (('pytorch', checkpoint), ('onnxruntime', graph)):
        infer.main([
            *map(str, images),
            str(config), '--weights',
            str(weights), '--out-dir',
            str(tmp_path / name)
        ])
    for image in images:
        labels = [
            mmcv.imread(tmp_path / name / 'preds' / image.name, 'unchanged')
            for name in ('pytorch', 'onnxruntime')
        ]
        assert np.mean(labels[0] == labels[1]) > 0.999


@pytest.mark.parametrize(
    'weights, options, message',
    [('model.onnx', ['--backend', 'pytorch'], 'runs a checkpoint'),
     ('model.pth', ['--backend', 'onnxruntime'], 'runs an exported .onnx'),
     ('model.onnx', ['--device', 'cuda:0'], 'runs on the CPU')])
def test_a_backend_that_cannot_run_the_weights_is_a_usage_error(
        weights, options, message, tmp_path, capsys):
    (tmp_path / weights).write_bytes(b'')
    shapes_image(tmp_path / 'a.png')
    with pytest.raises(SystemExit) as exit_:
        infer.main([
            str(tmp_path / 'a.png'),
            str(DEMO_CONFIGS['maskrcnn']), '--weights',
            str(tmp_path / weights), '--out-dir',
            str(tmp_path / 'out'), *options
        ])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
