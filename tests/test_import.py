"""What ``import mmcvt`` registers: the model and nothing else. The Runner,
the hooks and the checkpoint loaders come with ``mmcvt.engine`` and the
tools, so that upstream's own tools get CvT without mmcvt's Runner."""
import json
import subprocess
import sys

import pytest

from .utils import REPO

REGISTERED = '''
import json, sys
from mmengine.registry import HOOKS, MODELS, MODEL_WRAPPERS, RUNNERS
from mmengine.runner import CheckpointLoader

def ours(registry):
    return sorted(name for name, cls in registry.module_dict.items()
                  if cls.__module__.startswith('mmcvt'))

def loaders():
    return {prefix: f'{loader.__module__}.{loader.__name__}'
            for prefix, loader in CheckpointLoader._schemes.items()}

before = loaders()
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(dict(
    models=ours(MODELS), hooks=ours(HOOKS), runners=ours(RUNNERS),
    wrappers=ours(MODEL_WRAPPERS), loaders_changed=loaders() != before)))
'''


def registered_after(*modules):
    """What mmcvt has registered after importing ``modules`` in a fresh
    interpreter."""
    result = subprocess.run([sys.executable, '-c', REGISTERED, *modules],
                            capture_output=True,
                            text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope='module')
def after_import_mmcvt():
    return registered_after('mmcvt')


def test_import_mmcvt_registers_cvt_quickgelu_and_extra_levels(
        after_import_mmcvt):
    assert after_import_mmcvt['models'] == ['CvT', 'ExtraLevels', 'QuickGELU']


def test_import_mmcvt_registers_no_runner_hook_or_model_wrapper(
        after_import_mmcvt):
    assert after_import_mmcvt['runners'] == []
    assert after_import_mmcvt['hooks'] == []
    assert after_import_mmcvt['wrappers'] == []


def test_import_mmcvt_leaves_mmengines_checkpoint_loaders_as_they_are(
        after_import_mmcvt):
    assert not after_import_mmcvt['loaders_changed']


def test_a_config_asking_for_mmcvt_engine_gets_the_runner_and_hooks():
    registered = registered_after('mmcvt', 'mmcvt.engine')
    assert registered['runners'] == ['StrictCheckpointRunner']
    assert {
        'SafeCheckpointHook', 'StopOnNonFiniteLossHook', 'RandomStatesHook'
    } <= set(registered['hooks'])
    assert registered['wrappers'] == ['CPUDistributedDataParallel']
    # the tools install the loaders, not the import
    assert not registered['loaders_changed']
