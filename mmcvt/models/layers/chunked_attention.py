"""Attention over a fixed number of chunks of the queries, for exported
graphs (:func:`chunked_attention`).

onnxruntime (1.32) has no memory-efficient attention on the CPU: the ONNX
graph of ``F.scaled_dot_product_attention`` (MatMul, Softmax, MatMul, or
opset 23's Attention) holds the whole score matrix, where PyTorch's CPU
kernel works through it in blocks. On a 1333x800 image that matrix is
about 4.5 GB for CvT-13's first stage (67200 queries by 16800 keys), and
writing and reading it costs more than the matmuls. Queries attend
independently of each other, so in chunks that run one after another the
graph holds a chunk's share of the matrix at a time, and the result is the
same (the graphs' speed: docs/en/deployment.md, "ONNX export"). The number of
chunks is fixed because a graph without a loop op (which torch's exporter
does not make of a Python loop) cannot repeat a step a number of times
that depends on the image's size.
"""
import torch
import torch.nn.functional as F

QUERY_CHUNKS = 16


def chunked_attention(q, k, v, scale, dropout_p=0., chunks=QUERY_CHUNKS):
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
    scale=scale)`` over ``chunks`` equal chunks of the queries, the last
    one padded.

    Args:
        q (Tensor): (B, heads, N, C).
        k, v (Tensor): (B, heads, M, C).

    Returns:
        Tensor: (B, heads, N, C).
    """
    num_queries = q.shape[-2]
    size = (num_queries + chunks - 1) // chunks
    q = F.pad(q, (0, 0, 0, size * chunks - num_queries))
    outs = [
        F.scaled_dot_product_attention(
            chunk, k, v, dropout_p=dropout_p, scale=scale)
        for chunk in q.unflatten(-2, (chunks, size)).unbind(-3)
    ]
    return torch.cat(outs, dim=-2)[..., :num_queries, :]
