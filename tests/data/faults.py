"""Faulty decoders for the verification hook ($DALIVSSL_VERIFY_DECODER=tests.data.faults:NAME):
the errors NVDEC can make silently (reviews/gpu_first_run.md R1, R3), played by PyAV on the
loader's bytes. On the 'cpu' backend each is the correct PyAV decoder, so a GPU run can route a
class to the CPU."""
from __future__ import annotations

import numpy as np

from dalivssl.data.verify import _pyav_frames, pyav_decode


def shift_by_one(data, frames, backend, device_id):
    """R3: a hidden picture counted as shown, so every frame comes one late."""
    if backend == "cpu":
        return pyav_decode(data, frames)
    every = _pyav_frames(data)
    return every[np.minimum(np.asarray(frames) + 1, len(every) - 1)]


def decode_order(data, frames, backend, device_id):
    """R1: pictures returned as decoded (packet order), not in presentation order."""
    if backend == "cpu":
        return pyav_decode(data, frames)
    return _pyav_frames(data, decode_order=True)[np.asarray(frames)]


def substream_decode_order(data, frames, backend, device_id):
    """R1 as the review expects it: whole files (pts from the container) decode right, GOP-range
    sub-streams come back in decode order."""
    if backend == "cpu" or bytes(np.asarray(data[:4], np.uint8)) != b"\x1a\x45\xdf\xa3":
        return pyav_decode(data, frames)  # not a Matroska sub-stream (the source is MP4)
    return _pyav_frames(data, decode_order=True)[np.asarray(frames)]
