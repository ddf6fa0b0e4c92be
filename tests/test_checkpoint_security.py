"""A checkpoint never runs code: crafted files are refused unrun on every
path that loads one, the refusal says how to opt in, and ``import mmcvt``
leaves mmengine's loaders as they are."""
import copyreg
import hashlib
import logging.handlers
import pickle
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.runner import Runner

from mmcvt.fileio import TRUST_VARIABLE, load_from_local_file
from mmcvt.models import CvT
from .utils import REPO, STACK, TINY, load_tool, shapes_options

make_shapes = load_tool('misc/make_shapes_dataset.py')
train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
show_predictions = load_tool('misc/show_predictions.py')
cvt2mmcvt = load_tool('model_converters/cvt2mmcvt.py')


def sha256(path):
    """What ``sha256sum`` prints for the file, as
    docs/en/loading_and_security.md has users compute it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- crafted checkpoints ----------------------------------------------------
class ReducePayload:
    """Pickles as a call of exec: the classic payload."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code, )


class Reduced:
    """Callable, so that pickle takes one as the function of a reduce; only
    ever pickled."""

    def __call__(self, *args):
        raise AssertionError('only ever pickled')


class Attribute(Reduced):
    """Pickles as getattr(obj, name)."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


class Call(Reduced):
    """Pickles as function(*args)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def attribute_chain_to_eval(code):
    """eval(code), reached from Counter through getattr alone: the only
    globals the pickle names are builtins.getattr and collections.Counter."""
    module_globals = Attribute(Attribute(Counter, 'update'), '__globals__')
    builtins_dict = Call(Attribute(module_globals, 'get'), '__builtins__')
    return Call(Call(Attribute(builtins_dict, 'get'), 'eval'), code)


class HistoryBufferWithState:
    """Pickles as a HistoryBuffer with the given state, as mmengine's own
    pickle of one (NEWOBJ, then BUILD)."""

    def __init__(self, state):
        self.state = state

    @property
    def __class__(self):
        # pickle checks that a NEWOBJ's class is the object's
        return HistoryBuffer

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (HistoryBuffer, ), self.state


def swapped_statistics_buffer():
    """A HistoryBuffer whose pickled statistics methods give 'max' for
    'mean': only globals that mmengine's own checkpoints name."""
    methods = dict(
        min=HistoryBuffer.min,
        max=HistoryBuffer.max,
        current=HistoryBuffer.current,
        mean=HistoryBuffer.max)
    return HistoryBufferWithState(
        dict(
            max_length=10,
            _log_history=np.array([1., 3.]),
            _count_history=np.array([1, 1]),
            statistics_methods=methods))


@pytest.fixture(scope='module')
def marker(tmp_path_factory):
    """The file a payload would create, had it run."""
    path = tmp_path_factory.mktemp('payload') / 'payload-ran'
    yield path
    assert not path.exists(), 'a payload ran'


CRAFTED = {
    'reduce_payload':
    (lambda code: ReducePayload(code), r"the globals \['builtins.exec'\]"),
    'attribute_chain': (attribute_chain_to_eval,
                        r"getattr\(class collections.Counter, 'update'\), "
                        r'where mmengine only ever writes getattr'),
    'hostile_state': (lambda code: swapped_statistics_buffer(),
                      r"a HistoryBuffer whose statistics_methods are not "
                      r"HistoryBuffer's own"),
}


@pytest.fixture(scope='module')
def crafted(marker, tmp_path_factory):
    """{name: path} of checkpoints that look like a Runner's and carry a
    payload that would create ``marker``."""
    directory = tmp_path_factory.mktemp('crafted')
    code = f'open({str(marker)!r}, "w").close()'
    paths = {}
    for name, (payload, _) in CRAFTED.items():
        paths[name] = directory / f'{name}.pth'
        torch.save(
            {
                'state_dict': {
                    'backbone.w': torch.ones(1)
                },
                'message_hub': {
                    'log_scalars': payload(code)
                }
            }, paths[name])
    return paths


def refusal(name, path):
    """The message every path gives for a crafted file, as a regex."""
    return (f'{path} holds Python objects other than weights and mmengine '
            f'Runner state: .*{CRAFTED[name][1]}.* It was not loaded.*'
            f'{TRUST_VARIABLE}={sha256(path)}')


@pytest.fixture(params=sorted(CRAFTED))
def crafted_file(request, crafted):
    return request.param, crafted[request.param]


# ---- each load path ---------------------------------------------------------
LOAD_THROUGH_MMENGINE = '''
import sys
import mmcvt
from mmengine.runner import CheckpointLoader
from mmengine.runner.checkpoint import load_from_http, load_from_local
schemes = CheckpointLoader._schemes
assert schemes[''] is load_from_local, schemes['']
assert schemes['http://'] is schemes['https://'] is load_from_http
for path in sys.argv[1:]:
    try:
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    except Exception as error:
        print('refused', path, type(error).__name__)
'''


@pytest.mark.slow
@pytest.mark.skipif(STACK != 'upstream', reason='upstream mmengine')
def test_import_mmcvt_leaves_mmengines_loaders_refusing_each_file(
        crafted, marker):
    result = load_through_mmengine(crafted)
    for path in crafted.values():
        assert f'refused {path} UnpicklingError' in result.stdout
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.skipif(STACK != 'onedl', reason='onedl-mmengine')
def test_import_mmcvt_leaves_onedl_mmengines_loaders_as_they_are(
        crafted, marker):
    # onedl-mmengine's loader unpickles in full what its weights-only
    # read refuses: import mmcvt leaves it so, as it leaves every loader;
    # mmcvt's tools install their own (the tests above)
    load_through_mmengine(crafted)
    assert marker.exists()
    marker.unlink()


def load_through_mmengine(crafted):
    """Each crafted file through mmengine's CheckpointLoader after import
    mmcvt, in a fresh interpreter: other tests here install mmcvt's
    loaders."""
    result = subprocess.run([
        sys.executable, '-c', LOAD_THROUGH_MMENGINE,
        *map(str, crafted.values())
    ],
                            capture_output=True,
                            text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result


def test_cvts_init_cfg_refuses_each_file_unrun(crafted_file, marker):
    name, path = crafted_file
    model = CvT(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match=refusal(name, path)):
        model.init_weights()
    assert not marker.exists()


def test_the_converter_refuses_each_file_unrun(crafted_file, marker, tmp_path,
                                               capsys):
    name, path = crafted_file
    assert cvt2mmcvt.main([str(path), str(tmp_path / 'out.pth')]) == 1
    assert re.search(refusal(name, path), capsys.readouterr().err)
    assert not (tmp_path / 'out.pth').exists()
    assert not marker.exists()


def test_mmcvts_loader_leaves_historybuffers_statistics_alone(crafted):
    with pytest.raises(pickle.UnpicklingError):
        load_from_local_file(str(crafted['hostile_state']))
    # HistoryBuffer.__setstate__ writes into the class's table: a loaded
    # swap would have made every buffer's mean its max
    assert HistoryBuffer([1., 3.], [1, 1]).statistics('mean') == 2.


# the tools, on the shapes demo with a tiny CvT
@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
    """The Mask R-CNN demo config with a tiny CvT."""
    config = tmp_path_factory.mktemp('config') / 'tiny_demo.py'
    config.write_text(
        f"_base_ = {str(REPO / 'configs/demo/maskrcnn_cvt13_shapes.py')!r}\n"
        f'model = dict(backbone=dict(arch=dict({TINY!r}, _delete_=True)), '
        f'neck=dict(in_channels={TINY["embed_dims"]!r}))\n')
    return config


@pytest.mark.slow
def test_tools_test_py_refuses_each_file_unrun(crafted_file, marker, shapes,
                                               tiny_demo, tmp_path):
    name, path = crafted_file
    with pytest.raises(pickle.UnpicklingError, match=refusal(name, path)):
        test_tool.main([str(tiny_demo), str(path)] +
                       shapes_options(shapes, tmp_path, tmp_path.name))
    assert not marker.exists()


@pytest.mark.slow
def test_tools_test_py_run_as_a_script_refuses_a_file_without_a_traceback(
        crafted, marker, shapes, tiny_demo, tmp_path):
    path = crafted['reduce_payload']
    result = subprocess.run([
        sys.executable,
        str(REPO / 'tools/test.py'),
        str(tiny_demo),
        str(path), *shapes_options(shapes, tmp_path, tmp_path.name)
    ],
                            capture_output=True,
                            text=True,
                            cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert re.search('test.py: error: ' + refusal('reduce_payload', path),
                     result.stderr)
    assert not marker.exists()


@pytest.mark.slow
def test_train_py_resume_refuses_each_file_unrun(crafted_file, marker, shapes,
                                                 tiny_demo, tmp_path):
    name, path = crafted_file
    with pytest.raises(pickle.UnpicklingError, match=refusal(name, path)):
        train_tool.main(
            [str(tiny_demo), '--resume', str(path)] +
            shapes_options(shapes, tmp_path, tmp_path.name))
    assert not marker.exists()


@pytest.mark.slow
def test_show_predictions_refuses_each_file_unrun(crafted_file, marker, shapes,
                                                  tiny_demo, tmp_path):
    name, path = crafted_file
    with pytest.raises(pickle.UnpicklingError, match=refusal(name, path)):
        show_predictions.main([
            str(tiny_demo),
            str(path), '--out',
            str(tmp_path / 'p.png'), '--cfg-options',
            f'test_dataloader.dataset.data_root={shapes}/'
        ])
    assert not (tmp_path / 'p.png').exists()
    assert not marker.exists()


# ---- the opt-in -------------------------------------------------------------
class Annotation:
    """An object of the user's own: harmless, but not weights."""

    def __init__(self, text):
        self.text = text


@pytest.fixture
def file_with_own_object(tmp_path):
    path = tmp_path / 'annotated.pth'
    torch.save({'w': torch.ones(2), 'note': Annotation('mine')}, path)
    return path


def test_a_file_named_as_trusted_is_unpickled_in_full_and_logged(
        file_with_own_object, monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE,
                       f'{"0" * 64}, {sha256(file_with_own_object)}')
    log = logging.handlers.BufferingHandler(capacity=100)
    logger = MMLogger.get_current_instance()
    logger.addHandler(log)
    try:
        loaded = load_from_local_file(str(file_with_own_object))
    finally:
        logger.removeHandler(log)
    assert loaded['note'].text == 'mine'
    warning, = [
        record for record in log.buffer if record.levelno == logging.WARNING
    ]
    assert (f'unpickling it in full, because {TRUST_VARIABLE} names its '
            f'SHA-256' in warning.getMessage())


def test_trusting_another_file_does_not_trust_this_one(file_with_own_object,
                                                       crafted, monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE, sha256(crafted['reduce_payload']))
    with pytest.raises(pickle.UnpicklingError, match='Annotation'):
        load_from_local_file(str(file_with_own_object))


def test_a_digest_may_be_written_with_sha256_before_it(file_with_own_object,
                                                       monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE,
                       f'sha256:{sha256(file_with_own_object).upper()}')
    assert load_from_local_file(
        str(file_with_own_object))['note'].text == ('mine')


def test_an_entry_that_is_no_digest_is_logged_and_trusts_nothing(
        file_with_own_object, monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE, 'md5:0123')
    log = logging.handlers.BufferingHandler(capacity=100)
    logger = MMLogger.get_current_instance()
    logger.addHandler(log)
    try:
        with pytest.raises(pickle.UnpicklingError):
            load_from_local_file(str(file_with_own_object))
    finally:
        logger.removeHandler(log)
    assert any(f"{TRUST_VARIABLE} holds 'md5:0123', which is no SHA-256 "
               f'digest' in record.getMessage() for record in log.buffer)


def test_a_refusal_says_that_the_digests_named_are_another_files(
        file_with_own_object, crafted, monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE, sha256(crafted['reduce_payload']))
    with pytest.raises(pickle.UnpicklingError) as error:
        load_from_local_file(str(file_with_own_object))
    assert (f'({TRUST_VARIABLE} names 1 other digest, not this file\'s)'
            in str(error.value))


def test_a_trusted_file_replaced_after_its_digest_is_not_what_loads(
        file_with_own_object, crafted, monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE, sha256(file_with_own_object))
    sha256_of = hashlib.sha256

    class DigestThenSwap:
        """The file replaced by a payload as soon as its digest is known."""

        def __init__(self, *data):
            self.hash = sha256_of(*data)

        def update(self, data):
            self.hash.update(data)

        def hexdigest(self):
            digest = self.hash.hexdigest()
            file_with_own_object.write_bytes(
                crafted['reduce_payload'].read_bytes())
            return digest

    monkeypatch.setattr('mmcvt.fileio.unpickling.hashlib.sha256',
                        DigestThenSwap)
    loaded = load_from_local_file(str(file_with_own_object))
    assert loaded['note'].text == 'mine'


# ---- what loads today still loads -------------------------------------------
def train_one_iteration_with_mmengines_runner(config, tmp_path, **overrides):
    """A checkpoint of MMDetection's or MMSegmentation's own Runner: mmengine's
    Runner and CheckpointHook, as their tools/train.py build them."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(
        dict(
            work_dir=str(tmp_path),
            default_hooks=dict(
                checkpoint=dict(
                    type='CheckpointHook', interval=1, by_epoch=False)),
            train_cfg=dict(
                _delete_=True, type='IterBasedTrainLoop', max_iters=1),
            val_cfg=None,
            val_dataloader=None,
            val_evaluator=None,
            param_scheduler=dict(_delete_=True, type='ConstantLR', factor=1.),
            **overrides))
    Runner.from_cfg(cfg).train()
    return tmp_path / 'iter_1.pth'


@pytest.mark.slow
def test_a_checkpoint_of_mmdetections_runner_loads_with_its_logs(
        shapes, tiny_demo, tmp_path):
    checkpoint = train_one_iteration_with_mmengines_runner(
        tiny_demo,
        tmp_path,
        train_dataloader=dict(
            batch_size=2, dataset=dict(data_root=f'{shapes}/')))
    loaded = load_from_local_file(str(checkpoint))
    buffers = loaded['message_hub']['log_scalars']
    assert type(buffers['train/loss']) is HistoryBuffer
    assert buffers['train/loss'].current() > 0
    assert loaded['meta']['dataset_meta']['classes'] == make_shapes.CLASSES


@pytest.mark.slow
def test_a_checkpoint_of_mmsegmentations_runner_loads_with_its_logs(
        shapes_seg, tmp_path):
    checkpoint = train_one_iteration_with_mmengines_runner(
        REPO / 'configs/demo/upernet_cvt13_shapes.py',
        tmp_path,
        model=dict(
            backbone=dict(arch=dict(TINY, _delete_=True)),
            decode_head=dict(in_channels=TINY['embed_dims']),
            auxiliary_head=dict(in_channels=TINY['embed_dims'][2])),
        train_dataloader=dict(
            batch_size=2, dataset=dict(data_root=f'{shapes_seg}/')))
    loaded = load_from_local_file(str(checkpoint))
    assert type(loaded['message_hub']['log_scalars']['train/loss']) is \
        HistoryBuffer
    assert 'backbone.stages.0.patch_embed.projection.weight' in \
        loaded['state_dict']


# ---- weights that are not finite --------------------------------------------
def test_weights_with_nan_are_refused_naming_the_tensors(tmp_path):
    path = tmp_path / 'diverged.pth'
    weights = {
        'a.weight': torch.ones(2),
        'b.weight': torch.ones(2),
        'c.bias': torch.tensor([1., float('inf')])
    }
    weights['b.weight'][0] = float('nan')
    torch.save({'state_dict': weights}, path)
    with pytest.raises(
            ValueError,
            match=r'diverged.pth holds weights that are not finite '
            r'\(NaN or infinity\) in 2 tensors: \[b.weight, '
            r'c.bias\]'):
        load_from_local_file(str(path))


@pytest.mark.slow
def test_tools_test_py_refuses_a_checkpoint_of_nan_weights(
        shapes, tiny_demo, tmp_path):
    from mmengine.registry import MODELS

    from .utils import load_repo_config
    cfg = load_repo_config(str(tiny_demo))
    model = MODELS.build(cfg.model)
    weights = model.state_dict()
    weights['backbone.stages.2.blocks.1.ffn.layers.1.weight'].fill_(
        float('nan'))
    torch.save({'state_dict': weights}, tmp_path / 'nan.pth')
    with pytest.raises(
            ValueError,
            match=r'nan.pth holds weights that are '
            r'not finite .* in 1 tensors: \[backbone.stages.2.'
            r'blocks.1.ffn.layers.1.weight\]'):
        test_tool.main(
            [str(tiny_demo), str(tmp_path / 'nan.pth')] +
            shapes_options(shapes, tmp_path, tmp_path.name))


def test_cvts_init_cfg_refuses_nan_weights(tmp_path):
    weights = CvT(TINY).state_dict()
    weights['stages.0.patch_embed.projection.weight'][0, 0, 0, 0] = \
        float('nan')
    torch.save(weights, tmp_path / 'nan.pth')
    model = CvT(
        TINY,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nan.pth')))
    with pytest.raises(
            RuntimeError,
            match=r'not finite .*\[stages.0.'
            r'patch_embed.projection.weight\]'):
        model.init_weights()
