"""PRP: video playback rate perception (Yao et al., CVPR 2020)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import (PAPER_KEYS, Sampler, TooShort, frame_aspect, paper_params,
                                     scale_crop_box, stack_params, strided)
from pipelines.types import ClipPlan

RESIZE_HW = (128.0, 171.0)


def motion_positions(clip_len: int) -> np.ndarray:
    """Frames of one clip_len-frame chunk the motion mask differences: 0, 5, 10, 15 for 16
    (four evenly spaced frames, rounded)."""
    return np.rint(np.linspace(0, clip_len - 1, 4)).astype(np.int64)


class PRPSampler(Sampler):
    """One clip at a random playback rate, its 2× denser reconstruction target and the raw
    frames of the motion mask (spec §3).

    Original (yuanyao366/PRP, datasets/predict_dataset.py PredictDataset): rate s drawn uniformly
    from sample_step_list [1,2,4,8], label = its index; needs ≥ 16s+1 frames (else another random
    video is drawn); start uniform in [0, N−16s−1], minus 1 if > 0; input = every s-th frame of
    the 16s-frame window; recon target (32 frames, recon rate 2): every (s/2)-th frame for s ≥ 2;
    for s = 1 the 16 real frames interleaved with synthetic averages of neighbours (flags 1 at the
    even positions only; the loss ignores the synthetic ones). Motion mask (DPAU): per 16-frame
    chunk of the window, frames 0,5,10,15. Resize 128×171, centre crop 112, no flip, [0,1].

    Plan (T = clip_len): frames (1, T) = start + s·[0..T); label = rates.index(s);
    extra_frames["recon"] (2T,): start + (s/2)·[0..2T) for s ≥ 2; for s = 1 position 2i holds
    start+i and the synthetic position 2i+1 holds a copy of its left neighbour start+i (not an
    average: flags are 0 there and the loss ignores it); extras["recon_flags"] int32 (2T,),
    1 = real frame;
    extra_frames["motion"] (4·max(rates),): chunk c's frames c·T + motion_positions(T), padded by
    repeating the last index; extras["motion_len"] = 4s, extras["rate"] = s (int64 scalars).
    params crop: the centre 112 box of the 128×171 frame. normalize 'unit'.

    Complexity knob: ``rates`` (1,2) / (1,2,4) / (1,2,4,8) → 2 / 3 / 4 classes. Every rate must be
    1 or even (the 2× target takes every (s/2)-th frame).

    Short video: the original (predict_dataset.py ``loadcvvideo_Finsert``) loads another random
    video at the same rate for that one draw, and uses the short video again at the rates it can
    serve. So plan() raises TooShort(permanent=False) when the usable range has fewer than T·s+1
    frames for the drawn s (the loader replaces the video for this sample only; the replacement
    gets the same rate, the rate being the first draw of the sample's rng), and
    TooShort(permanent=True) only when it has fewer than T·min(rates)+1, too short for every
    rate (the loader then skips it for the run). ``min_frames`` = T·max(rates)+1 never fails.
    augment has no effect under 'original' (PRP pretrains with a centre crop). protocol 'paper'
    (supp. C.3): ``base.paper_params`` (drawn after the frames, so the temporal plan is the
    original's); the reconstruction target and the motion frames get the same parameters (they
    are augmented with the clip's row).
    """

    name = "prp"
    paper_augment = True
    normalize = "unit"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 rates=(1, 2, 4, 8), **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        rates = tuple(rates)
        if (not rates or len(set(rates)) != len(rates)
                or any(int(r) != r or r < 1 or (r != 1 and r % 2) for r in rates)):
            raise ValueError(f"prp sampler: rates must be distinct positive integers, each 1 or "
                             f"even, got {rates}")
        self.rates = tuple(int(r) for r in rates)
        self.num_classes = len(self.rates)
        self.min_frames = self.clip_len * max(self.rates) + 1
        self.motion_pad = 4 * max(self.rates)
        if self.augment and self.protocol == "paper":
            self.param_keys = PAPER_KEYS

    def _strict_length(self) -> bool:
        return False  # the need depends on the drawn rate

    def need(self) -> tuple[str, str]:
        return (f"≥ {self.min_frames} frames (rate {max(self.rates)}: {self.clip_len} × "
                f"{max(self.rates)} + 1)", "sampler.rates or --clip-len")

    def _plan(self, record, length, rng):
        t = self.clip_len
        label = int(rng.integers(len(self.rates)))
        s = self.rates[label]
        need = t * s + 1
        if length < need:
            raise TooShort(record.path, need, length, f"prp at rate {s}",
                           permanent=length < t * min(self.rates) + 1)
        start = int(rng.integers(0, length - t * s))  # [0, N − Ts − 1] inclusive
        if start > 0:
            start -= 1
        frames = strided(start, t, s)
        if s == 1:
            recon = np.repeat(strided(start, t), 2)
            flags = np.tile(np.array([1, 0], np.int32), t)
        else:
            recon = strided(start, 2 * t, s // 2)
            flags = np.ones(2 * t, np.int32)
        motion = (start + (np.arange(s)[:, None] * t + motion_positions(t)[None, :])).reshape(-1)
        motion = np.concatenate([motion, np.full(self.motion_pad - motion.size, motion[-1])])
        hw = (RESIZE_HW[0] * self.size / 112.0, RESIZE_HW[1] * self.size / 112.0)
        if self.augment and self.protocol == "paper":
            params = stack_params([paper_params(rng, frame_aspect(record), self.size)])
        else:
            params = stack_params([{"crop": scale_crop_box(None, hw, (self.size, self.size))}])
        return ClipPlan(frames[None], label, params,
                        {"recon": recon, "motion": motion.astype(np.int64)},
                        {"recon_flags": flags, "motion_len": np.asarray(4 * s, np.int64),
                         "rate": np.asarray(s, np.int64)})
