# Mask R-CNN with a CvT-13 backbone on COCO, 1x schedule (12 epochs).
# Inherits MMDetection's own bases and overrides only what CvT changes.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmcvt'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CvT',
        arch='13',
        out_indices=(0, 1, 2),
        drop_path_rate=0.1,
        # the conv projections' BatchNorms see 2 images per GPU here: keep
        # their ImageNet statistics
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='hf://microsoft/cvt-13')),
    neck=dict(
        # CvT has 3 stages, at strides 4/8/16. Two learned stride-2 convs on
        # the last stage (add_extra_convs='on_input') add strides 32 and 64,
        # so the RPN and RoI heads see strides 4 to 64, as with ResNet.
        in_channels=[64, 192, 384],
        num_outs=5,
        add_extra_convs='on_input'))

# AdamW at lr 1e-4 for 16 images a batch; no weight decay on norms, biases or
# depthwise convs, which is how CvT was pretrained.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        lr=1e-4,
        betas=(0.9, 0.999),
        weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0., bias_decay_mult=0., dwconv_decay_mult=0.))
# The lr above is for 8 GPUs x 2 images; --auto-scale-lr scales it to yours.
auto_scale_lr = dict(enable=False, base_batch_size=16)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1),
]
