# Mask2Former with a CvT-13 backbone on ADE20K, 512x512 crops, 160k
# iterations. Inherits MMSegmentation's Mask2Former R-50 config and
# overrides only what CvT changes.
_base_ = [
    'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    './_base_/cvt_four_levels.py',
]
# upstream imports mmdet.models for the head's parts
custom_imports = dict(
    imports=['mmdet.models', 'mmcvt', 'mmcvt.engine'],
    allow_failed_imports=False)

model = dict(
    backbone=dict(_base_.cvt13_ade20k_backbone, _delete_=True),
    # the pixel decoder takes strides 4 to 32: CvT's three stages and the
    # learned stride-32 level of ExtraLevels, in the segmentor's neck slot
    # (upstream has no neck)
    neck=_base_.cvt13_four_levels,
    decode_head=dict(in_channels=[64, 192, 384, 768]))

# Mask2Former's AdamW, as upstream trains Swin with it: lr 1e-4 with the
# backbone at 0.1x, weight decay 0.05, none on norms and on the
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
# checkpoints that init_model reads weights-only (mmcvt.engine); upstream's
# interval and best-mIoU checkpoint stay
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
