"""Recomputing a block's activations in the backward instead of keeping
them (``with_cp``), through torch's selective activation checkpointing.

Selective checkpointing asks a policy, op by op, whether the backward gets
the op's output kept from the forward or recomputes it. With a policy of
our own, one checkpoint serves every ``with_cp`` mode, keeps BatchNorm from
updating its statistics twice, and lets torch.compile recompute views.
"""
import functools

import torch
import torch.utils.checkpoint as cp
from torch.utils.checkpoint import (CheckpointPolicy,
                                    create_selective_checkpoint_contexts)

from ...compat import fused_attention_ops

WITH_CP_MODES = (False, True, 'selective')

# The ops whose outputs with_cp='selective' keeps: the matmuls, convolutions
# and attention. Everything between them (norms, activations, reshape
# copies) is cheap to redo and is recomputed in the backward instead. It is
# not the default because the recompute runs through a Python dispatch
# mode, whose cost per op shows at small sizes, where memory does not
# matter (docs/en/speed_and_memory.md).
HEAVY_OPS = frozenset({
    torch.ops.aten.addmm,
    torch.ops.aten.mm,
    torch.ops.aten.bmm,
    torch.ops.aten.baddbmm,
    torch.ops.aten.convolution,
    *fused_attention_ops(),
})


def run_with_recompute(function, module, with_cp, *args):
    """``function(*args)``, the forward of ``module``, whose activations the
    backward recomputes as ``with_cp`` says: True all of them from the
    input, 'selective' all but the outputs of :data:`HEAVY_OPS`, False none.

    Under torch.compile it runs in a checkpoint whatever ``with_cp`` says,
    for the policy to have views recomputed rather than kept: with dynamic
    shapes, inductor fails on a training graph that keeps views for the
    backward (docs/en/speed_and_memory.md, "Compiling the backbone"). With
    ``with_cp=False`` the policy keeps everything else, as plain autograd
    would.
    """
    compiling = torch.compiler.is_compiling()
    if not ((with_cp or compiling) and torch.is_grad_enabled()):
        return function(*args)
    return cp.checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=functools.partial(_recompute_contexts, module, with_cp,
                                     compiling))


def _recompute_contexts(module, with_cp, compiling):
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``. Ops that
    read or update the module's buffers (BatchNorm's running statistics and
    batch counter) are always kept, so that the recompute does not update
    them a second time in the step, as a plain checkpoint would."""
    buffer_ids = {id(buffer) for buffer in module.buffers()}
    keep_heavy_ops = with_cp == 'selective'
    rest = CheckpointPolicy.PREFER_RECOMPUTE if with_cp else \
        CheckpointPolicy.PREFER_SAVE

    def policy(ctx, op, *args, **kwargs):
        if compiling and op.is_view:
            return CheckpointPolicy.MUST_RECOMPUTE
        if (any(id(arg) in buffer_ids for arg in args)
                or keep_heavy_ops and op.overloadpacket in HEAVY_OPS):
            return CheckpointPolicy.MUST_SAVE
        return rest

    # The check that kept outputs are not mutated afterwards would flag the
    # kept in-place update of the batch counter: an in-place op bumps its
    # output's version only after it returns. Nothing else in a block writes
    # into a kept output in eager mode (QuickGELU scales silu's output in
    # place, which only torch.compile keeps, in a functionalized graph).
    return create_selective_checkpoint_contexts(
        policy, allow_cache_entry_mutation=True)
