# What the DINO, Mask2Former and Semantic FPN configs share: CvT for the
# ADE20K ones, the learned fourth level that these heads' recipes expect,
# and the optimizer options that train the backbone at a tenth of the
# heads' lr. The configs take them as `_base_.<name>`, as they take those of
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

# DINO and Mask2Former train the backbone at 0.1x the lr: backbone_lr_mult
# of CvTOptimWrapperConstructor (mmcvt.engine.optimizers), which also keeps
# weight decay off every norm, bias and depthwise conv of the model. It
# replaces the recipes' options for mmengine's constructor (_delete_),
# among them the custom key 'backbone', whose multipliers it would
# otherwise apply on top; the Mask2Former configs add the recipe's other
# keys back.
cvt_backbone_tenth_lr = dict(
    constructor='CvTOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, backbone_lr_mult=0.1))
