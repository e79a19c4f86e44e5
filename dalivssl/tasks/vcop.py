"""VCOP: video clip order prediction (Xu et al., CVPR 2019; xudejing/video-clip-order-prediction).

K clips of one tuple are shuffled in the loader; the label is the index of the permutation in
lexicographic ``itertools.permutations(range(K))`` order.
Batch: clips B×K×C×T×H×W in [0,1], labels B ∈ [0, K!).
Backbone: one pass per tuple position k over the B clips at that position (the original's
VCOPN.forward loops over the tuple), so BN statistics come from B clips, never from a tuple's
K clips together (``backbone_pass="position"``; "joint", one pass over the B·K clips, is the demo
preset's).
Head: PairwiseOrderHead: shared backbone feature per clip, for each pair i<j Linear(2D,512)+ReLU,
concat the C(K,2) pairs, Dropout 0.5, Linear(512·C(K,2), K!). Loss: cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.heads import PairwiseOrderHead

SPEC = {
    "sampler": "vcop",
    # complexity knob (Kumar et al.): 3 / 4 / 5 clips → 6 / 24 / 120 classes
    "sampler_opts": {"num_clips": 3},
    "complexity": "num_clips",
    "levels": {"C1": 3, "C2": 4, "C3": 5},  # the study's C1 < C2 < C3 of the knob (Kumar et al. §4.2)
    # VCOP: SGD 1e-3, momentum 0.9, wd 5e-4, batch 8; the plateau scheduler is never stepped, so
    # the lr is constant. Batch 8 is already small: kept as is.
    "optimizer": {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "constant"},
}

# The original's settings (xudejing/video-clip-order-prediction train_vcop.py; spec §2).
ORIGINAL = {
    "clip_len": 16, "size": 112, "batch_size": 8, "epochs": 300, "optimizer": "sgd",
    "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant",
    "sampler.num_clips": 3, "sampler.interval": 8, "sampler.brightness": 0.0,
    "head.num_clips": 3, "head.hidden": 512, "head.dropout": 0.5, "head.feature_norm": "none",
    "head.backbone_pass": "position",
}
DIFFERENCES = (
    "No 800-video validation split and no best-validation-loss checkpoint (the last is kept).",
    "The benchmark halves the batch per added clip; set --batch-size yourself.",
    "Too-short videos are skipped at load time instead of pre-filtered split lists.",
)
# Demo preset (no --data): standardised clip features and BN over whole tuples make the first
# CPU steps learn (figures in build_head).
DEMO = {"head": {"feature_norm": "batch", "backbone_pass": "joint"}}
BACKBONE_PASSES = ("position", "joint")


HEAD_RANGES = {  # checked before building (tasks.check_head_values)
    "hidden": "int>=1", "dropout": "[0,1)"}


def build_head(backbone, num_clips: int = 3, hidden: int = 512, dropout: float = 0.5,
               feature_norm: str = "none", backbone_pass: str = "position"):
    """``num_clips`` = the sampler's K (number of classes K!). ``feature_norm``: "none" (default,
    the original), "batch" or "layer" (not in the original): see PairwiseOrderHead.
    ``backbone_pass``: "position" (default, the original: K backbone passes of B clips) or
    "joint" (one pass of B·K clips: BN statistics over whole tuples).

    The demo preset uses "batch" and "joint". Measured on the embedded dataset (ShuffleNet zero-γ,
    16×64², batch 8, SGD 1e-3, 56 steps): feature_norm "none" keeps the loss at ln 6 over the
    first epoch, "batch" brings it from 1.72 to 1.13 within 42 steps; with "batch", the mean loss
    of the last 10 steps is 1.28 with "position" and 0.87 with "joint" (first 10: 1.77, 1.76)."""
    if backbone_pass not in BACKBONE_PASSES:
        raise ValueError(f"backbone_pass must be one of {', '.join(BACKBONE_PASSES)}, got "
                         f"{backbone_pass!r}")
    head = PairwiseOrderHead(backbone.feature_dim, num_clips, hidden, dropout, feature_norm)
    head.joint_pass = backbone_pass == "joint"  # read by step(), not a parameter
    return head


def step(backbone, head, batch) -> dict:
    b, k = batch.clips.shape[:2]
    if getattr(head, "joint_pass", False):
        feats = backbone.forward_features(batch.clips.flatten(0, 1)).view(b, k, -1)  # B×K×D
    else:
        feats = torch.stack([backbone.forward_features(batch.clips[:, i]) for i in range(k)], 1)
    logits = head(feats)
    loss = F.cross_entropy(logits, batch.labels)
    acc = (logits.argmax(1) == batch.labels).float().mean()
    return {"loss": loss, "acc": acc.detach()}
