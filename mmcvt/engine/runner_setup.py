"""What tools/train.py and tools/test.py share: their common arguments,
the config they load, checks on it, and the Runner they build from it, in
MMDetection's and MMSegmentation's way."""
import json
import logging
import os
import os.path as osp
from contextlib import contextmanager

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS, RUNNERS

from ..fileio import install_checkpoint_loaders
from ..utils.arguments import UsageError
from ..utils.output_paths import check_output_dir
from .runner import StrictCheckpointRunner


class UnusableWorkDir(UsageError, ValueError):
    """A work dir that is empty, a file, or cannot be made."""


class MissingData(UsageError, FileNotFoundError):
    """A path of a config's data that does not exist."""


class UnreadableAnnotations(UsageError, ValueError):
    """A config's annotation file that cannot be read."""


class UnsupportedLauncher(UsageError, ValueError):
    """A launcher that cannot run on this machine."""


def add_runner_arguments(parser):
    """The arguments that train.py and test.py take alike."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, as key=value pairs')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torchrun sets LOCAL_RANK; torch.distributed.launch passes --local-rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args):
    """The config of ``args.config`` with the common arguments applied;
    work_dir: command line > config > ./work_dirs/<config name>."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    # before anything is built: the Runner would write logs and checkpoints
    # into the current directory for an empty work_dir, and fail with a bare
    # FileExistsError on a file
    try:
        check_output_dir(cfg.work_dir, 'the work dir')
    except (ValueError, OSError) as error:
        raise UnusableWorkDir(str(error)) from error
    return cfg


def use_amp(cfg):
    """Train in mixed precision with a dynamic loss scale, as MMDetection's
    and MMSegmentation's train.py --amp do."""
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def build_runner(cfg):
    """A :class:`StrictCheckpointRunner`, or the config's own
    ``runner_type``, reading checkpoints with mmcvt's loaders: weights-only,
    mmengine's Runner checkpoints included (see
    :func:`~mmcvt.fileio.install_checkpoint_loaders`)."""
    install_checkpoint_loaders()
    return (StrictCheckpointRunner.from_cfg(cfg)
            if 'runner_type' not in cfg else RUNNERS.build(cfg))


def _dataset_cfgs(dataset):
    """A dataset config and those it wraps (RepeatDataset, ConcatDataset)."""
    if dataset is None:
        return
    yield dataset
    for inner in (dataset.get('dataset'), *dataset.get('datasets', ())):
        yield from _dataset_cfgs(inner)


def _local_paths(dataset):
    data_root = dataset.get('data_root') or ''
    ann_file = dataset.get('ann_file')
    if ann_file:
        yield osp.join(data_root, ann_file)
    for prefix in (dataset.get('data_prefix') or {}).values():
        if prefix:
            yield osp.join(data_root, prefix)


def _evaluator_paths(evaluator):
    """Annotation files of an evaluator or a list of them (CocoMetric
    reads its own, not the dataset's), with the option that sets each."""
    evaluators = evaluator if isinstance(evaluator, list) else [evaluator]
    for i, metric in enumerate(evaluators):
        if metric and metric.get('ann_file'):
            key = f'{i}.ann_file' if isinstance(evaluator,
                                                list) else 'ann_file'
            yield key, metric.ann_file


def check_data_paths(cfg, splits=('train', 'val', 'test')):
    """Fails early, naming the path, when the data of a split are absent:
    what its dataloader reads, and the annotation file of its evaluator;
    and when a JSON annotation file is cut short (see
    :func:`json_file_problem`).

    mmdet and mmseg would fail too, but later: on the first image, or after
    an epoch of training when the evaluator opens its annotation file, and
    for a JSON file cut short with pycocotools' JSONDecodeError, which does
    not name the file. Remote paths (``s3://`` and the like) are not
    checked.

    Args:
        splits: Of 'train', 'val' and 'test': those whose
            ``{split}_dataloader`` and ``{split}_evaluator`` to check.

    Raises:
        FileNotFoundError: Naming the missing path and how to point the
            config elsewhere.
        ValueError: Naming the JSON file that cannot be read, and why.
    """
    config = cfg.filename or 'the config'
    checked = set()  # the val split's dataset and evaluator share a file
    for split in splits:
        key = f'{split}_dataloader'
        loader = cfg.get(key)
        if not loader:
            continue
        for dataset in _dataset_cfgs(loader.get('dataset')):
            for path in _local_paths(dataset):
                _check_exists(
                    path, f'{key} of {config} reads {dataset.get("type")} '
                    f'data from data_root={dataset.get("data_root")!r}',
                    f'{key}.dataset.data_root', checked)
        key = f'{split}_evaluator'
        for option, path in _evaluator_paths(cfg.get(key)):
            _check_exists(path,
                          f'{key} of {config} reads its annotations there',
                          f'{key}.{option}', checked)


def _check_exists(path, reader, option, checked):
    if '://' in path or path in checked:
        return
    checked.add(path)
    if not osp.exists(path):
        raise MissingData(
            f'{path} does not exist: {reader}. Put the data there (see '
            f'docs/en/train_test.md), or point the config at it with '
            f'--cfg-options {option}=...')
    problem = (
        json_file_problem(path)
        if path.endswith('.json') and osp.isfile(path) else None)
    if problem:
        raise UnreadableAnnotations(
            f'{path} cannot be read: {problem}. {reader}. Write it again (a '
            f'copy or download cut short?), or point the config at another '
            f'with --cfg-options {option}=...')


# Parsing costs time and memory of some times the file's size, and the
# dataset parses the file again right after: COCO's val annotations (25 MB)
# are parsed whole, its train annotations (448 MB) checked at their ends.
_JSON_PARSED_UP_TO = 64 * 2**20


def json_file_problem(path):
    """What makes a JSON file unreadable, or None: a file up to 64 MB is
    parsed; a larger one must start with ``{`` or ``[`` and end with the
    bracket that closes it, which a file cut short almost never does (it
    would have to end right after an inner object)."""
    size = osp.getsize(path)
    if size == 0:
        return 'the file is empty (0 bytes)'
    if size <= _JSON_PARSED_UP_TO:
        try:
            with open(path, 'rb') as f:
                json.load(f)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            return f'it is not valid JSON ({error}; {size} bytes: cut short?)'
        return None
    with open(path, 'rb') as f:
        first = f.read(4096).lstrip()[:1]
        f.seek(max(0, size - 4096))
        last = f.read().rstrip()[-1:]
    if {b'{': b'}', b'[': b']'}.get(first) != last:
        return (f'it is not a whole JSON document: it starts with {first!r} '
                f'and ends with {last!r} ({size} bytes: cut short?)')
    return None


@contextmanager
def cpu_distributed(cfg):
    """Lets a distributed run work on machines without a GPU.

    mmengine 0.10 assumes CUDA for the 'pytorch' launcher: ``init_dist``
    calls ``torch.cuda.set_device`` and the Runner gives DDP
    ``device_ids=[LOCAL_RANK]``, both of which fail on the CPU; and the
    runtimes of MMDetection and MMSegmentation name NCCL, which needs CUDA.
    Without CUDA this joins the process group itself over gloo (the Runner
    then skips ``init_dist``), wraps the model in
    :class:`CPUDistributedDataParallel` (DDP without device ids, SyncBN
    made BN), and leaves the group on exit: gloo aborts a process that exits
    while still in one. Elsewhere it does nothing.
    """
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        yield
        return
    if cfg.launcher != 'pytorch':
        raise UnsupportedLauncher(
            f'without a GPU, only the "pytorch" launcher (torchrun, '
            f'tools/dist_train.sh) is supported, not {cfg.launcher!r}')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend') != 'gloo':
        print_log(
            f'no CUDA device: distributed backend '
            f'{dist_cfg.get("backend")} -> gloo',
            logger='current')
        dist_cfg['backend'] = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='CPUDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    torch.distributed.init_process_group(backend='gloo')
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for processes on the CPU, whose
    SyncBatchNorm layers it first turns into BatchNorm.

    torch's SyncBatchNorm runs on GPUs only, and the ADE20K configs put it in
    their heads, as MMSegmentation's do. A single process gets the same
    change from mmengine's Runner; here each process normalises over its own
    batch, so with small batches the statistics are noisier than on GPUs,
    and the log says so.
    """

    def __init__(self, module, **kwargs):
        types = {name: type(layer) for name, layer in module.named_modules()}
        module = revert_sync_batchnorm(module)  # torch's and mmcv's
        reverted = [
            name for name, layer in module.named_modules()
            if type(layer) is not types[name]
        ]
        if reverted:
            print_log(
                f'no CUDA device: SyncBatchNorm runs on GPUs only, so its '
                f'{len(reverted)} layers ({", ".join(reverted[:3])}'
                f'{", ..." if len(reverted) > 3 else ""}) are BatchNorm '
                f'here, normalising over each process\'s own batch',
                logger='current',
                level=logging.WARNING)
        super().__init__(module=module, **kwargs)
