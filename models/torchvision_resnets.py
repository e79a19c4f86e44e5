"""torchvision's 18-layer video ResNets (Tran et al., "A Closer Look at Spatiotemporal
Convolutions for Action Recognition", CVPR 2018), random init (``weights=None``), without ``fc``:

- ``r3d_18``: full 3D convs everywhere;
- ``mc3_18``: 3D convs in the stem and layer1, then 1×3×3 convs with stride (1,2,2) (mixed
  convolutions): T is never downsampled, the last map is 512×16×7×7;
- ``r2plus1d_18``: (2+1)D convs; midplanes = (in·out·27)//(9·in + 3·out) once per block
  (both convs share it, unlike VCOP's per-conv M), stem 3→45 (1×7×7) → 45→64 (3×1×1).

Shapes at 3×16×112×112 (r3d_18, r2plus1d_18): stem 64×16×56×56 → layer1 64×16×56×56 →
layer2 128×8×28×28 → layer3 256×4×14×14 → layer4 512×2×7×7 → mean → 512.
Head: Linear(512, n), no dropout.
Module names keep torchvision's (``stem``, ``layerK.i``) so its state dicts load.
"""
from __future__ import annotations

import torch

from .base import Backbone, block_names


class TorchvisionVideoResNet(Backbone):
    """Wraps a torchvision ``VideoResNet``: stem + layer1..4 (``avgpool``/``fc`` dropped)."""

    def __init__(self, net, num_classes: int | None = None, dropout: float | None = None):
        super().__init__()
        self.stem = net.stem
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.cka_layers = ["stem", *block_names(self, [f"layer{i}" for i in range(1, 5)])]
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _build(name: str, num_classes: int | None, dropout: float | None) -> TorchvisionVideoResNet:
    from torchvision.models import video

    return TorchvisionVideoResNet(getattr(video, name)(weights=None), num_classes, dropout)


def r3d_18(num_classes: int | None = None, dropout: float | None = None) -> TorchvisionVideoResNet:
    """torchvision R3D-18 backbone (33,166,272 params); ``feature_dim`` = 512."""
    return _build("r3d_18", num_classes, dropout)


def mc3_18(num_classes: int | None = None, dropout: float | None = None) -> TorchvisionVideoResNet:
    """torchvision MC3-18 backbone (11,490,240 params); ``feature_dim`` = 512."""
    return _build("mc3_18", num_classes, dropout)


def r2plus1d_18(num_classes: int | None = None, dropout: float | None = None) -> TorchvisionVideoResNet:
    """torchvision R(2+1)D-18 backbone (31,300,125 params); ``feature_dim`` = 512."""
    return _build("r2plus1d_18", num_classes, dropout)
