"""python -m mmcvt.doctor: one screen on the environment, each problem with
the command that fixes it, exit status 1 when something mmcvt needs is
missing. The failure branches run on this (working) environment with the
missing thing faked, and so does the stack that is not installed here: an
environment of the other stack is faked by its distributions' metadata.

The names and versions below are those of an environment that each stack's
pins describe (requirements/<stack>/), as `make install [STACK=onedl]`
makes it."""
import importlib.util
import io
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from mmengine.registry import MODELS

from mmcvt import config_paths, doctor

# what `make install` and `make install STACK=onedl` install, besides what
# both stacks share
STACK_VERSIONS = {
    'upstream': {
        'mmcv': '2.1.0',
        'mmengine': '0.10.7',
        'mmdet': '3.3.0',
        'mmsegmentation': '1.2.2',
        'numpy': '1.26.4',
        'opencv-python': '4.11.0.86',
    },
    'onedl': {
        'onedl-mmcv': '2.3.6',
        'onedl-mmengine': '0.10.12',
        'onedl-mmdetection': '3.5.1',
        'onedl-mmsegmentation': '1.4.2',
        'numpy': '2.2.6',
        'opencv-python': '4.12.0.88',
    },
}
STACK_NAMES = list(STACK_VERSIONS)


def run_doctor():
    out = io.StringIO()
    status = doctor.report(doctor.run_checks(), out)
    return status, out.getvalue()


def fixes(printed):
    return printed.split('to fix:\n', 1)[1] if 'to fix:' in printed else ''


def fake_versions(monkeypatch, **versions):
    """Distributions of other versions (a string) or missing (None), as the
    doctor sees them; the libraries' imports still read the real metadata
    (OneDL's mmdet/version.py reads that of onedl-mmdetection)."""
    real = doctor.installed_version

    def installed_version(name):
        return versions[name] if name in versions else real(name)

    monkeypatch.setattr(doctor, 'installed_version', installed_version)


def fake_stack(monkeypatch, name):
    """An environment of the stack ``name`` at its pinned versions, without
    the other stack's distributions."""
    versions = dict.fromkeys(
        (dist for other in STACK_VERSIONS.values() for dist in other), None)
    versions.update(STACK_VERSIONS[name])
    fake_versions(monkeypatch, **versions)
    return next(stack for stack in doctor.STACKS if stack.name == name)


# a finder of {module} whose loader raises {error}, an expression
FAILING_IMPORT = """\
import importlib.abc
import importlib.util


class Loader(importlib.abc.Loader):

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise {error}


class Finder(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            return importlib.util.spec_from_loader(name, Loader())
        return None
"""

# runs FAILING_IMPORT as code of the file {filename}
FAILING_IMPORT_SETUP = """\
namespace = {{}}
exec(compile({source!r}, {filename!r}, 'exec'), namespace)
sys.meta_path.insert(0, namespace['Finder']())
"""


def failing_import(module, error):
    """Python code that makes each import of ``module`` raise ``error`` (an
    expression) from the file that holds the module: the traceback runs
    through the library that fails, as a real failure's does."""
    return FAILING_IMPORT_SETUP.format(
        source=FAILING_IMPORT.format(module=module, error=error),
        filename=importlib.util.find_spec(module).origin)


def fail_import(monkeypatch, module, error):
    """Makes each import of ``module`` raise ``error`` (an expression), as a
    broken install of it would, in this process."""
    monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    exec(failing_import(module, error), {'sys': sys})


@pytest.mark.slow
def test_this_environment_has_what_mmcvt_needs_on_one_screen():
    result = subprocess.run([sys.executable, '-m', 'mmcvt.doctor'],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 24  # one screen
    stack = doctor.find_stack()
    libraries = [
        f'{name} {STACK_VERSIONS[stack.name][name]}'
        for name in stack.libraries
    ]
    for expected in (f'stack: {stack.title}', 'torch', *libraries,
                     'mmcv ops (NMS, RoIAlign) run', 'CUDA',
                     'CvT and QuickGELU in the mmdet scope',
                     'CvT and QuickGELU in the mmseg scope',
                     'packaged configs', 'Hugging Face cache'):
        assert expected in result.stdout
    assert ' FAIL ' not in result.stdout
    assert lines[-1] == 'mmcvt has what it needs'


# ---- the stack --------------------------------------------------------------
@pytest.mark.parametrize('name', STACK_NAMES)
def test_each_stacks_libraries_are_pinned_in_its_extra(name):
    stack, = (stack for stack in doctor.STACKS if stack.name == name)
    pinned = {requirement.name for requirement in doctor.requirements(stack)}
    assert set(stack.libraries) <= pinned


@pytest.mark.parametrize('name', STACK_NAMES)
def test_the_stack_found_is_checked_against_its_own_pins(monkeypatch, name):
    stack = fake_stack(monkeypatch, name)
    status, printed = run_doctor()
    assert status == 0, printed
    assert (f'ok  stack: {stack.title} ({", ".join(stack.libraries)}); '
            f'checked against mmcvt\'s \'{name}\' pins') in printed
    for requirement in doctor.requirements(stack):
        if requirement.name in stack.libraries + ('numpy', ):
            version = STACK_VERSIONS[name][requirement.name]
            assert (f'ok  {requirement.name} {version} (needs '
                    f'{requirement.specifier})') in printed


def test_the_onedl_stack_is_held_to_numpy_2(monkeypatch):
    fake_stack(monkeypatch, 'onedl')
    fake_versions(monkeypatch, numpy='1.26.4')
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  numpy 1.26.4: mmcvt needs <2.3,>2' in printed
    assert 'pip install "numpy<2.3,>2"' in fixes(printed)


@pytest.mark.parametrize('name', STACK_NAMES)
def test_the_other_stacks_library_beside_fails(monkeypatch, name):
    """The same modules from two stacks (as onedl-mmengine installed over
    an upstream environment): one stack's files over the other's."""
    stack = fake_stack(monkeypatch, name)
    other, = (other for other in doctor.STACKS if other != stack)
    fake_versions(monkeypatch, **{other.libraries[1]: '0.10.99'})
    status, printed = run_doctor()
    assert status == 1
    assert (f'FAIL  two stacks at once, which install the same modules: '
            f'{", ".join(stack.libraries)} ({stack.title}) and '
            f'{other.libraries[1]} ({other.title})') in printed
    assert f'pip uninstall -y {other.libraries[1]},' in fixes(printed)


def test_no_stack_at_all_fails_with_both_install_commands(monkeypatch):
    fake_versions(
        monkeypatch,
        **dict.fromkeys((dist for stack in doctor.STACKS
                         for dist in stack.libraries), None))
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  no stack of OpenMMLab libraries' in printed
    assert ('`make install` or `make install STACK=onedl` in a checkout'
            in fixes(printed))


# ---- the packages -----------------------------------------------------------
@pytest.mark.parametrize('name', STACK_NAMES)
def test_a_missing_package_fails_with_the_pip_command(monkeypatch, name):
    stack = fake_stack(monkeypatch, name)
    mmdet = stack.distribution('mmdet')
    version = STACK_VERSIONS[name][mmdet]
    fake_versions(monkeypatch, **{mmdet: None})
    status, printed = run_doctor()
    assert status == 1
    assert f'FAIL  {mmdet} is not installed (needs =={version})' in printed
    assert f'pip install "{mmdet}=={version}"' in fixes(printed)


@pytest.mark.parametrize('name, wrong', [('upstream', '2.2.0'),
                                         ('onedl', '2.3.5')])
def test_a_wrong_mmcv_fails_with_the_command_that_builds_its_ops(
        monkeypatch, name, wrong):
    stack = fake_stack(monkeypatch, name)
    pinned = STACK_VERSIONS[name][stack.mmcv]
    fake_versions(monkeypatch, **{stack.mmcv: wrong})
    status, printed = run_doctor()
    assert status == 1
    assert f'{stack.mmcv} {wrong}: mmcvt needs =={pinned}' in printed
    assert (f'pip uninstall -y {stack.mmcv} && MMCV_WITH_OPS=1 pip install '
            f'--no-build-isolation --no-cache-dir "{stack.mmcv}=={pinned}"'
            in fixes(printed))


def test_a_torch_below_the_floor_fails(monkeypatch):
    fake_versions(monkeypatch, torch='2.4.1')
    status, printed = run_doctor()
    assert status == 1
    assert 'torch 2.4.1: mmcvt needs >=2.6' in printed
    assert 'pip install "torch>=2.6"' in fixes(printed)


def test_mmcv_without_its_compiled_ops_fails(monkeypatch):
    # what mmcv.ops raises when it cannot load mmcv._ext
    monkeypatch.setitem(sys.modules, 'mmcv.ops', None)
    status, printed = run_doctor()
    assert status == 1
    assert 'FAIL  mmcv ops on CPU do not run' in printed
    assert 'import of mmcv.ops halted' in printed
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


# ---- installed, and failing to import -------------------------------------
def test_an_installed_library_that_fails_to_import_is_no_pip_install(
        monkeypatch):
    """`pip install` of what is installed changes nothing: the doctor says
    what fails, and what reinstalls its files."""
    stack = doctor.find_stack()
    mmdet = stack.distribution('mmdet')
    version = metadata.version(mmdet)
    fail_import(monkeypatch, 'mmdet.registry',
                'ImportError("cannot import name \'Registry\'")')
    status, printed = run_doctor()
    assert status == 1
    assert (f'FAIL  mmdet fails to import, though {mmdet} {version} is '
            f'installed: ImportError: cannot import name \'Registry\''
            in printed)
    assert (f'pip install --force-reinstall --no-deps "{mmdet}=={version}"'
            in fixes(printed))
    assert f'pip install "{mmdet}' not in printed


def test_a_library_failing_next_to_an_unpinned_version_names_the_version(
        monkeypatch):
    """As mmdet 3.3.0 does next to mmcv 2.2.0: an AssertionError at import,
    which reinstalling mmdet does not mend, and the pinned mmcv does."""
    stack = doctor.find_stack()
    pinned = metadata.version(stack.mmcv)
    fake_versions(monkeypatch, **{stack.mmcv: '2.2.0'})
    fail_import(
        monkeypatch, 'mmdet.registry',
        'AssertionError("MMCV==2.2.0 is used but incompatible. Please '
        'install mmcv>=2.0.0rc4, <2.2.0.")')
    status, printed = run_doctor()
    assert status == 1
    fix = fixes(printed).splitlines()
    assert any(
        line.startswith('  FAIL  the environment does not match mmcvt\'s '
                        f'{stack.title} pins ({stack.mmcv} 2.2.0: mmcvt '
                        f'needs =={pinned})')
        and f'MMCV_WITH_OPS=1 pip install --no-build-isolation --no-cache-dir '
        f'"{stack.mmcv}=={pinned}"' in line for line in fix), fix


def test_a_compiled_module_that_does_not_load_is_rebuilt(monkeypatch):
    stack = doctor.find_stack()
    extension = importlib.util.find_spec('mmcv._ext').origin
    fail_import(
        monkeypatch, 'mmdet.registry',
        f'ImportError("undefined symbol: _ZN3c104cuda", name="mmcv._ext", '
        f'path={extension!r})')
    status, printed = run_doctor()
    assert status == 1
    assert (f'its compiled module {extension} does not load: it was built '
            f'against another torch, numpy or Python; rebuild it: pip '
            f'uninstall -y {stack.mmcv} && MMCV_WITH_OPS=1' in fixes(printed))


# ---- when `import mmcvt` itself fails ---------------------------------------
def test_an_error_of_mmcvts_own_code_is_raised_as_it_is():
    with pytest.raises(ValueError) as raised:
        config_paths.config_path('../setup.py')
    assert doctor.import_failure_message(raised.value) is None


# `python -m mmcvt.doctor` in a fresh interpreter, after {setup}
RUN_DOCTOR = """\
import runpy
import sys
{setup}
runpy.run_module('mmcvt.doctor', run_name='__main__')
"""


def import_mmcvt_and_run_the_doctor(setup, tmp_path):
    """The last line of what `python -m mmcvt.doctor` prints after the
    Python lines ``setup``, when `import mmcvt` fails before the doctor
    runs."""
    script = tmp_path / 'run_doctor.py'
    script.write_text(RUN_DOCTOR.format(setup=setup))
    result = subprocess.run([sys.executable, str(script)],
                            capture_output=True,
                            text=True)
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize('module', ['mmengine', 'mmcv'])
def test_a_module_missing_to_import_mmcvt_says_what_to_install(
        module, tmp_path):
    # `import mmcvt` runs before the doctor can: it gives the command itself
    stack = doctor.find_stack()
    requirement, = (
        r for r in doctor.requirements(stack)
        if r.name == stack.distribution(module))
    last = import_mmcvt_and_run_the_doctor(f'sys.modules[{module!r}] = None',
                                           tmp_path)
    assert last.startswith(f'ImportError: mmcvt needs {module}, which this '
                           f'environment lacks: ')
    if module == 'mmcv':
        assert (f'MMCV_WITH_OPS=1 pip install --no-build-isolation '
                f'--no-cache-dir "{requirement}"' in last)
    else:
        assert f'pip install "{requirement}"' in last
    assert f'(or `{stack.install}` in a checkout)' in last


@pytest.mark.slow
def test_a_broken_mmengine_is_reported_in_one_line_not_reinstalled(tmp_path):
    """An installed mmengine whose import raises (here an AttributeError,
    as on a numpy it does not fit): no traceback, no `pip install` of what
    is there."""
    stack = doctor.find_stack()
    mmengine = stack.distribution('mmengine')
    version = metadata.version(mmengine)
    last = import_mmcvt_and_run_the_doctor(
        failing_import(
            'mmengine.utils',
            'AttributeError("module \'numpy\' has no attribute \'float\'")'),
        tmp_path)
    assert last.startswith(
        f'ImportError: mmengine fails to import, though {mmengine} '
        f'{version} is installed: AttributeError: module \'numpy\' has no '
        f'attribute \'float\': ')
    assert (f'reinstall them: pip install --force-reinstall --no-deps '
            f'"{mmengine}=={version}", then `python -m mmcvt.doctor` checks '
            f'the rest' in last)


@pytest.mark.slow
def test_a_folder_that_hides_mmengine_is_named(tmp_path):
    """A folder named mmengine where Python looks first (the working
    directory, a path in PYTHONPATH) hides the installed one."""
    stack = doctor.find_stack()
    mmengine = stack.distribution('mmengine')
    (tmp_path / 'mmengine').mkdir()
    (tmp_path / 'mmengine' /
     '__init__.py').write_text('from .config import Config\n')
    last = import_mmcvt_and_run_the_doctor(
        f'sys.path.insert(0, {str(tmp_path)!r})', tmp_path)
    installed = Path(metadata.distribution(mmengine).locate_file('')).resolve()
    assert last.startswith('ImportError: mmengine fails to import, though ')
    assert (f'mmengine is imported from {tmp_path / "mmengine"}, which hides '
            f'the installed {mmengine} in {installed}: rename or move that '
            f'folder' in last)


@pytest.mark.slow
def test_a_name_mmcvt_imports_missing_from_mmengine_is_told_in_one_line(
        tmp_path):
    """What an mmengine of another version than the pins does: mmcvt's own
    import line raises, and names the module it imports from."""
    stack = doctor.find_stack()
    mmengine = stack.distribution('mmengine')
    version = metadata.version(mmengine)
    last = import_mmcvt_and_run_the_doctor(
        'import mmengine.model.weight_init\n'
        'del mmengine.model.weight_init.constant_init  # cvt.py imports it',
        tmp_path)
    assert last.startswith(
        f'ImportError: mmcvt cannot import what it needs from mmengine '
        f'({mmengine} {version}): ImportError: cannot import name '
        f'\'constant_init\' from \'mmengine.model.weight_init\'')
