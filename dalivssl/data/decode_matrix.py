"""Decode matrix made on the spot: what DALI's decoders really read on this machine.

Tiny videos are written with PyAV for each case of ``CASES`` (codec, container, encoder options,
pixel format) at each size of ``SIZES``; each is decoded by each available DALI backend ('cpu',
and 'gpu' = the mixed NVDEC decoder where a usable GPU exists) and compared with PyAV frame by
frame. Decoding runs in a child process per backend that reports one JSON line per video; a
child that aborts or hangs makes that video's cell ABORT/HANG and a new child goes on with the
next one (G3: NVDEC errors can terminate a process). ``dalivssl doctor`` prints the matrix; the
GPU decode probe (``python -m dalivssl.data.decode_matrix probe``, started by
``dalivssl.devices.gpu_probe``) runs one cell of it per 'probe' entry of the capability table.

Cell status: OK (every frame found at its own index, mean |DALI - PyAV| <= ``MAX_MEAN_ABS``),
BAD (decoded, but frames out of order or too different), FAIL (DALI raised: the reason),
ABORT, HANG, SKIP (backend not available here), ENC (PyAV could not write the case).
"""
from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKENDS = ("cpu", "gpu")
SIZES = (64, 112, 128, 240)
FRAMES = 16
MAX_MEAN_ABS = 12.0  # grey levels: YUV->RGB conversions of two decoders differ by a few
CELL_TIMEOUT_S = 60.0
ALTREF_MIN_FRAMES = 40  # libvpx places alt-refs only with enough look-ahead (lag 25)
# a folder of pre-encoded vp9-altref files (:func:`premade_name`), for a machine without the
# ffmpeg binary (an offline GPU node): ``benchmarks/gpu_check.py --write-premade DIR``
PREMADE_ENV = "DALIVSSL_PREMADE"


@dataclass(frozen=True)
class Case:
    """One way of writing a video: table codec name, PyAV encoder, container suffix, pixel
    format, encoder options; shape (width, height): a fixed size instead of the matrix's square
    sizes; form: 'file' (decode the file), 'annexb' (decode the file's packets as one raw Annex B
    stream: ``pipelines.packets.annexb_stream``, no timestamps) or 'altref' (written by
    :func:`write_vp9_altref`)."""

    codec: str
    encoder: str
    suffix: str
    pix_fmt: str = "yuv420p"
    options: dict = field(default_factory=dict, hash=False)
    shape: tuple[int, int] | None = None
    form: str = "file"


_VPX = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
CASES: dict[str, Case] = {
    "h264": Case("h264", "libx264", ".mp4", options={"preset": "veryfast",
                                                     "tune": "zerolatency"}),
    "h264-bframes": Case("h264", "libx264", ".mp4",
                         options={"preset": "veryfast", "x264-params": "bframes=2:b-adapt=0"}),
    "h264-444": Case("h264", "libx264", ".mp4", "yuv444p", {"preset": "veryfast"}),
    "hevc": Case("hevc", "libx265", ".mp4", options={"preset": "ultrafast",
                                                     "x265-params": "log-level=error"}),
    "hevc-10bit": Case("hevc", "libx265", ".mp4", "yuv420p10le",
                       {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "mpeg4-avi": Case("mpeg4", "mpeg4", ".avi", options={"bf": "2"}),
    "mpeg4-avi-nob": Case("mpeg4", "mpeg4", ".avi", options={"bf": "0"}),
    "vp8": Case("vp8", "libvpx", ".webm", options=_VPX),
    "vp9": Case("vp9", "libvpx-vp9", ".webm", options=_VPX),
    "av1": Case("av1", "libsvtav1", ".mkv", options={"preset": "12"}),
    "mjpeg": Case("mjpeg", "mjpeg", ".avi", "yuvj420p"),
    # R1-R4: what NVDEC may return in the wrong order without an error
    "vp9-altref": Case("vp9", "libvpx-vp9", ".webm", form="altref"),  # hidden frames (R3)
    "h264-1080p": Case("h264", "libx264", ".mp4", options={"preset": "ultrafast"},
                       shape=(1920, 1080)),  # R4 (NVIDIA/DALI #4709)
    "h264-200x150": Case("h264", "libx264", ".mp4", options={"preset": "veryfast"},
                         shape=(200, 150)),  # R4: width not a multiple of 16 (#4620)
    "vp9-200x150": Case("vp9", "libvpx-vp9", ".webm", options=_VPX, shape=(200, 150)),
    "annexb-bframes": Case("h264", "libx264", ".mp4", form="annexb",
                           options={"preset": "veryfast", "x264-params": "bframes=2:b-adapt=0"}),
}
# the first GPU run's matrix: the new cases first, then the cells
# the table expects to decode, then one cell per expected failure class
NEW_CASES = ("vp9-altref", "mpeg4-avi", "mpeg4-avi-nob", "h264-1080p", "h264-200x150",
             "vp9-200x150", "annexb-bframes")


def first_run_cells() -> list[tuple[str, int]]:
    """(case, size) cells of the trimmed matrix, in the order they run (size ignored by cases
    with a fixed shape)."""
    cells = [(c, 128) for c in NEW_CASES]
    cells += [(c, s) for c in ("h264", "h264-bframes", "hevc", "vp8", "vp9") for s in (128, 240)]
    cells += [("vp9", 112), ("hevc", 128), ("h264-444", 128), ("hevc-10bit", 128), ("av1", 128),
              ("mjpeg", 128)]
    return list(dict.fromkeys(cells))


def pattern_frames(n: int, size: int, width: int | None = None) -> np.ndarray:
    """uint8 (n, size, width or size, 3): a smooth colour field whose brightness steps with the
    frame index and a white square that walks across, so neighbouring frames tell apart after
    lossy coding."""
    w = width or size
    yy, xx = np.mgrid[0:size, 0:w].astype(np.float32)
    yy, xx = yy / size, xx / w
    base = np.stack([60 + 120 * xx, 60 + 120 * yy, 180 - 100 * xx * yy], -1)
    side = max(4, min(size, w) // 6)
    out = np.empty((n, size, w, 3), np.uint8)
    for i in range(n):
        f = base * (0.6 + 0.4 * i / max(1, n - 1))
        x = (i * (w - side)) // max(1, n - 1)
        f[side:2 * side, x:x + side] = 255
        out[i] = np.clip(f, 0, 255)
    return out


def write_case(case: Case, size: int, path: Path, n: int = FRAMES) -> Path:
    """Encode :func:`pattern_frames` as ``case`` into ``path`` (PyAV; ffmpeg for 'altref'),
    ``size`` x ``size`` unless the case has a fixed shape. For 'annexb' the file is written as
    usual; :func:`decode_source` makes the bytes that are decoded."""
    import av

    w, h = case.shape or (size, size)
    if case.form == "altref":
        return write_vp9_altref(path, pattern_frames(max(n, ALTREF_MIN_FRAMES), h, w))
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(case.encoder, rate=25)
        stream.width, stream.height = w, h
        stream.pix_fmt = case.pix_fmt
        stream.options = dict(case.options)
        for img in pattern_frames(n, h, w):
            for pkt in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def decode_source(case: Case, path: Path) -> Path:
    """The bytes a cell decodes: the file, or for 'annexb' its packets as one Annex B stream
    (written next to it): DALI's demuxer sees raw H.264 without timestamps, the question R1
    asks (presentation or decode order?)."""
    if case.form != "annexb":
        return path
    from dalivssl.data.index import probe_with_packets
    from pipelines.packets import annexb_stream, read_packets

    ix = probe_with_packets(path)["packets"]
    if ix is None or np.array_equal(ix.pres, np.arange(ix.num_frames)):
        raise RuntimeError("the encoder wrote no B-frames: the probe would prove nothing")
    out = path.with_suffix(".h264")
    out.write_bytes(annexb_stream(ix, read_packets(path, ix, [(0, ix.num_frames)])))
    return out


def write_vp9_altref(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """VP9 with hidden alt-ref frames (superframes), as libvpx writes web video in two-pass
    'good' mode (YouTube/Kinetics .webm; R3). One-pass encoding through PyAV produces none
    (measured), so the ffmpeg binary runs both passes. Where ``$DALIVSSL_PREMADE`` holds the
    file of these very frames (:func:`premade_name`), it is copied instead; RuntimeError when
    neither is there."""
    import shutil

    n, h, w = frames.shape[:3]
    raw = np.ascontiguousarray(frames, np.uint8).tobytes()
    premade = Path(os.environ.get(PREMADE_ENV) or "/nonexistent") / premade_name(raw, n, h, w)
    if premade.is_file():
        shutil.copyfile(premade, path)
        return path
    ff = shutil.which("ffmpeg")
    if ff is None:
        raise RuntimeError("the vp9-altref case needs the ffmpeg binary (two-pass libvpx) or "
                           f"${PREMADE_ENV}/{premade.name} (benchmarks/gpu_check.py "
                           "--write-premade DIR, on a machine with ffmpeg)")
    with tempfile.TemporaryDirectory(prefix="dalivssl-altref-") as tmp:
        common = [ff, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                  f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libvpx-vp9", "-deadline",
                  "good", "-cpu-used", "4", "-lag-in-frames", "25", "-auto-alt-ref", "1",
                  "-b:v", "300k", "-pix_fmt", "yuv420p", "-passlogfile", str(Path(tmp) / "pass")]
        for args in (["-pass", "1", "-f", "null", "-"], ["-pass", "2", str(path)]):
            subprocess.run(common + args, input=raw, check=True, capture_output=True,
                           timeout=120)
    return path


def premade_name(raw: bytes, n: int, h: int, w: int) -> str:
    """File name of the pre-encoded vp9-altref video of the uint8 frames ``raw`` (n×h×w×3):
    size, length and a hash of the content, so a file stands only for the frames it encodes."""
    import hashlib

    return f"vp9-altref_{w}x{h}_{n}_{hashlib.sha1(raw).hexdigest()[:12]}.webm"


def backends_here() -> dict[str, str]:
    """{backend: '' if usable here, else why not}."""
    from dalivssl.devices import cuda_usable, nvcuvid_path

    gpu = ("" if cuda_usable() and nvcuvid_path() else
           "no CUDA GPU" if not cuda_usable() else "libnvcuvid not found")
    return {"cpu": "", "gpu": gpu}


# ------------------------------------------------------------------------------ parent side
def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_child(cmd: list[str], jobs: list[str], on_answer, timeout: float | None = None
              ) -> tuple[int, int, bool, str]:
    """Start ``cmd``, feed it the JSON lines ``jobs`` (from a thread, so neither pipe can fill
    up and block the other) and call ``on_answer(dict)`` for each JSON line it prints.
    ``timeout``: seconds to wait for each answer, then the child is killed.
    Returns (answers, exit code, hung, last stderr line)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def feed():
        try:
            for job in jobs:
                proc.stdin.write(job + "\n")
            proc.stdin.close()
        except OSError:  # the child stopped reading (done early, or died)
            pass

    err: collections.deque = collections.deque(maxlen=20)
    q: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=feed, daemon=True),
               threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True),
               threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)]
    for t in threads:
        t.start()
    n, hung = 0, False
    while n < len(jobs):
        try:
            line = q.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            hung = True
            break
        if line is None:
            break
        if line.startswith("{"):
            on_answer(json.loads(line))
            n += 1
    rc = proc.wait()
    threads[2].join(5)
    tail = next((ln.strip() for ln in reversed(err) if ln.strip()), "")
    return n, rc, hung, tail


def _child_cmd(backend: str, device_id: int) -> list[str]:
    return [sys.executable, "-m", "dalivssl.data.decode_matrix", backend, str(device_id)]


def decode_in_children(jobs: list[dict], backend: str, device_id: int = 0,
                       timeout: float = CELL_TIMEOUT_S, on_result=None) -> list[dict]:
    """Decode ``jobs`` ({path, n}) with ``backend`` in child processes; one result dict per job
    (status, detail, mean_abs, seconds), in order. A child that dies or hangs costs one job."""
    results: list[dict] = []

    def add(res: dict) -> None:
        results.append(res)
        if on_result:
            on_result(res)

    while len(results) < len(jobs):
        rest = jobs[len(results):]
        n, rc, hung, tail = run_child(_child_cmd(backend, device_id),
                                      [json.dumps(j) for j in rest], add, timeout)
        if n < len(rest):
            why = (f"no answer in {timeout:.0f} s" if hung else
                   f"exit code {rc}" + (f": {tail[:160]}" if tail else ""))
            add({"status": "HANG" if hung else "ABORT", "detail": why, "mean_abs": None,
                 "seconds": None})
    return results


def run_matrix(cases=None, sizes=SIZES, backends=BACKENDS, progress=None, cells=None,
               timeout: float = CELL_TIMEOUT_S) -> dict:
    """The matrix as {'backends': {name: why-not}, 'cells': [row dicts]}. Each row: case, codec,
    pix_fmt, size ('WxH' for fixed shapes), expected {backend: 'yes'|'no'|'probe'}, and per
    backend a result dict. ``cells``: explicit [(case, size)] instead of cases x sizes;
    ``timeout``: seconds per cell before its child is killed (HANG)."""
    from dalivssl.data.capabilities import DECODERS, problem

    if cells is None:
        cells = [(c, s) for c in (cases or CASES) for s in sizes]
    cells = list(dict.fromkeys((c, s if CASES[c].shape is None else 0) for c, s in cells))
    avail = backends_here()
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner goes to stderr otherwise
    rows = []
    with tempfile.TemporaryDirectory(prefix="dalivssl-doctor-") as tmp:
        for name, size in cells:
            case = CASES[name]
            w, h = case.shape or (size, size)
            row = {"case": name, "codec": case.codec, "pix_fmt": case.pix_fmt,
                   "size": size if case.shape is None else f"{w}x{h}", "expected": {}}
            for dev in backends:
                lim = DECODERS[dev].get(case.codec)
                why = problem(case.codec, w, h, case.pix_fmt, dev, static=True)
                row["expected"][dev] = ("no" if why else
                                        "probe" if lim is not None and lim.status == "probe"
                                        else "yes")
            path = Path(tmp) / f"{name}_{size}{case.suffix}"
            try:
                write_case(case, size, path)
                row["path"], row["ref"] = str(decode_source(case, path)), str(path)
            except Exception as exc:  # e.g. an encoder's own minimum size
                row["encode_error"] = f"{type(exc).__name__}: {exc}"[:160]
            rows.append(row)
        for dev in backends:
            todo = [r for r in rows if "path" in r]
            if avail.get(dev):
                for r in todo:
                    r[dev] = {"status": "SKIP", "detail": avail[dev]}
            else:
                from dalivssl.devices import local_device_id

                dev_id = local_device_id() if dev == "gpu" else 0
                res = decode_in_children([{"path": r["path"], "ref": r["ref"]} for r in todo],
                                         dev, dev_id, timeout, on_result=progress)
                for r, x in zip(todo, res):
                    r[dev] = x
            for r in rows:
                if "path" not in r:
                    r[dev] = {"status": "ENC", "detail": r["encode_error"]}
        for r in rows:
            r.pop("path", None)
            r.pop("ref", None)
    return {"backends": avail, "cells": rows}


def run_cell(case: str, size: int, backend: str) -> dict:
    """One cell (write + decode in a child): the result dict."""
    m = run_matrix([case], (size,), (backend,))
    return m["cells"][0][backend]


def probe_cells() -> dict[str, bool]:
    """{codec: its cell decoded OK on this machine's GPU at 256 px} for the capability table's
    'probe' entries (what ``python -m dalivssl.data.decode_matrix probe`` prints)."""
    from dalivssl.data.capabilities import PROBE_CODECS

    return {c: run_cell(c, 256, "gpu")["status"] == "OK" for c in PROBE_CODECS}


def verdict(row: dict, dev: str) -> str:
    """Short text of one cell for the screen: OK, BAD, FAIL, ABORT, HANG, SKIP, ENC, and
    'GPU only' for a CPU failure of a codec the GPU table lists."""
    from dalivssl.data.capabilities import DECODERS

    st = row[dev]["status"]
    if (dev == "cpu" and st == "FAIL" and row["codec"] not in DECODERS["cpu"]
            and row["expected"].get("gpu", "no") != "no"):
        return "GPU only"
    return st


def agrees(row: dict, dev: str) -> bool | None:
    """Whether the measured cell agrees with the table (None: not measured or 'probe')."""
    st, exp = row[dev]["status"], row["expected"][dev]
    if st in ("SKIP", "ENC") or exp == "probe":
        return None
    return (st == "OK") == (exp == "yes")


def dali_reason(exc: BaseException) -> str:
    """The operator's own message out of DALI's multi-line error text."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1].split("C++ context", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def decode_pipeline(device: str, device_id: int | None = None):
    """One-file DALI decode pipeline (pad_mode 'none'): feed ``enc`` bytes and ``frames``; used
    by the decode matrix and the decode check (``dalivssl.data.check``)."""
    from nvidia.dali import fn, pipeline_def, types

    # prefetch 1: each run() consumes exactly the one file fed before it
    @pipeline_def(batch_size=1, num_threads=1,
                  device_id=(device_id or 0) if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def _pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(enc, device="mixed" if device == "gpu" else "cpu",
                                 frames=frames, pad_mode="none")

    pipe = _pipe()
    pipe.build()
    return pipe


# ------------------------------------------------------------------------------- child side
def _child(backend: str, device_id: int) -> int:
    """Decode the (path, n) JSON lines of stdin with DALI on ``backend``; print one result line
    each. A pipeline that raised is kept referenced (destroying it while another runs
    invalidates that one) and a fresh one is built; there are at most a few dozen cells."""
    from dalivssl.data.videoio import decode_frames

    dead, pipe = [], None
    for line in sys.stdin:
        job = json.loads(line)
        ref = decode_frames(job.get("ref") or job["path"])
        job.setdefault("n", len(ref))
        t0 = time.perf_counter()
        try:
            if pipe is None:
                pipe = decode_pipeline(backend, device_id)
            pipe.feed_input("enc", [np.fromfile(job["path"], dtype=np.uint8)])
            pipe.feed_input("frames", [np.arange(job["n"], dtype=np.int32)])
            (out,) = pipe.run()
            got = np.asarray((out.as_cpu() if backend == "gpu" else out)[0])
        except Exception as exc:
            dead.append(pipe)
            pipe = None
            print(json.dumps({"status": "FAIL", "detail": dali_reason(exc), "mean_abs": None,
                              "seconds": round(time.perf_counter() - t0, 3)}), flush=True)
            continue
        secs = time.perf_counter() - t0
        print(json.dumps({**compare(got, ref), "seconds": round(secs, 3)}), flush=True)
    return 0


def compare(got: np.ndarray, ref: np.ndarray) -> dict:
    """Status of DALI frames ``got`` against PyAV frames ``ref`` (both uint8 (N, H, W, 3))."""
    if got.shape != ref.shape:
        return {"status": "BAD", "detail": f"shape {got.shape} vs PyAV {ref.shape}",
                "mean_abs": None}
    g, r = got.astype(np.int16), ref.astype(np.int16)
    d = np.abs(g[:, None] - r[None]).mean(axis=(2, 3, 4))  # (N, N): DALI frame i vs PyAV j
    nearest = d.argmin(axis=1)
    own = float(np.diag(d).mean())
    wrong = np.flatnonzero(nearest != np.arange(len(nearest)))
    if wrong.size:
        i = int(wrong[0])
        return {"status": "BAD", "detail": f"frame {i} looks like PyAV frame {int(nearest[i])}",
                "mean_abs": round(own, 2)}
    if own > MAX_MEAN_ABS:
        return {"status": "BAD", "detail": f"mean |DALI-PyAV| {own:.1f} > {MAX_MEAN_ABS}",
                "mean_abs": round(own, 2)}
    return {"status": "OK", "detail": "", "mean_abs": round(own, 2)}


if __name__ == "__main__":
    if sys.argv[1:] == ["probe"]:
        print(json.dumps(probe_cells()), flush=True)
        sys.exit(0)
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
