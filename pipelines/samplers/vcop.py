"""VCOP: video clip order prediction (Xu et al., CVPR 2019)."""
from __future__ import annotations

import itertools

import numpy as np

from pipelines.samplers.base import (PAPER_KEYS, Sampler, frame_aspect, jitter_factor,
                                     paper_params, scale_crop_box, stack_params, strided)
from pipelines.types import ClipPlan

RESIZE_HW = (128.0, 171.0)  # VCOP resizes every frame to 128×171 before cropping 112


class VCOPSampler(Sampler):
    """tl shuffled clips of one window (K=tl) and the permutation class (spec §2).

    Original (xudejing/video-clip-order-prediction, datasets/ucf101.py UCF101VCOPDataset): window
    = cl·tl + it·(tl−1) frames, start uniform in [0, L − window] (inclusive); clip k covers
    start + k(cl+it) … + cl−1; the tl clips are shuffled together with [0..tl−1], tuple_order[k]
    being the original index of the clip at position k; label = index of tuple(tuple_order) in
    itertools.permutations(range(tl)) (lexicographic). Resize 128×171, random crop 112 drawn
    independently per clip (consistent within a clip), no flip, no colour, values in [0,1].

    Plan: frames (tl, T) with frames[k] = original clip order[k]; label in [0, tl!);
    params crop (tl, 4): a (112/128, 112/171) box at a random integer offset per clip.
    normalize 'unit'.

    Complexity knob: ``num_clips`` (tl) 3 / 4 / 5 → 6 / 24 / 120 classes. Options:
    ``interval`` (it, default 8); ``brightness`` (b, default 0 = the original): a brightness factor
    U(1−b, 1+b) drawn per clip, so that a global exposure drift (a fade, an auto-exposure ramp)
    cannot order the clips on its own (not in the original).

    protocol 'paper' (supp. C.3): ``base.paper_params`` per clip (independent between the clips
    of a tuple, as the original's crops; consistent within a clip) instead of the crop.

    Short video: the original trains only on pre-filtered lists of long-enough videos
    (split/vcop_train_{cl}_{it}_{tl}.txt), so a video with fewer than ``window`` usable frames
    raises TooShort. augment=False: centre crop per clip (the order is still shuffled: it is the
    label).
    """

    name = "vcop"
    paper_augment = True
    normalize = "unit"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 num_clips: int = 3, interval: int = 8, brightness: float = 0.0, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if not 2 <= int(num_clips) <= 6:
            raise ValueError(f"vcop sampler: num_clips must be in 2..6, got {num_clips}")
        if int(interval) < 0:
            raise ValueError(f"vcop sampler: interval must be >= 0, got {interval}")
        if not 0.0 <= float(brightness) < 1.0:
            raise ValueError(f"vcop sampler: brightness must be in [0, 1), got {brightness}")
        self.num_clips = int(num_clips)
        self.interval = int(interval)
        self.brightness = float(brightness)
        if self.augment and self.protocol == "paper":
            self.param_keys = PAPER_KEYS
        elif self.augment and self.brightness > 0:
            self.param_keys = ("crop", "brightness")
        self.permutations = list(itertools.permutations(range(self.num_clips)))
        self._perm_index = {p: i for i, p in enumerate(self.permutations)}
        self.num_classes = len(self.permutations)
        self.window = self.clip_len * self.num_clips + self.interval * (self.num_clips - 1)
        self.min_frames = self.window

    def need(self) -> tuple[str, str]:
        return (f"≥ {self.min_frames} frames ({self.num_clips} clips × {self.clip_len} + "
                f"{self.num_clips - 1} gaps × {self.interval})",
                "sampler.num_clips, sampler.interval or --clip-len")

    def label_of(self, order) -> int:
        """Lexicographic index of a clip order (tuple_order) among permutations(range(tl))."""
        return self._perm_index[tuple(int(o) for o in order)]

    def _plan(self, record, length, rng):
        tl, cl = self.num_clips, self.clip_len
        start = int(rng.integers(0, length - self.window + 1))
        clips = np.stack([strided(start + k * (cl + self.interval), cl) for k in range(tl)])
        order = rng.permutation(tl)
        k = self.size / 112.0
        hw = (RESIZE_HW[0] * k, RESIZE_HW[1] * k)
        if self.augment and self.protocol == "paper":
            params = [paper_params(rng, frame_aspect(record), self.size) for _ in range(tl)]
        else:
            params = [{"crop": scale_crop_box(rng if self.augment else None, hw,
                                              (self.size, self.size))} for _ in range(tl)]
        if self.protocol != "paper" and "brightness" in self.param_keys:
            for p in params:
                p["brightness"] = jitter_factor(rng, self.brightness)
        return ClipPlan(clips[order], self.label_of(order), stack_params(params))
