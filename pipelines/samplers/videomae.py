"""VideoMAE: masked autoencoding of video tubes (Tong et al., NeurIPS 2022)."""
from __future__ import annotations

import numpy as np

from pipelines.samplers.base import Sampler, centre_box, stack_params
from pipelines.types import ClipPlan

SCALES = (1.0, 0.875, 0.75, 0.66)
# the frame assumed when a record does not give its size: 320×240 (UCF101/HMDB51)
DEFAULT_WH = (320, 240)


def multiscale_crop_box(rng: np.random.Generator, frame_wh: tuple[int, int], out_size: int,
                        scales=SCALES, max_distort: int = 1) -> np.ndarray:
    """VideoMAE ``GroupMultiScaleCrop`` (from TSN) as a relative box [y0, x0, h, w].

    Crop sides int(min(W, H)·scale), snapped to ``out_size`` when within 3 px; a (w, h) pair of
    sides whose scale indices differ by at most ``max_distort``; one of 13 fixed offsets (corners,
    centre, edge centres, quarter points: ``fill_fix_offset(more_fix_crop=True)``) on a grid of
    quarter steps of the free room. Sides are clipped to the frame (the original would pad)."""
    fw, fh = int(frame_wh[0]), int(frame_wh[1])
    base = min(fw, fh)
    sides = [int(base * s) for s in scales]
    sides = [out_size if abs(x - out_size) < 3 else x for x in sides]
    pairs = [(sides[j], sides[i]) for i in range(len(sides)) for j in range(len(sides))
             if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    cw, ch = min(cw, fw), min(ch, fh)
    ws, hs = (fw - cw) // 4, (fh - ch) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
               (1, 1), (3, 1), (1, 3), (3, 3)]  # (x, y) in quarter steps
    ox, oy = offsets[int(rng.integers(len(offsets)))]
    return np.array([oy * hs / fh, ox * ws / fw, ch / fh, cw / fw], np.float32)


def tube_mask(rng: np.random.Generator, grid: tuple[int, int, int], ratio: float) -> np.ndarray:
    """VideoMAE ``TubeMaskingGenerator``: bool (t, h, w), True = masked; int(ratio·h·w) spatial
    positions drawn without replacement, the same positions masked in every temporal slot."""
    t, h, w = grid
    hw = h * w
    spatial = np.zeros(hw, bool)
    spatial[rng.permutation(hw)[:int(ratio * hw)]] = True
    return np.broadcast_to(spatial.reshape(1, h, w), (t, h, w)).copy()


class VideoMAESampler(Sampler):
    """One clip (K=1) of T frames at ``sampling_rate`` and its tube mask (spec §7).

    Original (MCG-NJU/VideoMAE): ``kinetics.py VideoMAE._sample_train_indices`` with one segment
    (start uniform in [0, N − T·rate], i.e. ``np.random.randint(N − skip_length + 1)``, no
    temporal jitter) and ``_video_TSN_decord_batch_loader`` (frames start + rate·i);
    ``datasets.DataAugmentationForVideoMAE``: GroupMultiScaleCrop(224, [1, .875, .75, .66]),
    no flip, no colour jitter, ImageNet normalisation; ``masking_generator.TubeMaskingGenerator``.

    Plan: frames (1, T); label 0; params crop (the multi-scale box, on the record's
    width/height, 320×240 when unknown); extras["mask"] bool (T/tubelet, size/patch, size/patch),
    True = masked, one spatial mask of exactly int(mask_ratio·h·w) positions repeated over every
    temporal slot, drawn from the sample's rng after the start and the crop, so it is
    reproducible and resumable. normalize 'imagenet'.

    Complexity knob: ``mask_ratio`` (0.9 for K400/SSv2, the default here; 0.75 for UCF101 and
    VideoMAE's argparse default). Options: ``sampling_rate`` (4), ``tubelet`` (2), ``patch`` (16):
    clip_len must be a multiple of tubelet and size of patch.

    Short video (N < T·rate): as the original, start 0 and the index stops advancing at the last
    frame it can reach on the rate grid (that frame repeats); never raises unless the video has no
    frame. augment=False: the centre square of side min(W, H) (scale 1); the mask stays random
    (it is the task's input).
    """

    name = "videomae"
    normalize = "imagenet"

    def __init__(self, clip_len: int = 16, size: int = 112, augment: bool = True, *,
                 protocol: str = "original",
                 mask_ratio: float = 0.9, sampling_rate: int = 4, tubelet: int = 2,
                 patch: int = 16, **unknown):
        super().__init__(clip_len, size, augment, protocol)
        self._reject(unknown)
        if int(sampling_rate) < 1 or int(tubelet) < 1 or int(patch) < 1:
            raise ValueError(f"videomae sampler: sampling_rate, tubelet and patch must be >= 1, "
                             f"got {sampling_rate}, {tubelet}, {patch}")
        if self.clip_len % int(tubelet) or self.size % int(patch):
            raise ValueError(f"videomae sampler: clip_len {self.clip_len} must be a multiple of "
                             f"the tubelet ({tubelet}) and size {self.size} of the patch "
                             f"({patch})")
        self.sampling_rate, self.tubelet, self.patch = int(sampling_rate), int(tubelet), int(patch)
        self.grid = (self.clip_len // self.tubelet, self.size // self.patch,
                     self.size // self.patch)
        hw = self.grid[1] * self.grid[2]
        masked = int(float(mask_ratio) * hw)
        if not 0 < masked < hw:
            raise ValueError(f"videomae sampler: mask_ratio {mask_ratio} masks {masked} of the "
                             f"{hw} spatial positions at size {self.size}; at least one must be "
                             f"masked and one visible")
        self.mask_ratio = float(mask_ratio)
        self.num_masked = masked  # per temporal slot

    def _plan(self, record, length, rng):
        t, s = self.clip_len, self.sampling_rate
        room = length - t * s
        start = int(rng.integers(0, room + 1)) if room >= 0 else 0
        last = start + s * ((length - 1 - start) // s)  # last frame reachable on the rate grid
        frames = np.minimum(start + s * np.arange(t, dtype=np.int64), last)
        w, h = int(getattr(record, "width", 0) or 0), int(getattr(record, "height", 0) or 0)
        wh = (w, h) if w > 0 and h > 0 else DEFAULT_WH
        if self.augment:
            crop = multiscale_crop_box(rng, wh, self.size)
        else:
            base = min(wh)
            crop = centre_box(base / wh[1], base / wh[0])
        mask = tube_mask(rng, self.grid, self.mask_ratio)
        return ClipPlan(frames[None], 0, stack_params([{"crop": crop}]), {}, {"mask": mask})
