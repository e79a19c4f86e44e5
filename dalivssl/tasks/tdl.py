"""TDL: temporal discriminative learning (Wang et al., arXiv 2008.02129; the TDL repo's
train_temporal_dis.py with MemoryMoCo).

Three clips per video: anchor and positive share their frames (independent augmentation), the
negative comes from another time of the same video.
Batch: clips B×3×C×T×H×W (ImageNet-normalised), order [anchor, positive, negative].
Encodings (128-d, L2-normalised linear head on the pooled feature):
  q = online(anchor after intra-video mixup), k = EMA key encoder(positive), n = online(negative,
  with gradients).
Loss: InfoNCE over [q·k, q·queue (K), q·n] / 0.07 with label 0; the queue enqueues k.
Intra-video mixup (background addition): λ ~ U(0, 0.1) once per batch; each sample picks one
random frame of its own anchor clip and every frame becomes (1−λ)·x_t + λ·x_pick.
Queue size: the paper says K = 500, the repo's UCF101 scripts use 5000 (default here).
"""
from __future__ import annotations

import torch
from torch import nn

from models.heads import EmbeddingHead
from models.moco import KeyQueue, ema_update, infonce, key_copy, shuffled_encode

SPEC = {
    "sampler": "tdl",
    "sampler_opts": {},
    "complexity": None,
    # TDL repo (UCF101): SGD 0.003, momentum 0.9, wd 1e-4, batch 8, ×0.1 after epochs
    # 120/160/200 of 240 (as fractions of the run here).
    "optimizer": {"name": "sgd", "lr": 0.003, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "step", "milestones": (0.5, 2 / 3, 5 / 6), "gamma": 0.1},
}

# The original's settings (the TDL repo's scripts/TemporalDis/ucf101.sh; spec §5).
ORIGINAL = {
    "clip_len": 16, "size": 224, "batch_size": 8, "epochs": 240, "optimizer": "sgd",
    "lr": 0.003, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step",
    "milestones": (0.5, 2 / 3, 5 / 6), "gamma": 0.1, "sampler.stride": 4,
    "sampler.jitter": "one_of", "head.queue_size": "5000 (UCF101 script; paper: 500)",
    "head.dim": 128, "head.momentum": 0.999, "head.temperature": 0.07,
    "head.shuffle_groups": 1,
}
DIFFERENCES = (
    "Rotation after the crop (the original rotates the full frame first): black corners stay "
    "in view, about 7 % of the pixels at 10°.",
    "Default backbone init and linear resize (the original: Xavier-uniform with gain √2 on "
    "convs, nearest-neighbour resize).",
    "Contrast around the clip's mean (torchvision/PIL: each frame's mean).",
)
MIXUP_MAX = 0.1


class TDLHead(nn.Module):
    """Online projection ``proj``; EMA copies ``key_backbone`` + ``key_proj``; the key queue."""

    def __init__(self, backbone, dim, queue_size, momentum, temperature, shuffle_groups):
        super().__init__()
        self.proj = EmbeddingHead(backbone.feature_dim, dim)
        self.key_backbone = key_copy(backbone)
        self.key_proj = key_copy(self.proj)
        self.queue = KeyQueue(queue_size, dim, init="uniform")
        self.momentum = momentum
        self.temperature = temperature
        self.shuffle_groups = shuffle_groups

    def forward(self, feats):
        return self.proj(feats)

    def encode_key(self, x):
        return self.key_proj(self.key_backbone.forward_features(x))


# The benchmark (Kumar et al. §4): "queue size 16384 for RSPNet and 500 for TDL".
PAPER = {"head": {"queue_size": 500}}


# the MoCo head's options (RSPNet's too), checked before building (tasks.check_head_values)
HEAD_RANGES = {"queue_size": "int>=1", "dim": "int>=1", "momentum": "[0,1)",
               "temperature": ">0", "shuffle_groups": "int>=1"}


def build_head(backbone, queue_size: int = 5000, dim: int = 128, momentum: float = 0.999,
               temperature: float = 0.07, shuffle_groups: int = 1):
    """``shuffle_groups`` 1: the original trains on one GPU, where its ShuffleBN is a permutation
    only, so key BN statistics cover the whole key batch (2 would split them, as RSPNet's)."""
    return TDLHead(backbone, dim, queue_size, momentum, temperature, shuffle_groups)


def intra_video_mixup(x: torch.Tensor) -> torch.Tensor:
    """B×C×T×H×W → (1−λ)·x + λ·x[:, :, pick_b] with λ ~ U(0, 0.1) per batch, pick_b per sample."""
    b, _, t = x.shape[:3]
    lam = torch.rand((), device=x.device) * MIXUP_MAX
    pick = torch.randint(t, (b,), device=x.device)
    static = x[torch.arange(b, device=x.device), :, pick]  # B×C×H×W
    return (1 - lam) * x + lam * static[:, :, None]


def step(backbone, head, batch) -> dict:
    anchor, positive, negative = batch.clips[:, 0], batch.clips[:, 1], batch.clips[:, 2]
    q = head(backbone.forward_features(intra_video_mixup(anchor)))
    n = head(backbone.forward_features(negative))
    with torch.no_grad():
        ema_update(backbone, head.key_backbone, head.momentum)
        ema_update(head.proj, head.key_proj, head.momentum)
        k = shuffled_encode(head.encode_key, positive, head.shuffle_groups)
    loss, acc = infonce(q, k, head.queue.keys.clone(), head.temperature, extra_neg=n)
    head.queue.enqueue(k)
    return {"loss": loss, "acc": acc}
