"""tools/analysis_tools/resolution_sweep.py: one checkpoint tested at several
input scales, with latency and peak memory, into a table and a plot."""
import json

import mmcv
import pytest

from .tiny_models import save_checkpoint, write_tiny_config
from .utils import load_tool

sweep = load_tool('analysis_tools/resolution_sweep.py')
make_shapes = load_tool('misc/make_shapes_dataset.py')
test_tool = load_tool('test.py')


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
    """The tiny UperNet swept at 0.5 and 1 on 2 validation images."""
    root = tmp_path_factory.mktemp('sweep')
    make_shapes.main([
        '--task', 'semseg', '--out',
        str(root / 'data'), '--num-train', '1', '--num-val', '2'
    ])
    config = write_tiny_config('upernet', root, data_root=root / 'data')
    checkpoint = save_checkpoint(config, root / 'upernet.pth')
    sweep.main([
        str(config),
        str(checkpoint), '--scales', '1', '0.5', '--out-dir',
        str(root / 'out'), '--warmup', '0', '--repeat', '1'
    ])
    return root, config, checkpoint


@pytest.mark.slow
def test_each_scale_tests_the_images_resized_by_it(swept):
    root, _, _ = swept
    result = json.loads((root / 'out/sweep.json').read_text())
    assert result['plotted'] == ['mIoU']
    assert [(row['scale'], row['size'])
            for row in result['rows']] == [(0.5, [64, 64]), (1, [128, 128])]
    for row in result['rows']:
        assert {'mIoU', 'aAcc'} <= set(row['metrics'])
        assert row['latency_ms'] > 0


@pytest.mark.slow
def test_scale_1_gives_the_metrics_of_tools_test(swept, tmp_path):
    root, config, checkpoint = swept
    result = json.loads((root / 'out/sweep.json').read_text())
    tested = test_tool.main(
        [str(config),
         str(checkpoint), '--work-dir',
         str(tmp_path)])
    assert result['rows'][1]['metrics'] == pytest.approx(dict(tested))


@pytest.mark.slow
def test_it_writes_a_markdown_table_and_a_plot(swept):
    root, _, _ = swept
    table = (root / 'out/sweep.md').read_text().splitlines()
    assert table[0].startswith('| scale | input (h x w) | mIoU |')
    assert table[2].startswith('| 0.5 | 64 x 64 |')
    assert table[3].startswith('| 1 | 128 x 128 |')
    plot = mmcv.imread(root / 'out/sweep.png')
    assert plot.shape[1] > 2 * plot.shape[0]  # three panels side by side


def test_a_resize_of_the_pipeline_is_scaled():
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(1333, 800), keep_ratio=True),
        dict(type='LoadAnnotations')
    ]
    scaled = sweep.scaled_pipeline(pipeline, 0.5)
    assert scaled[1] == dict(type='Resize', scale=(666, 400), keep_ratio=True)
    assert pipeline[1]['scale'] == (1333, 800)  # the config's is unchanged


def test_a_pipeline_without_resize_gets_one_before_its_annotations():
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    scaled = sweep.scaled_pipeline(pipeline, 1.5)
    assert [t['type'] for t in scaled] == [
        'LoadImageFromFile', 'Resize', 'LoadAnnotations', 'PackSegInputs'
    ]
    assert scaled[1]['scale_factor'] == 1.5


def test_a_repeated_scale_is_an_error(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(
            ['c.py', 'x.pth', '--out-dir', 'o', '--scales', '1', '1'])
    assert 'repeats a scale' in capsys.readouterr().err
