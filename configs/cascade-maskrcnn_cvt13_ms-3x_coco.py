# Cascade Mask R-CNN with CvT-13 on COCO, multi-scale 3x (36 epochs): the
# Swin paper's Cascade Mask R-CNN 3x recipe, which MMDetection 3.3.0 ships
# for ConvNeXt, not for Swin. Its ConvNeXt config brings 4conv1fc box heads
# with GIoU loss, the multi-scale resize-and-crop of our Mask R-CNN ms-3x
# config, and lr steps at epochs 27 and 33; CvT-13 and AdamW replace the
# rest.
_base_ = [
    'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',  # noqa: E501
    './_base_/cvt13_detection.py',
]
# in place of the ConvNeXt config's import of mmpretrain
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.cvt13_backbone, _delete_=True), neck=_base_.cvt13_fpn)
# Our AdamW at lr 1e-4, the Swin recipe's, in place of ConvNeXt's layer-wise
# lr decay at 2e-4; in fp32 like our other configs (tools/train.py --amp
# for mixed precision), where the ConvNeXt config always runs AMP.
optim_wrapper = dict(_base_.adamw_optim_wrapper, _delete_=True)

# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_detector reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
