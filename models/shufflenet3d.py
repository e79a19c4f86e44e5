"""3D-ShuffleNetV1 (Köpüklü et al., "Resource Efficient 3D Convolutional Neural Networks",
ICCVW 2019, Efficient-3DCNNs; after Zhang et al., ShuffleNet, CVPR 2018).

Benchmark setting: groups 3, width 2.0x. Shapes at 3×16×112×112:

    conv1 (3×3×3 s(1,2,2)) 48×16×56×56 → maxpool (s2) 48×8×28×28
    layer1 (4 blocks)  480×4×14×14
    layer2 (8 blocks)  960×2×7×7
    layer3 (4 blocks) 1920×1×4×4 → mean → 1920

Quirks kept from the reference code: the first 1×1×1 conv of a block is ungrouped only when its
input has exactly 24 channels, so at 2.0x (48-channel stem) it is grouped too; the stride-2 block
concatenates an AvgPool3d((2,3,3), s2, p(0,1,1)) shortcut to a main branch of ``out − in``
channels. Head: Dropout(0.2) → Linear(1920, n).

Init: the reference's (every BN γ = 1) by default. ``zero_init_residual=True`` (not in the
reference; the demo preset of ``dalivssl.tasks`` uses it) starts the last BN γ of every residual
(stride-1) block at zero ("zero-γ", Goyal et al. 2017; torchvision's ``zero_init_residual``).
With γ = 1 each of the 13 residual adds, followed by a ReLU, grows the residual stream: untrained
pooled features have |f| ≈ 66 at 16×64² (vs 9–18 for the other backbones), and SGD at VCOP's lr
1e-3 then overshoots on any linear head (its effective step scales with |f|²; the loss rises
instead of falling). Zero-γ starts every block as the identity and gives |f| ≈ 18.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, ModelError, block_names

#: stage output widths at 1.0x for each group count (stem is 24 at 1.0x).
STAGE_WIDTHS = {1: (144, 288, 567), 2: (200, 400, 800), 3: (240, 480, 960),
                4: (272, 544, 1088), 8: (384, 768, 1536)}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """B×(g·c)×T×H×W → same shape, channels interleaved across the g groups."""
    b, c, t, h, w = x.shape
    return x.view(b, groups, c // groups, t, h, w).transpose(1, 2).reshape(b, c, t, h, w)


class ShuffleBlock(nn.Module):
    """Grouped 1×1×1 → shuffle → depthwise 3×3×3 (stride s) → grouped 1×1×1, then add (s=1)
    or concat with an average-pooled input (s=2), then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid = out_planes // 4
        if stride == 2:
            out_planes -= in_planes  # the pooled input supplies the remaining channels
        g1 = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv3d(in_planes, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm3d(mid)
        self.conv3 = nn.Conv3d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm3d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            self.shortcut = nn.AvgPool3d((2, 3, 3), stride=2, padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return self.relu(torch.cat([out, self.shortcut(x)], 1))
        return self.relu(out + x)


class ShuffleNet3D(Backbone):
    """3D-ShuffleNetV1; ``feature_dim`` = last stage width (1920 at g=3, 2.0x)."""

    default_dropout = 0.2
    # the stride-2 AvgPool shortcut needs T ≥ 2 and H, W ≥ 3 before layer3: T ≥ 15, H, W ≥ 33
    min_input = (15, 33, 33)

    def __init__(self, num_classes: int | None = None, groups: int = 3, width_mult: float = 2.0,
                 dropout: float | None = None, zero_init_residual: bool = False):
        super().__init__()
        if groups not in STAGE_WIDTHS:
            raise ModelError(f"shufflenet groups must be one of {sorted(STAGE_WIDTHS)}, got {groups}")
        widths = [int(c * width_mult) for c in (24, *STAGE_WIDTHS[groups])]
        self.groups = groups
        self.conv1 = nn.Sequential(
            nn.Conv3d(3, widths[0], 3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        in_planes = widths[0]
        for i, (out_planes, n) in enumerate(zip(widths[1:], (4, 8, 4)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(ShuffleBlock(in_planes, out_planes, 2 if j == 0 else 1, groups))
                in_planes = out_planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.feature_dim = in_planes
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ShuffleBlock) and m.stride == 1:
                    nn.init.zeros_(m.bn3.weight)
        self.cka_layers = ["conv1", *block_names(self, ["layer1", "layer2", "layer3"])]
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.layer3(self.layer2(self.layer1(x)))
