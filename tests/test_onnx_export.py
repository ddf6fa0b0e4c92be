"""ONNX export (tools/deployment/export_onnx.py, mmcvt.deployment): a whole
segmentor from a raw image to logits, a detector's backbone and neck, with
dynamic batch, height and width, checked in onnxruntime at sizes the export
did not see, non-square ones included; example sizes that would fix a size
of the graph refused. Whole detectors: tests/test_detector_export.py.

The bound: the graph computes in fp32 what PyTorch computes in fp32, in
another order, so that the relative error stays near fp32's rounding;
measured 2e-7 to 8e-7 on these models. A wrong bin, a wrong channel order or
a size fixed at export gives errors of 1e-2 and more."""
import re

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint

from mmcvt.deployment import onnx_export
from mmcvt.deployment.inputs import (channels_from_rgb, predicted_samples,
                                     random_image)
from mmcvt.deployment.onnx_export import (exportable_copy, maps_of_one_pixel,
                                          raw_image_module)
from .test_compat import WidthAsNumber
from .tiny_models import save_checkpoint, write_tiny_config
from .utils import REPO, load_tool, run_main

export_tool = load_tool('deployment/export_onnx.py')

FP32_BOUND = 1e-5
EXPORT_SIZE = (64, 96)
UNSEEN = ['1x3x96x160', '2x3x160x96']  # neither the export size nor square


def run_tool(*args):
    return run_main(export_tool, *args)


def printed_errors(printed):
    return {
        shape: float(error)
        for shape, error in re.findall(r'^  (\d+x3x\d+x\d+): (\S+)$', printed,
                                       re.M)
    }


def dynamic_axes(value_info):
    return [dim.dim_param for dim in value_info.type.tensor_type.shape.dim]


def built(config, checkpoint=None):
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        load_checkpoint(
            model, str(checkpoint), map_location='cpu', strict=True)
    return model.eval()


@pytest.fixture
def upernet_model(tmp_path):
    return built(write_tiny_config('upernet', tmp_path))


@pytest.fixture(scope='module')
def upernet(tmp_path_factory):
    """A tiny UperNet (its PPM pools adaptively) exported whole by the tool,
    with --verify at unseen sizes."""
    root = tmp_path_factory.mktemp('upernet')
    config = write_tiny_config('upernet', root)
    checkpoint = save_checkpoint(config, root / 'upernet.pth')
    path = root / 'upernet.onnx'
    status, printed = run_tool(config, checkpoint, '--out', path, '--shape',
                               *EXPORT_SIZE, '--verify', '--verify-shapes',
                               *UNSEEN)
    return dict(
        path=str(path),
        status=status,
        printed=printed,
        model=built(config, checkpoint))


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    """A tiny Mask R-CNN's backbone and FPN exported by the tool."""
    root = tmp_path_factory.mktemp('maskrcnn')
    config = write_tiny_config('maskrcnn', root)
    checkpoint = save_checkpoint(config, root / 'maskrcnn.pth')
    path = root / 'maskrcnn.onnx'
    # the FPN's stride-64 level is 2x3 there, the least the export takes
    status, printed = run_tool(config, checkpoint, '--out', path, '--part',
                               'neck', '--shape', 128, 160, '--verify',
                               '--verify-shapes', *UNSEEN)
    return dict(path=str(path), status=status, printed=printed)


@pytest.mark.slow
def test_a_whole_upernet_verifies_at_unseen_non_square_sizes(upernet):
    assert upernet['status'] == 0, upernet['printed']
    errors = printed_errors(upernet['printed'])
    assert set(errors) == set(UNSEEN)
    assert max(errors.values()) < FP32_BOUND


@pytest.mark.slow
def test_the_upernet_graph_gives_mmsegs_logits_for_uint8_images(upernet):
    """The graph against MMSegmentation's own inference: its data
    preprocessor on BGR uint8 images, then EncoderDecoder.predict."""
    from mmseg.structures import SegDataSample
    model = upernet['model']
    generator = torch.Generator().manual_seed(1)
    rgb = torch.randint(
        0, 256, (2, 3, 120, 72), generator=generator, dtype=torch.uint8)
    meta = dict(img_shape=(120, 72), ori_shape=(120, 72))
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(
                inputs=list(rgb.flip(1)),  # loaded images are BGR
                data_samples=[SegDataSample(metainfo=meta) for _ in rgb]))
        samples = model.predict(data['inputs'], data['data_samples'])
    reference = torch.stack([s.seg_logits.data for s in samples])
    session = onnx_export.onnxruntime_session(upernet['path'])
    logits, = session.run(None, {'image': rgb.float().numpy()})
    error = (torch.from_numpy(logits) - reference).norm() / reference.norm()
    assert error < FP32_BOUND


@pytest.mark.slow
def test_batch_height_and_width_are_dynamic_in_the_graph(upernet):
    graph = onnx.load(upernet['path']).graph
    image, = graph.input
    assert dynamic_axes(image) == ['batch', '', 'height', 'width']
    logits, = graph.output
    assert logits.name == 'seg_logits'
    assert all(dynamic_axes(logits)[i] for i in (0, 2, 3))


@pytest.mark.parametrize('size', [(7, 5), (6, 6), (3, 2), (1, 13)])
def test_adaptive_pooling_as_matmul_pools_the_same_bins_as_torch(size):
    x = torch.randn(2, 4, *size)
    for output_size in (1, 2, 3, 6, (2, None)):
        expected = nn.AdaptiveAvgPool2d(output_size)(x)
        pooled = onnx_export.AdaptiveAvgPool2dAsMatmul(output_size)(x)
        torch.testing.assert_close(pooled, expected)


def test_mmsegs_upsample_exports_with_a_symbolic_size(tmp_path):
    """Semantic FPN's heads upsample by mmseg's Upsample, which computes its
    size with int(): exported as it is, the size of the example."""
    from mmseg.models.utils import Upsample
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        Upsample(scale_factor=2, mode='bilinear')).eval()
    path = str(tmp_path / 'upsample.onnx')
    onnx_export.export_onnx(module, path, example_shape=(2, 3, 32, 48))
    errors = onnx_export.verify(
        path, module,
        [random_image((1, 3, 48, 80)),
         random_image((2, 3, 72, 40), seed=1)])
    assert max(errors) < FP32_BOUND


@pytest.mark.slow
def test_a_detectors_backbone_and_neck_export_with_part_neck(detector):
    assert detector['status'] == 0, detector['printed']
    assert 'exported the backbone and neck of MaskRCNN' in detector['printed']
    errors = printed_errors(detector['printed'])
    assert set(errors) == set(UNSEEN)
    assert max(errors.values()) < FP32_BOUND
    graph = onnx.load(detector['path']).graph
    # the FPN's 5 levels, strides 4 to 64
    assert [o.name
            for o in graph.output] == [f'features_{i}' for i in range(5)]


def test_an_example_size_that_makes_a_map_1_pixel_is_refused(tmp_path):
    """The tiny UperNet at 16x16 (the issue's case): its strided key/value
    projections are 1x1 there. The tool exits 1 and names the smallest
    example size at which every map is 2 pixels or more, before any
    export."""
    config = write_tiny_config('upernet', tmp_path)
    status, printed = run_tool(config, '--out', tmp_path / 'upernet.onnx',
                               '--shape', 16, 16)
    assert status == 1
    assert 'the exporter fixes in the graph every size that is 1' in printed
    height, width = map(
        int,
        re.search(r'Export at --shape (\d+) (\d+) or larger',
                  printed).groups())
    module = raw_image_module(built(config), 'model')
    assert maps_of_one_pixel(module, (2, 3, 16, 16))
    assert not maps_of_one_pixel(module, (2, 3, height, width))
    assert maps_of_one_pixel(module, (2, 3, height - 1, width))
    assert maps_of_one_pixel(module, (2, 3, height, width - 1))
    assert not (tmp_path / 'upernet.onnx').exists()


def test_a_size_the_exporter_fixes_without_an_error_is_refused(
        tmp_path, monkeypatch):
    # Dim.AUTO lets the exporter fix a size without a word, as a torch
    # whose Dim.DYNAMIC no longer raised, or raised another text, would
    monkeypatch.setattr(torch.export.Dim, 'DYNAMIC', torch.export.Dim.AUTO)
    path = tmp_path / 'width.onnx'
    with pytest.raises(
            RuntimeError,
            match='the exporter fixed the width of .*width.onnx to the '
            'example\'s: a module of this model reads that size as a number'):
        onnx_export.export_onnx(WidthAsNumber(), str(path), (2, 3, 32, 48))
    assert not path.exists()


def test_a_pooling_pyramids_constant_1x1_maps_are_no_reason_to_refuse(
        tmp_path):
    """UperNet's PPM pools to 1x1 whatever the size: not a size of the
    input that the exporter could fix."""
    module = raw_image_module(
        built(write_tiny_config('upernet', tmp_path)), 'model')
    assert not maps_of_one_pixel(module, (2, 3, *EXPORT_SIZE))


@pytest.mark.parametrize('num_queries', [5, 16, 67])
def test_attention_in_chunks_of_queries_is_the_same_attention(num_queries):
    """Fewer queries than chunks, as many, and a last chunk padded."""
    from mmcvt.models.layers import chunked_attention
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, num_queries, 8, generator=generator)
    k, v = torch.randn(2, 2, 3, 11, 8, generator=generator)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(chunked_attention(q, k, v, 0.3), expected)


def test_the_exported_copy_runs_cvts_attention_in_chunks(upernet_model):
    from mmcvt.models.backbones.cvt import ConvAttention
    module = raw_image_module(upernet_model, 'model')
    exported = exportable_copy(module)
    impls = {
        name: sub.attn_impl
        for name, sub in exported.named_modules()
        if isinstance(sub, ConvAttention)
    }
    assert impls and set(impls.values()) == {'chunked'}
    assert {
        sub.attn_impl
        for sub in upernet_model.modules() if isinstance(sub, ConvAttention)
    } == {'sdpa'}
    image = random_image((1, 3, 67, 91))
    with torch.no_grad():
        expected = module(image)
        got = exported(image)
    assert (got - expected).norm() / expected.norm() < FP32_BOUND


def test_verify_images_are_read_as_rgb_at_their_own_size(tmp_path):
    import mmcv
    bgr = np.zeros((37, 53, 3), np.uint8)
    bgr[..., 2] = 200  # red
    mmcv.imwrite(bgr, str(tmp_path / 'red.png'))
    (image, name), = export_tool.verify_images([], [tmp_path / 'red.png'])
    assert image.shape == (1, 3, 37, 53) and name == 'red.png'
    assert image[0, 0].eq(200).all() and image[0, 1:].eq(0).all()


def test_an_unreadable_verify_image_is_an_error_naming_it(tmp_path):
    (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(ValueError, match='cannot read the image .*cut.png'):
        export_tool.verify_images([], [tmp_path / 'cut.png'])


def test_an_unreadable_verify_image_is_an_error_before_the_export(tmp_path):
    config = write_tiny_config('upernet', tmp_path)
    (tmp_path / 'cut.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    status, printed = run_tool(config, '--out', tmp_path / 'upernet.onnx',
                               '--shape', *EXPORT_SIZE, '--verify-images',
                               tmp_path / 'cut.png')
    assert status == 1
    assert 'cannot read the image' in printed
    assert not (tmp_path / 'upernet.onnx').exists()


@pytest.mark.parametrize('option', ['--verify-shapes', '--verify-images'])
def test_naming_what_to_verify_on_asks_for_the_verification(option, tmp_path):
    value = {
        '--verify-shapes': '1x3x64x96',
        '--verify-images': str(tmp_path / 'a.png')
    }[option]
    (tmp_path / 'a.png').write_bytes(b'')
    args = export_tool.parse_args([
        str(REPO / 'configs/demo/upernet_cvt13_shapes.py'), '--out',
        str(tmp_path / 'm.onnx'), option, value
    ])
    assert args.verify


def test_a_segmentors_prediction_on_a_raw_image_is_its_graphs_logits(
        upernet_model):
    """What benchmark_onnx.py times in PyTorch computes what the graph
    does."""
    from mmseg.structures import SegDataSample
    image = random_image((1, 3, 67, 91))
    sample, = predicted_samples(upernet_model, image, SegDataSample)
    with torch.no_grad():
        logits = raw_image_module(upernet_model, 'model')(image)
    expected = sample.seg_logits.data
    assert (logits[0] - expected).norm() / expected.norm() < FP32_BOUND


@pytest.mark.parametrize('bgr_to_rgb', [True, False])
def test_the_graph_reads_the_channels_the_preprocessor_gives_the_model(
        bgr_to_rgb):
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    preprocessor = DetDataPreprocessor(bgr_to_rgb=bgr_to_rgb)
    assert channels_from_rgb(preprocessor) == ([0, 1, 2]
                                               if bgr_to_rgb else [2, 1, 0])


def test_mask2formers_pixel_decoder_computes_the_same_with_sizes_as_numbers(
        tmp_path):
    """The exported copy of a whole Mask2Former segmentor: its pixel
    decoder and deformable attention replaced by ones that take the levels'
    sizes as numbers, on the same weights; the model keeps mmcv's."""
    from mmcv.ops import MultiScaleDeformableAttention
    model = built(write_tiny_config('mask2former', tmp_path))
    assert onnx_export.whole_model_problem(model) is None
    module = raw_image_module(model, 'model')
    image = random_image((1, 3, 97, 131))
    with torch.no_grad():
        expected = module(image)
        got = exportable_copy(module)(image)
    assert (got - expected).norm() / expected.norm() < FP32_BOUND
    assert any(
        isinstance(m, MultiScaleDeformableAttention) for m in model.modules())


def test_the_coco_mask2former_exports_its_backbone_and_neck_naming_why():
    """The panoptic one is a detector, whose panoptic fusion the export
    does not cover."""
    model = built(REPO / 'configs/mask2former_cvt13_coco.py')
    problem = onnx_export.whole_model_problem(model)
    assert 'none of the detectors the export covers' in problem
    with pytest.raises(ValueError, match='--part neck'):
        raw_image_module(model, 'model')


@pytest.mark.slow
def test_a_whole_mask2former_verifies_at_unseen_sizes(tmp_path):
    config = write_tiny_config('mask2former', tmp_path)
    status, printed = run_tool(config, '--out', tmp_path / 'm2f.onnx',
                               '--shape', *EXPORT_SIZE, '--verify',
                               '--verify-shapes', *UNSEEN)
    assert status == 0, printed
    assert 'exported the whole EncoderDecoder' in printed
    errors = printed_errors(printed)
    assert set(errors) == set(UNSEEN)
    assert max(errors.values()) < FP32_BOUND


@pytest.mark.slow
def test_the_graph_normalises_like_the_data_preprocessor(upernet):
    """RGB 0..255 in, the model's mean and std inside: a constant image of
    the mean is the zero input."""
    module = raw_image_module(upernet['model'], 'model')
    mean = upernet['model'].data_preprocessor.mean.reshape(1, 3, 1, 1)
    image = mean.expand(1, 3, 8, 8)
    assert module.input(image).abs().max() < 1e-4
    assert np.allclose(
        module.input(image + 1).numpy(),
        (1 / upernet['model'].data_preprocessor.std).expand(1, 3, 8,
                                                            8).numpy(),
        atol=1e-5)
