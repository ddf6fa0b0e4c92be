"""Casting for autocast in fewer ops than autocast itself.

Autocast casts a weight to its dtype (bf16, say) in every op that reads
it, and the gradient back in another: two ops per weight and step. Here a
stage's convolution and Linear weights are cast all at once, forward and
backward, and a tensor that several ops read is cast once for them all.
"""
import functools

import torch
import torch.nn as nn
from torch.func import functional_call

from ...compat import foreach_copy_

# the modules whose weights autocast casts: CvT's Linear layers and convs
CAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _autocast_dtype(x):
    """The dtype autocast casts ``x``'s ops to, or None where it does not
    (autocast off, a device without autocast such as 'meta') or where
    nothing of ours should (torch.compile, whose kernels cast as they go).
    """
    device_type = x.device.type
    if (torch.compiler.is_compiling()
            or not torch.amp.is_autocast_available(device_type)
            or not torch.is_autocast_enabled(device_type)):
        return None
    return torch.get_autocast_dtype(device_type)


def to_autocast_dtype(x):
    """``x`` in autocast's dtype while autocast is on: one cast for all the
    ops that read it, where autocast casts it again for each."""
    dtype = _autocast_dtype(x)
    return x if dtype is None else x.to(dtype)


class _CastInOneOp(torch.autograd.Function):
    """Casts tensors to one dtype with a single foreach copy (one kernel on
    CUDA for them all, see :func:`mmcvt.compat.foreach_copy_`), and their
    gradients back with another."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.set_materialize_grads(False)
        ctx.dtypes = [t.dtype for t in tensors]
        casts = [torch.empty_like(t, dtype=dtype) for t in tensors]
        foreach_copy_(casts, tensors)
        ctx.mark_non_differentiable(*(c for c, t in zip(casts, tensors)
                                      if not t.requires_grad))
        return tuple(casts)

    @staticmethod
    def backward(ctx, *grads):
        present = [i for i, g in enumerate(grads) if g is not None]
        grads_back = [None] * len(grads)
        if present:
            casts = [
                torch.empty_like(grads[i], dtype=ctx.dtypes[i])
                for i in present
            ]
            foreach_copy_(casts, [grads[i] for i in present])
            for i, cast in zip(present, casts):
                grads_back[i] = cast
        return (None, *grads_back)


def with_autocast_weights(*modules, like):
    """The modules as callables that run them with the weights and biases of
    their convolutions and Linears cast, all in one op, to the dtype that
    autocast would cast each of them to in an op of its own. Outside
    autocast on ``like``'s device, and under torch.compile (whose kernels
    cast as they go), the modules themselves.

    Returns:
        tuple[Callable]: One per module.
    """
    dtype = _autocast_dtype(like)
    if dtype is None:
        return modules
    names, tensors = [], []
    for i, module in enumerate(modules):
        for prefix, child in module.named_modules():
            if isinstance(child, CAST_MODULES):
                for name, param in child.named_parameters(recurse=False):
                    names.append((i, f'{prefix}.{name}' if prefix else name))
                    tensors.append(param)
    casts = _CastInOneOp.apply(dtype, *tensors)
    weights = [{} for _ in modules]
    for (i, name), cast in zip(names, casts):
        weights[i][name] = cast
    return tuple(
        functools.partial(_call_with, module, module_weights)
        for module, module_weights in zip(modules, weights))


def _call_with(module, weights, *args):
    """``module(*args)`` with the parameters named in ``weights`` replaced,
    for this call only; the module itself is left as it is."""
    return functional_call(module, weights, args)
