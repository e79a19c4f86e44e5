"""3D backbones of the benchmark (Kumar et al., arXiv 2306.06010), contract C5.

``create_backbone(name, num_classes=None, **kw)`` returns a :class:`models.base.Backbone`:
``forward_features(x: B×C×T×H×W) -> B×D``, ``forward_map(x) -> B×D×t×h×w``, ``forward(x)``
(logits when ``num_classes`` is set, else features), ``feature_dim`` and ``cka_layers``.
Random init only. torchvision is imported only when a torchvision backbone is built.
"""
from __future__ import annotations

import inspect

from .base import Backbone, ModelError, count_flops, count_parameters
from .c3d import C3D
from .mobilenet3d import MobileNet3D
from .r2plus1d import R2Plus1D
from .r3d import R3D
from .shufflenet3d import ShuffleNet3D
from .squeezenet3d import SqueezeNet3D
from .torchvision_resnets import mc3_18, r2plus1d_18, r3d_18
from .videoswin import swin3d_t
from .vit3d import vit_b, vit_s

BACKBONES = {
    "shufflenet": ShuffleNet3D,   # 3D-ShuffleNetV1 2.0x g3, 1920-d
    "mobilenet": MobileNet3D,     # 3D-MobileNetV2 1.0x, 1280-d
    "squeezenet": SqueezeNet3D,   # 3D-SqueezeNet v1.1, 512-d
    "c3d": C3D,                   # C3D-BN (VCOP), 512-d
    "r3d": R3D,                   # R3D-10 (VCOP), 512-d
    "r21d": R2Plus1D,             # R(2+1)D-10 (VCOP), 512-d
    "swin": swin3d_t,             # torchvision VideoSwin-T, 768-d
    "r3d_18": r3d_18,             # torchvision, 512-d
    "mc3_18": mc3_18,             # torchvision, 512-d
    "r2plus1d_18": r2plus1d_18,   # torchvision, 512-d
    "vit_s": vit_s,               # ViT-S, 2×16×16 tubelets (VideoMAE), 384-d, drops tokens
    "vit_b": vit_b,               # ViT-B, 2×16×16 tubelets (VideoMAE), 768-d, drops tokens
}


def create_backbone(name: str, num_classes: int | None = None, **kw) -> Backbone:
    """Build backbone ``name`` (a BACKBONES key) with random weights. ``kw`` are the builder's
    options (e.g. ``dropout``, ``groups``/``width_mult`` for shufflenet, ``layer_sizes`` for
    r3d/r21d); an unknown name or option raises :class:`ModelError`."""
    if name not in BACKBONES:
        raise ModelError(f"unknown architecture {name!r}; valid: {', '.join(sorted(BACKBONES))}")
    builder = BACKBONES[name]
    params = inspect.signature(builder).parameters
    bad = sorted(k for k in kw if k not in params or k in ("self", "net", "num_classes"))
    if bad:
        valid = sorted(k for k in params if k not in ("self", "net", "num_classes"))
        raise ModelError(f"architecture {name!r} has no option {', '.join(bad)}; "
                            f"valid: {', '.join(valid) or 'none'}")
    return builder(num_classes=num_classes, **kw)


__all__ = ["BACKBONES", "Backbone", "ModelError", "create_backbone", "count_flops",
           "count_parameters"]
