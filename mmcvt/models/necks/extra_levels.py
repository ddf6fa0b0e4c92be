"""Learned stride-2 levels for backbones whose stages stop too early.

CvT's three stages end at stride 16. The heads of today's comparisons were
made for four-stage backbones (ResNet, Swin, PVT): Mask2Former's pixel
decoder and Semantic FPN take strides 4 to 32, DINO's encoder strides 8 to
64, of which the backbone gives 8 to 32 and its ChannelMapper adds 64.
:class:`ExtraLevels` gives such heads the levels they expect, in one way
for all of them: it appends learned stride-2 levels to the backbone's maps,
as MMDetection's FPN (``add_extra_convs='on_input'``) and ChannelMapper add
theirs, but before the neck, and then hands the extended pyramid to the
neck that the head's recipe has (FPN, ChannelMapper), or straight to the
head where the recipe has none (Mask2Former).
"""
import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS


@MODELS.register_module()
class ExtraLevels(BaseModule):
    """Appends learned stride-2 levels to a backbone's feature maps, then
    passes all of them to an inner neck, if one is given.

    Each extra level is a 3x3 convolution of stride 2 (padding 1) and a
    norm: the first on the last input map, each further one on the extra
    level before it. Registered in mmengine's root MODELS, so that
    MMDetection's and MMSegmentation's configs find it; the inner neck is
    built in the config's scope (``type='FPN'`` is mmseg's FPN in an
    MMSegmentation config, mmdet's in an MMDetection one).

    Args:
        in_channels (Sequence[int]): Channels of the backbone's maps, from
            the finest to the coarsest.
        extra_channels (Sequence[int]): Channels of each added level, from
            the finest to the coarsest: ``(768,)`` adds one level at twice
            the last input's stride, with twice CvT-13's 384 channels, as a
            fourth stage would have.
        norm_cfg (dict, optional): Norm after each extra convolution. GN of
            32 groups by default, the norm of the extra level that DINO's
            ChannelMapper adds. None for none (the conv then has a bias).
        neck (dict, optional): A neck built on the extended maps and
            returned in their place. Its ``in_channels``, if the config
            gives them, must be ``in_channels + extra_channels``; if not,
            they are set to that.
        min_tokens (int, optional): The fewest tokens (the sum of H x W
            over the maps it returns) that an input must give: a head that
            selects that many of them, as DINO selects its ``num_queries``,
            fails on fewer with torch's "selected index k out of range".
            Fewer are an error that says so. None checks nothing.
        min_input_size (int, optional): The side of the smallest square
            image that gives ``min_tokens`` with the config's backbone, for
            the error to name; the model cannot compute it.
        init_cfg (dict | list[dict], optional): mmengine's initialisation
            of this module; the convolutions start as mmcv's ConvModule
            initialises them (Kaiming), the inner neck as its own class
            does.

    Shapes:
        inputs: N maps ``(B, in_channels[i], H_i, W_i)``.
        outputs (without ``neck``): the N input maps, then one map
        ``(B, extra_channels[j], ceil(H / 2), ceil(W / 2))`` per extra
        level, ``(H, W)`` being the size of the map before it. With
        ``neck``, what the neck returns for those N + E maps.
    """

    def __init__(self,
                 in_channels,
                 extra_channels,
                 norm_cfg=dict(type='GN', num_groups=32),
                 neck=None,
                 min_tokens=None,
                 min_input_size=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.min_tokens = min_tokens
        self.min_input_size = min_input_size
        self.in_channels = _channel_list('in_channels', in_channels)
        self.extra_channels = _channel_list('extra_channels', extra_channels)
        self.out_channels = self.in_channels + self.extra_channels

        self.extra_convs = ModuleList()
        channels = self.in_channels[-1]
        for out_channels in self.extra_channels:
            self.extra_convs.append(
                ConvModule(
                    channels,
                    out_channels,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    norm_cfg=norm_cfg,
                    act_cfg=None))
            channels = out_channels

        self.neck = None
        if neck is not None:
            neck = dict(neck)
            given = neck.setdefault('in_channels', self.out_channels)
            if list(given) != self.out_channels:
                raise ValueError(
                    f'the inner neck ({neck.get("type")}) takes in_channels='
                    f'{list(given)}, but ExtraLevels gives it '
                    f'{self.out_channels} (in_channels + extra_channels): '
                    f'set the neck\'s in_channels to that, or leave them out')
            self.neck = MODELS.build(neck)

    def forward(self, inputs):
        """The input maps and the extra levels, through the inner neck if
        there is one.

        Args:
            inputs (Sequence[Tensor]): The backbone's maps, as in_channels.

        Returns:
            tuple[Tensor]: See the class's Shapes.
        """
        channels = [x.shape[1] for x in inputs]
        if channels != self.in_channels:
            raise ValueError(
                f'ExtraLevels was built for maps of {self.in_channels} '
                f'channels, got {len(inputs)} maps of {channels}: set its '
                f'in_channels to the channels of the backbone\'s '
                f'out_indices')
        levels = list(inputs)
        for conv in self.extra_convs:
            levels.append(conv(levels[-1]))
        outputs = tuple(levels) if self.neck is None else self.neck(
            tuple(levels))
        self._check_tokens(outputs)
        return outputs

    def _check_tokens(self, outputs):
        # not while tracing (torch.compile, ONNX export), where the sizes
        # are symbolic and the check would only add a guard
        if (self.min_tokens is None or torch.compiler.is_compiling()
                or torch.jit.is_tracing()):
            return
        sizes = [tuple(x.shape[2:]) for x in outputs]
        tokens = sum(h * w for h, w in sizes)
        if tokens >= self.min_tokens:
            return
        needed = ('' if self.min_input_size is None else
                  f' This model needs images of at least '
                  f'{self.min_input_size}x{self.min_input_size} (or as many '
                  f'tokens): resize or pad smaller ones to that, e.g. in the '
                  f"test pipeline's Resize, or with --shape for the "
                  f'benchmark tools.')
        raise ValueError(
            f'the {len(sizes)} levels hold {tokens} tokens for this input '
            f'({" + ".join(f"{h}x{w}" for h, w in sizes)}), fewer than the '
            f"{self.min_tokens} that the head selects among them (DINO's "
            f"num_queries, ExtraLevels' min_tokens).{needed}")


def _channel_list(name, value):
    channels = list(value) if isinstance(value, (list, tuple)) else None
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(f'{name} must be a non-empty list of positive '
                         f'ints, got {value!r}')
    return channels
