"""ONNX export of mmcvt's models with torch's exporter
(``torch.onnx.export(..., dynamo=True)``), and its check in onnxruntime.

Every graph takes one input, ``image``: (batch, 3, height, width), float32,
RGB, 0 to 255, an image as it is decoded; the model's own normalisation
(its ``data_preprocessor``'s channel order, mean and std) is inside the
graph. Batch, height and width are dynamic. What comes out depends on the
part exported (:data:`PARTS`):

- ``'model'``, a whole segmentor: ``seg_logits``, (batch, num_classes,
  height, width), what MMSegmentation's whole-image inference gives before
  the argmax (``EncoderDecoder.encode_decode``);
- ``'neck'``: the feature maps of the backbone and neck, ``features_<i>``;
- ``'backbone'``: the backbone's feature maps, ``features_<i>``.

Whole detectors are not exported: their heads run mmcv's RoIAlign and NMS
(or deformable attention), which ONNX carries only as custom ops, that a
runtime runs only with mmdeploy's plugins. Nor is a segmentor whose head
runs mmcv ops (Mask2Former's pixel decoder, deformable attention, which
also reads its feature sizes as tensor data, out of reach of the exporter's
symbolic sizes). Their backbone and neck are exported instead, for the rest
to run elsewhere.

Nothing is padded inside the graph: MMSegmentation's whole-image inference
does not pad either, while MMDetection's data preprocessor pads to a
multiple of its ``pad_size_divisor``, which the caller of a detector's
backbone and neck then does.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import revert_sync_batchnorm

PARTS = ('model', 'neck', 'backbone')
INPUT_NAME = 'image'
DYNAMIC_AXES = {0: 'batch', 2: 'height', 3: 'width'}


def is_segmentor(model):
    """Whether ``model`` is an MMSegmentation segmentor (an EncoderDecoder or
    the like), whose whole forward can be exported."""
    return hasattr(model, 'encode_decode') and hasattr(model, 'decode_head')


def mmcv_op_modules(module):
    """The names of the submodules of ``module`` that run mmcv's compiled
    ops (``mmcv.ops``), which ONNX has only as custom ops."""
    return [
        name for name, sub in module.named_modules()
        if type(sub).__module__.startswith('mmcv.ops')
    ]


def whole_model_problem(model):
    """Why ``model`` cannot be exported whole, or None."""
    if not is_segmentor(model):
        return (
            f'a whole {type(model).__name__} is not exported: '
            f'detectors\' heads run mmcv ops (RoIAlign and NMS; DINO\'s '
            f'deformable attention), which ONNX carries only as custom ops '
            f'(mmdeploy\'s plugins for ONNX Runtime and TensorRT)')
    ops = mmcv_op_modules(model)
    if ops:
        return (f'a whole {type(model).__name__} with '
                f'{type(model.decode_head).__name__} is not exported: '
                f'{ops[0]} runs mmcv\'s '
                f'{type(model.get_submodule(ops[0])).__name__}, which '
                f'torch\'s exporter does not trace into standard ONNX ops '
                f'(ONNX carries mmcv\'s ops only as custom ops)')
    return None


def default_part(model):
    """The most of ``model`` that exports: a segmentor whole, unless it runs
    mmcv ops; else the backbone and neck when the neck is plain torch, else
    the backbone."""
    if whole_model_problem(model) is None:
        return 'model'
    if getattr(model, 'with_neck', False) and not mmcv_op_modules(model.neck):
        return 'neck'
    return 'backbone'


def check_part(model, part):
    """Raises ValueError, saying what exports instead, when ``part`` of
    ``model`` cannot be exported."""
    if part not in PARTS:
        raise ValueError(f'part must be one of {PARTS}, not {part!r}')
    if part == 'model' and whole_model_problem(model):
        raise ValueError(f'{whole_model_problem(model)}. Export --part '
                         f'{default_part(model)} and run the rest elsewhere')
    if part == 'neck':
        if not getattr(model, 'with_neck', False):
            raise ValueError(f'{type(model).__name__} has no neck: export '
                             f'--part backbone')
        ops = mmcv_op_modules(model.neck)
        if ops:
            raise ValueError(
                f'the neck {type(model.neck).__name__} runs mmcv ops, which '
                f'ONNX carries only as custom ops (in {", ".join(ops)}): '
                f'export --part backbone')


class RawImageInput(nn.Module):
    """What a data preprocessor (mmengine's, MMDetection's or
    MMSegmentation's) does to a decoded image, as graph ops: (B, 3, H, W)
    RGB 0..255 -> the channel order and normalisation the model was trained
    with. Loaded images are BGR, so the model sees RGB when its preprocessor
    converts the channels, and BGR when it does not."""

    def __init__(self, data_preprocessor):
        super().__init__()
        self.to_bgr = not (
            getattr(data_preprocessor, '_channel_conversion', False)
            or getattr(data_preprocessor, 'channel_conversion', False))
        normalize = getattr(data_preprocessor, '_enable_normalize', False)
        self.register_buffer(
            'mean',
            data_preprocessor.mean.detach().clone().float()
            if normalize else torch.zeros(3, 1, 1))
        self.register_buffer(
            'std',
            data_preprocessor.std.detach().clone().float()
            if normalize else torch.ones(3, 1, 1))

    def forward(self, image):
        if self.to_bgr:
            image = image.flip(1)
        return (image - self.mean) / self.std


class _ImageSize(tuple):
    """(height, width) of the traced image, kept as they are by deepcopy,
    which heads apply to their metas (Mask2Former's) and which cannot copy
    the exporter's symbolic sizes."""

    def __deepcopy__(self, memo):
        return self


class SegmentorLogits(nn.Module):
    """A segmentor from a raw image to ``seg_logits`` at the image's size:
    MMSegmentation's whole-image inference, without padding."""

    def __init__(self, segmentor):
        super().__init__()
        self.input = RawImageInput(segmentor.data_preprocessor)
        self.segmentor = segmentor

    def forward(self, image):
        size = _ImageSize(image.shape[2:])
        # the heads read the sizes of the first image's meta only
        meta = dict(
            img_shape=size,
            pad_shape=size,
            ori_shape=size,
            batch_input_shape=size)
        return self.segmentor.encode_decode(self.input(image), [meta])


class FeatureMaps(nn.Module):
    """A model's backbone, and its neck with ``with_neck``, from a raw image
    to their feature maps."""

    def __init__(self, model, with_neck):
        super().__init__()
        self.input = RawImageInput(model.data_preprocessor)
        self.backbone = model.backbone
        self.neck = model.neck if with_neck else None

    def forward(self, image):
        features = self.backbone(self.input(image))
        return tuple(self.neck(features) if self.neck else features)


def raw_image_module(model, part=None):
    """``part`` of ``model`` (default :func:`default_part`) as a module from
    a raw image, in eval mode on the CPU, sharing ``model``'s weights: the
    PyTorch reference of the exported graph."""
    part = part or default_part(model)
    check_part(model, part)
    model = revert_sync_batchnorm(model).cpu().float().eval()
    if part == 'model':
        return SegmentorLogits(model).eval()
    return FeatureMaps(model, with_neck=part == 'neck').eval()


def pooling_matrix(size, out_size, like):
    """(out_size, size): row i averages the input bin that
    ``adaptive_avg_pool`` pools into output i, ``[floor(i * size /
    out_size), ceil((i + 1) * size / out_size))``."""
    i = torch.arange(out_size, device=like.device)
    start = torch.div(i * size, out_size, rounding_mode='floor')
    end = torch.div(
        (i + 1) * size + out_size - 1, out_size, rounding_mode='floor')
    j = torch.arange(size, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool2dAsMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matmuls with pooling matrices made
    from the input's size, for export only.

    torch's exporter decomposes adaptive average pooling into gathers whose
    indices it computes at the export size, so that the ONNX graph of a
    pooling pyramid (UperNet's PPM) gathers out of range, or from the wrong
    bins without an error, at other sizes. The matrices here are computed in
    the graph from the actual size, and give the same bins.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = nn.modules.utils._pair(output_size)

    def forward(self, x):
        out_h, out_w = (size if size is not None else x.shape[i - 2]
                        for i, size in enumerate(self.output_size))
        rows = pooling_matrix(x.shape[-2], out_h, x)
        columns = pooling_matrix(x.shape[-1], out_w, x)
        return rows @ x @ columns.T


def _symbolic_upsample_class():
    from mmseg.models.utils import Upsample

    class UpsampleOfSymbolicSize(Upsample):
        """MMSegmentation's ``Upsample`` (Semantic FPN's heads), whose
        output size the exporter keeps symbolic: ``int()`` of a traced size
        makes it the example's number."""

        def forward(self, x):
            if self.size:
                return super().forward(x)
            size = [torch.sym_int(t * self.scale_factor) for t in x.shape[-2:]]
            return F.interpolate(x, size, None, self.mode, self.align_corners)

    return Upsample, UpsampleOfSymbolicSize


def exportable_copy(module):
    """A deep copy of ``module`` in which the modules that would export for
    the example's size only are replaced by equivalents that export for
    every size: ``nn.AdaptiveAvgPool2d`` by
    :class:`AdaptiveAvgPool2dAsMatmul`, MMSegmentation's ``Upsample`` by
    one that keeps its output size symbolic."""
    upsample, symbolic_upsample = _symbolic_upsample_class()
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name,
                        AdaptiveAvgPool2dAsMatmul(child.output_size))
            elif type(child) is upsample:
                setattr(
                    parent, name,
                    symbolic_upsample(child.size, child.scale_factor,
                                      child.mode, child.align_corners))
    return module


def random_image(shape, seed=0):
    """A float32 image of 0..255 integers, of ``shape`` (B, 3, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator).float()


def export_onnx(module, path, example_shape=(2, 3, 128, 160)):
    """Exports ``module`` (from :func:`raw_image_module`) to ``path`` with
    dynamic batch, height and width.

    The example's batch is 2, not 1, because the exporter may fix a size
    that is 1 in the example.

    Returns:
        list[str]: The names of the graph's outputs.

    Raises:
        RuntimeError: When the exporter fixed a size that should be dynamic.
    """
    import onnx
    with torch.no_grad():
        example = random_image(example_shape)
        num_outputs = len(_as_tuple(module(example)))
        output_names = (['seg_logits'] if isinstance(module, SegmentorLogits)
                        else [f'features_{i}' for i in range(num_outputs)])
        program = torch.onnx.export(
            exportable_copy(module), (example, ),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_shapes=(DYNAMIC_AXES, ),
            verbose=False)
    program.save(path)
    graph_input, = onnx.load(path, load_external_data=False).graph.input
    dims = graph_input.type.tensor_type.shape.dim
    fixed = [
        name for axis, name in DYNAMIC_AXES.items() if not dims[axis].dim_param
    ]
    if fixed:
        raise RuntimeError(
            f'the exporter fixed the {", ".join(fixed)} of {path} to the '
            f'example\'s: a module of this model reads them as numbers')
    return output_names


def _as_tuple(outputs):
    return tuple(outputs) if isinstance(outputs, (tuple, list)) \
        else (outputs, )


def relative_error(output, reference):
    """``||output - reference|| / ||reference||`` over all outputs.

    Raises:
        RuntimeError: When their shapes differ.
    """
    output = [torch.as_tensor(o) for o in output]
    shapes = [tuple(o.shape) for o in output]
    expected = [tuple(r.shape) for r in reference]
    if shapes != expected:
        raise RuntimeError(f'the graph gives outputs of shapes {shapes} '
                           f'where PyTorch gives {expected}: the export '
                           f'fixed a size')
    num = sum(float(((o - r)**2).sum()) for o, r in zip(output, reference))
    den = sum(float((r**2).sum()) for r in reference)
    return (num / den)**0.5


def onnxruntime_session(path):
    """An onnxruntime session of the graph at ``path``, on the CPU."""
    import onnxruntime
    return onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])


def verify(path, module, shapes, seed=0):
    """onnxruntime against PyTorch (``module``, with the model's own
    modules) on random images of each of ``shapes``.

    Returns:
        list[float]: The relative error (:func:`relative_error`) at each.
    """
    session = onnxruntime_session(path)
    errors = []
    for i, shape in enumerate(shapes):
        image = random_image(shape, seed + i)
        with torch.no_grad():
            reference = _as_tuple(module(image))
        output = session.run(None, {INPUT_NAME: image.numpy()})
        errors.append(relative_error(output, reference))
    return errors
