"""RSPNet: relative speed perception (Chen et al., AAAI 2021)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (Sampler, coin, colour_jitter, frame_aspect,
                                     random_resized_box, short_side_crop_box, stack_params,
                                     strided)
from pipelines.types import ClipPlan


def window_indices(length: int, size: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """RSPNet's RandomStrideCrop for one window of ``size`` frames at ``stride``: loop the video
    if it has ≤ size frames, evenly spaced frames (linspace, rounded) if shorter than the strided
    window, else a uniform random start."""
    needed = (size - 1) * stride + 1
    if length <= size:
        return np.arange(size, dtype=np.int64) % length
    if length < needed:
        return np.rint(np.linspace(0, length - 1, size)).astype(np.int64)
    return strided(int(rng.integers(0, length - needed + 1)), size, stride)


class RSPNetSampler(Sampler):
    """Two raw windows q and k (K=2) of T·max_speed consecutive frames (spec §6).

    Original (PeihaoChen/RSPNet, datasets/transforms_video RandomStrideCrop, config/pretrain):
    each video yields q and k from two independent calls, each diff_speed[0]·16 = 32 consecutive
    frames with an independent uniform start; short videos loop (N ≤ 32) or take linspace frames
    (only reachable with stride > 1). Per clip: RawVideoRandomCrop (area (0.4,1), aspect
    (3/4,4/3)) on raw frames, resize to 112×112 (aspect not kept), RandomGrayScale p 0.2,
    ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip p 0.5, ImageNet normalisation. The speed split
    (first T frames at speed 1 or every r-th frame at speed r, one r per batch) happens in the
    model per batch, i.e. in the task step.

    ``clip_len`` (argument) is the model input length T at the fastest speed; the plan's
    windows, and this sampler's ``clip_len`` attribute, are T·max_speed frames (``input_len``
    keeps T); the task feeds W//r frames at the drawn speed r, as the original. Options:
    ``speeds`` (the task's speed set, diff_speed; the one setting the task's head also reads;
    default [2]) or ``max_speed`` (its largest value; both given must agree), ``stride``
    (default 1; the ablations' stride mixtures are not supported).

    Plan: frames (2, T·max_speed); label 0; params per window: crop (random resized box with
    the record's aspect; the output is size×size), gray, brightness/contrast/saturation
    U(0.6,1.4), hue U(−144°, 144°) (0.4 of a turn), flip. Short videos never raise (loop).
    augment=False: centre crop (short side → size·128/112), no colour, no flip.

    Complexity knob: the speed set of the task (diff_speed); the sampler only needs its maximum.
    """

    name = "rspnet"
    normalize = "imagenet"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 max_speed: int | None = None, speeds=None, stride: int = 1, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if speeds is not None:  # the task's speed set: the window must hold its fastest speed
            if not tuple(speeds):
                raise ValueError("rspnet sampler: speeds must not be empty")
            fastest = max(int(v) for v in speeds)
            if max_speed is not None and int(max_speed) != fastest:
                raise ValueError(f"rspnet sampler: max_speed {max_speed} disagrees with speeds "
                                 f"{list(speeds)}; set speeds only")
            max_speed = fastest
        max_speed = 2 if max_speed is None else max_speed
        if int(max_speed) < 1 or int(stride) < 1:
            raise ValueError(f"rspnet sampler: max_speed and stride must be >= 1, got "
                             f"{max_speed}, {stride}")
        self.input_len = self.clip_len
        self.max_speed = int(max_speed)
        self.stride = int(stride)
        self.clip_len = self.input_len * self.max_speed
        self.num_clips = 2
        self.param_keys = (("crop", "gray", "brightness", "contrast", "saturation", "hue", "flip")
                           if self.augment else ("crop",))

    def _plan(self, record, length, rng):
        frames = np.stack([window_indices(length, self.clip_len, self.stride, rng)
                           for _ in range(2)])
        aspect = frame_aspect(record)
        views = []
        for _ in range(2):
            if not self.augment:
                views.append({"crop": short_side_crop_box(None, aspect, self.size)})
                continue
            p = {"crop": random_resized_box(rng, aspect, (0.4, 1.0), (3 / 4, 4 / 3)),
                 "gray": coin(rng, 0.2)}
            p.update(colour_jitter(rng, 0.4, 0.4, 0.4, 0.4))
            p["flip"] = coin(rng, 0.5)
            views.append(p)
        return ClipPlan(frames, 0, stack_params(views))
