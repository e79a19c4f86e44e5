"""Video-level feature/logit extraction: N clips per video averaged, ordered by manifest index."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.types import Batch


class TinyBackbone(nn.Module):
    """A 3D conv + BN + global pool: the C5 backbone interface at toy size (fast on CPU)."""

    feature_dim = 8

    def __init__(self, dim: int = 8):
        super().__init__()
        self.feature_dim = dim
        self.conv = nn.Conv3d(3, dim, 3, padding=1)
        self.bn = nn.BatchNorm3d(dim)

    def forward_features(self, x):  # B×3×T×H×W -> B×D
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3, 4))

    def forward(self, x):
        return self.forward_features(x)


def make_batches(values, labels, batch_size=2, clips=1, t=4, size=8, seed=0, noise=0.0):
    """Batches whose video i has clips filled with ``values[i]`` (+ optional noise)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    n = len(values)
    for s in range(0, n, batch_size):
        idx = list(range(s, min(s + batch_size, n)))
        x = torch.stack([torch.as_tensor(values[i], dtype=torch.float32).reshape(3, 1, 1, 1)
                         .expand(3, t, size, size).unsqueeze(0).repeat(clips, 1, 1, 1, 1)
                         for i in idx])
        if noise:
            x = x + noise * torch.randn(x.shape, generator=g)
        out.append(Batch(clips=x, labels=torch.zeros(len(idx), dtype=torch.long),
                         targets=torch.tensor([labels[i] for i in idx]),
                         indices=torch.tensor(idx)))
    return out


def test_extract_averages_clips_per_video_and_orders_by_index():
    from dalivssl.engine.features import extract

    # video 5 has clips filled with 1, 2, 3; video 2 with 10, 20, 30 (batch order: 5 then 2)
    clips = torch.zeros(2, 3, 3, 2, 4, 4)
    for k, v in enumerate((1.0, 2.0, 3.0)):
        clips[0, k] = v
        clips[1, k] = 10 * v
    batch = Batch(clips=clips, labels=torch.zeros(2), targets=torch.tensor([1, 0]),
                  indices=torch.tensor([5, 2]))
    dup = Batch(clips=clips[:1] * 100, labels=torch.zeros(1), targets=torch.tensor([1]),
                indices=torch.tensor([5]))  # a padded repeat of video 5: must be ignored
    fn = lambda x: x.mean(dim=(1, 2, 3, 4)).unsqueeze(1).repeat(1, 2)  # noqa: E731 N×2
    out = extract(fn, [batch, dup])
    assert out.indices.tolist() == [2, 5]
    assert out.targets.tolist() == [0, 1]
    assert out.clips.shape == (2, 3, 2)
    np.testing.assert_allclose(out.clips[:, :, 0], [[10, 20, 30], [1, 2, 3]])
    np.testing.assert_allclose(out.video, [[20, 20], [2, 2]])


def test_backbone_features_eval_mode_and_restores_training_flag():
    from dalivssl.engine.features import backbone_features

    bb = TinyBackbone().train()
    before = bb.bn.running_mean.clone()
    out = backbone_features(bb, make_batches([(1, 0, 0), (0, 1, 0), (0, 0, 1)], [0, 1, 2],
                                             clips=2))
    assert out.video.shape == (3, 8) and out.clips is None
    assert bb.training  # restored
    assert torch.equal(bb.bn.running_mean, before)  # ran in eval mode: BN stats untouched


def test_extract_empty_loader_is_a_user_error():
    from dalivssl.engine.features import extract
    from dalivssl.errors import DalivsslError

    with pytest.raises(DalivsslError, match="no videos"):
        extract(lambda x: x, [])
