"""Exported graphs in onnxruntime, as the models that MMDetection's and
MMSegmentation's inferencers run: their ``test_step`` takes what the
config's test pipeline gives (a resized BGR image and its meta) and returns
the data samples that ``model.predict`` would, so that an inferencer draws
and writes the same things with a graph as with the PyTorch model.

They are given to an inferencer as its config's model, ``dict(type=cls,
path=...)``, which the inferencer builds instead of the PyTorch model.
"""
import contextlib
import json
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inputs import INPUT_NAME


def graph_metadata(path):
    """The metadata_props of the graph at ``path``, as a dict."""
    import onnx
    return {
        prop.key: prop.value
        for prop in onnx.load(path, load_external_data=False).metadata_props
    }


def graph_dataset_meta(path):
    """The classes and palette that the exporter stored in the graph at
    ``path`` (``metadata_props['dataset_meta']``), or None."""
    props = graph_metadata(path)
    return json.loads(props['dataset_meta']) if 'dataset_meta' in props \
        else None


class OnnxRuntimeModel(nn.Module):
    """A graph of :mod:`mmcvt.deployment` in an onnxruntime session on the
    CPU. Subclasses turn its outputs into data samples."""

    def __init__(self, path):
        super().__init__()
        from .onnx_export import onnxruntime_session
        self.path = path
        self.session = onnxruntime_session(path)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, image):
        """The graph's outputs, by name, for ``image`` (3, H, W) BGR as the
        pipeline loaded it."""
        rgb = image.flip(0)[None].float().numpy()
        return dict(
            zip(self.output_names, self.session.run(None, {INPUT_NAME: rgb})))

    def test_step(self, data):
        return [
            self.predict(self.run(image), sample)
            for image, sample in zip(data['inputs'], data['data_samples'])
        ]


class OnnxRuntimeDetector(OnnxRuntimeModel):
    """A detector's graph (:mod:`mmcvt.deployment.detectors`): boxes back in
    the original image's pixels, masks resized to its size."""

    def __init__(self, path):
        super().__init__(path)
        if 'bboxes' not in self.output_names:
            raise ValueError(
                f'{path} is not a whole detector\'s graph (outputs: '
                f'{", ".join(self.output_names)}): export the detector with '
                f'--part model')

    def predict(self, outputs, sample):
        from mmengine.structures import InstanceData
        instances = InstanceData()
        # as MMDetection rescales: by the pipeline's resize, undone
        scale_x, scale_y = sample.metainfo.get('scale_factor', (1., 1.))
        instances.bboxes = torch.from_numpy(outputs['bboxes']) / \
            torch.tensor([scale_x, scale_y, scale_x, scale_y])
        instances.scores = torch.from_numpy(outputs['scores'])
        instances.labels = torch.from_numpy(outputs['labels'])
        if 'masks' in outputs:
            masks = torch.from_numpy(outputs['masks'])
            ori_shape = tuple(sample.metainfo['ori_shape'][:2])
            if tuple(masks.shape[1:]) != ori_shape:
                # the graph pastes masks at the size it sees; MMDetection
                # pastes them at the original size
                masks = F.interpolate(
                    masks[None].float(), size=ori_shape,
                    mode='nearest')[0] > 0.5
            instances.masks = masks
        sample.pred_instances = instances
        return sample


class OnnxRuntimeSegmentor(OnnxRuntimeModel):
    """A segmentor's graph (``seg_logits``): the logits resized to the
    original image, and their argmax (``BaseSegmentor.postprocess_result``,
    for unpadded, unflipped images)."""

    def __init__(self, path, align_corners=False, threshold=0.3):
        super().__init__(path)
        if self.output_names != ['seg_logits']:
            raise ValueError(
                f'{path} is not a whole segmentor\'s graph (outputs: '
                f'{", ".join(self.output_names)}): export the segmentor with '
                f'--part model')
        self.align_corners = align_corners
        self.threshold = threshold

    def predict(self, outputs, sample):
        from mmengine.structures import PixelData
        logits = F.interpolate(
            torch.from_numpy(outputs['seg_logits']),
            size=tuple(sample.metainfo['ori_shape'][:2]),
            mode='bilinear',
            align_corners=self.align_corners)[0]
        if logits.shape[0] > 1:
            labels = logits.argmax(dim=0, keepdim=True)
        else:
            logits = logits.sigmoid()
            labels = (logits > self.threshold).to(logits)
        sample.set_data(
            dict(
                seg_logits=PixelData(data=logits),
                pred_sem_seg=PixelData(data=labels)))
        return sample


def onnxruntime_model_cfg(cfg, path):
    """The config's model as a graph at ``path`` in onnxruntime: the
    ``model`` entry that an inferencer builds."""
    if cfg.get('default_scope') == 'mmseg':
        head = cfg.model.decode_head
        if isinstance(head, (list, tuple)):
            head = head[-1]
        # MMSegmentation's decode heads take 0.3 when none is given; a
        # threshold of 0 is one
        threshold = head.get('threshold')
        return dict(
            type=OnnxRuntimeSegmentor,
            path=path,
            align_corners=head.get('align_corners', False),
            threshold=0.3 if threshold is None else threshold)
    return dict(type=OnnxRuntimeDetector, path=path)


@contextlib.contextmanager
def without_weights_warnings():
    """A context in which an inferencer built without weights does not warn
    that its model is randomly initialised: a graph's weights are in the
    graph."""
    with warnings.catch_warnings():
        for message in ('Checkpoint is not loaded',
                        'weights is None, use .* classes by default'):
            warnings.filterwarnings('ignore', message=message)
        yield
