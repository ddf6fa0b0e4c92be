"""Fixtures that several test files share, and the rule that keeps
``make test-fast`` (``-m "not slow"``) fast: no test outside the slow ones
makes the Runner train a detector or segmentor.

Tests are marked slow by the fixtures they use: one that uses a fixture of
TRAINING_FIXTURES, directly or through another fixture, is slow, so that a
new test of a training's results cannot leak into the fast suite. And while
a test that is not slow runs (its fixtures' setup included), the Runner
refuses to train a detector or segmentor, failing the test with a message
that says what to do: that catches a new fixture that trains, or a test
that calls tools/train.py itself. Trainings in another process (mim train,
tools/dist_train.sh) are outside its reach: their tests are marked slow.
"""
import pytest
import torch

from .utils import FIXTURES, HF_ARCH, load_tool

# Fixtures that train a detector or segmentor with tools/train.py or mim
TRAINING_FIXTURES = frozenset({
    'demo_run',  # test_detection.py, test_segmentation.py
    'detection_run',  # test_gather_results.py
    'segmentation_run',  # test_gather_results.py
    'detection_runs',  # test_runs.py
    'mim_runs',  # test_packaging.py
    'upstream_mim_train',  # test_packaging.py
})


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES.intersection(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.slow)


# the test running now, when it is not marked slow
_fast_test = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _fast_test
    _fast_test = None if item.get_closest_marker('slow') else item
    try:
        yield
    finally:
        _fast_test = None


def refuse_training_in_fast_tests(runner):
    """Fails the running test if it is not marked slow and ``runner`` would
    train a detector or segmentor."""
    from mmdet.models.detectors import BaseDetector
    from mmengine.model import is_model_wrapper
    from mmseg.models.segmentors import BaseSegmentor
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    if _fast_test is not None and isinstance(model,
                                             (BaseDetector, BaseSegmentor)):
        pytest.fail(
            f'{_fast_test.nodeid} is not marked slow, but the Runner is to '
            f'train a {type(model).__name__}: mark the test slow, or name '
            f'the fixture that trains in TRAINING_FIXTURES (tests/'
            f'conftest.py)')


@pytest.fixture(scope='session', autouse=True)
def no_training_in_fast_tests():
    """Makes the Runner check :func:`refuse_training_in_fast_tests` before
    it trains, for the whole session."""
    from mmengine.runner import Runner
    train = Runner.train

    def checked_train(runner):
        refuse_training_in_fast_tests(runner)
        return train(runner)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Runner, 'train', checked_train)
        yield


def _make_shapes(tmp_path_factory, task):
    """The built-in shapes data for ``task``: 16 training and 8 validation
    images of 128x128 (tools/misc/make_shapes_dataset.py; image i of a split
    is the same whatever the counts)."""
    root = tmp_path_factory.mktemp(f'shapes_{task}')
    load_tool('misc/make_shapes_dataset.py').main([
        '--task', task, '--out',
        str(root), '--num-train', '16', '--num-val', '8'
    ])
    return root


@pytest.fixture(scope='session')
def shapes(tmp_path_factory):
    """The instance shapes data (COCO layout), for the Mask R-CNN demo."""
    return _make_shapes(tmp_path_factory, 'instance')


@pytest.fixture(scope='session')
def shapes_seg(tmp_path_factory):
    """The semantic shapes data (ADE20K layout), for the UperNet demo."""
    return _make_shapes(tmp_path_factory, 'semseg')


@pytest.fixture(scope='session')
def official_keys_path():
    """Key lists and shapes of the released CvT-13/21/W24 checkpoints."""
    return FIXTURES / 'cvt_official_keys.json'


@pytest.fixture(scope='session')
def official_tiny_path():
    """A small official-format model: spec, state_dict and reference
    outputs of the official code."""
    return FIXTURES / 'cvt_official_tiny.pt'


@pytest.fixture(scope='session')
def hf_model():
    """A transformers CvtForImageClassification of HF_ARCH's shapes, with
    every weight and BN statistic random, so that a mixed-up tensor cannot
    go unnoticed."""
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.CvtConfig(
        embed_dim=HF_ARCH['embed_dims'],
        num_heads=HF_ARCH['num_heads'],
        depth=HF_ARCH['depths'],
        num_labels=7)
    model = transformers.CvtForImageClassification(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if 'running_var' in name:
                tensor.uniform_(0.5, 2.)
            elif 'num_batches_tracked' not in name:
                tensor.normal_(0, 0.2)
    return model


@pytest.fixture(scope='session')
def hf_dir(hf_model, tmp_path_factory):
    """save_pretrained's directory: config.json and model.safetensors."""
    directory = tmp_path_factory.mktemp('hf') / 'cvt-tiny'
    hf_model.save_pretrained(directory)
    return directory
