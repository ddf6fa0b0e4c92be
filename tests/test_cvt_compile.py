"""torch.compile of the backbone: one graph, dynamic image sizes, eager's
numbers."""
import copy

import pytest
import torch

from mmcvt.models import CvT
from .utils import TINY, TWO_STAGES, load_repo_config, relative_error

# One stage, with the cls token: every brick of the model, and inductor's
# C++ compilation of it takes about a minute on two cores (three stages
# take three times as long).
ONE_STAGE = dict(
    embed_dims=[8],
    num_heads=[1],
    depths=[1],
    patch_sizes=[7],
    patch_strides=[4],
    patch_paddings=[2])
SIZES = [(97, 131), (64, 80)]


def one_stage_cvt(**kwargs):
    torch.manual_seed(0)
    return CvT(ONE_STAGE, out_indices=0, with_cls_token=True, **kwargs)


def two_stage_cvt(**kwargs):
    """For the graphs that AOTAutograd traces without inductor: what passes
    between stages too."""
    torch.manual_seed(0)
    return CvT(TWO_STAGES, out_indices=(0, 1), with_cls_token=True, **kwargs)


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def training_step(model, x):
    """Outputs, gradients and state after one step from the same RNG."""
    torch.manual_seed(1)
    outs = model(x)
    sum((o**2).mean() for o in outs).backward()
    grads = torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [o.detach() for o in outs], grads


def compare_training_steps(compiled, eager_model, x):
    state = copy.deepcopy(eager_model.state_dict())
    outs, grads = training_step(compiled, x)
    compiled_state = eager_model.state_dict()
    eager_model.zero_grad()
    eager_model.load_state_dict(state)
    ref_outs, ref_grads = training_step(eager_model, x)
    eager_model.zero_grad()
    for out, ref in zip(outs, ref_outs):
        assert relative_error(out, ref) < 1e-4
    assert relative_error(grads, ref_grads) < 1e-4
    for key, value in eager_model.state_dict().items():  # BN statistics
        torch.testing.assert_close(compiled_state[key], value, msg=key)


@pytest.mark.slow
def test_the_compiled_backbone_serves_a_second_image_size_without_recompiling(
):
    model = one_stage_cvt().eval()
    compiled = torch.compile(model, dynamic=True, fullgraph=True)
    for i, size in enumerate(SIZES):
        x = torch.rand(2, 3, *size)
        with torch.no_grad(), torch._dynamo.config.patch(
                error_on_recompile=i > 0):
            outs = compiled(x)
            refs = model(x)
        for out, ref in zip(outs, refs):
            assert relative_error(out, ref) < 1e-4


@pytest.mark.slow
def test_a_compiled_training_step_has_the_gradients_of_eager():
    # inductor; torch 2.13 recompiles a training graph of convolutions for
    # each new image size (docs/en/speed_and_memory.md, "Compiling the
    # backbone"), so one size
    model = one_stage_cvt(drop_path_rate=0.2).train()
    compiled = torch.compile(model, dynamic=True, fullgraph=True)
    compare_training_steps(compiled, model, torch.rand(2, 3, *SIZES[0]))


@pytest.mark.slow
@pytest.mark.parametrize('with_cp', [False, True, 'selective'])
def test_compiled_training_traces_one_graph_for_every_image_size(with_cp):
    # the graph that dynamo and AOTAutograd make, run without inductor's
    # code generation, which would take minutes for each mode
    model = two_stage_cvt(drop_path_rate=0.2, with_cp=with_cp).train()
    compiled = torch.compile(
        model, dynamic=True, fullgraph=True, backend='aot_eager')
    for i, size in enumerate(SIZES):
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            compare_training_steps(compiled, model, torch.rand(2, 3, *size))


@pytest.mark.slow
def test_the_compile_switch_compiles_the_backbone_with_its_options():
    torch.manual_seed(0)
    eager = CvT(TINY).eval()
    switched = CvT(TINY, compile=dict(backend='eager')).eval()
    switched.load_state_dict(eager.state_dict())
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        for out, ref in zip(switched(x), eager(x)):
            torch.testing.assert_close(out, ref)
    assert switched._compiled_call_impl is not None
    assert eager._compiled_call_impl is None


def test_a_compile_switch_that_is_not_a_bool_or_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match='compile must be a bool or a dict'):
        CvT(TINY, compile='max-autotune')


def test_the_compiled_detection_config_pads_batches_to_few_sizes():
    from mmengine.registry import MODELS
    cfg = load_repo_config('configs/maskrcnn_cvt13_compiled_coco.py')
    assert cfg.model.backbone.compile is True
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    # COCO images after the 1333x800 resize: some of the many sizes
    sizes = {(800, 1067), (800, 1201), (800, 1199), (683, 1024), (800, 1000)}
    padded = set()
    for height, width in sizes:
        batch = preprocessor(
            dict(inputs=[torch.zeros(3, height, width, dtype=torch.uint8)]))
        padded.add(tuple(batch['inputs'].shape[2:]))
    assert padded == {(896, 1024), (896, 1152), (896, 1280), (768, 1024)}
