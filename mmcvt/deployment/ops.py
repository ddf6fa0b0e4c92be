"""The two mmcv ops that detectors run at inference, NMS and RoIAlign, as
torch custom ops that run mmcv's kernels in PyTorch and that torch's ONNX
exporter translates into the standard ONNX operators ``NonMaxSuppression``
and ``RoiAlign`` (:func:`onnx_translations`, the exporter's
``custom_translation_table``).

A custom op is what lets the exporter carry NMS through the graph: its
fake implementation gives the number of boxes kept as a dynamic size, which
mmcv's own ``nms`` (an autograd Function that returns a tensor of data-made
size) cannot. The eager implementations call mmcv's kernels, so that the
PyTorch reference of a graph computes what ``model.predict`` computes.

Only the export path (:mod:`mmcvt.deployment.detectors`) calls these; the
models' own modules keep running mmcv's ops.
"""
import torch
from mmcv.ops import batched_nms as mmcv_batched_nms
from mmcv.ops import roi_align as mmcv_roi_align
from torch import Tensor

# ONNX NonMaxSuppression's cap on the boxes kept per group: none
ALL_BOXES = 2**31 - 1


@torch.library.custom_op('mmcvt::batched_nms', mutates_args=())
def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int,
                iou_threshold: float) -> Tensor:
    """NMS within each group, as mmcv's ``batched_nms`` with
    ``dict(type='nms', iou_threshold=iou_threshold)``: a box is dropped
    when its IoU with a better-scored box of its group is above
    ``iou_threshold``.

    Args:
        boxes (Tensor): (N, 4), x1, y1, x2, y2.
        scores (Tensor): (N, ).
        groups (Tensor): (N, ) int64, each box's group (class, or level),
            0 to ``num_groups - 1``.
        num_groups (int): How many groups there can be.
        iou_threshold (float): The IoU above which a box is dropped.

    Returns:
        Tensor: (K, ) int64, the indices of the boxes kept, best score
        first.
    """
    if boxes.shape[0] == 0:  # mmcv's batched_nms fails on no box
        return groups.new_zeros((0, ))
    _, keep = mmcv_batched_nms(boxes, scores, groups,
                               dict(type='nms', iou_threshold=iou_threshold))
    return keep


@batched_nms.register_fake
def _batched_nms_fake(boxes, scores, groups, num_groups, iou_threshold):
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept, ), dtype=torch.long)


@torch.library.custom_op('mmcvt::roi_align', mutates_args=())
def roi_align(features: Tensor, rois: Tensor, output_height: int,
              output_width: int, spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """mmcv's ``roi_align`` with average pooling.

    Args:
        features (Tensor): (B, C, H, W).
        rois (Tensor): (N, 5), batch index, x1, y1, x2, y2 in input pixels.
        output_height, output_width (int): The size of each RoI's features.
        spatial_scale (float): ``features``' size over the input's.
        sampling_ratio (int): Samples per output bin along each side; 0:
            as many as the bin is wide (in feature pixels), rounded up.
        aligned (bool): Whether a pixel's centre is at its index + 0.5
            (ONNX's ``half_pixel``), else at its index.

    Returns:
        Tensor: (N, C, output_height, output_width).
    """
    return mmcv_roi_align(features, rois, (output_height, output_width),
                          spatial_scale, sampling_ratio, 'avg', aligned)


@roi_align.register_fake
def _roi_align_fake(features, rois, output_height, output_width, spatial_scale,
                    sampling_ratio, aligned):
    return features.new_empty(
        (rois.shape[0], features.shape[1], output_height, output_width))


def onnx_translations():
    """The exporter's ``custom_translation_table`` for these ops, as ONNX
    Script functions (the onnx extra's onnxscript)."""
    from onnxscript import opset20 as op

    def batched_nms_onnx(boxes, scores, groups, num_groups: int,
                         iou_threshold: float):
        """:func:`batched_nms` in ONNX: NonMaxSuppression with one class
        per group, each box scored in its own group only, then the kept
        boxes in the order of their scores.

        NonMaxSuppression drops a box whose IoU with a kept one is above
        the threshold, as mmcv does, and compares coordinates as they are,
        as mmcv does when it runs NMS class by class; mmcv shifts each
        group's boxes apart instead when there are fewer than 10000, which
        rounds their coordinates (by about 1e-4 px at 1000 px and 80
        classes).
        """
        group_ids = op.Range(
            op.Constant(value_int=0), op.Constant(value_int=num_groups),
            op.Constant(value_int=1))
        in_group = op.Equal(
            op.Unsqueeze(groups, [0]), op.Unsqueeze(group_ids, [1]))
        minus_inf = op.Constant(value_float=float('-inf'))
        # (1, num_groups, N): NonMaxSuppression keeps no box of a group
        # whose score is not above the score threshold, -inf
        group_scores = op.Unsqueeze(
            op.Where(in_group, op.Unsqueeze(scores, [0]), minus_inf), [0])
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, [0]), group_scores,
            op.Constant(value_ints=[ALL_BOXES]),
            op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[float('-inf')]))
        kept = op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])
        kept_scores = op.Gather(scores, kept)
        _, order = op.TopK(kept_scores, op.Shape(kept), largest=1, sorted=1)
        return op.Gather(kept, order)

    def roi_align_onnx(features, rois, output_height: int, output_width: int,
                       spatial_scale: float, sampling_ratio: int,
                       aligned: bool):
        """:func:`roi_align` in ONNX: RoiAlign (opset 16 or later), whose
        ``half_pixel`` mode is mmcv's ``aligned=True`` and
        ``output_half_pixel`` its ``aligned=False``."""
        batch_indices = op.Cast(
            op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=7)  # int64
        boxes = op.Slice(rois, [1], [5], [1])
        return op.RoiAlign(
            features,
            boxes,
            batch_indices,
            coordinate_transformation_mode='half_pixel'
            if aligned else 'output_half_pixel',
            mode='avg',
            output_height=output_height,
            output_width=output_width,
            sampling_ratio=sampling_ratio,
            spatial_scale=spatial_scale)

    return {
        torch.ops.mmcvt.batched_nms.default: batched_nms_onnx,
        torch.ops.mmcvt.roi_align.default: roi_align_onnx,
    }
