"""Which Python the shell scripts in tools/ run: a PYTHON the caller sets,
else the checkout's .venv, else `python` from PATH. Tested on a copy of the
scripts whose interpreters, and srun, only say that they ran."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .utils import REPO

SCRIPTS = {
    'dist_train.sh': ['config.py', '2'],
    'dist_test.sh': ['config.py', 'model.pth', '2'],
    'slurm_train.sh': ['partition', 'job', 'config.py', 'work_dir'],
}
FAKE = '#!/bin/sh\necho "{name} ran: $0"\n'


def fake_command(path, name):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE.format(name=name))
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path):
    """tools/ of a checkout without .venv, and a PATH whose `python` and
    `srun` are fakes."""
    tools = tmp_path / 'checkout' / 'tools'
    tools.mkdir(parents=True)
    for name in [*SCRIPTS, 'python.sh']:
        shutil.copy(REPO / 'tools' / name, tools)
    bin_dir = tmp_path / 'bin'
    fake_command(bin_dir / 'python', 'path python')
    # srun runs its command: here, the argument that names a python
    (bin_dir / 'srun').write_text(
        '#!/bin/sh\nfor arg; do case $arg in python|*/python) exec "$arg";;'
        ' esac; done\nexit 1\n')
    (bin_dir / 'srun').chmod(0o755)
    return tools.parent, bin_dir


def run_script(checkout, script, python=None):
    """Runs the copy of a script, with PYTHON set only if python is given."""
    root, bin_dir = checkout
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = f'{bin_dir}:{env["PATH"]}'
    if python is not None:
        env['PYTHON'] = str(python)
    result = subprocess.run(
        ['bash', str(root / 'tools' / script), *SCRIPTS[script]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ran(output):
    """The fake that ran, and the path it ran as."""
    name, path = output.strip().split(' ran: ')
    return name, Path(path).resolve()


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_run_the_checkouts_venv_when_there_is_one(checkout, script):
    venv_python = fake_command(checkout[0] / '.venv' / 'bin' / 'python',
                               'venv python')
    assert ran(run_script(checkout, script)) == ('venv python', venv_python)


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_run_python_from_path_without_a_venv(checkout, script):
    assert ran(run_script(checkout, script))[0] == 'path python'


@pytest.mark.parametrize('script', SCRIPTS)
def test_a_python_the_caller_sets_wins_over_the_venv(checkout, script,
                                                     tmp_path):
    fake_command(checkout[0] / '.venv' / 'bin' / 'python', 'venv python')
    chosen = fake_command(tmp_path / 'chosen' / 'python', 'chosen python')
    output = run_script(checkout, script, python=chosen)
    assert ran(output) == ('chosen python', chosen)
