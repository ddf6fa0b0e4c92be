"""FLOP counting that sees attention, for tools/analysis_tools.

torch's ``FlopCounterMode`` counts matmuls, convolutions and the CUDA
kernels of ``scaled_dot_product_attention``, but not its CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``), so on the CPU the
attention of CvT, three quarters of its FLOPs at detection resolution,
would vanish from the count. :func:`count_flops` adds that kernel, forward
and backward, with torch's own formulas. Elementwise work (norms,
activations, softmax) is not counted, as in every FLOP counter of this kind.
"""
import torch
from torch.utils.flop_counter import (FlopCounterMode,
                                      sdpa_backward_flop_count,
                                      sdpa_flop_count)

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None,
                   **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape,
                            value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                    value_shape)


CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
    _cpu_sdpa_backward_flop,
}


def count_flops(fn, *args, **kwargs):
    """FLOPs of ``fn(*args, **kwargs)``, a multiply and an add counted as 2.

    Model zoos (MMDetection's, MMSegmentation's, the CvT paper) call a
    multiply-add one FLOP: divide by 2 to compare with them.

    Returns:
        tuple: (total FLOPs, the result of ``fn``).
    """
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result
