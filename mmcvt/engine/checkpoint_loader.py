"""Checkpoint loading schemes for mmengine's ``CheckpointLoader``.

Why the local-file scheme is replaced: mmengine 0.10.x reads local files with
a bare ``torch.load``, which from torch 2.6 on means ``weights_only=True``.
The checkpoints that mmengine's own Runner writes hold more than weights
(``HistoryBuffer`` logs, numpy arrays, scheduler state), so ``--resume`` and
``load_from`` fail on them. No mmengine release fixes this, and site-packages
is not ours to edit.

:func:`load_from_local_file` keeps the safe ``weights_only=True`` load for
every file it can read, which covers plain weight files such as the CvT
releases. Only when that fails does it look at the globals the pickle names,
without running it, and unpickle fully if they are exactly what an mmengine
Runner writes. Anything else is refused with the names of the objects.
Like any pickle, a full unpickle is only as safe as the file is trusted.
"""
import os.path as osp
import pickle
import re

import torch
from mmengine.runner import CheckpointLoader

# The globals that mmengine 0.10's Runner checkpoints name, beyond what
# torch allows by default: numpy arrays and scalars (numpy 1.x and 2.x module
# paths), HistoryBuffer with its statistics methods (pickled by getattr),
# and the Counter of MultiStepLR's milestones.
_RUNNER_CHECKPOINT_GLOBALS = re.compile(
    r'numpy\.(_core|core)\.multiarray\.(_reconstruct|scalar)'
    r'|numpy\.(ndarray|dtype)'
    r'|numpy\.dtypes\.\w+DType'
    r'|mmengine\.logging\.history_buffer\.HistoryBuffer'
    r'|builtins\.getattr'
    r'|collections\.Counter')


def load_from_local_file(filename, map_location=None):
    """mmengine's local-file loader, readable under torch >= 2.6.

    Args:
        filename (str): Path of the checkpoint.
        map_location: As for :func:`torch.load`.

    Returns:
        The loaded checkpoint object.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = [
            name for name in
            torch.serialization.get_unsafe_globals_in_checkpoint(filename)
            if not _RUNNER_CHECKPOINT_GLOBALS.fullmatch(name)
        ]
        if foreign:
            raise pickle.UnpicklingError(
                f'{filename} holds Python objects other than weights and '
                f'mmengine Runner state: {foreign}. If you trust the file, '
                f'load it with torch.load(..., weights_only=False) and save '
                f'its state_dict.') from error
    return torch.load(filename, map_location=map_location, weights_only=False)


def register_checkpoint_loaders():
    """Installs mmcvt's loaders in mmengine's ``CheckpointLoader``."""
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_file, force=True)
