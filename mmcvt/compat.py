"""Every assumption that mmcvt makes about what mmengine, mmdet, mmseg, mmcv
and torch keep private, one function each.

Everywhere else mmcvt uses their public APIs only (a test scans the package
for private names). What is here has no public equivalent in the releases
mmcvt supports, upstream OpenMMLab's and OneDL's (README, "Supported
versions"). Each function says what it assumes; ``tests/test_compat.py``
checks each assumption on the installed stack and, when one breaks, fails
naming the release that broke it.
"""
import importlib.metadata

import numpy as np
import torch

# how mmengine's load_state_dict(strict=True) starts the error it raises
_STRICT_LOAD_MISMATCH = 'The model and loaded state dict do not match exactly'


def is_strict_load_mismatch(error):
    """Whether ``error``, raised by mmengine's ``load_checkpoint(...,
    strict=True)``, says that the checkpoint's keys or shapes do not fit the
    model (rather than that the file could not be read, say).

    Assumes: mmengine's ``load_state_dict`` raises a RuntimeError whose text
    starts with "The model and loaded state dict do not match exactly" and
    lists the keys. mmengine has no exception class of its own for it.
    """
    return (isinstance(error, RuntimeError)
            and str(error).startswith(_STRICT_LOAD_MISMATCH))


# how torch's exporter says that traced code fixed a size marked dynamic
_DYNAMIC_SIZE_SPECIALIZED = 'specialized it to be a constant'


def is_dynamic_size_specialized(error):
    """Whether ``error``, raised by ``torch.export.export`` with
    ``dynamic_shapes``, says that the traced code fixed a size marked
    ``Dim.DYNAMIC`` to the example's (it read the size as a number).

    Assumes: torch's exporter (torch 2.13) raises an error whose text says
    that the code "specialized it to be a constant". torch raises it as a
    ``torch._dynamo.exc.UserError``, a private class, whose ``error_type``
    it shares with other constraint violations.
    """
    return _DYNAMIC_SIZE_SPECIALIZED in str(error)


def history_buffer_pickled_state():
    """What a pickled ``mmengine.logging.HistoryBuffer`` holds: its state's
    keys, with the type of each value. The weights-only reading of old
    Runner checkpoints (:mod:`mmcvt.fileio.unpickling`) accepts exactly this.

    Assumes: ``HistoryBuffer.__getstate__`` writes its ``__dict__``, the
    two logs under their private names as numpy arrays.
    """
    return dict(
        max_length=int,
        _log_history=np.ndarray,
        _count_history=np.ndarray,
        statistics_methods=dict)


def call_before_first_batch_after_resume(loop, callback):
    """Calls ``callback()`` right before ``loop``, an ``IterBasedTrainLoop``
    resumed at iteration ``loop.iter``, loads the first batch that it
    trains on. To be called in ``before_train_epoch``.

    Assumes what ``IterBasedTrainLoop.run`` does between
    ``before_train_epoch`` and that batch, which the two stacks do
    differently:

    - mmengine <= 0.10.7 reads the ``loop.iter`` batches trained before
      through ``next(loop.dataloader_iterator)``, running the data pipeline
      and drawing random numbers: the callback runs before the next read
      after those;
    - onedl-mmengine >= 0.10.12 calls ``dataloader_iterator.skip_iter``,
      which moves the sampler on without loading data (or skips nothing,
      with ``fast_forward_on_resume=True``), and makes the data loader's
      iterator anew when the batch is read: nothing draws from the global
      random states before the batch, so the callback runs at once.
    """
    iterator = loop.dataloader_iterator
    if hasattr(iterator, 'skip_iter'):
        callback()
    else:
        loop.dataloader_iterator = _CallAfterReplay(iterator, loop.iter,
                                                    callback)


class _CallAfterReplay:
    """A data iterator that calls ``callback`` before it reads batch
    ``replayed + 1``."""

    def __init__(self, iterator, replayed, callback):
        self.iterator = iterator
        self.replayed = replayed
        self.callback = callback

    def __iter__(self):
        return self

    def __next__(self):
        if self.replayed == 0 and self.callback is not None:
            self.callback()
            self.callback = None
        self.replayed -= 1
        return next(self.iterator)


def fused_attention_ops():
    """torch's scaled-dot-product attention kernels that exist in this torch:
    the aten ops ``F.scaled_dot_product_attention`` dispatches to on the CPU
    and on CUDA (flash, memory-efficient, cuDNN).

    Assumes: aten names them ``_scaled_dot_product_*`` (torch 2.0 on; the
    CPU kernel since 2.2, cuDNN's since 2.3).
    """
    names = ('_scaled_dot_product_flash_attention_for_cpu',
             '_scaled_dot_product_flash_attention',
             '_scaled_dot_product_efficient_attention',
             '_scaled_dot_product_cudnn_attention')
    return tuple(
        getattr(torch.ops.aten, name) for name in names
        if hasattr(torch.ops.aten, name))


def cpu_attention_ops():
    """The forward and backward aten ops of CPU attention, which torch's
    ``FlopCounterMode`` does not count.

    Assumes: aten names them ``_scaled_dot_product_flash_attention_for_cpu``
    and ``..._backward`` (torch 2.2 on).
    """
    aten = torch.ops.aten
    return (aten._scaled_dot_product_flash_attention_for_cpu,
            aten._scaled_dot_product_flash_attention_for_cpu_backward)


def unsafe_view_op():
    """The view op that aten does not mark as a view: it launches no kernel.

    Assumes: aten names it ``_unsafe_view``.
    """
    return torch.ops.aten._unsafe_view.default


def dispatch_mode_class():
    """The base class of a mode that sees every aten op a function runs,
    which FLOP and kernel counting subclass.

    Assumes: torch keeps ``TorchDispatchMode`` in
    ``torch.utils._python_dispatch`` (torch 2.0 on); torch has no public
    module for it.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    return TorchDispatchMode


# the distributions that OneDL's continuation of OpenMMLab installs under
# other names than upstream's, by the scope of their configs
ONEDL_DISTRIBUTIONS = {
    'mmdet': 'onedl-mmdetection',
    'mmseg': 'onedl-mmsegmentation',
    'mmpretrain': 'onedl-mmpretrain',
}


def resolve_onedl_config_scopes():
    """Lets configs inherit ``mmseg::...`` (and ``mmdet::``,
    ``mmpretrain::``) where the library is installed as OneDL's
    distribution, ``onedl-mmsegmentation``: mmengine looks the scope up as
    a distribution named ``mmsegmentation`` and reports it not installed.
    Changes nothing where the upstream distribution is installed.

    Assumes: mmengine resolves ``scope::path`` through
    ``mmengine.config.utils.MODULE2PACKAGE`` (scope to distribution name),
    then finds the distribution's files by that name (mmengine 0.10).
    """
    from mmengine.config import utils
    for scope, onedl in ONEDL_DISTRIBUTIONS.items():
        if not (_distribution_installed(utils.MODULE2PACKAGE.get(scope))
                or not _distribution_installed(onedl)):
            utils.MODULE2PACKAGE[scope] = onedl


def _distribution_installed(name):
    if name is None:
        return False
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def foreach_copy_(destinations, sources):
    """Copies each tensor of ``sources`` into the tensor of
    ``destinations`` at its position, in its dtype, in one op: one kernel on
    CUDA for all of them, where a copy each launches one each. The autocast
    casting of :mod:`mmcvt.models.layers.autocast_weights` casts a stage's
    weights, and their gradients back, with it.

    Assumes: torch's ``torch._foreach_copy_(self, src)`` (torch 2.1 on)
    copies in place, across dtypes, in one op for the whole list. torch has
    no public op that copies a list of tensors at once.

    Args:
        destinations (list[Tensor]): Written in place.
        sources (list[Tensor]): Of the destinations' shapes.
    """
    torch._foreach_copy_(destinations, sources)
