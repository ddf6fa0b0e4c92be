"""The CvT backbone's architecture, its modes and its errors."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmengine.registry import init_default_scope

from mmcvt.models import CvT, QuickGELU
from mmcvt.models.backbones.cvt import CvTBlock

# a small custom arch, so that most tests run in a fraction of a second
TINY = dict(embed_dims=[16, 32, 48], num_heads=[1, 2, 3], depths=[1, 1, 2])


def tiny_cvt(**kwargs):
    kwargs.setdefault('arch', TINY)
    return CvT(**kwargs)


@pytest.mark.parametrize('arch, widths, heads, depths', [
    ('13', [64, 192, 384], [1, 3, 6], [1, 2, 10]),
    ('21', [64, 192, 384], [1, 3, 6], [1, 4, 16]),
    ('w24', [192, 768, 1024], [3, 12, 16], [2, 2, 20]),
])
def test_presets_have_the_papers_widths_heads_and_depths(
        arch, widths, heads, depths):
    model = CvT(arch)
    assert [s.patch_embed.projection.out_channels
            for s in model.stages] == widths
    assert [s.blocks[0].attn.num_heads for s in model.stages] == heads
    assert [len(s.blocks) for s in model.stages] == depths


def test_presets_share_the_embedding_and_projection_settings():
    model = CvT('13')
    convs = [s.patch_embed.projection for s in model.stages]
    assert [c.kernel_size for c in convs] == [(7, 7), (3, 3), (3, 3)]
    assert [c.stride for c in convs] == [(4, 4), (2, 2), (2, 2)]
    assert [c.padding for c in convs] == [(2, 2), (1, 1), (1, 1)]
    for stage in model.stages:
        attn = stage.blocks[0].attn
        assert attn.conv_proj_q.conv.stride == (1, 1)
        assert attn.conv_proj_k.conv.stride == (2, 2)
        assert attn.conv_proj_v.conv.padding == (1, 1)
        assert attn.conv_proj_q.conv.kernel_size == (3, 3)
        assert attn.proj_q.bias is not None
        assert stage.blocks[0].ffn.layers[0][0].out_features == (
            4 * attn.proj_q.in_features)


@pytest.mark.parametrize('name', ['cvt-13', 'CvT-13', 'cvt13', 'CVT_13'])
def test_arch_names_accept_the_cvt_prefix(name):
    assert CvT._parse_arch(name) == CvT._parse_arch('13')


def test_arch_dict_takes_single_values_for_every_stage():
    arch = dict(TINY, mlp_ratios=2., proj_methods='avg', qkv_bias=False)
    model = CvT(arch)
    assert model.arch['mlp_ratios'] == [2., 2., 2.]
    assert all(s.blocks[0].attn.proj_k.bias is None for s in model.stages)
    assert all(
        isinstance(s.blocks[0].attn.conv_proj_k, nn.AvgPool2d)
        for s in model.stages)


def test_arch_dict_may_have_any_number_of_stages():
    arch = dict(embed_dims=[8, 16], num_heads=[1, 2], depths=[1, 1],
                patch_sizes=[7, 3], patch_strides=[4, 2],
                patch_paddings=[2, 1])
    outs = CvT(arch, out_indices=(0, 1))(torch.rand(1, 3, 32, 32))
    assert [o.shape for o in outs] == [(1, 8, 8, 8), (1, 16, 4, 4)]


def expected_sizes(side):
    """Map sides of the three preset stages, by the conv formula."""
    sizes = []
    for k, s, p in ((7, 4, 2), (3, 2, 1), (3, 2, 1)):
        side = (side + 2 * p - k) // s + 1
        sizes.append(side)
    return sizes


@pytest.mark.parametrize('h, w', [(224, 224), (97, 131), (64, 48), (33, 65),
                                  (127, 255), (3, 3), (50, 17)])
def test_output_shapes_follow_the_strides_at_any_input_size(h, w):
    model = tiny_cvt().eval()
    outs = model(torch.rand(2, 3, h, w))
    expected = [(2, c, hs, ws) for c, hs, ws in zip(
        TINY['embed_dims'], expected_sizes(h), expected_sizes(w))]
    assert [tuple(o.shape) for o in outs] == expected


def test_presets_return_maps_at_strides_4_8_16():
    outs = CvT('13').eval()(torch.rand(1, 3, 224, 320))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 56, 80),
                                             (1, 192, 28, 40),
                                             (1, 384, 14, 20)]


def test_out_indices_select_and_order_the_returned_stages():
    model = tiny_cvt(out_indices=(2, 0)).eval()
    outs = model(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [48, 16]


def test_negative_out_indices_count_from_the_last_stage():
    assert tiny_cvt(out_indices=-1).out_indices == (2, )


def test_there_is_no_position_embedding():
    names = [n for n, _ in CvT('13', cls_token=True).named_parameters()]
    assert not [n for n in names if 'pos' in n]


def test_cls_token_false_builds_no_cls_token():
    assert all(s.cls_token is None for s in tiny_cvt().stages)


def test_cls_token_true_lives_in_the_last_stage_only():
    model = tiny_cvt(cls_token=True)
    assert [s.cls_token is not None for s in model.stages] == [
        False, False, True
    ]


def test_cls_token_takes_part_in_attention_but_is_not_returned():
    torch.manual_seed(0)
    with_cls = tiny_cvt(cls_token=True).eval()
    without = tiny_cvt().eval()
    without.load_state_dict(
        {k: v for k, v in with_cls.state_dict().items() if 'cls' not in k})
    x = torch.rand(1, 3, 64, 64)
    a, b = with_cls(x), without(x)
    assert [o.shape for o in a] == [o.shape for o in b]
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[2], b[2])


def test_out_norm_adds_a_layernorm_per_returned_stage():
    model = tiny_cvt(out_indices=(0, 2))
    assert isinstance(model.norm0, nn.LayerNorm)
    assert isinstance(model.norm2, nn.LayerNorm)
    assert not hasattr(model, 'norm1')
    assert not hasattr(tiny_cvt(out_norm=False), 'norm0')


def test_out_norm_normalises_each_returned_map_over_channels():
    outs = tiny_cvt().eval()(torch.rand(2, 3, 64, 64))
    for out in outs:
        mean = out.mean(dim=1)
        torch.testing.assert_close(mean, torch.zeros_like(mean),
                                   atol=1e-5, rtol=0)


def test_quick_gelu_is_x_times_sigmoid_of_1702x():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_quick_gelu_is_buildable_from_configs_of_both_libraries(scope):
    # mmseg registers a QuickGELU of its own (for CLIP) with the same formula;
    # in its scope that one is found first, which is equally right.
    init_default_scope(scope)
    act = build_activation_layer(dict(type='QuickGELU'))
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(act(x), x * torch.sigmoid(1.702 * x))


def mlp_activation(model):
    return model.stages[0].blocks[0].ffn.layers[0][1]


def test_default_activation_is_quick_gelu():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(
        mlp_activation(tiny_cvt())(x), x * torch.sigmoid(1.702 * x))


def test_gelu_can_be_chosen():
    assert isinstance(mlp_activation(tiny_cvt(act_cfg=dict(type='GELU'))),
                      nn.GELU)


def test_drop_path_rate_rises_linearly_over_all_blocks():
    model = tiny_cvt(drop_path_rate=0.3)
    rates = [(b.drop_path.drop_prob, b.ffn.dropout_layer.drop_prob)
             for s in model.stages for b in s.blocks]
    expected = torch.linspace(0, 0.3, 4).tolist()
    assert [r[0] for r in rates] == pytest.approx(expected)
    assert [r[1] for r in rates] == pytest.approx(expected)


def reference_attention(attn, x, hw_shape):
    """The official code's attention, written out with einsum."""
    h, w = hw_shape
    x_map = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
    heads = attn.num_heads

    def project(conv, linear):
        t = linear(conv(x_map).flatten(2).transpose(1, 2))
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q = project(attn.conv_proj_q, attn.proj_q)
    k = project(attn.conv_proj_k, attn.proj_k)
    v = project(attn.conv_proj_v, attn.proj_v)
    width = q.shape[1] * q.shape[3]
    scores = torch.einsum('bhld,bhtd->bhlt', q, k) * width**-0.5
    out = torch.einsum('bhlt,bhtd->bhld', scores.softmax(-1), v)
    return attn.proj(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize('attn_impl', ['sdpa', 'naive'])
def test_attention_scales_by_the_whole_width_not_the_head_width(attn_impl):
    model = tiny_cvt(attn_impl=attn_impl).eval()
    attn = model.stages[2].blocks[0].attn  # 3 heads of 16 channels
    x = torch.randn(2, 6 * 5, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            attn(x, (6, 5)), reference_attention(attn, x, (6, 5)))


def test_sdpa_and_naive_attention_agree():
    torch.manual_seed(0)
    sdpa = tiny_cvt(cls_token=True).eval()
    naive = tiny_cvt(cls_token=True, attn_impl='naive').eval()
    naive.load_state_dict(sdpa.state_dict())
    x = torch.rand(2, 3, 97, 131)
    for a, b in zip(sdpa(x), naive(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_avg_projection_pools_k_and_v_and_keeps_q_linear():
    model = tiny_cvt(arch=dict(TINY, proj_methods='avg')).eval()
    attn = model.stages[0].blocks[0].attn
    assert isinstance(attn.conv_proj_q, nn.Identity)
    assert isinstance(attn.conv_proj_k, nn.AvgPool2d)
    assert attn.conv_proj_k.ceil_mode
    assert [o.shape[1] for o in model(torch.rand(1, 3, 45, 61))] == [16, 32, 48]


def test_linear_projection_has_no_conv():
    model = tiny_cvt(arch=dict(TINY, proj_methods='linear')).eval()
    attn = model.stages[0].blocks[0].attn
    assert all(
        isinstance(p, nn.Identity)
        for p in (attn.conv_proj_q, attn.conv_proj_k, attn.conv_proj_v))
    assert len(model(torch.rand(1, 3, 45, 61))) == 3


def test_gradients_reach_every_trainable_parameter():
    model = tiny_cvt(cls_token=True, drop_path_rate=0.).train()
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_frozen_stages_get_no_gradients():
    model = tiny_cvt(frozen_stages=1).train()
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    for name, param in model.named_parameters():
        frozen = name.startswith(('stages.0.', 'stages.1.', 'norm0.',
                                  'norm1.'))
        assert param.requires_grad != frozen, name
        assert (param.grad is None) == frozen, name


def test_frozen_stages_stay_in_eval_mode_after_train():
    model = tiny_cvt(frozen_stages=0)
    model.train()
    assert not any(m.training for m in model.stages[0].modules())
    assert not model.norm0.training
    assert all(m.training for m in model.stages[1].modules())


def bn_buffers(model):
    return {
        n: b.clone()
        for n, b in model.named_buffers() if 'running' in n
    }


def train_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    optimizer.step()


def test_norm_eval_keeps_bn_statistics_over_a_training_step():
    model = tiny_cvt(norm_eval=True).train()
    before = bn_buffers(model)
    train_step(model)
    after = bn_buffers(model)
    assert before and all(torch.equal(before[n], after[n]) for n in before)


def test_without_norm_eval_a_training_step_moves_bn_statistics():
    model = tiny_cvt().train()
    before = bn_buffers(model)
    train_step(model)
    after = bn_buffers(model)
    assert not any(torch.equal(before[n], after[n]) for n in before)


def test_norm_eval_leaves_layernorms_training():
    model = tiny_cvt(norm_eval=True).train()
    assert model.stages[0].blocks[0].norm1.training


def plain_autograd_twin(model):
    """A copy of ``model`` whose blocks skip any recompute."""
    twin = copy.deepcopy(model)
    for block in twin.modules():
        if isinstance(block, CvTBlock):
            block.forward = block.forward_tokens
    return twin


def training_step_results(model, x):
    torch.manual_seed(1)  # the same dropout and drop-path masks
    outs = model(x)
    sum((o**2).sum() for o in outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return outs, grads, model.state_dict()


@pytest.mark.parametrize('with_cp', [True, 'selective'])
def test_recomputing_in_the_backward_keeps_the_gradients_of_plain_autograd(
        with_cp):
    model = tiny_cvt(drop_rate=0.2, drop_path_rate=0.3, with_cp=with_cp)
    reference = plain_autograd_twin(model)
    x = torch.rand(2, 3, 64, 64)
    outs, grads, _ = training_step_results(model.train(), x)
    ref_outs, ref_grads, _ = training_step_results(reference.train(), x)
    for out, ref_out in zip(outs, ref_outs):
        torch.testing.assert_close(out, ref_out)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


@pytest.mark.parametrize('with_cp', [True, 'selective'])
def test_recomputing_in_the_backward_updates_bn_statistics_once(with_cp):
    model = tiny_cvt(with_cp=with_cp)
    reference = plain_autograd_twin(model)
    x = torch.rand(2, 3, 64, 64)
    _, _, state = training_step_results(model.train(), x)
    _, _, ref_state = training_step_results(reference.train(), x)
    counters = [n for n in ref_state if n.endswith('num_batches_tracked')]
    assert counters and all(ref_state[n] == 1 for n in counters)
    for name in ref_state:
        torch.testing.assert_close(state[name], ref_state[name], msg=name)


def bytes_kept_by_forward(model, x):
    """Bytes allocated in a training forward and not yet freed after it:
    the outputs and what the backward will need."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        outs = model(x)
    del outs
    return sum(event.self_cpu_memory_usage for event in p.events())


def test_selective_recompute_keeps_a_third_less_for_the_backward():
    x = torch.rand(2, 3, 128, 128)
    plain = bytes_kept_by_forward(tiny_cvt().train(), x)
    selective = bytes_kept_by_forward(
        tiny_cvt(with_cp='selective').train(), x)
    full = bytes_kept_by_forward(tiny_cvt(with_cp=True).train(), x)
    assert full < selective < 0.7 * plain


def test_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = tiny_cvt(drop_path_rate=0.).train()
    checkpointed = tiny_cvt(drop_path_rate=0., with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        outs = model(x)
        sum((o**2).sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_forward_under_autocast_is_finite(dtype):
    model = tiny_cvt(cls_token=True).eval()
    with torch.autocast('cpu', dtype=dtype):
        outs = model(torch.rand(1, 3, 97, 131))
    assert all(torch.isfinite(o).all() for o in outs)


# ---- bad input --------------------------------------------------------------
def test_a_tensor_that_is_not_4d_is_a_value_error():
    with pytest.raises(ValueError, match='4-D'):
        tiny_cvt()(torch.rand(3, 64, 64))


def test_a_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match='tensor'):
        tiny_cvt()([[0.]])


def test_the_wrong_number_of_channels_is_a_value_error():
    with pytest.raises(ValueError, match='in_channels=3.*1 channels'):
        tiny_cvt()(torch.rand(1, 1, 64, 64))


def test_an_input_too_small_for_the_strides_is_a_value_error():
    with pytest.raises(ValueError, match='too small.*at least 3'):
        tiny_cvt()(torch.rand(1, 3, 2, 64))


def test_an_unknown_arch_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown CvT arch 'cvt-42'"):
        CvT('cvt-42')


def test_an_arch_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match='arch must be'):
        CvT(13)


def test_an_arch_dict_without_required_keys_is_a_value_error():
    with pytest.raises(ValueError, match='lacks'):
        CvT(dict(embed_dims=[16], depths=[1]))


def test_an_arch_dict_with_an_unknown_key_is_a_value_error():
    with pytest.raises(ValueError, match="unknown keys.*'mlp_ratio'"):
        CvT(dict(TINY, mlp_ratio=4))


def test_an_arch_list_of_the_wrong_length_is_a_value_error():
    with pytest.raises(ValueError, match="'patch_sizes'.*2 entries.*3 stages"):
        CvT(dict(TINY, patch_sizes=[7, 3]))


def test_an_unknown_projection_method_is_a_value_error():
    with pytest.raises(ValueError, match="unknown projection method 'conv'"):
        CvT(dict(TINY, proj_methods='conv'))


def test_heads_that_do_not_divide_the_width_are_a_value_error():
    with pytest.raises(ValueError, match='num_heads=5.*embed_dims=32'):
        CvT(dict(TINY, num_heads=[1, 5, 3]))


def test_a_q_projection_that_changes_the_map_size_is_a_value_error():
    with pytest.raises(ValueError, match='stride_q=1'):
        CvT(dict(TINY, stride_q=2))


@pytest.mark.parametrize('out_indices', [(0, 3), (-4, ), 5])
def test_out_indices_out_of_range_are_a_value_error(out_indices):
    with pytest.raises(ValueError, match='out of range for 3 stages'):
        tiny_cvt(out_indices=out_indices)


def test_out_indices_that_are_not_ints_are_a_type_error():
    with pytest.raises(TypeError, match='out_indices'):
        tiny_cvt(out_indices=(0.5, ))


def test_an_unknown_with_cp_mode_is_a_value_error():
    with pytest.raises(ValueError, match="'selective'"):
        tiny_cvt(with_cp='full')


def test_frozen_stages_out_of_range_are_a_value_error():
    with pytest.raises(ValueError, match='frozen_stages'):
        tiny_cvt(frozen_stages=3)


def test_an_unknown_attn_impl_is_a_value_error():
    with pytest.raises(ValueError, match='attn_impl'):
        tiny_cvt(attn_impl='flash')


def test_outputs_are_contiguous_nchw_for_compiled_ops():
    # a channels_last view would reach mmcv's RoIAlign through the FPN's
    # convs, and RoIAlign reads its input as contiguous NCHW
    from mmcv.ops import roi_align
    features = tiny_cvt().eval()(torch.rand(1, 3, 64, 64))
    assert all(f.is_contiguous() for f in features)
    lateral = nn.Conv2d(16, 8, 1)(features[0])
    rois = torch.tensor([[0., 4., 4., 40., 40.]])
    torch.testing.assert_close(
        roi_align(lateral, rois, (7, 7), 0.25, 2, 'avg', True),
        roi_align(lateral.contiguous(), rois, (7, 7), 0.25, 2, 'avg', True))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason='needs a CUDA GPU: the flash and memory-efficient '
                    'SDPA kernels exist only there')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_attention_runs_on_the_flash_or_memory_efficient_kernels(dtype):
    # with the math fallback excluded, SDPA raises if neither kernel accepts
    # CvT's q/k/v (shapes, head widths, the explicit scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = CvT('13', cls_token=True).cuda().eval()
    image = torch.rand(1, 3, 224, 320, device='cuda')
    with torch.no_grad(), torch.autocast('cuda', dtype=dtype,
                                         enabled=dtype != torch.float32), \
            sdpa_kernel([SDPBackend.FLASH_ATTENTION,
                         SDPBackend.EFFICIENT_ATTENTION]):
        outs = model(image)
    assert all(torch.isfinite(o).all() for o in outs)
