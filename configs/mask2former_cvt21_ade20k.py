# Mask2Former with a CvT-21 backbone on ADE20K, 512x512 crops, 160k
# iterations.
_base_ = './mask2former_cvt13_ade20k.py'

model = dict(
    backbone=dict(
        arch='21',
        # deeper than CvT-13 (16 blocks in its last stage, not 10)
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-21')))
