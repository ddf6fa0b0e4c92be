"""What tools/analysis_tools share: FLOP counting that sees attention, the
count of ops that launch kernels, peak memory on the CPU and CUDA,
configs' models built with random weights, and argument types that refuse
sizes no model can run.

torch's ``FlopCounterMode`` counts matmuls, convolutions and the CUDA
kernels of ``scaled_dot_product_attention``, but not its CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``), so on the CPU the
attention of CvT, three quarters of its FLOPs at detection resolution,
would vanish from the count. :func:`count_flops` adds that kernel, forward
and backward, with torch's own formulas. Elementwise work (norms,
activations, softmax) is not counted, as in every FLOP counter of this kind.
"""
import argparse
import collections
import statistics
import time

import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import DATASETS, MODELS, init_default_scope
from torch.utils.flop_counter import (FlopCounterMode,
                                      sdpa_backward_flop_count,
                                      sdpa_flop_count)

from .compat import cpu_attention_ops, dispatch_mode_class, unsafe_view_op

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape,
                   key_shape,
                   value_shape,
                   *args,
                   out_shape=None,
                   **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape,
                            query_shape,
                            key_shape,
                            value_shape,
                            *args,
                            out_shape=None,
                            **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                    value_shape)


CPU_SDPA_FLOPS = dict(
    zip(cpu_attention_ops(), (_cpu_sdpa_flop, _cpu_sdpa_backward_flop)))


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


# Ops that launch no kernel beyond the views: allocations, and the view
# that aten does not mark as one
_NO_KERNEL = frozenset({
    aten.empty.memory_format, aten.empty_strided.default,
    aten.empty_like.default, aten.new_empty.default,
    aten.new_empty_strided.default,
    unsafe_view_op()
})


class _KernelOpCounter(dispatch_mode_class()):

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in _NO_KERNEL:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_kernel_ops(fn, *args, **kwargs):
    """The aten ops that ``fn(*args, **kwargs)`` runs which launch a kernel
    on a GPU (every op but views and allocations), backward included when
    ``fn`` runs one. On a GPU, where a training step of small ops is bound
    by launching them, their number says more than FLOPs do. Counted on
    any device; the CPU runs the same ops as CUDA but for a few kernels'
    internals (CUDA's batched matmul copies strided inputs itself).

    Returns:
        tuple[Counter, Any]: Ops by name, and the result of ``fn``.
    """
    counter = _KernelOpCounter()
    with counter:
        result = fn(*args, **kwargs)
    return counter.counts, result


def synchronize(device):
    """Waits for the device's queued kernels, so that a timer sees them."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def median_latency(step, device, warmup, repeat):
    """The median seconds of ``repeat`` calls of ``step`` after ``warmup``
    untimed ones, each timed from an idle device to its last kernel.
    ``step``'s result is dropped at once, so that its memory is freed before
    the next call."""
    times = []
    for _ in range(warmup + repeat):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


class PeakMemory:
    """The peak memory of what runs after :meth:`start`, in MiB: on CUDA
    ``max_memory_allocated``; on the CPU the process's peak RSS (Linux's
    VmHWM, reset through ``/proc/self/clear_refs``), which also holds what
    the allocator keeps."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == 'cuda'
        self.base = 0

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _proc_status_bytes('VmRSS')
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS
        return self

    def peak_mib(self):
        """The peak since :meth:`start`, everything the process holds."""
        peak = (
            torch.cuda.max_memory_allocated()
            if self.cuda else _proc_status_bytes('VmHWM'))
        return peak / 2**20

    def added_mib(self):
        """The peak since :meth:`start` over what was held at the start."""
        return self.peak_mib() - self.base / 2**20


def _proc_status_bytes(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


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


def build_test_dataset(cfg):
    """The config's test dataset, built in the config's default scope; an
    empty one is an error that says where it looked.

    It is not serialised into one array, which fails on an empty data set
    with numpy's "need at least one array to concatenate": the
    serialisation is for dataloader workers, which the tools that call this
    have none of.

    Raises:
        ValueError: When the dataset holds no sample, naming its data_root,
            ann_file and data_prefix and the option that moves them.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    data = cfg.test_dataloader.dataset
    dataset = DATASETS.build(dict(data, serialize_data=False))
    if len(dataset) == 0:
        raise ValueError(
            f'the test set of {cfg.filename} is empty: {data.type} found no '
            f'image in data_root={data.get("data_root")!r} with '
            f'ann_file={data.get("ann_file")!r} and '
            f'data_prefix={data.get("data_prefix")!r}. Point it at the '
            f'data with --cfg-options test_dataloader.dataset.data_root=...')
    return dataset


def positive_int(text):
    """argparse type: an int of at least 1 (a batch, a side, a count), so
    that 0 or a negative number is a usage error, not a crash deep in torch
    after the model is built."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer')
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} is not at least 1')
    return value


def image_size(text):
    """argparse type: ``HxW`` with both sides at least 1, as [H, W]."""
    parts = text.lower().split('x')
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f'{text!r} is not of the form HxW')
    return [positive_int(part) for part in parts]
