"""Checkpoint loading schemes for mmengine's ``CheckpointLoader``.

:func:`register_checkpoint_loaders` installs three, so that every
``init_cfg``, ``load_from`` and ``--resume`` in the process reads checkpoints
the same way. ``import mmcvt`` calls it, for the Runner's ``load_from`` and
``--resume``; the CvT backbone's own checkpoint reading calls it too, rather
than rely on that import having happened:

- local files (``''``), replacing mmengine's. mmengine 0.10.x reads them with
  a bare ``torch.load``, which from torch 2.6 on means ``weights_only=True``;
  the checkpoints mmengine's own Runner writes hold more than weights
  (``HistoryBuffer`` logs, numpy arrays, scheduler state), so ``--resume``
  and ``load_from`` fail on them, and no mmengine release fixes it. The
  replacement also reads safetensors files and transformers directories.
- ``hf://<repo>[@<revision>]``: weights of a Hugging Face hub repository
  through huggingface_hub's cache, so it works offline once cached.
- ``http://`` and ``https://``, replacing mmengine's: torch.hub caches a
  download under the URL's last part alone, so two URLs ending in
  ``pytorch_model.bin`` would share one file. Here each URL gets its own.
"""
import hashlib
import os
import os.path as osp
import pickle
import re
import struct
import zipfile
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.runner import CheckpointLoader

# transformers' names for a single-file checkpoint, in its order of choice
HF_WEIGHTS_NAMES = ('model.safetensors', 'pytorch_model.bin')

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


def _is_safetensors(filename):
    """A safetensors file starts with the little-endian length of a JSON
    header; torch's zip and pickle files cannot pass for one."""
    with open(filename, 'rb') as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_length = struct.unpack('<Q', head[:8])[0]
    return head[8:9] == b'{' and header_length <= osp.getsize(filename) - 8


def checkpoint_file_problem(filename):
    """What makes a local file unreadable as a checkpoint, told from a look
    at its bytes, or None when it looks whole.

    torch's own errors for these files say nothing of the file: "EOFError"
    for an empty one, "KeyError: 101" for a text file, a zip error for one
    whose writing was cut short. A torch checkpoint is a zip archive whose
    index (the central directory) is written last, so a truncated one has
    none; older torch files are pickles, which cannot be checked without
    reading them.
    """
    size = osp.getsize(filename)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(4)
    if head == b'PK\x03\x04':
        try:
            zipfile.ZipFile(filename).close()
        except zipfile.BadZipFile:
            return (f'it is a torch checkpoint cut short: a zip archive of '
                    f'{size} bytes without the index that is written last, '
                    f'as when a save is killed or the disk fills up')
        return None
    if head[:1] == b'\x80' or _is_safetensors(filename):
        return None  # a pickle (older torch files) or safetensors
    return (f'it is neither a torch checkpoint (a zip archive or a pickle) '
            f'nor safetensors: it starts with {head!r}')


def _weights_file_in(directory):
    for name in HF_WEIGHTS_NAMES:
        if osp.isfile(osp.join(directory, name)):
            return osp.join(directory, name)
    raise FileNotFoundError(
        f'{directory} is a directory without a checkpoint: it holds none of '
        f'{list(HF_WEIGHTS_NAMES)} (it has {sorted(os.listdir(directory))})')


def _torch_load(filename, map_location):
    """``weights_only=True`` first; a full unpickle only for files whose
    globals, read without running the pickle, are those of mmengine Runner
    checkpoints. Like any pickle, that is only as safe as the file."""
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


def load_from_local_file(filename, map_location=None):
    """mmengine's local loader, readable under torch >= 2.6, and for
    safetensors files and transformers directories too.

    Args:
        filename (str): A torch or safetensors file, or a directory holding
            ``model.safetensors`` or ``pytorch_model.bin``.
        map_location: As for :func:`torch.load`.

    Returns:
        The loaded checkpoint object.
    """
    filename = osp.expanduser(filename)
    if osp.isdir(filename):
        filename = _weights_file_in(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    problem = checkpoint_file_problem(filename)
    if problem:
        raise ValueError(f'{filename} is not a readable checkpoint: {problem}')
    if _is_safetensors(filename):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        return load_file(filename, device=device)
    return _torch_load(filename, map_location)


def _parse_hf_url(url):
    repo, _, revision = url[len('hf://'):].partition('@')
    if repo.count('/') != 1 or not all(repo.split('/')):
        raise ValueError(f'{url!r} is not of the form '
                         f'hf://<owner>/<name>[@<revision>]')
    return repo, revision or None


def load_from_hf_hub(url, map_location=None):
    """``hf://<owner>/<name>[@<revision>]``: the repository's
    ``model.safetensors`` or else ``pytorch_model.bin``.

    It goes through huggingface_hub's cache (``HF_HOME``, ``HF_HUB_CACHE``)
    and honours ``HF_HUB_OFFLINE``, so a cached repository loads without the
    network.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, revision = _parse_hf_url(url)
    misses = []
    for name in HF_WEIGHTS_NAMES:
        try:
            path = hf_hub_download(repo, name, revision=revision)
        except EntryNotFoundError as e:  # also: not cached and no network
            misses.append(f'{name}: {str(e).splitlines()[0]}')
            continue
        return load_from_local_file(path, map_location)
    raise FileNotFoundError(
        f'no weights for {url}: neither the hub nor the local cache '
        f'({_hf_cache_dir()}) has {" or ".join(HF_WEIGHTS_NAMES)} '
        f'({"; ".join(misses)}). Offline, fill the cache first on a machine '
        f'with network (`hf download {repo}`), or point the checkpoint at a '
        f'local file.')


def _hf_cache_dir():
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def url_cache_path(url):
    """Where a URL's download is kept: torch.hub's checkpoint directory, in
    a folder named after the URL's hash, under the URL's file name."""
    name = osp.basename(urlparse(url).path) or 'checkpoint'
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return osp.join(torch.hub.get_dir(), 'checkpoints', digest, name)


def load_from_url(url, map_location=None):
    """http(s) URLs, downloaded once each. As in mmengine, rank 0 downloads
    first; the other ranks then find the file or fetch their own copy."""
    filename = url_cache_path(url)

    def download():
        if not osp.isfile(filename):
            os.makedirs(osp.dirname(filename), exist_ok=True)
            torch.hub.download_url_to_file(url, filename, progress=False)

    rank, world_size = get_dist_info()
    if rank == 0:
        download()
    if world_size > 1:
        torch.distributed.barrier()
        download()
    return load_from_local_file(filename, map_location)


def register_checkpoint_loaders():
    """Installs mmcvt's loaders in mmengine's ``CheckpointLoader``; calling
    it again changes nothing."""
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_file, force=True)
    CheckpointLoader.register_scheme(
        prefixes='hf://', loader=load_from_hf_hub, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_url, force=True)
