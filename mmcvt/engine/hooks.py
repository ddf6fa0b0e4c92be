"""The hooks of the tools' runs: a checkpoint hook that keeps a complete
checkpoint at every moment, a stop at the first non-finite loss, and the
random states that make a resumed run continue exactly."""
import math
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from .random_states import capture_random_states, restore_random_states


# In mmengine's root registry, whose children MMDetection's and
# MMSegmentation's registries are: any default_scope finds it.
@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`CheckpointHook`, saving in an order that a kill
    at any moment cannot turn into the loss of every checkpoint.

    mmengine's hook first deletes the checkpoints beyond ``max_keep_ckpts``,
    then writes the new one in place, then points ``last_checkpoint`` at it:
    killed while writing, with ``max_keep_ckpts=1``, it leaves a truncated
    file and a ``last_checkpoint`` naming a deleted one. This hook

    1. writes the new checkpoint under a temporary name beside its own
       (``epoch_2.pth.tmp``), then renames it into place, so that a file
       under a checkpoint's name is always complete (local directories; on
       other storage backends it writes in place, as mmengine does);
    2. then points ``last_checkpoint`` at it, by the same rename;
    3. and only then deletes the checkpoints beyond ``max_keep_ckpts``.

    Killed anywhere, ``--resume`` finds the previous checkpoint or the new
    one, both complete. Its arguments are those of :class:`CheckpointHook`.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        # mmengine's method of the same name, in the order above; the
        # bookkeeping (keep_ckpt_ids and last_ckpt in the message hub, saved
        # inside the checkpoint) is mmengine's.
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            # the same step twice (a best checkpoint saved at a regular
            # save's step) keeps one entry
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        atomic = isinstance(self.file_backend, LocalBackend)
        runner.save_checkpoint(
            self.out_dir,
            _partial(filename) if atomic else filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        # Runner.save_checkpoint writes on the main process only
        if not is_main_process():
            return
        if atomic:
            _publish(_partial(self.last_ckpt), self.last_ckpt)
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        with open(_partial(pointer), 'w') as f:
            f.write(self.last_ckpt)
        _publish(_partial(pointer), pointer)

        if outdated is not None:
            path = self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                # checkpoints saved by deepspeed are directories
                self.file_backend.rmtree(path)


def _partial(path):
    """Where a file is written before it is renamed to ``path``."""
    return path + '.tmp'


def _publish(partial, path):
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
        last = runner.message_hub.get_info('last_ckpt')
        message = (
            f'non-finite loss at {where}: {_named(non_finite)}. Training '
            f'stopped, with nothing saved after it; the last checkpoint is '
            f'{last or "none (none was saved)"}. Look for a learning rate '
            f'too high for the batch size, annotations with degenerate '
            f'boxes, or weights that hold NaN (load_from, init_cfg).')
        runner.logger.error(message)  # into the run's log too
        raise NonFiniteLossError(message)


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
    - A resumed run restores them right before it loads its first batch:
      at the start of its first epoch; in an ``IterBasedTrainLoop``, after
      the loop's replay of the batches trained before (mmengine's way to
      put ``InfiniteSampler`` back where it was), which runs the data
      pipeline and so draws random numbers.
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
        self._resumed = None  # the states to restore
        self._before_val = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['meta']['random_states'] = capture_random_states()

    def after_load_checkpoint(self, runner, checkpoint):
        # runner._resume, as mmengine's EMAHook tells a resume from a load
        if not runner._resume or not is_main_process():
            return
        self._resumed = checkpoint['meta'].get('random_states')
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
        loader = runner.train_dataloader
        if (isinstance(runner.train_loop, EpochBasedTrainLoop)
                and loader.num_workers > 0 and loader.persistent_workers):
            runner.logger.warning(
                'train_dataloader.persistent_workers=True: its workers start '
                'afresh, so the random numbers of their transforms differ '
                'from those of an uninterrupted run; persistent_workers='
                'False makes a resume exact')

    def before_train_epoch(self, runner):
        states, self._resumed = self._resumed, None
        if states is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            loop.dataloader_iterator = _RestoreBeforeBatch(
                loop.dataloader_iterator, loop.iter, states)
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


class _RestoreBeforeBatch:
    """An IterBasedTrainLoop's data iterator that restores random states
    right before it loads batch ``skipped + 1``: the loop's replay of the
    ``skipped`` batches trained before a resume comes after every hook."""

    def __init__(self, iterator, skipped, states):
        self._iterator, self._skipped, self._states = (iterator, skipped,
                                                       states)

    def __iter__(self):
        return self

    def __next__(self):
        if self._skipped == 0 and self._states is not None:
            restore_random_states(self._states)
            self._states = None
        self._skipped -= 1
        return next(self._iterator)
