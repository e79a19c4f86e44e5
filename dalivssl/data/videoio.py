"""PyAV helpers: write frames to a video file and decode chosen frames (reference decoder).

These are the ground truth the DALI path is tested against and the baseline the loader benchmark
compares with. Frame index i = the i-th decoded frame in presentation order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# container suffix and PyAV codec name per codec choice
CODECS = {"vp9": (".webm", "libvpx-vp9"), "vp8": (".webm", "libvpx"),
          "mjpeg": (".avi", "mjpeg"), "h264": (".mp4", "libx264"), "mpeg4": (".avi", "mpeg4")}


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: int = 25,
                codec: str = "vp9", gop: int | None = None, bitrate: int | None = None,
                quality: str = "fast", threads: int | None = None) -> Path:
    """Encode uint8 RGB frames (F,H,W,3) into ``path``; returns the path.

    VP9 uses libvpx realtime settings (fast enough for the synthetic dataset on 2 cores); ``gop``
    sets the keyframe interval (None = encoder default); ``threads`` the encoder threads (None =
    codec default; 1 inside worker pools, which already use every core).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, codec_name = CODECS[codec]
    frames = iter(frames)
    first = np.asarray(next(frames))
    h, w = first.shape[:2]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec_name, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        opts = {}
        if codec in ("vp9", "vp8"):
            opts = {"deadline": "realtime" if quality == "fast" else "good", "cpu-used": "8",
                    "lag-in-frames": "0", "row-mt": "1"}
            if bitrate is None:
                opts.update({"crf": "30", "b": "0"})
        elif codec == "h264":
            opts = {"preset": "veryfast", "tune": "zerolatency"}
        if bitrate is not None:
            stream.bit_rate = int(bitrate)
        if gop is not None:
            stream.gop_size = int(gop)
            if codec in ("vp9", "vp8"):
                opts["g"] = str(int(gop))
                opts["keyint_min"] = str(int(gop))
        if threads is not None:
            stream.codec_context.thread_count = int(threads)
            if codec in ("vp9", "vp8"):
                opts["row-mt"] = "0" if int(threads) == 1 else "1"
        stream.options = opts
        for img in _chain(first, frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames by index with PyAV (sequential decode, no seek): uint8 (N,H,W,3) RGB.

    ``indices`` may repeat and be in any order; None decodes every frame.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if indices is None:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        want = np.asarray(indices, dtype=np.int64)
        if want.size == 0:
            return np.zeros((0, stream.height, stream.width, 3), np.uint8)
        last = int(want.max())
        got: dict[int, np.ndarray] = {}
        needed = set(want.tolist())
        for i, frame in enumerate(container.decode(stream)):
            if i in needed:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    missing = sorted(needed - got.keys())
    if missing:
        raise IndexError(f"{path}: frames {missing[:5]} beyond the last decodable frame")
    return np.stack([got[int(i)] for i in want])
