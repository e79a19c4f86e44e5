"""C3D with batch norm (Tran et al., "Learning Spatiotemporal Features with 3D Convolutional
Networks", ICCV 2015), in the form used by VCOP (Xu et al., "Self-supervised Spatiotemporal
Learning via Video Clip Order Prediction", CVPR 2019): BN after every conv, fc6/fc7 removed,
pool5 = global average pool. Shapes at 3×16×112×112:

    conv1  64×16×112×112 → pool1 (1,2,2) 64×16×56×56
    conv2 128×16×56×56   → pool2 (2,2,2) 128×8×28×28
    conv3a/b 256×8×28×28 → pool3 256×4×14×14
    conv4a/b 512×4×14×14 → pool4 512×2×7×7
    conv5a/b 512×2×7×7   → mean → 512

Head: Linear(512, n) (no dropout, as in VCOP).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone

#: (name, in, out, pool after it: kernel = stride, or None)
LAYERS = (("1", 3, 64, (1, 2, 2)), ("2", 64, 128, (2, 2, 2)),
          ("3a", 128, 256, None), ("3b", 256, 256, (2, 2, 2)),
          ("4a", 256, 512, None), ("4b", 512, 512, (2, 2, 2)),
          ("5a", 512, 512, None), ("5b", 512, 512, None))


class C3D(Backbone):
    """C3D-BN backbone (VCOP naming: conv1, bn1, relu1, pool1, …, conv5b); ``feature_dim`` = 512."""

    min_input = (8, 16, 16)  # pool5's 2×2×2 window after four stride-2 pools

    def __init__(self, num_classes: int | None = None, dropout: float | None = None):
        super().__init__()
        self._order = []
        for name, cin, cout, pool in LAYERS:
            setattr(self, f"conv{name}", nn.Conv3d(cin, cout, 3, padding=1))
            setattr(self, f"bn{name}", nn.BatchNorm3d(cout))
            setattr(self, f"relu{name}", nn.ReLU())
            self._order += [f"conv{name}", f"bn{name}", f"relu{name}"]
            if pool is not None:
                setattr(self, f"pool{name[0]}", nn.MaxPool3d(pool, stride=pool))
                self._order.append(f"pool{name[0]}")
        self.feature_dim = 512
        self.cka_layers = [f"relu{name}" for name, *_ in LAYERS]
        self.reset_classifier(num_classes, dropout)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        return x
