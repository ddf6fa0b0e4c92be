"""DINO, Mask2Former and Semantic FPN with CvT: the ExtraLevels neck that
gives their heads four levels from CvT's three stages, the shipped configs
on the built-in shapes data, and that each model learns."""
import copy
import importlib.abc
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, MODELS, DefaultScope

from mmcvt.analysis import count_flops
from mmcvt.models import CvT, ExtraLevels
from .utils import (REPO, TINY, fake_test_run, is_weight_decay_free,
                    load_repo_config, load_tool, write_config)

gather_results = load_tool('analysis_tools/gather_results.py')
get_flops = load_tool('analysis_tools/get_flops.py')
train_step_benchmark = load_tool('analysis_tools/benchmark_train_step.py')

DINO = 'configs/dino-4scale_cvt13_coco.py'
MASK2FORMER_COCO = 'configs/mask2former_cvt13_coco.py'
MASK2FORMER_ADE = 'configs/mask2former_cvt13_ade20k.py'
SEMFPN = 'configs/semfpn_cvt13_ade20k.py'
CVT21_TWINS = {
    'configs/mask2former_cvt21_coco.py': MASK2FORMER_COCO,
    'configs/mask2former_cvt21_ade20k.py': MASK2FORMER_ADE,
    'configs/semfpn_cvt21_ade20k.py': SEMFPN,
}
CONFIGS = [DINO, MASK2FORMER_COCO, MASK2FORMER_ADE, SEMFPN, *CVT21_TWINS]
# The configs built and stepped, each as shipped: a step of one of these
# models costs 5 to 20 s of CPU time here.
STEPPED = CONFIGS
# what each head takes: (stride, channels) of every level
LEVELS = {
    DINO: [(8, 256), (16, 256), (32, 256), (64, 256)],
    MASK2FORMER_COCO: [(4, 64), (8, 192), (16, 384), (32, 768)],
    MASK2FORMER_ADE: [(4, 64), (8, 192), (16, 384), (32, 768)],
    SEMFPN: [(4, 256), (8, 256), (16, 256), (32, 256)],
}
# the recipes' backbone lr, of the head's
BACKBONE_LR_MULT = {
    DINO: 0.1,
    MASK2FORMER_COCO: 0.1,
    MASK2FORMER_ADE: 0.1,
    SEMFPN: 1.
}


def cvt13_config_of(path):
    """The CvT-13 config of a twin; a CvT-13 config itself."""
    return CVT21_TWINS.get(path, path)


def shapes_batch(scope, shapes, shapes_seg, side=128):
    """The first 2 training images of the shapes data, resized to side x side,
    without random transforms: the same batch at every step."""
    if scope == 'mmdet':
        demo, root = 'configs/demo/maskrcnn_cvt13_shapes.py', shapes
    else:
        demo, root = 'configs/demo/upernet_cvt13_shapes.py', shapes_seg
    dataset = load_repo_config(demo).train_dataloader.dataset
    pipeline = [
        dict(t, scale=(side, side)) if t.type == 'Resize' else t
        for t in dataset.pipeline
        if t.type not in ('RandomFlip', 'PhotoMetricDistortion')
    ]
    dataset = DATASETS.build(
        dict(dataset, data_root=f'{root}/', pipeline=pipeline))
    return pseudo_collate([dataset[i] for i in range(2)])


def pad_to(cfg, side):
    """Makes the config's model pad its batches to side x side: Mask2Former
    pads COCO batches to its 1024x1024 LSJ crop and ADE20K ones to the
    512x512 crop, which would make a step of a small batch cost as much as
    one of the data set."""
    preprocessor = cfg.model.data_preprocessor
    if cfg.default_scope == 'mmseg':
        preprocessor.size = (side, side)
    elif preprocessor.get('batch_augments'):
        preprocessor.batch_augments[0].size = (side, side)


def level_size(side, stride):
    """The side of the level at ``stride`` of an image side: CvT's stem at
    stride 4 (a 7x7 conv, padding 2), then a 3x3 conv of stride 2 and
    padding 1 per level, which rounds up, as a stage of CvT or an extra
    level does."""
    side = (side - 3) // 4 + 1
    while stride > 4:
        side, stride = -(-side // 2), stride // 2
    return side


# ---- ExtraLevels ------------------------------------------------------------
def tiny_cvt():
    torch.manual_seed(0)
    return CvT(TINY, drop_path_rate=0.)  # 16/32/48 channels


def test_extra_levels_appends_one_stride_2_level_per_extra_channel():
    neck = ExtraLevels(in_channels=[16, 32, 48], extra_channels=[96, 64])
    maps = [
        torch.rand(2, c, 32 // 2**i, 48 // 2**i)
        for i, c in enumerate([16, 32, 48])
    ]
    levels = neck(maps)
    assert [tuple(level.shape) for level in levels] == [(2, 16, 32, 48),
                                                        (2, 32, 16, 24),
                                                        (2, 48, 8, 12),
                                                        (2, 96, 4, 6),
                                                        (2, 64, 2, 3)]
    assert all(level is x for level, x in zip(levels, maps))


def test_extra_levels_of_an_odd_image_size_halve_rounding_up():
    backbone, neck = tiny_cvt(), ExtraLevels([16, 32, 48], [96])
    with torch.no_grad():
        levels = neck(backbone(torch.rand(1, 3, 97, 131)))
    # the extra level at half the last stage's size, rounding up: 6x9 -> 3x5
    assert [tuple(level.shape[1:]) for level in levels] == [
        (channels, level_size(97, stride), level_size(131, stride))
        for channels, stride in zip([16, 32, 48, 96], [4, 8, 16, 32])
    ]


def test_the_extra_level_trains_the_backbone_through_its_conv():
    backbone, neck = tiny_cvt(), ExtraLevels([16, 32, 48], [96])
    *_, extra = neck(backbone(torch.rand(2, 3, 64, 64)))
    extra.square().mean().backward()  # the extra level's loss alone
    for module in (neck.extra_convs[0], backbone.stages[2], backbone.norm2):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, \
                name


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_the_inner_neck_is_the_configs_scopes_and_takes_every_level(scope):
    with DefaultScope.overwrite_default_scope(scope):
        neck = MODELS.build(
            dict(
                type='ExtraLevels',
                in_channels=[16, 32, 48],
                extra_channels=[96],
                neck=dict(type='FPN', out_channels=32, num_outs=4)))
    assert type(neck.neck).__module__.startswith(f'{scope}.')
    assert neck.neck.in_channels == [16, 32, 48, 96]  # set for it
    maps = [
        torch.rand(1, c, 16 // 2**i, 16 // 2**i)
        for i, c in enumerate([16, 32, 48])
    ]
    assert [tuple(level.shape) for level in neck(maps)] == [(1, 32, 16, 16),
                                                            (1, 32, 8, 8),
                                                            (1, 32, 4, 4),
                                                            (1, 32, 2, 2)]


def test_an_inner_neck_taking_other_channels_is_an_error():
    with pytest.raises(
            ValueError,
            match=r'in_channels=\[16, 32, 48\], but '
            r'ExtraLevels gives it \[16, 32, 48, 96\]'):
        ExtraLevels([16, 32, 48], [96],
                    neck=dict(
                        type='mmdet.FPN',
                        in_channels=[16, 32, 48],
                        out_channels=32,
                        num_outs=4))


def test_maps_of_other_channels_are_an_error_naming_in_channels():
    neck = ExtraLevels([64, 192, 384], [768])
    maps = [torch.rand(1, c, 4, 4) for c in [16, 32, 48]]
    with pytest.raises(
            ValueError,
            match=r'built for maps of \[64, 192, '
            r'384\] channels, got 3 maps of \[16, 32, 48\]'):
        neck(maps)


@pytest.mark.parametrize('channels', [[], [96, 0], 96, [96.]])
def test_extra_channels_must_be_a_list_of_positive_ints(channels):
    with pytest.raises(ValueError, match='extra_channels must be'):
        ExtraLevels([16, 32, 48], channels)


def test_levels_with_fewer_tokens_than_min_tokens_are_an_error_naming_them():
    neck = ExtraLevels([16], [32], min_tokens=21, min_input_size=70)
    with pytest.raises(
            ValueError,
            match=r'the 2 levels hold 20 tokens for this input \(4x4 \+ '
            r'2x2\), fewer than the 21 that the head selects among them.* '
            r'at least 70x70'):
        neck([torch.rand(1, 16, 4, 4)])
    neck.min_tokens = 20
    assert len(neck([torch.rand(1, 16, 4, 4)])) == 2


def test_dino_config_names_the_least_input_size_that_holds_its_queries():
    # its backbone and neck as the config builds them: at the size the
    # config names as the least, and one pixel less
    cfg = load_repo_config(DINO)
    cfg.model.backbone.init_cfg = None
    backbone, neck = (
        MODELS.build(cfg.model[part]).eval() for part in ('backbone', 'neck'))
    assert neck.min_tokens == cfg.model.num_queries
    side = neck.min_input_size
    with torch.no_grad():
        neck(backbone(torch.rand(1, 3, side, side)))
        with pytest.raises(
                ValueError,
                match=f'fewer than the {cfg.model.num_queries} .* at least '
                f'{side}x{side}'):
            neck(backbone(torch.rand(1, 3, side - 1, side - 1)))


# ---- the shipped configs ----------------------------------------------------
class RecordImports(importlib.abc.MetaPathFinder):
    """Records the imports of a package that are attempted while it is on
    sys.meta_path (a module already imported is not looked for again)."""

    def __init__(self, package):
        self.package, self.attempts = package, []

    def find_spec(self, fullname, path, target=None):
        if fullname.partition('.')[0] == self.package:
            self.attempts.append(fullname)
        return None


@pytest.fixture(scope='module', params=STEPPED)
def shipped(request):
    """A config's model as shipped, with random weights, and its optimizer;
    and the imports of panopticapi that building them attempted."""
    path = request.param
    cfg = load_repo_config(path)
    cfg.model.backbone.init_cfg = None  # no network for hf:// here
    pad_to(cfg, 224 if path == DINO else 128)
    # 1024 mask points a query, not 12544: the masks of 128x128 images are
    # 32x32 at stride 4, and 12544 points sampled each pixel 12 times over,
    # at most of a Mask2Former step's cost on the CPU
    train_cfg = (
        cfg.model.decode_head.train_cfg if cvt13_config_of(path)
        == MASK2FORMER_ADE else cfg.model.get('train_cfg', {}))
    if 'num_points' in train_cfg:
        train_cfg.num_points = 1024
    imports = RecordImports('panopticapi')
    sys.meta_path.insert(0, imports)
    try:
        # one process: SyncBN reverts to BN, as the Runner does it
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
        model.init_weights()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    finally:
        sys.meta_path.remove(imports)
    return path, cfg, model, optim_wrapper, imports


@pytest.mark.slow
def test_a_config_gives_its_head_the_levels_of_its_recipe(shipped):
    path, cfg, model, *_ = shipped
    # DINO's levels must hold its 900 queries (see ExtraLevels)
    height, width = (211, 237) if cvt13_config_of(path) == DINO else (67, 93)
    model.eval()
    with torch.no_grad():
        levels = model.extract_feat(torch.rand(1, 3, height, width))
    model.train()
    assert [tuple(level.shape[1:]) for level in levels] == [
        (channels, level_size(height, stride), level_size(width, stride))
        for stride, channels in LEVELS[cvt13_config_of(path)]
    ]


@pytest.mark.parametrize('path', CONFIGS)
def test_the_levels_are_those_the_heads_are_built_for(path):
    cfg = load_repo_config(path)
    strides, channels = zip(*LEVELS[cvt13_config_of(path)])
    head = (
        cfg.model.get('panoptic_head') or cfg.model.get('decode_head')
        or cfg.model.encoder.layer_cfg.self_attn_cfg)
    if 'num_levels' in head:  # DINO's deformable attention
        assert head.num_levels == len(strides)
    elif 'feature_strides' in head:  # Semantic FPN
        assert list(head.feature_strides) == list(strides)
    else:  # Mask2Former
        assert list(head.strides) == list(strides)
        assert list(head.in_channels) == list(channels)


@pytest.mark.parametrize('path', CONFIGS)
def test_the_backbone_trains_at_the_recipes_lr_without_decay_on_norms(path):
    cfg = load_repo_config(path)
    cfg.model.backbone.init_cfg = None
    # the parameters under the names they have in the detector or segmentor
    model = torch.nn.Module()
    model.backbone = MODELS.build(cfg.model.backbone)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    base_lr = optimizer.defaults['lr']
    base_decay = optimizer.defaults['weight_decay']
    lr_mult = BACKBONE_LR_MULT[cvt13_config_of(path)]
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    for module_name, module in model.backbone.named_modules():
        for name, param in module.named_parameters(recurse=False):
            group = group_of[id(param)]
            expected_decay = (0. if is_weight_decay_free(module, name) else
                              base_decay)
            assert (group['lr'], group['weight_decay']) == pytest.approx(
                (base_lr * lr_mult, expected_decay)), f'{module_name}.{name}'


@pytest.mark.slow
def test_the_backbones_lr_keys_select_no_other_parameter(shipped):
    _, _, model, optim_wrapper, _ = shipped
    optimizer = optim_wrapper.optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    backbone = {id(p) for p in model.backbone.parameters()}
    assert all(group_of[id(p)]['lr'] == optimizer.defaults['lr']
               for p in model.parameters() if id(p) not in backbone)


@pytest.mark.slow
def test_a_config_takes_a_finite_training_step_that_trains_the_backbone(
        shipped, shapes, shapes_seg):
    path, cfg, model, optim_wrapper, _ = shipped
    # DINO's encoder needs at least as many tokens as its 900 queries: at
    # 224x224 (strides 8 to 64) it has 1045, at 128x128 only 340
    batch = shapes_batch(cfg.default_scope, shapes, shapes_seg,
                         224 if path == DINO else 128)
    # the output norm of the last stage, on which the extra level is
    # learned; trained without weight decay, it changes by its gradient
    last_norm = model.backbone.norm2.weight.detach().clone()
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(model.backbone.norm2.weight, last_norm)


@pytest.mark.slow
@pytest.mark.parametrize(
    'shipped', [MASK2FORMER_COCO, 'configs/mask2former_cvt21_coco.py'],
    indirect=True)
def test_mask2former_coco_builds_without_panopticapi_and_tests_instances(
        shipped):
    _, cfg, *_, imports = shipped
    assert imports.attempts == []
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == 'CocoMetric'
        assert evaluator.metric == ['bbox', 'segm']


@pytest.mark.slow
def test_the_train_step_benchmark_draws_labels_of_the_heads_classes(shipped):
    _, cfg, model, *_ = shipped
    assert train_step_benchmark.num_classes_of(model) == (
        80 if cfg.default_scope == 'mmdet' else 150)


@pytest.mark.parametrize('twin', list(CVT21_TWINS))
def test_a_cvt21_twin_differs_from_its_cvt13_config_only_in_the_backbone(twin):
    cvt21, cvt13 = load_repo_config(twin), load_repo_config(CVT21_TWINS[twin])
    assert (cvt21.model.backbone.arch, cvt21.model.backbone.drop_path_rate,
            cvt21.model.backbone.init_cfg.checkpoint) == (
                '21', 0.2, 'hf://microsoft/cvt-21')
    assert (cvt13.model.backbone.arch, cvt13.model.backbone.drop_path_rate,
            cvt13.model.backbone.init_cfg.checkpoint) == (
                '13', 0.1, 'hf://microsoft/cvt-13')
    cvt21.model.pop('backbone'), cvt13.model.pop('backbone')
    assert cvt21.to_dict() == cvt13.to_dict()


def test_semantic_fpn_trains_with_the_pvt_schedule():
    cfg = load_repo_config(SEMFPN)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr,
            optimizer.weight_decay) == ('AdamW', 1e-4, 1e-4)
    poly, = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ('PolyLR', 0.9,
                                                               0., 80000)
    assert cfg.train_cfg.max_iters == 80000
    assert cfg.train_dataloader.batch_size * 4 == 16  # 4 GPUs (4xb4)


def test_the_heads_keep_their_recipes_clipping_and_embedding_decay():
    dino, mask2former = (
        load_repo_config(p).optim_wrapper for p in (DINO, MASK2FORMER_ADE))
    assert dino.clip_grad.max_norm == 0.1
    assert dino.optimizer.weight_decay == 1e-4
    assert mask2former.clip_grad.max_norm == 0.01
    assert mask2former.paramwise_cfg.custom_keys['query_embed'] == dict(
        lr_mult=1.0, decay_mult=0.0)


# ---- each one learns --------------------------------------------------------
# Each model, with the TINY CvT (16/32/48 channels, an extra level of 96) in
# place of CvT-13, trains a few steps with its config's optimizer on one
# fixed batch of 2 shapes images. Its loss at the initial weights varies
# between draws by its random parts alone (DINO's denoising queries,
# Mask2Former's sampled mask points, Semantic FPN's dropout): here by 1% or
# less of its value, Semantic FPN's by up to 6%. The bound: after training
# the loss is below 80% of the mean of 3 draws at the start, and has fallen
# by more than 10 times their spread, which no draw of the untrained
# model's loss comes near; the same steps at lr 0, where the weights do not
# move, fail it. The CvT-21 twins share their CvT-13 config's head.
def tiny_dino(model):
    model.backbone.arch = TINY
    model.neck.neck.in_channels = [32, 48, 96]
    model.bbox_head.num_classes = 3
    # 100 queries of 900: the 128x128 images give the encoder 340 tokens to
    # select queries from; and, for the CPU, 2 encoder and 2 decoder layers
    # of 6 (a test of learning, not of the recipe's depth)
    model.num_queries = 100
    model.neck.update(
        in_channels=[32, 48],
        extra_channels=[96],
        min_tokens=100,
        min_input_size=None)
    model.encoder.num_layers = model.decoder.num_layers = 2


def tiny_mask2former(head, train_cfg, num_classes):
    head.in_channels = [16, 32, 48, 96]
    head.loss_cls.class_weight = [1.0] * num_classes + [0.1]
    # for the CPU: 2 pixel decoder layers of 6, 3 transformer decoder layers
    # of 9 (one round over the 3 levels it attends to), and 1024 mask
    # points of 12544 (see the `shipped` fixture)
    head.pixel_decoder.encoder.num_layers = 2
    head.transformer_decoder.num_layers = 3
    train_cfg.num_points = 1024


def tiny_mask2former_coco(model):
    tiny_mask2former(model.panoptic_head, model.train_cfg, 3)
    model.panoptic_head.num_things_classes = 3
    model.panoptic_fusion_head.num_things_classes = 3


def tiny_mask2former_ade(model):
    tiny_mask2former(model.decode_head, model.decode_head.train_cfg, 4)
    model.decode_head.num_classes = 4


def tiny_semfpn(model):
    model.decode_head.num_classes = 4


LEARNERS = {
    DINO: (tiny_dino, 6),
    MASK2FORMER_COCO: (tiny_mask2former_coco, 4),
    MASK2FORMER_ADE: (tiny_mask2former_ade, 4),
    SEMFPN: (tiny_semfpn, 6),
}


def loss_of(model, batch):
    """The model's total training loss on the batch, without a step."""
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    return loss.item()


@pytest.mark.slow
@pytest.mark.parametrize('path', list(LEARNERS))
def test_the_model_learns_a_fixed_batch(path, shapes, shapes_seg):
    make_tiny, steps = LEARNERS[path]
    cfg = load_repo_config(path)
    cfg.model.backbone.update(arch=TINY, init_cfg=None, drop_path_rate=0.)
    if path != DINO:
        cfg.model.neck.update(in_channels=[16, 32, 48], extra_channels=[96])
        if 'neck' in cfg.model.neck:
            cfg.model.neck.neck.in_channels = [16, 32, 48, 96]
    make_tiny(cfg.model)
    pad_to(cfg, 128)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = shapes_batch(cfg.default_scope, shapes, shapes_seg)

    start = [loss_of(model, batch) for _ in range(3)]
    for _ in range(steps):
        model.train_step(copy.deepcopy(batch), optim_wrapper)
    trained = loss_of(model, batch)
    initial, spread = sum(start) / 3, max(start) - min(start)
    assert trained < 0.8 * initial, (start, trained)
    assert initial - trained > 10 * spread, (start, trained)


# ---- gather_results reads their metrics -------------------------------------
# What tools/test.py reports for each, in work dirs laid out as the Runner
# lays them out: the dumped config, and a test run's directory with its
# config and metrics (values made up; the layout is the Runner's).
REPORTED = {
    DINO: {
        'coco/bbox_mAP': 0.491,
        'coco/bbox_mAP_50': 0.668
    },
    MASK2FORMER_COCO: {
        'coco/bbox_mAP': 0.457,
        'coco/segm_mAP': 0.429
    },
    MASK2FORMER_ADE: {
        'mIoU': 47.71,
        'aAcc': 82.1
    },
    SEMFPN: {
        'mIoU': 41.62,
        'aAcc': 79.3
    },
}
REPORTED_TTA = {MASK2FORMER_ADE: {'mIoU': 48.93, 'aAcc': 82.8}}


def work_dir_of_a_test_run(root, path):
    """A work dir in which tools/test.py tested the config's checkpoint,
    and with --tta where REPORTED_TTA has metrics."""
    cfg = Config.fromfile(REPO / path)
    name = Path(path).stem
    work_dir = root / name
    work_dir.mkdir()
    write_config(cfg, work_dir / f'{name}.py')
    cfg.load_from = f'work_dirs/{name}/last.pth'
    fake_test_run(work_dir, '20250101_000000', cfg, REPORTED[path])
    if path in REPORTED_TTA:
        cfg.model = dict(type='SegTTAModel', module=cfg.model)
        fake_test_run(work_dir, '20250101_010000', cfg, REPORTED_TTA[path])
    return work_dir


def test_gather_results_puts_each_heads_metrics_in_its_table(tmp_path):
    work_dirs = [work_dir_of_a_test_run(tmp_path, path) for path in REPORTED]
    out_dir = tmp_path / 'gathered'
    gather_results.main(
        [str(w) for w in work_dirs] +
        ['--out-dir', str(out_dir), '--skip-flops'])
    rows = {}
    for line in (out_dir / 'results.md').read_text().splitlines():
        if line.startswith('| `'):
            cells = [cell.strip() for cell in line.strip('|').split('|')]
            rows[cells[0]] = cells[1:3]
    assert rows == {
        '`dino-4scale_cvt13_coco.py`': ['49.1', 'n/a'],  # boxes only
        '`mask2former_cvt13_coco.py`': ['45.7', '42.9'],
        '`mask2former_cvt13_ade20k.py`': ['47.71', '48.93'],
        '`semfpn_cvt13_ade20k.py`': ['41.62', 'not measured'],
    }
    models = yaml.safe_load((out_dir / 'metafile.yml').read_text())['Models']
    results = {
        model['Name']: {(r['Task'], r['Dataset'], *r['Metrics'].items())
                        for r in model['Results']}
        for model in models
    }
    assert results == {
        'dino-4scale_cvt13_coco':
        {('Object Detection', 'COCO', ('box AP', 49.1))},
        'mask2former_cvt13_coco':
        {('Object Detection', 'COCO', ('box AP', 45.7)),
         ('Instance Segmentation', 'COCO', ('mask AP', 42.9))},
        'mask2former_cvt13_ade20k':
        {('Semantic Segmentation', 'ADE20K', ('mIoU', 47.71)),
         ('Semantic Segmentation', 'ADE20K', ('mIoU(ms+flip)', 48.93))},
        'semfpn_cvt13_ade20k':
        {('Semantic Segmentation', 'ADE20K', ('mIoU', 41.62))},
    }


def test_get_flops_counts_mask2former_on_ade20k_with_its_head():
    # MMSegmentation's tensor mode calls the decode head without the data
    # samples that Mask2Former's head needs; get_flops gives them to it
    counted = get_flops.complexity(
        load_repo_config(MASK2FORMER_ADE), shape=(64, 64))
    backbone_flops, _ = count_flops(CvT('13').eval(), torch.rand(1, 3, 64, 64))
    assert counted['macs'] > 3 * backbone_flops / 2  # the head, mostly
