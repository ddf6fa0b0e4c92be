import pytest
import torch

from .utils import FIXTURES, HF_ARCH, load_tool


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
