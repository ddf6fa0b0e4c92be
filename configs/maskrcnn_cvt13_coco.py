# Mask R-CNN with a CvT-13 backbone on COCO, 1x schedule (12 epochs).
# Inherits MMDetection's own bases and overrides only what CvT changes; the
# backbone, the FPN and AdamW are in _base_/cvt13_detection.py.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/cvt13_detection.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.cvt13_backbone, _delete_=True), neck=_base_.cvt13_fpn)
optim_wrapper = dict(_base_.adamw_optim_wrapper, _delete_=True)
# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_detector reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))

# the 1000-iteration warmup of MMDetection's Swin configs (its 1x schedule
# has 500), then that schedule's steps
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    _base_.param_scheduler[1],
]
