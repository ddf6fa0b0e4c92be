# Semantic FPN with a CvT-13 backbone on ADE20K, 512x512 crops, with the
# schedule of the PVT paper (Wang et al., "Pyramid Vision Transformer: A
# Versatile Backbone for Dense Prediction without Convolutions", ICCV 2021),
# which small backbones report: 80k iterations of 16 images (4 GPUs x 4),
# AdamW at lr 1e-4 with weight decay 1e-4, poly decay of power 0.9 to 0, no
# warm-up. These are the numbers of the authors' own configs (github.com/
# whai362/PVT, segmentation/configs/sem_fpn/PVT/, which train 40k
# iterations at lr 2e-4 on 8 GPUs and say so). Inherits MMSegmentation's
# Semantic FPN R-50 config (160k iterations of SGD) for the model and data.
_base_ = [
    'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    './_base_/cvt_four_levels.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(_base_.cvt13_ade20k_backbone, _delete_=True),
    # The FPN takes strides 4 to 32, as from ResNet's and PVT's four
    # stages: CvT's three and the learned stride-32 level of ExtraLevels,
    # which hands all four to the recipe's FPN, unchanged but for its
    # inputs.
    neck=dict(
        _base_.cvt13_four_levels,
        _delete_=True,
        neck=dict(_base_.model.neck, in_channels=[64, 192, 384, 768])))

# PVT's AdamW; no weight decay on norms, biases or depthwise convs, as in
# our other configs and as CvT was pretrained (CvTOptimWrapperConstructor,
# mmcvt.engine.optimizers, tells them by module type)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='CvTOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))
max_iters = 80000
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.,
        power=0.9,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
# validation and checkpoints every 8k iterations, as PVT's configs
train_cfg = dict(max_iters=max_iters, val_interval=8000)
# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_model reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=8000))
