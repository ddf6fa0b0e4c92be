"""Whole detectors to ONNX (mmcvt.deployment.detectors, ops and
detection_check; tools/deployment/export_onnx.py): a module from a raw
image to what ``model.predict`` gives, that torch's exporter turns into a
graph of standard ONNX ops, and its check in onnxruntime detection by
detection.

Tiny versions of the shipped configs (tests/tiny_models.py): the export
module against ``model.predict`` in PyTorch on images of odd sizes (the
same code up to the order of additions: boxes to 1e-4 px), then exported
by the tool and verified in onnxruntime at two odd sizes that are not the
export size (slow)."""
import re

import numpy as np
import onnx
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import InstanceData

from mmcvt.deployment import detection_check
from mmcvt.deployment.deformable import DeformableAttentionOfSizes
from mmcvt.deployment.detection_check import (compare_detections,
                                              predicted_instances)
from mmcvt.deployment.detectors import detections_module
from mmcvt.deployment.inputs import random_image
from mmcvt.deployment.onnx_export import default_part, whole_model_problem
from mmcvt.deployment.ops import batched_nms, roi_align
from .tiny_models import save_checkpoint, write_tiny_config
from .utils import REPO, load_tool, run_main

export_tool = load_tool('deployment/export_onnx.py')

ODD_SHAPES = [(1, 3, 97, 161), (1, 3, 145, 99)]  # not multiples of 32
EXPORT_SIZE = (160, 192)  # RetinaNet's P7 is 2x2 there, the least it takes


def built(config, seed=0, **options):
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    init_default_scope(cfg.default_scope)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
        model.init_weights()
    return model.eval()


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """kind -> (config path, built model)"""
    root = tmp_path_factory.mktemp('tiny')
    found = {}

    def get(kind):
        if kind not in found:
            config = write_tiny_config(kind, root)
            found[kind] = (config, built(config))
        return found[kind]

    return get


@pytest.mark.parametrize('kind', ['maskrcnn', 'cascade', 'retinanet', 'dino'])
def test_the_export_module_gives_what_model_predict_gives(kind, tiny):
    _, model = tiny(kind)
    module = detections_module(model)
    for seed, shape in enumerate(ODD_SHAPES):
        image = random_image(shape, seed)
        expected = predicted_instances(model, image)
        with torch.no_grad():
            got = dict(zip(module.output_names, module(image)))
        assert len(expected) > 0
        torch.testing.assert_close(
            got['bboxes'], expected.bboxes, rtol=0, atol=1e-4)
        torch.testing.assert_close(
            got['scores'], expected.scores, rtol=0, atol=1e-6)
        assert torch.equal(got['labels'], expected.labels)
        if 'masks' in expected:
            assert got['masks'].shape == (len(expected), *shape[2:])
            assert torch.equal(got['masks'], expected.masks)


def test_instance_segmenters_output_masks_and_detectors_do_not(tiny):
    names = {
        kind: detections_module(tiny(kind)[1]).output_names
        for kind in ('maskrcnn', 'retinanet', 'dino')
    }
    assert names['maskrcnn'] == ('bboxes', 'scores', 'labels', 'masks')
    assert names['retinanet'] == names['dino'] == ('bboxes', 'scores',
                                                   'labels')


def test_the_export_leaves_the_models_own_modules_as_they_were(tiny):
    """DINO's deformable attention is wrapped in a copy: the model keeps
    running mmcv's as it is, the export module runs it only through
    DeformableAttentionOfSizes."""
    from mmcv.ops import MultiScaleDeformableAttention

    def holders(module):
        return [
            type(parent) for parent in module.modules()
            for child in parent.children()
            if isinstance(child, MultiScaleDeformableAttention)
        ]

    _, model = tiny('dino')
    before = [type(m) for m in model.modules()]
    module = detections_module(model)
    assert [type(m) for m in model.modules()] == before
    assert DeformableAttentionOfSizes not in holders(model)
    assert set(holders(module)) == {DeformableAttentionOfSizes}


def test_an_image_too_small_for_dinos_queries_is_refused_with_the_size(tiny):
    """The tiny DINO selects 50 queries among its encoder's tokens; at
    32x32 it has fewer. The size named is the smallest square that has
    enough."""
    module = detections_module(tiny('dino')[1])
    assert module.size_problem(*ODD_SHAPES[0][2:]) is None
    problem = module.size_problem(32, 32)
    assert 'picks its 50 queries' in problem
    side = int(re.search(r'images of (\d+)x\1 or more', problem)[1])
    assert module.num_tokens(side, side) >= 50
    assert module.num_tokens(side - 1, side - 1) < 50


def test_dino_with_a_padding_preprocessor_is_refused_saying_why(tmp_path):
    model = built(
        write_tiny_config('dino', tmp_path),
        **{'model.data_preprocessor.pad_size_divisor': 32})
    problem = whole_model_problem(model)
    assert 'pads (pad_size_divisor > 1)' in problem


def test_a_detector_the_export_does_not_cover_exports_its_neck_naming_why():
    cfg = Config.fromfile(REPO / 'configs/mask2former_cvt13_coco.py')
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    assert whole_model_problem(model).startswith(
        'a whole Mask2Former is not exported: it is none of the detectors '
        'the export covers')
    assert default_part(model) == 'neck'


@pytest.mark.parametrize('kind, extractor', [
    ('maskrcnn', 'bbox_roi_extractor'),
    ('maskrcnn', 'mask_roi_extractor'),
    ('cascade', 'bbox_roi_extractor[1]'),
])
def test_a_roi_extractor_the_export_does_not_cover_is_named_as_in_the_model(
        kind, extractor, tiny, monkeypatch):
    _, model = tiny(kind)
    name, _, index = extractor.partition('[')
    module = getattr(model.roi_head, name)
    if index:
        module = module[int(index.rstrip(']'))]
    # ONNX's RoiAlign pools with max otherwise than mmcv's
    monkeypatch.setattr(module.roi_layers[0], 'pool_mode', 'max')
    assert whole_model_problem(model).startswith(
        f'a whole {type(model).__name__} is not exported: '
        f'roi_head.{extractor} pools with RoIAlign(')


def test_a_roi_heads_batch_norm_is_the_same_affine_map_in_the_export(tiny):
    """The cascade's 4conv1fc heads normalise with (reverted Sync)
    BatchNorms, which torch's exporter cannot trace on a number of RoIs that
    the data make: the exported copy has the affine map they compute."""
    from mmcvt.deployment.onnx_export import BatchNormAsAffine, exportable_copy
    _, model = tiny('cascade')
    module = detections_module(model)
    exported = exportable_copy(module)
    swapped = [
        name for name, sub in exported.named_modules()
        if isinstance(sub, BatchNormAsAffine)
    ]
    assert swapped and all('roi_head.' in name for name in swapped)
    norm = exported.get_submodule(swapped[0]).norm
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    x = torch.randn(5, norm.num_features, 7, 7)
    torch.testing.assert_close(
        exported.get_submodule(swapped[0])(x), norm(x), rtol=1e-5, atol=1e-5)


# ---- the ops -----------------------------------------------------------


def test_batched_nms_keeps_what_mmcv_keeps_best_first():
    from mmcv.ops import batched_nms as mmcv_batched_nms
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(200, 2, generator=generator) * 100
    boxes = torch.cat(
        [corners, corners + 5 + torch.rand(200, 2, generator=generator) * 40],
        1)
    scores = torch.rand(200, generator=generator)
    groups = torch.randint(0, 4, (200, ), generator=generator)
    keep = batched_nms(boxes, scores, groups, 4, 0.5)
    _, expected = mmcv_batched_nms(boxes, scores, groups,
                                   dict(type='nms', iou_threshold=0.5))
    assert torch.equal(keep, expected)
    assert torch.all(scores[keep][1:] <= scores[keep][:-1])


def test_batched_nms_of_no_box_keeps_none():
    keep = batched_nms(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 3,
        0.5)
    assert keep.shape == (0, ) and keep.dtype == torch.long


class OpsModule(torch.nn.Module):
    """NMS of boxes made from ``x``, then RoIAlign of the kept boxes on
    ``features``: both ops, with data-made sizes in between."""

    def forward(self, features, x):
        boxes = torch.cat([x[:, :2] * 40, x[:, :2] * 40 + x[:, 2:4] * 30 + 1],
                          1)
        keep = batched_nms(boxes, x[:, 4], (x[:, 5] * 3).long(), 3, 0.4)
        rois = torch.cat([boxes.new_zeros(keep.shape[0], 1), boxes[keep]], 1)
        return keep, roi_align(features, rois, 7, 7, 0.25, 0, True)


@pytest.mark.slow
def test_the_ops_run_as_standard_onnx_ops_in_onnxruntime(tmp_path):
    from mmcvt.deployment.onnx_export import onnxruntime_session
    from mmcvt.deployment.ops import onnx_translations
    generator = torch.Generator().manual_seed(0)

    def inputs(height, width, num_boxes):
        return (torch.randn(1, 8, height, width, generator=generator),
                torch.rand(num_boxes, 6, generator=generator))

    program = torch.export.export(
        OpsModule(),
        inputs(24, 32, 40),
        dynamic_shapes=({
            2: torch.export.Dim.DYNAMIC,
            3: torch.export.Dim.DYNAMIC
        }, {
            0: torch.export.Dim.DYNAMIC
        }),
        strict=False)
    path = str(tmp_path / 'ops.onnx')
    torch.onnx.export(
        program,
        dynamo=True,
        input_names=['features', 'x'],
        custom_translation_table=onnx_translations()).save(path)
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} == {''}
    assert {'NonMaxSuppression', 'RoiAlign'} <= {n.op_type for n in graph.node}
    session = onnxruntime_session(path)
    for size in [(19, 45, 60), (40, 23, 17)]:
        features, x = inputs(*size)
        keep, pooled = session.run(None, {
            'features': features.numpy(),
            'x': x.numpy()
        })
        expected_keep, expected_pooled = OpsModule()(features, x)
        assert np.array_equal(keep, expected_keep.numpy())
        np.testing.assert_allclose(
            pooled, expected_pooled.numpy(), rtol=0, atol=1e-5)


# ---- detection by detection --------------------------------------------


def detections(boxes, scores, labels):
    return dict(
        bboxes=np.array(boxes, np.float32),
        scores=np.array(scores, np.float32),
        labels=np.array(labels))


def instances(found):
    return InstanceData(**{
        key: torch.from_numpy(v)
        for key, v in found.items()
    })


BOXES = [[0, 0, 10, 10], [20, 20, 40, 30], [50, 5, 70, 25]]


def test_detections_in_another_order_match_one_to_one():
    reference = detections(BOXES, [0.9, 0.5, 0.3], [0, 1, 0])
    output = detections(BOXES[::-1], [0.3, 0.5, 0.9], [0, 1, 0])
    comparison = compare_detections(output, instances(reference), 0.05, 100)
    assert comparison.ok and comparison.matched == 3


def test_a_box_moved_by_a_pixel_is_out_of_bounds():
    reference = detections(BOXES, [0.9, 0.5, 0.3], [0, 1, 0])
    moved = [list(box) for box in BOXES]
    moved[0][2] += 1  # IoU 10/11
    comparison = compare_detections(
        detections(moved, [0.9, 0.5, 0.3], [0, 1, 0]), instances(reference),
        0.05, 100)
    assert not comparison.ok
    assert comparison.worst_box_iou == pytest.approx(10 / 11)


def test_a_box_under_a_pixel_must_be_within_a_hundredth_of_a_pixel():
    """Its IoU says nothing: 1e-3 px of 0.2 px is 0.5%."""
    thin = [[0, 0, 10, 0.2], *BOXES[1:]]
    reference = detections(thin, [0.9, 0.5, 0.3], [0, 1, 0])
    close = [[0, 0, 10, 0.201], *BOXES[1:]]
    comparison = compare_detections(
        detections(close, [0.9, 0.5, 0.3], [0, 1, 0]), instances(reference),
        0.05, 100)
    assert comparison.ok and comparison.worst_box_iou == 1
    assert comparison.worst_tiny_box_pixels == pytest.approx(1e-3, rel=1e-2)
    far = [[0, 0, 10, 0.22], *BOXES[1:]]
    comparison = compare_detections(
        detections(far, [0.9, 0.5, 0.3], [0, 1, 0]), instances(reference),
        0.05, 100)
    assert not comparison.ok


def test_a_score_off_by_more_than_1e_3_is_out_of_bounds():
    reference = detections(BOXES, [0.9, 0.5, 0.3], [0, 1, 0])
    comparison = compare_detections(
        detections(BOXES, [0.9, 0.502, 0.3], [0, 1, 0]), instances(reference),
        0.05, 100)
    assert not comparison.ok
    assert comparison.worst_score_difference == pytest.approx(2e-3, rel=1e-3)


def test_another_label_is_no_partner():
    reference = detections(BOXES, [0.9, 0.5, 0.3], [0, 1, 0])
    comparison = compare_detections(
        detections(BOXES, [0.9, 0.5, 0.3], [0, 2, 0]), instances(reference),
        0.05, 100)
    assert not comparison.ok and comparison.matched == 2
    assert comparison.unmatched == pytest.approx([0.5, 0.5])


def test_a_detection_missing_above_the_cutoffs_fails():
    reference = detections(BOXES, [0.9, 0.5, 0.3], [0, 1, 0])
    comparison = compare_detections(
        detections(BOXES[:2], [0.9, 0.5], [0, 1]), instances(reference), 0.05,
        100)
    assert not comparison.ok
    assert comparison.unmatched == pytest.approx([0.3])


def test_a_detection_missing_at_the_score_threshold_is_tolerated():
    reference = detections(BOXES, [0.9, 0.5, 0.0504], [0, 1, 0])
    comparison = compare_detections(
        detections(BOXES[:2], [0.9, 0.5], [0, 1]), instances(reference), 0.05,
        100)
    assert comparison.ok and comparison.unmatched_at_cutoff == 1


def test_a_detection_cut_off_by_max_per_img_is_tolerated():
    """Both keep 2: the third best of one run is the second of the other,
    their scores within 1e-3."""
    reference = detections(BOXES[:2], [0.9, 0.5], [0, 1])
    output = detections([BOXES[0], BOXES[2]], [0.9, 0.4995], [0, 0])
    comparison = compare_detections(output, instances(reference), 0.05, 2)
    assert comparison.ok and comparison.unmatched_at_cutoff == 2


def test_masks_that_differ_by_more_than_2_percent_are_out_of_bounds():
    reference = detections(BOXES[:1], [0.9], [0])
    masks = np.zeros((1, 50, 80), bool)
    masks[0, :10, :10] = True
    reference['masks'] = masks
    output = dict(reference, masks=masks.copy())
    output['masks'][0, 9, :] = False  # 10 of 100 pixels
    comparison = compare_detections(output, instances(reference), 0.05, 100)
    assert not comparison.ok
    assert comparison.worst_mask_iou == pytest.approx(0.9)


# ---- exported and verified by the tool -----------------------------------


def run_tool(*args):
    return run_main(export_tool, *args)


def verified(printed):
    """shape -> (detections by onnxruntime, by PyTorch, matched)"""
    return {
        shape: tuple(map(int, counts))
        for shape, *counts in re.findall(
            r'^  (\d+x3x\d+x\d+): (\d+) detections by onnxruntime, (\d+) '
            r'by PyTorch, (\d+) matched', printed, re.M)
    }


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """kind -> (the tool's status, what it printed, the graph's path): each
    tiny detector exported at EXPORT_SIZE and verified at ODD_SHAPES."""
    root = tmp_path_factory.mktemp('exported')
    found = {}

    def get(kind):
        if kind not in found:
            config = write_tiny_config(kind, root)
            checkpoint = save_checkpoint(config, root / f'{kind}.pth')
            path = root / f'{kind}.onnx'
            status, printed = run_tool(
                config, checkpoint, '--out', path, '--shape', *EXPORT_SIZE,
                '--verify', '--verify-shapes',
                *('x'.join(map(str, shape)) for shape in ODD_SHAPES))
            found[kind] = (status, printed, str(path))
        return found[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['retinanet', 'maskrcnn', 'dino', 'cascade'])
def test_a_tiny_detector_exports_whole_and_verifies_at_odd_sizes(
        kind, exported):
    status, printed, _ = exported(kind)
    assert status == 0, printed
    assert 'exported the whole' in printed
    counts = verified(printed)
    assert set(counts) == {'x'.join(map(str, s)) for s in ODD_SHAPES}
    for by_onnxruntime, by_pytorch, matched in counts.values():
        assert matched > 0 and by_pytorch > 0
        assert by_onnxruntime - matched <= 2 and by_pytorch - matched <= 2
    if kind in ('maskrcnn', 'cascade'):
        assert 'mask IoU' in printed


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['retinanet', 'maskrcnn', 'dino'])
def test_a_detector_graph_has_standard_ops_only_and_takes_one_image(
        kind, exported):
    model = onnx.load(exported(kind)[2])
    assert [(o.domain, o.version) for o in model.opset_import] == [('', 20)]
    assert not model.functions
    assert {node.domain for node in model.graph.node} == {''}
    image, = model.graph.input
    dims = [
        d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim
    ]
    assert dims == [1, 3, 'height', 'width']


@pytest.mark.slow
def test_the_graph_carries_the_checkpoints_classes(exported):
    import json
    model = onnx.load(exported('maskrcnn')[2])
    meta = json.loads({p.key: p.value
                       for p in model.metadata_props}['dataset_meta'])
    assert meta['classes'] == ['circle', 'square', 'triangle']


@pytest.mark.slow
def test_verify_fails_when_a_detection_differs(exported, tiny, monkeypatch,
                                               capsys):
    """The tool's verdict rests on the comparison: the same graph, with its
    boxes moved by a pixel, fails it."""
    status, _, path = exported('retinanet')
    assert status == 0
    _, model = tiny('retinanet')  # the weights the checkpoint has
    module = detections_module(model)
    images = [(random_image(ODD_SHAPES[0]), 'image')]
    assert export_tool.verify_detections(path, model, module, images) == 0
    original = detection_check.compare_detections

    def moved(output, *args):
        output = dict(output, bboxes=output['bboxes'] + [0, 0, 1, 0])
        return original(output, *args)

    monkeypatch.setattr(detection_check, 'compare_detections', moved)
    assert export_tool.verify_detections(path, model, module, images) == 1
    assert 'differ beyond those bounds' in capsys.readouterr().err


@pytest.mark.slow
def test_the_benchmark_times_both_and_profiles_onnxruntime(exported, tmp_path):
    import json
    from pathlib import Path
    _, _, path = exported('retinanet')
    config = Path(path).parent / 'tiny_retinanet.py'
    status, printed = run_main(
        load_tool('analysis_tools/benchmark_onnx.py'), config, path,
        Path(path).parent / 'retinanet.pth', '--sizes', '97x161', '--warmup',
        1, '--repeat', 2, '--threads', 1, '--profile', tmp_path, '--json',
        tmp_path / 'bench.json')
    assert status == 0, printed
    result, = json.loads((tmp_path / 'bench.json').read_text())['results']
    assert result['size'] == '97x161'
    assert result['speedup'] == pytest.approx(result['eager_ms'] /
                                              result['onnxruntime_ms'])
    assert 'NonMaxSuppression' in result['onnxruntime_op_shares']
    assert sum(result['onnxruntime_op_shares'].values()) == pytest.approx(1)
    assert re.search(
        r'97x161: PyTorch eager \d+ ms \(\d+ to \d+\), '
        r'onnxruntime \d+ ms', printed)
