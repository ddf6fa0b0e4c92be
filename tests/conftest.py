import pytest
import torch

from .utils import FIXTURES, HF_ARCH


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
