"""3D-SqueezeNet v1.1 (Köpüklü et al., "Resource Efficient 3D Convolutional Neural Networks",
ICCVW 2019, Efficient-3DCNNs; after Iandola et al., SqueezeNet, 2016).

Every conv keeps its bias and is followed by BN. Shapes at 3×16×112×112:

    features.0-2 conv 3×3×3 s(1,2,2) + BN + ReLU   64×16×56×56
    features.3  maxpool (k3 s2 p1)                 64×8×28×28
    features.4-5 Fire, Fire+bypass                128×8×28×28  → maxpool 128×4×14×14
    features.7-8 Fire, Fire+bypass                256×4×14×14  → maxpool 256×2×7×7
    features.10-11 Fire, Fire+bypass              384×2×7×7    → maxpool 384×1×4×4
    features.13-14 Fire, Fire+bypass              512×1×4×4    → mean → 512

The original head is Dropout(0.5) → Conv3d(512, n, 1) → ReLU → AvgPool; here it is
Dropout(0.5) → Linear(512, n) on the pooled feature (the 1×1×1 conv commutes with the average;
the ReLU on the logits is dropped because it clips negative logits).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, init_conv_bn


class Fire(nn.Module):
    """squeeze 1×1×1 + BN + ReLU → [expand 1×1×1 + BN ‖ expand 3×3×3 + BN] → (+x) → ReLU."""

    def __init__(self, inp: int, squeeze: int, expand: int, bypass: bool = False):
        super().__init__()
        self.bypass = bypass
        self.squeeze = nn.Conv3d(inp, squeeze, 1)
        self.squeeze_bn = nn.BatchNorm3d(squeeze)
        self.expand1x1 = nn.Conv3d(squeeze, expand, 1)
        self.expand1x1_bn = nn.BatchNorm3d(expand)
        self.expand3x3 = nn.Conv3d(squeeze, expand, 3, padding=1)
        self.expand3x3_bn = nn.BatchNorm3d(expand)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1_bn(self.expand1x1(s)), self.expand3x3_bn(self.expand3x3(s))], 1)
        if self.bypass:
            out = out + x
        return self.relu(out)


class SqueezeNet3D(Backbone):
    """3D-SqueezeNet v1.1 with bypass Fires; ``feature_dim`` = 512."""

    default_dropout = 0.5

    def __init__(self, num_classes: int | None = None, dropout: float | None = None):
        super().__init__()
        pool = lambda: nn.MaxPool3d(3, stride=2, padding=1)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv3d(3, 64, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(64), nn.ReLU(inplace=True),
            pool(),
            Fire(64, 16, 64), Fire(128, 16, 64, bypass=True), pool(),
            Fire(128, 32, 128), Fire(256, 32, 128, bypass=True), pool(),
            Fire(256, 48, 192), Fire(384, 48, 192, bypass=True), pool(),
            Fire(384, 64, 256), Fire(512, 64, 256, bypass=True),
        )
        self.feature_dim = 512
        # stem output (after its ReLU) + every Fire module
        self.cka_layers = ["features.2"] + [f"features.{i}" for i, m in enumerate(self.features)
                                            if isinstance(m, Fire)]
        init_conv_bn(self)
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
