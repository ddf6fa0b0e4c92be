"""mmcvt.compat: each assumption about a private name of mmengine, mmdet,
mmseg, mmcv or torch holds on the installed stack, and no such name is used
anywhere else in the package or the tools.

Each test states one assumption; when a release breaks it, the failure
names that release."""
import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re

import mmengine
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner, load_checkpoint

import mmcvt
from mmcvt import compat
from mmcvt.fileio import install_checkpoint_loaders
from .test_checkpoints import LinearModel  # noqa: F401  registers it
from .utils import REPO, STACK

UPSTREAM = ('torch', 'mmengine', 'mmdet', 'mmseg', 'mmcv')


def release(module):
    """``module``'s distribution and version, as a failure names them."""
    for name in importlib.metadata.packages_distributions().get(module, []):
        return f'{name} {importlib.metadata.version(name)}'
    return f'{module} (no distribution found)'


def broken(module, assumption):
    return (f'{release(module)} breaks an assumption of mmcvt.compat: '
            f'{assumption}')


# ---- the scan ---------------------------------------------------------------
def _private_component(dotted):
    parts = dotted.split('.')
    return parts[0] in UPSTREAM and any(
        p.startswith('_') and not p.startswith('__') for p in parts)


def _is_private(name):
    return name.startswith('_') and not name.startswith('__')


class _PrivateNames(ast.NodeVisitor):
    """Uses of upstream's private names in one file: imports of private
    modules or names, ``x._name`` where mmcvt defines no ``_name`` and ``x``
    is not one of its own modules, ``self._name`` of an upstream base class,
    and private names in strings given to getattr or import_module."""

    def __init__(self, own_names):
        self.own_names = own_names
        self.foreign_roots = set()  # names imported from elsewhere (numpy)
        self.found = []

    def visit_ImportFrom(self, node):
        module = node.module or ''
        if node.level == 0 and module.split('.')[0] in UPSTREAM:
            if _private_component(module) or any(
                    _is_private(alias.name) for alias in node.names):
                self.found.append((node.lineno, f'from {module} import ...'))
        elif node.level == 0:
            self.foreign_roots.update(alias.asname or alias.name
                                      for alias in node.names)
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            if _private_component(alias.name):
                self.found.append((node.lineno, f'import {alias.name}'))
            elif alias.name.split('.')[0] not in UPSTREAM:
                self.foreign_roots.add((alias.asname
                                        or alias.name).split('.')[0])
        self.generic_visit(node)

    def visit_Attribute(self, node):
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if (_is_private(node.attr) and node.attr not in self.own_names
                and not (isinstance(root, ast.Name)
                         and root.id in self.foreign_roots)):
            self.found.append((node.lineno, f'._{node.attr[1:]}'))
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and re.fullmatch(
                r'(torch|mmengine|mmdet|mmseg|mmcv)(\.\w+)*',
                node.value) and _private_component(node.value):
            self.found.append((node.lineno, repr(node.value)))

    def visit_Call(self, node):
        if (isinstance(node.func, ast.Name)
                and node.func.id in ('getattr', 'hasattr', 'setattr')
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
                and node.args[1].value not in self.own_names):
            self.found.append((node.lineno, f'{node.func.id}(..., '
                               f'{node.args[1].value!r})'))
        self.generic_visit(node)


def _python_files():
    for directory in ('mmcvt', 'tools'):
        for path in sorted((REPO / directory).rglob('*.py')):
            if '.mim' not in path.parts and path != REPO / 'mmcvt/compat.py':
                yield path


def _own_names(trees):
    """The private names that mmcvt and its tools define themselves:
    functions, classes, module globals and attributes they assign."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(
                    node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(
                    node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {name for name in names if _is_private(name)}


def test_no_private_upstream_name_is_used_outside_the_compat_module():
    files = list(_python_files())
    trees = {path: ast.parse(path.read_text()) for path in files}
    own_names = _own_names(trees.values())
    found = []
    for path, tree in trees.items():
        visitor = _PrivateNames(own_names)
        visitor.visit(tree)
        found += [
            f'{path.relative_to(REPO)}:{line}: {what}'
            for line, what in visitor.found
        ]
    assert not found, (
        'private names of torch, mmengine, mmdet, mmseg or mmcv outside '
        'mmcvt/compat.py (move each into a compat function with a test of '
        'its assumption, or use a public API):\n' + '\n'.join(found))


def _upstream_privates(cls):
    """The private attributes that the upstream classes ``cls`` derives
    from use on ``self``."""
    names = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split('.')[0] not in UPSTREAM:
            continue
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):  # defined in C
            continue
        names.update(re.findall(r'self\.(_[a-z]\w*)', source))
    return names


def _base_privates_used(cls):
    used = set(re.findall(r'self\.(_[a-z]\w*)', inspect.getsource(cls)))
    return sorted(used & _upstream_privates(cls))


def test_no_class_of_mmcvt_touches_a_private_attribute_of_its_upstream_base():
    found = []
    for info in pkgutil.walk_packages(mmcvt.__path__, 'mmcvt.'):
        if info.name == 'mmcvt.compat':
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == info.name:
                found += [
                    f'{info.name}.{cls.__qualname__}: self.{name}'
                    for name in _base_privates_used(cls)
                ]
    assert not found, (
        'mmcvt classes that use private attributes of their upstream base '
        'classes (use a public API, or a function in mmcvt/compat.py):\n' +
        '\n'.join(found))


def test_the_scan_finds_each_kind_of_private_use():
    source = '\n'.join([
        'from torch.utils._python_dispatch import TorchDispatchMode',
        'import mmcv._ext',
        'from mmengine.runner.checkpoint import _load_checkpoint',
        'runner._resume = False',
        'torch._foreach_copy_(a, b)',
        "getattr(preprocessor, '_channel_conversion', False)",
        "importlib.import_module('mmcv._ext')",
    ])
    visitor = _PrivateNames(own_names=set())
    visitor.visit(ast.parse(source))
    assert [line for line, _ in visitor.found] == [1, 2, 3, 4, 5, 6, 7]


class _ResumingRunner(Runner):

    def train(self):
        if self._resume:
            self._load_from = None
        return super().train()


def test_the_class_check_finds_a_subclass_using_its_bases_privates():
    assert _base_privates_used(_ResumingRunner) == ['_load_from', '_resume']


def test_the_scan_leaves_numpy_and_mmcvts_own_private_names_alone():
    source = '\n'.join([
        'from numpy._core import multiarray',
        'multiarray._reconstruct(a, b, c)',
        'self._own = 1',
        'other._own',
    ])
    visitor = _PrivateNames(own_names={'_own'})
    visitor.visit(ast.parse(source))
    assert visitor.found == []


# ---- the assumptions --------------------------------------------------------
def test_a_strict_load_that_does_not_fit_is_told_by_its_message(tmp_path):
    checkpoint = tmp_path / 'other.pth'
    torch.save({'state_dict': {'other.weight': torch.zeros(1)}}, checkpoint)
    with pytest.raises(RuntimeError) as error:
        load_checkpoint(torch.nn.Linear(2, 1), str(checkpoint), strict=True)
    assert compat.is_strict_load_mismatch(error.value), broken(
        'mmengine', f'load_checkpoint(strict=True) of a state dict that does '
        f'not fit raised {error.value!r}')


def test_a_read_error_is_no_strict_load_mismatch():
    assert not compat.is_strict_load_mismatch(
        RuntimeError('PytorchStreamReader failed reading zip archive'))


class WidthAsNumber(torch.nn.Module):
    """Reads the image's width as a number: the exporter fixes it."""

    def forward(self, image):
        return image * int(image.shape[3])


def test_a_dynamic_size_read_as_a_number_is_told_by_the_exporters_message():
    try:
        torch.export.export(
            WidthAsNumber(), (torch.zeros(1, 3, 4, 6), ),
            dynamic_shapes=({
                3: torch.export.Dim.DYNAMIC
            }, ),
            strict=False)
    except Exception as error:  # whatever torch raises
        raised = error
    else:
        raised = None
    assert raised is not None and compat.is_dynamic_size_specialized(
        raised), broken(
            'torch', f'torch.export.export of a module that reads a dynamic '
            f'width as a number raised {raised!r}')


def test_a_history_buffer_pickles_the_state_compat_names():
    state = HistoryBuffer([1., 2.], [1, 1]).__reduce_ex__(2)[2]
    expected = compat.history_buffer_pickled_state()
    assert {
        key: type(value)
        for key, value in state.items()
    } == expected, broken(
        'mmengine', f'HistoryBuffer pickles {sorted(state)}, not '
        f'{sorted(expected)}')


class _LoadRecorder(Hook):
    """Calls call_before_first_batch_after_resume on a resumed run, and
    records how many items had been loaded when the callback ran."""

    def __init__(self, loads):
        self.loads = loads
        self.loaded_at_callback = []

    def before_train_epoch(self, runner):
        if runner.iter > 0:
            compat.call_before_first_batch_after_resume(
                runner.train_loop,
                lambda: self.loaded_at_callback.append(len(self.loads)))


class _RecordedLines(torch.utils.data.Dataset):
    loads = []

    def __len__(self):
        return 8

    def __getitem__(self, i):
        self.loads.append(i)
        return dict(x=torch.tensor([float(i), 1.]), y=torch.tensor(2. * i))


def _plain_runner(work_dir, max_iters, resume, hook):
    return Runner(
        model=dict(type='LinearModel'),
        work_dir=str(work_dir),
        experiment_name=f'compat-{max_iters}-{resume}',
        train_dataloader=dict(
            dataset=_RecordedLines(),
            sampler=dict(type='InfiniteSampler', shuffle=False),
            batch_size=2,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2)),
        custom_hooks=[hook],
        resume=resume,
        cfg=Config(dict()))


def test_the_callback_runs_right_before_a_resumed_loop_loads_its_first_batch(
        tmp_path):
    # mmengine 0.10.7's own loader cannot read its Runner's checkpoints
    install_checkpoint_loaders()
    loads = _RecordedLines.loads
    _plain_runner(tmp_path, 2, False, _LoadRecorder(loads)).train()
    loads.clear()
    hook = _LoadRecorder(loads)
    _plain_runner(tmp_path, 4, True, hook).train()
    # batches 3 and 4 hold items 4 to 7; whatever the loop loaded before,
    # to put the sampler back, came before the callback
    assert len(
        hook.loaded_at_callback
    ) == 1 and loads[hook.loaded_at_callback[0]:] == [4, 5, 6, 7], broken(
        'mmengine', f'IterBasedTrainLoop resumed at iteration 2 loaded '
        f'items {loads}; the callback ran after '
        f'{hook.loaded_at_callback} of them')


class _Aten(compat.dispatch_mode_class()):

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def _attention_ops(backward):
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    with _Aten() as mode:
        out = F.scaled_dot_product_attention(q, k, v)
        if backward:
            out.sum().backward()
    return {op.overloadpacket for op in mode.ops}


def test_a_dispatch_mode_sees_the_aten_ops_a_function_runs():
    with _Aten() as mode:
        torch.ones(2).add(1)
    assert torch.ops.aten.add.Tensor in mode.ops, broken(
        'torch', 'a TorchDispatchMode subclass does not see aten.add')


def test_cpu_attention_runs_the_ops_compat_names():
    forward, backward = compat.cpu_attention_ops()
    ran = _attention_ops(backward=True)
    assert forward in ran and backward in ran, broken(
        'torch', f'scaled_dot_product_attention on the CPU ran {ran}')


def test_cpu_attention_is_among_the_fused_attention_ops():
    ran = _attention_ops(backward=False)
    assert ran & set(compat.fused_attention_ops()), broken(
        'torch', f'scaled_dot_product_attention on the CPU ran {ran}, none of '
        f'{compat.fused_attention_ops()}')


def test_a_batched_matmul_ends_in_the_unsafe_view_compat_names():
    with _Aten() as mode:
        torch.randn(2, 3, 4).matmul(torch.randn(4, 5))
    assert compat.unsafe_view_op() in mode.ops, broken(
        'torch', f'a 3-D by 2-D matmul ran {mode.ops}')


def test_a_list_of_tensors_is_cast_in_the_one_op_compat_names():
    sources = [
        torch.randn(3, 4),
        torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)
    ]
    destinations = [torch.empty_like(t, dtype=torch.bfloat16) for t in sources]
    with _Aten() as mode:
        compat.foreach_copy_(destinations, sources)
    assert len(mode.ops) == 1, broken(
        'torch', f'torch._foreach_copy_ of a list ran {mode.ops}')
    for copied, source in zip(destinations, sources):
        assert torch.equal(copied, source.to(torch.bfloat16)), broken(
            'torch', 'torch._foreach_copy_ copies wrong values across dtypes')


def test_the_release_named_in_failures_is_the_installed_one():
    assert release('mmengine').endswith(mmengine.__version__)


def test_a_config_inheriting_mmseg_loads_after_import_mmcvt(tmp_path):
    config = tmp_path / 'inherits_mmseg.py'
    config.write_text("_base_ = 'mmseg::_base_/default_runtime.py'\n")
    cfg = Config.fromfile(config)
    assert cfg.default_scope == 'mmseg', broken(
        'mmengine',
        'a config inheriting mmseg:: did not load MMSegmentation\'s'
        ' runtime')


@pytest.mark.skipif(STACK != 'upstream', reason='upstream distributions')
def test_upstreams_config_scopes_are_left_as_they_are():
    from mmengine.config.utils import MODULE2PACKAGE
    assert MODULE2PACKAGE['mmseg'] == 'mmsegmentation'
    assert MODULE2PACKAGE['mmdet'] == 'mmdet'
