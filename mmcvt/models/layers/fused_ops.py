"""Ops of a CvT block fused by hand: fewer kernels per training step.

On a GPU a CvT step is bound by launching its many small ops, not by their
FLOPs (docs/en/speed_and_memory.md, "Ops per training step"), so each
function here does in one op, forward and backward, what the plain
expression does in several.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS


class _QuickGELUFunction(torch.autograd.Function):
    """``silu(1.702 x) / 1.702``, which is ``x * sigmoid(1.702 x)``, with a
    backward of one op: the derivative is ``silu'(1.702 x)``, which
    ``silu_backward`` gives whole, where autograd on the expression chains
    the derivatives of its parts. It keeps ``1.702 x`` for the backward, one
    tensor of the MLP's hidden width, as autograd would."""

    @staticmethod
    def forward(ctx, x):
        scaled = x * 1.702
        ctx.save_for_backward(scaled)
        # In place, so that the forward holds one tensor of the hidden width
        # fewer at its peak. It writes only the tensor that silu makes on
        # this line, which nothing else holds: autograd records nothing in a
        # Function's forward, and the backward reads `scaled`. Recomputing
        # eagerly (with_cp), torch caches only the outputs that the policy
        # of layers/recompute.py keeps, never silu's; under torch.compile
        # the graph is functionalized, this mul_ becoming a mul, before the
        # partitioner picks what to keep. torch.compile's warning about
        # in-place ops comes with every checkpoint policy, whatever the ops.
        return F.silu(scaled).mul_(1 / 1.702)

    @staticmethod
    def backward(ctx, grad_output):
        scaled, = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad_output, scaled)


@MODELS.register_module()
class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 * x)``, the GELU approximation that the released
    CvT weights were trained with. Registered in mmengine's root registry,
    like mmcv's activations, so that every scope's ``act_cfg`` can name it."""

    def forward(self, x):
        return _QuickGELUFunction.apply(x)


def drop_path_scales(x, keep_probs, num_paths):
    """Stochastic depth for a stack of blocks at once: per block, residual
    branch and sample, 0 with probability ``1 - keep_prob`` and
    ``1 / keep_prob`` otherwise. Two ops for a whole stage, where a drop
    path module per branch (mmcv's DropPath) draws and scales with several
    ops of its own for every branch.

    Args:
        x (Tensor): (B, N, C) tokens, for the batch size, device and dtype.
        keep_probs (Tensor): (depth, ) keep probability of each block.
        num_paths (int): Residual branches per block.

    Returns:
        Tensor: (depth, num_paths, B, 1, 1).
    """
    keep_probs = keep_probs.view(-1, 1, 1, 1, 1)
    return x.new_empty(keep_probs.shape[0], num_paths, x.shape[0], 1,
                       1).bernoulli_(keep_probs).div_(keep_probs)


class _AddScaledResidual(torch.autograd.Function):
    """``x + branch * scale`` in one op, with a backward of one op: the
    branch's gradient is written in the branch's dtype (bf16 under
    autocast) by the multiplication itself, where autograd multiplies and
    then casts."""

    @staticmethod
    def forward(ctx, x, branch, scale):
        ctx.save_for_backward(scale)
        ctx.branch_dtype = branch.dtype
        return torch.addcmul(x, branch, scale)

    @staticmethod
    def backward(ctx, grad_output):
        scale, = ctx.saved_tensors
        grad_branch = grad_output.new_empty(
            grad_output.shape, dtype=ctx.branch_dtype)
        torch.mul(grad_output, scale, out=grad_branch)
        return grad_output, grad_branch, None


def add_residual(x, branch, scale):
    """``x + branch``, the branch scaled per sample by ``scale``, a
    (B, 1, 1) slice of :func:`drop_path_scales`, unless it is None."""
    if scale is None:
        return x + branch
    return _AddScaledResidual.apply(x, branch, scale)


class _LinearPair(torch.autograd.Function):
    """Two Linears of one weight, each on its own tokens, as one batched
    matmul, whose backward writes the weight's gradient in the weight's own
    layout.

    Through autograd, the batched matmul reads the weight as a transposed
    view of its two halves, and its gradient comes back transposed: reshaped
    into the (2 * C_out, C_in) weight, it is copied, one op a call. Here the
    weight's gradient is ``grad^T @ tokens`` per half, which is that
    gradient already in place, in the same matmul; the tokens' and the
    bias's gradients are autograd's own ops.
    """

    @staticmethod
    def forward(ctx, tokens, weight, bias):
        ctx.save_for_backward(tokens, weight)
        ctx.has_bias = bias is not None
        halves = weight.unflatten(0, (2, -1)).transpose(1, 2)
        if bias is None:
            return torch.bmm(tokens, halves)
        return torch.baddbmm(bias.unflatten(0, (2, 1, -1)), tokens, halves)

    @staticmethod
    def backward(ctx, grad_output):
        tokens, weight = ctx.saved_tensors
        # in the gradient's dtype: under torch.compile autocast casts the
        # weight inside the forward, where with_autocast_weights does not
        tokens, weight = tokens.to(grad_output.dtype), weight.to(
            grad_output.dtype)
        grad_tokens = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_tokens = torch.bmm(grad_output, weight.unflatten(0, (2, -1)))
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(grad_output.transpose(1, 2),
                                    tokens).flatten(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(1).flatten()
        return grad_tokens, grad_weight, grad_bias


def linear_pair(tokens, weight, bias=None):
    """``tokens[i] @ w[i].T + b[i]`` for the halves ``w[0], w[1]`` of a
    Linear's weight (and ``b`` of its bias), in one batched matmul forward
    and two backward, with no copy of the weight's gradient (see
    :class:`_LinearPair`).

    Args:
        tokens (Tensor): (2, M, C_in), the first half's tokens then the
            second's.
        weight (Tensor): (2 * C_out, C_in), the first half's rows first.
        bias (Tensor, optional): (2 * C_out, ).

    Returns:
        Tensor: (2, M, C_out).
    """
    return _LinearPair.apply(tokens, weight, bias)
