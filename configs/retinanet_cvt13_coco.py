# RetinaNet with a CvT-13 backbone on COCO, 1x schedule (12 epochs), as
# MMDetection's Swin and PVT RetinaNet configs: upstream's bases, its
# 500-iteration warm-up, and CvT in place of ResNet.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/cvt13_detection.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    # RetinaNet's levels start at stride 8 (P3 to P7, anchors at strides 8
    # to 128), so CvT returns only its stages at strides 8 and 16: the
    # output norm of a stage the FPN skipped would get no gradient, which
    # DDP refuses. mmdet's Swin RetinaNet drops its stride-4 stage likewise.
    backbone=dict(_base_.cvt13_backbone, _delete_=True, out_indices=(1, 2)),
    # P3 and P4 from the two stages; P5 to P7 from three stride-2 convs
    # that start on the stride-16 stage (upstream's add_extra_convs=
    # 'on_input'), where ResNet and Swin have a stride-32 stage for P5.
    neck=dict(in_channels=[192, 384], start_level=0, num_outs=5))
# AdamW as in our two-stage configs; mmdet's PVT RetinaNet also trains with
# AdamW at lr 1e-4.
optim_wrapper = dict(_base_.adamw_optim_wrapper, _delete_=True)

# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_detector reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
