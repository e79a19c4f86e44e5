"""R3D-10 (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
CVPR 2018) as built by VCOP (Xu et al., CVPR 2019): ``R3DNet(layer_sizes=(1, 1, 1, 1))``.
Convs have no bias. Shapes at 3×16×112×112:

    conv1 (3×7×7 s(1,2,2) p(1,3,3)) + BN + ReLU, no max-pool   64×16×56×56
    conv2 (1 BasicBlock)                                        64×16×56×56
    conv3 (stride 2 in T,H,W; 1×1×1 s2 conv + BN shortcut)    128×8×28×28
    conv4                                                      256×4×14×14
    conv5                                                      512×2×7×7 → mean → 512

``layer_sizes=(2, 2, 2, 2)`` gives R3D-18 (33.17M, same as torchvision r3d_18).
Head: Linear(512, n). Module names follow VCOP (``conv2.block1.conv1`` …).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .base import Backbone, ModelError


class Conv3x3x3(nn.Module):
    """Full 3D conv without bias (VCOP's ``SpatioTemporalConv`` of R3D is a plain Conv3d)."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.temporal_spatial_conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding,
                                               bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_spatial_conv(x)


class ResBlock(nn.Module):
    """conv(s) + BN + ReLU → conv + BN, plus the input (through conv(1, s2) + BN when
    downsampling), then ReLU. ``conv`` builds a (cin, cout, kernel, stride, padding) conv."""

    def __init__(self, cin: int, cout: int, downsample: bool, conv: Callable[..., nn.Module]):
        super().__init__()
        self.downsample = downsample
        stride = 2 if downsample else 1
        if downsample:
            self.downsampleconv = conv(cin, cout, 1, stride=2)
            self.downsamplebn = nn.BatchNorm3d(cout)
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(cout)
        self.outrelu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.downsample:
            x = self.downsamplebn(self.downsampleconv(x))
        return self.outrelu(x + res)


class ResLayer(nn.Module):
    """``block1`` (maybe downsampling) followed by ``blocks`` (n−1 plain blocks)."""

    def __init__(self, cin: int, cout: int, n: int, downsample: bool, conv: Callable[..., nn.Module]):
        super().__init__()
        self.block1 = ResBlock(cin, cout, downsample, conv)
        self.blocks = nn.ModuleList(ResBlock(cout, cout, False, conv) for _ in range(n - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)
        for block in self.blocks:
            x = block(x)
        return x


class VCOPResNet(Backbone):
    """Shared body of VCOP's R3D and R(2+1)D: stem + conv2..conv5 of ``layer_sizes`` blocks."""

    conv_type: Callable[..., nn.Module] = Conv3x3x3

    def __init__(self, num_classes: int | None = None, layer_sizes: Sequence[int] = (1, 1, 1, 1),
                 dropout: float | None = None):
        super().__init__()
        if len(layer_sizes) != 4 or min(layer_sizes) < 1:
            raise ModelError(f"layer_sizes must be 4 positive block counts, got {tuple(layer_sizes)}")
        conv = type(self).conv_type
        self.conv1 = conv(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3))
        self.bn1 = nn.BatchNorm3d(64)
        self.relu1 = nn.ReLU()
        widths = (64, 64, 128, 256, 512)
        for i, n in enumerate(layer_sizes):
            setattr(self, f"conv{i + 2}", ResLayer(widths[i], widths[i + 1], n, i > 0, conv))
        self.feature_dim = 512
        self.cka_layers = ["relu1"] + [name for name, m in self.named_modules()
                                       if isinstance(m, ResBlock)]
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


class R3D(VCOPResNet):
    """R3D-10 backbone; ``feature_dim`` = 512."""

    conv_type = Conv3x3x3
