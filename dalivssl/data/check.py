"""Check a manifest's videos before training: every bad video with a one-line reason.

Reasons: missing, empty file, not a video, no video stream, truncated or corrupt (demux/duration
checks, and with ``decode=True`` a real DALI decode of the last frame), codec not decodable on the
chosen DALI device, frame count differing from the manifest, a packet index that no longer fits
its file, fewer usable frames than needed.

DALI 2.4 decodes VP8/VP9/MJPEG on CPU; AV1, MPEG-4 part 2, H.264 and HEVC need the mixed (GPU)
backend (spec/dali.md §1). UCF101/HMDB51 (.avi, MPEG-4) and Kinetics (H.264) therefore need
``dalivssl data prepare`` for the CPU path.
"""
from __future__ import annotations

import re

import numpy as np

from dalivssl.data.index import probe_many
from dalivssl.data.manifest import Manifest, VideoRecord
from dalivssl.errors import DalivsslError

CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
GPU_CODECS = CPU_CODECS | {"av1", "mpeg4", "h264", "hevc"}
DEVICE_CODECS = {"cpu": CPU_CODECS, "gpu": GPU_CODECS}


def codec_problem(codec: str, device: str) -> str | None:
    """Why ``codec`` cannot be decoded by DALI on ``device``, or None."""
    if codec in DEVICE_CODECS[device]:
        return None
    if device == "cpu" and codec in GPU_CODECS:
        return (f"codec {codec} not decodable by DALI's CPU decoder (VP8/VP9/MJPEG only); "
                f"transcode with `dalivssl data prepare MANIFEST OUT --codec vp9` or use "
                f"--device gpu")
    return (f"codec {codec or '?'} not decodable by DALI on {device}; transcode with "
            f"`dalivssl data prepare MANIFEST OUT --codec vp9`")


def check_manifest(manifest: Manifest, device: str = "cpu", min_frames: int = 0,
                   decode: bool = False, workers: int | None = None, progress: bool = False
                   ) -> list[tuple[VideoRecord, str]]:
    """[(record, reason)] for every record that cannot be used; [] when all are fine."""
    if device not in DEVICE_CODECS:
        raise DalivsslError(f"unknown device {device!r}; valid: cpu, gpu")
    results = probe_many(manifest.paths(), False, workers, progress)
    bad: list[tuple[VideoRecord, str]] = []
    to_decode: list[VideoRecord] = []
    for rec, res in zip(manifest.records, results):
        if isinstance(res, str):
            bad.append((rec, res))
            continue
        why = codec_problem(res["codec"], device)
        if why is None and res["num_frames"] != rec.num_frames:
            why = (f"frame count {res['num_frames']} differs from the manifest's "
                   f"{rec.num_frames} (re-index the dataset)")
        if why is None:
            why = _packet_index_problem(manifest, rec, res["num_frames"])
        if why is None and rec.usable_frames < min_frames:
            why = f"too short: {rec.usable_frames} usable frames, {min_frames} needed"
        if why is None:
            to_decode.append(rec)
        else:
            bad.append((rec, why))
    if decode and to_decode:
        for rec, why in dali_decode_check(manifest, to_decode, device, progress):
            bad.append((rec, why))
    order = {id(r): i for i, r in enumerate(manifest.records)}
    bad.sort(key=lambda rw: order[id(rw[0])])
    return bad


def _packet_index_problem(manifest: Manifest, rec: VideoRecord, frames: int) -> str | None:
    """Why the record's packet index (if any) no longer describes its file, or None."""
    import os

    ix = manifest.packet_index(rec)
    if ix is None:
        return None
    size = os.path.getsize(manifest.abspath(rec))
    if size != ix.file_size or ix.num_frames != frames:
        return (f"file changed since its packet index was recorded ({size} bytes, "
                f"{ix.file_size} indexed): run `dalivssl data index --update`")
    return None


def dali_decode_check(manifest: Manifest, records: list[VideoRecord], device: str = "cpu",
                      progress: bool = False) -> list[tuple[VideoRecord, str]]:
    """Decode each record's last frame with ``fn.decoders.video`` (pad_mode='none', so a frame
    that is not there is an error instead of padding). DALI's decoder decodes from frame 0, so
    this reads the whole stream. A pipeline that failed is rebuilt for the next file."""
    from dalivssl.data.parallel import progress_bar

    bad, dead = [], []
    pipe = None
    with progress_bar("decode", len(records), progress) as advance:
        for rec in records:
            if pipe is None:
                pipe = _decode_pipeline(device)
            data = np.fromfile(manifest.abspath(rec), dtype=np.uint8)
            last = np.array([rec.num_frames - 1], dtype=np.int32)
            try:
                pipe.feed_input("enc", [data])
                pipe.feed_input("frames", [last])
                (out,) = pipe.run()
                got = out.as_cpu()[0] if device == "gpu" else out[0]
                if np.asarray(got).shape[0] != 1:
                    bad.append((rec, "truncated or corrupt (DALI decoded no frame)"))
            except Exception as exc:  # DALI raises RuntimeError with a multi-line message
                m = re.search(r"ROI with (\d+) frames", str(exc))
                why = (f"DALI decodes only {m.group(1)} of {rec.num_frames} frames" if m
                       else f"DALI: {_dali_reason(exc)}")
                bad.append((rec, f"truncated or corrupt ({why})"))
                # a failed pipeline is dead; keep it referenced until the end, because
                # destroying it while another one runs invalidates that one too
                dead.append(pipe)
                pipe = None
            advance()
    return bad


def _dali_reason(exc: BaseException) -> str:
    """The operator's own message out of DALI's multi-line error text."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1].split("C++ context", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _decode_pipeline(device: str):
    from nvidia.dali import fn, pipeline_def, types

    # prefetch 1: each run() consumes exactly the one file fed before it
    @pipeline_def(batch_size=1, num_threads=1, device_id=0 if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def _pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(enc, device="mixed" if device == "gpu" else "cpu",
                                 frames=frames, pad_mode="none")

    pipe = _pipe()
    pipe.build()
    return pipe
