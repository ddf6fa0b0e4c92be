# UperNet with a CvT-13 backbone on ADE20K, 512x512 crops, 160k iterations.
# Inherits MMSegmentation's own bases and overrides only what CvT changes.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CvT',
        arch='13',
        out_indices=(0, 1, 2),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='hf://microsoft/cvt-13')),
    # CvT's 3 stages, at strides 4/8/16. The heads keep upstream's SyncBN;
    # a single, non-distributed process reverts it to BN by itself.
    decode_head=dict(
        in_channels=[64, 192, 384], in_index=[0, 1, 2], num_classes=150),
    # The auxiliary FCN head sits on stage 2 (stride 16, 384 channels): the
    # stride at which upstream puts it for ResNet (C4) and Swin (stage 3).
    # Stage 1 has seen only 3 of CvT-13's 13 blocks, too early for a
    # semantic loss.
    auxiliary_head=dict(in_channels=384, in_index=2, num_classes=150),
    # slide inference over 512x512 windows, as upstream does for ADE20K
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# AdamW at lr 6e-5 for 16 images a batch (8 GPUs x 2), weight decay 0.01,
# none on norms, biases or depthwise convs, which is how CvT was pretrained
# (CvTOptimWrapperConstructor, mmcvt.engine.optimizers, tells them by module
# type).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='CvTOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))
# a linear warm-up of 1500 iterations, then poly decay to 0
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False),
]

# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_model reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
