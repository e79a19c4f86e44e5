"""RotNet for video (3DRotNet, Jing & Tian, arXiv 1811.11387; reference: microsoft/CtP rot3d).

One clip per video, rotated by 90°·r in the loader; the backbone predicts r.
Batch: clips B×1×C×T×H×W (ImageNet-normalised), labels B (rotation class).
Head: pooled feature B×D → Dropout 0.5 → Linear(D, num_rotations). Loss: cross-entropy.
"""
from __future__ import annotations

import torch.nn.functional as F

from models.heads import LinearHead

SPEC = {
    "sampler": "rotnet",
    # complexity knob (Kumar et al.): 2 / 3 / 4 rotations
    "sampler_opts": {"num_rotations": 4},
    "complexity": "num_rotations",
    "levels": {"C1": 2, "C2": 3, "C3": 4},  # the study's C1 < C2 < C3 of the knob (Kumar et al. §4.2)
    # BN over the global batch under DDP (CtP pretraining_runtime_ucf.py: syncbn = True)
    "sync_bn": True,
    # CtP: SGD 0.01, momentum 0.9, wd 1e-4, grad-norm clip 40, ×0.1 at epochs 100/200 of 300
    # (batch 32); kept at batch 8: the step decay is expressed as fractions of the run.
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "step", "milestones": (1 / 3, 2 / 3), "gamma": 0.1},
    "grad_clip": 40.0,
}

# The original's settings (microsoft/CtP rot3d; spec §1), by the names of --explain.
ORIGINAL = {
    "clip_len": 16, "size": 112, "batch_size": "32 (4/GPU × 8)", "epochs": 300,
    "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step",
    "milestones": (1 / 3, 2 / 3), "gamma": 0.1, "grad_clip": 40.0, "sync_bn": True,
    "sampler.num_rotations": 4, "sampler.strides": (1, 2, 3, 4, 5), "sampler.stride": None,
    "sampler.temporal_jitter": True, "head.num_classes": 4, "head.dropout": 0.5,
}
DIFFERENCES = (
    "No official 3DRotNet code exists: the reference is CtP's re-implementation.",
    "Brightness is a factor 1 ± 0.25 (CtP adds ±32 grey levels); hue wraps round the colour "
    "circle (CtP clips the OpenCV H channel).",
    "lr 0.01 is kept at batch 8 (CtP: batch 32); the ×0.1 steps fall at 1/3 and 2/3 of the run.",
)


HEAD_RANGES = {"dropout": "[0,1)"}  # checked before building (check_head_values)


def build_head(backbone, num_classes: int = 4, dropout: float = 0.5):
    """LinearHead(feature_dim → num_classes); ``num_classes`` = the sampler's num_rotations."""
    return LinearHead(backbone.feature_dim, num_classes, dropout)


def step(backbone, head, batch) -> dict:
    x = batch.clips[:, 0]  # B×C×T×H×W
    logits = head(backbone.forward_features(x))
    loss = F.cross_entropy(logits, batch.labels)
    acc = (logits.argmax(1) == batch.labels).float().mean()
    return {"loss": loss, "acc": acc.detach()}
