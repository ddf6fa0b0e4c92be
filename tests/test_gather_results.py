"""tools/analysis_tools/gather_results.py on the work dirs of short runs of
the shapes demos: what it writes must be what the runs reported."""
import math
import shutil
from types import SimpleNamespace

import pytest
import yaml
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import AmpOptimWrapper

from mmcvt.engine import NonFiniteLossError, StopOnNonFiniteLossHook
from .utils import REPO, fake_test_run, fake_train_run, load_tool, write_config

make_shapes = load_tool('misc/make_shapes_dataset.py')
train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
gather_results = load_tool('analysis_tools/gather_results.py')
get_flops = load_tool('analysis_tools/get_flops.py')

DET_DEMO = REPO / 'configs/demo/maskrcnn_cvt13_shapes.py'
SEG_DEMO = REPO / 'configs/demo/upernet_cvt13_shapes.py'
# test.py --tta with the ADE20K pipeline's 12 views, up to 1.75x of
# 2048x512, takes a minute on two cores; two views of the image as it is
# make the same kind of run in seconds
SEG_DEMO_CHEAP_TTA = f'''_base_ = {str(SEG_DEMO)!r}
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1.)],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')]])]
'''


def run_options(work_dir, name, data_root, **extra):
    """--cfg-options for the shapes at data_root: batches of 2 images,
    every training iteration logged, no validation."""
    options = {
        'train_dataloader.dataset.data_root': f'{data_root}/',
        'test_dataloader.dataset.data_root': f'{data_root}/',
        'train_dataloader.batch_size': '2',
        'default_hooks.logger.interval': '1',
        'val_dataloader': 'None',
        'val_cfg': 'None',
        'val_evaluator': 'None',
        # unique: runners made in one second would share their logger, and
        # runners in one process their visualizer, which saves each run's
        # config into the first run's directory
        'experiment_name': name,
        'visualizer.name': name,
        **extra,
    }
    return ['--work-dir', str(work_dir), '--cfg-options'
            ] + [f'{k}={v}' for k, v in options.items()]


@pytest.fixture(scope='module')
def detection_run(tmp_path_factory):
    """The Mask R-CNN demo's work dir after train.py and test.py, and the
    metrics test.py reported."""
    root = tmp_path_factory.mktemp('shapes', numbered=False)
    make_shapes.main([
        '--task', 'instance', '--out',
        str(root), '--num-train', '2', '--num-val', '2'
    ])
    work_dir = tmp_path_factory.mktemp('work_dirs') / 'maskrcnn_cvt13_shapes'
    val_json = f'{root}/annotations/instances_val.json'
    options = {
        'train_cfg.max_epochs': '1',
        'default_hooks.checkpoint.interval': '1',
        'test_evaluator.ann_file': val_json
    }
    train_tool.main([str(DET_DEMO)] +
                    run_options(work_dir, 'gather-det', root, **options))
    metrics = test_tool.main(
        [str(DET_DEMO), str(work_dir / 'epoch_1.pth')] +
        run_options(work_dir, 'gather-det-test', root, **options))
    return work_dir, metrics


@pytest.fixture(scope='module')
def segmentation_run(tmp_path_factory):
    """The UperNet demo's work dir after train.py, test.py and test.py
    --tta, and the metrics each test reported."""
    root = tmp_path_factory.mktemp('shapes_seg', numbered=False)
    make_shapes.main([
        '--task', 'semseg', '--out',
        str(root), '--num-train', '2', '--num-val', '2'
    ])
    # named as the demo, as the Runner names what it dumps into the work dir
    config = tmp_path_factory.mktemp('config') / SEG_DEMO.name
    config.write_text(SEG_DEMO_CHEAP_TTA)
    work_dir = tmp_path_factory.mktemp('work_dirs') / 'upernet_cvt13_shapes'
    options = {
        'train_cfg.max_iters': '1',
        'default_hooks.checkpoint.interval': '1'
    }
    train_tool.main([str(config)] +
                    run_options(work_dir, 'gather-seg', root, **options))
    checkpoint = str(work_dir / 'iter_1.pth')
    single_scale = test_tool.main(
        [str(config), checkpoint] +
        run_options(work_dir, 'gather-seg-test', root))
    tta = test_tool.main([str(config), checkpoint, '--tta'] +
                         run_options(work_dir, 'gather-seg-tta', root))
    return work_dir, single_scale, tta


def gather(tmp_path, *work_dirs, count_flops=False):
    """The tables' rows by config name, the metafile's models by name."""
    out_dir = tmp_path / 'gathered'
    gather_results.main([str(w) for w in work_dirs] +
                        ['--out-dir', str(out_dir)] +
                        ([] if count_flops else ['--skip-flops']))
    rows = {}
    for line in (out_dir / 'results.md').read_text().splitlines():
        if line.startswith('| `'):
            cells = [cell.strip() for cell in line.strip('|').split('|')]
            rows[cells[0].strip('`')] = cells[1:]
    metafile = yaml.safe_load((out_dir / 'metafile.yml').read_text())
    return rows, {model['Name']: model for model in metafile['Models']}


def metric(model, name):
    values = [
        r['Metrics'][name] for r in model['Results'] if name in r['Metrics']
    ]
    assert len(values) == 1, model['Results']
    return values[0]


@pytest.mark.slow
def test_the_coco_row_and_metafile_hold_the_aps_test_py_reported(
        detection_run, tmp_path):
    work_dir, reported = detection_run
    rows, models = gather(tmp_path, work_dir)
    box_ap = round(reported['coco/bbox_mAP'] * 100, 1)
    mask_ap = round(reported['coco/segm_mAP'] * 100, 1)
    box, mask, *_ = rows['maskrcnn_cvt13_shapes.py']
    assert (box, mask) == (str(box_ap), str(mask_ap))
    model = models['maskrcnn_cvt13_shapes']
    assert (metric(model, 'box AP'), metric(model,
                                            'mask AP')) == (box_ap, mask_ap)


@pytest.mark.slow
def test_the_metafile_names_the_config_schedule_data_and_weights(
        detection_run, tmp_path):
    work_dir, _ = detection_run
    _, models = gather(tmp_path, work_dir)
    model = models['maskrcnn_cvt13_shapes']
    assert model['In Collection'] == 'CvT'
    assert model['Config'] == 'configs/demo/maskrcnn_cvt13_shapes.py'
    assert model['Metadata']['Epochs'] == 1  # as trained, not the config's 7
    assert {r['Dataset'] for r in model['Results']} == {'shapes'}
    assert model['Weights'] == str(work_dir / 'epoch_1.pth')


@pytest.mark.slow
def test_the_log_cell_names_the_training_runs_log(detection_run, tmp_path):
    work_dir, _ = detection_run
    rows, _ = gather(tmp_path, work_dir)
    log = rows['maskrcnn_cvt13_shapes.py'][-1].strip('`')
    assert log.endswith('.log')
    assert 'Epoch(train) [1][1/1]' in open(log).read()


@pytest.mark.slow
def test_the_ade_row_and_metafile_hold_the_mious_test_py_reported(
        segmentation_run, tmp_path):
    work_dir, single_scale, tta = segmentation_run
    rows, models = gather(tmp_path, work_dir)
    miou, miou_tta = (round(single_scale['mIoU'], 2), round(tta['mIoU'], 2))
    assert rows['upernet_cvt13_shapes.py'][:2] == [str(miou), str(miou_tta)]
    model = models['upernet_cvt13_shapes']
    assert metric(model, 'mIoU') == miou
    assert metric(model, 'mIoU(ms+flip)') == miou_tta
    assert model['Metadata']['Iterations'] == 1


@pytest.mark.slow
def test_params_and_flops_are_get_flops_counts(segmentation_run, tmp_path):
    work_dir, *_ = segmentation_run
    rows, models = gather(tmp_path, work_dir, count_flops=True)
    counted = get_flops.main([str(SEG_DEMO)])
    params, flops = rows['upernet_cvt13_shapes.py'][2:4]
    assert params == f'{counted["params"] / 1e6:.2f} M'
    assert flops == f'{counted["macs"] / 1e9:.1f} G'
    metadata = models['upernet_cvt13_shapes']['Metadata']
    assert metadata['Parameters'] == counted['params']
    assert metadata['FLOPs'] == int(counted['macs'])


# ---- work dirs laid out as the Runner lays them out -------------------------
# The demo's work dir after a training run of one epoch and a test run of
# its checkpoint, with made-up values: what the tests below change, as a
# killed or stopped run, another work dir, or a GPU would have left it. The
# slow tests above read the work dirs of real runs.
REPORTED = {'coco/bbox_mAP': 0.412, 'coco/segm_mAP': 0.388}
TRAIN_LINE = dict(lr=2e-4, loss=2.5, loss_rpn_cls=0.69, epoch=1, iter=1)
TRAINED, TESTED = '20250101_000000', '20250101_010000'


def demo_work_dir(root, tested=True, memories=()):
    """The Mask R-CNN demo's work dir in ``root``, with a training run that
    logged ``memories`` (MB) and, if ``tested``, a test run."""
    cfg = Config.fromfile(DET_DEMO)
    cfg.train_cfg.max_epochs = 1
    work_dir = root / DET_DEMO.stem
    work_dir.mkdir(parents=True)
    write_config(cfg, work_dir / DET_DEMO.name)
    scalars = [
        dict(TRAIN_LINE, memory=m, step=i + 1) for i, m in enumerate(memories)
    ] or [dict(TRAIN_LINE, step=1)]
    fake_train_run(work_dir, TRAINED, cfg, scalars,
                   'Epoch(train) [1][1/1]  lr: 2.0000e-04  loss: 2.5000\n')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    if tested:
        cfg.load_from = str(work_dir / 'epoch_1.pth')
        fake_test_run(work_dir, TESTED, cfg, REPORTED)
    return work_dir


def test_a_run_without_a_test_or_memory_is_not_measured(tmp_path):
    work_dir = demo_work_dir(tmp_path, tested=False)
    rows, models = gather(tmp_path, work_dir)
    # CPU training logs no memory
    assert rows['maskrcnn_cvt13_shapes.py'][:5] == ['not measured'] * 5
    assert models['maskrcnn_cvt13_shapes']['Results'] == []
    assert 'Training Memory (GB)' not in models['maskrcnn_cvt13_shapes'][
        'Metadata']


def test_train_memory_is_the_peak_the_training_log_holds(tmp_path):
    # the fields a GPU run logs: MB per GPU, peak since the last log line
    work_dir = demo_work_dir(tmp_path, memories=[3000, 5120, 4000])
    rows, models = gather(tmp_path, work_dir)
    assert rows['maskrcnn_cvt13_shapes.py'][4] == '5.0 GB'  # 5120 MB
    assert models['maskrcnn_cvt13_shapes']['Metadata'][
        'Training Memory (GB)'] == 5.0


def test_a_directory_without_runs_is_skipped_with_a_message(tmp_path, capsys):
    work_dir = demo_work_dir(tmp_path)
    not_a_run = tmp_path / 'benchmark'
    not_a_run.mkdir()
    rows, _ = gather(tmp_path, not_a_run, work_dir)
    assert list(rows) == ['maskrcnn_cvt13_shapes.py']
    assert f'skipped: {not_a_run} holds no finished run' in (
        capsys.readouterr().err)


def test_no_run_at_all_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match='no run found'):
        gather_results.main([str(tmp_path), '--skip-flops'])


# ---- after a killed run -----------------------------------------------------
def add_later_test_run(work_dir, metrics_text):
    """A copy of the work dir's test run, as the Runner would name one
    started later, whose metrics file holds ``metrics_text``."""
    later = work_dir / '29991231_235959'
    shutil.copytree(work_dir / TESTED, later)
    (later / f'{TESTED}.json').unlink()
    (later / f'{later.name}.json').write_text(metrics_text)
    return later / f'{later.name}.json'


@pytest.mark.parametrize('metrics_text',
                         ['{"coco/bbox_mAP": 0.5, "coco/se', '{}'])
def test_a_later_test_run_cut_short_or_without_metrics_leaves_the_ap(
        tmp_path, capsys, metrics_text):
    work_dir = demo_work_dir(tmp_path)
    spoiled = add_later_test_run(work_dir, metrics_text)
    rows, _ = gather(tmp_path, work_dir)
    assert rows['maskrcnn_cvt13_shapes.py'][0] == '41.2'
    assert f'warning: {spoiled}' in capsys.readouterr().err


@pytest.mark.parametrize('value', ['"oops"', 'NaN'])
def test_a_metric_that_is_no_number_is_flagged_not_tabulated(
        tmp_path, capsys, value):
    work_dir = demo_work_dir(tmp_path)
    metrics = add_later_test_run(
        work_dir, f'{{"coco/bbox_mAP": {value}, "coco/segm_mAP": 0.25}}')
    rows, models = gather(tmp_path, work_dir)
    box, mask, *_ = rows['maskrcnn_cvt13_shapes.py']
    assert box.startswith('invalid: ') and mask == '25.0'
    results = models['maskrcnn_cvt13_shapes']['Results']
    assert [r['Metrics'] for r in results] == [{'mask AP': 25.0}]
    assert f'warning: {metrics}: coco/bbox_mAP is' in capsys.readouterr().err


def scalars_of(work_dir):
    return work_dir / TRAINED / 'vis_data' / 'scalars.json'


def test_a_scalars_json_cut_off_mid_line_is_read_but_its_last_line(
        tmp_path, capsys):
    work_dir = demo_work_dir(tmp_path, memories=[3000, 4096])
    scalars = scalars_of(work_dir)
    with open(scalars, 'a') as f:
        f.write('{"memory": 9000, "lo')
    rows, _ = gather(tmp_path, work_dir)
    assert rows['maskrcnn_cvt13_shapes.py'][4] == '4.0 GB'
    assert (f'warning: {scalars}: the last line, 3, is cut off'
            in capsys.readouterr().err)


def test_a_bad_line_inside_scalars_json_is_an_error_naming_it(tmp_path):
    work_dir = demo_work_dir(tmp_path, memories=[3000, 4096])
    scalars = scalars_of(work_dir)
    first, second = scalars.read_text().splitlines()
    scalars.write_text(f'{first}\n{{"memory": 9\n{second}\n')
    with pytest.raises(
            ValueError, match=f'{scalars}, line 2, is not valid JSON'):
        gather(tmp_path, work_dir)


def test_runs_without_their_config_are_named_with_that_reason(
        tmp_path, capsys):
    work_dir = demo_work_dir(tmp_path)
    for config in work_dir.glob('*/vis_data/config.py'):
        config.unlink()
    with pytest.raises(SystemExit, match='no run found'):
        gather(tmp_path, work_dir)
    err = capsys.readouterr().err
    assert 'no vis_data/config.py' in err
    assert 'scalars.json' not in err


# ---- after a run stopped by a non-finite loss -------------------------------
def log_of_the_guard(log, amp=False):
    """Appends to ``log`` what StopOnNonFiniteLossHook logs of a NaN loss
    at iteration 6 (epoch 2): the stop, or under AMP the warning of a step
    that the loss scaler skips."""
    name = f'gather {log} {amp}'  # an instance of its own, for this log
    runner = SimpleNamespace(
        optim_wrapper=AmpOptimWrapper.__new__(AmpOptimWrapper)
        if amp else None,
        message_hub=MessageHub.get_instance(name),
        logger=MMLogger.get_instance(name, log_file=str(log)),
        hooks=[],
        iter=5,
        epoch=1)
    hook = StopOnNonFiniteLossHook()
    if amp:
        hook.after_train_iter(runner, 5, outputs=dict(loss=math.nan))
    else:
        with pytest.raises(NonFiniteLossError):
            hook.after_train_iter(runner, 5, outputs=dict(loss=math.nan))
    for handler in runner.logger.handlers:
        handler.flush()


def test_a_run_stopped_by_a_non_finite_loss_is_marked_and_keeps_no_weights(
        tmp_path):
    work_dir = demo_work_dir(tmp_path, tested=False)
    log_of_the_guard(work_dir / TRAINED / f'{TRAINED}.log')
    rows, models = gather(tmp_path, work_dir)
    assert ('maskrcnn_cvt13_shapes.py`, training stopped at iteration 6 '
            '(epoch 2): non-finite loss') in rows
    model = models['maskrcnn_cvt13_shapes']
    assert model['Metadata']['Training'] == (
        'stopped by a non-finite loss at iteration 6 (epoch 2)')
    # last_checkpoint names epoch_1.pth, from before the stop: no test
    # tested it
    assert 'Weights' not in model


def test_a_stopped_runs_weights_are_those_a_test_run_tested(tmp_path):
    work_dir = demo_work_dir(tmp_path)
    log_of_the_guard(work_dir / TRAINED / f'{TRAINED}.log')
    _, models = gather(tmp_path, work_dir)
    model = models['maskrcnn_cvt13_shapes']
    assert model['Weights'] == str(work_dir / 'epoch_1.pth')
    assert model['Metadata']['Training'].startswith('stopped')


def test_a_step_skipped_under_amp_does_not_mark_the_run_stopped(tmp_path):
    work_dir = demo_work_dir(tmp_path)
    log = work_dir / TRAINED / f'{TRAINED}.log'
    log_of_the_guard(log, amp=True)
    assert 'a step that the loss scaler skips' in log.read_text()
    rows, models = gather(tmp_path, work_dir)
    assert 'Training' not in models['maskrcnn_cvt13_shapes']['Metadata']
    assert 'maskrcnn_cvt13_shapes.py' in rows


# ---- several work dirs of one config ----------------------------------------
def test_work_dirs_of_one_config_get_entries_and_rows_named_by_their_paths(
        tmp_path):
    first, second = (demo_work_dir(tmp_path / run) for run in ('a', 'b'))
    log_of_the_guard(second / TRAINED / f'{TRAINED}.log')
    rows, models = gather(tmp_path, first, second)
    assert set(models) == {
        f'maskrcnn_cvt13_shapes [{first}]', f'maskrcnn_cvt13_shapes [{second}]'
    }
    assert set(rows) == {
        f'maskrcnn_cvt13_shapes.py` [{first}]',
        f'maskrcnn_cvt13_shapes.py` [{second}], training stopped at '
        f'iteration 6 (epoch 2): non-finite loss'
    }


def test_a_work_dir_given_twice_is_gathered_once(tmp_path, capsys):
    work_dir = demo_work_dir(tmp_path)
    rows, models = gather(tmp_path, work_dir, f'{tmp_path}/./{work_dir.name}')
    assert list(models) == ['maskrcnn_cvt13_shapes']
    assert 'given twice' in capsys.readouterr().err
