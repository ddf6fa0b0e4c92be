"""The edit-test loop: ``make test-fast`` (``-m "not slow"``) makes the
Runner train no detector or segmentor (see conftest.py)."""
from types import SimpleNamespace

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from .conftest import TRAINING_FIXTURES, refuse_training_in_fast_tests
from .test_checkpoints import build_linear_runner
from .tiny_models import write_tiny_config


def test_every_test_that_uses_a_training_fixture_is_slow(request):
    leaks = [
        item.nodeid for item in request.session.items
        if TRAINING_FIXTURES.intersection(item.fixturenames)
        and not item.get_closest_marker('slow')
    ]
    assert leaks == []


def test_a_fast_test_that_would_train_a_segmentor_fails_saying_what_to_do(
        request, tmp_path):
    cfg = Config.fromfile(write_tiny_config('upernet', tmp_path))
    init_default_scope(cfg.default_scope)
    segmentor = MODELS.build(cfg.model)
    with pytest.raises(
            pytest.fail.Exception,
            match=f'{request.node.nodeid} is not marked slow, but the Runner '
            f'is to train a EncoderDecoder: mark the test slow, or name the '
            f'fixture'):
        refuse_training_in_fast_tests(SimpleNamespace(model=segmentor))


def test_a_fast_test_may_train_a_runner_of_a_linear_model(tmp_path):
    # the checkpoint and resume tests train such runners in a blink
    build_linear_runner(tmp_path, max_iters=1).train()
