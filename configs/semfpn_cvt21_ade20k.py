# Semantic FPN with a CvT-21 backbone on ADE20K, PVT's 80k schedule.
_base_ = './semfpn_cvt13_ade20k.py'

model = dict(
    backbone=dict(
        arch='21',
        # deeper than CvT-13 (16 blocks in its last stage, not 10)
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-21')))
