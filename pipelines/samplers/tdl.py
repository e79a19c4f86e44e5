"""TDL: temporal discriminative learning (Wang et al., arXiv 2008.02129)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (JITTER_MODES, Sampler, colour_jitter, frame_aspect,
                                     short_side_crop_box, stack_params)
from pipelines.types import ClipPlan

MAX_ROTATION = 10.0
JITTER = (0.5, 0.5, 0.25, 0.5)  # ColorJitter(brightness, contrast, saturation, hue)


def restart_strided(start: int, length: int, stride: int, n: int) -> np.ndarray:
    """TDL's frame walk (dataset.py ``get``): ``length`` frames from ``start`` at ``stride``; a
    step that would pass the last frame restarts at frame 0 instead (not modulo n)."""
    out = np.empty(int(length), np.int64)
    p = int(start)
    for i in range(int(length)):
        out[i] = p
        p = p + stride if p + stride <= n - 1 else 0
    return out


class TDLSampler(Sampler):
    """Anchor, positive and negative clips (K=3) of T frames at stride s (spec §5).

    Original (TDL repo, src/data/dataset.py get_moco_items; settings in train_temporal_dis.py:
    16 frames, stride 4): 1-based frame indices; anchor start uniform in
    [1, max(N − 32·4, 0) + 1] (``_sample_indices``, new_length 32, not 16); positive = the
    anchor's frames; negative start from the same ``_sample_indices`` range, shifted by N//3
    (mod N; a result of 0 becomes frame 1) only when |neg − anchor| < 2; a step past the last
    frame restarts at frame 1 (``get``). Per clip independently: RandomRotation ±10°, short side
    → 256 (128 at 112), RandomCrop, ColorJitter(0.5, 0.5, 0.25, 0.5) as released (one op per
    clip, see below), ImageNet normalisation, no flip. The anchor's background mixup
    (GenPositive) is a batch-level step done in the task, not here.

    Plan (0-based): anchor start a ~ U{0 … max(N − 2T·s, 0)}; positive = anchor; negative
    n ~ U{0 … max(N − 2T·s, 0)} (the same range), n = ((n + 1 + N//3) mod N or 1) − 1 if
    |n − a| < 2 (the original's 1-based rule, exactly); clip = start, start+s, … restarting at
    0 past the end (``restart_strided``). frames (3, T) in the order anchor, positive, negative;
    label 0; extras["neg_start"], extras["anchor_start"] (int64 scalars, relative to
    start_frame). params per clip: angle U(−10, 10)°, crop (short side → size·128/112, random
    size crop, a relative box using the record's aspect), colour jitter.

    Colour jitter ``jitter``: "one_of" (default, the released code): its ColorJitter applies each
    shuffled op to the untouched frame (video_transform_PIL_or_np.py L351-358), so exactly one of
    brightness U(0.5,1.5), contrast U(0.5,1.5), saturation U(0.75,1.25), hue U(−180°, 180°) acts
    on a clip, each with p 1/4; "all": the four ops (what the code meant to do).

    Known differences: the original rotates before resizing and cropping; our angle is applied
    after the crop (PARAM_KEYS), so the black corners stay in view (7 % of the pixels at 10°).

    No complexity knob. Options: ``stride`` (default 4), ``jitter``. Short videos never raise
    (restart); augment=False: centre crop, angle 0, no colour jitter.
    """

    name = "tdl"
    normalize = "imagenet"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 stride: int = 4, jitter: str = "one_of", **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if int(stride) < 1:
            raise ValueError(f"tdl sampler: stride must be >= 1, got {stride}")
        if jitter not in JITTER_MODES:
            raise ValueError(f"tdl sampler: jitter must be one of {', '.join(JITTER_MODES)}, "
                             f"got {jitter!r}")
        self.stride = int(stride)
        self.jitter = jitter
        self.num_clips = 3
        self.param_keys = (("crop", "angle", "brightness", "contrast", "saturation", "hue")
                           if self.augment else ("crop", "angle"))

    def starts(self, length: int, rng: np.random.Generator) -> tuple[int, int]:
        """(anchor start, negative start), relative to the usable range."""
        last = max(length - 2 * self.clip_len * self.stride, 0)
        anchor = int(rng.integers(0, last + 1))
        neg = int(rng.integers(0, last + 1))
        if abs(neg - anchor) < 2:
            neg = max((neg + 1 + length // 3) % length, 1) - 1
        return anchor, neg

    def _plan(self, record, length, rng):
        anchor, neg = self.starts(length, rng)
        frames = np.stack([restart_strided(st, self.clip_len, self.stride, length)
                           for st in (anchor, anchor, neg)])
        aspect = frame_aspect(record)
        clips = []
        for _ in range(3):
            if not self.augment:
                clips.append({"crop": short_side_crop_box(None, aspect, self.size), "angle": 0.0})
                continue
            p = {"angle": float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
                 "crop": short_side_crop_box(rng, aspect, self.size)}
            p.update(colour_jitter(rng, *JITTER, mode=self.jitter))
            clips.append(p)
        return ClipPlan(frames, 0, stack_params(clips), {},
                        {"anchor_start": np.asarray(anchor, np.int64),
                         "neg_start": np.asarray(neg, np.int64)})
