"""ONNX export of mmcvt's models with torch's exporter (``torch.export``
and ``torch.onnx.export(..., dynamo=True)``), and its check in onnxruntime.

Every graph takes one input, ``image``: (batch, 3, height, width), float32,
RGB, 0 to 255, an image as it is decoded; the model's own normalisation
(its ``data_preprocessor``'s channel order, mean and std) is inside the
graph. What comes out depends on the model and the part exported
(:data:`PARTS`):

- ``'model'``, a whole segmentor: ``seg_logits``, (batch, num_classes,
  height, width), what MMSegmentation's whole-image inference gives before
  the argmax (``EncoderDecoder.encode_decode``); batch, height and width
  dynamic; nothing padded, as in that inference;
- ``'model'``, a whole detector: ``bboxes``, ``scores``, ``labels`` and,
  for instance segmentation, ``masks``, what ``model.predict`` gives for
  the image, its test_cfg and its preprocessor's padding inside
  (:mod:`mmcvt.deployment.detectors`); one image, height and width dynamic;
- ``'neck'``: the feature maps of the backbone and neck, ``features_<i>``;
- ``'backbone'``: the backbone's feature maps, ``features_<i>``; for both,
  batch, height and width dynamic, nothing padded.

NMS and RoIAlign become ONNX's standard operators through
:mod:`mmcvt.deployment.ops`; every op of a graph is of the standard domain.
A segmentor whose head runs mmcv ops is not exported whole (Mask2Former's
pixel decoder: see :func:`whole_model_problem`), nor a detector of a kind
the export does not cover; their backbone and neck are, for the rest to run
elsewhere.

The exporter makes every size that is 1 when it traces a constant of the
graph, so that an example image on which a feature map is 1 pixel high or
wide gives a graph that fails, or computes wrong, at other sizes:
:func:`export_onnx` refuses it, naming the smallest size that exports
(:func:`smallest_example_size`).
"""
import collections
import importlib.util

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import revert_sync_batchnorm

from ..compat import is_dynamic_size_specialized
from ..doctor import ONNX_EXTRA
from .deformable import replaced_mmcv_ops, with_sizes_as_numbers
from .inputs import INPUT_NAME, RawImageInput, random_image

PARTS = ('model', 'neck', 'backbone')
DYNAMIC_AXES = {0: 'batch', 2: 'height', 3: 'width'}
# more than twice the coarsest stride of these models (128, RetinaNet's P7):
# a map of 1 pixel at the example's size has 2 or more at this much larger
SIZE_PROBE_GROWTH = 256


def check_onnx_extra():
    """Raises ImportError, saying how to install it, when a package of the
    onnx extra is missing: for the tools to call before any work, where
    the import deep in the export or the run would fail after it."""
    for name in ONNX_EXTRA:
        if importlib.util.find_spec(name) is None:
            raise ImportError(f'{name} is missing: exporting and running '
                              f'graphs needs the onnx extra, `pip install '
                              f'-e ".[onnx]"` in the checkout (make install '
                              f'does it)')


def is_segmentor(model):
    """Whether ``model`` is an MMSegmentation segmentor (an EncoderDecoder or
    the like), whose whole forward can be exported."""
    return hasattr(model, 'encode_decode') and hasattr(model, 'decode_head')


def is_detector(model):
    """Whether ``model`` is an MMDetection detector."""
    from mmdet.models.detectors import BaseDetector
    return isinstance(model, BaseDetector)


def mmcv_op_modules(module):
    """The names of the submodules of ``module`` that run mmcv's compiled
    ops (``mmcv.ops``), which ONNX has only as custom ops."""
    return [
        name for name, sub in module.named_modules()
        if type(sub).__module__.startswith('mmcv.ops')
    ]


def whole_model_problem(model):
    """Why ``model`` cannot be exported whole, or None."""
    if is_detector(model):
        from .detectors import detections_class
        try:
            detections_class(model)
        except ValueError as error:
            return str(error)
        return None
    if not is_segmentor(model):
        return (f'a whole {type(model).__name__} is not exported: it is '
                f'neither an MMDetection detector nor an MMSegmentation '
                f'segmentor')
    replaced = set(replaced_mmcv_ops(model))
    ops = [name for name in mmcv_op_modules(model) if name not in replaced]
    if ops:
        return (f'a whole {type(model).__name__} with '
                f'{type(model.decode_head).__name__} is not exported: '
                f'{ops[0]} runs mmcv\'s '
                f'{type(model.get_submodule(ops[0])).__name__}, which '
                f'torch\'s exporter does not trace into standard ONNX ops '
                f'(ONNX carries mmcv\'s ops only as custom ops)')
    return None


def default_part(model):
    """The most of ``model`` that exports: the whole model when it can;
    else the backbone and neck when the neck is plain torch, else the
    backbone."""
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


class _ImageSize(tuple):
    """(height, width) of the traced image, kept as they are by deepcopy,
    which heads apply to their metas (Mask2Former's) and which cannot copy
    the exporter's symbolic sizes."""

    def __deepcopy__(self, memo):
        return self


class SegmentorLogits(nn.Module):
    """A segmentor from a raw image to ``seg_logits`` at the image's size:
    MMSegmentation's whole-image inference, without padding."""

    output_names = ('seg_logits', )

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
    to their feature maps, ``features_<i>``."""

    def __init__(self, model, with_neck):
        super().__init__()
        self.input = RawImageInput(model.data_preprocessor)
        self.backbone = model.backbone
        self.neck = model.neck if with_neck else None

    def forward(self, image):
        features = self.backbone(self.input(image))
        return tuple(self.neck(features) if self.neck else features)


def build_model(cfg, checkpoint=None):
    """The config's model to export: its backbone's own forward (the
    exporter traces that, not torch.compile's), with ``checkpoint`` loaded
    strictly, or without one the config's random initial weights
    (``init_weights``, without pretrained ones).

    Returns:
        tuple: The model and the checkpoint's ``meta.dataset_meta`` (None
        without one).
    """
    import logging

    from mmengine.logging import MMLogger

    from mmcvt.analysis import build_random_model
    from mmcvt.engine import load_checkpoint_strictly
    cfg.model.backbone.pop('compile', None)
    model = build_random_model(cfg)
    if checkpoint is None:
        # not PyTorch's default initialisation, whose heads give logits
        # near 0 (masks at a probability of 0.5, on the threshold); and
        # without mmengine's log of every parameter's initialisation
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
        return model, None
    loaded = load_checkpoint_strictly(model, checkpoint)
    return model, loaded.get('meta', {}).get('dataset_meta')


def raw_image_module(model, part=None):
    """``part`` of ``model`` (default :func:`default_part`) as a module from
    a raw image, in eval mode on the CPU, sharing ``model``'s weights (a
    DINO's: a copy of them, see :class:`~.detectors.DINODetections`): the
    PyTorch reference of the exported graph."""
    part = part or default_part(model)
    check_part(model, part)
    model = revert_sync_batchnorm(model).cpu().float().eval()
    if part == 'model' and is_detector(model):
        from .detectors import detections_module
        return detections_module(model)
    if part == 'model':
        return SegmentorLogits(model).eval()
    return FeatureMaps(model, with_neck=part == 'neck').eval()


def output_names(module, outputs):
    """The graph's output names: the module's ``output_names`` (of those it
    returns), else ``output_<i>``, ``features_<i>`` for feature maps."""
    names = getattr(module, 'output_names', None)
    if names is not None:
        return list(names)[:len(outputs)]
    prefix = 'features' if isinstance(module, FeatureMaps) else 'output'
    return [f'{prefix}_{i}' for i in range(len(outputs))]


def as_pair(size):
    """``size``, an int or a pair (of ints or None), as a pair."""
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


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
        self.output_size = as_pair(output_size)

    def forward(self, x):
        out_h, out_w = (size if size is not None else x.shape[i - 2]
                        for i, size in enumerate(self.output_size))
        rows = pooling_matrix(x.shape[-2], out_h, x)
        columns = pooling_matrix(x.shape[-1], out_w, x)
        return rows @ x @ columns.T


def is_batch_norm(module):
    """Whether ``module`` is a BatchNorm of any dimension, torch's or the
    one mmengine's ``revert_sync_batchnorm`` makes of a SyncBatchNorm (whose
    common base class torch keeps private): a norm with running
    statistics that is not an InstanceNorm."""
    instance_norms = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    return getattr(module, 'running_var', None) is not None and \
        not isinstance(module, instance_norms)


class BatchNormAsAffine(nn.Module):
    """An eval-mode BatchNorm as the affine map it is, for export only.

    torch 2.13's exporter cannot trace ``F.batch_norm`` on a batch whose
    size the data make (the RoIs of a detector's RoI head: it asks whether
    the input is empty); this is the same map in elementwise ops.
    """

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        norm = self.norm
        shape = (1, -1) + (1, ) * (x.dim() - 2)
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        out = (x - norm.running_mean.view(shape)) * scale.view(shape)
        return out if norm.bias is None else out + norm.bias.view(shape)


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
    one that keeps its output size symbolic, and Mask2Former's pixel decoder
    and its deformable attention by ones that take the sizes as numbers
    (:mod:`mmcvt.deployment.deformable`). CvT's attention runs in chunks of
    queries (``attn_impl='chunked'``), which onnxruntime runs in less time
    and memory than the whole. BatchNorms of RoI heads, which run on as many
    RoIs as the data give, by :class:`BatchNormAsAffine`."""
    from mmcvt.models.backbones.cvt import ConvAttention
    upsample, symbolic_upsample = _symbolic_upsample_class()
    module = with_sizes_as_numbers(module)
    for sub in module.modules():
        if isinstance(sub, ConvAttention):
            sub.attn_impl = 'chunked'
    for parent_name, parent in list(module.named_modules()):
        for name, child in parent.named_children():
            if is_batch_norm(child) and not child.training and \
                    'roi_head.' in f'{parent_name}.{name}':
                setattr(parent, name, BatchNormAsAffine(child))
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


def map_sizes(module, shape):
    """The (height, width) of each map (4-d tensor) that a submodule of
    ``module`` outputs on a random image of ``shape``, keyed by (submodule,
    call, output)."""
    sizes = {}
    calls = collections.Counter()

    def tensors(output):
        if isinstance(output, (tuple, list)):
            return [t for item in output for t in tensors(item)]
        if isinstance(output, dict):
            return tensors(list(output.values()))
        return [output] if torch.is_tensor(output) else []

    def record(name):

        def hook(_, __, output):
            calls[name] += 1
            for i, tensor in enumerate(tensors(output)):
                if tensor.dim() == 4:
                    sizes[name, calls[name], i] = tuple(tensor.shape[2:])

        return hook

    handles = [
        sub.register_forward_hook(record(name))
        for name, sub in module.named_modules() if name
    ]
    try:
        with torch.no_grad():
            module(random_image(shape))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def maps_of_one_pixel(module, shape):
    """The maps that are 1 pixel high or wide on an image of ``shape`` and
    grow with the image (constant ones, like a pooling pyramid's 1x1, are
    left out): {key of :func:`map_sizes`: (height, width)}."""
    sizes = map_sizes(module, shape)
    ones = {key: size for key, size in sizes.items() if 1 in size}
    if not ones:
        return {}
    grown = map_sizes(module, (*shape[:2], *(s + SIZE_PROBE_GROWTH
                                             for s in shape[2:])))
    return {
        key: size
        for key, size in ones.items()
        if any(n == 1 and g > 1 for n, g in zip(size, grown.get(key, size)))
    }


def smallest_example_size(module, shape, ones):
    """The smallest (height, width), at least ``shape``'s, at which none of
    the maps ``ones`` (of :func:`maps_of_one_pixel`) is 1 pixel high or
    wide."""
    smallest = list(shape[2:])
    for axis in (0, 1):
        keys = [key for key, size in ones.items() if size[axis] == 1]
        low, high = shape[2 + axis], shape[2 + axis] + SIZE_PROBE_GROWTH
        while keys and high - low > 1:  # low is too small, high is not
            middle = (low + high) // 2
            probe = list(shape)
            probe[2 + axis] = middle
            sizes = map_sizes(module, tuple(probe))
            if any(sizes.get(key, (2, 2))[axis] == 1 for key in keys):
                low = middle
            else:
                high = middle
        if keys:
            smallest[axis] = high
    return tuple(smallest)


def check_runs_at(module, shape, what):
    """Raises ValueError when ``module`` cannot run on an image of
    ``shape`` (its ``size_problem``), saying why; ``what`` names the
    image."""
    problem = getattr(module, 'size_problem', lambda *size: None)(*shape[2:])
    if problem:
        raise ValueError(f'{what}, {"x".join(map(str, shape))}: {problem}')


def check_example_size(module, shape):
    """Raises ValueError, naming the smallest size that exports, when a map
    of ``module`` is 1 pixel high or wide on an example image of
    ``shape``."""
    ones = maps_of_one_pixel(module, shape)
    if not ones:
        return
    (name, _, _), size = next(iter(ones.items()))
    height, width = smallest_example_size(module, shape, ones)
    raise ValueError(
        f'an example of {shape[2]}x{shape[3]} makes the output of {name} '
        f'{size[0]}x{size[1]} pixels ({len(ones)} maps of 1 pixel in '
        f'height or width), and the exporter fixes in the graph every size '
        f'that is 1 when it traces: the graph would fail, or compute '
        f'wrong, at other sizes. Export at --shape {height} {width} or '
        f'larger, the smallest example on which every map is 2 pixels or '
        f'more in height and width')


def export_onnx(module, path, example_shape=(2, 3, 128, 160), metadata=None):
    """Exports ``module`` (from :func:`raw_image_module`) to ``path`` with
    dynamic sizes: its ``dynamic_axes``, by default batch, height and width.

    The example's batch is 2, not 1, when the batch is dynamic, because the
    exporter fixes a size that is 1 in the example.

    Args:
        metadata (dict[str, str], optional): The graph's metadata_props.

    Returns:
        list[str]: The names of the graph's outputs.

    Raises:
        ValueError: When the example's size would fix a size of the graph
            (:func:`check_example_size`).
        RuntimeError: When the exporter fixed a size that should be dynamic.
    """
    from .ops import onnx_translations
    axes = getattr(module, 'dynamic_axes', DYNAMIC_AXES)
    check_runs_at(module, example_shape, 'the example')
    check_example_size(module, example_shape)
    with torch.no_grad():
        example = random_image(example_shape)
        names = output_names(module, _as_tuple(module(example)))
        # torch.export first, then the translation to ONNX: mmdet's code
        # takes other paths while torch.onnx.is_in_onnx_export() is true
        try:
            program = torch.export.export(
                exportable_copy(module), (example, ),
                dynamic_shapes=({
                    axis: torch.export.Dim.DYNAMIC
                    for axis in axes
                }, ),
                strict=False)
        except Exception as error:
            if is_dynamic_size_specialized(error):
                raise sizes_fixed(path, list(axes.values())) from error
            raise
        # whatever the exporter says or does not say (it fixes a size with
        # Dim.AUTO, say): what the program computes with
        fixed = fixed_input_sizes(program, axes)
        if fixed:
            raise sizes_fixed(path, fixed)
        onnx_program = torch.onnx.export(
            program, (example, ),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes=(axes, ),
            custom_translation_table=onnx_translations(),
            verbose=False)
    for key, value in (metadata or {}).items():
        onnx_program.model.metadata_props[key] = value
    onnx_program.save(path)
    return names


def sizes_fixed(path, names):
    """The error of an export to ``path`` that fixed the sizes ``names``
    (of the input's) to the example's."""
    which = 'that size' if len(names) == 1 else 'those sizes'
    return RuntimeError(
        f'the exporter fixed the {", ".join(names)} of {path} to the '
        f'example\'s: a module of this model reads {which} as a number')


def fixed_input_sizes(program, axes):
    """The names of ``axes`` ({axis: name}) that the input of ``program``,
    a ``torch.export.ExportedProgram``, has as numbers, not symbols: the
    sizes the trace fixed to the example's.

    The ONNX graph's input cannot tell: ``torch.onnx.export`` of a program
    (torch 2.13) names the input's sizes after its ``dynamic_shapes``, also
    those that the program fixed, whose numbers the graph then computes
    with at every size.
    """
    from torch.fx.experimental.symbolic_shapes import is_concrete_int
    name, = program.graph_signature.user_inputs
    image = next(node for node in program.graph.nodes if node.name == name)
    shape = image.meta['val'].shape  # a fixed size is a SymInt of a number
    return [
        axis_name for axis, axis_name in axes.items()
        if is_concrete_int(shape[axis])
    ]


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


def onnxruntime_session(path,
                        threads=None,
                        profile_prefix=None,
                        spinning=True):
    """An onnxruntime session of the graph at ``path``, on the CPU, with
    ``threads`` threads in an op (default: onnxruntime's, the cores), and
    its profiler on when ``profile_prefix`` names where to write. Without
    ``spinning`` its threads sleep when a run ends, where by default they
    spin a while, taking the cores from whatever runs next."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if not spinning:
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '0')
    return onnxruntime.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])


def verify(path, module, images):
    """onnxruntime against PyTorch (``module``, with the model's own
    modules) on each of ``images`` (B, 3, H, W), RGB 0..255.

    Returns:
        list[float]: The relative error (:func:`relative_error`) at each.
    """
    session = onnxruntime_session(path)
    errors = []
    for image in images:
        with torch.no_grad():
            reference = _as_tuple(module(image))
        output = session.run(None, {INPUT_NAME: image.numpy()})
        errors.append(relative_error(output, reference))
    return errors
