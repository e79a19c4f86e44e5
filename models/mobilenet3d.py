"""3D-MobileNetV2 (Köpüklü et al., "Resource Efficient 3D Convolutional Neural Networks",
ICCVW 2019, Efficient-3DCNNs; after Sandler et al., MobileNetV2, CVPR 2018).

Width 1.0x. Shapes at 3×16×112×112 (C×T×H×W after each setting row):

    features.0  stem 3×3×3 s(1,2,2)   32×16×56×56
    t1 c16  n1 s1                     16×16×56×56
    t6 c24  n2 s2                     24×8×28×28
    t6 c32  n3 s2                     32×4×14×14
    t6 c64  n4 s2                     64×2×7×7
    t6 c96  n3 s1                     96×2×7×7
    t6 c160 n3 s2                    160×1×4×4
    t6 c320 n1 s1                    320×1×4×4
    features.18 1×1×1 conv          1280×1×4×4 → mean → 1280

Head: Dropout(0.2) → Linear(1280, n).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, init_conv_bn

#: (expansion t, channels c, repeats n, stride of the first block s)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(inp: int, out: int, kernel: int, stride=1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(inp, out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm3d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """[1×1×1 expand + BN + ReLU6] → depthwise 3×3×3 + BN + ReLU6 → 1×1×1 project + BN,
    plus the input when the stride is 1 and the width is unchanged."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = round(inp * expand)
        self.use_res = stride == 1 and inp == out
        layers = [] if expand == 1 else list(_conv_bn_relu6(inp, hidden, 1))
        layers += [nn.Conv3d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
                   nn.BatchNorm3d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv3d(hidden, out, 1, bias=False), nn.BatchNorm3d(out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNet3D(Backbone):
    """3D-MobileNetV2; ``feature_dim`` = 1280 (scaled only when width_mult > 1)."""

    default_dropout = 0.2

    def __init__(self, num_classes: int | None = None, width_mult: float = 1.0,
                 dropout: float | None = None):
        super().__init__()
        inp = int(32 * width_mult)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        features = [_conv_bn_relu6(3, inp, 3, stride=(1, 2, 2))]
        for t, c, n, s in SETTINGS:
            out = int(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features.append(_conv_bn_relu6(inp, last, 1))
        self.features = nn.Sequential(*features)
        self.feature_dim = last
        self.cka_layers = [f"features.{i}" for i in range(len(self.features))]
        init_conv_bn(self)
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
