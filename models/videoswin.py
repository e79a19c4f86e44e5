"""Video Swin Transformer, tiny (Liu et al., "Video Swin Transformer", CVPR 2022), built with
torchvision's ``swin3d_t`` (random init, ``weights=None``; nothing is downloaded).

Patch embedding 3→96 with kernel = stride = (2,4,4) halves T once; PatchMerging then halves H, W.
Depths [2,2,6,2], heads [3,6,12,24], window (8,7,7), stochastic depth 0.1. torchvision keeps
tokens channels-last; ``forward_map`` returns channels-first. Shapes at 3×16×112×112
(torchvision's B×T×H×W×C):

    patch_embed  8×28×28×96
    features.0   8×28×28×96     features.1 (merge) 8×14×14×192
    features.2   8×14×14×192    features.3 (merge) 8×7×7×384
    features.4   8×7×7×384      features.5 (merge) 8×4×4×768
    features.6   8×4×4×768  → norm → forward_map B×768×8×4×4 → mean → 768

Windows larger than the token grid are clipped by torchvision, so small inputs (e.g. 8×32×32)
work. Backbone = everything but torchvision's Linear(768, 400) head (27,850,470 params).
Head here: Linear(768, n), no dropout (torchvision's default).
"""
from __future__ import annotations

import torch

from .base import Backbone


class VideoSwin(Backbone):
    """Wraps a torchvision ``SwinTransformer3d`` (its ``head`` is dropped); module names keep
    torchvision's (``patch_embed``, ``features.k``, ``norm``) so its state dicts load."""

    def __init__(self, net, num_classes: int | None = None, dropout: float | None = None):
        super().__init__()
        self.patch_embed = net.patch_embed
        self.pos_drop = net.pos_drop
        self.features = net.features
        self.norm = net.norm
        self.feature_dim = net.head.in_features
        self.cka_layers = ["patch_embed"] + [f"features.{i}" for i in range(len(self.features))]
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.features(self.pos_drop(self.patch_embed(x))))  # B×t×h×w×D
        return x.permute(0, 4, 1, 2, 3)


def swin3d_t(num_classes: int | None = None, dropout: float | None = None,
             stochastic_depth_prob: float = 0.1) -> VideoSwin:
    """VideoSwin-T backbone; ``feature_dim`` = 768."""
    from torchvision.models.video import swin3d_t as tv_swin3d_t
    from torchvision.ops import StochasticDepth

    net = tv_swin3d_t(weights=None)
    # swin3d_t fixes the rate at 0.1 (ramped linearly over the blocks); rescale the ramp.
    for m in net.modules():
        if isinstance(m, StochasticDepth):
            m.p = m.p * stochastic_depth_prob / 0.1
    return VideoSwin(net, num_classes=num_classes, dropout=dropout)
