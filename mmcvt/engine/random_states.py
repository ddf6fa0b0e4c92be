"""The process's global random states, as a checkpoint can hold them.

A training draws from four generators: torch's (drop path, dropout, the
samplers of MMDetection's heads), CUDA's (the same, on a GPU), numpy's
(MMDetection's and MMCV's transforms, e.g. ``RandomFlip``) and Python's
``random`` (some transforms). mmengine seeds them at the start of a run and
saves none, so a resumed run draws other numbers than the run it resumes.

The states are stored as tensors, ints, floats and strings only, which
torch's weights-only unpickler reads without any allowed global: numpy's
state is a tuple with an ndarray, Python's a tuple of ints, and neither is
stored as it is.
"""
import logging
import random

import numpy as np
import torch
from mmengine.logging import print_log


def capture_random_states():
    """The global random states of torch, CUDA (when in use), numpy and
    Python, as a dict of tensors and plain values."""
    bit_generator, keys, position, has_gauss, cached_gaussian = (
        np.random.get_state())
    version, internal_state, gauss_next = random.getstate()
    states = dict(
        torch=torch.get_rng_state(),
        numpy=dict(
            bit_generator=bit_generator,
            keys=torch.from_numpy(keys.astype(np.int64)),
            position=int(position),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached_gaussian)),
        python=dict(
            version=version,
            internal_state=torch.tensor(internal_state, dtype=torch.int64),
            gauss_next=gauss_next))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states):
    """Sets the global random states to those of
    :func:`capture_random_states`, wherever their tensors were loaded to."""
    torch.set_rng_state(states['torch'].cpu())
    state = states['numpy']
    np.random.set_state(
        (state['bit_generator'], state['keys'].cpu().numpy().astype(np.uint32),
         state['position'], state['has_gauss'], state['cached_gaussian']))
    state = states['python']
    random.setstate((state['version'], tuple(state['internal_state'].tolist()),
                     state['gauss_next']))
    cuda = states.get('cuda')
    if cuda is None or not torch.cuda.is_available():
        return
    if len(cuda) != torch.cuda.device_count():
        print_log(
            f'the checkpoint holds the random states of {len(cuda)} CUDA '
            f'devices, this process sees {torch.cuda.device_count()}: CUDA\'s '
            f'random states are not restored',
            logger='current',
            level=logging.WARNING)
        return
    torch.cuda.set_rng_state_all([state.cpu() for state in cuda])
