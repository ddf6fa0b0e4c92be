"""The tools check their arguments, and the data, before they work: each
bad one is an error that says what is wrong, or a non-zero exit, before a
model is built or a result computed."""
import json

import pytest
import torch

from mmcvt import config_paths
from .utils import REPO, load_tool

make_shapes = load_tool('misc/make_shapes_dataset.py')
train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
show_predictions = load_tool('misc/show_predictions.py')
benchmark_backbone = load_tool('analysis_tools/benchmark_backbone.py')
benchmark_train_step = load_tool('analysis_tools/benchmark_train_step.py')
get_flops = load_tool('analysis_tools/get_flops.py')

DEMO = str(REPO / 'configs/demo/maskrcnn_cvt13_shapes.py')


def usage_error(parse_args, argv, capsys):
    """The message of argparse's usage error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


# ---- tools/test.py and tools/train.py ---------------------------------------
@pytest.mark.parametrize('out', ['existing', 'results.pkl/'])
def test_test_out_naming_a_directory_is_an_error_before_the_test(
        out, tmp_path):
    (tmp_path / 'existing').mkdir()
    with pytest.raises(ValueError, match='is a directory: name the .pkl'):
        test_tool.build_config(
            test_tool.parse_args(
                [DEMO, 'model.pth', '--out', f'{tmp_path}/{out}']))


def test_train_with_an_empty_work_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an empty work dir would write
    with pytest.raises(ValueError, match='the work dir is empty'):
        train_tool.main([DEMO, '--work-dir', ''])
    assert list(tmp_path.iterdir()) == []


def test_train_with_a_file_as_work_dir_is_an_error_naming_it(tmp_path):
    file = tmp_path / 'notes.txt'
    file.write_text('')
    with pytest.raises(
            NotADirectoryError, match=f'the work dir {file} is a file'):
        train_tool.main([DEMO, '--work-dir', str(file)])


# ---- tools/misc/show_predictions.py -----------------------------------------
@pytest.mark.parametrize('option, message', [
    (['--num', '0'], '--num must be at least 1, not 0'),
    (['--num', '-3'], '--num must be at least 1, not -3'),
    (['--columns', '0'], '--columns must be at least 1, not 0'),
    (['--pred-score-thr', '5'], 'a score between 0 and 1, not 5.0'),
])
def test_show_predictions_refuses_counts_and_scores_that_mean_nothing(
        option, message, capsys):
    err = usage_error(show_predictions.parse_args,
                      [DEMO, 'model.pth', '--out', 'pred.png', *option],
                      capsys)
    assert message in err


def test_show_predictions_out_naming_a_directory_is_an_error(tmp_path, capsys):
    err = usage_error(show_predictions.parse_args,
                      [DEMO, 'model.pth', '--out', f'{tmp_path}/'], capsys)
    assert 'is a directory: name the PNG file' in err


def test_show_predictions_on_an_empty_test_set_is_an_error(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'instances_val.json').write_text(
        json.dumps(
            dict(
                images=[],
                annotations=[],
                categories=[
                    dict(id=i, name=name)
                    for i, name in enumerate(make_shapes.CLASSES)
                ])))
    with pytest.raises(ValueError, match='test set of .* is empty'):
        show_predictions.main([
            DEMO,
            str(tmp_path / 'absent.pth'), '--out',
            str(tmp_path / 'pred.png'), '--cfg-options',
            f'test_dataloader.dataset.data_root={tmp_path}/'
        ])


# ---- tools/analysis_tools ---------------------------------------------------
@pytest.mark.parametrize(
    'option', [['--batch', '0'], ['--sizes', '0x0'], ['--sizes', '224']])
def test_benchmark_backbone_refuses_sizes_no_model_runs(option, capsys):
    err = usage_error(benchmark_backbone.parse_args, option, capsys)
    assert 'is not at least 1' in err or 'is not of the form HxW' in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs no GPU')
def test_benchmark_backbone_on_cuda_without_a_gpu_is_an_error(capsys):
    err = usage_error(benchmark_backbone.parse_args, ['--device', 'cuda'],
                      capsys)
    assert 'sees no CUDA device' in err


def test_benchmark_backbone_exits_non_zero_when_every_case_failed(tmp_path):
    # 10,000 timed runs in one second: every case times out
    with pytest.raises(
            SystemExit,
            match='every case failed, the first with: '
            'took over 1 s'):
        benchmark_backbone.main([
            '--backbones', 'cvt13', '--sizes', '32x32', '--modes', 'forward',
            '--device', 'cpu', '--repeat', '10000', '--timeout', '1',
            '--out-dir',
            str(tmp_path)
        ])


@pytest.mark.parametrize('option', [['--shape', '0', '0'], ['--batch', '0']])
def test_benchmark_train_step_refuses_empty_batches_and_images(option, capsys):
    err = usage_error(benchmark_train_step.parse_args, [DEMO, *option], capsys)
    assert '0 is not at least 1' in err


def test_get_flops_refuses_a_negative_shape(capsys):
    err = usage_error(get_flops.parse_args, [DEMO, '--shape', '-5', '10'],
                      capsys)
    assert '-5 is not at least 1' in err


# ---- mmcvt.config_paths -----------------------------------------------------
@pytest.mark.parametrize('name', ['/etc/passwd', '../../../../etc/passwd'])
def test_config_paths_names_nothing_outside_the_packaged_configs(name):
    with pytest.raises(ValueError, match='is not a config shipped with'):
        config_paths.main([name])


# ---- data -------------------------------------------------------------------
def test_an_annotation_json_cut_short_is_an_error_naming_it(tmp_path):
    make_shapes.main([
        '--task', 'instance', '--out',
        str(tmp_path), '--num-train', '1', '--num-val', '1'
    ])
    annotations = tmp_path / 'annotations' / 'instances_val.json'
    text = annotations.read_text()
    annotations.write_text(text[:len(text) // 2])
    options = [
        f'{split}_dataloader.dataset.data_root={tmp_path}/'
        for split in ('train', 'val')
    ]
    with pytest.raises(
            ValueError,
            match=f'{annotations} cannot be read: it is not valid '
            f'JSON .* cut short'):
        train_tool.main([
            DEMO, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options', *options,
            f'val_evaluator.ann_file={annotations}'
        ])
    assert not (tmp_path / 'work').exists()


def test_a_large_annotation_json_is_checked_at_its_ends(tmp_path, monkeypatch):
    from mmcvt.engine import runner_setup
    monkeypatch.setattr(runner_setup, '_JSON_PARSED_UP_TO', 16)  # bytes
    path = tmp_path / 'large.json'
    path.write_text('{"images": [{"id": 1}, {"id": 2}]}\n')
    assert runner_setup.json_file_problem(str(path)) is None
    path.write_text('{"images": [{"id": 1}, {"id": 2')
    assert runner_setup.json_file_problem(str(path)) == (
        "it is not a whole JSON document: it starts with b'{' and ends with "
        "b'2' (31 bytes: cut short?)")
