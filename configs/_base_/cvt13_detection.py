# What every CvT-13 COCO config here shares: the backbone, the FPN of the
# two-stage detectors and the optimizer. The configs take them as
# `_base_.cvt13_backbone` and so on, because mmengine refuses two bases that
# set the same key, and each config's upstream bases set `model` and
# `optim_wrapper` themselves. The names stay in the final configs, unused,
# as upstream's `checkpoint_file` and `pretrained` do.
cvt13_backbone = dict(
    type='CvT',
    arch='13',
    out_indices=(0, 1, 2),
    drop_path_rate=0.1,
    # the conv projections' BatchNorms see 2 images per GPU here: keep
    # their ImageNet statistics
    norm_eval=True,
    init_cfg=dict(type='Pretrained', checkpoint='hf://microsoft/cvt-13'))

# CvT has 3 stages, at strides 4/8/16. Two learned stride-2 convs on the
# last stage (add_extra_convs='on_input') add strides 32 and 64, so the RPN
# and RoI heads see strides 4 to 64, as with ResNet.
cvt13_fpn = dict(
    in_channels=[64, 192, 384], num_outs=5, add_extra_convs='on_input')

# AdamW at lr 1e-4 for 16 images a batch (8 GPUs x 2; --auto-scale-lr
# scales it to yours, from upstream's auto_scale_lr.base_batch_size=16); no
# weight decay on norms, biases or depthwise convs, which is how CvT was
# pretrained: CvTOptimWrapperConstructor (mmcvt.engine.optimizers) tells
# them by module type, in the whole model.
adamw_optim_wrapper = dict(
    type='OptimWrapper',
    constructor='CvTOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
