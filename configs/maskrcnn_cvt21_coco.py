# Mask R-CNN with a CvT-21 backbone on COCO, 1x schedule.
_base_ = './maskrcnn_cvt13_coco.py'

model = dict(
    backbone=dict(
        arch='21',
        # deeper than CvT-13 (16 blocks in its last stage, not 10)
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='hf://microsoft/cvt-21')))
