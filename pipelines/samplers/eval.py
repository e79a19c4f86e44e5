"""Evaluation samplers: evenly spaced clips for video-level scores, or one random clip for
finetuning (the downstream protocol of Kumar et al., arXiv 2306.06010)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (Sampler, coin, frame_aspect, full_box, short_side_crop_box,
                                     stack_params, strided)
from pipelines.types import ClipPlan


class EvalSampler(Sampler):
    """N clips of T frames at ``stride`` (K = N), labelled with the record's class.

    Original: the downstream finetune/test protocol of the benchmark (Kumar et al.) — several
    evenly spaced clips per video whose scores are averaged, a random clip for training; the
    spec (Qian et al. 2021, CVRL linear eval) tests with 10 clips × 3 crops. There is no
    single reference implementation, so this sampler fixes the convention below.

    Deterministic mode (default): N evenly spaced clip starts covering the usable range: for
    N = 1 the centre clip, start (L − span)//2; for N > 1, start_i = i·(L − span)//(N − 1), the
    first clip at the first frame and the last ending at the last frame (span = (T−1)·stride+1).
    Crop: ``crop='center'`` resizes the short side to size·128/112 and takes the centre size×size
    (the 128→112 convention of the pretext tasks), ``crop='full'`` the whole frame resized to
    size×size.

    ``random=True`` (finetuning): one clip with a uniform start in [0, L − span], a random
    size×size crop of the short-side-resized frame and a horizontal flip with p 0.5 (with
    augment=False: centre crop, no flip; ``crop='full'``: whole frame, flip only). ``flip=False``
    keeps the random crop and drops the flip: for classes that name a left/right direction
    (``Manifest.flip_safe``), where a flipped clip would carry the wrong label.

    ``protocol='paper'``: "For finetuning the augmentations are Resize and Center Crop for all"
    (supp. C.3): the training clip keeps its random start but takes the centre crop, no flip.

    Plan: frames (N, T); label = record.label (−1 if unlabelled); params crop (and flip when
    random). ``normalize`` option: 'imagenet' (default) or 'unit', to match the pretext task of
    the checkpoint. num_classes is 0: the class count comes from the manifest.

    Short video (L < span): clips start at 0 and indices loop modulo L (every frame is still
    seen); only a video with no usable frame raises TooShort.
    """

    name = "eval"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 num_clips: int = 1, stride: int = 1, random: bool = False, crop: str = "center",
                 normalize: str = "imagenet", flip: bool = True, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if int(num_clips) < 1 or int(stride) < 1:
            raise ValueError(f"eval sampler: num_clips and stride must be >= 1, got "
                             f"{num_clips}, {stride}")
        if random and int(num_clips) != 1:
            raise ValueError(f"eval sampler: random=True draws one clip, got num_clips="
                             f"{num_clips}")
        if crop not in ("center", "full"):
            raise ValueError(f"eval sampler: crop must be 'center' or 'full', got {crop!r}")
        if normalize not in ("imagenet", "unit"):
            raise ValueError(f"eval sampler: normalize must be 'imagenet' or 'unit', got "
                             f"{normalize!r}")
        self.num_clips = int(num_clips)
        self.stride = int(stride)
        self.random = bool(random)
        self.crop = crop
        self.normalize = normalize
        self.span = (self.clip_len - 1) * self.stride + 1
        self.flip = bool(flip)
        # the paper's finetuning and evaluation: "Resize and Center Crop for all" (supp. C.3)
        self.jitter = self.random and self.augment and self.protocol == "original"
        self.param_keys = ("crop", "flip") if (self.jitter and self.flip) else ("crop",)

    def starts(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """int64 (N,) clip starts relative to the usable range."""
        room = max(length - self.span, 0)
        if self.random:
            return np.array([rng.integers(0, room + 1)], np.int64)
        if self.num_clips == 1:
            return np.array([room // 2], np.int64)
        return (np.arange(self.num_clips, dtype=np.int64) * room) // (self.num_clips - 1)

    def _plan(self, record, length, rng):
        frames = np.stack([strided(s, self.clip_len, self.stride)
                           for s in self.starts(length, rng)]) % length
        aspect = frame_aspect(record)
        jitter = self.jitter
        clips = []
        for _ in range(self.num_clips):
            if self.crop == "full":
                p = {"crop": full_box()}
            else:
                p = {"crop": short_side_crop_box(rng if jitter else None, aspect, self.size)}
            if jitter and self.flip:
                p["flip"] = coin(rng, 0.5)
            clips.append(p)
        return ClipPlan(frames, int(getattr(record, "label", -1)), stack_params(clips))
