"""CvT, the Convolutional vision Transformer (Wu et al., ICCV 2021,
arXiv 2103.15808), as a backbone for dense prediction.

The file reads as the paper builds the model: the convolutional projection,
the attention it feeds, the block, the stage (a convolutional token
embedding, then blocks) and the backbone. Parameter names follow the
official code wherever the OpenMMLab bricks allow it, so that
``cvt_checkpoint.convert_official`` is a short table of renames and one
fusion: k and v are projected together (see :class:`ConvAttention`).

Written for GPUs, where a training step of small ops costs launch time more
than FLOPs: k and v go through one conv, one BatchNorm and one matmul, and
nothing is copied that a later op copies anyway. The machinery that saves
more ops (fused activation, drop path and residual; casting for autocast;
the recompute policy of ``with_cp``) is in :mod:`mmcvt.models.layers`, and
the arch vocabulary in :mod:`.cvt_arch`. ``torch.compile(CvT(...),
dynamic=True, fullgraph=True)`` gives one graph for every image size, and
``compile=True`` does it from a config.
"""
import itertools
import warnings
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import (constant_init, initialize,
                                        trunc_normal_init)
from mmengine.registry import MODELS

from ..layers import (WITH_CP_MODES, QuickGELU, add_residual,
                      chunked_attention, drop_path_scales, linear_pair,
                      map_to_tokens, run_with_recompute, to_autocast_dtype,
                      tokens_to_map, with_autocast_weights)
from .cvt_arch import ARCH_ZOO, is_int, min_input_size, parse_arch, stage_sizes
from .cvt_checkpoint import load_pretrained

ATTN_IMPLS = ('sdpa', 'naive', 'chunked')
# what the projections' norm may be built as (build_norm_layer: BN, SyncBN)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
               nn.SyncBatchNorm)
# how CvT.get_layer_depth counts depths for layer-wise lr decay
DECAY_TYPES = ('layer_wise', 'stage_wise')


def build_conv_projection(method, in_channels, out_channels, kernel_size,
                          stride, padding, norm_cfg):
    """The convolutional part of a q/k/v projection, on (B, C, H, W) maps.

    'dw_bn' is a depthwise conv (``out_channels`` a multiple of
    ``in_channels``) then a norm (BN by default); its children are named
    ``conv`` and ``bn`` as in the official code. 'avg' is average pooling
    with ``ceil_mode=True``, as the official code has it. 'linear' leaves
    the map as it is; the Linear after it does all the work. Only 'dw_bn'
    uses ``out_channels``.
    """
    if method == 'dw_bn':
        return ConvModule(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=in_channels,
            bias=False,
            norm_cfg=norm_cfg,
            act_cfg=None)
    if method == 'avg':
        return nn.AvgPool2d(
            kernel_size, stride=stride, padding=padding, ceil_mode=True)
    return nn.Identity()


class ConvAttention(BaseModule):
    """Multi-head attention whose q, k and v come from convolutional
    projections of the token map; k and v are usually subsampled.

    k and v read the same map with the same kernel and stride, so they are
    computed together: one depthwise conv with two filters per channel
    (``conv_proj_kv``, the k and v filters of channel c at outputs 2c and
    2c + 1), one BatchNorm over those 2C channels, whose statistics stay per
    channel and so per projection, and one batched matmul for the two
    Linears (``proj_kv``, the k rows then the v rows). The official and
    transformers checkpoints, which keep k and v apart, are fused as they
    are converted (``cvt_checkpoint.convert_official``).

    Args:
        embed_dims (int): Width C of the tokens.
        num_heads (int): Number of heads; divides ``embed_dims``.
        qkv_bias (bool): Bias in the q/k/v Linears.
        attn_drop_rate (float): Dropout on the attention weights.
        proj_drop_rate (float): Dropout after the output Linear.
        proj_method (str): 'dw_bn', 'avg' or 'linear'. With 'avg' only k and
            v are pooled; q is linear, as in the official code.
        kernel_qkv (int): Kernel of the q/k/v projections.
        stride_q, stride_kv, padding_q, padding_kv (int): Their strides and
            paddings.
        proj_norm_cfg (dict): Norm of the 'dw_bn' projections.
        with_cls_token (bool): The first token is a cls token. It is split
            off before the conv projections and joined again after them.
        attn_impl (str): 'sdpa' runs ``F.scaled_dot_product_attention``,
            whose memory stays linear in the number of tokens. 'naive'
            materialises the score matrix as the official code does; it is
            kept as a reference for tests and benchmarks. 'chunked' runs
            SDPA on chunks of the queries, for the ONNX export
            (:func:`~mmcvt.models.layers.chunked_attention`).
    """

    def __init__(self,
                 embed_dims,
                 num_heads,
                 *,
                 qkv_bias,
                 attn_drop_rate,
                 proj_drop_rate,
                 proj_method,
                 kernel_qkv,
                 stride_q,
                 stride_kv,
                 padding_q,
                 padding_kv,
                 proj_norm_cfg,
                 with_cls_token,
                 attn_impl,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_heads = num_heads
        # The official code scales by the whole width, not the head width;
        # the released weights were trained with it.
        self.scale = embed_dims**-0.5
        self.attn_drop_rate = attn_drop_rate
        self.with_cls_token = with_cls_token
        self.attn_impl = attn_impl
        # 'dw_bn' gives k and v maps of their own; 'avg' and 'linear' one map
        # that both read
        self.kv_maps = 2 if proj_method == 'dw_bn' else 1

        q_method = 'linear' if proj_method == 'avg' else proj_method
        self.conv_proj_q = build_conv_projection(q_method, embed_dims,
                                                 embed_dims, kernel_qkv,
                                                 stride_q, padding_q,
                                                 proj_norm_cfg)
        self.conv_proj_kv = build_conv_projection(proj_method, embed_dims,
                                                  2 * embed_dims, kernel_qkv,
                                                  stride_kv, padding_kv,
                                                  proj_norm_cfg)
        self.proj_q = nn.Linear(embed_dims, embed_dims, bias=qkv_bias)
        self.proj_kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def _split_heads(self, tokens):
        """(..., N, C) -> (..., heads, N, C / heads), a view in eager mode."""
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)

    def _project_q(self, token_map, cls_token):
        """(B, C, H, W) map -> (B, heads, [1 +] H * W, C / heads)."""
        tokens = map_to_tokens(self.conv_proj_q(token_map))
        if cls_token is not None:
            tokens = torch.cat((cls_token, tokens), dim=1)
        return self._split_heads(self.proj_q(tokens))

    def _project_kv(self, token_map, cls_token):
        """(B, C, H, W) map -> k and v, each (B, heads, [1 +] h * w,
        C / heads) for the subsampled h x w map."""
        kv_map = self.conv_proj_kv(token_map)
        batch, channels = kv_map.shape[:2]
        embed_dims = channels // self.kv_maps
        # (kv_maps, B, h * w, C): k's map then v's
        tokens = map_to_tokens(kv_map).unflatten(
            -1, (embed_dims, self.kv_maps)).permute(3, 0, 1, 2)
        if cls_token is not None:
            tokens = torch.cat(
                (cls_token.expand(self.kv_maps, -1, -1, -1), tokens), dim=2)
        num_tokens = tokens.shape[2]
        # one batched matmul for both Linears, which reads the interleaved
        # channels where they are (CPU) or copies them into place (CUDA)
        tokens = tokens.reshape(self.kv_maps, batch * num_tokens,
                                embed_dims).expand(2, -1, -1)
        kv = linear_pair(tokens, self.proj_kv.weight, self.proj_kv.bias)
        # heads split after k and v are apart: their gradients then come
        # back in the attention kernel's layout without a copy
        k, v = (
            self._split_heads(t.unflatten(0, (batch, num_tokens))) for t in kv)
        return k, v

    def forward(self, x, hw_shape):
        """
        Args:
            x (Tensor): (B, [1 +] H * W, C) tokens, the cls token first.
            hw_shape (tuple[int]): (H, W).

        Returns:
            Tensor: (B, [1 +] H * W, C).
        """
        # both convolutions read it: cast it once
        x = to_autocast_dtype(x)
        cls_token = None
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        token_map = tokens_to_map(x, hw_shape)
        q = self._project_q(token_map, cls_token)
        k, v = self._project_kv(token_map, cls_token)

        attn_drop = self.attn_drop_rate if self.training else 0.
        if self.attn_impl == 'sdpa':
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=attn_drop, scale=self.scale)
        elif self.attn_impl == 'chunked':
            out = chunked_attention(q, k, v, self.scale, attn_drop)
        else:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = F.dropout(attn, attn_drop) @ v
        # (B, heads, N, C / heads) -> (B, N, C); a view where the attention
        # kernel wrote its output head-interleaved, as SDPA's kernels do
        out = out.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(out))


class CvTBlock(BaseModule):
    """Pre-norm Transformer block: conv attention, then an MLP, each with a
    residual and drop path.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Attention heads.
        mlp_ratio (float): Hidden width of the MLP over C.
        drop_rate (float): Dropout after the attention and in the MLP.
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
                 *,
                 mlp_ratio,
                 drop_rate,
                 act_cfg,
                 norm_cfg,
                 with_cp,
                 init_cfg=None,
                 **attn_kwargs):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ConvAttention(
            embed_dims, num_heads, proj_drop_rate=drop_rate, **attn_kwargs)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        # The MLP's residual and drop path are added here, with the
        # attention's, by add_residual
        self.ffn = FFN(
            embed_dims=embed_dims,
            feedforward_channels=int(embed_dims * mlp_ratio),
            num_fcs=2,
            ffn_drop=drop_rate,
            act_cfg=act_cfg,
            add_identity=False)

    def forward(self, x, hw_shape, drop_path_scale=None):
        """
        Args:
            x (Tensor): (B, N, C) tokens.
            hw_shape (tuple[int]): The (H, W) of the token map.
            drop_path_scale (Tensor, optional): (2, B, 1, 1) per-sample
                scales of the two residual branches (stochastic depth, see
                :func:`~mmcvt.models.layers.drop_path_scales`); None adds
                them as they are.

        Returns:
            Tensor: (B, N, C) tokens.
        """
        return run_with_recompute(self.forward_without_recompute, self,
                                  self.with_cp, x, hw_shape, drop_path_scale)

    def forward_without_recompute(self, x, hw_shape, drop_path_scale=None):
        """The block's computation with plain autograd; :meth:`forward`
        runs it with the recompute that ``with_cp`` asks for."""
        attn_scale, ffn_scale = (None, None) if drop_path_scale is None \
            else drop_path_scale
        x = add_residual(x, self.attn(self.norm1(x), hw_shape), attn_scale)
        return add_residual(x, self.ffn(self.norm2(x)), ffn_scale)


class CvTStage(BaseModule):
    """A convolutional token embedding (strided conv, then a norm on the
    tokens) followed by ``depth`` blocks. No position embedding.

    Args:
        in_channels (int): Channels of the input map.
        embed_dims (int): Token width of the stage.
        depth (int): Number of blocks.
        patch_size, patch_stride, patch_padding (int): The embedding conv.
        drop_path_rates (Sequence[float]): Stochastic depth, one rate per
            block.
        with_cls_token (bool): Carry a learnable cls token through the
            blocks, as the official model does in its last stage.
        norm_cfg (dict): Norm of the embedding and of the blocks.
        drop_rate (float): Dropout on the embedded tokens and in the blocks.
        **block_kwargs: The rest of :class:`CvTBlock`'s and
            :class:`ConvAttention`'s arguments.
    """

    def __init__(self,
                 in_channels,
                 embed_dims,
                 depth,
                 patch_size,
                 patch_stride,
                 patch_padding,
                 drop_path_rates,
                 *,
                 with_cls_token,
                 norm_cfg,
                 drop_rate,
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
        self.cls_token = nn.Parameter(torch.zeros(
            1, 1, embed_dims)) if with_cls_token else None
        self.drop_after_embed = nn.Dropout(drop_rate)
        self.blocks = ModuleList([
            CvTBlock(
                embed_dims,
                drop_rate=drop_rate,
                norm_cfg=norm_cfg,
                with_cls_token=with_cls_token,
                **block_kwargs) for _ in range(depth)
        ])
        self.drop_path_rates = tuple(drop_path_rates)
        # not in the state_dict: it follows from the config
        self.register_buffer(
            'keep_probs',
            1 - torch.tensor(self.drop_path_rates, dtype=torch.float32),
            persistent=False)

    def forward(self, x):
        """
        Args:
            x (Tensor): (B, C_in, H_in, W_in) map.

        Returns:
            tuple: (B, H * W, C) tokens without the cls token, the map size
            (H, W), and the (B, 1, C) cls token after the blocks, or None.
        """
        patch_embed, *blocks = with_autocast_weights(
            self.patch_embed, *self.blocks, like=x)
        x, hw_shape = patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), 1)
        x = self.drop_after_embed(x)
        scales = [None] * len(blocks)
        if self.training and any(self.drop_path_rates):
            scales = drop_path_scales(x, self.keep_probs, 2)
        for block, scale in zip(blocks, scales):
            x = block(x, hw_shape, scale)
        if self.cls_token is None:
            return x, hw_shape, None
        return x[:, 1:], hw_shape, x[:, :1]


def _check_rate(name, value):
    if not isinstance(value, Real) or not 0 <= value < 1:
        raise ValueError(f'{name} must be a probability in [0, 1), got '
                         f'{value!r}')


@MODELS.register_module()
class CvT(BaseModule):
    """CvT backbone for dense prediction: three stages at strides 4/8/16 for
    the presets, each returned as an NCHW map.

    Registered in mmengine's root MODELS, of which MMDetection's and
    MMSegmentation's registries are children, so configs of either library
    find it without this file importing them.

    Args:
        arch (str | int | dict): '13', '21' or 'w24' (also 13, 'cvt-13' and
            the like) for the paper's models, or a dict; see
            :func:`parse_arch`.
        in_channels (int): Channels of the input image.
        out_indices (Sequence[int] | int): Stages to return, at least one,
            each once; negative indices count from the last stage.
        with_cls_token (bool): Carry the official model's cls token through
            the last stage. It is never returned. False is the dense default.
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
            their output norms) are kept in eval mode without gradients,
            from construction on, so that DDP never takes them for trainable
            parameters. -1 freezes nothing.
        norm_eval (bool): Keep every BatchNorm in eval mode while training.
        with_cp (bool | str): True recomputes all of each block's
            activations in the backward, for the least memory. 'selective'
            recomputes only the cheap ones, between the matmuls,
            convolutions and attention: less memory than False for about
            the same time at detection sizes. Outputs and gradients are the
            same in all three modes.
        attn_impl (str): 'sdpa' (default), 'naive' or 'chunked'; see
            :class:`ConvAttention`.
        compile (bool | dict): Run the backbone through ``torch.compile``:
            True with ``dynamic=True`` (one graph for every image size), a
            dict for other ``torch.compile`` options (merged over those).
            The rest of the detector stays eager. See docs/en/
            speed_and_memory.md, "Compiling the backbone".
        pretrained (str, optional): Deprecated; use ``init_cfg=dict(
            type='Pretrained', checkpoint=...)``, which it becomes.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained',
            checkpoint=...)`` loads official, transformers or mmcvt weights
            in :meth:`init_weights`; other entries go to mmengine's
            initialisers.
    """

    arch_zoo = ARCH_ZOO

    def __init__(self,
                 arch='13',
                 in_channels=3,
                 out_indices=(0, 1, 2),
                 with_cls_token=False,
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
                 compile=False,
                 pretrained=None,
                 init_cfg=None):
        init_cfg = self._pretrained_as_init_cfg(pretrained, init_cfg)
        super().__init__(init_cfg=init_cfg)
        self.stage_specs = parse_arch(arch)
        self.num_stages = len(self.stage_specs)
        if not is_int(in_channels) or in_channels < 1:
            raise ValueError(f'in_channels must be an int >= 1, got '
                             f'{in_channels!r}')
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if not is_int(frozen_stages) or not (-1 <= frozen_stages <
                                             self.num_stages):
            raise ValueError(f'frozen_stages must be an int in [-1, '
                             f'{self.num_stages - 1}], got {frozen_stages!r}')
        probabilities = dict(
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate)
        for name, rate in probabilities.items():
            _check_rate(name, rate)
        if with_cp not in WITH_CP_MODES:
            raise ValueError(f'with_cp must be one of {WITH_CP_MODES}, got '
                             f'{with_cp!r}')
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'unknown attn_impl {attn_impl!r}; choose one '
                             f'of {ATTN_IMPLS}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cls_token = with_cls_token
        if act_cfg.get('type') == 'QuickGELU':
            # MMSegmentation registers a QuickGELU of its own (for CLIP),
            # which its scope would find first: the same function, in more
            # ops a block (forward and backward) than this one
            act_cfg = dict(act_cfg, type=QuickGELU)

        depths = [spec['depth'] for spec in self.stage_specs]
        rates = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())
        self.stages = ModuleList()
        for i, spec in enumerate(self.stage_specs):
            self.stages.append(
                CvTStage(
                    in_channels=in_channels,
                    drop_path_rates=list(
                        itertools.islice(rates, spec['depth'])),
                    with_cls_token=with_cls_token and i == self.num_stages - 1,
                    norm_cfg=norm_cfg,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    act_cfg=act_cfg,
                    proj_norm_cfg=proj_norm_cfg,
                    with_cp=with_cp,
                    attn_impl=attn_impl,
                    **spec))
            in_channels = spec['embed_dims']

        self.out_norm = out_norm
        if out_norm:
            # named norm{i} as in MMDetection's Swin and PVT
            for i in self.out_indices:
                self.add_module(
                    f'norm{i}',
                    build_norm_layer(norm_cfg,
                                     self.stage_specs[i]['embed_dims'])[1])
        self.min_input_size = min_input_size(self.stage_specs)
        self._freeze_stages()
        if compile:
            options = dict(dynamic=True)
            if isinstance(compile, dict):
                options.update(compile)
            elif compile is not True:
                raise TypeError(f'compile must be a bool or a dict of '
                                f'torch.compile options, got {compile!r}')
            self.compile(**options)

    # ---- construction checks -------------------------------------------
    @staticmethod
    def _pretrained_as_init_cfg(pretrained, init_cfg):
        """``pretrained=...``, which MMSegmentation's segmentors pass on as
        ``model.pretrained``, becomes the ``init_cfg`` it stands for, as in
        MMDetection's and MMSegmentation's own backbones."""
        if pretrained is None:
            return init_cfg
        if not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a checkpoint path or URL, '
                            f'got {pretrained!r}')
        if init_cfg is not None:
            raise ValueError(
                'CvT got both pretrained and init_cfg; give only '
                'init_cfg=dict(type="Pretrained", checkpoint=...)')
        warnings.warn(
            'CvT: "pretrained" is deprecated, use init_cfg=dict('
            'type="Pretrained", checkpoint=...)', DeprecationWarning)
        return dict(type='Pretrained', checkpoint=pretrained)

    def _parse_out_indices(self, out_indices):
        if is_int(out_indices):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not all(
                is_int(i) for i in out_indices):
            raise TypeError(f'out_indices must be an int or a sequence of '
                            f'ints, got {out_indices!r}')
        if not out_indices:
            raise ValueError(f'out_indices is empty: CvT would return no '
                             f'maps; name at least one of the '
                             f'{self.num_stages} stages')
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(f'out_indices {tuple(out_indices)} has '
                                 f'{index}, out of range for '
                                 f'{self.num_stages} stages')
            stage = index % self.num_stages
            if stage in parsed:
                raise ValueError(
                    f'out_indices {tuple(out_indices)} names stage {stage} '
                    f'twice (negative indices count from the last stage); '
                    f'name each stage once')
            parsed.append(stage)
        return tuple(parsed)

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
        # one comparison per side, not min(): torch.compile then learns a
        # lower bound of each side, which its dynamic-shape code needs to
        # know that every stage keeps a token
        if any(side < self.min_input_size for side in x.shape[2:]):
            raise ValueError(
                f'input of {x.shape[2]}x{x.shape[3]} is too small: a stage '
                f'would have no tokens left; each side needs at least '
                f'{self.min_input_size} pixels')
        self._check_batch_norm_input(x)

    def _check_batch_norm_input(self, x):
        """A BatchNorm that trains needs more than one value per channel;
        say so before torch does, in terms of the image."""
        batch, _, height, width = x.shape
        heights = stage_sizes(self.stage_specs, height)
        widths = stage_sizes(self.stage_specs, width)
        for i, ((h, h_kv), (w, w_kv)) in enumerate(zip(heights, widths)):
            if batch * h_kv * w_kv > 1 or not self._projection_bn_trains(i):
                continue
            raise ValueError(
                f'a batch of {batch} image(s) of {height}x{width} is too '
                f'small to train on: stage {i} projects k and v from a '
                f'{h_kv}x{w_kv} map, and its BatchNorms need more than one '
                f'value per channel in training mode. Use larger images or '
                f'batches, or norm_eval=True to keep the BatchNorms in eval '
                f'mode')

    def _projection_bn_trains(self, stage_index):
        attn = self.stages[stage_index].blocks[0].attn
        return any(
            isinstance(m, BATCH_NORMS) and m.training
            for m in attn.conv_proj_kv.modules())

    # ---- forward -----------------------------------------------------------
    def forward(self, x):
        """
        Args:
            x (Tensor): (B, in_channels, H, W) images, any H and W of at
                least :attr:`min_input_size`.

        Returns:
            tuple[Tensor]: One contiguous (B, C_i, H_i, W_i) map per entry of
            ``out_indices``; H_i is about H / 4, H / 8, H / 16 for the
            presets.
        """
        self._check_input(x)
        maps = {}
        for i, stage in enumerate(self.stages):
            tokens, hw_shape, _ = stage(x)
            x = tokens_to_map(tokens, hw_shape)
            if i in self.out_indices:
                if self.out_norm:
                    tokens = getattr(self, f'norm{i}')(tokens)
                # Contiguous NCHW, not the channels_last view: convs pass
                # that layout on, mmcv's compiled ops (RoIAlign on the CPU)
                # misread it, and DDP warns that weight gradients lost
                # their layout.
                maps[i] = tokens_to_map(tokens, hw_shape).contiguous()
        return tuple(maps[i] for i in self.out_indices)

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
                if isinstance(module, BATCH_NORMS):
                    module.eval()
        return self

    # ---- weights -----------------------------------------------------------
    def init_weights(self):
        if self.init_cfg is None:
            self._init_as_official()
        else:
            # mmengine's order: each entry in turn; Pretrained goes through
            # load_pretrained, which reads every format and loads strictly
            init_cfgs = self.init_cfg if isinstance(self.init_cfg,
                                                    list) else [self.init_cfg]
            for init_cfg in init_cfgs:
                if not isinstance(init_cfg, dict) or 'type' not in init_cfg:
                    raise TypeError(
                        f'CvT init_cfg must be a dict with a "type", or a '
                        f'list of them, got {init_cfg!r}')
                if init_cfg['type'] == 'Pretrained':
                    if 'checkpoint' not in init_cfg:
                        raise ValueError(
                            'init_cfg of type Pretrained needs a checkpoint')
                    load_pretrained(self, init_cfg['checkpoint'])
                else:
                    initialize(self, init_cfg)
        self.is_init = True

    def _init_as_official(self):
        """The official initialisation ('trunc_norm')."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_init(module, std=.02, bias=0.)
            elif isinstance(module, (nn.LayerNorm, *BATCH_NORMS)):
                constant_init(module, val=1., bias=0.)
        for stage in self.stages:
            if stage.cls_token is not None:
                nn.init.trunc_normal_(stage.cls_token, std=.02)

    # ---- layer-wise lr decay -----------------------------------------------
    def get_layer_depth(self, param_name, prefix='', decay_type='layer_wise'):
        """The depth of a parameter for layer-wise lr decay, in MMPretrain's
        protocol: an optimizer constructor scales the lr of a parameter at
        ``depth`` by ``rate ** (num_layers - 1 - depth)``.

        Depth 0 is the stem (stage 0's token embedding), which is decayed
        the most; ``num_layers - 1`` is the top, whose lr is not decayed:
        the output norms, on the maps that the neck takes, and every
        parameter whose name does not start with ``prefix`` (necks and
        heads). In between:

        - ``'layer_wise'``: block i of the network, counted over all stages
          from 1, is at depth i; the token embedding that opens a later
          stage, and the cls token that joins there, are at the depth of
          its first block, as MMDetection puts ConvNeXt's downsampling
          layers with the stage they open. ``num_layers`` is the number of
          blocks + 2.
        - ``'stage_wise'``: stage s, its embedding and blocks, is at depth
          s + 1 (the stem stays at 0). ``num_layers`` is the number of
          stages + 2.

        Args:
            param_name (str): The parameter's name in the model, e.g.
                ``'backbone.stages.1.blocks.0.attn.proj.weight'``.
            prefix (str): The backbone's name in the model with its dot,
                e.g. ``'backbone.'``; '' when the model is the backbone.
            decay_type (str): ``'layer_wise'`` or ``'stage_wise'``.

        Returns:
            tuple[int, int]: The parameter's depth, and ``num_layers``.
        """
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'unknown decay_type {decay_type!r}; choose one '
                             f'of {DECAY_TYPES}')
        depths = [spec['depth'] for spec in self.stage_specs]
        num_layers = (sum(depths)
                      if decay_type == 'layer_wise' else self.num_stages) + 2
        top = num_layers - 1
        if not param_name.startswith(prefix):
            return top, num_layers
        parts = param_name[len(prefix):].split('.')
        if parts[0] in self._out_norm_names():
            return top, num_layers
        if parts[0] != 'stages' or len(parts) < 3:
            raise ValueError(f'{param_name!r} is no parameter of CvT (with '
                             f'prefix {prefix!r})')
        stage = int(parts[1])
        if stage == 0 and parts[2] == 'patch_embed':
            return 0, num_layers
        if decay_type == 'stage_wise':
            return stage + 1, num_layers
        block = int(parts[3]) if parts[2] == 'blocks' else 0
        return sum(depths[:stage]) + block + 1, num_layers

    def _out_norm_names(self):
        return [f'norm{i}' for i in self.out_indices] if self.out_norm else []
