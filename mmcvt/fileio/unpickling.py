"""Reading torch files without running code from them.

Since torch 2.6, ``torch.load`` reads with ``weights_only=True``: an
unpickler that builds tensors, plain containers and a list of allowed
classes, and refuses every other object a pickle names. The checkpoints of
mmengine 0.10's Runner hold a few more: the message hub's ``HistoryBuffer``
logs (numpy arrays and scalars inside) with a dict of the class's
statistics methods, which pickle names as ``getattr(HistoryBuffer,
'mean')``. :func:`load_weights_only` reads them with torch's own unpickler,
allowing just those (:data:`RUNNER_STATE_GLOBALS`). Every entry is a class,
or a stand-in, registered under the name of the function that the pickle
calls, that checks it is called as mmengine's pickles call it and refuses
anything else: ``getattr`` for another attribute, or a ``HistoryBuffer``
whose state is not what mmengine writes. No entry is a callable that
reaches arbitrary attributes or functions.

A file that needs anything more is refused, unless the user has named it
as trusted in ``MMCVT_TRUSTED_CHECKPOINTS`` (:data:`TRUST_VARIABLE`): then,
and only then, it is unpickled in full, and the log says so.
"""
import contextlib
import contextvars
import hashlib
import io
import os
import pickle
import re
import threading

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log

from ..compat import history_buffer_pickled_state
from ..utils.arguments import UsageError

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray


class UntrustedCheckpoint(UsageError, pickle.UnpicklingError):
    """A checkpoint that a weights-only read refuses and no digest in
    ``MMCVT_TRUSTED_CHECKPOINTS`` allows."""


# The one opt-in to a full unpickle: SHA-256 digests of files the user
# trusts, separated by commas or spaces. A digest, not a path: it names the
# contents that were vetted, whatever the file is called and wherever it is.
TRUST_VARIABLE = 'MMCVT_TRUSTED_CHECKPOINTS'

# HistoryBuffer's own statistics methods, which mmengine registers on every
# instance (HistoryBuffer._set_default_statistics) and pickles by name
STATISTICS_METHODS = ('min', 'max', 'current', 'mean')
# what HistoryBuffer.__getstate__ writes, with the type of each value
_HISTORY_BUFFER_STATE = history_buffer_pickled_state()

# What a stand-in refused while torch.load ran, for the error message: the
# stand-ins raise inside torch's unpickler, which rewrites their error.
_refusals = contextvars.ContextVar('refusals')


def _refuse(what):
    _refusals.get([]).append(what)
    raise pickle.UnpicklingError(what)


def _described(obj):
    """A name for an object in an error message, without calling its
    ``__repr__``."""
    if isinstance(obj, type):
        return f'class {obj.__module__}.{obj.__qualname__}'
    return f'a {type(obj).__module__}.{type(obj).__qualname__} object'


def _statistics_method(owner, name):
    """``getattr`` as mmengine's checkpoints call it: for one of
    HistoryBuffer's statistics methods, and nothing else."""
    # the pickle's HistoryBuffer is the stand-in below
    if owner is not _CheckedHistoryBuffer or name not in STATISTICS_METHODS:
        _refuse(f'getattr({_described(owner)}, {name!r}), where mmengine '
                f'only ever writes getattr(HistoryBuffer, name) for name in '
                f'{list(STATISTICS_METHODS)}')
    return getattr(HistoryBuffer, name)


def _empty_array(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as an array's pickle calls it: for the empty
    ``ndarray`` that the array's state then fills in."""
    if subtype is not np.ndarray or shape != (0, ) or dtype != b'b':
        _refuse(f'numpy _reconstruct({_described(subtype)}, {shape!r}, '
                f'{dtype!r}), where a pickled ndarray calls it with '
                f'(numpy.ndarray, (0,), b"b")')
    return multiarray._reconstruct(subtype, shape, dtype)


def _numpy_scalar(dtype, data):
    """numpy's ``scalar`` as a scalar's pickle calls it: a dtype without
    Python objects, and the value's bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(
            data, bytes):
        _refuse(f'numpy scalar({_described(dtype)}, {_described(data)}), '
                f'where a pickled number calls it with a numeric dtype and '
                f'bytes')
    return multiarray.scalar(dtype, data)


class _CheckedHistoryBuffer(HistoryBuffer):
    """What a pickled ``HistoryBuffer`` is built as. Its state is checked
    against what mmengine writes before it is set, and the object then
    becomes a plain ``HistoryBuffer``.

    The check matters beyond this file: ``HistoryBuffer.__setstate__``
    merges the pickled statistics methods into the class's own table, so an
    unchecked state would change every HistoryBuffer in the process.
    """

    def __init__(self, *args, **kwargs):
        # torch's unpickler reaches this only through a call in the pickle
        _refuse('HistoryBuffer(...) called, where mmengine pickles a '
                'HistoryBuffer by its state')

    def __setstate__(self, state):
        _check_history_buffer_state(state)
        self.__class__ = HistoryBuffer
        HistoryBuffer.__setstate__(self, state)


def _check_history_buffer_state(state):
    if not isinstance(state, dict) or set(state) != set(_HISTORY_BUFFER_STATE):
        keys = sorted(map(str, state)) if isinstance(state, dict) else None
        _refuse(f'a HistoryBuffer whose state is {_described(state)} (keys '
                f'{keys}), where mmengine writes a dict of '
                f'{sorted(_HISTORY_BUFFER_STATE)}')
    for key, kind in _HISTORY_BUFFER_STATE.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            _refuse(f'a HistoryBuffer whose {key} is {_described(state[key])}'
                    f', where mmengine writes a {kind.__name__}')
    arrays = [
        key for key, kind in _HISTORY_BUFFER_STATE.items()
        if kind is np.ndarray
    ]
    for key in arrays:
        if state[key].ndim != 1 or state[key].dtype.hasobject:
            _refuse(f'a HistoryBuffer whose {key} is a {state[key].ndim}-D '
                    f'{state[key].dtype} array, where mmengine writes a 1-D '
                    f'numeric one')
    methods = state['statistics_methods']
    expected = {
        name: getattr(HistoryBuffer, name)
        for name in STATISTICS_METHODS
    }
    if methods.keys() != expected.keys() or any(
            methods[name] is not expected[name] for name in expected):
        _refuse('a HistoryBuffer whose statistics_methods are not '
                'HistoryBuffer\'s own '
                f'{list(STATISTICS_METHODS)}')


def _numpy_dtype_classes():
    """numpy's dtype classes (numpy.dtypes.Float32DType and the like), which
    numpy's pickles of dtypes may name."""
    return sorted({type(np.dtype(code))
                   for code in np.typecodes['All']},
                  key=str)


def _under_both_numpy_paths(function, name):
    """numpy 2 moved numpy.core to numpy._core; pickles name either."""
    return [(function, f'numpy.core.multiarray.{name}'),
            (function, f'numpy._core.multiarray.{name}')]


# torch.serialization.safe_globals entries for mmengine 0.10 Runner
# checkpoints, beyond what torch allows by default (which includes the
# Counter of MultiStepLR's milestones)
RUNNER_STATE_GLOBALS = [
    np.ndarray,
    np.dtype,
    *_numpy_dtype_classes(),
    *_under_both_numpy_paths(_empty_array, '_reconstruct'),
    *_under_both_numpy_paths(_numpy_scalar, 'scalar'),
    (_CheckedHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
    (_statistics_method, 'builtins.getattr'),
]

# torch keeps one list of allowed globals for the whole process: one load
# at a time adds and removes ours, or a thread leaving would take them away
# from another that is still reading
_allowing = threading.RLock()


@contextlib.contextmanager
def _runner_state_allowed():
    """torch's ``safe_globals`` with :data:`RUNNER_STATE_GLOBALS`, adding only
    what is not allowed yet, so that leaving takes away nothing that the
    user had allowed before. Other threads' loads see the list while this
    one runs, and each entry stays as restricted there as here."""
    with _allowing:
        allowed = torch.serialization.get_safe_globals()
        added = [
            entry for entry in RUNNER_STATE_GLOBALS if entry not in allowed
        ]
        with torch.serialization.safe_globals(added):
            yield


def _foreign_globals(filename):
    """The globals a zip checkpoint names beyond what torch and
    :data:`RUNNER_STATE_GLOBALS` allow, found without running its pickle; []
    for legacy (non-zip) files, which torch cannot list."""
    with _runner_state_allowed():
        try:
            return sorted(
                torch.serialization.get_unsafe_globals_in_checkpoint(filename))
        except ValueError:
            return []


def _torch_refusal(error):
    """The reason in torch's weights-only error, without its advice (to
    pass ``weights_only=False``), which does not apply here."""
    reason = str(error).split('WeightsUnpickler error:', 1)[-1]
    reason = reason.split('Check the documentation of torch.load')[0]
    return ' '.join(reason.split())


def trusted_digests():
    """The SHA-256 digests that ``MMCVT_TRUSTED_CHECKPOINTS`` names, in
    lower case; each may be written with ``sha256:`` before it. An entry
    that is no digest is logged as such, and trusts nothing."""
    digests = set()
    for entry in re.split(r'[\s,]+', os.environ.get(TRUST_VARIABLE, '')):
        digest = entry.lower().removeprefix('sha256:')
        if re.fullmatch(r'[0-9a-f]{64}', digest):
            digests.add(digest)
        elif entry:
            print_log(
                f'{TRUST_VARIABLE} holds {entry!r}, which is no SHA-256 '
                f'digest (64 hexadecimal digits, with or without "sha256:" '
                f'before them): it trusts no file. sha256sum FILE prints a '
                f'file\'s digest.',
                logger='current',
                level=30)  # logging.WARNING
    return digests


def load_weights_only(filename, map_location=None):
    """``torch.load`` of a local file with torch's weights-only unpickler,
    allowing the state of mmengine Runner checkpoints as well.

    Args:
        filename (str): A torch checkpoint, zip or legacy format.
        map_location: As for :func:`torch.load`.

    Returns:
        The loaded object.

    Raises:
        pickle.UnpicklingError: The file holds other Python objects. It is
            not loaded, unless the user has named its SHA-256 in
            ``MMCVT_TRUSTED_CHECKPOINTS``: the error names the file, what it
            holds and how to opt in.
    """
    token = _refusals.set([])
    try:
        with _runner_state_allowed():
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = _foreign_globals(filename)
        reason = ([f'the globals {foreign}']
                  if foreign else _refusals.get() or [_torch_refusal(error)])
    finally:
        _refusals.reset(token)

    # read once: the bytes loaded are the bytes whose digest was trusted,
    # whatever happens to the file in between
    with open(filename, 'rb') as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    trusted = trusted_digests()
    if digest in trusted:
        print_log(
            f'{filename} holds Python objects other than weights and '
            f'mmengine Runner state ({"; ".join(reason)}); unpickling it in '
            f'full, because {TRUST_VARIABLE} names its SHA-256 ({digest}). '
            f'A full unpickle runs any code the file carries.',
            logger='current',
            level=30)  # logging.WARNING
        return torch.load(
            io.BytesIO(data), map_location=map_location, weights_only=False)
    others = (f' ({TRUST_VARIABLE} names {len(trusted)} other '
              f'digest{"s" if len(trusted) > 1 else ""}, not this file\'s)'
              if trusted else '')
    raise UntrustedCheckpoint(
        f'{filename} holds Python objects other than weights and mmengine '
        f'Runner state: {"; ".join(reason)}. It was not loaded: unpickling '
        f'it in full would run whatever code it carries. If you trust the '
        f'file and where it came from, allow it by its SHA-256 and load it '
        f'again: {TRUST_VARIABLE}={digest}{others} (see mmcvt\'s '
        f'docs/en/loading_and_security.md).') from None
