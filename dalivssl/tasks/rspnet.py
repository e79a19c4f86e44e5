"""RSPNet: relative speed perception (Chen et al., AAAI 2021; PeihaoChen/RSPNet,
moco/builder_diffspeed_diffloss.py).

The loader gives two independent windows (q and k) of W = max(speeds)·T consecutive frames.
Batch: clips B×2×C×W×H×W (ImageNet-normalised).
Per batch one speed r is drawn from ``speeds``; the batch is split at random into halves:
half at normal speed (the first W//r frames), half at r× (every r-th frame, W//r of them); the
model input is W//r frames, as the original's ``_diff_speed`` (T_real = T // r): T for the
default [2], 16 / 32 / 64 frames for [4, 2, 1] at T = 16. q and k⁺ share the speed; k⁻ is the
k window at the other speed.
Heads (on the pooled feature, each Linear(D,128) → L2): A-VID (appearance) and RSP (speed);
keys come from EMA copies (m 0.999) of backbone and heads.
Losses (T = 0.07): A-VID InfoNCE [q·k⁺, q·queue] + InfoNCE [q·k⁻, q·queue] (same video at any
speed is positive; the queue enqueues k⁻_A); RSP MarginRanking(q_M·k⁺_M/T > q_M·k⁻_M/T, margin
2.0). Total = CE₁ + CE₂ + rank. Queue K = 16384, trimmed to a multiple of the global batch.
The speed set is one setting, ``sampler.speeds``: the trainer hands it to the head; a head whose
speeds do not fit the window fails with one line instead of training on shorter clips.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import EmbeddingHead
from dalivssl.tasks.tdl import HEAD_RANGES as MOCO_RANGES
from models.moco import KeyQueue, ema_update, infonce, key_copy, shuffled_encode, trimmed_size

SPEC = {
    "sampler": "rspnet",
    # complexity knob: the speed set ([2], [4], [4, 2, 1])
    "sampler_opts": {"speeds": (2,)},
    "complexity": "speeds",
    "levels": {"C1": [2], "C2": [4], "C3": [4, 2, 1]},  # the study's C1 < C2 < C3 of the knob (Kumar et al. §4.2)
    # RSPNet: SGD 0.1 × (world·batch/64), momentum 0.9, wd 1e-4, cosine to lr/1000.
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                  "ref_batch": 64, "scaling": "linear"},
    "schedule": {"name": "cosine", "min_lr_ratio": 1e-3},
}

# The original's settings (PeihaoChen/RSPNet config/pretrain, pretrain.py; spec §6).
ORIGINAL = {
    "clip_len": 16, "size": 112, "batch_size": "64/GPU × 4", "epochs": 200, "optimizer": "sgd",
    "lr": "0.1 × world·batch/64 (the same rule here)", "momentum": 0.9, "weight_decay": 1e-4,
    "schedule": "cosine", "min_lr_ratio": 1e-3, "sampler.speeds": (2,), "sampler.stride": 1,
    "head.queue_size": 16384, "head.dim": 128, "head.momentum": 0.999,
    "head.temperature": 0.07, "head.margin": 2.0, "head.speeds": (2,),
    "head.shuffle_groups": "2 (ShuffleBN across 4 GPUs)",
}
DIFFERENCES = (
    "Under DDP the key shuffle stays within each process (the original shuffles across GPUs).",
    "Gray (p 0.2) after a fixed-order jitter (the original: gray first, then a randomly "
    "ordered ColorJitter).",
    "Stride mixtures of the ablations (random_stride / weighted_stride) are not supported.",
)


class RSPNetHead(nn.Module):
    """``avid`` and ``rsp`` heads, their EMA copies, the EMA backbone and the A-VID queue."""

    def __init__(self, backbone, dim, queue_size, momentum, temperature, margin, speeds,
                 shuffle_groups, clip_len):
        super().__init__()
        self.avid = EmbeddingHead(backbone.feature_dim, dim)
        self.rsp = EmbeddingHead(backbone.feature_dim, dim)
        self.key_backbone = key_copy(backbone)
        self.key_avid = key_copy(self.avid)
        self.key_rsp = key_copy(self.rsp)
        self.queue = KeyQueue(queue_size, dim, init="normal")
        self.momentum, self.temperature, self.margin = momentum, temperature, margin
        self.speeds = tuple(int(s) for s in speeds)
        self.clip_len = int(clip_len)  # T: input frames at the fastest speed
        self.shuffle_groups = shuffle_groups

    def forward(self, feats):
        return self.avid(feats), self.rsp(feats)

    def encode_key(self, x):
        f = self.key_backbone.forward_features(x)
        return torch.cat([self.key_avid(f), self.key_rsp(f)], dim=1)

    def momentum_update(self, backbone):
        ema_update(backbone, self.key_backbone, self.momentum)
        ema_update(self.avid, self.key_avid, self.momentum)
        ema_update(self.rsp, self.key_rsp, self.momentum)


HEAD_RANGES = {**MOCO_RANGES, "margin": ">=0"}  # checked before building (tasks.check_head_values)


def build_head(backbone, queue_size: int = 16384, dim: int = 128, momentum: float = 0.999,
               temperature: float = 0.07, margin: float = 2.0, speeds=(2,), clip_len: int = 16,
               batch_size: int | None = None, world_size: int = 1, shuffle_groups: int = 2):
    """``speeds`` (the trainer passes the sampler's) and ``clip_len`` T fix the window the step
    expects: max(speeds)·T frames. ``shuffle_groups`` 2: the original shuffles keys across 4
    GPUs, so key BN statistics never come from exactly the query's batch."""
    if not speeds or any(int(s) < 1 for s in speeds):
        raise ValueError(f"speeds must be positive integers, got {speeds!r}")
    size = trimmed_size(queue_size, batch_size, world_size)
    return RSPNetHead(backbone, dim, size, momentum, temperature, margin, speeds, shuffle_groups,
                      clip_len)


def at_speed(x: torch.Tensor, speed: int, t: int) -> torch.Tensor:
    """B×C×W×H×W → B×C×t×H×W: every ``speed``-th of the first speed·t frames."""
    return x[:, :, : speed * t : speed]


def split_speeds(q_win, k_win, speeds, clip_len: int | None = None):
    """Draw r and the random half split → (q, k⁺, k⁻), each B×C×(W//r)×H×W, and the fast mask
    B. ``clip_len`` T: the window must be max(speeds)·T frames (DalivsslError otherwise)."""
    b, window = q_win.shape[0], q_win.shape[2]
    if clip_len is not None and window != int(clip_len) * max(speeds):
        from dalivssl.errors import DalivsslError

        raise DalivsslError(
            f"rspnet: the clips hold {window} frames but speeds {list(speeds)} at clip_len "
            f"{clip_len} need {int(clip_len) * max(speeds)}; set the speed set once, as "
            f"sampler.speeds (the head takes it from there)")
    r = speeds[int(torch.randint(len(speeds), ()))]
    t = window // r
    fast = torch.zeros(b, dtype=torch.bool, device=q_win.device)
    fast[torch.randperm(b, device=q_win.device)[: b // 2]] = True
    m = fast.view(b, 1, 1, 1, 1)
    q = torch.where(m, at_speed(q_win, r, t), at_speed(q_win, 1, t))
    k_n, k_f = at_speed(k_win, 1, t), at_speed(k_win, r, t)
    return q, torch.where(m, k_f, k_n), torch.where(m, k_n, k_f), fast


def step(backbone, head, batch) -> dict:
    q_clip, k_pos_clip, k_neg_clip, _ = split_speeds(batch.clips[:, 0], batch.clips[:, 1],
                                                     head.speeds, head.clip_len)
    q_a, q_m = head(backbone.forward_features(q_clip))
    with torch.no_grad():
        head.momentum_update(backbone)
        kp = shuffled_encode(head.encode_key, k_pos_clip, head.shuffle_groups)
        kn = shuffled_encode(head.encode_key, k_neg_clip, head.shuffle_groups)
    d = q_a.shape[1]
    kp_a, kp_m, kn_a, kn_m = kp[:, :d], kp[:, d:], kn[:, :d], kn[:, d:]
    queue = head.queue.keys.clone()
    ce1, acc = infonce(q_a, kp_a, queue, head.temperature)
    ce2, _ = infonce(q_a, kn_a, queue, head.temperature)
    pos = (q_m * kp_m).sum(1) / head.temperature
    neg = (q_m * kn_m).sum(1) / head.temperature
    rank = F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=head.margin)
    head.queue.enqueue(kn_a)
    speed_acc = (pos > neg).float().mean().detach()
    return {"loss": ce1 + ce2 + rank, "avid": (ce1 + ce2).detach(), "rsp": rank.detach(),
            "acc": acc, "speed_acc": speed_acc}
