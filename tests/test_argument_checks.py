"""The tools check their arguments, and the data, before they work: each
bad one is an error that says what is wrong, or a non-zero exit, before a
model is built or a result computed."""
import importlib.util
import json
import os
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch

from mmcvt import config_paths
from mmcvt.engine.runner_setup import UnusableWorkDir
from mmcvt.utils.arguments import UsageError, run_tool
from mmcvt.utils.output_paths import check_output_dir, check_output_file
from .tiny_models import save_checkpoint, write_tiny_config
from .utils import REPO, load_tool

make_shapes = load_tool('misc/make_shapes_dataset.py')
train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
infer = load_tool('infer.py')
show_predictions = load_tool('misc/show_predictions.py')
benchmark_backbone = load_tool('analysis_tools/benchmark_backbone.py')
benchmark_train_step = load_tool('analysis_tools/benchmark_train_step.py')
get_flops = load_tool('analysis_tools/get_flops.py')
benchmark_onnx = load_tool('analysis_tools/benchmark_onnx.py')
gather_results = load_tool('analysis_tools/gather_results.py')
resolution_sweep = load_tool('analysis_tools/resolution_sweep.py')
export_onnx = load_tool('deployment/export_onnx.py')
cvt2mmcvt = load_tool('model_converters/cvt2mmcvt.py')

DEMO = str(REPO / 'configs/demo/maskrcnn_cvt13_shapes.py')
SEG_DEMO = str(REPO / 'configs/demo/upernet_cvt13_shapes.py')


def usage_error(parse_args, argv, capsys):
    """The message of argparse's usage error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def weights(tmp_path):
    """A file where a checkpoint is expected, for the tools whose arguments
    are refused before they read it."""
    path = tmp_path / 'model.pth'
    path.write_bytes(b'')
    return str(path)


# ---- where the tools write: mmcvt.utils.output_paths ------------------------
def test_an_output_folder_that_is_missing_but_can_be_made_passes_unmade(
        tmp_path):
    check_output_dir(tmp_path / 'a' / 'b')
    check_output_file(tmp_path / 'c' / 'out.png')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('folder, message', [
    ('notes.txt', 'the output folder {file} is a file, not a folder'),
    ('notes.txt/out', 'the output folder {file}/out cannot be made: {file} '
     'is a file'),
])
def test_an_output_folder_that_is_a_file_or_under_one_is_an_error(
        folder, message, tmp_path):
    file = tmp_path / 'notes.txt'
    file.write_text('')
    with pytest.raises(NotADirectoryError, match=message.format(file=file)):
        check_output_dir(tmp_path / folder)


@pytest.mark.parametrize('path', ['/proc/mmcvt-out', '/proc/mmcvt-out/a'])
def test_an_output_folder_that_cannot_be_made_is_an_error_saying_why(path):
    # /proc refuses new folders even to root, whom os.access lets pass
    with pytest.raises(
            PermissionError,
            match=f'{path} cannot be made: /proc refuses new folders'):
        check_output_dir(path)
    assert not os.path.exists('/proc/mmcvt-out')


def test_an_output_folder_that_takes_no_files_is_an_error():
    with pytest.raises(
            PermissionError,
            match='/proc/self takes no new files: /proc/self refuses'):
        check_output_dir('/proc/self')


def test_an_empty_output_folder_is_an_error():
    with pytest.raises(ValueError, match='the output folder is empty'):
        check_output_dir('')


@pytest.mark.parametrize('name', ['existing', 'out.png/'])
def test_an_output_file_naming_a_folder_is_an_error(name, tmp_path):
    (tmp_path / 'existing').mkdir()
    with pytest.raises(IsADirectoryError, match='is a folder: name the file'):
        check_output_file(f'{tmp_path}/{name}')


def test_an_output_file_under_a_file_is_an_error_naming_the_file(tmp_path):
    (tmp_path / 'notes.txt').write_text('')
    with pytest.raises(
            NotADirectoryError,
            match=f'out.png: its folder {tmp_path}/notes.txt is a file'):
        check_output_file(tmp_path / 'notes.txt' / 'out.png')


# Each tool that writes, given an output it cannot write: argparse's usage
# error (exit status 2, no traceback), before the tool reads a config or
# builds a model. In argv, {out} is the bad output, {weights} a file where a
# checkpoint goes, {file} any file.
WRITERS = {
    'tools/infer.py':
    (infer, 'folder',
     ['{file}', DEMO, '--weights', '{weights}', '--out-dir', '{out}']),
    'tools/test.py --out':
    (test_tool, 'file', [DEMO, '{weights}', '--out', '{out}']),
    'tools/test.py --show-dir':
    (test_tool, 'folder', [DEMO, '{weights}', '--show-dir', '{out}']),
    'export_onnx.py':
    (export_onnx, 'file', [DEMO, '{weights}', '--out', '{out}']),
    'resolution_sweep.py': (resolution_sweep, 'folder',
                            [DEMO, '{weights}', '--out-dir', '{out}']),
    'show_predictions.py': (show_predictions, 'file',
                            [DEMO, '{weights}', '--out', '{out}']),
    'gather_results.py': (gather_results, 'folder',
                          ['{file}', '--out-dir', '{out}']),
    'benchmark_backbone.py': (benchmark_backbone, 'folder',
                              ['--out-dir', '{out}']),
    'benchmark_onnx.py --profile': (benchmark_onnx, 'folder',
                                    [DEMO, '{file}', '--profile', '{out}']),
    'benchmark_onnx.py --json': (benchmark_onnx, 'file',
                                 [DEMO, '{file}', '--json', '{out}']),
    'cvt2mmcvt.py': (cvt2mmcvt, 'file', ['{weights}', '{out}']),
}
# for a tool that writes into a folder, and one that writes a file: bad
# outputs, and what the usage error says of each
BAD_OUTPUTS = {
    'folder': {
        'taken': ('{file}', '{file} is a file, not a folder'),
        'under a file': ('{file}/out', '{file} is a file, not a folder'),
        'cannot be made': ('/proc/mmcvt/out', '/proc refuses new folders'),
    },
    'file': {
        'taken': ('{tmp}/', '{tmp}/ is a folder: name the file to write'),
        'under a file': ('{file}/out.png', '{file} is a file, not a folder'),
        'cannot be made': ('/proc/mmcvt/out.png', '/proc refuses new folders'),
    },
}


@pytest.mark.parametrize('bad', ['taken', 'under a file', 'cannot be made'])
@pytest.mark.parametrize('tool', WRITERS)
def test_each_tool_refuses_an_output_it_cannot_write_before_any_work(
        tool, bad, weights, tmp_path, capsys):
    module, kind, argv = WRITERS[tool]
    path, message = BAD_OUTPUTS[kind][bad]
    file = tmp_path / 'notes.png'
    file.write_text('')
    fill = dict(file=file, tmp=tmp_path, weights=weights)
    fill['out'] = path.format(**fill)
    err = usage_error(module.main, [a.format(**fill) for a in argv], capsys)
    assert message.format(**fill) in err


# ---- what the tools read: mmcvt.utils.input_paths ---------------------------
@pytest.mark.parametrize('tool, argv', [
    (export_onnx, ['{missing}', '--out', '{tmp}/m.onnx']),
    (train_tool, ['{missing}']),
    (test_tool, ['{missing}', '{weights}']),
    (infer, [
        '{weights}', '{missing}', '--weights', '{weights}', '--out-dir',
        '{tmp}'
    ]),
    (show_predictions, ['{missing}', '{weights}', '--out', '{tmp}/p.png']),
    (resolution_sweep, ['{missing}', '{weights}', '--out-dir', '{tmp}']),
    (get_flops, ['{missing}']),
    (benchmark_train_step, ['{missing}']),
    (benchmark_onnx, ['{missing}', '{weights}']),
])
def test_a_config_that_does_not_exist_is_a_usage_error(tool, argv, weights,
                                                       tmp_path, capsys):
    missing = tmp_path / 'no_such_config.py'
    fill = dict(missing=missing, weights=weights, tmp=tmp_path)
    err = usage_error(tool.main, [a.format(**fill) for a in argv], capsys)
    assert f'{missing} does not exist: name a config file' in err


def test_a_package_config_that_it_does_not_ship_is_a_usage_error(capsys):
    err = usage_error(get_flops.main, ['mmdet::no_such/config.py'], capsys)
    assert 'mmdet has no config no_such/config.py' in err


def test_a_config_of_a_package_not_installed_is_refused_not_installed(capsys):
    # mmengine's get_config would pip-install it
    err = usage_error(get_flops.main, ['mmnothing::x/y.py'], capsys)
    assert 'mmnothing is not installed' in err


@pytest.mark.parametrize('tool, argv', [
    (export_onnx, [DEMO, '{missing}', '--out', '{tmp}/m.onnx']),
    (show_predictions, [DEMO, '{missing}', '--out', '{tmp}/p.png']),
    (resolution_sweep, [DEMO, '{missing}', '--out-dir', '{tmp}']),
    (test_tool, [DEMO, '{missing}']),
    (infer,
     ['{weights}', DEMO, '--weights', '{missing}', '--out-dir', '{tmp}']),
    (benchmark_onnx, [DEMO, '{weights}', '{missing}']),
])
def test_a_checkpoint_that_does_not_exist_is_a_usage_error(
        tool, argv, weights, tmp_path, capsys):
    missing = tmp_path / 'no_such.pth'
    fill = dict(missing=missing, tmp=tmp_path, weights=weights)
    err = usage_error(tool.main, [a.format(**fill) for a in argv], capsys)
    assert f'{missing} does not exist: name a checkpoint file or URL' in err


# {missing} is a file that is not there, of the kind each tool reads
@pytest.mark.parametrize('tool, argv, missing, kind', [
    (benchmark_onnx, [DEMO, '{missing}'], 'no_such.onnx',
     'an .onnx file of tools/deployment/export_onnx.py'),
    (infer, [
        '{weights}', DEMO, '--weights', '{missing}', '--out-dir', '{tmp}'
    ], 'no_such.onnx', 'an .onnx file of tools/deployment/export_onnx.py'),
    (export_onnx, [
        DEMO, '--out', '{tmp}/m.onnx', '--verify-images', '{weights}',
        '{missing}'
    ], 'no_such.png', 'an image file'),
])
def test_a_graph_or_image_that_does_not_exist_is_a_usage_error(
        tool, argv, missing, kind, weights, tmp_path, capsys):
    missing = tmp_path / missing
    fill = dict(missing=missing, tmp=tmp_path, weights=weights)
    err = usage_error(tool.main, [a.format(**fill) for a in argv], capsys)
    assert f'{missing} does not exist: name {kind}' in err


@pytest.fixture
def without_onnxscript(monkeypatch):
    """As if the onnx extra were installed but for onnxscript."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda name, *args: None
        if name == 'onnxscript' else find_spec(name, *args))


@pytest.mark.parametrize('tool, argv', [
    (benchmark_onnx, [DEMO, '{graph}']),
    (infer, ['{weights}', DEMO, '--weights', '{graph}', '--out-dir', '{tmp}']),
])
def test_a_tool_that_runs_a_graph_without_the_onnx_extra_says_so_first(
        tool, argv, weights, tmp_path, without_onnxscript):
    graph = tmp_path / 'model.onnx'  # not read: the check comes first
    graph.write_bytes(b'')
    fill = dict(graph=graph, tmp=tmp_path, weights=weights)
    with pytest.raises(
            ImportError,
            match='onnxscript is missing: .* needs the onnx extra, '
            r'`pip install -e "\.\[onnx\]"`'):
        tool.main([a.format(**fill) for a in argv])


@pytest.fixture
def integer_checkpoint(tmp_path):
    """A tiny UperNet's config, and a checkpoint of it whose classifier's
    weight holds integers."""
    config = write_tiny_config('upernet', tmp_path)
    path = save_checkpoint(config, tmp_path / 'integers.pth')
    checkpoint = torch.load(path, weights_only=True)
    state_dict = checkpoint['state_dict']
    state_dict['decode_head.conv_seg.weight'] = \
        state_dict['decode_head.conv_seg.weight'].long()
    torch.save(checkpoint, path)
    return config, path


@pytest.mark.parametrize('tool, argv', [
    (export_onnx, ['{config}', '{checkpoint}', '--out', '{tmp}/m.onnx']),
    (infer, [
        '{image}', '{config}', '--weights', '{checkpoint}', '--out-dir',
        '{tmp}/out'
    ]),
])
def test_a_checkpoint_of_integers_is_refused_naming_the_tensors(
        tool, argv, integer_checkpoint, tmp_path):
    config, checkpoint = integer_checkpoint
    image = tmp_path / 'image.png'
    mmcv.imwrite(np.zeros((32, 48, 3), np.uint8), str(image))
    fill = dict(
        config=config, checkpoint=checkpoint, image=image, tmp=tmp_path)
    with pytest.raises(
            TypeError,
            match=f'checkpoint {checkpoint} holds integers where the model '
            f'has floating point numbers, or the reverse: '
            r'\[decode_head.conv_seg.weight: checkpoint torch.int64, model '
            r'torch.float32\]'):
        tool.main([a.format(**fill) for a in argv])


# ---- tools/test.py and tools/train.py ---------------------------------------
def test_train_with_an_empty_work_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an empty work dir would write
    with pytest.raises(UnusableWorkDir, match='the work dir is empty'):
        train_tool.main([DEMO, '--work-dir', ''])
    assert list(tmp_path.iterdir()) == []


def test_train_with_a_file_as_work_dir_is_an_error_naming_it(tmp_path):
    file = tmp_path / 'notes.txt'
    file.write_text('')
    with pytest.raises(
            UnusableWorkDir, match=f'the work dir {file} is a file'):
        train_tool.main([DEMO, '--work-dir', str(file)])


def test_train_with_a_work_dir_under_a_file_is_an_error_naming_the_file(
        tmp_path):
    file = tmp_path / 'notes.txt'
    file.write_text('')
    with pytest.raises(
            UnusableWorkDir,
            match=f'the work dir {file}/run cannot be made: {file} is a '
            f'file'):
        train_tool.main([DEMO, '--work-dir', str(file / 'run')])


def test_a_usage_error_ends_a_tool_with_its_message_and_status_2(
        capsys, monkeypatch):
    monkeypatch.setattr('sys.argv', ['tools/train.py'])

    def main():
        raise UsageError('the data are not there')

    with pytest.raises(SystemExit) as exit_:
        run_tool(main)
    assert exit_.value.code == 2
    assert capsys.readouterr(
    ).err == 'train.py: error: the data are not there\n'


def test_another_error_of_a_tool_keeps_its_traceback():

    def main():
        raise ValueError('a bug')

    with pytest.raises(ValueError, match='a bug'):
        run_tool(main)


def usage_error_line(stderr):
    """The line of a tool's stderr that run_tool wrote, after any warnings
    of the libraries."""
    line, = [line for line in stderr.splitlines() if ': error: ' in line]
    return line


def run_train_script(*argv, cwd):
    """tools/train.py run as a user runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, str(REPO / 'tools/train.py'), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300)


def test_train_on_data_that_are_not_there_says_so_without_a_traceback(
        tmp_path):
    result = run_train_script(SEG_DEMO, '--work-dir', 'run', cwd=tmp_path)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert usage_error_line(result.stderr).startswith(
        'train.py: error: data/shapes_seg/images/training does not exist: ')
    assert not (tmp_path / 'run').exists()


def test_train_resuming_from_a_checkpoint_that_is_not_there_says_so_without_a_traceback(  # noqa: E501
        tmp_path):
    make_shapes.main([
        '--task', 'semseg', '--out',
        str(tmp_path / 'data'), '--num-train', '2', '--num-val', '2'
    ])
    data_root = f'{tmp_path}/data/'
    missing = tmp_path / 'epoch_3.pth'
    result = run_train_script(
        SEG_DEMO,
        '--work-dir',
        'run',
        '--resume',
        str(missing),
        '--cfg-options',
        *(f'{split}_dataloader.dataset.data_root={data_root}'
          for split in ('train', 'val', 'test')),
        cwd=tmp_path)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert usage_error_line(result.stderr).startswith(
        f'train.py: error: cannot resume from {missing}: it does not exist. ')


def test_export_of_a_checkpoint_that_does_not_fit_says_so_without_a_traceback(
        tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'state_dict': {'head.weight': torch.ones(2)}}, checkpoint)
    result = subprocess.run([
        sys.executable,
        str(REPO / 'tools/deployment/export_onnx.py'), SEG_DEMO,
        str(checkpoint), '--out',
        str(tmp_path / 'model.onnx')
    ],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert usage_error_line(result.stderr).startswith(
        f'export_onnx.py: error: checkpoint {checkpoint} does not fit the '
        f'model: ')
    assert not (tmp_path / 'model.onnx').exists()


# ---- tools/misc/show_predictions.py -----------------------------------------
@pytest.mark.parametrize('option, message', [
    (['--num', '0'], '--num must be at least 1, not 0'),
    (['--num', '-3'], '--num must be at least 1, not -3'),
    (['--columns', '0'], '--columns must be at least 1, not 0'),
    (['--pred-score-thr', '5'], 'a score between 0 and 1, not 5.0'),
])
def test_show_predictions_refuses_counts_and_scores_that_mean_nothing(
        option, message, weights, capsys):
    err = usage_error(show_predictions.parse_args,
                      [DEMO, weights, '--out', 'pred.png', *option], capsys)
    assert message in err


def test_show_predictions_on_an_empty_test_set_is_an_error(tmp_path, weights):
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
            DEMO, weights, '--out',
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
