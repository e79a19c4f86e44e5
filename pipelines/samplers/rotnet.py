"""RotNet for video: predict the rotation of a clip (3DRotNet, Jing & Tian, arXiv 1811.11387)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (PAPER_KEYS, Sampler, coin, frame_aspect, paper_params,
                                     scale_crop_box, stack_params)
from pipelines.types import ClipPlan

# CtP's GroupScale sizes (w, h) = (149,112), (171,128), (192,144), stored here as (h, w) at 112.
SCALES_HW = ((112.0, 149.0), (128.0, 171.0), (144.0, 192.0))
# CtP pyvrl/datasets/transforms/color.py, each op with p 0.2:
BRIGHTNESS_DELTA = 32.0 / 128.0  # additive ±32 on 0..255 ≈ factor 1 ± 0.25 at mid-grey
CONTRAST_DELTA = 0.2  # a pure gain exp(U(±0.2)), no mean subtracted
SATURATION_DELTA = 0.1  # factor exp(U(±0.1))
HUE_DELTA_DEG = 24.0  # ±12 on OpenCV's 8-bit H channel (0–179 = degrees / 2)
PHOTO_P = 0.2


class RotNetSampler(Sampler):
    """One clip (K=1) of T frames and a rotation class (Jing et al. 2018, 3DRotNet).

    Original: no official code; reference is microsoft/CtP's re-implementation
    (pyvrl/models/pretraining/rot3d/ and its RandomFrameSampler): a
    stride s drawn from {1..5}; with temporal jitter every frame index gets its own offset
    U{0..s−1}; start uniform in [0, L − (s(T−1)+1)]; indices are clamped to the last frame.
    Augmentation (clip-consistent): scale to one of (h,w) 112×149 / 128×171 / 144×192, flip 0.5,
    brightness (p 0.2, additive ±32 grey levels), contrast (p 0.2, a gain exp(U(±0.2)) with no
    mean), hue/saturation together (p 0.2, hue ±12 in OpenCV units = ±24°, saturation
    exp(U(±0.1))), random crop 112, rotation by 90°·label, ImageNet norm.

    Plan: frames (1, T); label r ∈ [0, num_rotations); params angle = 90·r (applied after the
    crop, like CtP), crop = the 112-crop inside the chosen scale as a relative box (sizes scale
    with ``size``/112), flip, brightness = (1 ± 0.25 when on) · (contrast gain when on) (a gain
    without mean is a brightness factor), saturation, hue (identity when not applied). Known
    differences: brightness is a factor, 1 ± 0.25 (±32 at mid-grey), not an offset; hue wraps
    round the colour circle where CtP clips the H channel.

    Complexity knob: ``num_rotations`` 2 / 3 / 4 → angles {0,90} / {0,90,180} / {0,90,180,270}.
    Options: ``strides`` (default (1,2,3,4,5)), ``stride`` (a fixed stride, overrides strides),
    ``temporal_jitter`` (default True).

    protocol 'paper' (supp. C.3): ``base.paper_params`` instead of CtP's recipe; the angle is
    90°·label plus the C.3 random rotation (±10°).

    Short video (L < s(T−1)+1): as CtP, start 0 and indices clamped to L−1 (the last frame
    repeats); never raises unless the video has no frame. augment=False: centre 112-crop of the
    128×171 scale, no flip/colour; the rotation stays (it is the label) and temporal sampling
    stays random.
    """

    name = "rotnet"
    paper_augment = True  # protocol 'paper' swaps in supp. C.3's augmentation
    normalize = "imagenet"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 strides=(1, 2, 3, 4, 5), stride: int | None = None, num_rotations: int = 4,
                 temporal_jitter: bool = True, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        strides = (stride,) if stride is not None else tuple(strides)
        if not strides or any(int(s) != s or int(s) < 1 for s in strides):
            raise ValueError(f"rotnet sampler: strides must be positive integers, got {strides}")
        if int(num_rotations) not in (2, 3, 4):
            raise ValueError(f"rotnet sampler: num_rotations must be 2, 3 or 4, got "
                             f"{num_rotations}")
        self.strides = tuple(int(s) for s in strides)
        self.temporal_jitter = bool(temporal_jitter)
        self.num_classes = int(num_rotations)
        self.param_keys = (("crop", "angle") if not self.augment else PAPER_KEYS
                           if self.protocol == "paper" else
                           ("crop", "angle", "flip", "brightness", "saturation", "hue"))

    def _plan(self, record, length, rng):
        t = self.clip_len
        s = self.strides[int(rng.integers(len(self.strides)))]
        jitter = (rng.integers(0, s, size=t) if s > 1 and self.temporal_jitter
                  else np.zeros(t, np.int64))
        total = s * (t - 1) + 1
        start = 0 if total >= length else int(rng.integers(0, length - total + 1))
        frames = np.minimum(start + s * np.arange(t) + jitter, length - 1).astype(np.int64)
        label = int(rng.integers(self.num_classes))
        p = {"angle": 90.0 * label}
        if self.augment and self.protocol == "paper":
            p = paper_params(rng, frame_aspect(record), self.size, angle=90.0 * label)
        elif self.augment:
            hh, ww = SCALES_HW[int(rng.integers(len(SCALES_HW)))]
            k = self.size / 112.0
            p["crop"] = scale_crop_box(rng, (hh * k, ww * k), (self.size, self.size))
            p["flip"] = coin(rng, 0.5)
            b_on, b = coin(rng, PHOTO_P), rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
            c_on, c = coin(rng, PHOTO_P), rng.uniform(-CONTRAST_DELTA, CONTRAST_DELTA)
            hs_on = coin(rng, PHOTO_P)
            sat = rng.uniform(-SATURATION_DELTA, SATURATION_DELTA)
            hue = rng.uniform(-HUE_DELTA_DEG, HUE_DELTA_DEG)
            p["brightness"] = (1.0 + b if b_on else 1.0) * (float(np.exp(c)) if c_on else 1.0)
            p["saturation"] = float(np.exp(sat)) if hs_on else 1.0
            p["hue"] = hue if hs_on else 0.0
        else:
            k = self.size / 112.0
            p["crop"] = scale_crop_box(None, (128.0 * k, 171.0 * k), (self.size, self.size))
        return ClipPlan(frames[None], label, stack_params([p]))
