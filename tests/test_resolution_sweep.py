"""tools/analysis_tools/resolution_sweep.py: one checkpoint tested at several
input scales, with latency and peak memory, into a table and a plot."""
import json

import mmcv
import pytest

from .tiny_models import save_checkpoint, write_tiny_config
from .utils import REPO, load_tool

sweep = load_tool('analysis_tools/resolution_sweep.py')
make_shapes = load_tool('misc/make_shapes_dataset.py')
test_tool = load_tool('test.py')
UPERNET_DEMO = REPO / 'configs/demo/upernet_cvt13_shapes.py'


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


# ---- scales and data checked before the sweep -------------------------------
@pytest.fixture
def weights(tmp_path):
    """A file where the checkpoint goes: the checks come before it is read."""
    path = tmp_path / 'model.pth'
    path.write_bytes(b'')
    return str(path)


def sweep_args(weights, tmp_path, *scales, data_root=None):
    """The sweep of the UperNet demo at ``scales``, on the data at
    ``data_root``."""
    argv = [
        str(UPERNET_DEMO), weights, '--out-dir',
        str(tmp_path / 'out'), '--scales', *scales
    ]
    if data_root is not None:
        argv += [
            '--cfg-options', f'test_dataloader.dataset.data_root={data_root}/'
        ]
    return argv


def usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_a_repeated_scale_is_an_error(weights, tmp_path, capsys):
    err = usage_error(sweep_args(weights, tmp_path, '1', '1'), capsys)
    assert 'repeats a scale' in err


@pytest.mark.parametrize('scale', ['inf', 'nan', '0', '-1'])
def test_a_scale_that_is_not_a_finite_positive_number_is_an_error(
        scale, weights, tmp_path, capsys):
    err = usage_error(sweep_args(weights, tmp_path, '1', scale), capsys)
    assert f'{scale}: a scale must be a finite number above 0' in err


def test_a_scale_that_leaves_no_pixel_is_an_error_before_the_sweep(
        shapes_seg, weights, tmp_path):
    # 0.001 of 128 pixels: OpenCV's resize asserts on a size of 0
    with pytest.raises(
            SystemExit,
            match=r'--scales 0.001: the test pipeline fails on '
            r'.*/00000.png at this scale'):
        sweep.main(
            sweep_args(weights, tmp_path, '1', '0.001', data_root=shapes_seg))
    assert not (tmp_path / 'out').exists()


def test_an_empty_test_set_is_an_error_before_the_sweep(weights, tmp_path):
    for split in ('images', 'annotations'):
        (tmp_path / 'empty' / split / 'validation').mkdir(parents=True)
    with pytest.raises(ValueError, match='the test set of .* is empty'):
        sweep.main(
            sweep_args(weights, tmp_path, '1', data_root=tmp_path / 'empty'))
