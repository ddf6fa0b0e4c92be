"""mmcv's multi-scale deformable attention and MMDetection's pixel decoder
around it (Mask2Former's), with the feature levels' sizes as numbers.

Both read the sizes as tensor data (``spatial_shapes``,
``torch._shape_as_tensor``), which torch's exporter cannot keep symbolic:
it fixes them to the example's, or fails ("Cannot access data pointer of
Tensor"). The modules here compute what mmcv's and MMDetection's do on the
CPU (grid_sample, ONNX's GridSample), with the same parameters, from the
sizes as a list of (height, width) numbers. The exporter swaps them in, in
a copy of the model: the model keeps its own.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import \
    multi_scale_deformable_attn_pytorch


def numbers_as_tensor(numbers, like):
    """A float tensor of symbolic ``numbers`` (sizes), made by arithmetic
    on a tensor: ``torch.tensor(numbers)`` would fix them to the
    example's."""
    one = like.new_ones((), dtype=torch.float32)
    return torch.stack([one * number for number in numbers])


class DeformableAttentionOfSizes(nn.Module):
    """mmcv's ``MultiScaleDeformableAttention`` (its CPU path), with the
    levels' sizes as a list of (height, width) numbers where mmcv reads them
    from a tensor: the exporter keeps numbers symbolic, and fixes the
    example's sizes when they pass through tensor data. Same parameters."""

    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self,
                query,
                key=None,
                value=None,
                identity=None,
                query_pos=None,
                key_padding_mask=None,
                reference_points=None,
                spatial_shapes=None,
                **kwargs):
        attention = self.attention
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not attention.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        batch, num_query, _ = query.shape
        num_value = value.shape[1]
        heads, levels, points = (attention.num_heads, attention.num_levels,
                                 attention.num_points)
        value = attention.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, num_value, heads, -1)
        offsets = attention.sampling_offsets(query).view(
            batch, num_query, heads, levels, points, 2)
        weights = attention.attention_weights(query).view(
            batch, num_query, heads,
            levels * points).softmax(-1).view(batch, num_query, heads, levels,
                                              points)
        if reference_points.shape[-1] == 2:
            normaliser = torch.stack(
                [numbers_as_tensor((w, h), query) for h, w in spatial_shapes])
            locations = reference_points[:, :, None, :, None, :] + \
                offsets / normaliser[None, None, None, :, None, :]
        else:
            locations = reference_points[:, :, None, :, None, :2] + \
                offsets / points * reference_points[:, :, None, :, None, 2:] \
                * 0.5
        output = multi_scale_deformable_attn_pytorch(value, spatial_shapes,
                                                     locations, weights)
        output = attention.output_proj(output)
        if not attention.batch_first:
            output = output.permute(1, 0, 2)
        return attention.dropout(output) + identity


class PixelDecoderOfSizes(nn.Module):
    """MMDetection's ``MSDeformAttnPixelDecoder.forward`` (Mask2Former's
    pixel decoder), with the levels' sizes as numbers and its encoder's
    attention :class:`DeformableAttentionOfSizes`. Same parameters."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, feats):
        decoder = self.decoder
        batch = feats[0].shape[0]
        tokens, positions, paddings, sizes, references = [], [], [], [], []
        for i in range(decoder.num_encoder_levels):
            level = decoder.num_input_levels - i - 1
            feat = feats[level]
            height, width = feat.shape[-2:]
            no_padding = feat.new_zeros((batch, height, width),
                                        dtype=torch.bool)
            position = decoder.level_encoding.weight[i].view(
                1, -1, 1, 1) + decoder.postional_encoding(no_padding)
            points = decoder.point_generator.single_level_grid_priors(
                (height, width), level, device=feat.device)
            factor = numbers_as_tensor(
                (width, height), feat) * decoder.strides[level]
            tokens.append(decoder.input_convs[i](feat).flatten(2).permute(
                0, 2, 1))
            positions.append(position.flatten(2).permute(0, 2, 1))
            paddings.append(no_padding.flatten(1))
            sizes.append((height, width))
            references.append(points / factor)
        starts = [0]
        for height, width in sizes[:-1]:
            starts.append(starts[-1] + height * width)
        reference_points = torch.cat(references, 0)[None, :, None].repeat(
            batch, 1, decoder.num_encoder_levels, 1)
        memory = decoder.encoder(
            query=torch.cat(tokens, 1),
            query_pos=torch.cat(positions, 1),
            key_padding_mask=torch.cat(paddings, 1),
            spatial_shapes=sizes,
            reference_points=reference_points,
            level_start_index=starts,
            valid_ratios=reference_points.new_ones(
                (batch, decoder.num_encoder_levels, 2)))
        memory = memory.permute(0, 2, 1)
        outs = [
            level.reshape(batch, -1, height, width)
            for level, (height, width) in zip(
                torch.split(memory, [h * w for h, w in sizes], dim=-1), sizes)
        ]
        for i in range(
                decoder.num_input_levels - decoder.num_encoder_levels - 1, -1,
                -1):
            lateral = decoder.lateral_convs[i](feats[i])
            outs.append(decoder.output_convs[i](lateral + F.interpolate(
                outs[-1],
                size=lateral.shape[-2:],
                mode='bilinear',
                align_corners=False)))
        return decoder.mask_feature(outs[-1]), outs[:decoder.num_outs]


def is_pixel_decoder(module):
    from mmdet.models.layers import MSDeformAttnPixelDecoder
    return type(module) is MSDeformAttnPixelDecoder


def with_sizes_as_numbers(module, copy_first=True):
    """``module`` (a deep copy of it, with ``copy_first``) with its mmcv
    deformable attentions :class:`DeformableAttentionOfSizes` and its
    MMDetection pixel decoders :class:`PixelDecoderOfSizes`."""
    from mmcv.ops import MultiScaleDeformableAttention
    if copy_first:
        module = copy.deepcopy(module)
    wrappers = (DeformableAttentionOfSizes, PixelDecoderOfSizes)
    for parent in list(module.modules()):
        if isinstance(parent, wrappers):
            continue
        for name, child in parent.named_children():
            if isinstance(child, MultiScaleDeformableAttention):
                setattr(parent, name, DeformableAttentionOfSizes(child))
            elif is_pixel_decoder(child):
                setattr(parent, name, PixelDecoderOfSizes(child))
    return module


def replaced_mmcv_ops(module):
    """The names of the mmcv op modules of ``module`` that
    :func:`with_sizes_as_numbers` replaces for a segmentor: the deformable
    attention of MMDetection's pixel decoders."""
    decoders = [
        name + '.' for name, sub in module.named_modules()
        if is_pixel_decoder(sub)
    ]
    return [
        name for name, _ in module.named_modules() if any(
            name.startswith(prefix) for prefix in decoders)
    ]
