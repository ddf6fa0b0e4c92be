# Cascade Mask R-CNN with CvT-W24, the paper's largest model (ImageNet-22k
# at 384x384), on COCO, multi-scale 3x: the recipe of
# cascade-maskrcnn_cvt13_ms-3x_coco.py (the Swin paper's, which MMDetection
# ships for ConvNeXt) with its ConvNeXt config's layer-wise lr decay, which
# large backbones take, at the rate chosen below for CvT-W24's 24 blocks.
_base_ = './cascade-maskrcnn_cvt13_ms-3x_coco.py'

model = dict(
    backbone=dict(
        arch='w24',
        # Swin-B's drop path on this recipe in the Swin paper's configs; 0.1
        # and 0.2 are our CvT-13's and CvT-21's
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-w24-384-22k')),
    # CvT-W24's stages: 192, 768 and 1024 channels at strides 4, 8 and 16
    neck=dict(in_channels=[192, 768, 1024]))

optim_wrapper = dict(
    # the lr of the ConvNeXt config this recipe comes from, which trains
    # with layer decay too: the decay lowers every block's lr below it
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(
        # 0.9 per block: the stem then trains at 0.9^25 = 0.07x the heads'
        # lr, the top block at 0.9x. MMDetection's ConvNeXt Cascade Mask
        # R-CNN 3x configs decay their stems to 0.08x (ConvNeXt-T, whose
        # config the base inherits: 0.7 over 7 depths) and 0.01x
        # (ConvNeXt-S: 0.7 over 13); a 22k-pretrained backbone keeps to
        # the milder end
        layer_decay_rate=0.9,
        decay_type='layer_wise'))
