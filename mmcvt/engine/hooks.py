"""The hooks of the tools' runs: a checkpoint hook that keeps a complete
checkpoint at every moment and writes checkpoints that torch's default
weights-only unpickler reads, a stop at the first non-finite loss, and the
random states that make a resumed run continue exactly."""
import math
import os
import os.path as osp
import re

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from ..compat import call_before_first_batch_after_resume
from .checkpoint_state import plain_message_hub, rebuilt_message_hub
from .random_states import capture_random_states, restore_random_states


# In mmengine's root registry, whose children MMDetection's and
# MMSegmentation's registries are: any default_scope finds it.
@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`CheckpointHook`, deleting old checkpoints only
    once the new one is written, and writing checkpoints that torch's
    default weights-only unpickler reads.

    - mmengine's hook first deletes the checkpoints beyond
      ``max_keep_ckpts``, then writes the new one: killed while writing,
      with ``max_keep_ckpts=1``, it leaves no complete checkpoint. This hook
      deletes them after the new one is written and ``last_checkpoint``
      points at it. (:class:`StrictCheckpointRunner` also writes each
      checkpoint under a temporary name and renames it into place, so that
      a file under a checkpoint's name is always complete.) Killed anywhere,
      ``--resume`` finds the previous checkpoint or the new one, whole.
      The checkpoints deleted are those of this hook's file name template
      in its directory with a lower epoch or iteration than the newest,
      beyond ``max_keep_ckpts``: a resumed run counts those of the run it
      resumes.
    - The Runner state inside each checkpoint is stored as tensors and
      plain values (:mod:`mmcvt.engine.checkpoint_state`) and rebuilt when
      one is loaded, so that ``mmdet.apis.init_detector``,
      ``mmseg.apis.init_model`` and the inferencers read mmcvt's
      checkpoints as they read plain weight files.
    Its arguments are those of :class:`CheckpointHook`.
    """

    def __init__(self, *args, max_keep_ckpts=-1, **kwargs):
        # mmengine's hook deletes nothing; this one does, after the save
        super().__init__(*args, max_keep_ckpts=-1, **kwargs)
        self.max_kept = max_keep_ckpts
        self._newest_seen = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['message_hub'] = plain_message_hub(
            checkpoint['message_hub'])

    def after_load_checkpoint(self, runner, checkpoint):
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = rebuilt_message_hub(
                checkpoint['message_hub'])

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        super().after_train_iter(runner, batch_idx, data_batch, outputs)
        self._remove_outdated()

    def after_train_epoch(self, runner):
        super().after_train_epoch(runner)
        self._remove_outdated()

    def after_val_epoch(self, runner, metrics=None):
        super().after_val_epoch(runner, metrics)
        self._remove_outdated()

    def _remove_outdated(self):
        """After a save: deletes the checkpoints of lower steps than the one
        just saved, beyond ``max_keep_ckpts``."""
        if self.last_ckpt == self._newest_seen:
            return
        self._newest_seen = self.last_ckpt
        if self.max_kept <= 0 or not is_main_process():
            return
        step_of = checkpoint_step_parser(self.filename_tmpl)
        newest = step_of(osp.basename(self.last_ckpt))
        if newest is None:
            return
        older = sorted((step, name)
                       for name in self.file_backend.list_dir_or_file(
                           self.out_dir, list_dir=True)
                       for step in [step_of(name)]
                       if step is not None and step < newest)
        for _, name in older[:max(0, len(older) - self.max_kept + 1)]:
            path = self.file_backend.join_path(self.out_dir, name)
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            else:  # checkpoints saved by deepspeed are directories
                self.file_backend.rmtree(path)


def checkpoint_name_template(checkpoint_cfg):
    """The ``filename_tmpl`` of the CheckpointHook that ``checkpoint_cfg``
    (a config's ``default_hooks.checkpoint``) builds, settled as the hook
    settles it when it is None."""
    template = checkpoint_cfg.get('filename_tmpl')
    if template is not None:
        return template
    by_epoch = checkpoint_cfg.get('by_epoch', True)
    return 'epoch_{}.pth' if by_epoch else 'iter_{}.pth'


def checkpoint_step_parser(filename_tmpl):
    """A function from a file name to the epoch or iteration that
    ``filename_tmpl`` ('epoch_{}.pth') puts in it, or None for another
    name. It tells the checkpoints that :class:`SafeCheckpointHook` deletes
    and those that :class:`StrictCheckpointRunner` may resume from."""
    pattern = re.compile(
        re.sub(r'\\\{[^}]*\\\}', r'(\\d+)', re.escape(filename_tmpl)))

    def step_of(name):
        found = pattern.fullmatch(name)
        return int(found.group(1)) if found else None

    return step_of


def partial_path(path):
    """Where a file is written before it is renamed to ``path``."""
    return path + '.tmp'


def publish(partial, path):
    """Renames a completely written file to its name, on disk first: a
    rename is atomic, so ``path`` is the old file or the new one, whole."""
    with open(partial, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(partial, path)


class NonFiniteLossError(FloatingPointError):
    """Training met a loss that is NaN or infinite."""


@HOOKS.register_module()
class StopOnNonFiniteLossHook(Hook):
    """Stops training at the first non-finite loss, before a checkpoint can
    be saved after it, with an error that names the iteration and the
    losses.

    A NaN loss poisons the weights at the optimizer step that follows it;
    training on would only save the damage over the last good checkpoint.
    Under :class:`~mmengine.optim.AmpOptimWrapper` the loss scaler skips
    such a step instead, and a few skipped overflows are normal, so there
    the stop comes at ``max_skipped_in_a_row + 1`` non-finite losses in a
    row.

    The losses are read from the message hub, where mmengine's
    ``RuntimeInfoHook`` has put them as Python floats: the check adds no op
    and no device synchronisation to a step. It runs after the logger and
    before :class:`CheckpointHook` (priority ``LOW``).

    Args:
        max_skipped_in_a_row (int): Under AMP, the non-finite losses in a
            row that the loss scaler may skip. Defaults to 4.
    """
    priority = 'LOW'

    def __init__(self, max_skipped_in_a_row=4):
        if max_skipped_in_a_row < 0:
            raise ValueError(f'max_skipped_in_a_row must be at least 0, not '
                             f'{max_skipped_in_a_row}')
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self._in_a_row = 0

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        logged = runner.message_hub.log_scalars
        losses = {
            key: (logged[f'train/{key}'].current()
                  if f'train/{key}' in logged else float(value))
            for key, value in (outputs or {}).items() if 'loss' in key
        }
        non_finite = {
            key: value
            for key, value in losses.items() if not math.isfinite(value)
        }
        if not non_finite:
            self._in_a_row = 0
            return
        self._in_a_row += 1
        amp = isinstance(runner.optim_wrapper, AmpOptimWrapper)
        where = f'iteration {runner.iter + 1} (epoch {runner.epoch + 1}' + (
            f', {self._in_a_row} in a row under AMP)' if amp else ')')
        if amp and self._in_a_row <= self.max_skipped_in_a_row:
            runner.logger.warning(
                f'non-finite loss at {where}, a step that the loss scaler '
                f'skips: {_named(non_finite)}')
            return
        last = _last_checkpoint(runner)
        message = (
            f'non-finite loss at {where}: {_named(non_finite)}. Training '
            f'stopped, with nothing saved after it; the last checkpoint is '
            f'{last or "none (none was saved)"}. Look for a learning rate '
            f'too high for the batch size, annotations with degenerate '
            f'boxes, or weights that hold NaN (load_from, init_cfg).')
        runner.logger.error(message)  # into the run's log too
        raise NonFiniteLossError(message)


def _last_checkpoint(runner):
    """The last checkpoint saved, as the message hub names it; in this
    run's checkpoint directory when it is there and the name points
    elsewhere, as after a resume of a work dir that was moved or copied."""
    last = runner.message_hub.get_info('last_ckpt')
    hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)),
                None)
    if not last or hook is None or '://' in str(hook.out_dir):
        return last
    here = osp.join(hook.out_dir, osp.basename(last))
    return here if osp.isfile(here) else last


def _named(values):
    return ', '.join(f'{key}={value}' for key, value in values.items())


@HOOKS.register_module()
class RandomStatesHook(Hook):
    """Saves the global random states into each checkpoint and restores
    them on resume, so that the resumed run draws the random numbers that
    the interrupted one would have drawn.

    With what mmengine's Runner restores itself (model, optimizer, loss
    scaler, schedulers, message hub, the epoch or iteration) and the seed
    that :class:`StrictCheckpointRunner` takes from the checkpoint before it
    builds the samplers and the data workers' ``worker_init_fn``, a resumed
    run on the CPU is the uninterrupted run, loss for loss, to the bit.

    - Each checkpoint gets ``meta['random_states']`` (see
      :mod:`mmcvt.engine.random_states`) on the rank that writes it.
    - A resumed run (one whose loop starts past its first iteration once
      the checkpoint is loaded) restores them right before it loads its
      first batch: at the start of its first epoch; in an
      ``IterBasedTrainLoop``, after whatever the loop does to put the
      sampler back where it was, which on upstream mmengine is a replay of
      the batches trained before that runs the data pipeline and so draws
      random numbers (see
      :func:`mmcvt.compat.call_before_first_batch_after_resume`).
    - The training data loader gets a torch generator of its own, seeded
      with the run's seed, when it has none: the iterators it makes from
      ``before_train`` on draw their workers' base seed from it, not from
      the global random state, which a resumed run may have restored by
      then (an ``EpochBasedTrainLoop`` makes one each epoch;
      onedl-mmengine's ``IterBasedTrainLoop`` makes its one lazily, after
      the restore). Upstream mmengine's ``IterBasedTrainLoop`` makes its
      iterator when it is built, before ``before_train``: that one draws
      from the global random state, at the same point of the interrupted
      run and of the resumed one, which the same seed set alike.
    - Validation during training hands training the random states it found,
      so that nothing between a checkpoint and the next batch draws from
      them, and validating more or less often changes nothing in training.

    Not exact, and logged when a resume meets them: data workers that
    outlive an epoch (``persistent_workers=True``) in an
    ``EpochBasedTrainLoop``, whose random states live in the worker
    processes, which mmengine seeds once, when they start; a checkpoint
    saved in the middle of an epoch of an ``EpochBasedTrainLoop``, which
    mmengine resumes from the start of that epoch; and the ranks but 0 of a
    distributed run, whose states no checkpoint holds.
    """
    # last at the start of an epoch, after DistSamplerSeedHook
    priority = 'LOWEST'

    def __init__(self):
        self._loaded = None  # the states of the checkpoint loaded
        self._resumed = None  # the states to restore
        self._before_val = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['meta']['random_states'] = capture_random_states()

    def after_load_checkpoint(self, runner, checkpoint):
        # a load_from or a resume: before_train tells them apart
        self._loaded = checkpoint.get('meta', {}).get('random_states', False)

    def before_train(self, runner):
        loader = runner.train_dataloader
        if loader.generator is None:
            loader.generator = torch.Generator().manual_seed(runner.seed)
        loaded, self._loaded = self._loaded, None
        if loaded is None or (runner.iter == 0 and runner.epoch == 0):
            return  # no checkpoint, or one loaded as weights (load_from)
        if not is_main_process():
            return
        self._resumed = loaded or None
        if self._resumed is None:
            runner.logger.warning(
                'the checkpoint resumed from holds no random states (saved '
                'without mmcvt\'s RandomStatesHook): the resumed run draws '
                'other random numbers than an uninterrupted one would')
        if runner.world_size > 1:
            runner.logger.warning(
                'distributed: the checkpoint holds the random states of rank '
                '0 alone, which rank 0 restores; the other ranks go on with '
                'their states as seeded')
        if (isinstance(runner.train_loop, EpochBasedTrainLoop)
                and loader.num_workers > 0 and loader.persistent_workers):
            runner.logger.warning(
                'train_dataloader.persistent_workers=True: its workers start '
                'afresh, so the random numbers of their transforms differ '
                'from those of an uninterrupted run; persistent_workers='
                'False makes a resume exact')
        if getattr(runner.train_loop, 'fast_forward_on_resume', False):
            runner.logger.warning(
                'train_cfg.fast_forward_on_resume=True: the resumed run '
                'trains on the batches from the start of the data, not on '
                'those an uninterrupted run would have')

    def before_train_epoch(self, runner):
        states, self._resumed = self._resumed, None
        if states is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            call_before_first_batch_after_resume(
                loop, lambda: restore_random_states(states))
            return
        restore_random_states(states)
        if (isinstance(loop, EpochBasedTrainLoop)
                and loop.iter != loop.epoch * len(loop.dataloader)):
            runner.logger.warning(
                f'resumed at iteration {loop.iter}, in the middle of epoch '
                f'{loop.epoch + 1}: EpochBasedTrainLoop trains that epoch '
                f'from its first batch, so the run differs from an '
                f'uninterrupted one')

    def before_val(self, runner):
        self._before_val = capture_random_states()

    def after_val(self, runner):
        restore_random_states(self._before_val)
