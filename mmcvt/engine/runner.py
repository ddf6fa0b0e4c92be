"""The Runner of tools/train.py and tools/test.py: mmengine's, strict about
the checkpoints it loads, careful about the one it resumes from, and exact
in resuming it."""
import copy
import os
import os.path as osp
import re
from contextlib import contextmanager

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint

from ..compat import is_strict_load_mismatch
from ..fileio import (checkpoint_file_problem, install_checkpoint_loaders,
                      kind_mismatches, name_keys)
from ..utils.arguments import UsageError
from .hooks import (RandomStatesHook, StopOnNonFiniteLossHook,
                    checkpoint_name_template, checkpoint_step_parser,
                    partial_path, publish)

# mmengine's Runner.load_checkpoint and load_checkpoint strip DDP's prefix
REVISE_KEYS = [(r'^module\.', '')]


class CheckpointMismatch(UsageError, RuntimeError):
    """A checkpoint whose keys or shapes are not the model's."""


class WeightKindMismatch(UsageError, TypeError):
    """A checkpoint whose tensors are other kinds of number than the
    model's."""


class CannotResume(UsageError, RuntimeError):
    """A checkpoint to resume from that is absent or cut short."""


@contextmanager
def explain_checkpoint_mismatch(filename):
    """Names the file, and what to do, in the error of a strict load
    (``load_checkpoint(..., strict=True)``) that found keys missing,
    unexpected or of another shape; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as error:
        if not is_strict_load_mismatch(error):
            raise
        raise CheckpointMismatch(
            f'checkpoint {filename} does not fit the model: {error}\n'
            f'Check that it was saved from a model of this config. To start '
            f'training from a checkpoint that fits only in part (a head with '
            f'another number of classes, say), give it as model.init_cfg='
            f"dict(type='Pretrained', checkpoint=...) instead of load_from: "
            f'that loads what fits and logs the rest.') from None


def check_weight_kinds(model, checkpoint, filename, revise_keys=REVISE_KEYS):
    """Raises a TypeError naming the tensors of ``checkpoint`` that
    ``model`` holds as another kind of number (see
    :func:`~mmcvt.fileio.kind_mismatches`): a strict load takes them
    without a word, and the model then predicts nonsense."""
    # a wrapper's keys (DDP's) start with module., the checkpoint's not
    if is_model_wrapper(model):
        model = model.module
    state_dict = checkpoint.get('state_dict', checkpoint)
    for pattern, replacement in revise_keys:
        state_dict = {
            re.sub(pattern, replacement, key): value
            for key, value in state_dict.items()
        }
    mismatches = kind_mismatches(state_dict, model.state_dict())
    if mismatches:
        raise WeightKindMismatch(
            f'checkpoint {filename} holds integers where the model has '
            f'floating point numbers, or the reverse: '
            f'{name_keys(mismatches)}. Loaded, they would be whole numbers '
            f'(or rounded): check that the file holds this model\'s weights, '
            f'and convert them with tools/model_converters/cvt2mmcvt.py if '
            f'they are a CvT\'s in another format.')


def load_checkpoint_strictly(model, filename, map_location='cpu'):
    """mmengine's ``load_checkpoint(model, filename, strict=True)``, whose
    errors name the file and what to do: keys missing, unexpected or of
    another shape, and tensors of another kind of number."""
    with explain_checkpoint_mismatch(filename):
        checkpoint = load_checkpoint(
            model, filename, map_location=map_location, strict=True)
    check_weight_kinds(model, checkpoint, filename)
    return checkpoint


@RUNNERS.register_module()
class StrictCheckpointRunner(Runner):
    """mmengine's :class:`~mmengine.runner.Runner`, with these changes.

    - Checkpoints are read with mmcvt's weights-only loaders
      (:func:`~mmcvt.fileio.install_checkpoint_loaders`).
    - Checkpoints load strictly: ``load_from``, the checkpoint given to
      tools/test.py and the one resumed from. A checkpoint that does not fit
      the model is an error that names the file and the missing, unexpected
      and misshapen keys, and those holding another kind of number, where
      mmengine's Runner loads what fits and logs a warning. Each module's
      ``_load_from_state_dict`` still runs, so a module that converts its
      older checkpoints on loading accepts them.
    - Checkpoints are written under a temporary name and renamed into place
      (local directories), so that a file under a checkpoint's name is
      always complete.
    - ``resume=True`` without a checkpoint resumes from the work dir's
      checkpoints alone: ``last_checkpoint`` names one by an absolute path,
      which after the work dir was moved or copied points at, or into, the
      old one; it is read as the file of that name in the work dir. When
      that one is missing or cut short, training resumes from the newest
      complete checkpoint there, and the log says so; with none, it starts
      afresh, as mmengine's does. The newest is that of the highest epoch
      or iteration in the file name template of the config's
      ``CheckpointHook`` (``filename_tmpl``), the checkpoints that
      :class:`SafeCheckpointHook` deletes by. A checkpoint named by
      ``load_from`` (``--resume CHECKPOINT``) may be anywhere; one cut short
      is an error that names the newest complete one beside it.
    - A resumed run continues the interrupted one exactly: it takes the
      checkpoint's random seed before the samplers and the data workers'
      seeds are made from it, and :class:`RandomStatesHook` restores the
      random states.
    - Its hooks include :class:`StopOnNonFiniteLossHook` and
      :class:`RandomStatesHook`, with their defaults unless the config's
      ``custom_hooks`` name them.

    The checkpoint to resume from and its seed are settled in
    :meth:`from_cfg`, in the config, before mmengine's Runner is built from
    it. Configs whose ``runner_type`` names it get it from mmengine's tools
    too: they build it with :meth:`from_cfg`.
    """

    @classmethod
    def from_cfg(cls, cfg):
        install_checkpoint_loaders()
        cfg = copy.deepcopy(cfg)
        notes = []
        if cfg.get('resume', False):
            _settle_resume(cfg, notes)
        runner = super().from_cfg(cfg)
        for note in notes:
            runner.logger.warning(note)
        return runner

    def register_hooks(self, default_hooks=None, custom_hooks=None):
        super().register_hooks(default_hooks, custom_hooks)
        for hook_type in (StopOnNonFiniteLossHook, RandomStatesHook):
            if not any(isinstance(hook, hook_type) for hook in self.hooks):
                self.register_hook(hook_type())

    def load_checkpoint(self,
                        filename,
                        map_location='cpu',
                        strict=True,
                        revise_keys=REVISE_KEYS):
        """:meth:`Runner.load_checkpoint`, strict by default, refusing
        tensors of another kind of number."""
        with explain_checkpoint_mismatch(filename):
            checkpoint = super().load_checkpoint(filename, map_location,
                                                 strict, revise_keys)
        check_weight_kinds(self.model, checkpoint, filename, revise_keys)
        return checkpoint

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        """:meth:`Runner.save_checkpoint`, writing a local file under a
        temporary name first and renaming it into place: killed while
        writing, it leaves no file under the checkpoint's name."""
        backend = get_file_backend(
            out_dir, backend_args=kwargs.get('backend_args'))
        if not isinstance(backend, LocalBackend):
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        super().save_checkpoint(out_dir, partial_path(filename), *args,
                                **kwargs)
        # Runner.save_checkpoint writes on the main process only and returns
        # at once on the others, which would find the main process's file
        # half written in a directory they share
        if is_main_process():
            path = osp.join(out_dir, filename)
            publish(partial_path(path), path)


def _settle_resume(cfg, notes):
    """Sets ``cfg.load_from`` to the checkpoint to resume from, and
    ``cfg.randomness.seed`` to its seed, or ``cfg.resume`` to False when
    there is none; what the log should say goes into ``notes``."""
    directory = checkpoint_dir(cfg)
    # the checkpoints of the hook's file name template, as it deletes them
    step_of = checkpoint_step_parser(
        checkpoint_name_template(_checkpoint_cfg(cfg)))
    checkpoint = _checkpoint_to_resume(cfg, directory, step_of, notes)
    if checkpoint is None:
        notes.append(f'no checkpoint in {directory} to resume from: '
                     f'training from the start')
        cfg.resume = False
        return
    cfg.load_from = checkpoint
    _take_random_seed_of(cfg, checkpoint, notes)


def _take_random_seed_of(cfg, checkpoint, notes):
    """Sets the seed to that of the run resumed, as Runner.resume does, but
    before the Runner is built: it builds the samplers and the data
    workers' ``worker_init_fn`` from the seed, which without a seed in the
    config is a new random one in each run."""
    seed = CheckpointLoader.load_checkpoint(
        checkpoint, map_location='cpu').get('meta', {}).get('seed')
    current = cfg.get('randomness', {}).get('seed')
    if seed is None or seed == current:
        return
    if current is not None:
        notes.append(f'randomness.seed={current} in the config; the run '
                     f'resumed from {checkpoint} had seed {seed}, which the '
                     f'resumed run continues with')
    cfg.randomness = dict(cfg.get('randomness', {}), seed=seed)


def checkpoint_dir(cfg):
    """Where the CheckpointHook of ``cfg`` saves: the work dir, or its
    ``out_dir`` joined with the work dir's name, as the hook joins them."""
    work_dir = osp.abspath(cfg.work_dir)
    out_dir = _checkpoint_cfg(cfg).get('out_dir')
    if not out_dir or out_dir == work_dir:
        return work_dir
    return osp.join(out_dir, osp.basename(work_dir.rstrip(osp.sep)))


def _checkpoint_cfg(cfg):
    """The config of the CheckpointHook of ``cfg``, {} when it has none."""
    return (cfg.get('default_hooks') or {}).get('checkpoint') or {}


def _checkpoint_to_resume(cfg, directory, step_of, notes):
    named = cfg.get('load_from')
    if named:
        latest = named
    else:
        latest, why_not = _latest_in(cfg, directory, step_of, notes)
        if latest is None:
            return _newest_without_last_checkpoint(cfg, directory, why_not,
                                                   step_of, notes)
    if '://' in latest:  # remote files are not checked
        return latest
    problem = (
        checkpoint_file_problem(latest)
        if osp.isfile(latest) else 'it does not exist')
    if problem is None:
        return latest
    previous = _newest_complete_checkpoint(
        osp.dirname(latest), latest, step_of)
    if named or previous is None:
        raise CannotResume(f'cannot resume from {latest}: {problem}. ' + (
            f'The newest complete checkpoint beside it is {previous}: '
            f'resume from it with --resume {previous}' if previous else
            'There is no complete checkpoint beside it to resume from; '
            'train without --resume to start afresh'))
    notes.append(f'The latest checkpoint, {latest}, cannot be resumed from: '
                 f'{problem}. Resuming from the newest complete checkpoint '
                 f'before it instead: {previous}')
    return previous


def _latest_in(cfg, directory, step_of, notes):
    """The checkpoint that ``last_checkpoint`` names, taken from this
    run's checkpoint dir whatever directory it names, and None; None and
    None without a ``last_checkpoint``; None and what is wrong with a
    ``last_checkpoint`` that names no checkpoint."""
    pointer = osp.join(osp.abspath(cfg.work_dir), 'last_checkpoint')
    if not osp.isfile(pointer):
        return None, None
    # mmengine's CheckpointHook rewrites it in place: a run stopped while it
    # does leaves it empty or cut short, a machine that crashes meanwhile
    # zero bytes in it, on some file systems
    try:
        with open(pointer, encoding='utf-8') as f:
            pointed = f.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f'{pointer} cannot be read ({error})'
    if not pointed:
        return None, (f'{pointer} is empty, as a run stopped while '
                      f'writing it leaves it')
    if '://' in pointed or '://' in directory:
        return pointed, None
    inside = osp.join(directory, osp.basename(pointed))
    if not pointed.isprintable() or (step_of(osp.basename(pointed)) is None
                                     and not osp.exists(pointed)
                                     and not osp.exists(inside)):
        return None, (f'{pointer} is cut short or garbled: it reads '
                      f'{pointed!r}, which names no checkpoint')
    if osp.realpath(pointed) != osp.realpath(inside):
        notes.append(
            f'last_checkpoint names {pointed}, outside {directory} (was '
            f'the work dir moved or copied?): resuming from the '
            f'checkpoint of that name in {directory} instead, or from '
            f'the newest complete one there. To resume from {pointed}, '
            f'name it: --resume {pointed}')
    return inside, None


def _newest_without_last_checkpoint(cfg, directory, why_not, step_of, notes):
    """The newest complete checkpoint in ``directory``, when there is no
    ``last_checkpoint`` (``why_not`` None) or what is wrong with it is
    ``why_not``."""
    newest = None
    if '://' not in directory:
        newest = _newest_complete_checkpoint(directory, None, step_of)
    if newest is not None:
        why_not = why_not or (
            f'no last_checkpoint in {osp.abspath(cfg.work_dir)}')
        notes.append(f'{why_not}: resuming from the newest complete '
                     f'checkpoint in {directory}, {newest}')
    elif why_not is not None:
        notes.append(why_not)
    return newest


def _newest_complete_checkpoint(directory, broken, step_of):
    """The newest checkpoint in ``directory`` to resume from, other than
    ``broken``: of the files whose names ``step_of`` reads a step from
    (which best_* checkpoints, holding no optimizer state, are not), the
    highest step, of equal ones the last written."""
    directory = directory or os.curdir
    if not osp.isdir(directory):
        return None
    steps = {}
    for name in os.listdir(directory):
        path = osp.join(directory, name)
        if path != broken and step_of(name) is not None and osp.isfile(path):
            steps[path] = step_of(name)
    for path in sorted(
            steps, key=lambda p: (steps[p], osp.getmtime(p)), reverse=True):
        if checkpoint_file_problem(path) is None:
            return path
    return None
