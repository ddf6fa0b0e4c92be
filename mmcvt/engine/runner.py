"""The Runner of tools/train.py and tools/test.py: mmengine's, strict about
the checkpoints it loads and careful about the one it resumes from."""
import glob
import os.path as osp
from contextlib import contextmanager

from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from ..fileio import checkpoint_file_problem

# how mmengine's load_state_dict(strict=True) starts its error
_MISMATCH = 'The model and loaded state dict do not match exactly'


@contextmanager
def explain_checkpoint_mismatch(filename):
    """Names the file, and what to do, in the error of a strict load
    (``load_checkpoint(..., strict=True)``) that found keys missing,
    unexpected or of another shape; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as error:
        if not str(error).startswith(_MISMATCH):
            raise
        raise RuntimeError(
            f'checkpoint {filename} does not fit the model: {error}\n'
            f'Check that it was saved from a model of this config. To start '
            f'training from a checkpoint that fits only in part (a head with '
            f'another number of classes, say), give it as model.init_cfg='
            f"dict(type='Pretrained', checkpoint=...) instead of load_from: "
            f'that loads what fits and logs the rest.') from None


@RUNNERS.register_module()
class StrictCheckpointRunner(Runner):
    """mmengine's :class:`~mmengine.runner.Runner`, with two changes.

    - Checkpoints load strictly: ``load_from``, the checkpoint given to
      tools/test.py and the one resumed from. A checkpoint that does not fit
      the model is an error that names the file and the missing, unexpected
      and misshapen keys, where mmengine's Runner loads what fits and logs a
      warning. Each module's ``_load_from_state_dict`` still runs, so a
      module that converts its older checkpoints on loading accepts them.
    - Resuming checks the checkpoint first. When the latest one
      (``last_checkpoint``) is missing or cut short, training resumes from
      the newest complete checkpoint beside it, and the log says so; a
      checkpoint named on the command line that is cut short is an error
      that names it and the newest complete one to resume from instead.

    Configs whose ``runner_type`` names it get it from mmengine's tools too.
    """

    def load_checkpoint(self,
                        filename,
                        map_location='cpu',
                        strict=True,
                        revise_keys=[(r'^module.', '')]):
        """:meth:`Runner.load_checkpoint`, strict by default."""
        with explain_checkpoint_mismatch(filename):
            return super().load_checkpoint(filename, map_location, strict,
                                           revise_keys)

    def load_or_resume(self):
        if self._resume and not self._has_loaded:
            # None still means mmengine's "latest, if any"
            self._load_from = self._checkpoint_to_resume(self._load_from)
        super().load_or_resume()

    def _checkpoint_to_resume(self, named):
        latest = named or find_latest_checkpoint(self.work_dir)
        if latest is None or '://' in latest:  # remote files are not checked
            return latest
        problem = (checkpoint_file_problem(latest)
                   if osp.isfile(latest) else 'it does not exist')
        if problem is None:
            return latest
        previous = _newest_complete_checkpoint(osp.dirname(latest), latest)
        if named or previous is None:
            raise RuntimeError(
                f'cannot resume from {latest}: {problem}. ' +
                (f'The newest complete checkpoint beside it is {previous}: '
                 f'resume from it with --resume {previous}' if previous else
                 'There is no complete checkpoint beside it to resume from; '
                 'train without --resume to start afresh'))
        self.logger.warning(
            f'The latest checkpoint, {latest}, cannot be resumed from: '
            f'{problem}. Resuming from the newest complete checkpoint '
            f'before it instead: {previous}')
        return previous


def _newest_complete_checkpoint(directory, broken):
    """The newest checkpoint in ``directory`` to resume from, other than
    ``broken``: best_* checkpoints hold no optimizer state."""
    candidates = [
        path for path in glob.glob(osp.join(directory, '*.pth'))
        if path != broken and not osp.basename(path).startswith('best_')
    ]
    for path in sorted(candidates, key=osp.getmtime, reverse=True):
        if checkpoint_file_problem(path) is None:
            return path
    return None
