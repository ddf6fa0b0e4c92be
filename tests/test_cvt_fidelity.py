"""Fidelity to the official CvT code and its released weights, checked
against fixtures that the official code produced (../shared/fixtures)."""
import json

import pytest
import torch

from mmcvt.models import CvT
from mmcvt.models.backbones.cvt_arch import arch_from_official_spec
from mmcvt.models.backbones.cvt_checkpoint import BN_BUFFERS, convert_official
from .utils import pretrained_cvt, relative_error

# With a 1000-class head, as the official code counts them (BN buffers not
# counted); the paper rounds them to 20M, 32M and 277M.
OFFICIAL_PARAMS = {'13': 19_997_480, '21': 31_622_696, 'w24': 277_196_392}


@pytest.fixture(scope='module')
def official_keys(official_keys_path):
    with open(official_keys_path) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def tiny_reference(official_tiny_path):
    return torch.load(official_tiny_path)


@pytest.fixture
def tiny_official_model(tiny_reference, official_tiny_path):
    """The backbone with the fixture's weights, loaded through init_cfg.

    The fixture file itself is a checkpoint: its state_dict sits under
    "state_dict", next to the spec and the cases.
    """

    def build(with_cls_token):
        return pretrained_cvt(
            official_tiny_path,
            arch_from_official_spec(tiny_reference['spec']),
            with_cls_token=with_cls_token,
            out_norm=False)

    return build


@pytest.mark.parametrize('case', range(4))
def test_stage_outputs_match_the_official_code_with_the_cls_token(
        tiny_reference, tiny_official_model, case):
    model = tiny_official_model(with_cls_token=True)
    ref = tiny_reference['cases'][case]
    with torch.no_grad():
        outs = model(ref['input'])
    assert len(outs) == 3
    for out, expected in zip(outs, ref['stage_outputs']):
        assert out.shape == expected.shape
        assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize('case', range(4))
def test_the_cls_token_after_the_last_stage_matches_the_official_code(
        tiny_reference, tiny_official_model, case):
    model = tiny_official_model(with_cls_token=True)
    ref = tiny_reference['cases'][case]
    x = ref['input']
    with torch.no_grad():
        for stage in model.stages:
            tokens, (h, w), cls_token = stage(x)
            x = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
    assert relative_error(cls_token, ref['cls_token_out']) < 1e-5


@pytest.mark.parametrize('case', range(4))
def test_without_the_cls_token_the_first_two_stages_still_match(
        tiny_reference, tiny_official_model, case):
    model = tiny_official_model(with_cls_token=False)
    ref = tiny_reference['cases'][case]
    with torch.no_grad():
        outs = model(ref['input'])
    for out, expected in zip(outs[:2], ref['stage_outputs'][:2]):
        assert relative_error(out, expected) < 1e-5


def shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['13', '21', 'w24'])
@pytest.mark.parametrize('with_cls_token', [False, True])
def test_preset_parameters_map_exactly_onto_the_released_keys(
        official_keys, arch, with_cls_token):
    # shapes only: meta tensors go through the conversion as weights would
    released = {
        k: torch.empty(v, device='meta')
        for k, v in official_keys[f'cvt-{arch}'].items()
    }
    expected = shapes(convert_official(released))
    expected = {k: v for k, v in expected.items() if not k.startswith('head.')}
    if not with_cls_token:
        del expected['stages.2.cls_token']
    model = CvT(
        arch, with_cls_token=with_cls_token, out_norm=False, out_indices=2)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # the released final norm becomes the last stage's output norm
    ours.update({
        'norm2.weight': ours['stages.2.patch_embed.norm.weight'],
        'norm2.bias': ours['stages.2.patch_embed.norm.bias']
    })
    assert ours == expected


@pytest.mark.parametrize('arch', ['13', '21', 'w24'])
def test_released_key_lists_have_the_official_parameter_counts(
        official_keys, arch):
    released = official_keys[f'cvt-{arch}']
    count = sum(
        torch.Size(shape).numel() for key, shape in released.items()
        if not key.endswith(BN_BUFFERS))
    assert count == OFFICIAL_PARAMS[arch]


@pytest.mark.slow
@pytest.mark.parametrize('arch, width', [('13', 384), ('21', 384),
                                         ('w24', 1024)])
@pytest.mark.parametrize('with_cls_token', [False, True])
def test_parameter_count_is_the_official_one_without_head_with_out_norms(
        arch, width, with_cls_token):
    model = CvT(arch, with_cls_token=with_cls_token)
    stage_widths = [spec['embed_dims'] for spec in model.stage_specs]
    head = width * 1000 + 1000
    # the official final norm is our norm2; norm0 and norm1 are ours alone
    extra_norms = sum(2 * c for c in stage_widths[:-1])
    cls = 0 if with_cls_token else width
    expected = OFFICIAL_PARAMS[arch] - head - cls + extra_norms
    assert sum(p.numel() for p in model.parameters()) == expected
