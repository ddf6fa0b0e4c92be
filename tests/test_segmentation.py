"""UperNet with CvT: the shipped configs and the demo, on the semantic
version of the built-in shapes data."""
import functools

import mmcv
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, MODELS

from .utils import (CHECKPOINT_URL, REPO, dist_train, load_repo_config,
                    load_tool, predictions_png_cells, run_fresh,
                    save_untrained_checkpoint, shapes_options)

train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
show_predictions = load_tool('misc/show_predictions.py')

DEMO = 'configs/demo/upernet_cvt13_shapes.py'
ADE_CONFIGS = [
    'configs/upernet_cvt13_ade20k.py', 'configs/upernet_cvt21_ade20k.py'
]


def demo_dataset(root, split='train'):
    loader = load_repo_config(DEMO)[f'{split}_dataloader']
    return DATASETS.build(dict(loader.dataset, data_root=f'{root}/'))


@pytest.mark.slow
@pytest.mark.parametrize('path', ADE_CONFIGS + [DEMO])
def test_a_config_builds_and_takes_a_finite_training_step(path, shapes_seg):
    cfg = load_repo_config(path)
    cfg.model.backbone.init_cfg = None  # no network for hf:// here
    # pad the 128x128 images to 128, not the ADE20K crop of 512: one step
    # of the config's model on a tiny batch
    cfg.model.data_preprocessor.size = (128, 128)
    # one process: SyncBN reverts to BN, as the Runner does it
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    dataset = demo_dataset(shapes_seg)
    batch = pseudo_collate([dataset[i] for i in range(2)])
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v) for v in losses.values())


def test_ade_configs_follow_the_recipe():
    cvt13, cvt21 = (load_repo_config(path) for path in ADE_CONFIGS)
    for cfg in (cvt13, cvt21):
        assert cfg.model.decode_head.in_channels == [64, 192, 384]
        assert cfg.model.decode_head.in_index == [0, 1, 2]
        assert (cfg.model.auxiliary_head.in_index,
                cfg.model.auxiliary_head.in_channels) == (2, 384)
        assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.optimizer.lr == 6e-5
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end) == ('LinearLR', 1500)
        assert (poly.type, poly.begin, poly.end) == ('PolyLR', 1500, 160000)
        assert cfg.model.test_cfg == dict(
            mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert cvt13.model.backbone.drop_path_rate == 0.1
    assert cvt21.model.backbone.drop_path_rate == 0.2
    assert cvt13.model.backbone.init_cfg.checkpoint == 'hf://microsoft/cvt-13'
    assert cvt21.model.backbone.init_cfg.checkpoint == 'hf://microsoft/cvt-21'


def test_no_weight_decay_on_norms_biases_and_depthwise_convs():
    cfg = load_repo_config(ADE_CONFIGS[0])
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {
        id(p): g['weight_decay']
        for g in optimizer.param_groups
        for p in g['params']
    }
    block = model.backbone.stages[2].blocks[0]
    assert decay[id(block.norm2.weight)] == 0
    assert decay[id(block.ffn.layers[1].bias)] == 0
    assert decay[id(block.attn.conv_proj_kv.conv.weight)] == 0
    assert decay[id(block.ffn.layers[1].weight)] == 0.01


def test_whole_image_inference_takes_a_size_not_divisible_by_32():
    cfg = load_repo_config(DEMO)
    model = MODELS.build(cfg.model).eval()
    image = torch.randint(0, 256, (3, 97, 131), dtype=torch.uint8)
    from mmseg.structures import SegDataSample
    sample = SegDataSample(
        metainfo=dict(img_shape=(97, 131), ori_shape=(97, 131)))
    with torch.no_grad():
        result, = model.test_step(dict(inputs=[image], data_samples=[sample]))
    assert result.pred_sem_seg.data.shape == (1, 97, 131)
    assert result.seg_logits.data.shape == (4, 97, 131)


def test_the_shapes_semseg_labels_are_background_and_one_class_per_shape(
        shapes_seg):
    sample = demo_dataset(shapes_seg, 'val')[0]['data_samples']
    labels = set(sample.gt_sem_seg.data.unique().tolist())
    assert 0 in labels and labels <= {0, 1, 2, 3}


# ---- the demo, end to end ---------------------------------------------------
# 4 iterations (batch 4), unless a test says otherwise
demo_options = functools.partial(
    shapes_options, **{
        'train_dataloader.batch_size': '4',
        'train_cfg.max_iters': '4',
        'train_cfg.val_interval': '4',
        'default_hooks.checkpoint.interval': '4',
    })

# Long enough to learn the shapes: 20 iterations (batch 4) reach an mIoU of
# 37 to 39 on this data, where predicting one class everywhere reaches 20 and
# the untrained model 4 to 6. A 5-iteration warmup in place of the demo's 50.
DEMO_ITERS = 20
DEMO_TRAINING = {
    'train_cfg.max_iters': str(DEMO_ITERS),
    'train_cfg.val_interval': str(DEMO_ITERS),
    'default_hooks.checkpoint.interval': str(DEMO_ITERS),
    'param_scheduler.0.end': '5',
    'param_scheduler.1.begin': '5',
    'param_scheduler.1.end': str(DEMO_ITERS),
    'randomness.seed': '0',
}


@pytest.fixture(scope='module')
def demo_run(shapes_seg, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('demo_seg')
    train_tool.main(
        [str(REPO / DEMO)] +
        demo_options(shapes_seg, work_dir, 'seg-train', **DEMO_TRAINING))
    return work_dir


@pytest.fixture(scope='module')
def demo_checkpoint(demo_run):
    return demo_run / f'iter_{DEMO_ITERS}.pth'


def best_constant_miou(root):
    """The mIoU (percent) of the best model that ignores its input: one class
    everywhere scores an IoU of that class's pixel fraction, 0 elsewhere."""
    labels = np.stack([
        mmcv.imread(path, 'unchanged')
        for path in sorted((root / 'annotations/validation').glob('*.png'))
    ])
    fractions = np.bincount(labels.ravel()) / labels.size
    present = np.count_nonzero(fractions)
    return 100 * fractions.max() / present


# MMSegmentation's own APIs, after import mmcvt alone: mmengine's loaders
UPSTREAM_APIS = """
import sys
import mmcvt
from mmseg.apis import MMSegInferencer, init_model
config, checkpoint, image = sys.argv[1:]
model = init_model(config, checkpoint, device='cpu')
print('init_model', model.dataset_meta['classes'])
result = MMSegInferencer(model=config, weights=checkpoint, device='cpu')(
    image, return_vis=False)
print('MMSegInferencer', result['predictions'].shape)
"""


@pytest.mark.slow
def test_mmsegmentations_apis_load_a_checkpoint_of_tools_train(
        demo_checkpoint, shapes_seg):
    image = sorted((shapes_seg / 'images/validation').glob('*.png'))[0]
    printed = run_fresh(UPSTREAM_APIS, REPO / DEMO, demo_checkpoint, image)
    assert "init_model ('background', 'circle', 'square', 'triangle')" in (
        printed)
    assert 'MMSegInferencer (128, 128)' in printed


@pytest.mark.slow
def test_the_demo_learns_the_shapes_beyond_any_constant_prediction(
        demo_checkpoint, shapes_seg):
    metrics = test_tool.main(
        [str(REPO / DEMO), str(demo_checkpoint)] +
        demo_options(shapes_seg, demo_checkpoint.parent, 'seg-test'))
    assert metrics['mIoU'] > best_constant_miou(shapes_seg)


@pytest.mark.slow
def test_an_untrained_model_stays_below_the_constant_prediction_floor(
        shapes_seg, tmp_path):
    checkpoint = save_untrained_checkpoint(DEMO, tmp_path / 'untrained.pth')
    metrics = test_tool.main([str(REPO /
                                  DEMO), str(checkpoint)] +
                             demo_options(shapes_seg, tmp_path, 'untrained'))
    assert metrics['mIoU'] < best_constant_miou(shapes_seg)


@pytest.mark.slow
def test_show_predictions_draws_segmentation_overlays(demo_checkpoint,
                                                      shapes_seg, tmp_path):
    out = tmp_path / 'predictions.png'
    show_predictions.main([
        str(REPO / DEMO),
        str(demo_checkpoint), '--out',
        str(out), '--num', '2', '--cfg-options',
        f'test_dataloader.dataset.data_root={shapes_seg}/'
    ])
    dataset = demo_dataset(shapes_seg, 'val')
    images = [dataset.get_data_info(i)['img_path'] for i in range(2)]
    for image, truth, predictions in predictions_png_cells(
            out, images, columns=2):
        assert (truth != image).any()
        assert (predictions != image).any()


@pytest.mark.slow
def test_dist_train_sh_trains_syncbn_heads_in_two_cpu_processes(
        shapes_seg, tmp_path):
    # the heads of the ADE20K configs, which SyncBatchNorm fails on the CPU
    returncode, log = dist_train(
        REPO / DEMO, 2,
        *demo_options(
            shapes_seg, tmp_path, 'dist-seg', **{
                'model.decode_head.norm_cfg.type': 'SyncBN',
                'model.auxiliary_head.norm_cfg.type': 'SyncBN',
                'train_dataloader.batch_size': '2',
                'train_cfg.max_iters': '2',
                'train_cfg.val_interval': '2',
                'default_hooks.checkpoint.interval': '2',
                'default_hooks.logger.interval': '1',
            }))
    assert returncode == 0, log[-3000:]
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    assert ('SyncBatchNorm runs on GPUs only, so its 11 layers '
            '(decode_head.psp_modules.0.1.bn, ') in log
    assert 'Iter(train) [2/2]' in log
    assert (tmp_path / 'iter_2.pth').is_file()


def test_test_tta_runs_the_multi_scale_flip_pipeline():
    cfg = test_tool.build_config(
        test_tool.parse_args(
            [str(REPO / ADE_CONFIGS[0]), CHECKPOINT_URL, '--tta']))
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.backbone.type == 'CvT'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def test_test_show_dir_saves_through_the_segmentation_visualizer():
    cfg = test_tool.build_config(
        test_tool.parse_args(
            [str(REPO / ADE_CONFIGS[0]), CHECKPOINT_URL, '--show-dir', 'vis']))
    assert cfg.default_hooks.visualization.draw
    assert cfg.visualizer.save_dir == 'vis'
