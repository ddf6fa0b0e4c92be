# Mask R-CNN with CvT-13 on the built-in shapes data, trained from scratch on
# the CPU in minutes (`make demo`). It inherits the COCO config and changes
# only what the small data and the CPU need.
_base_ = '../maskrcnn_cvt13_coco.py'

data_root = 'data/shapes/'
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 80), (30, 80, 255)])
image_size = (128, 128)  # what tools/misc/make_shapes_dataset.py draws

model = dict(
    backbone=dict(
        # no pretrained weights can be downloaded here: train from scratch,
        # and let the projections' BatchNorms learn their statistics
        init_cfg=None,
        norm_eval=False,
        drop_path_rate=0.),
    # Narrower heads than COCO's, which spend most of a CPU step in the mask
    # head's 256-channel convs: 128 channels from the FPN on, 2 mask convs,
    # and 64 sampled RoIs per image, for objects that are few and simple.
    neck=dict(out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=512, num_classes=3),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(
            num_convs=2, in_channels=128, conv_out_channels=128,
            num_classes=3)),
    train_cfg=dict(rcnn=dict(sampler=dict(num=64))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
dataset = dict(data_root=data_root, metainfo=metainfo)
# two cores: loading 128x128 PNGs in the main process is cheaper than
# worker processes
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        **dataset,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
# the same loader settings, on the validation split
val_dataloader = dict(
    train_dataloader,
    dataset=dict(
        **dataset,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# 7 epochs of 50 iterations: about 10 minutes on 2 CPU cores (README)
max_epochs = 7
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# 4x the COCO lr for half its batch: from scratch, on simple data
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[6],
        gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
