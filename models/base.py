"""Shared backbone contract (C5) and measuring helpers.

Every backbone maps a clip batch ``x: B×C×T×H×W`` (float) to:

- ``forward_map(x) -> B×D×t×h×w``: the last feature map before global pooling;
- ``forward_features(x) -> B×D``: that map averaged over (t, h, w);
- ``forward(x)``: ``B×num_classes`` logits when a classifier is attached, else the features.

Masked forward (token backbones only, ``can_drop_tokens`` True; the shape of lightly's
``MaskedVisionTransformer.encode(images, idx_keep)``): ``forward_tokens(x, idx_keep=None) ->
B×N_keep×D`` encodes only the tokens ``idx_keep`` (int64 B×N_keep, indices into the backbone's
flattened token grid), and ``forward_features(x, idx_keep)`` is their mean. MAE-style tasks call
these instead of reaching into ``patch_embed`` / position embeddings.

The classifier is ``head_drop`` (Dropout, probability as in the original head) followed by
``classifier`` (``nn.Linear(D, num_classes)``), so ``backbone.classifier.state_dict()`` has the
layout of the finetune head of contract C7.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


class ModelError(ValueError):
    """A backbone name or option the user must fix; one-line message. ``models`` imports nothing
    from ``dalivssl`` (as ``pipelines.loader.LoaderError``), and the CLI reports it as one line,
    exit code 2."""


class Backbone(nn.Module):
    """Base class: subclasses build their layers, set ``feature_dim`` and ``cka_layers``,
    implement ``forward_map`` and finish ``__init__`` with ``self.reset_classifier(...)``."""

    feature_dim: int = 0
    #: submodule names to hook for CKA maps (stem + each block/stage), in forward order.
    cka_layers: list[str]
    #: dropout probability before the classifier in the original code.
    default_dropout: float = 0.0
    #: the smallest T×H×W clip that runs, checked by every command before it builds the net
    #: (adaptive pooling takes any size; C3D, ShuffleNet and the ViTs declare their own).
    min_input: tuple[int, int, int] = (1, 1, 1)
    #: T, H, W must be multiples of these (a ViT's tubelet; convolutions take any size).
    input_multiple: tuple[int, int, int] = (1, 1, 1)
    #: True when ``forward_tokens`` can encode a subset of the tokens (ViTs; CNNs cannot).
    can_drop_tokens: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.cka_layers = []
        self.num_classes: int | None = None
        self.head_drop: nn.Module | None = None
        self.classifier: nn.Linear | None = None

    def reset_classifier(self, num_classes: int | None, dropout: float | None = None) -> None:
        """Attach (or remove with ``None``) a fresh ``Dropout + Linear(feature_dim, num_classes)``."""
        self.num_classes = num_classes
        if num_classes is None:
            self.head_drop, self.classifier = None, None
            return
        p = self.default_dropout if dropout is None else dropout
        self.head_drop = nn.Dropout(p)
        self.classifier = nn.Linear(self.feature_dim, int(num_classes))
        # Efficient-3DCNNs / torchvision both start the linear head small and unbiased.
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor,
                         idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """B×C×T×H×W → B×D (global average pool of ``forward_map``); ``idx_keep`` needs a
        backbone that can drop tokens."""
        if idx_keep is not None:
            return self.forward_tokens(x, idx_keep).mean(dim=1)
        return self.forward_map(x).mean(dim=(2, 3, 4))

    def forward_tokens(self, x: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """B×C×T×H×W → B×N_keep×D encoded tokens (``can_drop_tokens`` backbones only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop tokens (a convolutional "
                                  "backbone); use a ViT (vit_s, vit_b)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x)
        if self.classifier is None:
            return f
        return self.classifier(self.head_drop(f))

    def num_parameters(self, with_classifier: bool = False) -> int:
        """Parameter count; by default the backbone only (what Kumar et al. 2306.06010 report per backbone)."""
        total = count_parameters(self)
        if not with_classifier and self.classifier is not None:
            total -= count_parameters(self.classifier)
        return total


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Sum of ``numel()`` over the module's parameters (shared ones once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module | str, input_shape: Sequence[int] = (1, 3, 16, 112, 112),
                meta: bool = True) -> int:
    """FLOPs of one forward pass, as ``torch.utils.flop_counter.FlopCounterMode`` counts them:
    convolutions, linear layers and matmuls only, 2 FLOPs per multiply-accumulate (BN, activations,
    pooling and additions are not counted). This is the convention of the parameter counts Kumar et al. 2306.06010 report.

    ``module`` may be a registry name (built on the meta device: no memory, no arithmetic, so even
    C3D at 16×112² takes well under a second). With ``meta=True`` a real module is copied to the
    meta device first; with ``meta=False`` it runs for real on its own device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if isinstance(module, str):
        from . import create_backbone

        with torch.device("meta"):
            module = create_backbone(module)
        device = torch.device("meta")
    elif meta:
        import copy

        # deepcopy first: .to() is in-place for modules and the caller keeps its weights.
        module = copy.deepcopy(module).to("meta")
        device = torch.device("meta")
    else:
        device = next(iter(module.parameters())).device
    was_training = module.training
    module.eval()
    x = torch.empty(tuple(input_shape), device=device)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            module(x)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def block_names(module: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Names of the direct children of each container named in ``prefixes`` (e.g. the blocks of
    ``layer1``), in registration order: a helper for building ``cka_layers``."""
    modules = dict(module.named_modules())
    names = []
    for prefix in prefixes:
        names.extend(f"{prefix}.{child}" for child, _ in modules[prefix].named_children())
    return names


def init_conv_bn(module: nn.Module) -> None:
    """He init (fan_out) for convs, BN to identity: the init of Efficient-3DCNNs' MobileNetV2 and
    SqueezeNet (``normal(0, sqrt(2/(k³·out)))``), equivalent to ``kaiming_normal_(fan_out)``."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
