"""Tokens and maps, laid out so that the conversions between them cost
nothing in eager mode and compile with dynamic shapes.

CvT turns its (B, N, C) tokens into a (B, C, H, W) map before each
convolution (the projections, the next stage's embedding) and the
convolution's output back into tokens. In eager mode the map is a view of
the tokens that is channels_last in memory: the convolutions take it
without a copy and return channels_last maps, whose tokens are again a
contiguous view.

Under torch.compile with dynamic shapes (torch 2.13), two things fail with
those views, each shown by a command in docs/en/speed_and_memory.md
("Compiling the backbone"):

- inductor cannot lower a convolution of the channels_last view, whose
  strides hold sizes it cannot bound: the map is made contiguous instead,
  which inductor writes in the op before;
- the gradient that comes back to the tokens from that contiguous map is a
  transposed view, which AOTAutograd then fails to view flat in the
  backward of the next Linear that reads the tokens ("Cannot view a tensor
  ... with strides (C*Max(1, N), 1, Max(1, N))"): it is made contiguous
  where it reaches the tokens.
"""
import torch


class _ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward hands on a contiguous gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def tokens_to_map(tokens, hw_shape):
    """(B, H * W, C) tokens -> (B, C, H, W) map: in eager mode a view that
    is channels_last in memory; under torch.compile a contiguous tensor
    whose gradient reaches the tokens contiguous (see the module's
    docstring)."""
    if not torch.compiler.is_compiling():
        return tokens.transpose(1, 2).unflatten(2, hw_shape)
    tokens = _ContiguousGradient.apply(tokens)
    return tokens.transpose(1, 2).unflatten(2, hw_shape).contiguous()


def map_to_tokens(x):
    """(B, C, H, W) map -> (B, H * W, C) tokens, a view (contiguous when the
    map is channels_last, as the convolutions return it in eager mode)."""
    return x.flatten(2).transpose(1, 2)
