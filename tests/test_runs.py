"""Runs to trust across interruptions, on tiny versions of the shapes demos:
a resumed run repeats the uninterrupted one's losses to the bit, resumes
from its own work dir's checkpoints however the dir was moved or copied,
holds its work dir against a second training, and stops at the first
non-finite loss without saving over the last good checkpoint."""
import collections
import functools
import json
import math
import os
import shutil
import socket
import subprocess
import time
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, MMLogger
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import HOOKS

from mmcvt.engine import (NonFiniteLossError, StopOnNonFiniteLossHook,
                          WorkDirInUse, capture_random_states, hold_work_dir,
                          restore_random_states)
from mmcvt.engine.work_dir_lock import LOCK_NAME, STALE_AFTER_S
from mmcvt.fileio import load_from_local_file
from .test_checkpoints import build_linear_runner, recorder
from .utils import REPO, TINY, Interrupted, load_tool, shapes_options

train_tool = load_tool('train.py')
test_tool = load_tool('test.py')

# The demos with a tiny CvT and narrow heads: the same pipelines, samplers
# and random draws (RandomFlip, drop path, the RPN's and RoI heads'
# samplers), in steps of a fraction of a second.
TINY_BACKBONE = dict(arch=dict(_delete_=True, **TINY), drop_path_rate=0.1)
DEMOS = REPO / 'configs' / 'demo'
TINY_DETECTION = f'''_base_ = {str(DEMOS / 'maskrcnn_cvt13_shapes.py')!r}
model = dict(
    backbone={TINY_BACKBONE!r},
    neck=dict(in_channels={TINY['embed_dims']!r}, out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32)),
    test_cfg=dict(rcnn=dict(max_per_img=10)))
'''
TINY_SEGMENTATION = f'''_base_ = {str(DEMOS / 'upernet_cvt13_shapes.py')!r}
model = dict(
    backbone={TINY_BACKBONE!r},
    decode_head=dict(in_channels={TINY['embed_dims']!r}, channels=16),
    auxiliary_head=dict(in_channels={TINY['embed_dims'][-1]}, channels=16))
'''

LOSSES = collections.defaultdict(list)
DATA_SEEDS = {}


@HOOKS.register_module(force=True)
class RecordLosses(Hook):
    """Records each iteration's loss, as the float32 it is, and the seeds
    of the data sampler and the data workers, by run."""

    def __init__(self, run):
        self.run = run

    def before_train(self, runner):
        loader = runner.train_dataloader
        # mmdet's configs batch with AspectRatioBatchSampler around it
        sampler = getattr(loader.batch_sampler, 'sampler', loader.sampler)
        DATA_SEEDS[self.run] = dict(
            sampler=sampler.seed,
            workers=loader.worker_init_fn.keywords['seed'])

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        LOSSES[self.run].append((runner.iter, outputs['loss'].item()))


@HOOKS.register_module(force=True)
class PoisonWeightsAtIteration(Hook):
    """Turns the first weight of the model into NaN before the given
    iteration, as a diverging run would."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.iteration:
            with torch.no_grad():
                next(runner.model.parameters()).fill_(math.nan)


def dead_pid():
    process = subprocess.Popen(['true'])
    process.wait()
    return process.pid


def config_file(directory, name, base, hooks=()):
    """A config: ``base`` (a tiny demo) with custom hooks."""
    path = directory / f'{name}.py'
    path.write_text(f'{base}\ncustom_hooks = {list(hooks)!r}\n')
    return str(path)


# batch 4 of the 16 training images, unless a test says otherwise
cfg_options = functools.partial(shapes_options,
                                **{'train_dataloader.batch_size': '4'})


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Steps of tiny models are small ops, which a second thread does not
    speed up, and which it slows down tenfold when other processes keep the
    cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module', autouse=True)
def on_the_cpu():
    """The Runner trains on the CPU, whatever the machine has: the runs here
    are compared to the last bit, which CUDA's atomic adds (RoIAlign's and
    some of cuDNN's backward kernels) do not promise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, 'is_available', lambda: False)
        yield


def newest_log(work_dir):
    return max(work_dir.glob('*/*.log'), key=os.path.getmtime).read_text()


# ---- Mask R-CNN: 2 epochs of 4 iterations, validated after each -----------
def detection_options(shapes, work_dir, name, **extra):
    return cfg_options(
        shapes, work_dir, name, **{
            'train_cfg.max_epochs': '2',
            'train_cfg.val_interval': '1',
            'default_hooks.checkpoint.interval': '1',
            **extra
        })


def train_detection(tmp, shapes, work_dir, name, hooks=(), args=(), **options):
    config = config_file(tmp, name, TINY_DETECTION, hooks)
    train_tool.main([config, *args] +
                    detection_options(shapes, work_dir, name, **options))


@pytest.fixture(scope='module')
def detection_runs(shapes, tmp_path_factory):
    """Work dirs and per-iteration losses of an uninterrupted run (seed 0),
    of the same run interrupted in its second epoch, and of that one
    resumed without a seed in its config."""
    tmp = tmp_path_factory.mktemp('detection')
    whole, interrupted = tmp / 'whole', tmp / 'interrupted'
    train_detection(tmp, shapes, whole, 'det-whole',
                    [dict(type='RecordLosses', run='det-whole')],
                    **{'randomness.seed': '0'})
    with pytest.raises(Interrupted):
        train_detection(tmp, shapes, interrupted, 'det-interrupted', [
            dict(type='RecordLosses', run='det-interrupted'),
            dict(type='InterruptAtIteration', iteration=6)
        ], **{'randomness.seed': '0'})
    # what a kill, unlike an exception, leaves behind
    stale_pid = dead_pid()
    (interrupted / LOCK_NAME).write_text(
        json.dumps(
            dict(
                pid=stale_pid,
                host=socket.gethostname(),
                started='2024-01-01T00:00:00',
                command='tools/train.py')))
    train_detection(tmp, shapes, interrupted, 'det-resumed',
                    [dict(type='RecordLosses', run='det-resumed')],
                    ['--resume'])
    return SimpleNamespace(
        whole=whole,
        interrupted=interrupted,
        stale_pid=stale_pid,
        losses={
            run: LOSSES[f'det-{run}']
            for run in ('whole', 'interrupted', 'resumed')
        })


@pytest.mark.slow
def test_a_resumed_detection_run_repeats_the_uninterrupted_losses_bit_for_bit(
        detection_runs):
    losses = detection_runs.losses
    assert len(losses['whole']) == 8
    assert losses['interrupted'] == losses['whole'][:6]
    # resumed from epoch_1.pth, after the validation that followed it
    assert losses['resumed'] == losses['whole'][4:]


@pytest.mark.slow
def test_the_resumed_runs_sampler_and_data_workers_take_the_runs_seed(
        detection_runs):
    # none in the resumed run's config: mmengine would draw one
    assert DATA_SEEDS['det-resumed'] == dict(sampler=0, workers=0)


def test_random_states_round_trip_through_the_weights_only_unpickler(tmp_path):
    states = capture_random_states()
    expected = [torch.rand(3), torch.randint(9, (3, ))]
    import random

    import numpy as np
    expected += [np.random.rand(3).tolist(), random.random()]
    torch.save(states, tmp_path / 'states.pth')
    restore_random_states(
        torch.load(tmp_path / 'states.pth', weights_only=True))
    drawn = [torch.rand(3), torch.randint(9, (3, ))]
    drawn += [np.random.rand(3).tolist(), random.random()]
    assert [str(x) for x in drawn] == [str(x) for x in expected]


# ---- UperNet: an IterBasedTrainLoop, 6 iterations, saved and validated ----
# after the third
def train_segmentation(tmp,
                       shapes_seg,
                       work_dir,
                       name,
                       hooks=(),
                       args=(),
                       **options):
    config = config_file(tmp, name, TINY_SEGMENTATION, hooks)
    train_tool.main([config, *args] + cfg_options(
        shapes_seg, work_dir, name, **{
            'train_cfg.max_iters': '6',
            'train_cfg.val_interval': '3',
            'default_hooks.checkpoint.interval': '3',
            **options
        }))


@pytest.mark.slow
def test_a_resumed_iteration_based_run_repeats_the_uninterrupted_losses(
        shapes_seg, tmp_path):
    train_segmentation(tmp_path, shapes_seg, tmp_path / 'whole', 'seg-whole',
                       [dict(type='RecordLosses', run='seg-whole')],
                       **{'randomness.seed': '0'})
    with pytest.raises(Interrupted):
        train_segmentation(tmp_path, shapes_seg, tmp_path / 'interrupted',
                           'seg-interrupted',
                           [dict(type='InterruptAtIteration', iteration=5)],
                           **{'randomness.seed': '0'})
    # InfiniteSampler's position: the loop replays the 3 batches trained
    # before, drawing random numbers for their transforms
    train_segmentation(tmp_path, shapes_seg, tmp_path / 'interrupted',
                       'seg-resumed',
                       [dict(type='RecordLosses', run='seg-resumed')],
                       ['--resume'])
    assert len(LOSSES['seg-whole']) == 6
    assert LOSSES['seg-resumed'] == LOSSES['seg-whole'][3:]


# ---- resuming a moved or copied work dir ----------------------------------
@pytest.fixture(scope='module')
def linear_work_dir(tmp_path_factory):
    """The work dir of a run of 4 iterations, saved every 2, whose
    last_checkpoint names iter_4.pth by its absolute path."""
    work_dir = tmp_path_factory.mktemp('linear') / 'work_dir'
    build_linear_runner(
        work_dir, max_iters=4,
        checkpoint_hook=dict(type='SafeCheckpointHook')).train()
    return work_dir


def resume_linear(work_dir, **kwargs):
    """Resumes training to iteration 6; the iterations run and the log.
    The runner's name is the work dir's: each test's must be its own."""
    runner = build_linear_runner(work_dir, max_iters=6, resume=True, **kwargs)
    runner.train()
    return recorder(runner).iters, newest_log(work_dir)


def test_resuming_a_copied_work_dir_loads_the_copys_checkpoint(
        linear_work_dir, tmp_path):
    copy = shutil.copytree(linear_work_dir, tmp_path / 'copy')
    iters, log = resume_linear(copy)
    assert iters == [4, 5]
    assert f'Load checkpoint from {copy}/iter_4.pth' in log
    assert (f'last_checkpoint names {linear_work_dir}/iter_4.pth, outside '
            f'{copy}') in log
    assert f'Load checkpoint from {linear_work_dir}' not in log


def test_resuming_a_moved_work_dir_loads_its_checkpoint(
        linear_work_dir, tmp_path):
    before = shutil.copytree(linear_work_dir, tmp_path / 'before')
    moved = before.rename(tmp_path / 'moved')
    iters, log = resume_linear(moved)
    assert iters == [4, 5]
    assert f'Load checkpoint from {moved}/iter_4.pth' in log


def test_the_nan_stop_of_a_moved_work_dir_names_the_checkpoint_there(
        linear_work_dir, tmp_path):
    moved = shutil.copytree(linear_work_dir,
                            tmp_path / 'before').rename(tmp_path / 'moved')
    runner = build_linear_runner(
        moved,
        max_iters=6,
        resume=True,
        hooks=[dict(type='PoisonWeightsAtIteration', iteration=6)])
    with pytest.raises(NonFiniteLossError) as error:
        runner.train()
    assert f'the last checkpoint is {moved}/iter_4.pth.' in str(error.value)


def test_without_last_checkpoint_resume_takes_the_newest_in_the_work_dir(
        linear_work_dir, tmp_path):
    copy = shutil.copytree(linear_work_dir, tmp_path / 'no_pointer')
    (copy / 'last_checkpoint').unlink()
    iters, log = resume_linear(copy)
    assert iters == [4, 5]
    assert (f'no last_checkpoint in {copy}: resuming from the newest '
            f'complete checkpoint in {copy}, {copy}/iter_4.pth') in log


# what mmengine's CheckpointHook, stopped while it rewrites last_checkpoint,
# may leave in it, and what the log says of that
BROKEN_POINTERS = dict(
    empty=(b'', 'is empty, as a run stopped while writing it leaves it'),
    cut_short=('{copy}/ite', "is cut short or garbled: it reads '{copy}/ite', "
               'which names no checkpoint'),
    zero_bytes=(b'\0' * 16, r"is cut short or garbled: it reads '\x00"),
    no_text=(b'\xff\xfe', 'cannot be read'))


@pytest.mark.parametrize('name', BROKEN_POINTERS)
def test_a_broken_last_checkpoint_resumes_from_the_newest_and_says_why(
        linear_work_dir, tmp_path, name):
    pointer, problem = BROKEN_POINTERS[name]
    # a name of its own: the runner's, and its log's
    copy = shutil.copytree(linear_work_dir, tmp_path / f'{name}_pointer')
    if isinstance(pointer, str):
        pointer = pointer.format(copy=copy).encode()
    (copy / 'last_checkpoint').write_bytes(pointer)
    iters, log = resume_linear(copy)
    assert iters == [4, 5]
    assert f'{copy}/last_checkpoint {problem.format(copy=copy)}' in log
    assert (f': resuming from the newest complete checkpoint in {copy}, '
            f'{copy}/iter_4.pth') in log
    assert 'outside' not in log


def test_without_last_checkpoint_the_step_is_read_by_the_hooks_template(
        tmp_path):
    # the template that SafeCheckpointHook deletes old checkpoints by
    hook = dict(type='SafeCheckpointHook', filename_tmpl='linear_{}_iters.pth')
    work_dir = tmp_path / 'custom'
    build_linear_runner(work_dir, max_iters=4, checkpoint_hook=hook).train()
    (work_dir / 'last_checkpoint').unlink()
    # a copy may write them in any order
    os.utime(work_dir / 'linear_2_iters.pth')
    iters, log = resume_linear(work_dir, checkpoint_hook=hook)
    assert iters == [4, 5]
    assert f'Load checkpoint from {work_dir}/linear_4_iters.pth' in log


def test_without_last_checkpoint_a_weights_file_beside_is_not_resumed_from(
        linear_work_dir, tmp_path):
    copy = shutil.copytree(linear_work_dir, tmp_path / 'with_weights')
    (copy / 'last_checkpoint').unlink()
    torch.save({'linear.weight': torch.zeros(1, 2)}, copy / 'cvt13_384.pth')
    iters, log = resume_linear(copy)
    assert iters == [4, 5]
    assert f'Load checkpoint from {copy}/iter_4.pth' in log


def test_a_checkpoint_named_to_resume_from_may_be_outside_the_work_dir(
        linear_work_dir, tmp_path):
    elsewhere = linear_work_dir / 'iter_2.pth'
    iters, log = resume_linear(tmp_path / 'new', load_from=elsewhere)
    assert iters == [2, 3, 4, 5]
    assert f'Load checkpoint from {elsewhere}' in log


# ---- one training per work dir --------------------------------------------
def lock_cfg(work_dir, launcher='none'):
    return Config(dict(work_dir=str(work_dir), launcher=launcher))


def test_a_second_training_in_a_held_work_dir_fails_at_once_naming_the_first(
        shapes, tmp_path):
    work_dir = tmp_path / 'held'
    with hold_work_dir(lock_cfg(work_dir)):
        with pytest.raises(WorkDirInUse) as error:
            train_detection(tmp_path, shapes, work_dir, 'second')
    message = str(error.value)
    assert (f'pid {os.getpid()} on host {socket.gethostname()}, started '
            in message)
    assert '--work-dir' in message
    assert os.listdir(work_dir) == []  # nothing written, lock released


def test_a_lock_left_by_a_killed_training_is_taken_over_with_a_log_line(
        detection_runs):
    work_dir = detection_runs.interrupted
    log = newest_log(work_dir)
    assert (f'{work_dir} was held by a training that is not running any '
            f'more, which is taken over: pid {detection_runs.stale_pid} on '
            f'host {socket.gethostname()}') in log
    assert not (work_dir / LOCK_NAME).exists()  # released at the end


def test_a_lock_of_another_host_is_taken_over_once_not_refreshed(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text('{"pid": 1, "host": "elsewhere", "started": "then", '
                    '"command": "tools/train.py"}')
    with pytest.raises(WorkDirInUse, match='pid 1 on host elsewhere'):
        with hold_work_dir(lock_cfg(tmp_path)):
            pass
    old = time.time() - STALE_AFTER_S - 1
    os.utime(lock, (old, old))
    with hold_work_dir(lock_cfg(tmp_path)) as taken_over:
        assert 'pid 1 on host elsewhere' in taken_over


def test_only_rank_0_of_a_distributed_training_holds_the_work_dir(
        tmp_path, monkeypatch):
    with hold_work_dir(lock_cfg(tmp_path)):
        monkeypatch.setenv('RANK', '1')
        with hold_work_dir(lock_cfg(tmp_path, 'pytorch')) as taken_over:
            assert taken_over is None
        monkeypatch.setenv('RANK', '0')
        with pytest.raises(WorkDirInUse):
            with hold_work_dir(lock_cfg(tmp_path, 'pytorch')):
                pass


@pytest.mark.slow
def test_testing_the_checkpoint_of_a_training_that_holds_its_work_dir(
        detection_runs, shapes, tmp_path):
    work_dir = shutil.copytree(detection_runs.whole, tmp_path / 'running')
    config = config_file(tmp_path, 'test-beside', TINY_DETECTION)
    with hold_work_dir(lock_cfg(work_dir)):
        metrics = test_tool.main(
            [config, str(work_dir / 'epoch_2.pth')] +
            cfg_options(shapes, work_dir, 'test-beside'))
    assert 'coco/bbox_mAP' in metrics


# ---- non-finite losses ----------------------------------------------------
@pytest.mark.slow
def test_training_stops_at_the_first_nan_loss_keeping_the_last_checkpoint(
        shapes, tmp_path):
    work_dir = tmp_path / 'nan'
    with pytest.raises(NonFiniteLossError) as error:
        train_detection(tmp_path, shapes, work_dir, 'nan',
                        [dict(type='PoisonWeightsAtIteration', iteration=6)],
                        **{'train_cfg.val_interval': '2'})
    assert str(error.value).startswith(
        'non-finite loss at iteration 6 (epoch 2): loss=nan')
    assert f'the last checkpoint is {work_dir}/epoch_1.pth' in str(error.value)
    assert sorted(p.name for p in work_dir.glob('*.pth*')) == ['epoch_1.pth']
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir /
                                                             'epoch_1.pth')
    weights = load_from_local_file(str(work_dir / 'epoch_1.pth'))
    assert all(w.isfinite().all() for w in weights['state_dict'].values())


def amp_runner():
    """What the hook reads of a Runner whose optim wrapper is an
    AmpOptimWrapper (which needs a GPU to be built)."""
    return SimpleNamespace(
        optim_wrapper=AmpOptimWrapper.__new__(AmpOptimWrapper),
        message_hub=MessageHub.get_instance('amp-nan-test'),
        logger=MMLogger.get_instance('amp-nan-test'),
        hooks=[],
        iter=0,
        epoch=0)


def test_under_amp_a_few_non_finite_losses_in_a_row_pass_and_more_stop():
    hook = StopOnNonFiniteLossHook(max_skipped_in_a_row=2)
    runner = amp_runner()

    def step(loss):
        runner.message_hub.update_scalar('train/loss', loss)
        hook.after_train_iter(runner, runner.iter, outputs=dict(loss=loss))
        runner.iter += 1

    for loss in (1., math.inf, math.nan, 1., math.nan, math.nan):
        step(loss)  # two in a row at most: skipped steps
    with pytest.raises(
            NonFiniteLossError,
            match=r'iteration 7 \(epoch 1, 3 in a row under AMP\): '
            r'loss=nan'):
        step(math.nan)
