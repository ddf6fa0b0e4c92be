"""Weights in the transformers format, from files, directories, hf:// and
URLs, checked against transformers' own CvT as an independent reference."""
import functools
import http.server
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

from mmcvt.fileio.checkpoint_loader import url_cache_path
from .utils import HF_ARCH, pretrained_cvt, relative_error

SIZES = [(224, 224), (97, 131), (64, 48), (33, 65)]


@pytest.fixture(scope='module')
def hf_bin(hf_model, tmp_path_factory):
    """The weights as the hub's pytorch_model.bin: a pickled state_dict."""
    path = tmp_path_factory.mktemp('hf_bin') / 'pytorch_model.bin'
    torch.save(hf_model.state_dict(), path)
    return path


def hf_hidden_states(hf_model, x):
    with torch.no_grad():
        return hf_model.cvt(x, output_hidden_states=True).hidden_states


def load_backbone(checkpoint):
    # transformers' CvT uses exact GELU
    return pretrained_cvt(
        checkpoint,
        HF_ARCH,
        act_cfg=dict(type='GELU'),
        with_cls_token=True,
        out_norm=False)


def assert_reproduces_transformers(model, hf_model):
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            outs = model(x)
        refs = hf_hidden_states(hf_model, x)
        assert len(outs) == len(refs) == 3
        for out, ref in zip(outs, refs):
            assert out.shape == ref.shape
            assert relative_error(out, ref) < 1e-5, (h, w)


def test_a_safetensors_file_reproduces_transformers(hf_model, hf_dir):
    model = load_backbone(hf_dir / 'model.safetensors')
    assert_reproduces_transformers(model, hf_model)


def test_a_bin_file_reproduces_transformers(hf_model, hf_bin):
    model = load_backbone(hf_bin)
    assert_reproduces_transformers(model, hf_model)


def test_a_directory_from_save_pretrained_loads(hf_model, hf_dir):
    model = load_backbone(hf_dir)
    assert_reproduces_transformers(model, hf_model)


def test_a_directory_of_a_bin_file_loads(hf_model, hf_bin):
    model = load_backbone(hf_bin.parent)
    assert_reproduces_transformers(model, hf_model)


def test_a_bare_cvt_model_without_the_cvt_prefix_loads(hf_model, tmp_path):
    path = tmp_path / 'cvt_model.safetensors'
    save_file({
        k: v.contiguous()
        for k, v in hf_model.cvt.state_dict().items()
    }, path)
    model = load_backbone(path)
    assert_reproduces_transformers(model, hf_model)


def test_the_format_is_told_from_the_keys_not_the_file_name(
        hf_model, tmp_path):
    # transformers weights saved by torch under a name that says otherwise
    path = tmp_path / 'CvT-13-224x224-IN-1k.pth'
    torch.save(hf_model.state_dict(), path)
    assert_reproduces_transformers(load_backbone(path), hf_model)


def test_a_directory_without_weights_is_an_error_naming_it(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        load_backbone(tmp_path)


# ---- hf:// ------------------------------------------------------------------
def fill_hub_cache(cache, repo, weights_file):
    """The layout huggingface_hub's cache has after a download of main."""
    commit = 'a' * 40
    root = cache / ('models--' + repo.replace('/', '--'))
    (root / 'refs').mkdir(parents=True)
    (root / 'refs' / 'main').write_text(commit)
    snapshot = root / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    (snapshot / 'model.safetensors').write_bytes(weights_file.read_bytes())


LOAD_FROM_HUB = '''
import sys, torch, mmcvt
from mmcvt.models import CvT
model = CvT({arch!r}, act_cfg=dict(type='GELU'), with_cls_token=True,
            out_norm=False, init_cfg=dict(type='Pretrained',
            checkpoint='hf://test-owner/cvt-tiny'))
model.init_weights()
torch.save(model.state_dict(), sys.argv[1])
'''


def run_offline(script, cache, *args):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE='1',
        HF_HUB_CACHE=str(cache),
        HF_HOME=str(cache.parent / 'hf_home'))
    return subprocess.run([sys.executable, '-c', script, *map(str, args)],
                          env=env,
                          capture_output=True,
                          text=True)


@pytest.mark.slow
def test_hf_url_loads_from_a_prefilled_cache_with_the_network_off(
        hf_model, hf_dir, tmp_path):
    cache = tmp_path / 'hub'
    fill_hub_cache(cache, 'test-owner/cvt-tiny', hf_dir / 'model.safetensors')
    out = tmp_path / 'loaded.pth'
    result = run_offline(LOAD_FROM_HUB.format(arch=HF_ARCH), cache, out)
    assert result.returncode == 0, result.stderr
    model = load_backbone(hf_dir)
    loaded = torch.load(out)
    assert loaded.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.slow
def test_hf_url_without_network_or_cache_is_a_clear_error(tmp_path):
    result = run_offline(
        LOAD_FROM_HUB.format(arch=HF_ARCH), tmp_path / 'hub',
        tmp_path / 'never.pth')
    assert result.returncode != 0
    assert 'no weights for hf://test-owner/cvt-tiny' in result.stderr
    assert 'local cache' in result.stderr
    assert not (tmp_path / 'never.pth').exists()


@pytest.mark.parametrize('url', ['hf://cvt-13', 'hf://a/b/c', 'hf:///x'])
def test_a_malformed_hf_url_is_an_error_that_shows_the_form(url):
    with pytest.raises(RuntimeError, match='hf://<owner>/<name>'):
        load_backbone(url)


# ---- http(s) ----------------------------------------------------------------
@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/www on localhost."""
    root = tmp_path / 'www'
    root.mkdir()
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f'http://127.0.0.1:{server.server_port}'
    server.shutdown()


def test_two_urls_with_the_same_file_name_do_not_collide(
        http_server, hf_model, monkeypatch, tmp_path):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    root, base = http_server
    first = hf_model.state_dict()
    second = {
        k: v + 1 if v.is_floating_point() else v
        for k, v in first.items()
    }
    for name, weights in (('first', first), ('second', second)):
        (root / name).mkdir()
        torch.save(weights, root / name / 'pytorch_model.bin')

    loaded = [
        load_backbone(f'{base}/{name}/pytorch_model.bin')
        for name in ('first', 'second')
    ]
    key = 'stages.0.patch_embed.projection.weight'
    hf_key = 'cvt.encoder.stages.0.embedding.convolution_embeddings.' \
        'projection.weight'
    assert torch.equal(loaded[0].state_dict()[key], first[hf_key])
    assert torch.equal(loaded[1].state_dict()[key], second[hf_key])
    assert url_cache_path(f'{base}/first/pytorch_model.bin') != \
        url_cache_path(f'{base}/second/pytorch_model.bin')
