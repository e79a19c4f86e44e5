"""TDL: temporal discriminative learning (Wang et al., arXiv 2008.02129)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (Sampler, colour_jitter, frame_aspect, short_side_crop_box,
                                     stack_params, strided)
from pipelines.types import ClipPlan

MAX_ROTATION = 10.0
JITTER = (0.5, 0.5, 0.25, 0.5)  # ColorJitter(brightness, contrast, saturation, hue)


class TDLSampler(Sampler):
    """Anchor, positive and negative clips (K=3) of T frames at stride s (spec §5).

    Original (TDL repo, src/data/dataset.py get_moco_items; settings in train_temporal_dis.py:
    16 frames, stride 4): 1-based frame indices; anchor start uniform in
    [1, max(N − 32·4, 0) + 1] (new_length 32, not 16); positive = the anchor's frames; negative
    start drawn independently over the video, shifted by N//3 (mod N) when within 2 frames of
    the anchor; indices past the end wrap to the first frame. Per clip independently:
    RandomRotation ±10°, short side → 256 (128 at 112), RandomCrop, ColorJitter(0.5, 0.5, 0.25,
    0.5), ImageNet normalisation, no flip. The anchor's background mixup (GenPositive) is a
    batch-level step done in the task, not here.

    Plan (0-based): anchor start a ~ U{0 … max(N − 2T·s, 0)}; positive = anchor; negative
    n ~ U{0 … N−1}, n = (n + N//3) mod N if |n − a| ≤ 2; clip = (start + s·[0..T)) mod N.
    frames (3, T) in the order anchor, positive, negative; label 0; extras["neg_start"],
    extras["anchor_start"] (int64 scalars, relative to start_frame). params per clip: angle
    U(−10, 10)°, crop (short side → size·128/112, random size crop, a relative box using the
    record's aspect), brightness U(0.5,1.5), contrast U(0.5,1.5), saturation U(0.75,1.25), hue
    U(−180°, 180°) (0.5 of a turn), always applied. The original rotates before resizing and
    cropping; our angle is applied after the crop (PARAM_KEYS), a small difference at ±10°.
    A 1-based quirk is not kept: the original maps a shifted result of 0 to frame 1, which
    0-based would be moving N−1 to 0.

    No complexity knob. Options: ``stride`` (default 4). Short videos never raise (wrap);
    augment=False: centre crop, angle 0, no colour jitter.
    """

    name = "tdl"
    normalize = "imagenet"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 stride: int = 4, **unknown):
        super().__init__(clip_len, size, augment)
        self._reject(unknown)
        if int(stride) < 1:
            raise ValueError(f"tdl sampler: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.num_clips = 3
        self.param_keys = (("crop", "angle", "brightness", "contrast", "saturation", "hue")
                           if self.augment else ("crop", "angle"))

    def starts(self, length: int, rng: np.random.Generator) -> tuple[int, int]:
        """(anchor start, negative start), relative to the usable range."""
        anchor = int(rng.integers(0, max(length - 2 * self.clip_len * self.stride, 0) + 1))
        neg = int(rng.integers(0, length))
        if abs(neg - anchor) <= 2:
            neg = (neg + length // 3) % length
        return anchor, neg

    def _plan(self, record, length, rng):
        anchor, neg = self.starts(length, rng)
        frames = np.stack([strided(st, self.clip_len, self.stride)
                           for st in (anchor, anchor, neg)]) % length
        aspect = frame_aspect(record)
        clips = []
        for _ in range(3):
            if not self.augment:
                clips.append({"crop": short_side_crop_box(None, aspect, self.size), "angle": 0.0})
                continue
            p = {"angle": float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
                 "crop": short_side_crop_box(rng, aspect, self.size)}
            p.update(colour_jitter(rng, *JITTER))
            clips.append(p)
        return ClipPlan(frames, 0, stack_params(clips), {},
                        {"anchor_start": np.asarray(anchor, np.int64),
                         "neg_start": np.asarray(neg, np.int64)})
