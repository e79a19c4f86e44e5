"""Baselines of `dalivssl bench loader`: what a competent PyTorch user writes, on the SAME plans
as the DALI PretextLoader (same frame indices, crops, flips and jitter parameters, read from
``plan.params``) and producing the same float K×C×T×H×W clips.

  torchcodec  one ``torchcodec.decoders.VideoDecoder`` per video (``seek_mode='exact'``: the
              frame index is scanned, 'approximate' is one frame short on some WebM files;
              ``num_ffmpeg_threads=1``: the DataLoader already runs one worker per core), ONE
              ``get_frames_at`` call for all of a plan's indices, geometry then colour on uint8
              with ``torchvision.transforms.v2.functional``, float last.
  pyav        PyAV, seeking to the keyframe before the plan's first frame, RGB via to_ndarray.
  ceiling     the same GOP ranges the DALI loader decodes (``pipelines.packets.choose_ranges``),
              decoded by FFmpeg through PyAV with NO colour conversion and NO resize: frames are
              decoded and dropped. The physical decode limit of this machine for these plans.
"""
from __future__ import annotations

import os
from pathlib import Path

TORCHCODEC_SEEK_MODE = "exact"
TORCHCODEC_THREADS = 1


def pyav_decode(path: str, indices) -> tuple:
    """uint8 (N,H,W,3) frames at ``indices`` and the number of frames decoded to get them."""
    import av
    import numpy as np

    want = np.asarray(indices, np.int64)
    needed = set(want.tolist())
    lo, hi = int(want.min()), int(want.max())
    got, decoded = {}, 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1  # one process per core already
        fps, tb = s.average_rate, s.time_base
        t0 = s.start_time or 0
        if lo > 0:
            c.seek(int(t0 + lo / (fps * tb)), stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            idx = int(round((frame.pts - t0) * tb * fps))
            decoded += 1
            if idx in needed:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= hi:
                break
    return np.stack([got[int(i)] for i in want]), decoded


def torch_augment(frames, params: dict, k: int, out_size, normalize: str):
    """The loader's augmentation of clip ``k`` in torch: uint8 (T,C,H,W) tensor (or (T,H,W,3)
    array) -> float (C,T,H,W). Crop, resize and flip run on uint8, then RSPNet's colour jitter
    (brightness, contrast, saturation, hue) on uint8; the float conversion comes last."""
    import math

    import torch
    import torchvision.transforms.v2.functional as F

    from pipelines.augment import pixel_box

    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames).permute(0, 3, 1, 2)
    box = params.get("crop", [[0, 0, 1, 1]] * (k + 1))[k]
    x = F.resized_crop(x, *pixel_box(box, *x.shape[-2:]), list(out_size), antialias=True)

    def p(key, default):
        return float(params[key][k]) if key in params else default

    if p("flip", 0):
        x = F.horizontal_flip(x)
    if p("angle", 0.0):
        x = F.rotate(x, p("angle", 0.0))
    if "brightness" in params:
        x = F.adjust_brightness(x, p("brightness", 1.0))
    if "contrast" in params:
        x = F.adjust_contrast(x, p("contrast", 1.0))
    if p("gray", 0):
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    elif "saturation" in params:
        x = F.adjust_saturation(x, p("saturation", 1.0))
    if p("hue", 0.0):
        x = F.adjust_hue(x, max(-0.5, min(0.5, p("hue", 0.0) / 360.0)))
    if p("blur_sigma", 0.0) > 0:
        s = p("blur_sigma", 0.0)
        ks = 2 * math.ceil(3 * s) + 1
        x = F.gaussian_blur(x, [ks, ks], [s, s])
    if p("solarize", 0):
        x = F.solarize(x, 128)
    x = x.permute(1, 0, 2, 3).float().div_(255.0)  # C T H W
    if normalize == "imagenet":
        from pipelines.types import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
        x = (x - mean) / std
    return x


def torchcodec_decode(path: str, indices) -> tuple:
    """uint8 (N,C,H,W) frames at ``indices`` with one ``get_frames_at`` call; the decoded count
    is not exposed by torchcodec (-1)."""
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(path, seek_mode=TORCHCODEC_SEEK_MODE, num_ffmpeg_threads=TORCHCODEC_THREADS,
                       dimension_order="NCHW")
    return dec.get_frames_at(indices=[int(i) for i in indices]).data, -1


def ceiling_decode(path: str, ranges) -> int:
    """Decode the frame ranges ``[(start, end)]`` (start: a keyframe) with PyAV and drop the
    frames (no to_ndarray, no reformat); returns the number of frames decoded."""
    import av

    decoded = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        fps, tb = s.average_rate, s.time_base
        t0 = s.start_time or 0
        for lo, hi in ranges:
            c.seek(int(t0 + lo / (fps * tb)), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                decoded += 1
                if int(round((frame.pts - t0) * tb * fps)) >= hi - 1:
                    break
    return decoded


def _ceiling_ranges(indices, index) -> list[tuple[int, int]]:
    if index is None:  # no packet index: from frame 0 to the last needed frame
        return [(0, int(max(indices)) + 1)]
    from pipelines.packets import choose_ranges

    return [(int(a), int(b)) for a, b in choose_ranges(index, indices)]


class PlanDataset:
    """torch Dataset over fixed (path, plan[, packet index]) items: decode with ``decoder``
    (a DECODERS key) then augment; 'ceiling' only decodes and returns zero clips."""

    def __init__(self, items, out_size, normalize, decoder="pyav"):
        self.items, self.out_size = items, out_size
        self.normalize, self.decoder = normalize, decoder

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch

        path, plan, *index = self.items[i]
        idx = plan.all_frames()
        K, T = plan.frames.shape
        if self.decoder == "ceiling":
            decoded = ceiling_decode(path, _ceiling_ranges(idx, index[0] if index else None))
            clips = torch.zeros(K, 3, T, *self.out_size)
        else:
            frames, decoded = DECODERS[self.decoder](path, idx)
            clips = torch.stack([torch_augment(frames[k * T:(k + 1) * T], plan.params, k,
                                               self.out_size, self.normalize) for k in range(K)])
        return clips, torch.tensor(plan.label), torch.tensor(decoded)


DECODERS = {"torchcodec": torchcodec_decode, "pyav": pyav_decode}


def peak_rss_mb(pids=()) -> dict:
    """Peak resident memory (MiB): this process (``ru_maxrss``) and each of ``pids`` (VmHWM of
    /proc/<pid>/status; workers that are gone are left out)."""
    import resource

    out = {"main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "workers": []}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out["workers"].append(int(line.split()[1]) / 1024.0)
        except OSError:
            pass
    return out


def torchcodec_missing() -> str | None:
    """Why torchcodec cannot run here (None when it can)."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as exc:  # ImportError, or FFmpeg's shared libraries missing (RuntimeError)
        return (f"torchcodec unavailable ({str(exc).splitlines()[0][:100]}): pip install "
                f"'dalivssl[bench]' and apt-get install ffmpeg")
    return None


