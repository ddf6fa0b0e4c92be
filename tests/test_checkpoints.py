"""Checkpoints of the tools' Runner: read under torch >= 2.6, saved so that
a save cut short cannot lose them all, resumed from the newest complete
one, loaded strictly; and files that are no checkpoint, named as such."""
import copy
import functools
import json
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path

import mmengine.dist
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, MODELS
from mmengine.runner.checkpoint import load_from_local
from safetensors.torch import save_file
from torch.utils.data import Dataset

from mmcvt.engine import build_runner
from mmcvt.engine.checkpoint_state import rebuilt_message_hub
from mmcvt.engine.hooks import partial_path
from mmcvt.fileio import checkpoint_file_problem, load_from_local_file
from .utils import HF_ARCH, STACK, load_repo_config, load_tool

cvt2mmcvt = load_tool('model_converters/cvt2mmcvt.py')


# ---- a Runner that trains in a blink ----------------------------------------
@MODELS.register_module(force=True)
class LinearModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y, mode='tensor'):
        out = self.linear(x).squeeze(-1)
        if mode == 'loss':
            return {'loss': ((out - y)**2).mean()}
        return out


@DATASETS.register_module(force=True)
class LineDataset(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.tensor([float(i), 1.]), y=torch.tensor(2. * i))


@DATASETS.register_module(force=True)
class NoisyLineDataset(LineDataset):
    """LineDataset whose inputs draw from torch's, numpy's and Python's
    random states, as a data pipeline's transforms do."""

    def __getitem__(self, i):
        noise = torch.rand(1).item() + np.random.rand() + random.random()
        return dict(
            x=torch.tensor([float(i) + noise, 1.]), y=torch.tensor(2. * i))


@HOOKS.register_module(force=True)
class RecordingHook(Hook):
    """Records the iterations run and their losses, and the optimizer and
    scheduler states at the start of training."""

    def __init__(self):
        self.iters = []
        self.losses = []
        self.optimizer_state = self.scheduler_states = None

    def before_train(self, runner):
        # copies: the states are updated in place while training
        self.optimizer_state = copy.deepcopy(runner.optim_wrapper.state_dict())
        self.scheduler_states = copy.deepcopy(
            [s.state_dict() for s in runner.param_schedulers])

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(runner.iter)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.losses.append(outputs['loss'].item())


def build_linear_runner(work_dir,
                        max_iters,
                        resume=False,
                        load_from=None,
                        checkpoint_hook=None,
                        hooks=(),
                        dataset='LineDataset',
                        shuffle=False,
                        seed=None):
    """The tools' Runner (mmcvt.engine.build_runner) of a linear model that
    saves a checkpoint every 2 iterations, with ``hooks`` besides its
    RecordingHook, on ``dataset`` in an InfiniteSampler."""
    # unique, or two runners made in one second share their logger
    name = f'{work_dir.name}-{max_iters}-{resume}-{load_from}'
    return build_runner(
        Config(
            dict(
                experiment_name=name,
                model=dict(type='LinearModel'),
                work_dir=str(work_dir),
                train_dataloader=dict(
                    dataset=dict(type=dataset),
                    sampler=dict(type='InfiniteSampler', shuffle=shuffle),
                    batch_size=2,
                    collate_fn=dict(type='default_collate')),
                train_cfg=dict(by_epoch=False, max_iters=max_iters),
                optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
                param_scheduler=dict(
                    type='MultiStepLR', milestones=[3], by_epoch=False),
                default_hooks=dict(
                    checkpoint=dict(
                        checkpoint_hook or dict(type='CheckpointHook'),
                        interval=2,
                        by_epoch=False)),
                custom_hooks=[dict(type='RecordingHook'), *hooks],
                randomness=dict(seed=seed),
                resume=resume,
                load_from=None if load_from is None else str(load_from))))


def recorder(runner):
    return next(h for h in runner.hooks if isinstance(h, RecordingHook))


@pytest.fixture(scope='module')
def trained_work_dir(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('trained')
    build_linear_runner(work_dir, max_iters=4).train()
    return work_dir


@pytest.fixture
def work_dir(trained_work_dir, tmp_path):
    """A work_dir holding iter_2.pth and iter_4.pth, the latest, for this
    test alone."""
    work_dir = shutil.copytree(trained_work_dir, tmp_path / 'work_dir')
    # the copy's own, not the original's
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_4.pth'))
    return work_dir


# ---- reading Runner checkpoints under torch >= 2.6 --------------------------
@pytest.mark.skipif(STACK != 'upstream', reason='upstream mmengine')
def test_stock_mmengine_cannot_read_runner_checkpoints_under_torch_2_6(
        work_dir):
    # why mmcvt replaces the local loader; if this starts passing, mmengine
    # or torch changed and the replacement may be dropped
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        load_from_local(str(work_dir / 'iter_4.pth'), 'cpu')


@pytest.mark.skipif(STACK != 'onedl', reason='onedl-mmengine')
def test_onedl_mmengine_reads_runner_checkpoints_allowing_getattr(work_dir):
    # its weights-only read allows builtins.getattr and HistoryBuffer as
    # they are (mmcvt's loaders allow neither unchecked), and falls back to
    # a full unpickle on anything else
    checkpoint = load_from_local(str(work_dir / 'iter_4.pth'), 'cpu')
    assert isinstance(checkpoint['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


# ---- checkpoints that torch's default weights-only unpickler reads ----------
@pytest.fixture(scope='module')
def safe_work_dir(tmp_path_factory):
    """A work dir of SafeCheckpointHook's checkpoints, iter_2.pth and
    iter_4.pth."""
    work_dir = tmp_path_factory.mktemp('safe')
    build_linear_runner(
        work_dir, max_iters=4,
        checkpoint_hook=dict(type='SafeCheckpointHook')).train()
    return work_dir


def test_safe_checkpoints_hold_nothing_torchs_unpickler_refuses(safe_work_dir):
    path = safe_work_dir / 'iter_4.pth'
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    torch.load(path, weights_only=True)


def test_stock_mmengines_loader_reads_safe_checkpoints(safe_work_dir):
    checkpoint = load_from_local(str(safe_work_dir / 'iter_4.pth'), 'cpu')
    assert checkpoint['meta']['iter'] == 4


class OffTheCPU(torch.Tensor):
    """A tensor as Runner.resume loads it onto a GPU, on any machine: numpy
    refuses it, as it refuses a CUDA tensor, until ``.cpu()`` copies it."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', None)
        if name == 'numpy':
            raise TypeError("can't convert cuda:0 device type tensor to "
                            "numpy. Use Tensor.cpu() to copy the tensor to "
                            "host memory first.")
        if name == 'cpu':
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs or {})


def rebuilt_losses(message_hub):
    """The loss log of a rebuilt message hub state."""
    return message_hub['log_scalars']['train/loss'].data[0].tolist()


def saved_losses(path):
    """The loss log of a checkpoint of SafeCheckpointHook, as saved."""
    state = load_from_local_file(str(path))['message_hub']
    return state['log_scalars']['train/loss']['log_history'].tolist()


def test_logs_loaded_off_the_cpu_are_rebuilt(safe_work_dir):
    # Runner.resume loads checkpoints onto the training device
    path = safe_work_dir / 'iter_4.pth'
    off_the_cpu = load_from_local_file(str(path))['message_hub']
    for buffer in off_the_cpu['log_scalars'].values():
        for key in ('log_history', 'count_history'):
            buffer[key] = buffer[key].as_subclass(OffTheCPU)
    rebuilt = rebuilt_message_hub(off_the_cpu)
    assert rebuilt_losses(rebuilt) == saved_losses(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_logs_loaded_onto_a_gpu_are_rebuilt(safe_work_dir):
    path = safe_work_dir / 'iter_4.pth'
    on_the_gpu = torch.load(path, map_location='cuda', weights_only=True)
    rebuilt = rebuilt_message_hub(on_the_gpu['message_hub'])
    assert rebuilt_losses(rebuilt) == saved_losses(path)


def resumed_loss_history(work_dir, tmp_path):
    """The loss log of a run resumed from ``work_dir``'s iter_4.pth and
    trained to iteration 6, with SafeCheckpointHook."""
    work_dir = shutil.copytree(work_dir, tmp_path / 'work_dir')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_4.pth'))
    runner = build_linear_runner(
        work_dir,
        max_iters=6,
        resume=True,
        checkpoint_hook=dict(type='SafeCheckpointHook'))
    runner.train()
    return runner.message_hub.get_scalar('train/loss').data[0]


def test_a_resume_from_a_safe_checkpoint_rebuilds_its_logs(
        safe_work_dir, tmp_path):
    saved = load_from_local_file(str(safe_work_dir / 'iter_4.pth'))
    history = resumed_loss_history(safe_work_dir, tmp_path)
    assert len(history) == 6
    assert history[:4].tolist() == saved['message_hub']['log_scalars'][
        'train/loss']['log_history'].tolist()


def test_checkpoints_of_runner_objects_still_resume_with_the_safe_hook(
        trained_work_dir, tmp_path):
    # as mmengine's hook, and SafeCheckpointHook before it, saved them
    saved = load_from_local_file(str(trained_work_dir / 'iter_4.pth'))
    history = resumed_loss_history(trained_work_dir, tmp_path)
    assert len(history) == 6
    assert history[:4].tolist(
    ) == saved['message_hub']['log_scalars']['train/loss'].data[0].tolist()


def test_resume_continues_from_the_last_checkpoint(work_dir):
    runner = build_linear_runner(work_dir, max_iters=6, resume=True)
    runner.train()
    assert recorder(runner).iters == [4, 5]


def test_a_resumed_run_repeats_the_uninterrupted_losses_bit_for_bit(tmp_path):
    # shuffled batches whose data draw random numbers: a resume must put
    # the sampler and the random states back where the run left them, on
    # either stack's IterBasedTrainLoop
    run = functools.partial(
        build_linear_runner,
        dataset='NoisyLineDataset',
        shuffle=True,
        seed=0,
        checkpoint_hook=dict(type='SafeCheckpointHook'))
    whole = run(tmp_path / 'whole', max_iters=6)
    whole.train()
    run(tmp_path / 'cut', max_iters=4).train()
    resumed = run(tmp_path / 'cut', max_iters=6, resume=True)
    resumed.train()
    assert recorder(resumed).losses == recorder(whole).losses[4:]


def test_resume_restores_the_optimizer_and_scheduler_state(work_dir):
    saved = load_from_local_file(str(work_dir / 'iter_4.pth'))
    runner = build_linear_runner(work_dir, max_iters=6, resume=True)
    runner.train()
    resumed = recorder(runner).optimizer_state['state'][0]
    assert resumed['step'] == saved['optimizer']['state'][0]['step'] == 4
    # saved on the CPU, resumed on the training device
    torch.testing.assert_close(
        resumed['exp_avg'],
        saved['optimizer']['state'][0]['exp_avg'],
        check_device=False)
    assert recorder(runner).scheduler_states == saved['param_schedulers']
    assert recorder(runner).scheduler_states[0]['_global_step'] == 4


def test_plain_weight_files_still_load_with_weights_only(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'w': torch.ones(2)}, path)
    assert torch.equal(load_from_local_file(str(path))['w'], torch.ones(2))


class Payload:

    def __reduce__(self):
        return (print, ('this must never run', ))


def test_a_pickle_with_foreign_objects_is_refused_unrun(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    torch.save({'w': torch.ones(1), 'x': Payload()}, path)
    with pytest.raises(
            pickle.UnpicklingError,
            match=r"evil.pth holds Python objects.*builtins.print"):
        load_from_local_file(str(path))
    assert 'this must never run' not in capsys.readouterr().out


# ---- files that are no checkpoint -------------------------------------------
def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_from_local_file(str(tmp_path / 'absent.pth'))


def test_loading_an_empty_file_says_it_is_empty(tmp_path):
    path = tmp_path / 'empty.pth'
    path.touch()
    with pytest.raises(
            ValueError,
            match=r'empty.pth is not a readable checkpoint: the '
            r'file is empty \(0 bytes\)'):
        load_from_local_file(str(path))


def test_loading_a_text_file_says_it_is_no_checkpoint(tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('epoch 12: bbox mAP 0.41\n')
    with pytest.raises(
            ValueError,
            match=r"notes.pth is not a readable checkpoint: it is "
            r"neither a torch checkpoint .* starts with b'epoc'"):
        load_from_local_file(str(path))


def cut_short(path):
    """Truncates a file to half its size, as a killed save leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_loading_a_truncated_checkpoint_says_it_was_cut_short(work_dir):
    cut_short(work_dir / 'iter_4.pth')
    with pytest.raises(
            ValueError,
            match=r'iter_4.pth is not a readable checkpoint: it '
            r'is a torch checkpoint cut short'):
        load_from_local_file(str(work_dir / 'iter_4.pth'))


def test_loading_a_zip_of_something_else_says_it_is_no_torch_checkpoint(
        tmp_path):
    path = tmp_path / 'photos.pth'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('holiday.jpg', b'\xff\xd8')
    with pytest.raises(
            ValueError,
            match=r'photos.pth is not a readable checkpoint: it '
            r'is a zip archive, but not a torch checkpoint: it has '
            r'no data.pkl; it holds \[holiday.jpg\]'):
        load_from_local_file(str(path))


def test_loading_a_truncated_safetensors_file_says_it_was_cut_short(tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file({'w': torch.ones(1000)}, path)
    cut_short(path)
    with pytest.raises(
            ValueError,
            match=r'model.safetensors is not a readable checkpoint'
            r': it is a safetensors file cut short: its tensors '
            r'end at byte 4\d\d\d, and the file has 2\d\d\d'):
        load_from_local_file(str(path))


# ---- a save cut short -------------------------------------------------------
class Killed(BaseException):
    """What the process would die of: nothing after the write runs."""


@pytest.mark.parametrize(
    'config',
    ['configs/maskrcnn_cvt13_coco.py', 'configs/upernet_cvt13_ade20k.py'])
def test_a_save_cut_short_leaves_a_complete_checkpoint_to_resume_from(
        config, tmp_path, monkeypatch):
    # the shipped config's hook, keeping one checkpoint as the demos do
    hook = dict(
        load_repo_config(config).default_hooks.checkpoint, max_keep_ckpts=1)
    write = LocalBackend.put

    def write_half_and_die(backend, obj, filepath):
        """Dies halfway through writing iter_4.pth, under whatever name
        the hook writes it."""
        if 'iter_4.pth' in str(filepath):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise Killed
        write(backend, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', write_half_and_die)
    with pytest.raises(Killed):
        build_linear_runner(
            tmp_path, max_iters=6, checkpoint_hook=hook).train()
    monkeypatch.undo()

    latest = (tmp_path / 'last_checkpoint').read_text()
    assert latest == str(tmp_path / 'iter_2.pth')
    for path in tmp_path.glob('*.pth'):  # no file under a checkpoint's name
        assert checkpoint_file_problem(path) is None, path  # is cut short

    runner = build_linear_runner(
        tmp_path, max_iters=6, resume=True, checkpoint_hook=hook)
    runner.train()
    assert recorder(runner).iters == [2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.glob('*.pth*')) == ['iter_6.pth']


def test_a_rank_but_0_leaves_the_checkpoint_being_written_alone(
        tmp_path, monkeypatch):
    runner = build_linear_runner(tmp_path, max_iters=2)
    # rank 0 is writing iter_2.pth, in the directory that the ranks share
    being_written = Path(partial_path(str(tmp_path / 'iter_2.pth')))
    being_written.write_bytes(b'PK half written')
    monkeypatch.setattr(mmengine.dist.utils, 'get_rank', lambda group=None: 1)
    runner.save_checkpoint(str(tmp_path), 'iter_2.pth')
    assert being_written.read_bytes() == b'PK half written'
    assert not (tmp_path / 'iter_2.pth').exists()


# ---- resuming from a checkpoint that is cut short ---------------------------
def test_resume_skips_a_truncated_latest_checkpoint_and_says_so(work_dir):
    cut_short(work_dir / 'iter_4.pth')
    runner = build_linear_runner(work_dir, max_iters=6, resume=True)
    runner.train()
    assert recorder(runner).iters == [2, 3, 4, 5]
    log, = Path(runner.log_dir).glob('*.log')
    assert (f'The latest checkpoint, {work_dir}/iter_4.pth, cannot be '
            f'resumed from: it is a torch checkpoint cut short'
            ) in log.read_text()
    assert (f'Resuming from the newest complete checkpoint before it '
            f'instead: {work_dir}/iter_2.pth') in log.read_text()


def test_resuming_from_a_named_truncated_checkpoint_offers_the_previous(
        work_dir):
    cut_short(work_dir / 'iter_4.pth')
    with pytest.raises(RuntimeError) as error:  # before anything is built
        build_linear_runner(
            work_dir,
            max_iters=6,
            resume=True,
            load_from=work_dir / 'iter_4.pth')
    assert re.match(
        f'cannot resume from {work_dir}/iter_4.pth: it is a torch checkpoint '
        f'cut short.* resume from it with --resume {work_dir}/iter_2.pth$',
        str(error.value))


# ---- strict loading ---------------------------------------------------------
def test_load_from_a_checkpoint_of_another_model_is_an_error_naming_keys(
        tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv.weight': torch.zeros(1, 2)}}, checkpoint)
    runner = build_linear_runner(tmp_path, max_iters=2, load_from=checkpoint)
    with pytest.raises(RuntimeError) as error:
        runner.train()
    message = str(error.value)
    assert f'checkpoint {checkpoint} does not fit the model' in message
    assert 'unexpected key in source state_dict: conv.weight' in message
    assert ('missing keys in source state_dict: linear.weight, linear.bias'
            in message)


def integer_weights(directory):
    """A checkpoint of LinearModel whose weight holds integers."""
    checkpoint = directory / 'integers.pth'
    torch.save(
        {
            'state_dict': {
                'linear.weight': torch.ones(1, 2, dtype=torch.int64),
                'linear.bias': torch.zeros(1)
            }
        }, checkpoint)
    return checkpoint


def test_load_from_a_checkpoint_of_integers_is_an_error_naming_them(tmp_path):
    checkpoint = integer_weights(tmp_path)
    runner = build_linear_runner(tmp_path, max_iters=2, load_from=checkpoint)
    with pytest.raises(TypeError) as error:
        runner.train()
    assert (f'checkpoint {checkpoint} holds integers where the model has '
            f'floating point numbers, or the reverse: [linear.weight: '
            f'checkpoint torch.int64, model torch.float32]') in str(
                error.value)


def test_a_wrapped_model_refuses_a_checkpoint_of_integers_too(tmp_path):
    # as a launcher's MMDistributedDataParallel wraps it: its keys start
    # with module., and DataParallel is a model wrapper that needs no GPU
    checkpoint = integer_weights(tmp_path)
    runner = build_linear_runner(tmp_path, max_iters=2)
    runner.model = nn.DataParallel(runner.model)
    kinds = r'\[linear.weight: checkpoint torch.int64, model torch.float32\]'
    with pytest.raises(TypeError, match=kinds):
        runner.load_checkpoint(str(checkpoint))


# ---- the converter ----------------------------------------------------------
def test_the_converter_refuses_to_overwrite_its_input(hf_dir, tmp_path,
                                                      capsys):
    directory = shutil.copytree(hf_dir, tmp_path / 'hf')
    weights = directory / 'model.safetensors'
    (tmp_path / 'link.safetensors').symlink_to(weights)
    original = weights.read_bytes()
    for src, dst in ((weights, weights),
                     (weights, directory / '.' / 'model.safetensors'),
                     (weights, tmp_path / 'link.safetensors'), (directory,
                                                                weights)):
        # the arch given: weights that would convert, were dst another file
        assert cvt2mmcvt.main([
            str(src),
            str(dst), '--safetensors', '--arch',
            json.dumps(HF_ARCH)
        ]) == 1
        assert 'would overwrite the input' in capsys.readouterr().err
        assert weights.read_bytes() == original
