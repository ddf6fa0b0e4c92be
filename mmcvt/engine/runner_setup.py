"""What tools/train.py and tools/test.py share: their common arguments,
the config they load, checks on it, and the Runner they build from it, in
MMDetection's and MMSegmentation's way."""
import os
import os.path as osp
from contextlib import contextmanager

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def add_runner_arguments(parser):
    """The arguments that train.py and test.py take alike."""
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, as key=value pairs')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
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
    return cfg


def use_amp(cfg):
    """Train in mixed precision with a dynamic loss scale, as MMDetection's
    and MMSegmentation's train.py --amp do."""
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def build_runner(cfg):
    return (Runner.from_cfg(cfg)
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


def check_data_paths(cfg, keys=('train_dataloader', 'val_dataloader',
                                'test_dataloader')):
    """Fails early, naming the path, when a dataloader's data are absent.

    mmdet and mmseg would fail too, but later: on the first image, or after
    an epoch of training when the evaluator opens its annotation file.
    Remote paths (``s3://`` and the like) are not checked.

    Raises:
        FileNotFoundError: Naming the missing path and how to point the
            config elsewhere.
    """
    for key in keys:
        loader = cfg.get(key)
        if not loader:
            continue
        for dataset in _dataset_cfgs(loader.get('dataset')):
            for path in _local_paths(dataset):
                if '://' not in path and not osp.exists(path):
                    raise FileNotFoundError(
                        f'{path} does not exist: {key} of '
                        f'{cfg.filename or "the config"} reads '
                        f'{dataset.get("type")} data from data_root='
                        f'{dataset.get("data_root")!r}. Put the data there '
                        f'(see README.md), or point the config at it with '
                        f'--cfg-options {key}.dataset.data_root=...')


@contextmanager
def cpu_distributed(cfg):
    """Lets a distributed run work on machines without a GPU.

    mmengine 0.10 assumes CUDA for the 'pytorch' launcher: ``init_dist``
    calls ``torch.cuda.set_device`` and the Runner gives DDP
    ``device_ids=[LOCAL_RANK]``, both of which fail on the CPU; and the
    runtimes of MMDetection and MMSegmentation name NCCL, which needs CUDA.
    Without CUDA this joins the process group itself over gloo (the Runner
    then skips ``init_dist``), wraps the model in DDP without device ids,
    and leaves the group on exit: gloo aborts a process that exits while
    still in one. Elsewhere it does nothing.
    """
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        yield
        return
    if cfg.launcher != 'pytorch':
        raise ValueError(f'without a GPU, only the "pytorch" launcher '
                         f'(torchrun, tools/dist_train.sh) is supported, not '
                         f'{cfg.launcher!r}')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend') != 'gloo':
        print_log(f'no CUDA device: distributed backend '
                  f'{dist_cfg.get("backend")} -> gloo', logger='current')
        dist_cfg['backend'] = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    torch.distributed.init_process_group(backend='gloo')
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
