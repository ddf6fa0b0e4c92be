"""The installed stack: the torch floor, mmcv's compiled ops, and
registration in both libraries through ``custom_imports``. (Runner
checkpoints under torch >= 2.6: test_checkpoints.py.)"""
import subprocess
import sys

import pytest
import torch


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


@pytest.mark.slow
@pytest.mark.parametrize('scope, library', [('mmdet', 'mmdet'),
                                            ('mmseg', 'mmseg')])
def test_a_config_with_custom_imports_builds_cvt(tmp_path, scope, library):
    config = tmp_path / f'{scope}_cvt.py'
    config.write_text(CONFIG.format(scope=scope))
    result = subprocess.run([
        sys.executable, '-c',
        BUILD_FROM_CONFIG.format(library=library),
        str(config)
    ],
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ['mmcvt.models.backbones.cvt', 'CvT']


@pytest.mark.slow
def test_import_mmcvt_on_a_torch_below_its_floor_fails_in_one_line():
    from mmcvt.version import TORCH_MINIMUM
    result = subprocess.run([
        sys.executable, '-c',
        'import torch; torch.__version__ = "2.5.1+cu121"; import mmcvt'
    ],
                            capture_output=True,
                            text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f'ImportError: mmcvt needs torch >= {TORCH_MINIMUM}, and this '
        f'environment has torch 2.5.1+cu121: install a newer one, e.g. pip '
        f'install "torch>={TORCH_MINIMUM}"')
    # nothing of mmcvt beyond the check was imported
    assert 'mmengine' not in result.stderr
