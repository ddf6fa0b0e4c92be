"""The Runner of tools/train.py and tools/test.py: mmengine's, strict about
the checkpoints it loads, careful about the one it resumes from, and exact
in resuming it."""
import glob
import os.path as osp
import re
from contextlib import contextmanager

from mmengine.hooks import CheckpointHook
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner, find_latest_checkpoint

from ..fileio import checkpoint_file_problem
from .hooks import RandomStatesHook, StopOnNonFiniteLossHook

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
    """mmengine's :class:`~mmengine.runner.Runner`, with these changes.

    - Checkpoints load strictly: ``load_from``, the checkpoint given to
      tools/test.py and the one resumed from. A checkpoint that does not fit
      the model is an error that names the file and the missing, unexpected
      and misshapen keys, where mmengine's Runner loads what fits and logs a
      warning. Each module's ``_load_from_state_dict`` still runs, so a
      module that converts its older checkpoints on loading accepts them.
    - ``resume=True`` without a checkpoint resumes from the work dir's
      checkpoints alone: ``last_checkpoint`` names one by an absolute path,
      which after the work dir was moved or copied points at, or into, the
      old one; it is read as the file of that name in the work dir. When
      that one is missing or cut short, training resumes from the newest
      complete checkpoint there, and the log says so; with none, it starts
      afresh, as mmengine's does. A checkpoint named by ``load_from``
      (``--resume CHECKPOINT``) may be anywhere; one cut short is an error
      that names the newest complete one beside it.
    - A resumed run continues the interrupted one exactly: it takes the
      checkpoint's random seed before the samplers and the data workers'
      seeds are made from it, and :class:`RandomStatesHook` restores the
      random states.
    - Its hooks include :class:`StopOnNonFiniteLossHook` and
      :class:`RandomStatesHook`, with their defaults unless the config's
      ``custom_hooks`` name them.

    Configs whose ``runner_type`` names it get it from mmengine's tools too.
    """

    def register_hooks(self, default_hooks=None, custom_hooks=None):
        super().register_hooks(default_hooks, custom_hooks)
        for hook_type in (StopOnNonFiniteLossHook, RandomStatesHook):
            if not any(isinstance(hook, hook_type) for hook in self.hooks):
                self.register_hook(hook_type())

    def load_checkpoint(self,
                        filename,
                        map_location='cpu',
                        strict=True,
                        revise_keys=[(r'^module.', '')]):
        """:meth:`Runner.load_checkpoint`, strict by default."""
        with explain_checkpoint_mismatch(filename):
            return super().load_checkpoint(filename, map_location, strict,
                                           revise_keys)

    def train(self):
        if self._resume and not self._has_loaded:
            self._load_from = self._checkpoint_to_resume(self._load_from)
            if self._load_from is None:
                self.logger.warning(
                    f'no checkpoint in {self._checkpoint_dir()} to resume '
                    f'from: training from the start')
                self._resume = False
            else:
                self._take_random_seed_of(self._load_from)
        return super().train()

    def _take_random_seed_of(self, checkpoint):
        """Sets the seed to that of the run resumed, as Runner.resume does,
        but before the train loop is built: it builds the sampler and the
        data workers' ``worker_init_fn`` from the seed, which without a
        seed in the config is a new random one in each run."""
        seed = CheckpointLoader.load_checkpoint(
            checkpoint, map_location='cpu').get('meta', {}).get('seed')
        current = self._randomness_cfg.get('seed')
        if seed is None or seed == current:
            return
        if current is not None:
            self.logger.warning(
                f'randomness.seed={current} in the config; the run resumed '
                f'from {checkpoint} had seed {seed}, which the resumed run '
                f'continues with')
        self._randomness_cfg.update(seed=seed)
        self.set_randomness(**self._randomness_cfg)

    def _checkpoint_dir(self):
        """Where this run's CheckpointHook saves: the work dir, or its
        ``out_dir`` joined with the work dir's name, as the hook joins
        them."""
        hook = next((h for h in self.hooks if isinstance(h, CheckpointHook)),
                    None)
        out_dir = getattr(hook, 'out_dir', None)
        if not out_dir or out_dir == self.work_dir:
            return self.work_dir
        return osp.join(out_dir, osp.basename(self.work_dir.rstrip(osp.sep)))

    def _checkpoint_to_resume(self, named):
        if named:
            latest = named
        else:
            latest = self._latest_in_checkpoint_dir()
            if latest is None:
                return self._newest_without_last_checkpoint()
        if '://' in latest:  # remote files are not checked
            return latest
        problem = (
            checkpoint_file_problem(latest)
            if osp.isfile(latest) else 'it does not exist')
        if problem is None:
            return latest
        previous = _newest_complete_checkpoint(osp.dirname(latest), latest)
        if named or previous is None:
            raise RuntimeError(f'cannot resume from {latest}: {problem}. ' + (
                f'The newest complete checkpoint beside it is {previous}: '
                f'resume from it with --resume {previous}' if previous else
                'There is no complete checkpoint beside it to resume from; '
                'train without --resume to start afresh'))
        self.logger.warning(
            f'The latest checkpoint, {latest}, cannot be resumed from: '
            f'{problem}. Resuming from the newest complete checkpoint '
            f'before it instead: {previous}')
        return previous

    def _latest_in_checkpoint_dir(self):
        """The checkpoint that ``last_checkpoint`` names, taken from this
        run's checkpoint dir whatever directory it names; None without a
        ``last_checkpoint``."""
        pointed = find_latest_checkpoint(self.work_dir)
        directory = self._checkpoint_dir()
        if pointed is None or '://' in pointed or '://' in directory:
            return pointed
        inside = osp.join(directory, osp.basename(pointed))
        if osp.realpath(pointed) != osp.realpath(inside):
            self.logger.warning(
                f'last_checkpoint names {pointed}, outside {directory} (was '
                f'the work dir moved or copied?): resuming from the '
                f'checkpoint of that name in {directory} instead, or from '
                f'the newest complete one there. To resume from {pointed}, '
                f'name it: --resume {pointed}')
        return inside

    def _newest_without_last_checkpoint(self):
        directory = self._checkpoint_dir()
        if '://' in directory:
            return None
        newest = _newest_complete_checkpoint(directory, None)
        if newest is not None:
            self.logger.warning(
                f'no last_checkpoint in {self.work_dir}: resuming from the '
                f'newest complete checkpoint in {directory}, {newest}')
        return newest


def _step(path):
    """The epoch or iteration in a checkpoint's name (epoch_12.pth: 12)."""
    found = re.search(r'(\d+)\.pth$', osp.basename(path))
    return int(found.group(1)) if found else -1


def _newest_complete_checkpoint(directory, broken):
    """The newest checkpoint in ``directory`` to resume from, other than
    ``broken``: the highest epoch or iteration in its name, of equal ones
    the last written (a copied directory's times are those of the copy).
    best_* checkpoints hold no optimizer state."""
    candidates = [
        path for path in glob.glob(osp.join(directory, '*.pth'))
        if path != broken and not osp.basename(path).startswith('best_')
    ]
    for path in sorted(
            candidates, key=lambda p: (_step(p), osp.getmtime(p)),
            reverse=True):
        if checkpoint_file_problem(path) is None:
            return path
    return None
