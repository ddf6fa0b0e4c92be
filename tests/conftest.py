from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Data kept beside the checkout, never copied into it.
FIXTURES = REPO.parent / 'shared' / 'fixtures'


def _shared_fixture(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f'{path} is absent: this test needs the reference '
                    f'fixtures produced by the official CvT code, in '
                    f'../shared/fixtures beside the checkout')
    return path


@pytest.fixture(scope='session')
def official_keys_path():
    """Key lists and shapes of the released CvT-13/21/W24 checkpoints."""
    return _shared_fixture('cvt_official_keys.json')


@pytest.fixture(scope='session')
def official_tiny_path():
    """A small official-format model: spec, state_dict and reference
    outputs of the official code."""
    return _shared_fixture('cvt_official_tiny.pt')
