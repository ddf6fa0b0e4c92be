"""The installed stack: the torch floor, mmcv's compiled ops, and
registration in both libraries through ``custom_imports``; how `make
install [STACK=onedl]` chooses a stack and its environment. (Runner
checkpoints under torch >= 2.6: test_checkpoints.py.)"""
import os
import subprocess
import sys
import sysconfig

import pytest
import torch

from .utils import REPO


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


# ---- the stacks: `make install [STACK=onedl]` -------------------------------
def make_dry_run(*arguments):
    """What `make -n` would run (nothing is run), and its exit status; not
    as a sub-make of a `make test STACK=...` that runs this test, whose
    variables would pass down."""
    outer = ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'STACK')
    result = subprocess.run(['make', '-n', *arguments],
                            cwd=REPO,
                            env={
                                k: v
                                for k, v in os.environ.items()
                                if k not in outer
                            },
                            capture_output=True,
                            text=True)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize('stack, venv', [('upstream', '.venv'),
                                         ('onedl', '.venv-onedl')])
def test_each_stack_installs_and_tests_in_an_environment_of_its_own(
        stack, venv):
    status, planned = make_dry_run('-B', 'test-fast', f'STACK={stack}')
    assert status == 0, planned
    assert (f'PYTHON=python3 VENV={venv} STACK={stack} tools/install.sh'
            in planned)
    assert f'{venv}/bin/python -m pytest tests -m "not slow"' in planned


def test_the_default_stack_is_upstream():
    _, default = make_dry_run('-B', 'test')
    _, upstream = make_dry_run('-B', 'test', 'STACK=upstream')
    assert default == upstream
    assert 'VENV=.venv STACK=upstream' in default


def test_make_refuses_an_unknown_stack_naming_the_stacks():
    status, said = make_dry_run('install', 'STACK=onedI')
    assert status != 0
    assert 'unknown STACK=onedI: the stacks are onedl upstream' in said


def install_sh(stack, venv):
    """tools/install.sh of ``stack`` into ``venv``, as make runs it."""
    return subprocess.run(['tools/install.sh'],
                          cwd=REPO,
                          env={
                              **os.environ, 'STACK': stack,
                              'VENV': str(venv)
                          },
                          capture_output=True,
                          text=True)


def test_install_sh_refuses_an_unknown_stack_before_touching_anything(
        tmp_path):
    venv = tmp_path / 'venv'
    result = install_sh('openmmlab', venv)
    assert result.returncode == 2
    assert result.stdout.strip() == (
        '[install] unknown STACK=openmmlab: the stacks are onedl upstream '
        '(requirements/<stack>/)')
    assert not venv.exists()


# the module of each distribution that venv_holding() fakes, where its name
# is not that of its module
MODULES = {
    'mmsegmentation': 'mmseg',
    'onedl-mmengine': 'mmengine',
    'onedl-mmsegmentation': 'mmseg',
}


def venv_holding(venv, *distributions):
    """A virtual environment at ``venv`` whose site-packages hold the
    metadata of ``distributions`` ('name==version'), as pip writes it, and
    nothing else."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv],
                   check=True)
    site = sysconfig.get_paths(vars={'base': venv, 'platbase': venv})
    for distribution in distributions:
        name, version = distribution.split('==')
        module = MODULES.get(name, name)
        info = f'{name.replace("-", "_")}-{version}.dist-info'
        folder = venv / os.path.relpath(site['purelib'], venv) / info
        folder.mkdir(parents=True)
        (folder / 'METADATA').write_text(
            f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
        (folder / 'RECORD').write_text(f'{module}/__init__.py,,\n'
                                       f'{info}/METADATA,,\n')
    return venv


def other_stack_distributions(venv, stack):
    """What tools/install.sh finds of another stack in ``venv``."""
    return subprocess.run([
        venv / 'bin' / 'python', 'tools/misc/other_stack_distributions.py',
        stack, *map(str, REPO.glob('requirements/*/mmcv.txt')),
        *map(str, REPO.glob('requirements/*/openmmlab.txt'))
    ],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          check=True).stdout.split()


@pytest.mark.parametrize('stack, foreign',
                         [('onedl', 'mmcv==2.1.0'),
                          ('upstream', 'onedl-mmengine==0.10.12')])
def test_a_distribution_of_the_other_stack_that_installs_an_openmmlab_module_is_found(  # noqa: E501
        tmp_path, stack, foreign):
    venv = venv_holding(tmp_path / 'venv', foreign, 'numpy==1.26.4')
    assert other_stack_distributions(venv, stack) == [foreign]


def test_what_only_the_other_stack_pins_but_installs_other_modules_is_not_found(  # noqa: E501
        tmp_path):
    """Upstream pins ftfy and regex, which onedl-mmsegmentation installs as
    its own requirements: a second install of OneDL goes on."""
    venv = venv_holding(tmp_path / 'venv', 'onedl-mmsegmentation==1.4.2',
                        'ftfy==6.3.1', 'regex==2026.11.19')
    assert other_stack_distributions(venv, 'onedl') == []


@pytest.mark.slow
def test_install_sh_refuses_an_environment_of_the_other_stack(tmp_path):
    """Both stacks install the same modules: installing one over the other
    would leave files of both."""
    venv = venv_holding(tmp_path / 'venv', 'mmcv==2.1.0',
                        'mmsegmentation==1.2.2')
    result = install_sh('onedl', venv)
    assert result.returncode == 1
    foreign = 'mmcv==2.1.0 mmsegmentation==1.2.2'
    assert (f'[install] {venv} holds {foreign}, of another stack than '
            f'onedl, which install the same modules: install into another '
            f'VENV, or remove them first: {venv}/bin/python -m pip uninstall '
            f'-y {foreign}') in ' '.join(result.stdout.split())
    assert not (venv / 'constraints.txt').exists()  # nothing was installed
