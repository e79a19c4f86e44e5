"""The tubelet ViT (models/vit3d.py): parameter counts, the masked forward, positions, sizes."""
from __future__ import annotations

import math

import pytest
import torch

from models import count_parameters, create_backbone
from models.vit3d import VisionTransformer3D, sincos_table


@pytest.mark.parametrize("arch,params,millions",
                         [("vit_s", 21_884_544, 22), ("vit_b", 86_236_416, 86)])
def test_parameter_counts(arch, params, millions):
    """VideoMAE: ViT-S 22M, ViT-B 86M encoders (counted on the meta device: no forward)."""
    with torch.device("meta"):
        m = create_backbone(arch)
    assert count_parameters(m) == params and round(params / 1e6) == millions
    d = m.feature_dim
    per_block = 12 * d * d + 13 * d  # qkv + proj + MLP ×4 weights, their biases, two LayerNorms
    assert params == 3 * 2 * 16 * 16 * d + d + 12 * per_block + 2 * d


def _vit():
    torch.manual_seed(0)
    return VisionTransformer3D(dim=32, depth=2, heads=2).eval()


def test_masked_forward_encodes_only_the_kept_tokens():
    m = _vit()
    x = torch.randn(2, 3, 4, 32, 48)  # 2×2×3 = 12 tokens
    keep = torch.tensor([[0, 5, 7], [2, 3, 11]])
    with torch.no_grad():
        out = m.forward_tokens(x, keep)
        assert out.shape == (2, 3, 32)
        torch.testing.assert_close(m.forward_features(x, keep), out.mean(1))
        # all indices = the unmasked forward
        every = torch.arange(12).expand(2, -1)
        torch.testing.assert_close(m.forward_tokens(x, every), m.forward_tokens(x))
        # the pixels of a dropped tubelet do not reach the output (token 1: t 0, h 0, w 1)
        x2 = x.clone()
        x2[:, :, 0:2, 0:16, 16:32] = 5.0
        torch.testing.assert_close(m.forward_tokens(x2, keep), out)
        assert not torch.allclose(m.forward_tokens(x2), m.forward_tokens(x))


def test_forward_map_is_the_token_grid_and_cka_layers_fire_once():
    m = _vit()
    x = torch.randn(1, 3, 4, 32, 48)
    assert m.forward_map(x).shape == (1, 32, 2, 2, 3)
    assert m.cka_layers == ["patch_embed", "blocks.0", "blocks.1"]


def test_sincos_table_matches_videomae_formula():
    t = sincos_table(5, 6)
    for pos in range(5):
        for j in range(6):
            angle = pos / 10000 ** (2 * (j // 2) / 6)
            assert t[pos, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0
                                                     else math.cos(angle), abs=1e-6)


def test_sizes_off_the_tubelet_grid_fail_in_one_line():
    m = _vit()
    for shape in ((1, 3, 5, 32, 32), (1, 3, 4, 40, 32)):
        with pytest.raises(ValueError, match=r"is not a multiple of its 2×16×16 tubelets") as e:
            m.forward_features(torch.zeros(shape))
        assert "\n" not in str(e.value)
    assert m.input_multiple == (2, 16, 16) and m.can_drop_tokens


def test_cnn_backbones_cannot_drop_tokens():
    m = create_backbone("r3d")
    assert not m.can_drop_tokens and m.input_multiple == (1, 1, 1)
    with pytest.raises(NotImplementedError, match="cannot drop tokens"):
        m.forward_tokens(torch.zeros(1, 3, 8, 32, 32), torch.zeros(1, 1, dtype=torch.long))
