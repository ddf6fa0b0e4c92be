"""tools/model_converters/cvt2mmcvt.py: any supported format to mmcvt's."""
import json

import torch
from safetensors.torch import load_file

from mmcvt.models import CvT
from mmcvt.models.backbones.cvt_arch import arch_from_official_spec
from mmcvt.models.backbones.cvt_checkpoint import hf_to_official
from .utils import (HF_ARCH, load_tool, pretrained_cvt, relative_error,
                    separate_kv)

converter = load_tool('model_converters/cvt2mmcvt.py')


def run(*args):
    return converter.main([str(a) for a in args])


def backbone_from(path, arch, **kwargs):
    return pretrained_cvt(
        path, arch, with_cls_token=True, out_norm=False, **kwargs)


def test_hf_weights_convert_to_a_backbone_that_reproduces_transformers(
        hf_model, hf_dir, tmp_path):
    dst = tmp_path / 'converted.pth'
    assert run(hf_dir, dst, '--arch', json.dumps(HF_ARCH)) == 0
    model = backbone_from(dst, HF_ARCH, act_cfg=dict(type='GELU'))
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        refs = hf_model.cvt(x, output_hidden_states=True).hidden_states
        outs = model(x)
    for out, ref in zip(outs, refs):
        assert relative_error(out, ref) < 1e-5


def test_official_weights_convert_to_a_backbone_that_reproduces_them(
        official_tiny_path, tmp_path):
    reference = torch.load(official_tiny_path)
    arch = arch_from_official_spec(reference['spec'])
    dst = tmp_path / 'converted.pth'
    assert run(official_tiny_path, dst, '--arch', json.dumps(arch)) == 0
    model = backbone_from(dst, arch)
    case = reference['cases'][1]
    with torch.no_grad():
        outs = model(case['input'])
    for out, ref in zip(outs, case['stage_outputs']):
        assert relative_error(out, ref) < 1e-5


def test_official_and_hf_forms_of_the_same_weights_convert_identically(
        hf_model, tmp_path):
    # hf_to_official is shown right by the tests that reproduce transformers
    hf_weights = hf_model.state_dict()
    torch.save(hf_weights, tmp_path / 'hf.bin')
    torch.save(hf_to_official(hf_weights), tmp_path / 'official.pth')
    for name in ('hf.bin', 'official.pth'):
        assert run(tmp_path / name, tmp_path / f'{name}.out', '--arch',
                   json.dumps(HF_ARCH)) == 0
    from_hf = torch.load(tmp_path / 'hf.bin.out')
    from_official = torch.load(tmp_path / 'official.pth.out')
    assert from_hf.keys() == from_official.keys()
    for key in from_hf:
        assert torch.equal(from_hf[key], from_official[key]), key


def test_converted_tensors_hold_the_source_numbers_unchanged(
        hf_model, hf_dir, tmp_path):
    assert run(hf_dir, tmp_path / 'out.pth', '--arch',
               json.dumps(HF_ARCH)) == 0
    # k and v apart again: one converted tensor for each source tensor
    converted = separate_kv(torch.load(tmp_path / 'out.pth'))
    source = {
        k: v
        for k, v in hf_model.state_dict().items()
        if not k.startswith('classifier.')
    }
    assert len(converted) == len(source)
    fingerprints = sorted(
        (tuple(v.shape), v.double().sum().item()) for v in source.values())
    assert sorted((tuple(v.shape), v.double().sum().item())
                  for v in converted.values()) == fingerprints


def test_safetensors_output_holds_the_same_tensors_as_pth(hf_dir, tmp_path):
    arch = json.dumps(HF_ARCH)
    assert run(hf_dir, tmp_path / 'a.pth', '--arch', arch) == 0
    assert run(hf_dir, tmp_path / 'a.safetensors', '--arch', arch,
               '--safetensors') == 0
    pth = torch.load(tmp_path / 'a.pth')
    safetensors = load_file(tmp_path / 'a.safetensors')
    assert pth.keys() == safetensors.keys()
    assert all(torch.equal(pth[k], safetensors[k]) for k in pth)


def test_the_summary_names_the_format_the_counts_and_what_was_dropped(
        hf_dir, tmp_path, capsys):
    assert run(hf_dir, tmp_path / 'out.pth', '--arch',
               json.dumps(HF_ARCH)) == 0
    summary = capsys.readouterr().out
    assert '(hf format)' in summary
    params = sum(
        p.numel()
        for p in CvT(HF_ARCH, with_cls_token=True, out_indices=2).parameters())
    assert f'{params:,} parameters' in summary
    assert 'dropped: head.bias, head.weight' in summary


def test_the_arch_is_detected_from_the_tensor_shapes(tmp_path, capsys):
    torch.save(CvT('13').state_dict(), tmp_path / 'cvt13.pth')
    assert run(tmp_path / 'cvt13.pth', tmp_path / 'out.pth') == 0
    assert 'arch:    13 (detected from the shapes)' in capsys.readouterr().out


def test_weights_matching_no_preset_need_an_arch(hf_dir, tmp_path, capsys):
    assert run(hf_dir, tmp_path / 'out.pth') == 1
    assert 'match no preset' in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()


def test_a_mismatch_is_an_error_naming_the_keys_and_writes_nothing(
        hf_dir, tmp_path, capsys):
    wrong = dict(HF_ARCH, depths=[1, 2, 2])
    assert run(hf_dir, tmp_path / 'out.pth', '--arch', json.dumps(wrong)) == 1
    err = capsys.readouterr().err
    assert 'unexpected keys [stages.2.blocks.2.' in err
    assert 'nothing was written' in err
    assert not (tmp_path / 'out.pth').exists()
