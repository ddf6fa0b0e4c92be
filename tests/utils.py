import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

REPO = Path(__file__).resolve().parents[1]


def _installed_stack():
    try:
        importlib.metadata.version('onedl-mmengine')
    except importlib.metadata.PackageNotFoundError:
        return 'upstream'
    return 'onedl'


# 'upstream' (OpenMMLab's mmengine) or 'onedl' (its OneDL continuation), for
# the tests of what the two do differently
STACK = _installed_stack()
# Reference data produced by the official CvT code (see its README.md)
FIXTURES = REPO / 'tests' / 'data'
# a checkpoint argument of tools/test.py for tests of its config alone: a URL
# passes the argument's check, and nothing is downloaded before the run
CHECKPOINT_URL = 'https://download.example.com/model.pth'

# Non-default widths, heads and depths for transformers' CvT (it indexes its
# drop-path rates by stage, so each stage needs more blocks than its index).
HF_ARCH = dict(embed_dims=[24, 48, 96], num_heads=[2, 3, 4], depths=[1, 2, 3])
# A small arch of the presets' shape, so that most tests run in a fraction of
# a second.
TINY = dict(embed_dims=[16, 32, 48], num_heads=[1, 2, 3], depths=[1, 1, 2])
# Two stages of a custom shape, every per-stage field given: what passes
# between stages (a map, then the next stage's tokens), at the least cost
TWO_STAGES = dict(
    embed_dims=[8, 16],
    num_heads=[1, 2],
    depths=[1, 1],
    patch_sizes=[7, 3],
    patch_strides=[4, 2],
    patch_paddings=[2, 1])


class Interrupted(Exception):
    """What :class:`InterruptAtIteration` raises."""


@HOOKS.register_module(force=True)
class InterruptAtIteration(Hook):
    """Stops training as a kill would, right after the given iteration
    (counted from 1), before anything the Runner does after it."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.iteration:
            raise Interrupted


def pretrained_cvt(checkpoint, arch, **kwargs):
    """A CvT that loads ``checkpoint`` through ``init_cfg``, in eval mode."""
    from mmcvt.models import CvT
    model = CvT(
        arch,
        init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)),
        **kwargs)
    model.init_weights()
    return model.eval()


def is_weight_decay_free(module, name):
    """Whether ``module``'s own parameter ``name`` trains without weight
    decay in mmcvt's configs: those of norms, biases, depthwise convs and
    CvT's cls token."""
    import torch

    from mmcvt.models.backbones.cvt import CvTStage
    norms = (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm, torch.nn.LayerNorm,
             torch.nn.GroupNorm)
    if isinstance(module, norms) or name == 'bias':
        return True
    if isinstance(module, CvTStage) and name == 'cls_token':
        return True
    return (isinstance(module, torch.nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels)


def relative_error(out, ref):
    """||out - ref|| / ||ref||"""
    return ((out - ref).norm() / ref.norm()).item()


def load_tool(path):
    """Imports a script under tools/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        path.replace('/', '_').removesuffix('.py'), REPO / 'tools' / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(tool, *args):
    """``tool.main`` (a tool from :func:`load_tool`) on ``args``, each made
    a str: its exit status, and what it printed, stdout then stderr."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = tool.main([str(arg) for arg in args])
    return status, out.getvalue() + err.getvalue()


def load_repo_config(path):
    """A config of this repository (``path`` relative to it), with its
    ``default_scope`` made the current scope, as the tools do."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(REPO / path)
    init_default_scope(cfg.default_scope)
    return cfg


def shapes_options(root, work_dir, name, **options):
    """Arguments of tools/train.py and tools/test.py that point a shapes
    demo config at the data in ``root`` (either layout) and at ``work_dir``,
    with ``options`` (``--cfg-options`` keys and values) over them."""
    settings = {
        f'{split}_dataloader.dataset.data_root': f'{root}/'
        for split in ('train', 'val', 'test')
    }
    annotations = Path(root) / 'annotations' / 'instances_val.json'
    if annotations.is_file():  # CocoMetric reads its own
        settings.update({
            f'{split}_evaluator.ann_file': str(annotations)
            for split in ('val', 'test')
        })
    # unique: runners made in one second would share their logger, and
    # runners of configs that name their visualizer (MMSegmentation's
    # 'visualizer') would write into the first one's work dir
    settings['experiment_name'] = name
    settings['visualizer.name'] = f'{name}-visualizer'  # a str, not 'nan'
    settings.update(options)
    return ['--work-dir', str(work_dir), '--cfg-options'
            ] + [f'{key}={value}' for key, value in settings.items()]


def save_untrained_checkpoint(config, path, seed=0):
    """Saves the freshly initialised model of a repository config (``config``
    relative to it) as a checkpoint the tools load: the untrained baseline
    that the demo metrics are compared with."""
    import torch
    from mmengine.registry import MODELS
    with torch.random.fork_rng():  # leaves the other tests' RNG as it was
        torch.manual_seed(seed)
        model = MODELS.build(load_repo_config(config).model)
        model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def predictions_png_cells(png, image_paths, columns):
    """The cells of tools/misc/show_predictions.py's grid, after checking
    the grid's size: for each input image, in order, the image as read and
    the halves of its cell, ground truth left and predictions right."""
    import mmcv
    grid = mmcv.imread(png)
    images = [mmcv.imread(path) for path in image_paths]
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    assert grid.shape == (rows * height, columns * 2 * width, 3)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        cell = grid[row * height:(row + 1) * height,
                    column * 2 * width:(column + 1) * 2 * width]
        yield image, cell[:, :width], cell[:, width:]


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def dist_train(config, num_processes, *args):
    """tools/dist_train.sh on the CPU, whatever the machine has: the GPU
    path needs a device per process. Returns the exit status and the log."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PORT=free_port(),
        OMP_NUM_THREADS='1',
        CUDA_VISIBLE_DEVICES='')
    result = subprocess.run([
        'bash',
        str(REPO / 'tools/dist_train.sh'),
        str(config),
        str(num_processes), *map(str, args)
    ],
                            cwd=REPO,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=600)
    return result.returncode, result.stdout + result.stderr


def separate_kv(state_dict):
    """A fused state_dict with k and v apart again, as the official code
    keeps them."""
    separate = {}
    for key, value in state_dict.items():
        if '.conv_proj_kv.' in key:
            for i, name in enumerate('kv'):
                part = value if key.endswith('num_batches_tracked') else \
                    value[i::2]
                separate[key.replace('_kv.', f'_{name}.')] = part.clone()
        elif '.proj_kv.' in key:
            for part, name in zip(value.chunk(2), 'kv'):
                separate[key.replace('_kv.', f'_{name}.')] = part.clone()
        else:
            separate[key] = value
    return separate


def run_fresh(script, *args):
    """Runs ``script`` with ``args`` in a fresh interpreter, as a user's
    own code would run after ``import mmcvt``: with mmengine's checkpoint
    loaders as they are, which tests that build mmcvt's Runner replace in
    this process. Returns its stdout; fails on an error, with its stderr."""
    result = subprocess.run([sys.executable, '-c', script, *map(str, args)],
                            capture_output=True,
                            text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---- work dirs laid out as the Runner lays them out -------------------------
def write_config(cfg, path):
    """The config as a Python file, as the Runner dumps it, without the
    formatting that costs Config.dump seconds a config."""
    path.write_text(''.join(f'{key} = {value!r}\n'
                            for key, value in cfg.to_dict().items()))


def fake_test_run(work_dir, timestamp, cfg, metrics):
    """The directory of a tools/test.py run: its config and metrics."""
    run = work_dir / timestamp
    (run / 'vis_data').mkdir(parents=True)
    write_config(cfg, run / 'vis_data' / 'config.py')
    (run / f'{timestamp}.json').write_text(json.dumps(metrics))
    return run


def fake_train_run(work_dir, timestamp, cfg, scalars, log=''):
    """The directory of a tools/train.py run: its config, the scalars its
    LocalVisBackend logged (a list of dicts) and its log's text."""
    run = work_dir / timestamp
    (run / 'vis_data').mkdir(parents=True)
    write_config(cfg, run / 'vis_data' / 'config.py')
    (run / 'vis_data' / 'scalars.json').write_text(''.join(
        json.dumps(line) + '\n' for line in scalars))
    (run / f'{timestamp}.log').write_text(log)
    return run
