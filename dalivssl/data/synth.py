"""The embedded synthetic dataset: classes defined by *motion*, not appearance (contract C2).

Every video shows 1–3 random objects (random shape, two random colours, an asymmetric pattern so
rotation is visible) over a random low-frequency texture that pans in a random direction, accelerating from rest. All
objects of a video move by the motion of its class; speed, start position, size, radius, period and
phase are random. Appearance therefore does not tell the class, and temporal order does: the class
set is closed under time reversal and reversal maps every class to a *different* class
(``REVERSE``: right<->left, spin cw<->ccw, zoom in<->out, orbit cw<->ccw, sawtooth right<->left,
...), so a model that ignores frame order cannot separate the pairs. This is the stand-in for
UCF101/HMDB51 used by tests, CI and the README quick start (no downloads).

Arrow of time: every motion speeds up over the video (rates ramp linearly from 0.4x to 1.6x of the
video's mean rate; zoom is monotonic anyway) and the background pans like a camera that
accelerates from rest. Positions wrap and spins/orbits/sawtooths are
periodic, so without the ramp *where* an object is would not tell *when* a clip was taken; with it,
each clip's own speed does. That keeps the temporal pretext tasks (clip order, playback rate,
relative speed) learnable on this dataset, as they are on real videos.

Exposure: every video fades in, like a scene at dawn: the whole frame is scaled by a gain that
rises linearly from ``EXPOSURE[0]`` to ``EXPOSURE[1]`` over the video. It is the low-level arrow of
time that a short CPU run can pick up (the speed ramp needs a GPU-length run to be learned), so
the README's few-minute VCOP pretraining shows its loss fall: it can only fall if the clip-order
labels really follow the decoded frames. Like the pan, it says nothing about the class.

Frame geometry: image coordinates, x to the right, y down; angles grow clockwise on screen.
Trajectories are stored unwrapped; objects that leave one edge re-enter at the opposite one.
"""
from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dalivssl.data import parallel
from dalivssl.errors import DalivsslError

# class name -> (motion kind, parameter). Ordered in reversal pairs so that the first C classes are
# as varied as possible and pairs stay together.
CLASSES: dict[str, tuple[str, float]] = {
    "move_right": ("translate", 0.0),
    "move_left": ("translate", 180.0),
    "spin_cw": ("spin", +1.0),
    "spin_ccw": ("spin", -1.0),
    "zoom_in": ("zoom", +1.0),
    "zoom_out": ("zoom", -1.0),
    "orbit_cw": ("orbit", +1.0),
    "orbit_ccw": ("orbit", -1.0),
    "move_down": ("translate", 90.0),
    "move_up": ("translate", 270.0),
    "saw_right": ("sawtooth", +1.0),
    "saw_left": ("sawtooth", -1.0),
    "move_down_right": ("translate", 45.0),
    "move_up_left": ("translate", 225.0),
    "move_down_left": ("translate", 135.0),
    "move_up_right": ("translate", 315.0),
}
CLASS_NAMES = list(CLASSES)

# time reversal: which class a reversed video of each class belongs to (an involution, no fixed point)
REVERSE: dict[str, str] = {
    CLASS_NAMES[i]: CLASS_NAMES[i ^ 1] for i in range(len(CLASS_NAMES))
}

# frame gain at the first and at the last frame (linear in between): see "Exposure" above
EXPOSURE = (0.55, 1.0)

SHAPES = ("square", "triangle", "cross", "star", "ellipse", "disc", "diamond")

# the smallest VP9 frame NVDEC decodes (capabilities.DECODERS['gpu']['vp9'].min_size)
GPU_MIN_SIZE = 128


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one synthetic dataset; the defaults are the embedded dataset.

    150 frames at 25 fps let PRP use rate 8 (16*8+1 = 129 frames, plus room for a random start)
    and VCOP's 64-frame tuples; 25 videos per class (19 train / 6 test). 128 px: NVDEC decodes
    VP9 only from 128x128 up (``dalivssl.data.capabilities``), so the one embedded dataset serves
    the CPU and the GPU decoder (the models' 112 px and the CPU runs' 64 px are crops/resizes of
    it). Measured on 2 shared cores against 112 px: generation 20 s instead of 17 s, a VCOP batch
    of 8 (3x16 frames, 64 px) 135 ms instead of 114 ms (medians of 8 passes).
    """

    videos: int = 300
    classes: int = 12
    frames: int = 150
    size: int = GPU_MIN_SIZE
    seed: int = 0
    fps: int = 25
    test_fraction: float = 0.25


DEFAULT = SynthConfig()


# ----------------------------------------------------------------------------------- trajectories
def trajectory(cls: str, frames: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Motion of one object of class ``cls``: arrays (frames,) x, y (pixels, unwrapped), angle
    (degrees, clockwise on screen) and scale (relative size)."""
    kind, p = CLASSES[cls]
    # motion time: the rate ramps 0.4x -> 1.6x over the video (mean 1x), an arrow of time
    n = np.arange(frames, dtype=np.float64)
    t = 0.4 * n + 0.6 * n * n / max(1, frames - 1)
    x0, y0 = rng.uniform(0.2, 0.8, size=2) * size
    a0 = rng.uniform(0, 360)
    x = np.full(frames, x0)
    y = np.full(frames, y0)
    ang = np.full(frames, a0)
    scale = np.ones(frames)
    if kind == "translate":
        speed = rng.uniform(0.012, 0.03) * size  # px/frame: 1.3-3.4 px at 112 px
        th = math.radians(p)
        x = x0 + speed * math.cos(th) * t
        y = y0 + speed * math.sin(th) * t
    elif kind == "spin":
        omega = rng.uniform(4.0, 9.0)  # degrees/frame
        ang = a0 + p * omega * t
        # small random drift so "spin" is not "the object that never moves"
        drift = rng.uniform(-0.002, 0.002, size=2) * size
        x, y = x0 + drift[0] * t, y0 + drift[1] * t
    elif kind == "zoom":
        ratio = rng.uniform(2.5, 4.0)  # size ratio end/start over the whole video
        s = np.exp(np.linspace(-0.5, 0.5, frames) * math.log(ratio))
        scale = s if p > 0 else s[::-1]
        scale = scale * rng.uniform(0.8, 1.1)
    elif kind == "orbit":
        radius = rng.uniform(0.15, 0.3) * size
        omega = math.radians(rng.uniform(4.0, 8.0))
        phi = rng.uniform(0, 2 * math.pi) + p * omega * t
        cx, cy = rng.uniform(0.35, 0.65, size=2) * size
        x, y = cx + radius * np.cos(phi), cy + radius * np.sin(phi)
    elif kind == "sawtooth":
        period = rng.uniform(14, 26)
        amp = rng.uniform(0.25, 0.4) * size
        phase = (t / period + rng.uniform(0, 1)) % 1.0
        x = x0 - p * amp / 2 + p * amp * phase
        y = y0 + 0 * t
    else:  # pragma: no cover - CLASSES is fixed
        raise AssertionError(kind)
    return {"x": x, "y": y, "angle": ang, "scale": scale}


def reverse_trajectory(traj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same motion played backwards."""
    return {k: v[::-1].copy() for k, v in traj.items()}


# -------------------------------------------------------------------------------------- rendering
def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A periodic (size x size) RGB float texture: coarse random blobs + fine noise + stripes."""
    cells = int(rng.integers(4, 9))
    coarse = rng.uniform(0, 1, size=(cells, cells, 3))
    # periodic bilinear upsampling: sample the coarse grid with wrap-around
    g = np.arange(size) * cells / size
    i0 = np.floor(g).astype(int)
    f = (g - i0)[:, None]
    i1 = (i0 + 1) % cells
    rows = coarse[i0] * (1 - f)[:, :, None] + coarse[i1] * f[:, :, None]  # (size, cells, 3)
    tex = rows[:, i0] * (1 - f.T)[:, :, None] + rows[:, i1] * f.T[:, :, None]
    base = rng.uniform(40, 150, size=3)
    tex = base + tex * rng.uniform(40, 90)
    k = int(rng.integers(1, 4))
    xx = np.arange(size)[None, :]
    yy = np.arange(size)[:, None]
    stripes = np.sin(2 * np.pi * k * (xx * rng.integers(0, 3) + yy * rng.integers(1, 3)) / size)
    tex = tex + 15 * stripes[:, :, None] + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(tex, 0, 255)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape membership in object coordinates (unit radius)."""
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "triangle":
        return (v <= 0.7) & (v >= 1.6 * np.abs(u) - 0.9)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (u >= -0.6)
                                                            & (u <= 1.0))
    if shape == "star":
        r = np.hypot(u, v)
        th = np.arctan2(v, u)
        return r <= 0.55 + 0.4 * np.cos(5 * th) ** 2
    if shape == "ellipse":
        return u ** 2 + (v / 0.55) ** 2 <= 1.0
    if shape == "disc":
        return u ** 2 + v ** 2 <= 0.85
    if shape == "diamond":
        return np.abs(u) / 0.7 + np.abs(v) <= 1.0
    raise AssertionError(shape)


def _draw(frame: np.ndarray, obj: dict, i: int, size: int) -> None:
    """Draw object ``obj`` at time ``i`` into ``frame`` (float HxWx3), wrapping across edges."""
    r = obj["radius"] * obj["traj"]["scale"][i]
    period = size + 2 * r + 2
    cx = (obj["traj"]["x"][i] + r + 1) % period - r - 1
    cy = (obj["traj"]["y"][i] + r + 1) % period - r - 1
    x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
    y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
    if x1 <= x0 or y1 <= y0:
        return
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / r
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / r
    th = math.radians(obj["traj"]["angle"][i])
    c, s = math.cos(th), math.sin(th)
    # rotate the sampling grid by -angle: the drawn object turns by +angle (clockwise on screen)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    mask = _shape_mask(obj["shape"], u, v)
    if not mask.any():
        return
    # asymmetric two-colour pattern: makes in-place rotation visible even for a disc
    second = (u > 0.15) ^ (v > 0.45)
    patch = frame[y0:y1, x0:x1]
    patch[mask & ~second] = obj["colors"][0]
    patch[mask & second] = obj["colors"][1]


def render(cls: str, frames: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Frames uint8 (F, size, size, 3) of one video of class ``cls`` and a description."""
    tex = _texture(rng, size)
    tiled = np.concatenate([np.concatenate([tex, tex], 1)] * 2, 0)
    bg_dir = rng.uniform(0, 2 * np.pi)
    # the background pans like an accelerating camera: from rest to ``bg_speed`` px/frame at the
    # last frame (offset = v·i²/(2F)). Whole-frame motion that grows with time is the strongest
    # arrow of time a clip can carry, and it says nothing about the class.
    bg_speed = rng.uniform(0.008, 0.02) * size
    n_obj = int(rng.integers(1, 4))
    objects = []
    for _ in range(n_obj):
        colors = rng.uniform(0, 255, size=(2, 3))
        colors[1] = 255 - colors[0] * rng.uniform(0.3, 0.9)  # keep the two halves apart
        objects.append({"shape": SHAPES[int(rng.integers(len(SHAPES)))],
                        "radius": rng.uniform(0.1, 0.18) * size, "colors": colors,
                        "traj": trajectory(cls, frames, size, rng)})
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        shift = bg_speed * i * i / (2 * max(1, frames - 1))
        ox = int(round(shift * math.cos(bg_dir))) % size
        oy = int(round(shift * math.sin(bg_dir))) % size
        frame = tiled[oy:oy + size, ox:ox + size].copy()
        for obj in objects:
            _draw(frame, obj, i, size)
        gain = EXPOSURE[0] + (EXPOSURE[1] - EXPOSURE[0]) * i / max(1, frames - 1)
        out[i] = np.clip(frame * gain, 0, 255)
    info = {"motion": CLASSES[cls][0], "objects": n_obj,
            "shapes": [o["shape"] for o in objects]}
    return out, info


# ------------------------------------------------------------------------------------- generation
def _make_one(job: tuple) -> dict:
    """Worker: render, encode and probe one video. Returns the record as a dict."""
    from dalivssl.data.index import probe_with_packets
    from dalivssl.data.videoio import write_video

    root, rel, cls, label, split, frames, size, fps, seed, index = job
    rng = np.random.default_rng([seed, index, label])
    pix, info = render(cls, frames, size, rng)
    path = Path(root) / rel
    write_video(path, pix, fps=fps, codec="vp9", threads=1)
    meta = probe_with_packets(path)
    if meta["num_frames"] != frames:  # the manifest must speak what the decoder sees
        raise DalivsslError(f"{path}: wrote {frames} frames but the file holds "
                            f"{meta['num_frames']}")
    return {"path": rel, "num_frames": meta["num_frames"], "label": label, "class_name": cls,
            "split": split, "fps": meta["fps"], "width": meta["width"],
            "height": meta["height"], "codec": meta["codec"],
            "video_id": Path(rel).stem, "extra": {**info, "pix_fmt": meta["pix_fmt"]},
            "packets": meta["packets"]}


def plan_videos(videos: int, classes: int, test_fraction: float = 0.25) -> list[tuple[int, str]]:
    """(label, split) per video: classes balanced (counts differ by at most 1), the same test
    share in every class (at least one test video per class when a class has >= 2 videos)."""
    per = [videos // classes + (c < videos % classes) for c in range(classes)]
    out = []
    for c, n in enumerate(per):
        n_test = min(n - 1, max(1, round(n * test_fraction))) if n >= 2 else 0
        out += [(c, "test" if k >= n - n_test else "train") for k in range(n)]
    return out


def generate(out_dir, videos: int = DEFAULT.videos, classes: int = DEFAULT.classes,
             frames: int = DEFAULT.frames, size: int = DEFAULT.size, seed: int = 0,
             fps: int = DEFAULT.fps, test_fraction: float = DEFAULT.test_fraction,
             workers: int | None = None, progress: bool = False,
             overwrite: bool = False) -> dict[str, Path]:
    """Write a synthetic dataset into ``out_dir``: videos/<class>/<class>_NNNN.webm (VP9) and the
    manifests train.jsonl, test.jsonl and all.jsonl. Returns {"train": Path, "test": Path, "all":
    Path}. Same arguments -> same files' content (every video has its own seeded generator).
    A folder holding another dataset (other arguments, or videos no manifest of it lists) is
    refused, or emptied of it first with ``overwrite``, so no stale video is left to index."""
    from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest

    if not 1 <= classes <= len(CLASS_NAMES):
        raise DalivsslError(f"synth: classes must be 1..{len(CLASS_NAMES)}, got {classes}")
    if videos < classes:
        raise DalivsslError(f"synth: need at least one video per class ({videos} < {classes})")
    if frames < 2 or size < 16 or size % 2:
        raise DalivsslError(f"synth: need frames >= 2 and an even size >= 16 "
                            f"(got frames={frames}, size={size})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, {"videos": videos, "classes": classes, "frames": frames, "size": size,
                 "seed": seed, "fps": fps}, overwrite)
    names = CLASS_NAMES[:classes]
    jobs = []
    for i, (label, split) in enumerate(plan_videos(videos, classes, test_fraction)):
        rel = f"videos/{names[label]}/{names[label]}_{i:04d}.webm"
        jobs.append((str(out), rel, names[label], label, split, frames, size, fps, seed, i))
    if workers is None and frames * size * size * len(jobs) < 3_000_000:
        workers = 1  # tiny datasets: a process pool costs more than it saves
    rows = parallel.run(_make_one, jobs, workers, progress, "synth")
    indexes = [r.pop("packets") for r in rows]
    for i, r in enumerate(rows):
        r["packets"] = i if indexes[i] is not None else -1  # row in the sidecar
    records = [VideoRecord.from_json(r) for r in rows]
    meta = {"synth": {"videos": videos, "classes": classes, "frames": frames, "size": size,
                      "seed": seed, "fps": fps}}  # what _claim compares
    full = Manifest(out, records, list(names), meta, packets=indexes)
    paths = {"train": save_manifest(full.split("train"), out / "train.jsonl"),
             "test": save_manifest(full.split("test"), out / "test.jsonl"),
             "all": save_manifest(full, out / "all.jsonl")}
    return paths


def _claim(out: Path, params: dict, overwrite: bool) -> None:
    """Refuse (or with ``overwrite`` remove) a dataset in ``out`` other than the one ``params``
    makes: the videos its all.jsonl lists, or a videos/ folder no manifest describes."""
    from dalivssl.data.manifest import load_manifest

    listed = out / "all.jsonl"
    old = None
    if listed.is_file():
        try:
            old = load_manifest(listed)
        except DalivsslError:
            old = None
        if old is not None and old.meta.get("synth") == params:
            return  # the same dataset: rewritten with the same content
    elif not any(p.is_file() for p in (out / "videos").rglob("*")):
        return  # nothing there to mix with
    if not overwrite:
        was = (old.meta.get("synth") or {}) if old is not None else {}
        diff = "; ".join(f"{k} {was.get(k)} → {v}" for k, v in params.items()
                         if was.get(k) != v) if was else "videos no synthetic manifest lists"
        raise DalivsslError(f"{out}: holds another dataset ({diff}); pass --overwrite to "
                            "replace it, or another OUTPUT")
    if old is not None:
        for r in old.records:
            old.abspath(r).unlink(missing_ok=True)
    else:
        shutil.rmtree(out / "videos", ignore_errors=True)


# ------------------------------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """``$DALIVSSL_CACHE`` or ~/.cache/dalivssl."""
    return Path(os.environ.get("DALIVSSL_CACHE") or Path.home() / ".cache" / "dalivssl")


# bump when rendering, encoding or the default size changes, so old caches are not reused
# (5: 128 px, decodable by NVDEC)
GENERATOR_VERSION = 5


def _default_name(cfg: SynthConfig) -> str:
    return (f"synth-v{GENERATOR_VERSION}-{cfg.videos}v-{cfg.classes}c-{cfg.frames}f-"
            f"{cfg.size}px-s{cfg.seed}")


def resolve_manifest(data, split: str = "test"):
    """-> (path, Manifest) of ``data`` (a manifest path), or of the embedded synthetic dataset's
    ``split`` manifest when ``data`` is None (what every command does without --data)."""
    from dalivssl.data.manifest import load_manifest

    if data is None:
        data = ensure_default_dataset()[split]
    return Path(data), load_manifest(data)


def _lock_or_refuse(lock, final: Path) -> None:
    """Take the generation lock and write our pid into it. A process whose *parent* holds the lock
    would wait for ever: that is a spawn worker of the generator re-importing a script that calls
    :func:`ensure_default_dataset` at module level, so it fails with the fix instead."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        if lock.read().strip() == str(os.getppid()):
            raise DalivsslError(
                f"{final}: the synthetic dataset is being generated by this process's parent, "
                "whose workers re-import the main script: call ensure_default_dataset() under "
                "`if __name__ == '__main__':`") from None
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()


def ensure_default_dataset(progress: bool = False) -> dict[str, Path]:
    """Generate the default synthetic dataset once into the cache and reuse it afterwards.

    It is generated into a temporary folder beside the final one and renamed into place only when
    complete (a ``COMPLETE`` marker is written last); an exclusive file lock makes concurrent
    callers wait for the first one instead of generating twice. A folder without the marker is
    never used.
    """
    cfg = DEFAULT
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / _default_name(cfg)
    paths = {k: final / f"{k}.jsonl" for k in ("train", "test", "all")}
    if (final / "COMPLETE").is_file():
        return paths
    # "a+": opening must not truncate the holder's pid, which a waiting child reads
    with open(base / (final.name + ".lock"), "a+") as lock:
        _lock_or_refuse(lock, final)
        if (final / "COMPLETE").is_file():  # another process finished while we waited
            return paths
        if final.exists():  # a stale, incomplete folder (should not happen: we rename)
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=base))
        try:
            generate(tmp, videos=cfg.videos, classes=cfg.classes, frames=cfg.frames,
                     size=cfg.size, seed=cfg.seed, fps=cfg.fps, test_fraction=cfg.test_fraction,
                     progress=progress)
            (tmp / "COMPLETE").write_text("ok\n")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return paths
