"""Loading weights through ``init_cfg=dict(type='Pretrained', ...)``."""
import pytest
import torch

from mmcvt.models import CvT
from mmcvt.models.backbones.cvt_checkpoint import hf_to_official
from .utils import HF_ARCH, pretrained_cvt


@pytest.fixture(scope='module')
def official_state_dict(hf_model):
    """An official-format state_dict of HF_ARCH (with a head and the cls
    token), random in every tensor: transformers' weights under the
    official names, a 1:1 renaming that test_model_converter checks."""
    return hf_to_official(hf_model.state_dict())


def save(obj, tmp_path, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def load(checkpoint, **kwargs):
    return pretrained_cvt(checkpoint, HF_ARCH, **kwargs)


def assert_holds_official_weights(model, official):
    ours = model.state_dict()
    torch.testing.assert_close(ours['stages.0.patch_embed.projection.weight'],
                               official['stage0.patch_embed.proj.weight'])
    torch.testing.assert_close(ours['stages.2.blocks.1.ffn.layers.1.weight'],
                               official['stage2.blocks.1.mlp.fc2.weight'])
    # k and v fused: k's BN channels interleaved with v's, k's Linear first
    torch.testing.assert_close(
        ours['stages.1.blocks.0.attn.conv_proj_kv.bn.running_var'][0::2],
        official['stage1.blocks.0.attn.conv_proj_k.bn.running_var'])
    torch.testing.assert_close(
        ours['stages.1.blocks.0.attn.proj_kv.weight'][48:],
        official['stage1.blocks.0.attn.proj_v.weight'])


@pytest.mark.parametrize('wrapper', [None, 'state_dict', 'model'])
def test_official_checkpoints_load_plain_or_wrapped(official_state_dict,
                                                    tmp_path, wrapper):
    obj = official_state_dict if wrapper is None else {
        wrapper: official_state_dict
    }
    model = load(save(obj, tmp_path))
    assert_holds_official_weights(model, official_state_dict)


def test_official_cls_token_is_used_when_kept(official_state_dict, tmp_path):
    model = load(save(official_state_dict, tmp_path), with_cls_token=True)
    torch.testing.assert_close(model.stages[2].cls_token,
                               official_state_dict['stage2.cls_token'])


def test_official_cls_token_is_dropped_when_not_kept(official_state_dict,
                                                     tmp_path):
    model = load(save(official_state_dict, tmp_path), with_cls_token=False)
    assert 'stages.2.cls_token' not in model.state_dict()


def test_official_final_norm_loads_into_the_last_output_norm(
        official_state_dict, tmp_path):
    model = load(save(official_state_dict, tmp_path))
    torch.testing.assert_close(model.norm2.weight,
                               official_state_dict['norm.weight'])
    # the other output norms are new and keep their initialisation
    torch.testing.assert_close(model.norm0.weight, torch.ones(24))


def test_official_final_norm_is_dropped_without_a_last_output_norm(
        official_state_dict, tmp_path):
    model = load(save(official_state_dict, tmp_path), out_norm=False)
    assert_holds_official_weights(model, official_state_dict)


def test_official_head_is_dropped(official_state_dict, tmp_path):
    model = load(save(official_state_dict, tmp_path))
    assert not [k for k in model.state_dict() if k.startswith('head')]


def random_mmcvt_state_dict():
    torch.manual_seed(1)
    source = CvT(HF_ARCH)
    for param in source.parameters():
        torch.nn.init.normal_(param)
    return source.state_dict()


@pytest.mark.parametrize('prefix', ['', 'backbone.'])
def test_own_checkpoints_load_with_or_without_backbone_prefix(
        tmp_path, prefix):
    weights = random_mmcvt_state_dict()
    ckpt = {'state_dict': {prefix + k: v for k, v in weights.items()}}
    if prefix:  # a detector checkpoint also holds the rest of the detector
        ckpt['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.ones(1)
        ckpt['meta'] = {'epoch': 12}
    model = load(save(ckpt, tmp_path))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], msg=key)


def test_a_missing_key_is_an_error_that_names_it(official_state_dict,
                                                 tmp_path):
    broken = dict(official_state_dict)
    del broken['stage1.blocks.0.attn.proj_v.weight']
    # without its v, the k Linear cannot be fused: both are named
    with pytest.raises(
            ValueError,
            match=r'missing keys \[stages\.1\.blocks\.0\.attn'
            r'\.proj_kv\.weight\].*unexpected keys \[stages\.1'
            r'\.blocks\.0\.attn\.proj_k\.weight\]'):
        load(save(broken, tmp_path))


def test_an_unexpected_key_is_an_error_that_names_it(official_state_dict,
                                                     tmp_path):
    extra = dict(official_state_dict)
    extra['stage1.blocks.0.attn.rel_pos'] = torch.zeros(3)
    with pytest.raises(
            ValueError,
            match=r'unexpected keys \[stages\.1\.blocks\.0\.attn'
            r'\.rel_pos\]'):
        load(save(extra, tmp_path))


def test_a_checkpoint_of_another_arch_is_an_error_naming_the_keys(
        official_state_dict, tmp_path):
    path = save(official_state_dict, tmp_path)
    model = CvT('13', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match='shape mismatches.*stages.0'):
        model.init_weights()


def test_a_checkpoint_of_integers_is_an_error_naming_the_tensors(tmp_path):
    weights = random_mmcvt_state_dict()
    key = 'stages.0.patch_embed.projection.weight'
    weights[key] = weights[key].round().to(torch.int64)
    with pytest.raises(
            ValueError,
            match=r'integers for floating point or the reverse \[stages\.0\.'
            r'patch_embed\.projection\.weight: checkpoint torch\.int64, '
            r'model torch\.float32\]'):
        load(save(weights, tmp_path))


def test_an_unreadable_checkpoint_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / 'garbage.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match='garbage.pth'):
        load(str(path))


def test_a_missing_checkpoint_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load(str(tmp_path / 'nowhere.pth'))


def test_a_checkpoint_of_another_model_is_an_error(tmp_path):
    path = save({'conv1.weight': torch.zeros(1)}, tmp_path, 'resnet.pth')
    with pytest.raises(ValueError, match='resnet.pth.*not a CvT checkpoint'):
        load(path)


def test_own_output_norms_the_model_lacks_are_dropped(tmp_path):
    weights = random_mmcvt_state_dict()  # with norm0..norm2
    model = load(save(weights, tmp_path), out_norm=False)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[key], msg=key)
