"""Downloads stay in their cache, and only whole checkpoints are kept: URLs
through mmcvt's http(s) loader, hub names through hf://."""
import http.server
import threading

import pytest
import torch

from mmcvt.fileio.checkpoint_loader import load_checkpoint_file, url_cache_path


class Server:
    """A local HTTP server whose answer a test sets: status, body and the
    Content-Length it claims."""

    def __init__(self):
        self.status, self.body, self.claimed_length = 200, b'', None
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):

            def do_GET(self):
                server.requests.append(self.path)
                self.send_response(server.status)
                length = server.claimed_length or len(server.body)
                self.send_header('Content-Length', str(length))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.base = f'http://127.0.0.1:{self.httpd.server_port}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    server = Server()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """torch.hub's directory, where URL downloads are cached."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home'


@pytest.fixture
def weights_bytes(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'w': torch.arange(3.)}, path)
    return path.read_bytes()


def files_under(directory):
    return sorted(p for p in directory.rglob('*') if p.is_file())


@pytest.mark.parametrize('ending', ['/.', '/..', '/', '/weights%2F..'])
def test_a_url_is_cached_inside_its_own_folder_whatever_it_ends_in(
        ending, server, torch_home, weights_bytes):
    server.body = weights_bytes
    url = f'{server.base}/models{ending}'
    loaded = load_checkpoint_file(url)
    assert torch.equal(loaded['w'], torch.arange(3.))
    cached, = files_under(torch_home)
    assert str(cached) == url_cache_path(url)
    assert cached.parent.parent == torch_home / 'hub' / 'checkpoints'
    # a second load reads the cache
    load_checkpoint_file(url)
    assert len(server.requests) == 1


def test_an_html_page_served_as_a_checkpoint_is_named_and_not_cached(
        server, torch_home, weights_bytes):
    server.body = b'<!DOCTYPE html><html><body>Sign in</body></html>'
    url = f'{server.base}/model.pth'
    with pytest.raises(
            ValueError,
            match=f'{url} sent no checkpoint: it is an HTML page'
            r'.*nothing was cached'):
        load_checkpoint_file(url)
    assert files_under(torch_home) == []
    # the server fixed: the next load downloads again, and works
    server.body = weights_bytes
    assert torch.equal(load_checkpoint_file(url)['w'], torch.arange(3.))


def test_a_download_cut_short_is_not_cached(server, torch_home, weights_bytes):
    server.body = weights_bytes[:100]
    server.claimed_length = len(weights_bytes)
    url = f'{server.base}/model.pth'
    with pytest.raises(
            ValueError,
            match=f'the download of {url} was cut short: 100 of '
            f'{len(weights_bytes)} bytes arrived; nothing was '
            f'cached'):
        load_checkpoint_file(url)
    assert files_under(torch_home) == []


def test_an_http_error_names_the_url(server, torch_home):
    server.status, server.body = 404, b'not here'
    url = f'{server.base}/model.pth'
    with pytest.raises(
            OSError, match=f'cannot download {url}: HTTP Error '
            f'404'):
        load_checkpoint_file(url)
    assert files_under(torch_home) == []


@pytest.mark.parametrize('url', [
    'hf://owner/name@../../../../outside', 'hf://owner/name@main/../../x',
    'hf://../name', 'hf://owner/..', 'hf://owner/na--me', 'hf://owner/.x'
])
def test_hub_names_that_would_leave_the_cache_are_refused_before_any_download(
        url, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, 'hf_hub_download',
                        pytest.fail)  # must not be reached
    with pytest.raises(ValueError, match=f'{url!r}'):
        load_checkpoint_file(url)
