# Mask R-CNN with CvT-13 on COCO, 1x, with the backbone compiled: for GPUs,
# where an eager step of CvT is bound by launching its many small ops
# (docs/en/speed_and_memory.md, "Compiling the backbone"). Only the backbone
# is compiled; mmengine's compile=True would compile the whole detector and
# retrace it for every number of proposals.
_base_ = './maskrcnn_cvt13_coco.py'

model = dict(
    # Pad each batch to a multiple of 128 instead of 32: after COCO's
    # 1333x800 resize each side then takes a quarter as many values, so that
    # a compiler that specialises on sizes (torch 2.13 retraces a training
    # graph for each new one) soon has them all. It costs up to 127 padded
    # pixels a side.
    data_preprocessor=dict(pad_size_divisor=128),
    # torch.compile(dynamic=True); a dict instead gives torch.compile options
    backbone=dict(compile=True))
