"""CVRL: spatiotemporal contrastive video representation learning (Qian et al., CVPR 2021)."""
from __future__ import annotations

import math

import numpy as np

from pipelines.samplers.base import (Sampler, blur_sigma, coin, colour_jitter, frame_aspect,
                                     paper_gamma, random_resized_box, short_side_crop_box,
                                     stack_params, strided)
from pipelines.types import ClipPlan

ORIGINAL_SIZE = 224.0  # CVRL's output size; its blur sigma is in pixels of it


def interval_cdf(k: float, d: float) -> float:
    """CDF of the linearly decreasing density p(Δ) ∝ 1 − Δ/D on [0, D]: 2k/D − k²/D²."""
    return 2.0 * k / d - (k * k) / (d * d)


def draw_interval(u: float, d: int) -> int:
    """Δ = floor(F⁻¹(u)) for the CDF above: the integer the original's bisection returns (the
    largest integer k with F(k) ≤ u), so Δ ∈ [0, D−1] and P(Δ = k) = F(k+1) − F(k)."""
    k = int(math.floor(d * (1.0 - math.sqrt(max(0.0, 1.0 - u)))))
    k = min(max(k, 0), d - 1)
    while k > 0 and interval_cdf(k, d) > u:  # guard float rounding at the edges
        k -= 1
    while k + 1 < d and interval_cdf(k + 1, d) <= u:
        k += 1
    return k


class CVRLSampler(Sampler):
    """Two views (K=2) of T frames at stride s at a random temporal distance (spec §4).

    Original (tensorflow/models official/projects/video_ssl, ops/video_ssl_preprocess_ops.py
    sample_ssl_sequence): D = L − (T−1)s (D = L if L ≤ (T−1)s); Δ drawn from p(Δ) ∝ 1 − Δ/D by
    integer bisection of F(k) = 2k/D − k²/D² against u ~ U(0,1); o₁ ~ U{0 … D−Δ−1}, o₂ = o₁+Δ, the
    pair shuffled. Short videos: both offsets uniform in [0, L) and indices wrap (tiling). Per
    view: random resized crop (area [0.3,1], aspect [0.5,2]), flip, colour jitter p 0.8
    (brightness/contrast/saturation 0.8, hue 0.2), grayscale p 0.2, gaussian blur σ ~ U(0.1,2)
    with p 1.0 (view 1) / 0.1 (view 2), solarise p 0.2 on view 2 only; [0,1], no mean/std.

    Plan: frames (2, T) = o_k + s·[0..T) (mod L when short); label 0 (instance discrimination);
    extras["delta"] = |o₁ − o₂| (int64 scalar). params per view: crop (random resized box, the
    pixel aspect uses the record's width/height), flip, brightness/contrast/saturation U(0.2,1.8),
    hue U(−72°, 72°) (0.2 of a turn), all identity when the p 0.8 jitter is off, gray,
    blur_sigma = U(0.1,2)·size/224 (σ in output pixels, same relative blur as the original at
    224) or 0, solarize. The crop box: aspect drawn uniformly and 100 attempts, as TF's
    sample_distorted_bounding_box.

    protocol 'paper' (supp. C.3: "CVRL has some extra data augmentation ... grayscale and gamma
    adjustment"): the above plus ``gamma`` per view (``base.paper_gamma``).

    No complexity knob. Options: ``stride`` (default 2). Default size is the ``size`` argument
    (the original uses 224). augment=False: centre crop (short side → size·128/112), no colour,
    no blur/solarise.
    """

    name = "cvrl"
    paper_augment = "gamma"  # its own augmentation plus gamma
    normalize = "unit"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 stride: int = 2, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if int(stride) < 1:
            raise ValueError(f"cvrl sampler: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.num_clips = 2
        self.param_keys = (("crop", "flip", "brightness", "contrast", "saturation", "hue", "gray",
                            "blur_sigma", "solarize") if self.augment else ("crop",))
        if self.augment and self.protocol == "paper":
            self.param_keys += ("gamma",)

    def offsets(self, length: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """(o₁, o₂, Δ) relative to the usable range; Δ = −1 on the short-video path."""
        span = (self.clip_len - 1) * self.stride
        u = float(rng.random())
        if length <= span:
            return int(rng.integers(length)), int(rng.integers(length)), -1
        d = length - span
        delta = draw_interval(u, d)
        o1 = int(rng.integers(0, d - delta))
        o2 = o1 + delta
        if rng.random() < 0.5:
            o1, o2 = o2, o1
        return o1, o2, delta

    def _plan(self, record, length, rng):
        o1, o2, _ = self.offsets(length, rng)
        frames = np.stack([strided(o, self.clip_len, self.stride) for o in (o1, o2)]) % length
        aspect = frame_aspect(record)
        views = []
        for v in range(2):
            if not self.augment:
                views.append({"crop": short_side_crop_box(None, aspect, self.size)})
                continue
            p = {"crop": random_resized_box(rng, aspect, (0.3, 1.0), (0.5, 2.0), log_ratio=False,
                                           attempts=100),
                 "flip": coin(rng, 0.5)}
            p.update(colour_jitter(rng, 0.8, 0.8, 0.8, 0.2, p=0.8))
            p["gray"] = coin(rng, 0.2)
            p["blur_sigma"] = blur_sigma(rng, 1.0 if v == 0 else 0.1,
                                         scale=self.size / ORIGINAL_SIZE)
            p["solarize"] = coin(rng, 0.2) if v == 1 else 0
            if self.protocol == "paper":
                p["gamma"] = paper_gamma(rng)
            views.append(p)
        return ClipPlan(frames, 0, stack_params(views), {},
                        {"delta": np.asarray(abs(o1 - o2), np.int64)})
