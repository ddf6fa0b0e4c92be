"""The Runner state of a checkpoint as tensors and plain values only.

mmengine's Runner puts the state of its message hub into each checkpoint:
the logs as ``HistoryBuffer`` objects, which hold numpy arrays and name
their statistics methods, and numpy numbers among the runtime information.
torch's weights-only unpickler, which ``torch.load`` uses by default since
torch 2.6 and through which mmengine 0.10.7 reads every checkpoint
(``init_detector``, ``init_model``, the inferencers), refuses them.
:func:`plain_message_hub` stores them as tensors, numbers and dicts, which
that unpickler reads with no global allowed; :func:`rebuilt_message_hub`
makes them what ``MessageHub.load_state_dict`` expects again.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# the dict a HistoryBuffer is stored as
_BUFFER_KEYS = frozenset({'log_history', 'count_history', 'max_length'})


def plain_message_hub(state):
    """``MessageHub.state_dict()`` with tensors, numbers, strings and dicts
    only (the keys of log_scalars, runtime_info and resumed_keys kept)."""
    return dict(
        log_scalars={
            key: _plain_buffer(buffer)
            for key, buffer in state['log_scalars'].items()
        },
        runtime_info={
            key: _plain(value)
            for key, value in state['runtime_info'].items()
        },
        resumed_keys=dict(state['resumed_keys']))


def rebuilt_message_hub(state):
    """The ``HistoryBuffer`` objects of a state saved by
    :func:`plain_message_hub`, in place of their dicts, wherever their
    tensors were loaded to; a state saved with the objects themselves is
    returned as it is."""
    return dict(
        state,
        log_scalars={
            key: _rebuilt_buffer(value)
            for key, value in state['log_scalars'].items()
        })


def _plain_buffer(buffer):
    log_history, count_history = buffer.data
    return dict(
        log_history=torch.from_numpy(np.array(log_history)),
        count_history=torch.from_numpy(np.array(count_history)),
        max_length=buffer.max_length)


def _rebuilt_buffer(value):
    if not (isinstance(value, dict) and value.keys() == _BUFFER_KEYS):
        return value
    # Runner.resume loads a checkpoint onto the training device (a GPU's),
    # and numpy reads tensors on the CPU only
    return HistoryBuffer(value['log_history'].cpu().numpy(),
                         value['count_history'].cpu().numpy(),
                         value['max_length'])


def _plain(value):
    """numpy's numbers as Python's, its arrays as tensors, in containers
    too; anything else as it is."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value
