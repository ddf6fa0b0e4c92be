# Mask2Former with a CvT-21 backbone for COCO instance segmentation, LSJ
# 50 epochs.
_base_ = './mask2former_cvt13_coco.py'

model = dict(
    backbone=dict(
        arch='21',
        # deeper than CvT-13 (16 blocks in its last stage, not 10)
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-21')))
