"""What tools/analysis_tools share: FLOP counting that sees attention, and
configs' models built with random weights.

torch's ``FlopCounterMode`` counts matmuls, convolutions and the CUDA
kernels of ``scaled_dot_product_attention``, but not its CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``), so on the CPU the
attention of CvT, three quarters of its FLOPs at detection resolution,
would vanish from the count. :func:`count_flops` adds that kernel, forward
and backward, with torch's own formulas. Elementwise work (norms,
activations, softmax) is not counted, as in every FLOP counter of this kind.
"""
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
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


def config_from(path):
    """A config file, or a config of an installed library named as in
    ``_base_`` (``'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'``),
    which mmengine's hub resolves."""
    return get_config(path) if '::' in path else Config.fromfile(path)


def build_random_model(cfg):
    """The config's model, built in the config's default scope, with
    SyncBN turned into BatchNorm for one process, and without fetching any
    checkpoint: its weights are random."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    return revert_sync_batchnorm(MODELS.build(cfg.model))
