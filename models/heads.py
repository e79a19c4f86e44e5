"""Pretext-task heads, named by shape. They take backbone outputs (pooled B×D features or the
B×D×t×h×w map) and never reach into a backbone.

References: Kumar et al. (arXiv 2306.06010) and each task's original paper and repository
(cited in ``dalivssl/tasks/``).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Dropout → Linear(D, n): B×D → B×n (RotNet, 3DRotNet/CtP: dropout 0.5)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(x))


class EmbeddingHead(nn.Module):
    """Linear(D, dim) → L2 normalise: B×D → B×dim on the unit sphere (MoCo heads: TDL id_head,
    RSPNet fc1/fc2)."""

    def __init__(self, in_dim: int, dim: int = 128):
        super().__init__()
        self.fc = nn.Linear(in_dim, dim)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=1)


def check_at_least(**bounds) -> None:
    """``name=(value, minimum)``: a ValueError naming the first option below its minimum (the
    trainer reports it in one line as '<task> head: …'); a zero width would train nothing."""
    for name, (value, low) in bounds.items():
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


class MLPProjection(nn.Module):
    """CVRL/SimCLR projection: ``layers`` × [Linear(hidden) → BN → ReLU] → Linear(out_dim).
    B×D → B×out_dim (not normalised; the loss normalises)."""

    def __init__(self, in_dim: int, hidden: int = 2048, out_dim: int = 128, layers: int = 3,
                 bn_momentum: float = 0.003):
        super().__init__()
        check_at_least(hidden=(hidden, 1), out_dim=(out_dim, 1), layers=(layers, 0))
        mods, d = [], in_dim
        for _ in range(layers):
            # TF BN momentum 0.997 (decay of the running mean) == torch momentum 0.003
            mods += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden, eps=1e-5, momentum=bn_momentum),
                     nn.ReLU(inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


class PairwiseOrderHead(nn.Module):
    """VCOP (Xu et al., CVPR 2019) order head over K clip features.

    B×K×D → [feature norm] → for every pair i<j: [f_i, f_j] → Linear(2D, hidden) + ReLU (shared)
    → concat the C(K,2) pair vectors → Dropout → Linear(hidden·C(K,2), K!) → B×K! logits.

    ``feature_norm`` (not in the original): ``"batch"`` standardises every feature dimension over
    the B·K clips of the batch (BatchNorm1d), ``"layer"`` normalises each clip feature on its own
    (LayerNorm), ``"none"`` is the original. Untrained pooled features share a large common part
    (cosine ≈ 0.65–0.9 between any two clips) and the order cue is a small difference on top of
    it; standardising per dimension makes that difference visible to the first SGD steps.
    """

    NORMS = ("none", "layer", "batch")

    def __init__(self, in_dim: int, num_clips: int, hidden: int = 512, dropout: float = 0.5,
                 feature_norm: str = "none"):
        super().__init__()
        check_at_least(num_clips=(num_clips, 2), hidden=(hidden, 1))
        if feature_norm not in self.NORMS:
            raise ValueError(f"feature_norm must be one of {', '.join(self.NORMS)}, "
                             f"got {feature_norm!r}")
        self.norm = (nn.Identity() if feature_norm == "none" else
                     nn.LayerNorm(in_dim) if feature_norm == "layer" else nn.BatchNorm1d(in_dim))
        self.pairs = list(itertools.combinations(range(num_clips), 2))
        self.fc7 = nn.Linear(2 * in_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc8 = nn.Linear(hidden * len(self.pairs), math.factorial(num_clips))

    def forward(self, feats):  # feats: B×K×D
        feats = self.norm(feats.flatten(0, 1)).view_as(feats)
        i, j = zip(*self.pairs)
        pair = torch.cat([feats[:, list(i)], feats[:, list(j)]], dim=2)  # B×P×2D
        h = F.relu(self.fc7(pair)).flatten(1)  # B×(P·hidden)
        return self.fc8(self.dropout(h))


def _conv_bn_relu(cin, cout, k=3):
    return nn.Sequential(nn.Conv3d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class ConvClassifier(nn.Module):
    """PRP classification branch: conv6 (3×3×3 Conv + BN + ReLU) → global pool → Linear.
    B×D×t×h×w → B×n."""

    def __init__(self, in_dim: int, num_classes: int, width: int = 512):
        super().__init__()
        self.conv6 = _conv_bn_relu(in_dim, width)
        self.fc8 = nn.Linear(width, num_classes)

    def forward(self, fmap):
        return self.fc8(self.conv6(fmap).mean(dim=(2, 3, 4)))


class VideoDecoder(nn.Module):
    """PRP reconstruction decoder (SSCN conv6_rec + up3d blocks): B×D×t×h×w → B×3×T'×H'×W'.

    conv6_rec (Conv+BN+ReLU, D→width) then ``n_up`` blocks of [ConvTranspose3d ×2 (per axis that
    still needs it) → Conv+BN+ReLU], channels halving down to 64, then Conv(→3)+BN+ReLU (ReLU: the
    [0,1] targets are non-negative). The number of ×2 steps per axis is log2(target/map), rounded
    up, so backbones of any stride work; a final trilinear resize lands exactly on ``out_size``.
    The original (C3D, 2×7×7 → 32×112×112) has four ×2 steps on every axis.
    """

    def __init__(self, in_dim: int, map_size, out_size, width: int = 512):
        super().__init__()
        self.out_size = tuple(int(s) for s in out_size)
        ups = [max(0, math.ceil(math.log2(o / m))) for o, m in zip(self.out_size, map_size)]
        self.conv6 = _conv_bn_relu(in_dim, width)
        blocks, c, floor = [], width, max(8, width // 8)
        for b in range(max(ups)):
            stride = tuple(2 if b < u else 1 for u in ups)
            cout = max(floor, c // 2)
            blocks.append(nn.Sequential(nn.ConvTranspose3d(c, cout, stride, stride=stride),
                                        _conv_bn_relu(cout, cout)))
            c = cout
        self.up = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.Conv3d(c, 3, 3, padding=1, bias=False), nn.BatchNorm3d(3),
                                 nn.ReLU(inplace=True))

    def forward(self, fmap):
        x = self.out(self.up(self.conv6(fmap)))
        if tuple(x.shape[2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="trilinear", align_corners=False)
        return x
