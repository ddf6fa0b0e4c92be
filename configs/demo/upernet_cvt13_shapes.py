# UperNet with CvT-13 on the built-in shapes data (semantic masks in the
# ADE20K layout), trained from scratch on the CPU in minutes
# (`make demo-seg`). It inherits the ADE20K config and changes only what the
# small data and the CPU need.
_base_ = '../upernet_cvt13_ade20k.py'

data_root = 'data/shapes_seg/'
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 160, 80), (30, 80, 255)])
image_size = (128, 128)  # what tools/misc/make_shapes_dataset.py draws
# one process on the CPU: plain BN in the heads
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=image_size),
    backbone=dict(
        # no pretrained weights can be downloaded here: train from scratch,
        # and let the projections' BatchNorms learn their statistics
        init_cfg=None,
        drop_path_rate=0.),
    # narrower heads than ADE20K's 512 channels, for the CPU
    decode_head=dict(channels=128, num_classes=4, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=64, num_classes=4, norm_cfg=norm_cfg),
    # the images are smaller than a 512x512 window: infer on the whole image
    test_cfg=dict(_delete_=True, mode='whole'))

dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.png',
    seg_map_suffix='.png',
    reduce_zero_label=False)  # 0 is the background class, not "ignore"
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# two cores: loading 128x128 PNGs in the main process is cheaper than
# worker processes
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        **dataset,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        **dataset,
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# about 10 minutes on 2 CPU cores (README)
max_iters = 700
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# from scratch, on simple data: a higher lr than ADE20K's fine-tuning
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=50,
        end=max_iters,
        by_epoch=False),
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
