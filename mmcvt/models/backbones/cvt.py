"""CvT, the Convolutional vision Transformer (Wu et al., ICCV 2021,
arXiv 2103.15808), as a backbone for dense prediction.

The file reads top-down: the activation, the convolutional projection, the
attention, the block and the stage, then the backbone. Parameter names follow
the official code wherever the OpenMMLab bricks allow it, so that
``cvt_checkpoint.convert_official`` is a short table of renames.
"""
import itertools
from numbers import Integral

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from einops import rearrange
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed
from mmdet.registry import MODELS as DET_MODELS
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmengine.registry import MODELS
from mmseg.registry import MODELS as SEG_MODELS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import (CheckpointPolicy,
                                     create_selective_checkpoint_contexts)

from .cvt_checkpoint import load_pretrained

PROJ_METHODS = ('dw_bn', 'avg', 'linear')
ATTN_IMPLS = ('sdpa', 'naive')
WITH_CP_MODES = (False, True, 'selective')


@MODELS.register_module()
class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 * x)``, the GELU approximation that the released
    CvT weights were trained with. Registered in mmengine's root registry,
    like mmcv's activations, so that every scope's ``act_cfg`` can name it."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def build_conv_projection(method, embed_dims, kernel_size, stride, padding,
                          norm_cfg):
    """The convolutional part of a q/k/v projection, on (B, C, H, W) maps.

    'dw_bn' is a depthwise conv then a norm (BN by default); its children are
    named ``conv`` and ``bn`` as in the official code. 'avg' is average
    pooling with ``ceil_mode=True``, as the official code has it. 'linear'
    leaves the map as it is; the Linear after it does all the work.
    """
    if method == 'dw_bn':
        return ConvModule(
            embed_dims,
            embed_dims,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=embed_dims,
            bias=False,
            norm_cfg=norm_cfg,
            act_cfg=None)
    if method == 'avg':
        return nn.AvgPool2d(
            kernel_size, stride=stride, padding=padding, ceil_mode=True)
    if method == 'linear':
        return nn.Identity()
    raise ValueError(f'unknown projection method {method!r}; '
                     f'choose one of {PROJ_METHODS}')


class ConvAttention(BaseModule):
    """Multi-head attention whose q, k and v come from convolutional
    projections of the token map; k and v are usually subsampled.

    Args:
        embed_dims (int): Width C of the tokens.
        num_heads (int): Number of heads; must divide ``embed_dims``.
        qkv_bias (bool): Bias in the q/k/v Linears.
        attn_drop_rate (float): Dropout on the attention weights.
        proj_drop_rate (float): Dropout after the output Linear.
        proj_method (str): 'dw_bn', 'avg' or 'linear'. With 'avg' only k and
            v are pooled; q is linear, as in the official code.
        kernel_size (int): Kernel of the q/k/v projections.
        stride_q, stride_kv, padding_q, padding_kv (int): Their strides and
            paddings.
        proj_norm_cfg (dict): Norm of the 'dw_bn' projections.
        with_cls_token (bool): The first token is a cls token. It is split
            off before the conv projections and joined again after them.
        attn_impl (str): 'sdpa' runs ``F.scaled_dot_product_attention``,
            whose memory stays linear in the number of tokens. 'naive'
            materialises the score matrix as the official code does; it is
            kept as a reference for tests and benchmarks.
    """

    def __init__(self,
                 embed_dims,
                 num_heads,
                 qkv_bias=True,
                 attn_drop_rate=0.,
                 proj_drop_rate=0.,
                 proj_method='dw_bn',
                 kernel_size=3,
                 stride_q=1,
                 stride_kv=2,
                 padding_q=1,
                 padding_kv=1,
                 proj_norm_cfg=dict(type='BN'),
                 with_cls_token=False,
                 attn_impl='sdpa',
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'unknown attn_impl {attn_impl!r}; '
                             f'choose one of {ATTN_IMPLS}')
        self.num_heads = num_heads
        # The official code scales by the whole width, not the head width;
        # the released weights were trained with it.
        self.scale = embed_dims**-0.5
        self.attn_drop_rate = attn_drop_rate
        self.with_cls_token = with_cls_token
        self.attn_impl = attn_impl

        q_method = 'linear' if proj_method == 'avg' else proj_method
        self.conv_proj_q = build_conv_projection(q_method, embed_dims,
                                                 kernel_size, stride_q,
                                                 padding_q, proj_norm_cfg)
        self.conv_proj_k = build_conv_projection(proj_method, embed_dims,
                                                 kernel_size, stride_kv,
                                                 padding_kv, proj_norm_cfg)
        self.conv_proj_v = build_conv_projection(proj_method, embed_dims,
                                                 kernel_size, stride_kv,
                                                 padding_kv, proj_norm_cfg)
        self.proj_q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj_k = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj_v = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def _project(self, conv_proj, linear, token_map, cls_token):
        """(B, C, H, W) map -> (B, heads, N', C / heads) tokens."""
        tokens = conv_proj(token_map).flatten(2).transpose(1, 2)
        if cls_token is not None:
            tokens = torch.cat((cls_token, tokens), dim=1)
        return rearrange(
            linear(tokens), 'b n (h d) -> b h n d', h=self.num_heads)

    def forward(self, x, hw_shape):
        """
        Args:
            x (Tensor): (B, [1 +] H * W, C) tokens, the cls token first.
            hw_shape (tuple[int]): (H, W).

        Returns:
            Tensor: (B, [1 +] H * W, C).
        """
        cls_token = None
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        token_map = rearrange(
            x, 'b (h w) c -> b c h w', h=hw_shape[0], w=hw_shape[1])
        q = self._project(self.conv_proj_q, self.proj_q, token_map, cls_token)
        k = self._project(self.conv_proj_k, self.proj_k, token_map, cls_token)
        v = self._project(self.conv_proj_v, self.proj_v, token_map, cls_token)

        attn_drop = self.attn_drop_rate if self.training else 0.
        if self.attn_impl == 'sdpa':
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=attn_drop, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = F.dropout(attn, attn_drop) @ v
        out = rearrange(out, 'b h n d -> b n (h d)')
        return self.proj_drop(self.proj(out))


# The ops whose outputs ``with_cp='selective'`` keeps for the backward: the
# matmuls, convolutions and attention. Everything between them (norms,
# activations, reshape copies) is cheap to redo and is recomputed in the
# backward instead, through torch's selective activation checkpointing. At
# 800x1344 that saves about a fifth of a training step's memory in about the
# same time (README, Speed and memory). It is not the default because the
# recompute runs through a Python dispatch mode, whose cost per op shows at
# small sizes: the shapes demos took 7% and 20% longer with it.
_HEAVY_OPS = frozenset({
    torch.ops.aten.addmm,
    torch.ops.aten.mm,
    torch.ops.aten.bmm,
    torch.ops.aten.convolution,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention,
    torch.ops.aten._scaled_dot_product_efficient_attention,
    torch.ops.aten._scaled_dot_product_cudnn_attention,
})


class CvTBlock(BaseModule):
    """Pre-norm Transformer block: conv attention, then an MLP, each with a
    residual and drop path.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        mlp_ratio (float): Hidden width of the MLP over C.
        drop_rate (float): Dropout after the attention and in the MLP.
        drop_path_rate (float): Stochastic depth of this block.
        act_cfg (dict): Activation of the MLP.
        norm_cfg (dict): The two pre-norms.
        with_cp (bool | str): True keeps none of the block's activations
            for the backward but its input and recomputes them all;
            'selective' keeps the outputs of the matmuls, convolutions and
            attention and recomputes the rest; False is plain autograd.
        **attn_kwargs: The rest of :class:`ConvAttention`'s arguments.
    """

    def __init__(self,
                 embed_dims,
                 num_heads,
                 mlp_ratio=4.,
                 drop_rate=0.,
                 drop_path_rate=0.,
                 act_cfg=dict(type='QuickGELU'),
                 norm_cfg=dict(type='LN', eps=1e-5),
                 with_cp=False,
                 init_cfg=None,
                 **attn_kwargs):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        drop_path = dict(type='DropPath', drop_prob=drop_path_rate)
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ConvAttention(
            embed_dims, num_heads, proj_drop_rate=drop_rate, **attn_kwargs)
        self.drop_path = build_dropout(drop_path)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(
            embed_dims=embed_dims,
            feedforward_channels=int(embed_dims * mlp_ratio),
            num_fcs=2,
            ffn_drop=drop_rate,
            dropout_layer=drop_path,
            act_cfg=act_cfg,
            add_identity=True)

    def forward(self, x, hw_shape):
        """(B, N, C) tokens -> (B, N, C) tokens."""
        if not (self.with_cp and torch.is_grad_enabled()):
            return self.forward_tokens(x, hw_shape)
        return cp.checkpoint(
            self.forward_tokens,
            x,
            hw_shape,
            use_reentrant=False,
            context_fn=self._recompute_contexts)

    def _recompute_contexts(self):
        """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: keep the
        outputs of the :data:`_HEAVY_OPS` (for ``with_cp='selective'``) and
        recompute the rest. Ops that read or update the block's buffers (BatchNorm's
        running statistics and batch counter) are kept too, so that the
        recompute does not update them a second time in the step, as a
        plain checkpoint would."""
        buffer_ids = {id(buffer) for buffer in self.buffers()}
        keep_heavy_ops = self.with_cp == 'selective'

        def policy(ctx, op, *args, **kwargs):
            if (any(id(arg) in buffer_ids for arg in args) or keep_heavy_ops
                    and op.overloadpacket in _HEAVY_OPS):
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        # The check that kept outputs are not mutated afterwards would flag
        # the kept in-place update of the batch counter: an in-place op bumps
        # its output's version only after it returns. Nothing in a block
        # writes into a kept output.
        return create_selective_checkpoint_contexts(
            policy, allow_cache_entry_mutation=True)

    def forward_tokens(self, x, hw_shape):
        """The block's computation, with plain autograd."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw_shape))
        return self.ffn(self.norm2(x), identity=x)


class CvTStage(BaseModule):
    """A convolutional token embedding (strided conv, then a norm on the
    tokens) followed by ``depth`` blocks. No position embedding.

    Args:
        in_channels (int): Channels of the input map.
        embed_dims (int): Token width of the stage.
        depth (int): Number of blocks.
        patch_size, patch_stride, patch_padding (int): The embedding conv.
        drop_path_rates (Sequence[float]): One per block.
        with_cls_token (bool): Carry a learnable cls token through the
            blocks, as the official model does in its last stage.
        norm_cfg (dict): Norm of the embedding and of the blocks.
        drop_rate (float): Dropout on the embedded tokens and in the blocks.
        **block_kwargs: The rest of :class:`CvTBlock`'s arguments.
    """

    def __init__(self,
                 in_channels,
                 embed_dims,
                 depth,
                 patch_size,
                 patch_stride,
                 patch_padding,
                 drop_path_rates,
                 with_cls_token=False,
                 norm_cfg=dict(type='LN', eps=1e-5),
                 drop_rate=0.,
                 init_cfg=None,
                 **block_kwargs):
        super().__init__(init_cfg=init_cfg)
        self.patch_embed = PatchEmbed(
            in_channels=in_channels,
            embed_dims=embed_dims,
            conv_type='Conv2d',
            kernel_size=patch_size,
            stride=patch_stride,
            padding=patch_padding,
            norm_cfg=norm_cfg)
        self.cls_token = nn.Parameter(
            torch.zeros(1, 1, embed_dims)) if with_cls_token else None
        self.drop_after_embed = nn.Dropout(drop_rate)
        self.blocks = ModuleList([
            CvTBlock(
                embed_dims,
                drop_rate=drop_rate,
                drop_path_rate=rate,
                norm_cfg=norm_cfg,
                with_cls_token=with_cls_token,
                **block_kwargs) for rate in drop_path_rates
        ])

    def forward(self, x):
        """
        Args:
            x (Tensor): (B, C_in, H_in, W_in) map.

        Returns:
            tuple: (B, H * W, C) tokens without the cls token, the map size
            (H, W), and the (B, 1, C) cls token after the blocks, or None.
        """
        x, hw_shape = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), 1)
        x = self.drop_after_embed(x)
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.cls_token is None:
            return x, hw_shape, None
        return x[:, 1:], hw_shape, x[:, :1]


def _per_stage(name, value, num_stages):
    """One value per stage from a list of them or a single shared value."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f'arch[{name!r}] has {len(value)} entries, but '
                             f'the arch has {num_stages} stages')
        return list(value)
    return [value] * num_stages


def _conv_out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


@DET_MODELS.register_module()
@SEG_MODELS.register_module()
class CvT(BaseModule):
    """CvT backbone for dense prediction: three stages at strides 4/8/16 for
    the presets, each returned as an NCHW map.

    Args:
        arch (str | dict): '13', '21' or 'w24' (also 'cvt-13' and the like)
            for the paper's models, or a dict with per-stage lists
            ``embed_dims``, ``depths`` and ``num_heads`` and, optionally,
            any key of :attr:`arch_defaults` as a list or a single value.
        in_channels (int): Channels of the input image.
        out_indices (Sequence[int] | int): Stages to return; negative indices
            count from the last stage.
        cls_token (bool): Carry the official model's cls token through the
            last stage. It is never returned. False is the dense default.
        out_norm (bool): Add a LayerNorm (``norm_cfg``) on each returned
            stage, as Swin and PVT do in MMDetection.
        drop_rate (float): Dropout on tokens, after attention and in MLPs.
        attn_drop_rate (float): Dropout on the attention weights.
        drop_path_rate (float): Stochastic depth of the last block; it rises
            linearly from 0 over all the blocks of the network.
        act_cfg (dict): MLP activation. QuickGELU for the released weights;
            ``dict(type='GELU')`` matches transformers' CvT.
        norm_cfg (dict): Norm of the embeddings, blocks and output norms.
        proj_norm_cfg (dict): Norm of the 'dw_bn' projections.
        frozen_stages (int): Stages 0..frozen_stages (embedding, blocks and
            their output norms) are kept in eval mode without gradients.
            -1 freezes nothing.
        norm_eval (bool): Keep every BatchNorm in eval mode while training.
        with_cp (bool | str): True recomputes all of each block's
            activations in the backward, for the least memory. 'selective'
            recomputes only the cheap ones, between the matmuls,
            convolutions and attention: less memory than False for about
            the same time at detection sizes. Outputs and gradients are the
            same in all three modes.
        attn_impl (str): 'sdpa' (default) or 'naive'; see
            :class:`ConvAttention`.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)``
            loads official or mmcvt weights in :meth:`init_weights`.
    """

    # Shared by the three presets; an arch dict may override any of them.
    arch_defaults = dict(
        patch_sizes=[7, 3, 3],
        patch_strides=[4, 2, 2],
        patch_paddings=[2, 1, 1],
        mlp_ratios=4.,
        qkv_bias=True,
        proj_methods='dw_bn',
        kernel_qkv=3,
        stride_q=1,
        stride_kv=2,
        padding_q=1,
        padding_kv=1)
    arch_zoo = {
        '13': dict(embed_dims=[64, 192, 384], num_heads=[1, 3, 6],
                   depths=[1, 2, 10]),
        '21': dict(embed_dims=[64, 192, 384], num_heads=[1, 3, 6],
                   depths=[1, 4, 16]),
        'w24': dict(embed_dims=[192, 768, 1024], num_heads=[3, 12, 16],
                    depths=[2, 2, 20]),
    }
    _required_arch_keys = ('embed_dims', 'depths', 'num_heads')

    def __init__(self,
                 arch='13',
                 in_channels=3,
                 out_indices=(0, 1, 2),
                 cls_token=False,
                 out_norm=True,
                 drop_rate=0.,
                 attn_drop_rate=0.,
                 drop_path_rate=0.1,
                 act_cfg=dict(type='QuickGELU'),
                 norm_cfg=dict(type='LN', eps=1e-5),
                 proj_norm_cfg=dict(type='BN'),
                 frozen_stages=-1,
                 norm_eval=False,
                 with_cp=False,
                 attn_impl='sdpa',
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.arch = self._parse_arch(arch)
        self.num_stages = len(self.arch['depths'])
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if not -1 <= frozen_stages < self.num_stages:
            raise ValueError(f'frozen_stages must be in [-1, '
                             f'{self.num_stages - 1}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if with_cp not in WITH_CP_MODES:
            raise ValueError(f'with_cp must be one of {WITH_CP_MODES}, got '
                             f'{with_cp!r}')
        self.with_cls_token = cls_token

        depths = self.arch['depths']
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = ModuleList()
        for i in range(self.num_stages):
            first_block = sum(depths[:i])
            self.stages.append(
                CvTStage(
                    in_channels=in_channels,
                    embed_dims=self.arch['embed_dims'][i],
                    depth=depths[i],
                    patch_size=self.arch['patch_sizes'][i],
                    patch_stride=self.arch['patch_strides'][i],
                    patch_padding=self.arch['patch_paddings'][i],
                    drop_path_rates=rates[first_block:first_block + depths[i]],
                    with_cls_token=cls_token and i == self.num_stages - 1,
                    norm_cfg=norm_cfg,
                    drop_rate=drop_rate,
                    num_heads=self.arch['num_heads'][i],
                    mlp_ratio=self.arch['mlp_ratios'][i],
                    act_cfg=act_cfg,
                    with_cp=with_cp,
                    qkv_bias=self.arch['qkv_bias'][i],
                    attn_drop_rate=attn_drop_rate,
                    proj_method=self.arch['proj_methods'][i],
                    kernel_size=self.arch['kernel_qkv'][i],
                    stride_q=self.arch['stride_q'][i],
                    stride_kv=self.arch['stride_kv'][i],
                    padding_q=self.arch['padding_q'][i],
                    padding_kv=self.arch['padding_kv'][i],
                    proj_norm_cfg=proj_norm_cfg,
                    attn_impl=attn_impl))
            in_channels = self.arch['embed_dims'][i]

        self.out_norm = out_norm
        if out_norm:
            # named norm{i} as in MMDetection's Swin and PVT
            for i in self.out_indices:
                self.add_module(
                    f'norm{i}',
                    build_norm_layer(norm_cfg, self.arch['embed_dims'][i])[1])
        self.min_input_size = self._min_input_size()

    # ---- construction checks -------------------------------------------
    @classmethod
    def _parse_arch(cls, arch):
        """A complete per-stage arch dict from a preset name or a dict."""
        if isinstance(arch, str):
            key = arch.lower().replace('_', '-')
            key = key[len('cvt'):].lstrip('-') if key.startswith('cvt') else key
            if key not in cls.arch_zoo:
                raise ValueError(
                    f'unknown CvT arch {arch!r}; choose one of '
                    f'{sorted(cls.arch_zoo)} (or e.g. "cvt-13"), or pass a '
                    f'dict with {list(cls._required_arch_keys)}')
            arch = cls.arch_zoo[key]
        elif not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch)}')

        missing = [k for k in cls._required_arch_keys if k not in arch]
        if missing:
            raise ValueError(f'arch dict lacks {missing}; it needs '
                             f'{list(cls._required_arch_keys)} as lists')
        for key in cls._required_arch_keys:
            if not isinstance(arch[key], (list, tuple)):
                raise ValueError(f'arch[{key!r}] must be a list, one entry '
                                 f'per stage, got {arch[key]!r}')
        unknown = set(arch) - set(cls._required_arch_keys) - set(
            cls.arch_defaults)
        if unknown:
            raise ValueError(f'arch dict has unknown keys {sorted(unknown)}; '
                             f'known optional keys: {list(cls.arch_defaults)}')
        num_stages = len(arch['depths'])
        if num_stages == 0:
            raise ValueError('arch needs at least one stage')
        parsed = {key: _per_stage(key, arch[key], num_stages)
                  for key in cls._required_arch_keys}
        parsed.update({
            key: _per_stage(key, arch.get(key, default), num_stages)
            for key, default in cls.arch_defaults.items()
        })

        for i, (dims, heads) in enumerate(
                zip(parsed['embed_dims'], parsed['num_heads'])):
            if heads < 1 or dims % heads:
                raise ValueError(f'stage {i}: num_heads={heads} does not '
                                 f'divide embed_dims={dims}')
        for i, method in enumerate(parsed['proj_methods']):
            if method not in PROJ_METHODS:
                raise ValueError(f'stage {i}: unknown projection method '
                                 f'{method!r}; choose one of {PROJ_METHODS}')
            # The residual around the attention needs as many queries as
            # tokens; only 'dw_bn' convolves q.
            k, s, p = (parsed['kernel_qkv'][i], parsed['stride_q'][i],
                       parsed['padding_q'][i])
            if method == 'dw_bn' and (s != 1 or 2 * p != k - 1):
                raise ValueError(
                    f'stage {i}: the q projection (kernel {k}, stride {s}, '
                    f'padding {p}) changes the map size, which breaks the '
                    f'residual; use stride_q=1 and padding_q={(k - 1) // 2}')
        return parsed

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, Integral):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not all(
                isinstance(i, Integral) for i in out_indices):
            raise TypeError(f'out_indices must be an int or a sequence of '
                            f'ints, got {out_indices!r}')
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(f'out_indices {tuple(out_indices)} has '
                                 f'{index}, out of range for '
                                 f'{self.num_stages} stages')
            parsed.append(index % self.num_stages)
        return tuple(parsed)

    def _stage_sizes(self, size):
        """Token-map sizes along one image dimension: for each stage, the
        map size and the size of its subsampled k/v map."""
        sizes = []
        for i in range(self.num_stages):
            size = _conv_out_size(size, self.arch['patch_sizes'][i],
                                  self.arch['patch_strides'][i],
                                  self.arch['patch_paddings'][i])
            kv_size = size if self.arch['proj_methods'][
                i] == 'linear' else _conv_out_size(
                    size, self.arch['kernel_qkv'][i],
                    self.arch['stride_kv'][i], self.arch['padding_kv'][i])
            sizes.append((size, kv_size))
        return sizes

    def _min_input_size(self):
        """Smallest image side for which every stage keeps a token."""
        for size in itertools.count(1):
            if all(min(s) >= 1 for s in self._stage_sizes(size)):
                return size

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'CvT expects a tensor, got {type(x)}')
        if x.dim() != 4:
            raise ValueError(f'CvT expects a 4-D (B, C, H, W) tensor, got '
                             f'shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'CvT was built with in_channels='
                             f'{self.in_channels}, but the input has '
                             f'{x.shape[1]} channels (shape '
                             f'{tuple(x.shape)})')
        if min(x.shape[2:]) < self.min_input_size:
            raise ValueError(
                f'input of {x.shape[2]}x{x.shape[3]} is too small: a stage '
                f'would have no tokens left; each side needs at least '
                f'{self.min_input_size} pixels')

    # ---- forward -----------------------------------------------------------
    def forward(self, x):
        """
        Args:
            x (Tensor): (B, in_channels, H, W) images, any H and W of at
                least :attr:`min_input_size`.

        Returns:
            tuple[Tensor]: One (B, C_i, H_i, W_i) map per entry of
            ``out_indices``; H_i is about H / 4, H / 8, H / 16 for the
            presets.
        """
        self._check_input(x)
        maps = {}
        for i, stage in enumerate(self.stages):
            tokens, hw_shape, _ = stage(x)
            x = self._to_map(tokens, hw_shape)
            if i in self.out_indices:
                if self.out_norm:
                    tokens = getattr(self, f'norm{i}')(tokens)
                maps[i] = self._to_map(tokens, hw_shape)
        return tuple(maps[i] for i in self.out_indices)

    @staticmethod
    def _to_map(tokens, hw_shape):
        """(B, H * W, C) tokens -> contiguous (B, C, H, W) map.

        A mere view would be channels_last in memory. Convs pass that layout
        on: mmcv's compiled ops (RoIAlign on the CPU) then misread their
        input, and DDP warns that weight gradients lost their layout.
        """
        return rearrange(
            tokens, 'b (h w) c -> b c h w', h=hw_shape[0],
            w=hw_shape[1]).contiguous()

    # ---- training modes ----------------------------------------------------
    def _frozen_modules(self):
        for i in range(self.frozen_stages + 1):
            yield self.stages[i]
            if self.out_norm and i in self.out_indices:
                yield getattr(self, f'norm{i}')

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ---- weights -----------------------------------------------------------
    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get(
                'type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'])
            self._is_init = True
            return
        if self.init_cfg is not None:
            super().init_weights()
            return
        # The official initialisation ('trunc_norm').
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, (nn.LayerNorm, _BatchNorm)):
                constant_init(module, val=1., bias=0.)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=.02)
