"""A checkpoint hook that keeps a complete checkpoint at every moment."""
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS


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
