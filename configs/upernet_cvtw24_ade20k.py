# UperNet with CvT-W24, the paper's largest model (ImageNet-22k at
# 384x384), on ADE20K, 512x512 crops, 160k iterations: the recipe of
# upernet_cvt13_ade20k.py with layer-wise lr decay, which large backbones
# take, at the rate chosen below for CvT-W24's 24 blocks.
_base_ = './upernet_cvt13_ade20k.py'

model = dict(
    backbone=dict(
        arch='w24',
        # the drop path of MMSegmentation's Swin UperNet configs, Swin-B's and
        # Swin-L's included; 0.1 and 0.2 are our CvT-13's and CvT-21's
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-w24-384-22k')),
    # CvT-W24's stages: 192, 768 and 1024 channels at strides 4, 8 and 16;
    # the auxiliary head stays on the last
    decode_head=dict(in_channels=[192, 768, 1024]),
    auxiliary_head=dict(in_channels=1024))

optim_wrapper = dict(
    paramwise_cfg=dict(
        # 0.95 per block: what MMSegmentation's BEiT-L UperNet on ADE20K
        # uses for its 24 blocks (mmseg::beit/beit-large_upernet_8xb1-amp-
        # 160k_ade20k-640x640.py), and CvT-W24 has 24 too. The stem then
        # trains at 0.95^25 = 0.28x the heads' lr, where ConvNeXt's UperNet
        # configs (0.9 by stage) give theirs 0.25x
        layer_decay_rate=0.95,
        decay_type='layer_wise'))
