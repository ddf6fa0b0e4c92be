# DINO (4 scales) with a CvT-13 backbone on COCO, 12 epochs. Inherits
# MMDetection's DINO R-50 config and overrides only what CvT changes.
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    './_base_/cvt13_detection.py',
    './_base_/cvt_four_levels.py',
]
custom_imports = dict(
    imports=['mmcvt', 'mmcvt.engine'], allow_failed_imports=False)

model = dict(
    # DINO's 4 scales are strides 8 to 64: ResNet gives 8/16/32 (C3 to C5)
    # and the ChannelMapper adds 64 with a stride-2 conv on C5. CvT gives
    # its stages at strides 8 and 16; ExtraLevels adds a learned stride-32
    # level of 768 channels in place of C5, and the recipe's ChannelMapper,
    # unchanged but for its inputs, adds 64 on it.
    backbone=dict(_base_.cvt13_backbone, _delete_=True, out_indices=(1, 2)),
    # DINO selects its num_queries among the encoder's tokens: an image
    # whose levels hold fewer is an error that says so (see ExtraLevels),
    # naming the smallest square image that holds them, 203x203 (910
    # tokens), as tests/test_dense_prediction_heads.py finds it
    neck=dict(
        _delete_=True,
        type='ExtraLevels',
        in_channels=[192, 384],
        extra_channels=[768],
        neck=dict(_base_.model.neck, in_channels=[192, 384, 768]),
        min_tokens=_base_.model.num_queries,
        min_input_size=203))

# DINO's AdamW, as upstream trains Swin-L with it: lr 1e-4 with the
# backbone at 0.1x, weight decay 1e-4 (the DETR recipes' value, for the
# transformer head as much as the backbone), gradient clipping at 0.1.
# Added, as in our other configs: no weight decay on norms, biases and
# depthwise convs (see _base_/cvt_four_levels.py).
optim_wrapper = _base_.cvt_backbone_tenth_lr

# mmcvt's checkpoint hook: older checkpoints deleted only once the new
# one is whole, so that a kill while saving cannot lose them all, and
# checkpoints that init_detector reads weights-only (mmcvt.engine)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
