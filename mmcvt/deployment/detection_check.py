"""An exported detector's detections in onnxruntime against
``model.predict``'s on the same image, detection by detection.

Two runs of the same detector in fp32 that add in different orders agree
to about 1e-6 on every box and score, but not on which detections there
are where a score sits on a cut-off: the score threshold, or the lowest
score kept when ``max_per_img`` detections are. So every detection must
have a partner of the same label with a box IoU of at least
:data:`BOX_IOU`, a score within :data:`SCORE_DIFFERENCE` and a mask IoU of
at least :data:`MASK_IOU`, except those whose score is within
:data:`SCORE_DIFFERENCE` of a cut-off, which may have none.

A box less than :data:`TINY_BOX` pixel high or wide (a box clipped at the
image's border, say) is the exception to the IoU bound: there, a
difference of 1e-5 px in its corners, fp32's at a few hundred pixels,
moves the IoU by percents. Its corners must be within
:data:`TINY_BOX_PIXELS` of its partner's instead.
"""
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from .inputs import INPUT_NAME, predicted_samples

BOX_IOU = 0.99
SCORE_DIFFERENCE = 1e-3
MASK_IOU = 0.98
TINY_BOX = 1.0
TINY_BOX_PIXELS = 0.01
# a pair of the same label that overlaps less is two detections, not one
SAME_OBJECT_IOU = 0.5


def predicted_instances(model, image):
    """``model.predict`` on ``image`` (1, 3, H, W), RGB 0..255, through its
    data preprocessor, at the image's own size (scale factor 1): the
    ``pred_instances`` an exported graph of ``model`` must give."""
    from mmdet.structures import DetDataSample
    sample, = predicted_samples(
        model, image, DetDataSample, scale_factor=(1.0, 1.0))
    return sample.pred_instances


def box_iou(boxes, others):
    """(N, M) IoU of x1, y1, x2, y2 boxes (N, 4) and (M, 4)."""
    low = np.maximum(boxes[:, None, :2], others[None, :, :2])
    high = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    overlap = np.clip(high - low, 0, None).prod(-1)

    def area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    union = area(boxes)[:, None] + area(others)[None] - overlap
    return np.where(union > 0, overlap / np.where(union > 0, union, 1), 1.0)


def mask_iou(mask, other):
    """IoU of two binary masks (H, W); 1 for two empty ones."""
    union = np.logical_or(mask, other).sum()
    return np.logical_and(mask, other).sum() / union if union else 1.0


@dataclass
class DetectionComparison:
    """How one image's detections by the graph and by PyTorch agree."""
    num_output: int
    num_reference: int
    matched: int = 0
    worst_box_iou: float = 1.0  # of the pairs of boxes of 1 px or more
    worst_tiny_box_pixels: float = 0.0  # corners' distance, the others
    worst_score_difference: float = 0.0
    worst_mask_iou: float = None  # None without masks
    # the scores of detections without a partner, away from any cut-off
    unmatched: list = field(default_factory=list)
    # those within SCORE_DIFFERENCE of a cut-off
    unmatched_at_cutoff: int = 0

    @property
    def ok(self):
        return (self.worst_box_iou >= BOX_IOU
                and self.worst_tiny_box_pixels <= TINY_BOX_PIXELS
                and self.worst_score_difference <= SCORE_DIFFERENCE
                and (self.worst_mask_iou is None
                     or self.worst_mask_iou >= MASK_IOU)
                and not self.unmatched)

    def describe(self):
        text = (f'{self.num_output} detections by onnxruntime, '
                f'{self.num_reference} by PyTorch, {self.matched} matched; '
                f'worst box IoU {self.worst_box_iou:.5f}')
        if self.worst_tiny_box_pixels:
            text += (f' (boxes under {TINY_BOX:g} px: corners within '
                     f'{self.worst_tiny_box_pixels:.1e} px)')
        text += f', score difference {self.worst_score_difference:.1e}'
        if self.worst_mask_iou is not None:
            text += f', mask IoU {self.worst_mask_iou:.5f}'
        if self.unmatched_at_cutoff:
            text += (f'; {self.unmatched_at_cutoff} unmatched at a score '
                     f'cut-off')
        if self.unmatched:
            text += (f'; UNMATCHED: {len(self.unmatched)}, scored up to '
                     f'{max(self.unmatched):.4f}')
        return text


def compare_detections(output, reference, score_thr, max_per_img):
    """Pairs the graph's detections with PyTorch's (the assignment of least
    ``1 - box IoU + score difference`` within each label).

    Args:
        output (dict[str, np.ndarray]): The graph's ``bboxes``, ``scores``,
            ``labels`` and maybe ``masks``.
        reference (InstanceData): ``model.predict``'s ``pred_instances``.
        score_thr (float): The score threshold of the test_cfg (0 for
            none).
        max_per_img (int): How many detections the test_cfg keeps at most.

    Returns:
        DetectionComparison
    """
    expected = {
        key: reference.get(key).cpu().numpy()
        for key in output if reference.get(key) is not None
    }
    result = DetectionComparison(
        len(output['scores']),
        len(expected['scores']),
        worst_mask_iou=1.0 if 'masks' in expected else None)
    ious = box_iou(output['bboxes'], expected['bboxes'])
    differences = np.abs(output['scores'][:, None] - expected['scores'][None])
    same_label = output['labels'][:, None] == expected['labels'][None]
    paired_output, paired_reference = set(), set()
    if ious.size:
        cost = np.where(same_label, 1 - ious + differences, 1e6)
        for i, j in zip(*linear_sum_assignment(cost)):
            if not same_label[i, j] or ious[i, j] < SAME_OBJECT_IOU:
                continue
            paired_output.add(i)
            paired_reference.add(j)
            result.matched += 1
            boxes = np.stack([output['bboxes'][i], expected['bboxes'][j]])
            if (boxes[:, 2:] - boxes[:, :2]).min() < TINY_BOX:
                result.worst_tiny_box_pixels = max(
                    result.worst_tiny_box_pixels,
                    float(np.abs(boxes[0] - boxes[1]).max()))
            else:
                result.worst_box_iou = min(result.worst_box_iou, ious[i, j])
            result.worst_score_difference = max(result.worst_score_difference,
                                                differences[i, j])
            if 'masks' in expected:
                result.worst_mask_iou = min(
                    result.worst_mask_iou,
                    mask_iou(output['masks'][i], expected['masks'][j]))
    for scores, paired, others in ((output['scores'], paired_output,
                                    expected['scores']),
                                   (expected['scores'], paired_reference,
                                    output['scores'])):
        # where the other run may have cut its partner off
        cutoff = score_thr
        if max_per_img and len(others) >= max_per_img:
            cutoff = max(cutoff, float(others.min()))
        for i, score in enumerate(scores):
            if i in paired:
                continue
            if score <= cutoff + SCORE_DIFFERENCE:
                result.unmatched_at_cutoff += 1
            else:
                result.unmatched.append(float(score))
    return result


def verify_detections(path, model, module, images):
    """Runs the graph at ``path`` in onnxruntime and ``model.predict`` on
    each of ``images`` ((1, 3, H, W) RGB 0..255) and compares their
    detections, with the cut-offs of ``module`` (the model's
    :class:`~.detectors.Detections`).

    Returns:
        list[DetectionComparison]: One for each image.
    """
    from .onnx_export import onnxruntime_session
    session = onnxruntime_session(path)
    names = [output.name for output in session.get_outputs()]
    comparisons = []
    for image in images:
        reference = predicted_instances(model, image)
        output = dict(
            zip(names, session.run(None, {INPUT_NAME: image.numpy()})))
        comparisons.append(
            compare_detections(output, reference, module.score_threshold,
                               module.max_detections))
    return comparisons
