"""The demos' Mask R-CNN and UperNet with a TINY CvT and narrow heads, as
config files that inherit the repository's demo configs, and checkpoints
of them as the Runner saves them (with the data set's classes and
palette): what the tests of the tools that run a model on images (infer,
export, resolution sweep) take, at a fraction of a second an image. The
COCO RetinaNet, DINO and Cascade Mask R-CNN configs have tiny versions
too, with the shapes' three classes."""
import textwrap

from .utils import REPO, TINY

DEMO_CONFIGS = {
    'maskrcnn': REPO / 'configs/demo/maskrcnn_cvt13_shapes.py',
    'upernet': REPO / 'configs/demo/upernet_cvt13_shapes.py',
    'retinanet': REPO / 'configs/retinanet_cvt13_coco.py',
    'dino': REPO / 'configs/dino-4scale_cvt13_coco.py',
    'cascade': REPO / 'configs/cascade-maskrcnn_cvt13_ms-3x_coco.py',
    'mask2former': REPO / 'configs/mask2former_cvt13_ade20k.py',
}
# the COCO configs' models on the shapes' classes
SHAPES_METAINFO = ("metainfo = dict(classes=('circle', 'square', 'triangle'),"
                   " palette=[(220, 20, 60), (0, 160, 80), (30, 80, 255)])\n")
CHANNELS = TINY['embed_dims']
# what each model changes of its demo config besides the backbone's arch
HEADS = {
    'maskrcnn':
    f'neck=dict(in_channels={CHANNELS}, out_channels=32),\n'
    'rpn_head=dict(in_channels=32, feat_channels=32),\n'
    'roi_head=dict(\n'
    '    bbox_roi_extractor=dict(out_channels=32),\n'
    '    bbox_head=dict(in_channels=32, fc_out_channels=64),\n'
    '    mask_roi_extractor=dict(out_channels=32),\n'
    '    mask_head=dict(in_channels=32, conv_out_channels=32)),',
    'upernet':
    f'decode_head=dict(in_channels={CHANNELS}, channels=16),\n'
    f'auxiliary_head=dict(in_channels={CHANNELS[-1]}, channels=8),',
    # scores spread out (std 0.1, a prior of 0.05), where the recipe's
    # initial weights score every anchor about 0.01, below the threshold,
    # and ties rank by chance
    'retinanet':
    f'neck=dict(in_channels={CHANNELS[1:]}, out_channels=32),\n'
    'bbox_head=dict(num_classes=3, in_channels=32, feat_channels=32,\n'
    '    init_cfg=dict(type=\'Normal\', layer=\'Conv2d\', std=0.1,\n'
    '        override=dict(type=\'Normal\', name=\'retina_cls\', std=0.1,\n'
    '                      bias_prob=0.05))),',
    # 50 queries of 900, so that images of 100 pixels have enough tokens;
    # one encoder and two decoder layers of 6
    'dino':
    f'neck=dict(in_channels={CHANNELS[1:]}, extra_channels=[96],\n'
    '    min_tokens=50, min_input_size=None,\n'
    f'    neck=dict(in_channels={CHANNELS[1:] + [96]})),\n'
    'bbox_head=dict(num_classes=3),\n'
    'num_queries=50,\n'
    'encoder=dict(num_layers=1,\n'
    '    layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))),\n'
    'decoder=dict(num_layers=2,\n'
    '    layer_cfg=dict(ffn_cfg=dict(feedforward_channels=64))),\n'
    'test_cfg=dict(max_per_img=100),',
    # 2 pixel decoder layers of 6, 3 transformer decoder layers of 9
    'mask2former':
    f'neck=dict(in_channels={CHANNELS}, extra_channels=[96]),\n'
    f'decode_head=dict(in_channels={CHANNELS + [96]}, num_classes=4,\n'
    '    pixel_decoder=dict(encoder=dict(num_layers=2)),\n'
    '    transformer_decoder=dict(num_layers=3)),',
    'cascade':
    f'neck=dict(in_channels={CHANNELS}, out_channels=32),\n'
    'rpn_head=dict(in_channels=32, feat_channels=32),\n'
    'roi_head=dict(\n'
    '    bbox_roi_extractor=dict(out_channels=32),\n'
    '    bbox_head=[dict(head, in_channels=32, conv_out_channels=32,\n'
    '                    fc_out_channels=64, num_classes=3)\n'
    '               for head in _base_.model.roi_head.bbox_head],\n'
    '    mask_roi_extractor=dict(out_channels=32),\n'
    '    mask_head=dict(in_channels=32, conv_out_channels=32,\n'
    '                   num_classes=3)),',
}


def write_tiny_config(kind, directory, data_root=None, base=None, extra=''):
    """Writes ``tiny_<kind>.py`` into ``directory``; ``kind`` is one of
    :data:`DEMO_CONFIGS`. ``data_root``: where its test data are; ``base``: the
    demo config it inherits, by default the checkout's; ``extra``: lines
    to add."""
    data = ''
    if data_root is not None:
        data = (f'test_dataloader = dict(dataset=dict(data_root='
                f'{str(data_root) + "/"!r}))\n')
        if kind == 'maskrcnn':
            data += (f'test_evaluator = dict(ann_file='
                     f'{str(data_root) + "/annotations/instances_val.json"!r})'
                     '\n')
    if kind not in ('maskrcnn', 'upernet', 'mask2former'):
        data += SHAPES_METAINFO
    path = directory / f'tiny_{kind}.py'
    # no pretrained weights to download
    path.write_text(
        f'_base_ = {str(base or DEMO_CONFIGS[kind])!r}\n'
        'model = dict(\n'
        f'    backbone=dict(arch=dict(_delete_=True, **{TINY!r}),\n'
        '                  init_cfg=None),\n' +
        textwrap.indent(HEADS[kind], '    ') + ')\n' + data + extra)
    return path


def save_checkpoint(config, path, seed=0):
    """Saves the freshly initialised model of ``config`` as a Runner would
    save it: weights under ``state_dict``, the classes and palette under
    ``meta.dataset_meta``."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
        model.init_weights()
    torch.save(
        {
            'state_dict': model.state_dict(),
            'meta': {
                'dataset_meta': dict(cfg.metainfo)
            }
        }, path)
    return path
