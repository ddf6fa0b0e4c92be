"""Whole MMDetection detectors as modules from a raw image to detections,
which torch's ONNX exporter turns into graphs of standard ONNX ops.

A :class:`Detections` module takes ``image``, (1, 3, H, W) float32 RGB 0 to
255 at any height and width, and returns what ``model.predict`` gives for
that image (its ``pred_instances``, at the image's own size, scale factor
1):

- ``bboxes``: (N, 4) float32, x1, y1, x2, y2 in input pixels;
- ``scores``: (N, ) float32;
- ``labels``: (N, ) int64;
- ``masks``: (N, H, W) bool, for instance segmentation (Mask R-CNN,
  Cascade Mask R-CNN).

The config's ``test_cfg`` (score threshold, NMS IoU, detections per image)
is inside, as are the data preprocessor's normalisation and its padding to
``pad_size_divisor``. One image a call: MMDetection post-processes images
one by one.

MMDetection's own ``predict`` does not export: it branches in Python on how
many boxes survive (``if rois.shape[0] == 0``), which an exported graph
cannot, and runs mmcv's NMS and RoIAlign. The modules here call the
detector's own layers, box coders and prior generators, and re-state only
the post-processing, with no branch on data and with NMS and RoIAlign as
:mod:`mmcvt.deployment.ops`. Each function names the MMDetection code it
follows; ``tests/test_detector_export.py`` checks them against
``model.predict``.

Supported: two-stage detectors with an RPN and a standard or cascade RoI
head (Faster, Mask and Cascade Mask R-CNN), single-stage detectors whose
head is an anchor head post-processed as MMDetection's ``BaseDenseHead``
does (RetinaNet), and DINO.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.necks import ExtraLevels
from .deformable import with_sizes_as_numbers
from .inputs import RawImageInput
from .ops import batched_nms, roi_align

OUTPUT_NAMES = ('bboxes', 'scores', 'labels')
MASK_OUTPUT = 'masks'


def pad_to_multiple(image, divisor, value):
    """Pads ``image`` (B, C, H, W) at the bottom and right to multiples of
    ``divisor``, as MMDetection's data preprocessor does after
    normalising."""
    if divisor <= 1:
        return image
    height, width = image.shape[-2:]
    return F.pad(
        image, (0, (divisor - width % divisor) % divisor, 0,
                (divisor - height % divisor) % divisor),
        value=value)


def nms_settings(nms_cfg, where):
    """``(iou_threshold, class_agnostic)`` of a test_cfg's ``nms``, or a
    ValueError naming ``where`` for what ONNX's NonMaxSuppression does not
    do."""
    nms_cfg = dict(nms_cfg)
    kind = nms_cfg.pop('type', 'nms')
    iou_threshold = nms_cfg.pop('iou_threshold', None)
    class_agnostic = nms_cfg.pop('class_agnostic', False)
    nms_cfg.pop('split_thr', None)  # how mmcv runs it, not what it gives
    if kind != 'nms' or iou_threshold is None or nms_cfg:
        raise ValueError(
            f'{where}: the export runs plain NMS, dict(type=\'nms\', '
            f'iou_threshold=...), not {dict(type=kind, **nms_cfg)}')
    return iou_threshold, class_agnostic


def grouped_nms(boxes, scores, groups, num_groups, nms_cfg, where):
    """The indices of the boxes that MMDetection's ``batched_nms`` keeps,
    best first."""
    iou_threshold, class_agnostic = nms_settings(nms_cfg, where)
    if class_agnostic:
        groups, num_groups = torch.zeros_like(groups), 1
    return batched_nms(boxes, scores, groups, num_groups, iou_threshold)


def top_k(scores, k):
    """The ``k`` best of ``scores`` (N, ), all of them when ``k`` <= 0 or
    there are fewer: ``(values, indices)``, best first."""
    count = scores.shape[0]
    k = count if k <= 0 else torch.sym_min(k, count)
    return scores.topk(k)


def drop_small_boxes(boxes, min_size, *others):
    """MMDetection's ``min_bbox_size`` filter: keeps the boxes wider and
    taller than ``min_size``, with the same rows of ``others``."""
    if min_size < 0:
        return (boxes, *others)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = ((width > min_size) & (height > min_size)).nonzero().squeeze(1)
    return tuple(t[keep] for t in (boxes, *others))


def decode_boxes(coder, priors, deltas, img_shape):
    """``DeltaXYWHBBoxCoder.decode`` (MMDetection's ``delta2bbox``) of (N, 4)
    ``deltas`` on (N, 4) ``priors``, boxes clipped to ``img_shape``.

    Restated because ``delta2bbox`` returns early on zero boxes, a branch
    on a count that the exporter cannot take.
    """
    deltas = deltas * deltas.new_tensor(coder.stds) + deltas.new_tensor(
        coder.means)
    centres = (priors[:, :2] + priors[:, 2:]) * 0.5
    sizes = priors[:, 2:] - priors[:, :2]
    shifts = sizes * deltas[:, :2]
    max_ratio = abs(math.log(16 / 1000))  # the coder's default wh_ratio_clip
    if coder.add_ctr_clamp:
        shifts = shifts.clamp(min=-coder.ctr_clamp, max=coder.ctr_clamp)
        scales = deltas[:, 2:].clamp(max=max_ratio)
    else:
        scales = deltas[:, 2:].clamp(min=-max_ratio, max=max_ratio)
    centres = centres + shifts
    sizes = sizes * scales.exp()
    x1, y1 = (centres - sizes * 0.5).unbind(1)
    x2, y2 = (centres + sizes * 0.5).unbind(1)
    if coder.clip_border:
        height, width = img_shape
        x1, x2 = x1.clamp(min=0, max=width), x2.clamp(min=0, max=width)
        y1, y2 = y1.clamp(min=0, max=height), y2.clamp(min=0, max=height)
    return torch.stack([x1, y1, x2, y2], dim=1)


def class_probabilities(head, logits):
    """(N, num_classes) scores of a dense head's logits, as
    ``BaseDenseHead._predict_by_feat_single`` computes them."""
    if head.use_sigmoid_cls:
        return logits.sigmoid()
    return logits.softmax(-1)[:, :-1]


def level_maps(head, cls_score, bbox_pred):
    """One level's maps of the first image, (A * C, H, W) and (A * 4, H, W),
    as rows: (H * W * A, C) and (H * W * A, 4)."""
    encode_size = head.bbox_coder.encode_size
    return (cls_score[0].permute(1, 2, 0).reshape(-1, head.cls_out_channels),
            bbox_pred[0].permute(1, 2, 0).reshape(-1, encode_size))


def dense_head_detections(head, feats, img_shape, candidates, num_groups,
                          where):
    """What RPNHead's and BaseDenseHead's post-processing share: on each
    level the ``candidates`` of its scores, their boxes decoded, small ones
    dropped, NMS within each group, the ``max_per_img`` best.

    Args:
        candidates (callable): (H * W * A, C) scores of a level and the
            level's index -> that level's candidates' scores (K, ), anchor
            indices (K, ) and NMS groups (K, ).

    Returns:
        tuple[Tensor]: bboxes (N, 4), scores (N, ), groups (N, ).
    """
    cfg = head.test_cfg
    cls_scores, bbox_preds = head(feats)
    priors = head.prior_generator.grid_priors(
        [score.shape[-2:] for score in cls_scores],
        dtype=cls_scores[0].dtype,
        device=cls_scores[0].device)
    kept = dict(deltas=[], priors=[], scores=[], groups=[])
    for level, (cls_score,
                bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
        logits, deltas = level_maps(head, cls_score, bbox_pred)
        scores, anchors, groups = candidates(
            class_probabilities(head, logits), level)
        kept['deltas'].append(deltas[anchors])
        kept['priors'].append(priors[level][anchors])
        kept['scores'].append(scores)
        kept['groups'].append(groups)
    kept = {key: torch.cat(values) for key, values in kept.items()}
    boxes = decode_boxes(head.bbox_coder, kept['priors'], kept['deltas'],
                         img_shape)
    boxes, scores, groups = drop_small_boxes(boxes,
                                             cfg.get('min_bbox_size', -1),
                                             kept['scores'], kept['groups'])
    keep = grouped_nms(boxes, scores, groups, num_groups, cfg.nms,
                       where)[:cfg.max_per_img]
    return boxes[keep], scores[keep], groups[keep]


def rpn_proposals(rpn_head, feats, img_shape):
    """The RPN's proposals, (N, 4), as ``RPNHead.predict`` gives them with
    its test_cfg: each level's ``nms_pre`` best anchors, decoded, small
    boxes dropped, NMS within each level, the ``max_per_img`` best."""

    def best_anchors(scores, level):
        scores, anchors = top_k(
            scores.reshape(-1), rpn_head.test_cfg.get('nms_pre', -1))
        return scores, anchors, torch.full_like(anchors, level)

    boxes, _, _ = dense_head_detections(rpn_head, feats, img_shape,
                                        best_anchors,
                                        rpn_head.prior_generator.num_levels,
                                        'rpn_head.test_cfg.nms')
    return boxes


def dense_detections(head, feats, img_shape):
    """A single-stage anchor head's detections, as
    ``BaseDenseHead.predict_by_feat`` gives them with its test_cfg: on each
    level the ``nms_pre`` best (anchor, class) pairs scored above
    ``score_thr`` (``filter_scores_and_topk``), decoded, small boxes
    dropped, NMS within each class, the ``max_per_img`` best.

    Returns:
        tuple[Tensor]: bboxes (N, 4), scores (N, ), labels (N, ).
    """

    def best_pairs(scores, level):
        above = (scores > head.test_cfg.get('score_thr', 0)).nonzero()
        scores, best = top_k(scores[above[:, 0], above[:, 1]],
                             head.test_cfg.get('nms_pre', -1))
        anchors, labels = above[best].unbind(1)
        return scores, anchors, labels

    return dense_head_detections(head, feats, img_shape, best_pairs,
                                 head.num_classes, 'bbox_head.test_cfg.nms')


def roi_features(extractor, feats, rois):
    """``SingleRoIExtractor.forward`` at test time: each RoI (N, 5) pooled
    from the level its size maps to. Returns (N, C, out_h, out_w).

    The levels' RoIs are pooled one level after another and put back in
    order by one gather, where MMDetection writes each level's into a
    tensor of zeros: in a graph each such write is a copy of the whole
    tensor.
    """
    feats = feats[:extractor.num_inputs]
    layers = extractor.roi_layers
    out_h, out_w = layers[0].output_size

    def pool(level, level_rois):
        layer = layers[level]
        return roi_align(feats[level], level_rois, out_h, out_w,
                         float(layer.spatial_scale), int(layer.sampling_ratio),
                         bool(layer.aligned))

    if len(feats) == 1:
        return pool(0, rois)
    levels = extractor.map_roi_levels(rois, len(feats))
    at_levels = [(levels == level).nonzero().squeeze(1)
                 for level in range(len(feats))]
    pooled = torch.cat(
        [pool(level, rois[at]) for level, at in enumerate(at_levels)])
    return pooled[torch.cat(at_levels).argsort()]


def with_batch_index(boxes):
    """RoIs of the one image: (N, 5), batch index 0 and the box."""
    return torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], 1)


def rcnn_detections(bbox_head, rois, cls_score, bbox_pred, img_shape, cfg):
    """``BBoxHead._predict_by_feat_single`` and ``multiclass_nms``: each RoI
    decoded for every class, the (RoI, class) pairs scored above
    ``score_thr``, NMS within each class, the ``max_per_img`` best.

    Returns:
        tuple[Tensor]: bboxes (N, 4), scores (N, ), labels (N, ).
    """
    scores = F.softmax(cls_score, dim=-1)
    num_rois = rois.shape[0]
    num_classes = scores.shape[1] - 1
    regressed = 1 if bbox_head.reg_class_agnostic else bbox_head.num_classes
    boxes = decode_boxes(bbox_head.bbox_coder,
                         rois[:, 1:].repeat_interleave(regressed, dim=0),
                         bbox_pred.reshape(-1, 4),
                         img_shape).view(num_rois, regressed, 4)
    boxes = boxes.expand(num_rois, num_classes, 4).reshape(-1, 4)
    scores = scores[:, :-1].reshape(-1)
    above = (scores > cfg.score_thr).nonzero().squeeze(1)
    boxes, scores, labels = boxes[above], scores[above], above % num_classes
    keep = grouped_nms(boxes, scores, labels, num_classes, cfg.nms,
                       'roi_head.test_cfg.nms')[:cfg.max_per_img]
    return boxes[keep], scores[keep], labels[keep]


def regress_by_class(bbox_head, boxes, labels, bbox_pred, img_shape):
    """``BBoxHead.regress_by_class``: each box (N, 4) moved by its class's
    deltas in ``bbox_pred`` (N, 4 or 4 * num_classes)."""
    if not bbox_head.reg_class_agnostic:
        columns = labels[:, None] * 4 + torch.arange(4, device=labels.device)
        bbox_pred = bbox_pred.gather(1, columns)
    return decode_boxes(bbox_head.bbox_coder, boxes, bbox_pred, img_shape)


def paste_masks(probabilities, boxes, height, width):
    """``_do_paste_mask`` of MMDetection on the CPU: each RoI's mask (N, h,
    w) resampled (bilinearly, ``grid_sample`` with ``align_corners=False``)
    into its box on an image of ``height`` x ``width``, and zero beyond one
    pixel around the box. Returns (N, height, width).

    As two matmuls with interpolation matrices, which is what
    ``grid_sample`` computes on a grid whose x depends on the column only
    and y on the row only, where a ``grid_sample`` on the whole image would
    hold an (N, height, width, 2) grid.
    """
    x0, y0, x1, y1 = boxes.unbind(1)
    rows = interpolation_matrix(y0, y1, height, probabilities.shape[1])
    columns = interpolation_matrix(x0, x1, width, probabilities.shape[2])
    return rows @ probabilities @ columns.transpose(1, 2)


def interpolation_matrix(start, end, size, mask_size):
    """(N, size, mask_size): row p holds the bilinear weights of the mask
    cells that image pixel p reads, for boxes from ``start`` to ``end``
    (N, ) along one axis; zero outside ``[floor(start) - 1, ceil(end) +
    1)``, which is what MMDetection pastes into on the CPU."""
    pixels = torch.arange(size, device=start.device, dtype=torch.float32)
    centres = pixels + 0.5
    normalised = (centres - start[:, None]) / (end - start)[:, None] * 2 - 1
    # a box of zero width gives inf; MMDetection sets those to 0
    normalised = torch.where(
        torch.isinf(normalised), torch.zeros_like(normalised), normalised)
    # grid_sample's unnormalisation for align_corners=False
    position = ((normalised + 1) * mask_size - 1) / 2
    cells = torch.arange(mask_size, device=start.device, dtype=torch.float32)
    weights = (1 - (position[:, :, None] - cells).abs()).clamp(min=0)
    first = (start.floor() - 1).clamp(min=0)
    last = (end.ceil() + 1).clamp(max=size)
    inside = (pixels >= first[:, None]) & (pixels < last[:, None])
    return weights * inside[:, :, None]


def binary_masks(probabilities, labels, boxes, img_shape, mask_head, cfg):
    """``FCNMaskHead._predict_by_feat_single``: each detection's mask of its
    class, pasted at the image size and thresholded at ``mask_thr_binary``.
    ``probabilities``: (N, num_classes or 1, h, w), after the sigmoid."""
    if not mask_head.class_agnostic:
        probabilities = probabilities[torch.arange(labels.shape[0]), labels]
    else:
        probabilities = probabilities[:, 0]
    pasted = paste_masks(probabilities, boxes, *img_shape)
    threshold = cfg.mask_thr_binary
    if threshold >= 0:
        return pasted >= threshold
    return (pasted * 255).to(torch.uint8)


class Detections(nn.Module):
    """A detector from a raw image (1, 3, H, W), RGB 0..255, to its
    detections: ``bboxes``, ``scores``, ``labels`` and, for instance
    segmentation, ``masks`` (see the module's docstring)."""

    def __init__(self, detector):
        super().__init__()
        self.input = RawImageInput(detector.data_preprocessor)
        self.pad_size_divisor = getattr(detector.data_preprocessor,
                                        'pad_size_divisor', 1)
        self.pad_value = getattr(detector.data_preprocessor, 'pad_value', 0)
        self.detector = detector

    dynamic_axes = {2: 'height', 3: 'width'}  # one image a call
    with_masks = False

    @property
    def output_names(self):
        return OUTPUT_NAMES + ((MASK_OUTPUT, ) if self.with_masks else ())

    def forward(self, image):
        img_shape = tuple(image.shape[2:])
        inputs = pad_to_multiple(
            self.input(image), self.pad_size_divisor, self.pad_value)
        return self.detect(self.detector.extract_feat(inputs), img_shape)

    def detect(self, feats, img_shape):
        """The detections from the neck's (or backbone's) feature maps of
        the padded image, for an image of ``img_shape`` (height, width)."""
        raise NotImplementedError

    def size_problem(self, height, width):
        """Why the detector cannot run on an image of ``height`` x
        ``width``, or None."""
        return None

    # score_threshold, max_detections: the cut-offs of the test_cfg


class SingleStageDetections(Detections):
    """RetinaNet and the like: an anchor head post-processed by
    ``BaseDenseHead.predict_by_feat``."""

    @property
    def score_threshold(self):
        return self.detector.bbox_head.test_cfg.get('score_thr', 0)

    @property
    def max_detections(self):
        return self.detector.bbox_head.test_cfg.max_per_img

    def detect(self, feats, img_shape):
        return dense_detections(self.detector.bbox_head, feats, img_shape)


class TwoStageDetections(Detections):
    """Faster, Mask and Cascade Mask R-CNN: an RPN, then a standard or
    cascade RoI head (``StandardRoIHead.predict``,
    ``CascadeRoIHead.predict``)."""

    def __init__(self, detector):
        super().__init__(detector)
        self.with_masks = detector.roi_head.with_mask
        self.cascade = isinstance(detector.roi_head.bbox_head, nn.ModuleList)

    @property
    def score_threshold(self):
        return self.detector.roi_head.test_cfg.score_thr

    @property
    def max_detections(self):
        return self.detector.roi_head.test_cfg.max_per_img

    def detect(self, feats, img_shape):
        proposals = rpn_proposals(self.detector.rpn_head, feats, img_shape)
        roi_head = self.detector.roi_head
        if self.cascade:
            bbox_head, rois, cls_score, bbox_pred = self.cascade_boxes(
                feats, with_batch_index(proposals), img_shape)
        else:
            bbox_head = roi_head.bbox_head
            rois = with_batch_index(proposals)
            bbox_feats = roi_features(roi_head.bbox_roi_extractor, feats, rois)
            if roi_head.with_shared_head:
                bbox_feats = roi_head.shared_head(bbox_feats)
            cls_score, bbox_pred = bbox_head(bbox_feats)
        boxes, scores, labels = rcnn_detections(bbox_head, rois, cls_score,
                                                bbox_pred, img_shape,
                                                roi_head.test_cfg)
        if not self.with_masks:
            return boxes, scores, labels
        mask_rois = with_batch_index(boxes)
        if self.cascade:
            # CascadeRoIHead.predict_mask: every stage's masks, averaged
            probabilities = torch.stack([
                head(roi_features(extractor, feats, mask_rois)).sigmoid()
                for extractor, head in zip(roi_head.mask_roi_extractor,
                                           roi_head.mask_head)
            ]).mean(0)
            mask_head = roi_head.mask_head[-1]
        else:
            mask_feats = roi_features(roi_head.mask_roi_extractor, feats,
                                      mask_rois)
            if roi_head.with_shared_head:
                mask_feats = roi_head.shared_head(mask_feats)
            mask_head = roi_head.mask_head
            probabilities = mask_head(mask_feats).sigmoid()
        masks = binary_masks(probabilities, labels, boxes, img_shape,
                             mask_head, roi_head.test_cfg)
        return boxes, scores, labels, masks

    def cascade_boxes(self, feats, rois, img_shape):
        """``CascadeRoIHead._refine_roi``: each stage regresses the RoIs by
        its best class for the next; the stages' class logits averaged.

        Returns:
            tuple: The last stage's bbox head, its RoIs, the averaged
            logits and its box deltas.
        """
        roi_head = self.detector.roi_head
        stage_logits = []
        for stage, (extractor, bbox_head) in enumerate(
                zip(roi_head.bbox_roi_extractor, roi_head.bbox_head)):
            cls_score, bbox_pred = bbox_head(
                roi_features(extractor, feats, rois))
            stage_logits.append(cls_score)
            if stage < roi_head.num_stages - 1:
                refined = regress_by_class(bbox_head, rois[:, 1:],
                                           cls_score[:, :-1].argmax(dim=1),
                                           bbox_pred, img_shape)
                rois = torch.cat([rois[:, :1], refined], dim=1)
        cls_score = sum(stage_logits) / float(len(stage_logits))
        return bbox_head, rois, cls_score, bbox_pred


def pixel_centres(size, like):
    """0.5, 1.5, ... ``size`` - 0.5: ``torch.linspace(0.5, size - 0.5,
    size)`` exactly, whose number of steps the exporter fixes."""
    return torch.arange(size, dtype=torch.float32, device=like.device) + 0.5


class DINODetections(Detections):
    """DINO (``DINO.predict``) on an image the preprocessor does not pad,
    the encoder's and decoder's deformable attention given the levels'
    sizes as numbers (:class:`~.deformable.DeformableAttentionOfSizes`);
    on a copy of the detector's modules."""

    score_threshold = 0  # DINO keeps its max_per_img best, whatever they score

    def __init__(self, detector):
        exported = with_sizes_as_numbers(detector)
        # size_problem refuses an image with too few tokens before the
        # export, naming the smallest size whatever the arch; the neck's own
        # check, which stops a forward pass instead, would end its search
        for module in exported.modules():
            if isinstance(module, ExtraLevels):
                module.min_tokens = None
        super().__init__(exported)

    @property
    def max_detections(self):
        head = self.detector.bbox_head
        return head.test_cfg.get('max_per_img', self.detector.num_queries)

    def num_tokens(self, height, width):
        """The encoder's tokens for an image of ``height`` x ``width``: the
        pixels of its feature maps."""
        with torch.no_grad():
            feats = self.detector.extract_feat(
                self.input(torch.zeros(1, 3, height, width)))
        return sum(feat.shape[-2] * feat.shape[-1] for feat in feats)

    def size_problem(self, height, width):
        queries = self.detector.num_queries
        tokens = self.num_tokens(height, width)
        if tokens >= queries:
            return None
        low, high = max(height, width), 2 * max(height, width)
        while self.num_tokens(high, high) < queries:
            low, high = high, 2 * high
        while high - low > 1:  # low has too few tokens, high enough
            middle = (low + high) // 2
            if self.num_tokens(middle, middle) < queries:
                low = middle
            else:
                high = middle
        return (f'DINO picks its {queries} queries among the encoder\'s '
                f'tokens, the pixels of its feature maps: an image of '
                f'{height}x{width} gives {tokens}. Give it images of '
                f'{high}x{high} or more (or as many pixels)')

    def detect(self, feats, img_shape):
        dino = self.detector
        tokens, positions, sizes = self.flatten_levels(feats)
        valid_ratios = tokens.new_ones(tokens.shape[0], len(sizes), 2)
        level_starts = [0]
        for height, width in sizes[:-1]:
            level_starts.append(level_starts[-1] + height * width)
        levels = dict(
            spatial_shapes=sizes,
            level_start_index=level_starts,
            valid_ratios=valid_ratios)
        memory = self.encode(tokens, positions, levels)
        query, reference_points = self.select_queries(memory, sizes)
        decoded = dino.forward_decoder(
            query=query,
            memory=memory,
            memory_mask=None,
            reference_points=reference_points,
            **levels)
        cls_scores, bbox_preds = dino.bbox_head(decoded['hidden_states'],
                                                decoded['references'])
        result, = dino.bbox_head.predict_by_feat(
            cls_scores,
            bbox_preds,
            batch_img_metas=[dict(img_shape=img_shape, scale_factor=(1., 1.))],
            rescale=True)
        return result.bboxes, result.scores, result.labels

    def flatten_levels(self, feats):
        """``DeformableDETR.pre_transformer`` without padding: each level's
        tokens, (B, h * w, C), with its sine position and level embedding,
        concatenated; and the levels' (h, w)."""
        dino = self.detector
        tokens, positions, sizes = [], [], []
        for level, feat in enumerate(feats):
            batch, channels, height, width = feat.shape
            position = dino.positional_encoding(None, input=feat)
            tokens.append(feat.view(batch, channels, -1).permute(0, 2, 1))
            positions.append(
                position.view(batch, channels, -1).permute(0, 2, 1) +
                dino.level_embed[level].view(1, 1, -1))
            sizes.append((height, width))
        return torch.cat(tokens, 1), torch.cat(positions, 1), sizes

    def encode(self, tokens, positions, levels):
        """``DeformableDetrTransformerEncoder.forward``, with its reference
        points (``get_encoder_reference_points``) from the levels' sizes as
        numbers."""
        valid_ratios = levels['valid_ratios']
        references = []
        for level, (height, width) in enumerate(levels['spatial_shapes']):
            ref_y, ref_x = torch.meshgrid(
                pixel_centres(height, tokens), pixel_centres(width, tokens))
            ref_y = ref_y.reshape(-1)[None] / (
                valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (
                valid_ratios[:, None, level, 0] * width)
            references.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(references, 1)[:, :, None] * \
            valid_ratios[:, None]
        for layer in self.detector.encoder.layers:
            tokens = layer(
                query=tokens,
                query_pos=positions,
                key_padding_mask=None,
                reference_points=reference_points,
                **levels)
        return tokens

    def select_queries(self, memory, sizes):
        """``DINO.pre_decoder`` at test time: the ``num_queries`` encoder
        tokens of best class score, as the decoder's reference boxes.

        Returns:
            tuple[Tensor]: The query embeddings (B, num_queries, C) and
            the reference boxes (B, num_queries, 4), cx, cy, w, h in 0..1.
        """
        dino = self.detector
        output_memory, output_proposals = self.encoder_proposals(memory, sizes)
        layer = dino.decoder.num_layers
        enc_outputs_class = dino.bbox_head.cls_branches[layer](output_memory)
        enc_outputs_coord_unact = dino.bbox_head.reg_branches[layer](
            output_memory) + output_proposals
        topk_indices = torch.topk(
            enc_outputs_class.max(-1)[0], k=dino.num_queries, dim=1)[1]
        topk_coords_unact = torch.gather(
            enc_outputs_coord_unact, 1,
            topk_indices.unsqueeze(-1).repeat(1, 1, 4))
        query = dino.query_embedding.weight[:, None, :]
        query = query.repeat(1, memory.shape[0], 1).transpose(0, 1)
        return query, topk_coords_unact.sigmoid()

    def encoder_proposals(self, memory, sizes):
        """``DeformableDETR.gen_encoder_output_proposals`` without a memory
        mask, from the levels' sizes as numbers: a box centred on each token,
        its size doubling with each level, as logits."""
        batch = memory.shape[0]
        proposals = []
        for level, (height, width) in enumerate(sizes):
            grid_y, grid_x = torch.meshgrid(
                pixel_centres(height, memory) - 0.5,
                pixel_centres(width, memory) - 0.5)
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            one = memory.new_ones(())
            scale = torch.stack([one * width, one * height]).view(1, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**level)
            proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).sum(
            -1, keepdim=True) == proposals.shape[-1]
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(~valid, float('inf'))
        output_memory = memory.masked_fill(~valid, float(0))
        output_memory = self.detector.memory_trans_fc(output_memory)
        output_memory = self.detector.memory_trans_norm(output_memory)
        return output_memory, proposals


def same_method(module, base, name):
    """Whether ``module`` runs ``base``'s own ``name``, not an override."""
    return getattr(type(module), name) is getattr(base, name)


def roi_extractor_problem(extractor, where):
    from mmcv.ops import RoIAlign
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    if not isinstance(extractor, SingleRoIExtractor):
        return f'{where} is a {type(extractor).__name__}, not a ' \
            f'SingleRoIExtractor'
    layer = extractor.roi_layers[0]
    if not isinstance(layer, RoIAlign) or layer.pool_mode != 'avg':
        return f'{where} pools with {layer!r}, not RoIAlign\'s average ' \
            f'(ONNX RoiAlign\'s max mode is not mmcv\'s)'
    return None


def box_coder_problem(head, where):
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    if type(head.bbox_coder) is not DeltaXYWHBBoxCoder:
        return f'{where} decodes with {type(head.bbox_coder).__name__}, ' \
            f'not DeltaXYWHBBoxCoder'
    return None


def two_stage_problem(detector):
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    from mmdet.models.roi_heads.bbox_heads import (BBoxHead, ConvFCBBoxHead,
                                                   Shared2FCBBoxHead,
                                                   Shared4Conv1FCBBoxHead)
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead

    # the heads that post-process as BBoxHead and FCNMaskHead, as the
    # export re-states it (their subclasses may do otherwise)
    bbox_heads = (BBoxHead, ConvFCBBoxHead, Shared2FCBBoxHead,
                  Shared4Conv1FCBBoxHead)
    if type(detector.rpn_head) is not RPNHead:
        return f'its rpn_head is a {type(detector.rpn_head).__name__}, ' \
            f'not an RPNHead'
    roi_head = detector.roi_head
    if type(roi_head) not in (StandardRoIHead, CascadeRoIHead):
        return f'its roi_head is a {type(roi_head).__name__}, not a ' \
            f'StandardRoIHead or CascadeRoIHead'
    cascade = type(roi_head) is CascadeRoIHead
    stages = roi_head.num_stages if cascade else 1

    def each(modules):
        return list(modules) if cascade else [modules]

    def name(attribute, i):
        """The module's name in the detector, as a message gives it."""
        where = f'roi_head.{attribute}'
        return f'{where}[{i}]' if stages > 1 else where

    problems = [box_coder_problem(detector.rpn_head, 'rpn_head')]
    for i, (extractor, head) in enumerate(
            zip(each(roi_head.bbox_roi_extractor), each(roi_head.bbox_head))):
        where = name('bbox_head', i)
        problems.append(
            roi_extractor_problem(extractor, name('bbox_roi_extractor', i)))
        problems.append(box_coder_problem(head, where))
        if type(head) not in bbox_heads or head.custom_cls_channels or \
                head.custom_activation:
            problems.append(f'{where} ({type(head).__name__}) does not '
                            f'post-process as BBoxHead')
    if roi_head.with_mask:
        for i, (extractor, head) in enumerate(
                zip(
                    each(roi_head.mask_roi_extractor),
                    each(roi_head.mask_head))):
            where = name('mask_head', i)
            problems.append(
                roi_extractor_problem(extractor, name('mask_roi_extractor',
                                                      i)))
            if type(head) is not FCNMaskHead:
                problems.append(f'{where} ({type(head).__name__}) does not '
                                f'paste masks as FCNMaskHead')
    return next((p for p in problems if p), None)


def single_stage_problem(detector):
    from mmdet.models.dense_heads import AnchorHead, RetinaHead
    head = detector.bbox_head
    # the anchor heads that post-process as BaseDenseHead does
    if type(head) not in (AnchorHead, RetinaHead):
        return f'its bbox_head is a {type(head).__name__}, not RetinaNet\'s ' \
            f'or another anchor head that post-processes as BaseDenseHead'
    if getattr(head.loss_cls, 'custom_cls_channels', False):
        return 'its bbox_head scores classes with a custom activation'
    return box_coder_problem(head, 'bbox_head')


def dino_problem(detector):
    if getattr(detector.data_preprocessor, 'pad_size_divisor', 1) > 1:
        return 'its data preprocessor pads (pad_size_divisor > 1), which ' \
            'makes DINO mask the padding: the export covers unpadded ' \
            'inputs, as the DINO configs have them'
    return None


def detections_class(detector):
    """The :class:`Detections` class that exports ``detector``, or a
    ValueError saying what it has that the export does not cover."""
    from mmdet.models.detectors import (DINO, SingleStageDetector,
                                        TwoStageDetector)
    if isinstance(detector, DINO):
        cls, problem = DINODetections, dino_problem(detector)
    elif isinstance(detector, TwoStageDetector):
        cls, problem = TwoStageDetections, two_stage_problem(detector)
    elif isinstance(detector, SingleStageDetector) and same_method(
            detector, SingleStageDetector, 'predict'):
        cls, problem = SingleStageDetections, single_stage_problem(detector)
    else:
        cls, problem = None, (
            'it is none of the detectors the export covers: '
            'two-stage (Faster, Mask, Cascade Mask R-CNN), '
            'single-stage with an anchor head (RetinaNet), and DINO')
    if problem:
        raise ValueError(f'a whole {type(detector).__name__} is not '
                         f'exported: {problem}')
    return cls


def detections_module(detector):
    """``detector`` as a :class:`Detections` module, in eval mode."""
    return detections_class(detector)(detector).eval()
