"""Reading checkpoint files: local paths, ``hf://`` and ``http(s)://``.

Every torch file is read with torch's weights-only unpickler
(:mod:`mmcvt.fileio.unpickling`), and weights that are not finite are
refused. The CvT backbone reads its checkpoints with
:func:`load_checkpoint_file`, without changing mmengine's
``CheckpointLoader``; ``import mmcvt`` changes nothing of it. mmcvt's tools
(and its Runner) call :func:`install_checkpoint_loaders`, which adds the
``hf://`` scheme to that loader and replaces mmengine's loaders of local
files and http(s) URLs in their process, so that their Runner reads the
same way:

- local files: mmengine 0.10 reads them with a bare ``torch.load``, which
  from torch 2.6 on refuses the checkpoints of mmengine's own Runner (their
  ``HistoryBuffer`` logs), so that ``--resume`` and ``load_from`` fail on
  them. The replacement reads them weights-only, and also safetensors files
  and transformers directories.
- ``http://`` and ``https://``: torch.hub caches a download under the
  URL's last part alone, so two URLs ending in ``pytorch_model.bin`` would
  share one file, and keeps whatever arrived. Here each URL gets a folder
  of its own, and a download is cached only once it is whole and a
  checkpoint.
"""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zipfile
from urllib.parse import urlparse

import torch
from mmengine.dist import get_dist_info
from mmengine.runner import CheckpointLoader

from .unpickling import load_weights_only

# transformers' names for a single-file checkpoint, in its order of choice
HF_WEIGHTS_NAMES = ('model.safetensors', 'pytorch_model.bin')
# safetensors refuses headers above this many bytes
_SAFETENSORS_MAX_HEADER = 100_000_000
_MAX_NAMED = 12


def name_keys(keys):
    """Keys for an error message: sorted, the first dozen, and how many
    more."""
    keys = sorted(keys)
    named = ', '.join(keys[:_MAX_NAMED])
    more = len(keys) - _MAX_NAMED
    return f'[{named}' + (f', ... and {more} more]' if more > 0 else ']')


def kind_mismatches(state_dict, own):
    """``'key: checkpoint int64, model float32'`` for each tensor of
    ``state_dict`` that ``own``, a model's state_dict, holds as another kind
    of number: integers where the model has floating point, or the reverse.
    ``load_state_dict`` copies such a tensor across without a word, so that
    a checkpoint of integers loads as whole numbers."""
    return [
        f'{key}: checkpoint {tensor.dtype}, model {own[key].dtype}'
        for key, tensor in state_dict.items()
        if isinstance(tensor, torch.Tensor) and key in own
        and tensor.is_floating_point() != own[key].is_floating_point()
    ]


# ---- what a file is ---------------------------------------------------------
def _safetensors_problem(filename, size):
    """For a file laid out as safetensors (the little-endian length of a
    JSON header, then the header): what is wrong with it, '' when nothing.
    None for a file that is not laid out so."""
    with open(filename, 'rb') as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b'{':
            return None
        header_length = struct.unpack('<Q', head[:8])[0]
        if header_length > _SAFETENSORS_MAX_HEADER:
            return None
        if 8 + header_length > size:
            return (f'it is a safetensors file cut short: its header alone '
                    f'takes {8 + header_length} bytes, and the file has '
                    f'{size}')
        f.seek(8)
        try:
            header = json.loads(f.read(header_length))
            data_end = max(
                (entry['data_offsets'][1]
                 for name, entry in header.items() if name != '__metadata__'),
                default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            return 'it is a safetensors file whose header is not readable'
    needed = 8 + header_length + data_end
    if needed > size:
        return (f'it is a safetensors file cut short: its tensors end at '
                f'byte {needed}, and the file has {size}')
    return ''


def _markup_kind(head):
    """'an HTML page' or 'an XML document' for what a web server sends in
    place of a file, else None."""
    text = head.lstrip(b'\xef\xbb\xbf \t\r\n').lower()
    if not text.startswith(b'<'):
        return None
    return 'an HTML page' if b'html' in text else 'an XML document'


def _format_and_problem(filename):
    """The format of a local file, 'torch' or 'safetensors', and what makes
    it unreadable as a checkpoint (None when it looks whole), told from a
    look at its bytes. See :func:`checkpoint_file_problem`."""
    size = osp.getsize(filename)
    if size == 0:
        return None, 'the file is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(1024)
    if head[:4] == b'PK\x03\x04':
        try:
            with zipfile.ZipFile(filename) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return 'torch', (
                f'it is a torch checkpoint cut short: a zip archive of '
                f'{size} bytes without the index that is written last, as '
                f'when a save is killed or the disk fills up')
        if not any(name.endswith('data.pkl') for name in names):
            return None, (f'it is a zip archive, but not a torch checkpoint: '
                          f'it has no data.pkl; it holds {name_keys(names)}')
        return 'torch', None
    if head[:1] == b'\x80':
        return 'torch', None  # a pickle (older torch files)
    safetensors_problem = _safetensors_problem(filename, size)
    if safetensors_problem is not None:
        return 'safetensors', safetensors_problem or None
    markup = _markup_kind(head)
    if markup:
        return None, (f'it is {markup}, not a checkpoint, as a web server '
                      f'sends in place of a file (a login, error or redirect '
                      f'page): it starts with {head[:40]!r}')
    return None, (f'it is neither a torch checkpoint (a zip archive or a '
                  f'pickle) nor safetensors: it starts with {head[:4]!r}')


def checkpoint_file_problem(filename):
    """What makes a local file unreadable as a checkpoint, told from a look
    at its bytes, or None when it looks whole.

    torch's own errors for these files say nothing of the file: "EOFError"
    for an empty one, "KeyError: 101" for a text file, a zip error for one
    whose writing was cut short, "enforce fail at inline_container.cc" for
    a zip of something else. A torch checkpoint is a zip archive with a
    ``data.pkl`` whose index (the central directory) is written last, so a
    truncated one has none; a safetensors header gives the length of the
    data after it. Older torch files are pickles, which cannot be checked
    without reading them.
    """
    return _format_and_problem(filename)[1]


def _weights_file_in(directory):
    for name in HF_WEIGHTS_NAMES:
        if osp.isfile(osp.join(directory, name)):
            return osp.join(directory, name)
    raise FileNotFoundError(
        f'{directory} is a directory without a checkpoint: it holds none of '
        f'{list(HF_WEIGHTS_NAMES)} (it has {sorted(os.listdir(directory))})')


def _weights_of(checkpoint):
    """The model weights of a loaded checkpoint: its ``state_dict`` or
    ``model``, or the checkpoint itself."""
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        return checkpoint
    return {}


def non_finite_tensors(checkpoint):
    """Names of the floating-point weights of a loaded checkpoint that hold
    a NaN or an infinity."""
    return [
        name for name, value in _weights_of(checkpoint).items()
        if isinstance(value, torch.Tensor) and value.is_floating_point()
        and not value.is_meta and not torch.isfinite(value).all()
    ]


# ---- local files ------------------------------------------------------------
def load_from_local_file(filename, map_location=None):
    """mmengine's local loader, weights-only, and for safetensors files and
    transformers directories too.

    Args:
        filename (str): A torch or safetensors file, or a directory holding
            ``model.safetensors`` or ``pytorch_model.bin``.
        map_location: As for :func:`torch.load`.

    Returns:
        The loaded checkpoint object.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is no readable checkpoint, or its weights are
            not all finite; the message names the file and what is wrong.
        pickle.UnpicklingError: The file holds more than weights and
            mmengine Runner state (see :func:`load_weights_only`).
    """
    filename = osp.expanduser(filename)
    if osp.isdir(filename):
        filename = _weights_file_in(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    file_format, problem = _format_and_problem(filename)
    if problem:
        raise ValueError(f'{filename} is not a readable checkpoint: {problem}')
    if file_format == 'safetensors':
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        checkpoint = load_file(filename, device=device)
    else:
        checkpoint = load_weights_only(filename, map_location)
    non_finite = non_finite_tensors(checkpoint)
    if non_finite:
        raise ValueError(
            f'{filename} holds weights that are not finite (NaN or '
            f'infinity) in {len(non_finite)} tensors: '
            f'{name_keys(non_finite)}. It was not loaded: a model with them '
            f'predicts nothing and trains to NaN. A run that diverged saves '
            f'such checkpoints; take one saved before it diverged.')
    return checkpoint


# ---- hf:// ------------------------------------------------------------------
# A Hugging Face owner or repository name, and a revision (a branch, a tag
# or a commit, possibly with slashes: refs/pr/1), with no '.' or '..' path
# part: huggingface_hub makes cache paths of both.
_HF_NAME = re.compile(r'[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?')
_HF_REVISION = re.compile(r'[A-Za-z0-9_-][A-Za-z0-9._-]*'
                          r'(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*')


def _parse_hf_url(url):
    repo, _, revision = url[len('hf://'):].partition('@')
    parts = repo.split('/')
    if (len(parts) != 2 or not all(map(_HF_NAME.fullmatch, parts))
            or '..' in repo or '--' in repo):
        raise ValueError(f'{url!r} is not of the form '
                         f'hf://<owner>/<name>[@<revision>]: owner and name '
                         f'are letters, digits and ._- (not .. nor --)')
    if revision and (not _HF_REVISION.fullmatch(revision)
                     or '..' in revision.split('/')):
        raise ValueError(f'{url!r}: the revision {revision!r} is not a '
                         f'branch, tag or commit name')
    return repo, revision or None


def _hf_cache_dir():
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _is_inside(path, directory):
    path, directory = osp.realpath(path), osp.realpath(directory)
    return osp.commonpath([path, directory]) == directory


def load_from_hf_hub(url, map_location=None):
    """``hf://<owner>/<name>[@<revision>]``: the repository's
    ``model.safetensors`` or else ``pytorch_model.bin``.

    It goes through huggingface_hub's cache (``HF_HOME``, ``HF_HUB_CACHE``)
    and honours ``HF_HUB_OFFLINE``, so a cached repository loads without the
    network. Names that would make paths outside the cache are refused.
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
        if not _is_inside(path, _hf_cache_dir()):
            raise ValueError(f'{url}: huggingface_hub gave {path}, outside '
                             f'its cache {_hf_cache_dir()}; not loaded')
        return load_from_local_file(path, map_location)
    raise FileNotFoundError(
        f'no weights for {url}: neither the hub nor the local cache '
        f'({_hf_cache_dir()}) has {" or ".join(HF_WEIGHTS_NAMES)} '
        f'({"; ".join(misses)}). Offline, fill the cache first on a machine '
        f'with network (`hf download {repo}`), or point the checkpoint at a '
        f'local file.')


# ---- http(s):// -------------------------------------------------------------
def _cache_file_name(url):
    """The URL's last path part, as a file name that stays in its folder."""
    name = re.sub(r'[^A-Za-z0-9._-]', '_', osp.basename(urlparse(url).path))
    return name if name.strip('.') else 'checkpoint'


def url_cache_path(url):
    """Where a URL's download is kept: torch.hub's checkpoint directory, in
    a folder named after the URL's hash, under the URL's file name."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return osp.join(torch.hub.get_dir(), 'checkpoints', digest,
                    _cache_file_name(url))


def _download(url, filename):
    """Downloads ``url`` to ``filename`` through a temporary file beside it,
    which takes the name only once it has arrived whole and looks like a
    checkpoint.

    Written here, not left to ``torch.hub.download_url_to_file``, which
    moves whatever arrived into place: a body shorter than its
    Content-Length, or an HTML page served with status 200, would stay in
    the cache and fail on every later load.
    """
    directory = osp.dirname(filename)
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(
            dir=directory,
            prefix=osp.basename(filename) + '.',
            suffix='.partial',
            delete=False) as partial:
        try:
            request = urllib.request.Request(
                url, headers={'User-Agent': 'mmcvt'})
            with urllib.request.urlopen(request) as response:
                expected = response.headers.get('Content-Length')
                shutil.copyfileobj(response, partial, 1 << 20)
            received = partial.tell()
            partial.close()
            if expected is not None and received != int(expected):
                raise ValueError(
                    f'the download of {url} was cut short: {received} of '
                    f'{expected} bytes arrived; nothing was cached, try '
                    f'again')
            problem = checkpoint_file_problem(partial.name)
            if problem:
                raise ValueError(f'{url} sent no checkpoint: {problem}; '
                                 f'nothing was cached')
            os.replace(partial.name, filename)
        except (urllib.error.URLError, OSError) as e:
            raise OSError(f'cannot download {url}: {e}') from e
        finally:
            if osp.exists(partial.name):
                os.remove(partial.name)


def load_from_url(url, map_location=None):
    """http(s) URLs, downloaded once each. As in mmengine, rank 0 downloads
    first; the other ranks then find the file or fetch their own copy."""
    filename = url_cache_path(url)

    def download():
        if not osp.isfile(filename):
            _download(url, filename)

    rank, world_size = get_dist_info()
    if rank == 0:
        download()
    if world_size > 1:
        torch.distributed.barrier()
        download()
    return load_from_local_file(filename, map_location)


# ---- entry points -----------------------------------------------------------
_SCHEMES = ((('http://', 'https://'), load_from_url), (('hf://', ),
                                                       load_from_hf_hub))


def load_checkpoint_file(filename, map_location=None):
    """A checkpoint from a local path, an ``hf://`` name or an http(s) URL,
    read by mmcvt's loaders whatever mmengine's ``CheckpointLoader`` has
    registered; other schemes (``s3://``, ``open-mmlab://`` ...) go to
    ``CheckpointLoader``."""
    for prefixes, loader in _SCHEMES:
        if filename.startswith(prefixes):
            return loader(filename, map_location)
    if '://' in filename:
        return CheckpointLoader.load_checkpoint(filename, map_location)
    return load_from_local_file(filename, map_location)


def register_hf_loader():
    """Adds ``hf://`` to mmengine's ``CheckpointLoader``, which has no such
    scheme, so that any ``init_cfg`` or ``load_from`` can name hub weights;
    it replaces nothing of mmengine's. :func:`install_checkpoint_loaders`
    calls it; code that runs other tools may call it alone."""
    CheckpointLoader.register_scheme(
        prefixes='hf://', loader=load_from_hf_hub, force=True)


def install_checkpoint_loaders():
    """Makes mmengine's ``CheckpointLoader`` read local files and http(s)
    URLs with mmcvt's loaders in this process, and ``hf://`` names: the
    Runner's ``load_from`` and ``--resume``, and every ``init_cfg``, then
    read as the CvT backbone does. mmcvt's tools call it; ``import mmcvt``
    does not. Calling it again changes nothing."""
    register_hf_loader()
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_file, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_url, force=True)
