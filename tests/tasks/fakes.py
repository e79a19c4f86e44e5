"""Stand-ins for the tasks' inputs: a tiny 3D-conv backbone with the C5 interface and fake
batches per task whose pretext labels are truthful (rotated clips, permuted clips, sped-up
windows), so a model can learn them."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from pipelines.types import Batch


class TinyBackbone(nn.Module):
    """Two strided 3D convs (C5: forward_map B×D×t×h×w, forward_features B×D, feature_dim)."""

    feature_dim = 32

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 32, 3, stride=2, padding=1), nn.BatchNorm3d(32), nn.ReLU())
        self.cka_layers = ["net"]

    def forward_map(self, x):
        return self.net(x)

    def forward_features(self, x):
        return self.forward_map(x).mean(dim=(2, 3, 4))

    def forward(self, x):
        return self.forward_features(x)


def _video(g, b, t, s):
    """B×3×t×s×s smooth-ish random videos in [0,1] with a moving bright bar (motion)."""
    base = torch.rand(b, 3, 1, s // 4, s // 4, generator=g)
    base = nn.functional.interpolate(base, size=(t, s, s), mode="nearest")
    v = base.clone()
    for i in range(t):
        x = (i * 3) % (s - 4)
        v[:, :, i, :, x:x + 4] = 1.0
    return v


def fake_batch(task: str, b: int = 4, t: int = 8, s: int = 32, seed: int = 0, **opts) -> Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, dtype=torch.long)
    extra_clips, extras = {}, {}
    if task == "rotnet":
        n = opts.get("num_rotations", 4)
        labels = torch.randint(n, (b,), generator=g)
        v = _video(g, b, t, s)
        clips = torch.stack([torch.rot90(v[i], int(labels[i]), dims=(2, 3)) for i in range(b)])
        clips = clips[:, None]
    elif task == "vcop":
        k = opts.get("num_clips", 3)
        perms = list(itertools.permutations(range(k)))
        labels = torch.randint(len(perms), (b,), generator=g)
        v = _video(g, b, t * k, s).view(b, 3, k, t, s, s).transpose(1, 2)  # B×K×C×T×H×W
        clips = torch.stack([v[i, list(perms[int(labels[i])])] for i in range(b)])
    elif task == "prp":
        rates = opts.get("rates", (1, 2, 4, 8))
        labels = torch.randint(len(rates), (b,), generator=g)
        raw = _video(g, b, 2 * t * max(rates), s)
        clips = torch.stack([raw[i, :, :: rates[int(labels[i])]][:, :t]
                             for i in range(b)])[:, None]
        extra_clips["recon"] = torch.stack(
            [raw[i, :, :: max(1, rates[int(labels[i])] // 2)][:, : 2 * t] for i in range(b)])
        flags = torch.ones(b, 2 * t)
        for i in range(b):
            if rates[int(labels[i])] == 1:
                flags[i, 1::2] = 0
        extras["recon_flags"] = flags
        m = 4 * max(rates)
        motion = torch.zeros(b, 3, m, s, s)
        mlen = torch.zeros(b, dtype=torch.long)
        for i in range(b):
            r = rates[int(labels[i])]
            idx = [c * 16 + j for c in range(r) for j in (0, 5, 10, 15)]
            motion[i, :, : len(idx)] = raw[i, :, [x % raw.shape[2] for x in idx]]
            mlen[i] = len(idx)
        extra_clips["motion"], extras["motion_len"] = motion, mlen
    elif task == "cvrl":
        v = _video(g, b, 2 * t, s)
        clips = torch.stack([v[:, :, :t] + 0.3 * torch.randn(b, 3, t, s, s, generator=g),
                             v[:, :, t:] + 0.3 * torch.randn(b, 3, t, s, s, generator=g)], 1)
    elif task == "tdl":
        v = _video(g, b, 2 * t, s)
        a = v[:, :, :t]
        clips = torch.stack([a + 0.05 * torch.randn(a.shape, generator=g),
                             a + 0.05 * torch.randn(a.shape, generator=g),
                             _video(g, b, t, s)], 1)  # "later in the video": a new scene
    elif task == "rspnet":
        w = t * max(opts.get("speeds", (2,)))
        clips = torch.stack([_video(g, b, w, s), _video(g, b, w, s)], 1)
    else:
        raise KeyError(task)
    return Batch(clips.float(), labels, torch.full((b,), -1), torch.arange(b),
                 extra_clips=extra_clips, extras=extras)
