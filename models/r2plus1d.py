"""R(2+1)D-10 (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
Recognition", CVPR 2018) as built by VCOP (Xu et al., CVPR 2019) with layer_sizes (1, 1, 1, 1):
the R3D-10 layout of ``models.r3d`` with every t×d×d conv (N_in→N_out) factored into

    1×d×d (N_in→M, stride (1,s,s)) → BN → ReLU → t×1×1 (M→N_out, stride (s,1,1))

where M = floor(t·d²·N_in·N_out / (d²·N_in + t·N_out)) is computed per conv (Tran §3.5: the
factored conv has the parameter count of the 3D conv). Stem 3×7×7 3→64: M = 83; shortcut
1×1×1 convs: M = floor(N_in·N_out / (N_in+N_out)) (42/85/170). Shapes equal R3D-10's:
64×16×56×56 → 64×16×56×56 → 128×8×28×28 → 256×4×14×14 → 512×2×7×7 → 512.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _triple

from .r3d import VCOPResNet


def mid_channels(kernel, cin: int, cout: int) -> int:
    """Tran et al. 2018 §3.5: the width M that matches the parameters of the t×d×d conv."""
    t, d, _ = _triple(kernel)
    return (t * d * d * cin * cout) // (d * d * cin + t * cout)


class SpatioTemporalConv(nn.Module):
    """(2+1)D conv: spatial 1×d×d → BN → ReLU → temporal t×1×1, no biases."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        k, s, p = _triple(kernel), _triple(stride), _triple(padding)
        mid = mid_channels(k, cin, cout)
        self.spatial_conv = nn.Conv3d(cin, mid, (1, k[1], k[2]), stride=(1, s[1], s[2]),
                                      padding=(0, p[1], p[2]), bias=False)
        self.bn = nn.BatchNorm3d(mid)
        self.relu = nn.ReLU()
        self.temporal_conv = nn.Conv3d(mid, cout, (k[0], 1, 1), stride=(s[0], 1, 1),
                                       padding=(p[0], 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


class R2Plus1D(VCOPResNet):
    """R(2+1)D-10 backbone (14,365,303 params); ``feature_dim`` = 512."""

    conv_type = SpatioTemporalConv
