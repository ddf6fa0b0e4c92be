# What the DINO, Mask2Former and Semantic FPN configs share: CvT for the
# ADE20K ones, the learned fourth level that these heads' recipes expect, and
# the optimizer keys that train the backbone at a tenth of the head's lr.
# The configs take them as `_base_.<name>`, as they take those of
# cvt13_detection.py.

# CvT-13 as upernet_cvt13_ade20k.py has it: drop path 0.1, and the
# projections' BatchNorms train (no norm_eval), as in our UperNet configs.
cvt13_ade20k_backbone = dict(
    type='CvT',
    arch='13',
    out_indices=(0, 1, 2),
    drop_path_rate=0.1,
    init_cfg=dict(type='Pretrained', checkpoint='hf://microsoft/cvt-13'))

# CvT's stages stop at stride 16 (64/192/384 channels for CvT-13 and
# CvT-21). ExtraLevels (mmcvt.models.necks) adds a learned stride-32 level
# on the last one: a 3x3 stride-2 conv to 768 channels, twice the last
# stage's as a fourth stage would have, and GroupNorm, as DINO's
# ChannelMapper makes its own extra level. Mask2Former's pixel decoder and
# Semantic FPN then see strides 4 to 32, as with ResNet and Swin; an inner
# neck (`neck=`) takes the four levels where the recipe has one.
cvt13_four_levels = dict(
    type='ExtraLevels', in_channels=[64, 192, 384], extra_channels=[768])

# DINO and Mask2Former train the backbone at 0.1x the lr (custom key
# 'backbone'). mmengine gives a parameter that a custom key matches that
# key's lr_mult and decay_mult *in place of* norm_decay_mult,
# bias_decay_mult and dwconv_decay_mult, so that alone would decay all of
# CvT's norms, biases and depthwise projections. The keys below, one per
# norm, bias and projection, keep them free of weight decay at 0.1x the lr,
# and the decay mults keep the rest of the model's free of it too, as in
# our other configs and as CvT was pretrained; upstream's Swin configs of
# both heads list their backbone norms the same way. The blocks are
# CvT-21's (1/4/16 a stage), which include CvT-13's (1/2/10). The configs
# merge this into their recipe's paramwise_cfg, whose other custom keys
# (Mask2Former's query and level embeddings) stay.
_block_parts_without_decay = ('norm', 'attn.conv_proj', 'attn.proj_q.bias',
                              'attn.proj_kv.bias', 'attn.proj.bias',
                              'ffn.layers.0.0.bias', 'ffn.layers.1.bias')
cvt_backbone_lr_mult_paramwise_cfg = dict(
    custom_keys={
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        # the output norms, norm0 to norm2
        'backbone.norm': dict(lr_mult=0.1, decay_mult=0.0),
        **{
            f'backbone.stages.{stage}.patch_embed.{part}':
            dict(lr_mult=0.1, decay_mult=0.0)
            for stage in range(3)
            for part in ('norm', 'projection.bias')
        },
        **{
            f'backbone.stages.{stage}.blocks.{block}.{part}':
            dict(lr_mult=0.1, decay_mult=0.0)
            for stage, depth in enumerate((1, 4, 16))
            for block in range(depth)
            for part in _block_parts_without_decay
        },
    },
    norm_decay_mult=0.,
    bias_decay_mult=0.,
    dwconv_decay_mult=0.)
