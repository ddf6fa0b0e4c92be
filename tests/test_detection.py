"""Mask R-CNN with CvT: the shipped configs, the tools and the demo, on the
built-in shapes data."""
import copy
import functools

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DATASETS, HOOKS, MODELS

from mmcvt.fileio import load_from_local_file
from mmcvt.models import CvT
from .utils import (CHECKPOINT_URL, REPO, Interrupted, dist_train,
                    load_repo_config, load_tool, predictions_png_cells,
                    run_fresh, save_untrained_checkpoint, shapes_options)

make_shapes = load_tool('misc/make_shapes_dataset.py')
train_tool = load_tool('train.py')
test_tool = load_tool('test.py')
show_predictions = load_tool('misc/show_predictions.py')

DEMO = 'configs/demo/maskrcnn_cvt13_shapes.py'
COCO_CONFIGS = [
    'configs/maskrcnn_cvt13_coco.py',
    'configs/maskrcnn_cvt21_coco.py',
    'configs/maskrcnn_cvt13_ms-3x_coco.py',
    'configs/cascade-maskrcnn_cvt13_ms-3x_coco.py',
    'configs/retinanet_cvt13_coco.py',
]
# their steps and the rest: tests/test_dense_prediction_heads.py
DINO_MASK2FORMER_CONFIGS = [
    'configs/dino-4scale_cvt13_coco.py',
    'configs/mask2former_cvt13_coco.py',
]

# One short epoch of 4 iterations (16 images, batch 4), unless a test says
# otherwise
demo_options = functools.partial(
    shapes_options, **{
        'train_dataloader.batch_size': '4',
        'train_cfg.max_epochs': '1',
        'train_cfg.val_interval': '1',
        'default_hooks.checkpoint.interval': '1',
    })


# ---- configs ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('path', COCO_CONFIGS + [DEMO])
def test_a_config_builds_and_takes_a_finite_training_step(path, shapes):
    cfg = load_repo_config(path)
    cfg.model.backbone.init_cfg = None  # no network for hf:// here
    # 64 RoIs per image for each R-CNN stage, not the configs' 512: the
    # heads' convs on 3 x 512 RoIs made one Cascade step a minute on the CPU
    rcnn = cfg.model.get('train_cfg', {}).get('rcnn', [])
    for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
        stage.sampler.num = 64
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    # the demo's pipeline: small images keep one step of any config cheap
    dataset = DATASETS.build(
        dict(
            load_repo_config(DEMO).train_dataloader.dataset,
            data_root=f'{shapes}/'))
    batch = pseudo_collate([dataset[i] for i in range(2)])
    losses = model.train_step(batch, optim_wrapper)
    assert losses and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
@pytest.mark.parametrize('path', COCO_CONFIGS + DINO_MASK2FORMER_CONFIGS)
def test_coco_train_pipelines_run_on_an_image(path, shapes):
    cfg = load_repo_config(path)
    dataset = DATASETS.build(
        dict(
            cfg.train_dataloader.dataset,
            data_root=f'{shapes}/',
            ann_file='annotations/instances_train.json',
            data_prefix=dict(img='train/'),
            metainfo=dict(classes=make_shapes.CLASSES)))
    packed = dataset[0]
    assert packed['inputs'].shape[0] == 3
    assert len(packed['data_samples'].gt_instances) > 0


def test_coco_configs_use_the_papers_backbone_settings():
    settings = {
        path: load_repo_config(path).model.backbone
        for path in COCO_CONFIGS
    }
    cvt13, cvt21, cvt13_3x, cascade_3x, retinanet = settings.values()
    assert (cvt13.arch, cvt13.drop_path_rate) == ('13', 0.1)
    assert (cvt21.arch, cvt21.drop_path_rate) == ('21', 0.2)
    assert cvt13.init_cfg.checkpoint == 'hf://microsoft/cvt-13'
    assert cvt21.init_cfg.checkpoint == 'hf://microsoft/cvt-21'
    assert cvt13_3x == cascade_3x == cvt13
    # RetinaNet's FPN starts at stride 8: no stride-4 stage
    assert retinanet == dict(cvt13, out_indices=(1, 2))
    assert all(b.norm_eval for b in settings.values())


def test_the_fpn_gives_five_levels_from_the_three_cvt_stages():
    cfg = load_repo_config('configs/maskrcnn_cvt13_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        levels = model.extract_feat(torch.rand(1, 3, 128, 192))
    assert [tuple(level.shape[2:]) for level in levels] == [(32, 48), (16, 24),
                                                            (8, 12), (4, 6),
                                                            (2, 3)]


def test_no_weight_decay_on_norms_biases_and_depthwise_convs():
    cfg = load_repo_config('configs/maskrcnn_cvt13_coco.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    decay = {
        id(p): g['weight_decay']
        for g in optimizer.param_groups
        for p in g['params']
    }
    block = model.backbone.stages[1].blocks[0]
    assert decay[id(block.norm1.weight)] == 0
    assert decay[id(block.attn.proj_q.bias)] == 0
    assert decay[id(block.attn.conv_proj_kv.conv.weight)] == 0
    assert decay[id(block.attn.proj_q.weight)] == 0.05
    assert optimizer.defaults['lr'] == 1e-4


def test_ms_3x_config_trains_36_epochs_at_several_scales():
    cfg = load_repo_config('configs/maskrcnn_cvt13_ms-3x_coco.py')
    assert cfg.train_cfg.max_epochs == 36
    assert cfg.param_scheduler[1].milestones == [27, 33]
    choice = cfg.train_dataloader.dataset.pipeline[3]
    assert choice.type == 'RandomChoice'


def test_missing_coco_data_is_an_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/coco here
    with pytest.raises(
            FileNotFoundError,
            match='data/coco/annotations/instances_train2017.json'):
        train_tool.main([str(REPO / 'configs/maskrcnn_cvt13_coco.py')])


def test_a_missing_evaluator_annotation_file_is_an_error_naming_its_option(
        shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/shapes here
    # the datasets found, but CocoMetric reads an annotation file of its own
    options = ['--cfg-options'] + [
        f'{split}_dataloader.dataset.data_root={shapes}/'
        for split in ('train', 'val')
    ]
    with pytest.raises(
            FileNotFoundError,
            match=r'annotations/instances_val.json does not exist'
            r'.*--cfg-options val_evaluator.ann_file='):
        train_tool.main([str(REPO / DEMO)] + options)


# ---- the demo, end to end ---------------------------------------------------
# Long enough to learn the shapes: 5 epochs of 4 iterations reach a box and
# a mask AP@50 of 0.4 to 0.6 on this data, the untrained model 0.02 at most.
# A 5-iteration warmup in place of the demo's 50.
DEMO_EPOCHS = 5
DEMO_TRAINING = {
    'train_cfg.max_epochs': str(DEMO_EPOCHS),
    'train_cfg.val_interval': str(DEMO_EPOCHS),
    'default_hooks.checkpoint.interval': str(DEMO_EPOCHS),
    'param_scheduler.0.end': '5',
    'randomness.seed': '0',
}
# AP@50 that only a detector that has learned something reaches
AP50_FLOOR = 0.1


@pytest.fixture(scope='module')
def demo_run(shapes, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('demo')
    train_tool.main(
        [str(REPO / DEMO)] +
        demo_options(shapes, work_dir, 'demo-train', **DEMO_TRAINING))
    return work_dir


@pytest.fixture(scope='module')
def demo_checkpoint(demo_run):
    return demo_run / f'epoch_{DEMO_EPOCHS}.pth'


# MMDetection's own APIs, after import mmcvt alone: mmengine's loaders
UPSTREAM_APIS = """
import sys
import mmcvt
from mmdet.apis import DetInferencer, init_detector
config, checkpoint, image = sys.argv[1:]
model = init_detector(config, checkpoint, device='cpu')
print('init_detector', model.dataset_meta['classes'])
result = DetInferencer(model=config, weights=checkpoint, device='cpu')(
    image, return_vis=False)
print('DetInferencer', len(result['predictions'][0]['labels']))
"""


@pytest.mark.slow
def test_mmdetections_apis_load_a_checkpoint_of_tools_train(
        demo_checkpoint, shapes):
    image = sorted((shapes / 'val').glob('*.png'))[0]
    printed = run_fresh(UPSTREAM_APIS, REPO / DEMO, demo_checkpoint, image)
    assert "init_detector ('circle', 'square', 'triangle')" in printed
    assert 'DetInferencer ' in printed


@pytest.mark.slow
def test_the_demo_learns_boxes_and_masks_above_the_ap50_floor(
        demo_checkpoint, shapes):
    metrics = test_tool.main(
        [str(REPO / DEMO), str(demo_checkpoint)] +
        demo_options(shapes, demo_checkpoint.parent, 'demo-test'))
    assert metrics['coco/bbox_mAP_50'] > AP50_FLOOR
    assert metrics['coco/segm_mAP_50'] > AP50_FLOOR


@pytest.mark.slow
def test_an_untrained_detector_stays_below_the_ap50_floor(shapes, tmp_path):
    checkpoint = save_untrained_checkpoint(DEMO, tmp_path / 'untrained.pth')
    metrics = test_tool.main([str(REPO /
                                  DEMO), str(checkpoint)] +
                             demo_options(shapes, tmp_path, 'untrained'))
    assert metrics['coco/bbox_mAP_50'] < AP50_FLOOR
    assert metrics['coco/segm_mAP_50'] < AP50_FLOOR


def draw_predictions(checkpoint, shapes, out, *options):
    show_predictions.main([
        str(REPO / DEMO),
        str(checkpoint), '--out',
        str(out), *options, '--cfg-options',
        f'test_dataloader.dataset.data_root={shapes}/'
    ])


def shapes_test_images(shapes):
    dataset = DATASETS.build(
        dict(
            load_repo_config(DEMO).test_dataloader.dataset,
            data_root=f'{shapes}/'))
    return [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]


@pytest.mark.slow
def test_show_predictions_draws_each_test_image_with_its_boxes(
        demo_checkpoint, shapes, tmp_path):
    out = tmp_path / 'predictions.png'
    # more than the 8 test images: all of them
    draw_predictions(demo_checkpoint, shapes, out, '--num', '20', '--columns',
                     '3')
    for image, truth, predictions in predictions_png_cells(
            out, shapes_test_images(shapes), columns=3):
        assert (truth != image).any()
        assert (predictions != image).any()


@pytest.mark.slow
def test_show_predictions_leaves_out_boxes_scored_below_the_threshold(
        demo_checkpoint, shapes, tmp_path, capsys):
    out = tmp_path / 'predictions.png'
    draw_predictions(demo_checkpoint, shapes, out, '--num', '1',
                     '--pred-score-thr', '1')  # no score is above 1
    (image, truth, predictions), = predictions_png_cells(
        out, shapes_test_images(shapes)[:1], columns=2)
    assert (truth != image).any()
    assert (predictions == image).all()
    assert '(scores above 1.0)' in capsys.readouterr().out


@pytest.mark.slow
def test_a_detector_checkpoint_loads_into_the_backbone(demo_checkpoint):
    backbone = CvT(
        '13',
        init_cfg=dict(type='Pretrained', checkpoint=str(demo_checkpoint)))
    backbone.init_weights()
    saved = load_from_local_file(str(demo_checkpoint))['state_dict']
    torch.testing.assert_close(
        backbone.stages[2].blocks[9].ffn.layers[1].weight,
        saved['backbone.stages.2.blocks.9.ffn.layers.1.weight'])


# ---- a checkpoint of another model ------------------------------------------
def run_test_tool(checkpoint, shapes, work_dir):
    return test_tool.main([str(REPO / DEMO), str(checkpoint)] +
                          demo_options(shapes, work_dir, 'foreign'))


def run_show_predictions(checkpoint, shapes, work_dir):
    return show_predictions.main([
        str(REPO / DEMO),
        str(checkpoint), '--out',
        str(work_dir / 'predictions.png'), '--cfg-options',
        f'test_dataloader.dataset.data_root={shapes}/'
    ])


@pytest.mark.slow
@pytest.mark.parametrize('run_tool', [run_test_tool, run_show_predictions])
def test_a_checkpoint_of_another_model_stops_the_tool_naming_the_keys(
        run_tool, shapes, tmp_path):
    checkpoint = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {
        'conv1.weight': torch.zeros(64, 3, 7, 7)
    }}, checkpoint)
    with pytest.raises(RuntimeError) as error:
        run_tool(checkpoint, shapes, tmp_path)
    message = str(error.value)
    assert f'checkpoint {checkpoint} does not fit the model' in message
    assert 'unexpected key in source state_dict: conv1.weight' in message
    assert 'missing keys in source state_dict: backbone.stages.0.' in message


# ---- resuming an interrupted run --------------------------------------------
@HOOKS.register_module(force=True)
class RecordResumedState(Hook):
    """Records where training starts and the optimizer state it starts with."""
    records = []

    def before_train(self, runner):
        # a copy: the state's tensors are updated in place while training
        RecordResumedState.records.append(
            copy.deepcopy(
                dict(
                    epoch=runner.epoch,
                    iter=runner.iter,
                    optimizer=runner.optim_wrapper.state_dict())))


def demo_with_hooks(tmp_path, name, hooks):
    """A config file: the demo's, with custom hooks."""
    config = tmp_path / f'{name}.py'
    config.write_text(f'_base_ = {str(REPO / DEMO)!r}\n'
                      f'custom_hooks = {hooks!r}\n')
    return str(config)


@pytest.mark.slow
def test_resume_continues_an_interrupted_run_from_its_last_checkpoint(
        shapes, tmp_path):
    two_epochs = {'train_cfg.max_epochs': '2'}  # of 4 iterations each
    interrupted = demo_with_hooks(
        tmp_path, 'interrupted',
        [dict(type='InterruptAtIteration', iteration=6)])
    with pytest.raises(Interrupted):
        train_tool.main(
            [interrupted] +
            demo_options(shapes, tmp_path, 'interrupted', **two_epochs))
    assert (tmp_path / 'epoch_1.pth').is_file()
    assert not (tmp_path / 'epoch_2.pth').exists()
    saved = load_from_local_file(str(tmp_path / 'epoch_1.pth'))

    RecordResumedState.records.clear()
    resumed = demo_with_hooks(tmp_path, 'resumed',
                              [dict(type='RecordResumedState')])
    train_tool.main([resumed, '--resume'] +
                    demo_options(shapes, tmp_path, 'resumed', **two_epochs))
    start = RecordResumedState.records[0]
    assert (start['epoch'], start['iter']) == (1, 4)
    resumed_state = start['optimizer']['state']
    assert resumed_state.keys() == saved['optimizer']['state'].keys()
    for key, state in saved['optimizer']['state'].items():
        assert state['step'] == 4
        # saved on the CPU, resumed on the training device
        torch.testing.assert_close(
            resumed_state[key]['exp_avg_sq'],
            state['exp_avg_sq'],
            check_device=False)
    assert load_from_local_file(str(tmp_path /
                                    'epoch_2.pth'))['meta']['iter'] == 8


# ---- distributed ------------------------------------------------------------
@pytest.mark.slow
def test_dist_train_sh_trains_two_cpu_processes_over_gloo_with_a_frozen_stage(
        shapes, tmp_path):
    returncode, log = dist_train(
        REPO / DEMO,
        2,
        *demo_options(
            shapes,
            tmp_path,
            'dist',
            **{
                'train_dataloader.batch_size': '2',
                'train_cfg.val_interval': '2',
                # DDP fails at the second iteration on parameters that
                # become frozen after it has wrapped the model
                'model.backbone.frozen_stages': '0',
            }))
    assert returncode == 0, log[-3000:]
    assert 'backend nccl -> gloo' in log
    assert 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    # 16 images over 2 processes of 2 images: 4 iterations each
    assert 'Epoch(train) [1][4/4]' in log
    assert (tmp_path / 'epoch_1.pth').is_file()


# ---- tools' options ---------------------------------------------------------
def train_config(*args):
    return train_tool.build_config(
        train_tool.parse_args([str(REPO / DEMO), *args]))


def test_train_amp_switches_to_the_amp_optim_wrapper():
    cfg = train_config('--amp')
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'


def test_train_auto_scale_lr_enables_the_configs_scaling():
    assert train_config('--auto-scale-lr').auto_scale_lr.enable
    assert not train_config().auto_scale_lr.enable


def test_train_resume_with_a_path_resumes_from_it():
    cfg = train_config('--resume', 'work/epoch_3.pth')
    assert cfg.resume and cfg.load_from == 'work/epoch_3.pth'


def test_train_work_dir_defaults_to_work_dirs_and_the_config_name():
    assert train_config().work_dir == './work_dirs/maskrcnn_cvt13_shapes'
    assert train_config('--work-dir', 'x').work_dir == 'x'


def test_test_out_dumps_the_predictions_beside_the_metrics():
    cfg = test_tool.build_config(
        test_tool.parse_args(
            [str(REPO / DEMO), CHECKPOINT_URL, '--out', 'results.pkl']))
    assert [e['type']
            for e in cfg.test_evaluator] == ['CocoMetric', 'DumpResults']


def test_test_show_dir_turns_on_the_visualization_hook():
    cfg = test_tool.build_config(
        test_tool.parse_args(
            [str(REPO / DEMO), CHECKPOINT_URL, '--show-dir', 'vis']))
    hook = cfg.default_hooks.visualization
    assert hook.draw and hook.test_out_dir == 'vis'
