"""python -m mmcvt.doctor: one screen on the environment, each problem with
the command that fixes it, exit status 1 when something mmcvt needs is
missing. The failure branches run on this (working) environment with the
missing thing faked."""
import io
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from huggingface_hub import constants
from mmengine.registry import MODELS

from mmcvt import config_paths, doctor


def run_doctor():
    out = io.StringIO()
    status = doctor.report(doctor.run_checks(), out)
    return status, out.getvalue()


def fixes(printed):
    return printed.split('to fix:\n', 1)[1] if 'to fix:' in printed else ''


def fake_versions(monkeypatch, **versions):
    """Distributions of other versions (a string) or missing (None)."""
    real = metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(metadata, 'version', version)


@pytest.mark.slow
def test_this_environment_has_what_mmcvt_needs_on_one_screen():
    result = subprocess.run([sys.executable, '-m', 'mmcvt.doctor'],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 24  # one screen
    for expected in ('torch', 'mmcv 2.1.0', 'mmengine', 'mmdet 3.3.0',
                     'mmsegmentation 1.2.2', 'mmcv ops (NMS, RoIAlign) run',
                     'CUDA', 'CvT and QuickGELU in the mmdet scope',
                     'CvT and QuickGELU in the mmseg scope',
                     'packaged configs', 'Hugging Face cache'):
        assert expected in result.stdout
    assert ' FAIL ' not in result.stdout
    assert lines[-1] == 'mmcvt has what it needs'


def test_a_missing_package_fails_with_the_pip_command(monkeypatch):
    fake_versions(monkeypatch, mmdet=None)
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  mmdet is not installed (needs ==3.3.0)' in printed
    assert 'pip install "mmdet==3.3.0"' in fixes(printed)


def test_a_wrong_mmcv_fails_with_the_command_that_builds_its_ops(monkeypatch):
    fake_versions(monkeypatch, mmcv='2.2.0')
    status, printed = run_doctor()
    assert status == 1
    assert 'mmcv 2.2.0: mmcvt needs ==2.1.0' in printed
    assert 'MMCV_WITH_OPS=1 pip install --no-build-isolation' \
        in fixes(printed)


def test_a_torch_below_the_floor_fails(monkeypatch):
    fake_versions(monkeypatch, torch='2.4.1')
    status, printed = run_doctor()
    assert status == 1
    assert 'torch 2.4.1: mmcvt needs >=2.6' in printed
    assert 'pip install "torch>=2.6"' in fixes(printed)


def test_mmcv_without_its_compiled_ops_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)  # import fails
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  mmcv ops on CPU do not run' in printed
    assert 'import of mmcv._ext halted' in printed
    assert 'rebuild mmcv with its ops' in fixes(printed)


def test_a_gpu_without_mmcvs_cuda_ops_fails_with_the_cuda_build(monkeypatch):
    """A GPU that torch sees, where mmcv's ops do not run (here: there is
    none, so that they fail as a CPU-only build of mmcv does)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda i=0: 'Fake X')
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: False)
    monkeypatch.setattr(torch.version, 'cuda', '12.4')
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  mmcv ops on CUDA do not run' in printed
    assert 'FORCE_CUDA=1' in fixes(printed)
    assert 'CUDA 12.4: 1 x Fake X; bf16 no' in printed


def test_cvt_missing_from_the_registries_fails(monkeypatch):
    monkeypatch.delitem(MODELS._module_dict, 'CvT')
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  CvT is not registered in the mmdet scope' in printed
    assert 'reinstall mmcvt' in fixes(printed)


def test_missing_packaged_configs_fail(monkeypatch, tmp_path):
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path / 'absent')
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  no packaged configs' in printed


def test_an_offline_cache_without_cvt_weights_warns(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    status, printed = run_doctor()
    assert status == 0  # training from scratch still works
    assert 'warn  Hugging Face cache' in printed and 'offline' in printed
    assert 'huggingface-cli download microsoft/cvt-13' in fixes(printed)


def test_the_cache_lists_the_cvt_weights_it_holds(monkeypatch, tmp_path):
    (tmp_path / 'models--microsoft--cvt-13').mkdir()
    (tmp_path / 'models--someone--else').mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    _, printed = run_doctor()
    assert 'CvT weights cached: microsoft/cvt-13\n' in printed


@pytest.mark.parametrize('name', ['onnx', 'onnxruntime'])
def test_a_missing_onnx_extra_is_no_failure(monkeypatch, name):
    fake_versions(monkeypatch, **{name: None})
    status, printed = run_doctor()
    assert status == 0
    assert f'ONNX export extra: {name} not installed' in printed


@pytest.mark.slow
@pytest.mark.parametrize('module, fix', [
    ('mmengine', 'pip install "mmengine<0.11,>=0.10.0"'),
    ('mmcv', 'MMCV_WITH_OPS=1 pip install --no-build-isolation'),
])
def test_a_module_missing_to_import_mmcvt_says_what_to_install(module, fix):
    # `import mmcvt` runs before the doctor can: it gives the command itself
    result = subprocess.run([
        sys.executable, '-c',
        f'import sys; sys.modules[{module!r}] = None; import runpy; '
        f'runpy.run_module("mmcvt.doctor", run_name="__main__")'
    ],
                            capture_output=True,
                            text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f'ImportError: mmcvt needs {module}, which this '
                           f'environment lacks: ')
    assert fix in last
