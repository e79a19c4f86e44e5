"""Every backbone of models.BACKBONES against contract C5 and spec/backbones.md §1.0."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import models
from models import BACKBONES, ModelError, count_flops, count_parameters, create_backbone

# name: (backbone-only params, GFLOPs at 1×3×16×112×112, feature dim, forward_map D×t×h×w there)
SPEC = {
    "shufflenet": (3_606_288, 1.03, 1920, (1920, 1, 4, 4)),
    "mobilenet": (2_354_048, 1.04, 1280, (1280, 1, 4, 4)),
    "squeezenet": (1_837_760, 1.80, 512, (512, 1, 4, 4)),
    "c3d": (27_661_440, 76.99, 512, (512, 2, 7, 7)),
    "r3d": (14_361_792, 39.77, 512, (512, 2, 7, 7)),
    "r21d": (14_365_303, 42.72, 512, (512, 2, 7, 7)),
    "swin": (27_850_470, 22.7, 768, (768, 8, 4, 4)),
    "r3d_18": (33_166_272, 81.39, 512, (512, 2, 7, 7)),
    "mc3_18": (11_490_240, 86.69, 512, (512, 16, 7, 7)),
    "r2plus1d_18": (31_300_125, 81.04, 512, (512, 2, 7, 7)),
    "vit_s": (21_884_544, 19.94, 384, (384, 8, 7, 7)),
    "vit_b": (86_236_416, 73.18, 768, (768, 8, 7, 7)),
}
NAMES = list(SPEC)
# spec §1.0 quotes the original heads' dropout; the VCOP and torchvision heads have none
DROPOUT = {"shufflenet": 0.2, "mobilenet": 0.2, "squeezenet": 0.5}


def meta_backbone(name, **kw):
    with torch.device("meta"):
        return create_backbone(name, **kw)


def test_registry_has_exactly_the_contract_names():
    assert set(BACKBONES) == set(SPEC)


@pytest.mark.parametrize("name", NAMES)
def test_params_flops_and_final_map_match_spec(name):
    params, gflops, dim, map_shape = SPEC[name]
    m = meta_backbone(name)
    assert count_parameters(m) == params  # spec counts are exact integers
    assert m.num_parameters() == params
    assert count_flops(m) / 1e9 == pytest.approx(gflops, rel=0.01)
    assert m.feature_dim == dim
    out = m.forward_map(torch.empty(1, 3, 16, 112, 112, device="meta"))
    assert tuple(out.shape) == (1, *map_shape)


@pytest.mark.parametrize("name", NAMES)
def test_forward_contract_hooks_and_backward(name):
    torch.manual_seed(0)
    m = create_backbone(name, num_classes=5)
    dim = SPEC[name][2]
    x = torch.randn(2, 3, *m.min_input)

    modules = dict(m.named_modules())
    assert m.cka_layers and all(n in modules for n in m.cka_layers)
    assert len(set(m.cka_layers)) == len(m.cka_layers)
    calls = {n: 0 for n in m.cka_layers}
    hooks = [modules[n].register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls[n] + 1))
             for n in m.cka_layers]
    m.train()
    logits = m(x)
    for h in hooks:
        h.remove()
    assert calls == {n: 1 for n in m.cka_layers}  # each tapped layer fires exactly once
    assert logits.shape == (2, 5)

    logits.square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    first = next(p for p in m.parameters() if p.dim() > 1)
    assert first.grad.abs().sum() > 0  # gradient reaches the stem

    m.eval()
    with torch.no_grad():
        fmap = m.forward_map(x)
        feats = m.forward_features(x)
        logits = m(x)
    assert fmap.dim() == 5 and fmap.shape[:2] == (2, dim)
    assert feats.shape == (2, dim)
    torch.testing.assert_close(feats, fmap.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(logits, m.classifier(feats))


@pytest.mark.parametrize("name", NAMES)
def test_init_is_deterministic_under_manual_seed(name):
    torch.manual_seed(123)
    a = create_backbone(name)
    torch.manual_seed(123)
    b = create_backbone(name)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na


def test_different_seeds_give_different_weights():
    torch.manual_seed(0)
    a = create_backbone("squeezenet")
    torch.manual_seed(1)
    b = create_backbone("squeezenet")
    assert not torch.equal(a.features[0].weight, b.features[0].weight)


@pytest.mark.parametrize("name", NAMES)
def test_classifier_is_dropout_plus_linear(name):
    m = meta_backbone(name, num_classes=101)
    dim = SPEC[name][2]
    assert isinstance(m.classifier, torch.nn.Linear)
    assert (m.classifier.in_features, m.classifier.out_features) == (dim, 101)
    assert m.head_drop.p == DROPOUT.get(name, 0.0)
    assert m.num_parameters() == SPEC[name][0]
    assert m.num_parameters(with_classifier=True) == SPEC[name][0] + dim * 101 + 101
    assert set(m.classifier.state_dict()) == {"weight", "bias"}  # the C7 finetune-head layout
    m.reset_classifier(None)
    assert m.classifier is None and count_parameters(m) == SPEC[name][0]


def test_forward_without_classifier_returns_features():
    torch.manual_seed(0)
    m = create_backbone("squeezenet").eval()
    x = torch.randn(2, 3, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_features(x))


def test_dropout_option_overrides_default():
    assert meta_backbone("shufflenet", num_classes=3, dropout=0.7).head_drop.p == 0.7


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelError) as err:
        create_backbone("resnet9000")
    assert str(err.value) == ("unknown architecture 'resnet9000'; valid: "
                              + ", ".join(sorted(BACKBONES)))
    assert all(name in str(err.value) for name in BACKBONES)


def test_unknown_option_or_bad_option_value_is_a_user_error():
    with pytest.raises(ModelError) as err:
        create_backbone("c3d", width=2)
    assert str(err.value) == "architecture 'c3d' has no option width; valid: dropout"
    with pytest.raises(ModelError,
                       match=r"^shufflenet groups must be one of \[1, 2, 3, 4, 8\], got 5$"):
        create_backbone("shufflenet", groups=5)
    with pytest.raises(ModelError, match=r"^layer_sizes must be 4 positive block counts, got "
                                         r"\(1, 1, 1\)$"):
        create_backbone("r3d", layer_sizes=(1, 1, 1))
    assert issubclass(ModelError, ValueError) and ModelError.__module__ == "models.base"


def test_vcop_resnets_with_18_layers_match_the_spec():
    # spec §1.5/§1.6: (2,2,2,2) gives R3D-18 = torchvision r3d_18 size, R(2+1)D 33.18M / 84.34 GF
    assert count_parameters(meta_backbone("r3d", layer_sizes=(2, 2, 2, 2))) == 33_166_272
    r21d18 = meta_backbone("r21d", layer_sizes=(2, 2, 2, 2))
    assert count_parameters(r21d18) == pytest.approx(33.178e6, rel=1e-4)
    assert count_flops(r21d18) / 1e9 == pytest.approx(84.34, rel=0.01)
    assert len(r21d18.cka_layers) == 1 + 8


def test_r21d_mid_channels_follow_tran_formula():
    m = meta_backbone("r21d")
    assert m.conv1.spatial_conv.out_channels == 83
    assert m.conv2.block1.conv1.spatial_conv.out_channels == 144
    assert m.conv3.block1.conv1.spatial_conv.out_channels == 230
    assert m.conv3.block1.conv2.spatial_conv.out_channels == 288
    assert m.conv5.block1.conv2.spatial_conv.out_channels == 1152
    assert [getattr(m, f"conv{i}").block1.downsampleconv.spatial_conv.out_channels
            for i in (3, 4, 5)] == [42, 85, 170]
    assert m.conv3.block1.conv1.spatial_conv.stride == (1, 2, 2)
    assert m.conv3.block1.conv1.temporal_conv.stride == (2, 1, 1)


def test_shufflenet_quirks():
    m = meta_backbone("shufflenet")
    assert tuple(m.layer1[0].conv1.weight.shape) == (120, 16, 1, 1, 1)  # grouped even at 48 in
    assert m.layer1[0].conv3.out_channels == 480 - 48  # concat with the pooled input
    assert isinstance(m.layer1[0].shortcut, torch.nn.AvgPool3d)
    # g=2 with a Kinetics-600 head is spec §1.0's 4.682M
    assert count_parameters(meta_backbone("shufflenet", groups=2, num_classes=600)) == \
        pytest.approx(4.682e6, rel=1e-3)


def test_channel_shuffle_interleaves_groups():
    from models.shufflenet3d import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1, 1)
    # groups [0,1] [2,3] [4,5]: one channel from each group in turn
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_squeezenet_bypass_and_biases():
    from models.squeezenet3d import Fire

    m = meta_backbone("squeezenet")
    fires = [f for f in m.features if isinstance(f, Fire)]
    assert [f.bypass for f in fires] == [False, True] * 4
    assert all(c.bias is not None for c in m.modules() if isinstance(c, torch.nn.Conv3d))


def test_swin_stochastic_depth_option_rescales_the_ramp():
    from torchvision.ops import StochasticDepth

    def probs(m):
        return [s.p for s in m.modules() if isinstance(s, StochasticDepth)]

    default, half = probs(meta_backbone("swin")), probs(meta_backbone("swin", stochastic_depth_prob=0.05))
    assert max(default) == pytest.approx(0.1)
    assert half == pytest.approx([p / 2 for p in default])


def test_count_flops_on_meta_equals_real_run():
    torch.manual_seed(0)
    m = create_backbone("r21d")
    shape = (1, 3, 8, 32, 32)
    real = count_flops(m, shape, meta=False)
    assert real == count_flops(m, shape) == count_flops("r21d", shape)
    assert next(m.parameters()).device.type == "cpu"  # the caller's module is untouched
    assert real == pytest.approx(42.72e9 * (8 * 32 * 32) / (16 * 112 * 112), rel=0.02)


def test_import_models_does_not_import_torchvision():
    code = "import sys, models; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert models.create_backbone is create_backbone


@pytest.mark.gpu
@pytest.mark.cuda_only
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_cuda_at_benchmark_size(name):
    torch.manual_seed(0)
    m = create_backbone(name, num_classes=4).cuda()
    x = torch.randn(2, 3, 16, 112, 112, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = m(x)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert tuple(m.forward_map(x).shape[1:]) == SPEC[name][3]


@pytest.mark.parametrize("name", NAMES)
def test_declared_minimum_input_is_the_smallest_that_runs(name):
    """Each backbone declares the smallest clip it takes (``min_input`` on its builder, read
    before anything is built); a clip one frame or pixel smaller fails where the minimum is > 1."""
    builder = BACKBONES[name]
    t, h, w = getattr(builder, "min_input", (1, 1, 1))
    m = create_backbone(name).eval()
    assert tuple(m.min_input) == (t, h, w)
    with torch.no_grad():
        assert m.forward_features(torch.zeros(1, 3, t, h, w)).shape[0] == 1
        for smaller in ((t - 1, h, w), (t, h - 1, w - 1)):
            if min(smaller) >= 1 and smaller != (t, h, w) and not any(
                    s % k for s, k in zip(smaller, getattr(builder, "input_multiple", (1,) * 3))):
                with pytest.raises((RuntimeError, ValueError)):
                    m.forward_features(torch.zeros(1, 3, *smaller))
