"""Check a manifest's videos before training: every bad video with a one-line reason.

Reasons: missing, empty file, not a video, no video stream, truncated or corrupt (demux/duration
checks, and with ``decode=True`` a real DALI decode of the last frame), not decodable on the
chosen DALI device (codec, size, pixel format or bit depth: the one table in
``dalivssl.data.capabilities``), frame count differing from the manifest, a packet index that no
longer fits its file, fewer usable frames than needed.

DALI 2.4 decodes VP8/VP9/MJPEG on CPU; H.264, HEVC, MPEG-4 part 2, VP8 and VP9 (8-bit 4:2:0, at
least NVDEC's minimum size) on the GPU. UCF101/HMDB51 (.avi, MPEG-4) and Kinetics (H.264)
therefore need ``dalivssl data prepare`` for the CPU path.

The decode check runs DALI in a child process that stops at the first failure (G3/G4): a file
that aborts the decoder is a reason, not a crash, and no failed pipeline is kept alive.
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np

from dalivssl.data.capabilities import DEVICES, problem
from dalivssl.data.index import probe_many
from dalivssl.data.manifest import Manifest, VideoRecord
from dalivssl.devices import use_gpu_probe
from dalivssl.errors import DalivsslError


def check_manifest(manifest: Manifest, device: str = "cpu", min_frames: int = 0,
                   decode: bool = False, workers: int | None = None, progress: bool = False
                   ) -> list[tuple[VideoRecord, str]]:
    """[(record, reason)] for every record that cannot be used; [] when all are fine."""
    if device not in DEVICES:
        raise DalivsslError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if device == "gpu":
        use_gpu_probe()  # AV1/MJPEG count where this GPU decodes them
    results = probe_many(manifest.paths(), False, workers, progress)
    bad: list[tuple[VideoRecord, str]] = []
    to_decode: list[VideoRecord] = []
    for rec, res in zip(manifest.records, results):
        if isinstance(res, str):
            bad.append((rec, res))
            continue
        why = problem(res["codec"], res["width"], res["height"], res.get("pix_fmt", ""), device)
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
    this reads the whole stream.

    The decoding runs in a child process (``python -m dalivssl.data.check``) that reports one
    line per file and exits after the first failure; the next child goes on with the next file.
    A child that dies without a report (an abort inside NVDEC) names the file it was decoding."""
    from dalivssl.data.parallel import progress_bar

    device_id = None
    if device == "gpu":
        from dalivssl.devices import local_device_id

        device_id = local_device_id()
    jobs = [(str(manifest.abspath(r)), int(r.num_frames)) for r in records]
    reasons: list[str | None] = []
    with progress_bar("decode", len(jobs), progress) as advance:
        while len(reasons) < len(jobs):
            got, err = _decode_child(jobs[len(reasons):], device, device_id, advance)
            reasons += got
            if err is not None and len(reasons) < len(jobs):  # the child died on this file
                reasons.append(f"truncated or corrupt (DALI aborted the decoder process: {err})")
                advance()
    return [(rec, why) for rec, why in zip(records, reasons) if why is not None]


def _decode_cmd(device: str, device_id) -> list[str]:
    return [sys.executable, "-m", "dalivssl.data.check", device, str(device_id)]


def _decode_child(jobs, device: str, device_id, advance) -> tuple[list, str | None]:
    """Run one child on ``jobs``: (reasons of the files it reported on, None or why it died)."""
    from dalivssl.data.decode_matrix import run_child

    got: list = []

    def add(answer: dict) -> None:
        got.append(answer["why"])
        advance()

    _, rc, _, tail = run_child(_decode_cmd(device, device_id), [json.dumps(j) for j in jobs], add)
    if (rc == 0 and got) or (got and got[-1] is not None):  # done, or stopped at a failure
        return got, None
    return got, (f"exit code {rc}: {tail[:160]}" if tail else f"exit code {rc}")


def _decode_worker(device: str, device_id: int | None) -> int:
    """Child side of :func:`dali_decode_check`: (path, num_frames) JSON lines on stdin, one
    {"why": reason or null} line per file on stdout; stops after the first failure (a failed
    DALI pipeline is dead, and destroying it while another runs invalidates that one too)."""
    from dalivssl.data.decode_matrix import dali_reason, decode_pipeline

    pipe = decode_pipeline(device, device_id)
    for line in sys.stdin:
        path, num_frames = json.loads(line)
        data = np.fromfile(path, dtype=np.uint8)
        try:
            pipe.feed_input("enc", [data])
            pipe.feed_input("frames", [np.array([num_frames - 1], dtype=np.int32)])
            (out,) = pipe.run()
            got = out.as_cpu()[0] if device == "gpu" else out[0]
            why = (None if np.asarray(got).shape[0] == 1
                   else "truncated or corrupt (DALI decoded no frame)")
        except Exception as exc:  # DALI raises RuntimeError with a multi-line message
            m = re.search(r"ROI with (\d+) frames", str(exc))
            why = ("truncated or corrupt (" + (f"DALI decodes only {m.group(1)} of {num_frames} "
                                               "frames" if m else f"DALI: {dali_reason(exc)}")
                   + ")")
        print(json.dumps({"why": why}), flush=True)
        if why is not None:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(_decode_worker(sys.argv[1], None if sys.argv[2] == "None" else int(sys.argv[2])))
