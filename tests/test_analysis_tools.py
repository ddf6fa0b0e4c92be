"""FLOP counting and the backbone benchmark (tools/analysis_tools)."""
import json

import pytest
import torch

from mmcvt.analysis import count_flops
from mmcvt.models import CvT
from .utils import REPO, load_tool

get_flops = load_tool('analysis_tools/get_flops.py')
benchmark = load_tool('analysis_tools/benchmark_backbone.py')


def cvt13_hand_count(height, width, with_cls_token):
    """Multiply-adds of CvT-13, layer by layer: embedding convs, depthwise
    q/k/v convs, q/k/v/output Linears, attention (QK^T and AV) and MLPs."""
    dims, depths, in_dims = (64, 192, 384), (1, 2, 10), 3
    total = 0
    for i, ((k, s, p), dim, depth) in enumerate(
            zip(((7, 4, 2), (3, 2, 1), (3, 2, 1)), dims, depths)):
        height, width = ((height + 2 * p - k) // s + 1,
                         (width + 2 * p - k) // s + 1)
        queries = height * width
        keys = ((height - 1) // 2 + 1) * ((width - 1) // 2 + 1)
        total += queries * dim * in_dims * k * k
        extra = int(with_cls_token and i == 2)  # the cls token's row
        per_block = ((queries + 2 * keys) * dim * 9 + 2 *
                     (queries + extra) * dim * dim + 2 *
                     (keys + extra) * dim * dim + 2 * (queries + extra) *
                     (keys + extra) * dim + 8 * (queries + extra) * dim * dim)
        total += depth * per_block
        in_dims = dim
    return total


def meta_macs(model, height, width):
    with torch.no_grad():
        flops, _ = count_flops(
            model.to('meta'), torch.empty(1, 3, height, width, device='meta'))
    return flops / 2


def test_the_count_of_cvt13_at_224_is_the_hand_count_and_the_papers():
    macs = meta_macs(CvT('13', with_cls_token=True), 224, 224)
    assert macs == cvt13_hand_count(224, 224, with_cls_token=True)
    assert macs == pytest.approx(4.5e9, rel=0.02)  # the paper's 4.5G


def test_the_count_includes_attention_at_detection_size():
    macs = meta_macs(CvT('13'), 800, 1344)
    assert macs == cvt13_hand_count(800, 1344, with_cls_token=False)
    assert macs > 3e11  # of which attention is some 2.3e11


def test_the_count_includes_the_cpu_attention_kernel():
    model = CvT('13').eval()
    with torch.no_grad():
        cpu_flops, _ = count_flops(model, torch.rand(1, 3, 96, 128))
    assert cpu_flops / 2 == cvt13_hand_count(96, 128, with_cls_token=False)


@pytest.mark.slow
def test_get_flops_reproduces_mmdetections_zoo_count_for_mask_rcnn_r50():
    # the model zoo lists Mask R-CNN R-50-FPN at 260 GFLOPs, 1280x800
    result = get_flops.main(['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'])
    assert result['shape'] == (1280, 800)
    assert result['macs'] == pytest.approx(260e9, rel=0.01)


@pytest.mark.slow
def test_get_flops_counts_a_cvt_segmentor_at_512():
    result = get_flops.main([str(REPO / 'configs/upernet_cvt13_ade20k.py')])
    assert result['shape'] == (512, 512)
    assert result['backbone_params'] == sum(p.numel()
                                            for p in CvT('13').parameters())
    backbone_macs = cvt13_hand_count(512, 512, with_cls_token=False)
    assert result['macs'] > backbone_macs


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size_and_writes_its_reports(tmp_path):
    benchmark.main([
        '--backbones', 'cvt13', 'hf-cvt13', '--sizes', '32x48', '--modes',
        'forward', 'train', '--warmup', '0', '--repeat', '1', '--out-dir',
        str(tmp_path)
    ])
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    assert report['matmul']['float32']['gflop_per_s'] > 0
    assert len(report['results']) == 4
    for result in report['results']:
        assert 'error' not in result, result
        assert result['latency_s'] > 0 and result['gflop'] > 0
        assert result['peak_memory_added_mib'] >= 0
    train = [r for r in report['results'] if r['mode'] == 'train']
    forward = [r for r in report['results'] if r['mode'] == 'forward']
    assert train[0]['gflop'] == pytest.approx(3 * forward[0]['gflop'])
    table = (tmp_path / 'benchmark.md').read_text()
    assert '| cvt13 | 32x48 | forward | float32 |' in table
    assert 'float32 matmul' in table


@pytest.mark.parametrize('option', [['--repeat', '0'], ['--warmup', '-1']])
def test_benchmark_rejects_no_timed_run_or_a_negative_warmup(option, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(option)
    assert '--repeat must be at least 1' in capsys.readouterr().err


@pytest.mark.slow
def test_train_step_benchmark_runs_detector_and_segmentor_configs():
    train_step = load_tool('analysis_tools/benchmark_train_step.py')
    results = train_step.main([
        str(REPO / 'configs/demo/maskrcnn_cvt13_shapes.py'),
        str(REPO / 'configs/demo/upernet_cvt13_shapes.py'),
        'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', '--shape', '64',
        '96', '--batch', '2', '--warmup', '0', '--iters', '1'
    ])
    assert len(results) == 3
    assert all(r['step_s'] > 0 and r['peak_memory_mib'] > 0 for r in results)
