# Mask2Former with a CvT-13 backbone for COCO instance segmentation, LSJ at
# 1024x1024, 50 epochs (368,750 iterations of 16 images). Inherits
# MMDetection's Mask2Former R-50 instance config and overrides only what
# CvT changes. The panoptic config it inherits from needs panopticapi to
# evaluate; the instance model neither builds nor trains with it.
_base_ = [
    'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
    './_base_/cvt13_detection.py',
    './_base_/cvt_four_levels.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.cvt13_backbone, _delete_=True),
    # the pixel decoder takes strides 4 to 32: CvT's three stages and the
    # learned stride-32 level of ExtraLevels, in Mask2Former's optional
    # neck slot (upstream leaves it empty)
    neck=_base_.cvt13_four_levels,
    panoptic_head=dict(in_channels=[64, 192, 384, 768]))

# Mask2Former's AdamW, as upstream trains Swin with it: lr 1e-4 with the
# backbone at 0.1x, weight decay 0.05 (ours too), none on norms and on the
# query and level embeddings, gradient clipping at 0.01. Added, as in our
# other configs: none on biases and depthwise convs either, in the backbone
# too (see _base_/cvt_four_levels.py).
optim_wrapper = dict(
    _base_.cvt_backbone_tenth_lr,
    paramwise_cfg=dict(
        _base_.cvt_backbone_tenth_lr.paramwise_cfg,
        custom_keys={
            key: settings
            for key, settings in
            _base_.optim_wrapper.paramwise_cfg.custom_keys.items()
            if key != 'backbone'
        }))

# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_detector reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
