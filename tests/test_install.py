"""The installed stack: mmcv's compiled ops, registration in both libraries
through ``custom_imports``, and Runner checkpoints under torch >= 2.6."""
import copy
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import load_from_local
from torch.utils.data import Dataset

from mmcvt.engine import load_from_local_file


def test_mmcv_has_its_compiled_nms():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
                          [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_mmcv_has_its_compiled_roi_align():
    from mmcv.ops import RoIAlign
    features = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    out = RoIAlign((2, 2), spatial_scale=1., sampling_ratio=2,
                   aligned=False)(features, rois)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0, 0, 0] < out[0, 0, 1, 1]


BUILD_FROM_CONFIG = '''
import sys
from mmengine.config import Config
from mmengine.registry import init_default_scope
assert 'mmcvt' not in sys.modules
cfg = Config.fromfile(sys.argv[1])  # runs custom_imports
from {library}.registry import MODELS
init_default_scope(cfg.default_scope)
model = MODELS.build(cfg.model)
print(type(model).__module__, type(model).__name__)
'''

CONFIG = '''
default_scope = '{scope}'
custom_imports = dict(imports=['mmcvt'], allow_failed_imports=False)
model = dict(type='CvT', arch='13')
'''


@pytest.mark.parametrize('scope, library', [('mmdet', 'mmdet'),
                                            ('mmseg', 'mmseg')])
def test_a_config_with_custom_imports_builds_cvt(tmp_path, scope, library):
    config = tmp_path / f'{scope}_cvt.py'
    config.write_text(CONFIG.format(scope=scope))
    result = subprocess.run(
        [sys.executable, '-c',
         BUILD_FROM_CONFIG.format(library=library),
         str(config)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ['mmcvt.models.backbones.cvt', 'CvT']


# ---- Runner checkpoints under torch >= 2.6 ----------------------------------
class LinearModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y, mode='tensor'):
        out = self.linear(x).squeeze(-1)
        if mode == 'loss':
            return {'loss': ((out - y)**2).mean()}
        return out


class LineDataset(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.tensor([float(i), 1.]), y=torch.tensor(2. * i))


class RecordingHook(Hook):
    """Records the iterations run, and the optimizer and scheduler states
    at the start of training."""

    def __init__(self):
        self.iters = []
        self.optimizer_state = self.scheduler_states = None

    def before_train(self, runner):
        # copies: the states are updated in place while training
        self.optimizer_state = copy.deepcopy(runner.optim_wrapper.state_dict())
        self.scheduler_states = copy.deepcopy(
            [s.state_dict() for s in runner.param_schedulers])

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.iters.append(runner.iter)


def build_runner(work_dir, max_iters, resume):
    return Runner(
        # unique, or two runners made in one second share their logger
        experiment_name=f'{work_dir.name}-{max_iters}-{resume}',
        model=LinearModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=LineDataset(),
            sampler=dict(type='InfiniteSampler', shuffle=False),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='MultiStepLR', milestones=[3], by_epoch=False),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[RecordingHook()],
        resume=resume)


@pytest.fixture(scope='module')
def trained_work_dir(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('trained')
    build_runner(work_dir, max_iters=4, resume=False).train()
    return work_dir


@pytest.fixture
def runner_checkpoint(trained_work_dir, tmp_path):
    """A work_dir whose last checkpoint is iter_4.pth, for this test alone."""
    return shutil.copytree(trained_work_dir, tmp_path / 'work_dir')


def test_stock_mmengine_cannot_read_runner_checkpoints_under_torch_2_6(
        runner_checkpoint):
    # why mmcvt replaces the local loader; if this starts passing, mmengine
    # or torch changed and the replacement may be dropped
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        load_from_local(str(runner_checkpoint / 'iter_4.pth'), 'cpu')


def test_resume_continues_from_the_last_checkpoint(runner_checkpoint):
    runner = build_runner(runner_checkpoint, max_iters=6, resume=True)
    runner.train()
    recorder = next(h for h in runner.hooks if isinstance(h, RecordingHook))
    assert recorder.iters == [4, 5]


def test_resume_restores_the_optimizer_and_scheduler_state(runner_checkpoint):
    saved = load_from_local_file(str(runner_checkpoint / 'iter_4.pth'))
    runner = build_runner(runner_checkpoint, max_iters=6, resume=True)
    runner.train()
    recorder = next(h for h in runner.hooks if isinstance(h, RecordingHook))
    resumed = recorder.optimizer_state['state'][0]
    assert resumed['step'] == saved['optimizer']['state'][0]['step'] == 4
    torch.testing.assert_close(resumed['exp_avg'],
                               saved['optimizer']['state'][0]['exp_avg'])
    assert recorder.scheduler_states == saved['param_schedulers']
    assert recorder.scheduler_states[0]['_global_step'] == 4


def test_plain_weight_files_still_load_with_weights_only(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'w': torch.ones(2)}, path)
    assert torch.equal(load_from_local_file(str(path))['w'], torch.ones(2))


class Payload:

    def __reduce__(self):
        return (print, ('this must never run', ))


def test_a_pickle_with_foreign_objects_is_refused_unrun(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    torch.save({'w': torch.ones(1), 'x': Payload()}, path)
    with pytest.raises(pickle.UnpicklingError,
                       match=r"evil.pth holds Python objects.*builtins.print"):
        load_from_local_file(str(path))
    assert 'this must never run' not in capsys.readouterr().out


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_from_local_file(str(tmp_path / 'absent.pth'))
