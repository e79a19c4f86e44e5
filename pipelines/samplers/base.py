"""Shared pieces of the pretext samplers: the TooShort error, the base class and the drawing
helpers for augmentation parameters (crop boxes, flips, colour jitter, blur, …).

Pure numpy. Every helper takes the sample's ``numpy.random.Generator`` and draws from it in a
fixed order, so a plan is a pure function of (record, rng) (see ``pipelines.types.sample_rng``).

Conventions of the parameters (keys of ``pipelines.types.PARAM_KEYS``, leading dim K):

- ``crop`` is a box [y0, x0, h, w] relative to the decoded frame, resized to ``out_size``.
  Resize-then-crop recipes of the originals ("resize to 128×171, random crop 112", "short side to
  128, random crop 112") are expressed exactly as the relative box of the crop inside the resized
  frame. Recipes that depend on the frame's aspect ratio read ``record.width``/``record.height``;
  where a record does not carry them (0) a 4:3 frame (320×240, UCF101/HMDB51) is assumed.
- ``hue`` is in degrees. torchvision's ``ColorJitter(hue=h)`` and TF's ``adjust_hue(delta)`` both
  shift hue by a fraction of a full turn, so a jitter strength ``h`` becomes U(−360h, +360h)
  degrees (CVRL 0.2 → ±72°, RSPNet 0.4 → ±144°, TDL 0.5 → ±180°).
- brightness / contrast / saturation are multiplicative factors; a torchvision-style strength
  ``b`` becomes U(max(0, 1−b), 1+b).
- ``blur_sigma`` is in output pixels; 0 means no blur.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import numpy as np

from pipelines.augment import IDENTITY as _PARAM_IDENTITY
from pipelines.types import ClipPlan

# 4:3, the frame shape of UCF101/HMDB51 (320×240), when a record does not say.
DEFAULT_ASPECT = 4.0 / 3.0

# dtype of every parameter key (PARAM_KEYS): float32 boxes/values, int32 flags, and the identity
# value of every key but crop; both read from the one table the DALI graph fills plans with.
PARAM_DTYPES = {k: dtype for k, (dtype, _) in _PARAM_IDENTITY.items()}
IDENTITY = {k: value for k, (_, value) in _PARAM_IDENTITY.items() if k != "crop"}
COLOUR_KEYS = ("brightness", "contrast", "saturation", "hue")


class TooShort(ValueError):
    """The video has fewer usable frames than the task needs. ``permanent`` (default): it never
    will have (the loader skips it for the rest of the run and counts it); False: only this draw
    needs more (e.g. PRP's rate), so the loader replaces it for this sample only."""

    def __init__(self, path, need: int, have: int, task: str = "", permanent: bool = True):
        self.path = str(path)
        self.need = int(need)
        self.have = int(have)
        self.task = task
        self.permanent = bool(permanent)
        what = f" for {task}" if task else ""
        super().__init__(f"{self.path}: too short{what}: needs {self.need} usable frames, "
                         f"has {self.have}")


# ------------------------------------------------------------------------------------------------
# records and frame indices

def usable_range(record) -> tuple[int, int]:
    """(start_frame, number of usable frames) of any record with num_frames/start_frame/end_frame
    (the same rule as ``VideoRecord.usable_frames``: end_frame −1 means num_frames)."""
    num = int(record.num_frames)
    start = max(0, int(getattr(record, "start_frame", 0) or 0))
    end = int(getattr(record, "end_frame", -1))
    end = num if end < 0 else min(end, num)
    return start, max(0, end - start)


def frame_aspect(record) -> float:
    """Width/height of the record's frames; DEFAULT_ASPECT when the record does not know."""
    w, h = int(getattr(record, "width", 0) or 0), int(getattr(record, "height", 0) or 0)
    return w / h if w > 0 and h > 0 else DEFAULT_ASPECT


def strided(start: int, length: int, stride: int = 1) -> np.ndarray:
    """int64 (length,): start, start+stride, …"""
    return int(start) + int(stride) * np.arange(int(length), dtype=np.int64)


# ------------------------------------------------------------------------------------------------
# spatial boxes (relative [y0, x0, h, w])

def centre_box(h: float = 1.0, w: float = 1.0) -> np.ndarray:
    """Relative box of size (h, w) centred in the frame."""
    return np.array([(1.0 - h) / 2.0, (1.0 - w) / 2.0, h, w], np.float32)


def full_box() -> np.ndarray:
    return np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def short_side_hw(aspect: float, short: float) -> tuple[float, float]:
    """(H, W) after resizing a frame of width/height ``aspect`` so that its short side = short."""
    return (short, short * aspect) if aspect >= 1.0 else (short / aspect, short)


def scale_crop_box(rng: np.random.Generator | None, scaled_hw: tuple[float, float],
                   crop_hw: tuple[float, float]) -> np.ndarray:
    """Box of a (ch, cw) crop inside a frame resized to (H, W): random integer pixel offsets in
    [0, H−ch] × [0, W−cw] (torchvision RandomCrop), or the centre when ``rng`` is None."""
    hh, ww = float(scaled_hw[0]), float(scaled_hw[1])
    ch, cw = min(float(crop_hw[0]), hh), min(float(crop_hw[1]), ww)
    if rng is None:
        return centre_box(ch / hh, cw / ww)
    oy = int(rng.integers(0, int(math.floor(hh - ch)) + 1))
    ox = int(rng.integers(0, int(math.floor(ww - cw)) + 1))
    return np.array([oy / hh, ox / ww, ch / hh, cw / ww], np.float32)


def short_side_crop_box(rng: np.random.Generator | None, aspect: float, size: int,
                        ratio: float = 128.0 / 112.0) -> np.ndarray:
    """"Resize the short side to size·ratio, then (random | centre) crop size×size" as a box."""
    return scale_crop_box(rng, short_side_hw(aspect, size * ratio), (size, size))


def random_resized_box(rng: np.random.Generator, aspect: float, area: tuple[float, float],
                       ratio: tuple[float, float], log_ratio: bool = True,
                       attempts: int = 10) -> np.ndarray:
    """Random-resized-crop box: area fraction U(area), pixel aspect w/h from ``ratio``
    (log-uniform as torchvision, or uniform as TF's sample_distorted_bounding_box), position
    uniform. After ``attempts`` misses: the largest centred box whose aspect lies in ``ratio``
    (torchvision's fallback; the whole frame when the frame's own aspect is in range)."""
    for _ in range(attempts):
        a = rng.uniform(area[0], area[1])
        r = (math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))) if log_ratio
             else rng.uniform(ratio[0], ratio[1]))
        # w_px / h_px = r and w_rel·h_rel = a, with w_px = w_rel·W, h_px = h_rel·H
        h = math.sqrt(a * aspect / r)
        w = math.sqrt(a * r / aspect)
        if h <= 1.0 and w <= 1.0:
            y0 = rng.uniform(0.0, 1.0 - h)
            x0 = rng.uniform(0.0, 1.0 - w)
            return np.array([y0, x0, h, w], np.float32)
    if aspect < ratio[0]:
        return centre_box(aspect / ratio[0], 1.0)
    if aspect > ratio[1]:
        return centre_box(1.0, ratio[1] / aspect)
    return full_box()


# ------------------------------------------------------------------------------------------------
# photometric values

def coin(rng: np.random.Generator, p: float) -> int:
    """1 with probability p (always draws one uniform, so the rng stream does not depend on p)."""
    return int(rng.random() < p)


def jitter_factor(rng: np.random.Generator, strength: float) -> float:
    """torchvision ColorJitter factor: U(max(0, 1−s), 1+s)."""
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


def hue_degrees(rng: np.random.Generator, turn_fraction: float) -> float:
    """Hue shift in degrees for a jitter of ±``turn_fraction`` of a full hue turn."""
    return float(rng.uniform(-turn_fraction, turn_fraction) * 360.0)


JITTER_MODES = ("all", "one_of")


def colour_jitter(rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float, hue: float, p: float = 1.0,
                  mode: str = "all") -> dict[str, float]:
    """SimCLR/torchvision colour jitter values, applied with probability p (identity otherwise).
    mode "all": the four ops; "one_of": one op drawn uniformly, the other three identity (what
    TDL's released ColorJitter does: each shuffled op is applied to the untouched frame, so only
    the last one survives). The values are always drawn so the rng stream is the same whether or
    not it applies."""
    applied = coin(rng, p)
    vals = {"brightness": jitter_factor(rng, brightness), "contrast": jitter_factor(rng, contrast),
            "saturation": jitter_factor(rng, saturation), "hue": hue_degrees(rng, hue)}
    if mode == "one_of":
        keep = COLOUR_KEYS[int(rng.integers(len(COLOUR_KEYS)))]
        vals = {k: v if k == keep else IDENTITY[k] for k, v in vals.items()}
    elif mode != "all":
        raise ValueError(f"jitter mode must be one of {', '.join(JITTER_MODES)}, got {mode!r}")
    return vals if applied else {k: IDENTITY[k] for k in COLOUR_KEYS}


def blur_sigma(rng: np.random.Generator, p: float, lo: float = 0.1, hi: float = 2.0,
               scale: float = 1.0) -> float:
    """Gaussian-blur sigma U(lo, hi)·scale with probability p, else 0 (no blur)."""
    applied = coin(rng, p)
    s = rng.uniform(lo, hi) * scale
    return float(s) if applied else 0.0


# ------------------------------------------------------------------------------------------------
# the benchmark's protocol (Kumar et al., arXiv 2306.06010, supp. C.3)

PROTOCOLS = ("original", "paper")
# Values of C.3's recipe that the paper does not give ("paper gives no value"), chosen here:
PAPER_ROTATION = 10.0  # ±10°: TDL's RandomRotation(10), the only rotation among the originals
PAPER_JITTER = (0.4, 0.4, 0.4, 0.1)  # ColorJitter(b, c, s, hue) with p 0.8: MoCo v2 / SimCLR's
PAPER_JITTER_P = 0.8
PAPER_GAMMA = 1.5  # CVRL's gamma γ log-uniform in [1/1.5, 1.5], p 0.8 (like its colour jitter)
# (augmentation, value used, where it comes from) for --explain: each "paper gives no value"
PAPER_CHOICES = (
    ("rotation", f"U(±{PAPER_ROTATION:g}°) per clip", "TDL's RandomRotation(10)"),
    ("resize + random crop", "short side → size·128/112, random size² crop",
     "VCOP/PRP's 128→112"),
    ("colour jitter", f"b/c/s {PAPER_JITTER[0]:g}, hue {PAPER_JITTER[3]:g}, p {PAPER_JITTER_P:g}",
     "MoCo v2 / SimCLR"),
    ("horizontal flip", "p 0.5", "torchvision RandomHorizontalFlip"),
)
GAMMA_CHOICE = ("gamma (CVRL)", f"log-uniform [1/{PAPER_GAMMA:g}, {PAPER_GAMMA:g}], p "
                f"{PAPER_JITTER_P:g}", "symmetric in log, as the jitter's p")


def check_protocol(name: str, protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"{name} sampler: protocol must be one of {', '.join(PROTOCOLS)}, got "
                         f"{protocol!r}")
    return protocol


def paper_params(rng: np.random.Generator, aspect: float, size: int,
                 angle: float = 0.0) -> dict[str, float]:
    """Supp. C.3's augmentation of one clip (VCOP, RotNet, PRP under ``protocol='paper'``):
    "Random Rotation, Resizing, Random Crop, Color Jittering and Random Horizontal Flipping".
    Resize the short side to size·128/112 and random-crop size×size (the 128→112 convention of
    VCOP/PRP), flip p 0.5, rotation U(±PAPER_ROTATION)° added to ``angle`` (RotNet's label
    angle), colour jitter PAPER_JITTER with p PAPER_JITTER_P."""
    p = {"crop": short_side_crop_box(rng, aspect, size), "flip": coin(rng, 0.5),
         "angle": float(angle + rng.uniform(-PAPER_ROTATION, PAPER_ROTATION))}
    p.update(colour_jitter(rng, *PAPER_JITTER, p=PAPER_JITTER_P))
    return p


PAPER_KEYS = ("crop", "flip", "angle") + COLOUR_KEYS


def paper_gamma(rng: np.random.Generator) -> float:
    """CVRL's extra "gamma adjustment" under the paper (supp. C.3): γ log-uniform in
    [1/PAPER_GAMMA, PAPER_GAMMA] with p PAPER_JITTER_P, else 1."""
    applied = coin(rng, PAPER_JITTER_P)
    g = float(np.exp(rng.uniform(-np.log(PAPER_GAMMA), np.log(PAPER_GAMMA))))
    return g if applied else 1.0


def stack_params(per_clip: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """List of K per-clip dicts (same keys) -> dict of arrays with leading dim K, typed per key."""
    keys = per_clip[0].keys()
    return {k: np.asarray([c[k] for c in per_clip], dtype=PARAM_DTYPES[k]) for k in keys}


# ------------------------------------------------------------------------------------------------
# base class

class Sampler:
    """Base of every sampler (contract C3).

    ``protocol``: 'original' (each task as its original repository) or 'paper' (the
    benchmark's changes, supp. C.3; see each subclass).

    Subclasses set ``name``, ``normalize`` and the per-instance attributes num_clips (K),
    clip_len (T of the plan), num_classes, out_size (H, W), min_frames (usable frames a video
    needs so that ``plan`` never raises TooShort; 1 for samplers that loop/wrap short videos) and
    ``param_keys`` (the keys every plan's ``params`` carries), then implement ``_plan(record,
    start, length, rng)`` with indices relative to the usable range.
    """

    name = "base"
    normalize = "imagenet"
    paper_augment: bool | str = False  # what protocol 'paper' changes in the plan (--explain)

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True,
                 protocol: str = "original"):
        self.protocol = check_protocol(self.name, protocol)
        if int(clip_len) < 1:
            raise ValueError(f"{self.name} sampler: clip_len must be >= 1, got {clip_len}")
        if int(size) < 1:
            raise ValueError(f"{self.name} sampler: size must be >= 1, got {size}")
        self.clip_len = int(clip_len)
        self.size = int(size)
        self.augment = bool(augment)
        self.out_size = (self.size, self.size)
        self.num_clips = 1
        self.num_classes = 0
        self.min_frames = 1
        self.param_keys: tuple[str, ...] = ("crop",)

    def need(self) -> tuple[str, str]:
        """(what a video needs so that every draw can be served, the settings that lower it):
        the one-line refusal of a dataset that cannot serve the task, and ``--explain``."""
        if self.min_frames <= 1:
            return "any length (a shorter video repeats frames)", ""
        return f"≥ {self.min_frames} frames", "--clip-len"

    def check_lengths(self, records) -> None:
        """TooShort-free draws need one video of ``min_frames`` usable frames: when even the
        longest is shorter, one line naming the need and the fix (a ValueError, before any
        decoding), not an empty shard later."""
        if self.min_frames <= 1 or not records:
            return
        longest = max(usable_range(r)[1] for r in records)
        if longest < self.min_frames:
            need, fix = self.need()
            raise ValueError(f"{self.name} at clip_len {self.clip_len} needs {need}; the "
                             f"longest of {len(records)} videos has {longest}: lower {fix}, or "
                             f"use longer videos")

    def _reject(self, unknown: dict) -> None:
        """Unknown task options fail with the list of the valid ones."""
        if unknown:
            valid = [p for p in inspect.signature(type(self).__init__).parameters
                     if p not in ("self", "unknown")]
            raise TypeError(f"{self.name} sampler: unknown option(s) "
                            f"{', '.join(sorted(unknown))}; valid: {', '.join(valid)}")

    def plan(self, record, rng: np.random.Generator) -> ClipPlan:
        """Plan one sample of ``record`` (frames absolute in the file, start_frame applied)."""
        start, length = usable_range(record)
        if length < self.min_frames and self._strict_length():
            raise TooShort(record.path, self.min_frames, length, self.name)
        if length < 1:
            raise TooShort(record.path, max(1, self.min_frames), length, self.name)
        plan = self._plan(record, length, rng)
        frames = np.asarray(plan.frames, np.int64)
        extra = {k: np.asarray(v, np.int64) for k, v in plan.extra_frames.items()}
        for arr in (frames, *extra.values()):
            if arr.size and (arr.min() < 0 or arr.max() >= length):  # a bug here, not bad input
                raise AssertionError(f"{self.name}: planned frame outside [0, {length})")
        extra = {k: v + start for k, v in extra.items()}
        return ClipPlan(frames + start, int(plan.label), plan.params, extra, plan.extras)

    def _strict_length(self) -> bool:
        """True when a video shorter than min_frames raises TooShort up front."""
        return True

    def _plan(self, record, length: int, rng: np.random.Generator) -> ClipPlan:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(K={self.num_clips}, T={self.clip_len}, "
                f"size={self.size}, augment={self.augment}, protocol={self.protocol})")
