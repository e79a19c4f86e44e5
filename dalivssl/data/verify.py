"""Verified decode classes: the decoder proves itself on the user's own files, per machine.

NVDEC through DALI returns pictures in decode order and restores display order only from packet
timestamps, so some streams come back shuffled without an error (
Annex B with B-frames, MPEG-4 AVI with B-frames, VP9 hidden alt-ref frames, odd sizes). Instead of
trusting a table, every *decode class* is checked where it runs:

- **Decode class** (:func:`decode_class`): what the packet index knows about a file, i.e. codec,
  profile, size band and alignment, reordering (presentation != decode order) and hidden frames
  (VP9 superframes), e.g. ``h264/p100/sd/a16/reorder``.
- **Verification** (:func:`verify`): for each class x backend, N random 16-frame clips are decoded
  through exactly the loader's path (``pipelines.loader.encode_sample``: the GOP-range sub-stream
  included, then ``fn.decoders.video`` with ``pad_mode='none'``) and with PyAV from the whole
  file, and compared frame by frame by content: each decoded frame must look most like the PyAV
  frame of its own index (:func:`compare`). Decoding runs in a child process
  (``python -X faulthandler -m dalivssl.data.verify``): an NVDEC abort is a verdict, not a crash.
- **Verdicts** ``ok`` / ``bad: reason`` live in a per-machine cache (:class:`Cache`,
  ``$DALIVSSL_CACHE/decode_verdicts.json``) keyed on backend, GPU model, driver, DALI version and
  class. ``dalivssl doctor`` prints it; ``dalivssl data check MANIFEST --verify N`` fills it.
- **Routing** (:func:`routes`): the loader asks once per run. A class never verified here is
  verified then (a few seconds); a class verified bad on the GPU is decoded by DALI's CPU decoder
  where that reads the codec (VP8/VP9/MJPEG), otherwise the run stops with one line naming the
  class, the reason and the fix. Nothing is delivered from a class verified bad.

**Decoder hook** (fault injection, other decoders): ``$DALIVSSL_VERIFY_DECODER=module:function``
replaces DALI in the verification child; ``function(data, frames, backend, device_id)`` gets the
loader's bytes (uint8) and frame indices and returns uint8 (F, H, W, 3). ``dalivssl.data.verify:
pyav_decode`` is a reference implementation (PyAV on the same bytes). Verdicts made through a
hook are cached under the hook's name instead of the DALI version, so they never count for DALI.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dalivssl.errors import DalivsslError

CLIP = 16  # frames per verification clip (a pretext clip's length)
DEFAULT_CLIPS = 2  # clips per class x backend verified at the start of a run
HOOK_ENV = "DALIVSSL_VERIFY_DECODER"
CACHE_NAME = "decode_verdicts.json"
MAX_MEAN_ABS = 12.0  # grey levels between two decoders' YUV->RGB of the same frame
CHILD_TIMEOUT_S = 60.0
OK = "ok"


# ------------------------------------------------------------------------------- decode classes
def _size_band(w: int, h: int) -> str:
    side = max(int(w), int(h))
    return ("small" if min(int(w), int(h)) < 128 else "sd" if side < 1280 else
            "hd" if side < 1920 else "fhd")


def _profile(index) -> str:
    """The codec profile from what the index holds: avcC/hvcC byte 1 (H.264 profile_idc, HEVC
    general_profile_idc), VP9's profile bits of the first frame header; '' when unknown."""
    h = bytes(index.header or b"")
    if index.codec == "h264" and len(h) > 1 and h[0] == 1:
        return f"p{h[1]}"
    if index.codec == "hevc" and len(h) > 1 and h[0] == 1:
        return f"p{h[1] & 0x1F}"
    return ""


def _vp9_first_bytes(path, index, limit: int = 64) -> tuple[str, bool]:
    """(profile, hidden frames) of a VP9 file from its first ``limit`` packets: a superframe (a
    packet whose last byte is a superframe marker 0b110xxxxx repeated at the index start) holds
    a hidden picture (alt-ref)."""
    hidden, prof = False, ""
    with open(path, "rb") as f:
        for j in range(min(limit, index.num_frames)):
            off, size = int(index.offset[j]), int(index.size[j])
            f.seek(off)
            data = f.read(size)
            if not data:
                break
            if j == 0:
                b = data[0]
                prof = f"p{((b >> 5) & 1) | (((b >> 4) & 1) << 1)}"
            last = data[-1]
            if (last & 0xE0) == 0xC0:
                n = (last & 7) + 1
                mag = ((last >> 3) & 3) + 1
                idx = 2 + mag * n
                if size >= idx and data[-idx] == last:
                    hidden = True
    return prof, hidden


def decode_class(rec, index=None, path=None) -> str:
    """The decode class of a manifest record: ``codec/profile/size band/alignment/order``
    (+ ``/hidden`` for VP9 with hidden frames; ``/noindex`` without a packet index: order
    unknown, decoded whole)."""
    codec = (index.codec if index is not None else "") or str(getattr(rec, "codec", "") or "?")
    w = (index.width if index is not None and index.width else getattr(rec, "width", 0)) or 0
    h = (index.height if index is not None and index.height else getattr(rec, "height", 0)) or 0
    align = "a16" if w % 16 == 0 and h % 16 == 0 else "odd"
    parts = [codec]
    if index is None:
        return "/".join(parts + ["?", _size_band(w, h), align, "noindex"])
    prof, hidden = _profile(index), False
    if codec == "vp9" and path is not None:
        prof, hidden = _vp9_first_bytes(path, index)
    reorder = not np.array_equal(index.pres, np.arange(index.num_frames))
    parts += [prof or "?", _size_band(w, h), align, "reorder" if reorder else "inorder"]
    if hidden:
        parts.append("hidden")
    return "/".join(parts)


def classes(manifest, records=None) -> dict[str, list[int]]:
    """{decode class: [record positions in ``records``]} (default: all of the manifest's)."""
    records = list(manifest.records if records is None else records)
    get = getattr(manifest, "packet_index", None)
    out: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        ix = get(rec) if get is not None else None
        path = manifest.abspath(rec)
        try:
            cls = decode_class(rec, ix, path)
        except OSError:
            continue  # unreadable files are the loader's own skip reason
        out.setdefault(cls, []).append(i)
    return out


# ------------------------------------------------------------------------------------ the cache
def machine(backend: str) -> dict:
    """What a verdict is valid for: {backend, gpu, driver, dali, decoder} (gpu/driver '' on the
    CPU backend; decoder = the hook's name or 'dali')."""
    hook = os.environ.get(HOOK_ENV, "")
    try:
        import nvidia.dali as dali

        dali_v = str(dali.__version__)
    except Exception:  # no DALI: the verdict is the hook's, or nothing decodes anyway
        dali_v = "none"
    gpu = driver = ""
    if backend == "gpu":
        gpu, driver = _gpu_identity()
    return {"backend": backend, "gpu": gpu, "driver": driver, "dali": dali_v,
            "decoder": hook or "dali"}


def _gpu_identity() -> tuple[str, str]:
    """(GPU model, driver version) of this process's GPU; ('none', '') without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "none", ""
        from dalivssl.devices import local_device_id

        name = torch.cuda.get_device_name(local_device_id())
    except Exception:
        return "none", ""
    driver = ""
    try:
        import ctypes

        v = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) == 0:
            driver = f"cuda{v.value // 1000}.{(v.value % 1000) // 10}"
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            driver = out.stdout.strip().splitlines()[0]
    except Exception:  # nvidia-smi missing: the CUDA driver API version stands in
        pass
    return name, driver


def cache_path() -> Path:
    from dalivssl.data.synth import cache_dir

    return Path(cache_dir()) / CACHE_NAME


class Cache:
    """The per-machine verdicts: ``{key: {verdict, class, backend, gpu, driver, dali, decoder,
    clips, when}}`` in one JSON file (written atomically after every class)."""

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else cache_path()
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def key(mach: dict, cls: str) -> str:
        return "|".join([mach["backend"], mach["gpu"], mach["driver"], mach["dali"],
                         mach["decoder"], cls])

    def get(self, mach: dict, cls: str) -> dict | None:
        return self.entries.get(self.key(mach, cls))

    def put(self, mach: dict, cls: str, verdict: str, clips: int, detail: dict | None = None):
        self.entries[self.key(mach, cls)] = {
            "verdict": verdict, "class": cls, **mach, "clips": int(clips),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(detail or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def rows(self) -> list[dict]:
        """Every entry (doctor's table), sorted by backend and class."""
        return sorted(self.entries.values(), key=lambda e: (e["backend"], e["class"]))


# ------------------------------------------------------------------------------- verification
def _clip_jobs(manifest, records, positions, n: int, seed: int, backend: str, tmp: Path,
               range_codecs) -> list[dict]:
    """``n`` random clips of the class (random files, random 16-frame windows), encoded as the
    loader encodes them, each written to ``tmp`` for the child."""
    from pipelines.loader import encode_sample

    rng = np.random.default_rng(seed)
    jobs = []
    for j in range(n):
        rec = records[positions[int(rng.integers(len(positions)))]]
        nf = int(rec.num_frames)
        length = min(CLIP, nf)
        start = int(rng.integers(0, nf - length + 1))
        frames = np.arange(start, start + length)
        path = manifest.abspath(rec)
        index = manifest.packet_index(rec) if hasattr(manifest, "packet_index") else None
        enc = encode_sample(path, index, frames, range_codecs)
        if isinstance(enc, tuple):
            continue  # the loader skips such a file for its own reason
        enc_path = tmp / f"{len(jobs)}.bin"
        enc.data.tofile(enc_path)
        jobs.append({"enc": str(enc_path), "sub": enc.frames.tolist(), "src": str(path),
                     "frames": frames.tolist(), "substream": bool(enc.codec),
                     "decode_order": _decode_order_frames(index, enc, frames)})
    return jobs


def _decode_order_frames(index, enc, frames) -> list[int] | None:
    """The file frames a decoder that ignores presentation order would return for the clip (the
    frames of the packets at the requested decode positions), or None without an index."""
    if index is None:
        return None
    from pipelines.packets import choose_ranges

    if enc.codec:
        ranges = choose_ranges(index, frames)
        pres = np.concatenate([index.pres[k:e] for k, e in ranges])
    else:
        pres = index.pres
    sub = np.asarray(enc.frames, np.int64)
    if (sub >= pres.size).any():
        return None
    return pres[sub].astype(np.int64).tolist()


def compare(got: np.ndarray, ref: np.ndarray, frames, window_start: int,
            decode_order=None) -> str:
    """``ok`` or ``bad: reason`` for decoded frames ``got`` (F, H, W, 3) of file ``frames``
    against PyAV frames ``ref`` of file frames window_start.. (by content: frame j must look
    most like the reference frame of its own index, within ``MAX_MEAN_ABS``)."""
    frames = np.asarray(frames, np.int64)
    if got.shape[0] != frames.size or got.shape[1:] != ref.shape[1:]:
        return f"bad: shape {tuple(got.shape)}, PyAV {(frames.size,) + tuple(ref.shape[1:])}"
    g, r = got.astype(np.int16), ref.astype(np.int16)
    d = np.stack([np.abs(g[j][None] - r).mean(axis=(1, 2, 3)) for j in range(len(g))])
    own = d[np.arange(len(g)), frames - window_start]
    nearest = d.argmin(axis=1) + window_start
    wrong = own > d.min(axis=1) + 0.5  # ties (static scenes) are not held against the decoder
    if wrong.any():
        shift = nearest[wrong] - frames[wrong]
        if wrong.all() and np.unique(shift).size == 1:
            return f"bad: frames shifted by {int(shift[0]):+d}"
        if decode_order is not None and np.array_equal(nearest, np.asarray(decode_order)):
            return "bad: frames in decode order, not presentation order"
        i = int(np.flatnonzero(wrong)[0])
        return f"bad: frame {int(frames[i])} looks like frame {int(nearest[i])}"
    if float(own.mean()) > MAX_MEAN_ABS:
        return f"bad: pixels differ (mean |diff| {float(own.mean()):.1f} > {MAX_MEAN_ABS})"
    return OK


def verify(manifest, backend: str, n: int = DEFAULT_CLIPS, seed: int = 0, force: bool = False,
           only=None, cache: Cache | None = None, range_codecs=None, progress=None
           ) -> dict[str, dict]:
    """Verdict entries {class: cache entry} for every decode class of ``manifest`` (or the
    classes in ``only``) on ``backend`` ('cpu' | 'gpu'), verifying the ones the cache lacks
    (every one with ``force``). Classes the backend cannot decode at all (capability table) are
    not decoded: their entry says ``bad: <the table's reason>``. ``range_codecs``: the codecs
    decoded as GOP-range sub-streams (default: every codec one can be built for, so an ``ok``
    covers the sub-stream path too). A class whose sub-streams fail but whose whole files decode
    is ``ok`` with ``substream`` False (the loader then decodes it whole) and keeps the
    sub-stream's verdict as ``substream_verdict``."""
    from dalivssl.data.capabilities import record_problem
    from pipelines.packets import RANGE_CODECS

    if backend not in ("cpu", "gpu"):
        raise DalivsslError(f"unknown backend {backend!r}; valid: cpu, gpu")
    if backend == "gpu":
        from dalivssl.devices import cuda_usable, nvcuvid_path, use_gpu_probe

        if not os.environ.get(HOOK_ENV) and not (cuda_usable() and nvcuvid_path()):
            raise DalivsslError("--verify on gpu: no CUDA GPU with NVDEC (libnvcuvid) here; "
                                "verify where the run decodes, or use --device cpu")
        use_gpu_probe()  # AV1/MJPEG count where this GPU decodes them
    cache = cache or Cache()
    mach = machine(backend)
    records = list(manifest.records)
    groups = classes(manifest, records)
    out: dict[str, dict] = {}
    range_codecs = set(RANGE_CODECS if range_codecs is None else range_codecs)
    for cls, pos in sorted(groups.items()):
        if only is not None and cls not in only:
            continue
        hit = cache.get(mach, cls)
        if hit is not None and not force:
            out[cls] = {**hit, "cached": True}
            continue
        # the class's files the table lets through (the loader skips the others before
        # decoding): up to 64 looked at, in a seeded order
        order = np.random.default_rng(seed).permutation(len(pos))[:64]
        why, usable = "", []
        for j in order:
            rec = records[pos[int(j)]]
            w = record_problem(rec, manifest.abspath(rec), backend)
            why = why or w
            if not w:
                usable.append(pos[int(j)])
                if len(usable) >= n:
                    break
        rec = records[usable[0] if usable else pos[0]]
        if not usable:
            cache.put(mach, cls, f"bad: {why}", 0, {"example": rec.path, "table": True})
        else:
            verdict, clips, sub, detail = _verify_class(manifest, records, usable, n, seed,
                                                        backend, range_codecs)
            if verdict != OK and sub:  # the sub-stream fails: does the whole file decode?
                whole, clips, _, _ = _verify_class(manifest, records, pos, n, seed, backend, ())
                detail = {"substream_verdict": verdict}
                verdict, sub = whole, False
            cache.put(mach, cls, verdict, clips,
                      {"example": rec.path, "substream": sub, **detail})
        out[cls] = {**cache.get(mach, cls), "cached": False}
        if progress:
            progress(cls, out[cls])
    return out


def _verify_class(manifest, records, pos, n, seed, backend, range_codecs):
    """(verdict, clips, sub-streams used, {}) of one class decoded with ``range_codecs``."""
    with tempfile.TemporaryDirectory(prefix="dalivssl-verify-") as tmp:
        jobs = _clip_jobs(manifest, records, pos, n, seed, backend, Path(tmp), range_codecs)
        verdicts = _run_jobs(jobs, backend)
    bad = [v for v in verdicts if v != OK]
    verdict = bad[0] if bad else (OK if verdicts else "bad: no clip could be encoded")
    return verdict, len(verdicts), any(j["substream"] for j in jobs), {}


def _run_jobs(jobs: list[dict], backend: str) -> list[str]:
    """Verdicts of ``jobs`` from child processes (one goes on after another dies)."""
    from dalivssl.data.decode_matrix import run_child

    device_id = 0
    if backend == "gpu":
        try:
            from dalivssl.devices import local_device_id

            device_id = local_device_id()
        except Exception:
            pass
    got: list[str] = []
    while len(got) < len(jobs):
        rest = jobs[len(got):]
        cmd = [sys.executable, "-X", "faulthandler", "-m", "dalivssl.data.verify", backend,
               str(device_id)]
        n, rc, hung, tail = run_child(cmd, [json.dumps(j) for j in rest],
                                      lambda a: got.append(a["verdict"]), CHILD_TIMEOUT_S)
        if n < len(rest):
            got.append(f"bad: decoder {'hung' if hung else f'aborted (exit code {rc})'}"
                       + (f": {tail[:120]}" if tail else ""))
    return got


# ------------------------------------------------------------------------------------ routing
@dataclasses.dataclass(frozen=True)
class Route:
    """How the loader decodes one class: backend 'cpu'|'gpu' and whether GOP-range sub-streams
    are verified (``substream``); ``stop``: the one-line reason the run cannot go on."""

    backend: str
    substream: bool = False
    stop: str = ""


def route_for(cls: str, device: str, entry: dict | None, cpu_entry: dict | None = None) -> Route:
    """The decision for one class on ``device`` from its verdict (and the CPU's, for a GPU run)."""
    from dalivssl.data.capabilities import DECODERS, fix

    verdict = (entry or {}).get("verdict", "bad: not verified")
    if verdict == OK:
        return Route(device, bool(entry.get("substream")))
    if (entry or {}).get("table"):
        return Route(device)  # the capability table refuses them: the loader skips each file
    codec = cls.split("/", 1)[0]
    if device == "gpu" and codec in DECODERS["cpu"] and (
            cpu_entry is None or cpu_entry.get("verdict") == OK):
        return Route("cpu", bool((cpu_entry or {}).get("substream")))
    reason = verdict[5:] if verdict.startswith("bad: ") else verdict
    return Route(device, stop=f"decode class {cls} verified bad on {device} ({reason}); "
                              f"{fix('cpu' if device == 'cpu' else 'gpu')}"
                              .replace("--codec h264", "--codec vp9"))


def routes(manifest, records, device: str, n: int = DEFAULT_CLIPS,
           cache: Cache | None = None) -> tuple[dict[str, Route], list[str]]:
    """({class: Route}, class of each record) for a run on ``device``: unverified classes are
    verified now (``n`` clips each); a GPU run verifies the CPU too for classes it may move
    there."""
    from dalivssl.data.capabilities import DECODERS

    cache = cache or Cache()
    groups = classes(manifest, records)
    of = [""] * len(records)
    for cls, pos in groups.items():
        for i in pos:
            of[i] = cls
    sub = _Sub(manifest, records)
    here = verify(sub, device, n, cache=cache)
    cpu = {}
    if device == "gpu":
        movable = {c for c, e in here.items() if e["verdict"] != OK and not e.get("table")
                   and c.split("/", 1)[0] in DECODERS["cpu"]}
        if movable:
            cpu = verify(sub, "cpu", n, cache=cache, only=movable)
    return {c: route_for(c, device, e, cpu.get(c)) for c, e in here.items()}, of


class _Sub:
    """A manifest restricted to ``records`` (the loader's list), same paths and packet index."""

    def __init__(self, manifest, records):
        self._m, self.records = manifest, list(records)

    def abspath(self, rec):
        return self._m.abspath(rec)

    def packet_index(self, rec):
        get = getattr(self._m, "packet_index", None)
        return get(rec) if get is not None else None


# -------------------------------------------------------------------------------- the decoders
def pyav_decode(data: np.ndarray, frames, backend: str = "cpu", device_id: int = 0
                ) -> np.ndarray:
    """Reference decoder for the hook: PyAV on the loader's bytes, frames in presentation
    order (what a correct decoder returns)."""
    return _pyav_frames(data)[np.asarray(frames, np.int64)]


def _pyav_frames(data: np.ndarray, decode_order: bool = False) -> np.ndarray:
    """Every frame of in-memory stream ``data`` (presentation order, or the order of the packets
    that carry them: what a decoder that ignores timestamps returns)."""
    import io

    import av

    raw = np.asarray(data, np.uint8).tobytes()
    with av.open(io.BytesIO(raw)) as c:
        pts = [p.pts for p in c.demux(video=0) if p.size]
    with av.open(io.BytesIO(raw)) as c:
        out = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    frames = np.stack([f for _, f in out])
    if decode_order and None not in pts and all(p is not None for p, _ in out):
        by_pts = {p: f for p, f in out}
        frames = np.stack([by_pts[p] for p in pts if p in by_pts])
    return frames


def _hook():
    spec = os.environ.get(HOOK_ENV, "")
    if not spec:
        return None
    import importlib

    mod, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise DalivsslError(f"${HOOK_ENV}={spec}: {exc}") from None


def _child(backend: str, device_id: int) -> int:
    """Verification child: one job per stdin line, one {"verdict"} line per job on stdout."""
    decode, pipe, dead = _hook(), None, []
    for line in sys.stdin:
        job = json.loads(line)
        data = np.fromfile(job["enc"], dtype=np.uint8)
        try:
            if decode is not None:
                got = np.asarray(decode(data, np.asarray(job["sub"]), backend, device_id))
            else:
                if pipe is None:
                    from dalivssl.data.decode_matrix import decode_pipeline

                    pipe = decode_pipeline(backend, device_id)
                pipe.feed_input("enc", [data])
                pipe.feed_input("frames", [np.asarray(job["sub"], np.int32)])
                (out,) = pipe.run()
                got = np.asarray((out.as_cpu() if backend == "gpu" else out)[0])
        except Exception as exc:
            from dalivssl.data.decode_matrix import dali_reason

            dead.append(pipe)  # destroying a failed pipeline can invalidate the next one
            pipe = None
            print(json.dumps({"verdict": f"bad: decoder raised: {dali_reason(exc)}"}),
                  flush=True)
            continue
        frames = np.asarray(job["frames"], np.int64)
        lo = max(0, int(frames.min()) - 2)
        hi = int(frames.max()) + 2
        ref = _reference(job["src"], lo, hi)
        print(json.dumps({"verdict": compare(got, ref, frames, lo, job.get("decode_order"))}),
              flush=True)
    return 0


def _reference(path, lo: int, hi: int) -> np.ndarray:
    """PyAV frames lo..hi (clamped to the file) of the whole file."""
    import av

    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for i, f in enumerate(c.decode(s)):
            if i >= lo:
                out.append(f.to_ndarray(format="rgb24"))
            if i >= hi:
                break
    return np.stack(out)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], int(sys.argv[2])))
