"""Stand-ins for the tasks' inputs: a tiny 3D-conv backbone with the C5 interface (a tiny ViT
for tasks that drop tokens) and fake batches per task whose pretext labels are truthful (rotated
clips, permuted clips, sped-up windows), so a model can learn them. A task without a hand-made
builder gets its batch from its own sampler's plans applied to a synthetic video
(:func:`plan_batch`), so a new task needs no edit here."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np

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


def tiny_vit():
    """A 2-block ViT of width 128 over 2×16×16 tubelets (the C5 interface plus forward_tokens)."""
    from models.vit3d import VisionTransformer3D

    return VisionTransformer3D(dim=128, depth=2, heads=4)


def tiny_backbone(task: str):
    """TinyBackbone, or tiny_vit() when the task's SPEC says ``masked_forward``."""
    from dalivssl.tasks import TASKS

    return tiny_vit() if TASKS[task].SPEC.get("masked_forward") else TinyBackbone()


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
    """A hand-made batch for the six benchmark tasks, :func:`plan_batch` for any other."""
    if task not in ("rotnet", "vcop", "prp", "cvrl", "tdl", "rspnet"):
        return plan_batch(task, b, t, s, seed, **opts)
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


def _render(video, frames, crop, flip, angle, s):
    """3×F×s×s: ``frames`` of video (3×N×S×S), cropped to the relative box, resized, flipped and
    rotated as a plan says."""
    _, _, hh, ww = video.shape
    y0, x0, h, w = (float(v) for v in crop)
    ys, xs = int(round(y0 * hh)), int(round(x0 * ww))
    ye, xe = max(ys + 1, int(round((y0 + h) * hh))), max(xs + 1, int(round((x0 + w) * ww)))
    clip = video[:, torch.as_tensor(np.asarray(frames, np.int64)), ys:ye, xs:xe]
    clip = nn.functional.interpolate(clip.transpose(0, 1), size=(s, s), mode="bilinear",
                                     align_corners=False).transpose(0, 1)
    if flip:
        clip = clip.flip(-1)
    return torch.rot90(clip, int(angle) // 90, dims=(2, 3))


def plan_batch(task: str, b: int = 4, t: int = 8, s: int = 32, seed: int = 0, **opts) -> Batch:
    """A batch built by the task's own sampler: plan b samples of a 4s×4s video (a moving bar
    over blocky texture), apply their frames, crop, flip and rotation (colour parameters are
    left out) and normalise as the sampler says; labels and extras come from the plans."""
    from dalivssl.tasks import TASKS
    from pipelines.samplers import SAMPLERS
    from pipelines.types import IMAGENET_MEAN, IMAGENET_STD, sample_rng

    spec = TASKS[task].SPEC
    sampler = SAMPLERS[spec["sampler"]](clip_len=t, size=s,
                                        **{**spec.get("sampler_opts", {}), **opts})
    n = max(sampler.min_frames, 16 * t)
    rec = SimpleNamespace(path=f"fake/{task}", num_frames=n, label=-1, start_frame=0,
                          end_frame=-1, width=4 * s, height=4 * s)
    g = torch.Generator().manual_seed(seed)
    clips, extra_clips, plans = [], {}, []
    for i in range(b):
        plan = sampler.plan(rec, sample_rng(seed, 0, i))
        video = _video(g, 1, n, 4 * s)[0]
        k = plan.num_clips
        p = {key: plan.params.get(key, np.zeros(k)) for key in ("flip", "angle")}
        crop = plan.params.get("crop", np.tile([0.0, 0.0, 1.0, 1.0], (k, 1)))
        clips.append(torch.stack([_render(video, plan.frames[j], crop[j], p["flip"][j],
                                          p["angle"][j], s) for j in range(k)]))
        for name, idx in plan.extra_frames.items():
            extra_clips.setdefault(name, []).append(
                _render(video, idx, crop[0], p["flip"][0], p["angle"][0], s))
        plans.append(plan)
    x = torch.stack(clips)
    if sampler.normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
        x = (x - mean) / torch.tensor(IMAGENET_STD)[:, None, None, None]
    extras = {key: torch.as_tensor(np.stack([np.asarray(pl.extras[key]) for pl in plans]))
              for key in plans[0].extras}
    labels = torch.tensor([pl.label for pl in plans], dtype=torch.long)
    return Batch(x.float(), labels, torch.full((b,), -1), torch.arange(b),
                 extra_clips={k: torch.stack(v) for k, v in extra_clips.items()}, extras=extras)
