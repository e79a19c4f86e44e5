"""Transcode a dataset into what DALI decodes fast: VP9/MJPEG for the CPU decoder, H.264 for the
GPU, short side resized, short GOP, optionally cut into short segments.

Why segments: DALI's CPU ``decoders.video`` decodes from frame 0 up to the highest requested frame
on every call (DALI ``fn.decoders.video`` documentation), so a clip near the end of a 300-frame video costs ~10x one at the
start. Segments of N frames bound that cost.

Segmenting (``segment_frames=N``) cuts the usable range [start_frame, end_frame) of each video
into consecutive segments of N frames. A tail shorter than N/2 is appended to the previous
segment (segments hold N..N + N/2 - 1 frames), a longer tail becomes its own segment, and a video
shorter than N is one segment: no frame is ever dropped, so the segments of a video sum to its
usable frame count. Each segment is a record with ``video_id`` = the source's id and ``extra``
``{"segment": i, "source_start": k, "source": path}`` (k = absolute first frame in the source).
Without segmenting, each video becomes one file and start_frame/end_frame are carried over.

Each output's packet index (``pipelines.packets``) is recorded by the same probe that counts its
frames, and the prepared manifest's sidecar holds them all.

Resumable: outputs are written under a temporary name and renamed when complete; a video's
records are then saved to ``OUT/.done/<path>.json`` and a rerun skips videos that have one. One bad
input is reported and never stops the others. ``OUT/.done/settings.json`` holds what OUT was
prepared from and with (source manifest content, codec, size, GOP, segments): a rerun with other
ones is refused, or with ``overwrite`` replaces the old output (never a mix of both).
"""
from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

from dalivssl.data import parallel
from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest
from dalivssl.data.videoio import CODECS
from dalivssl.errors import DalivsslError, VideoError

PREPARE_CODECS = ("vp9", "mjpeg", "h264")
DONE_DIR = ".done"
SETTINGS_FILE = "settings.json"  # in DONE_DIR


def _out_size(w: int, h: int, short_side: int | None) -> tuple[int, int]:
    """Size with the short side = ``short_side`` (None/0: unchanged), both even (yuv420p)."""
    if short_side:
        s = short_side / min(w, h)
        w, h = w * s, h * s
    return max(2, int(round(w / 2)) * 2), max(2, int(round(h / 2)) * 2)


def _frames(src: Path, short_side: int | None, start: int, end: int):
    """Yield resized rgb24 frames [start, end) of ``src`` (end=-1: to the last frame)."""
    import av

    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        size = None
        for i, f in enumerate(c.decode(stream)):
            if end >= 0 and i >= end:
                break
            if i < start:
                continue
            if size is None:
                size = _out_size(f.width, f.height, short_side)
            yield f.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()


def _segments(frames, n: int | None):
    """Group a frame iterator into lists per the segment rule above (None: one segment)."""
    if not n:
        yield list(frames)
        return
    ready, cur = None, []
    for f in frames:
        cur.append(f)
        if len(cur) == n:
            if ready is not None:
                yield ready
            ready, cur = cur, []
        elif ready is not None and len(cur) == (n + 1) // 2:
            yield ready  # the next segment will be long enough: the previous one is final
            ready = None
    if ready is not None and cur and len(cur) < (n + 1) // 2:
        yield ready + cur
    else:
        if ready is not None:
            yield ready
        if cur:
            yield cur


def _prepare_one(job: dict) -> tuple[str, list[dict] | str, list]:
    """Worker: transcode one source video; returns (source path, records, packet indexes) or
    (path, reason, [])."""
    from dalivssl.data.index import probe_with_packets
    from dalivssl.data.probe import probe
    from dalivssl.data.videoio import write_video

    rec = VideoRecord.from_json(job["record"])
    out_root = Path(job["out"])
    src = Path(job["src"])
    done = out_root / DONE_DIR / (rec.path + ".json")
    if done.is_file():  # finished by an earlier run: only its packet indexes are re-read
        rows = json.loads(done.read_text())
        return rec.path, rows, [_packets_of(out_root / r["path"]) for r in rows]
    suffix = CODECS[job["codec"]][0]
    stem = Path(rec.path).with_suffix("")
    seg_n = job["segment_frames"]
    # the encoder wants a rational rate: 29.97 -> 2997/100
    fps = Fraction(job["fps"] or 25).limit_denominator(1001)
    written: list[Path] = []
    indexes = []
    try:
        probe(src)  # missing / empty / not a video / truncated: the canonical one-line reason
        start = rec.start_frame if seg_n else 0
        end = rec.end_frame if seg_n else -1
        rows, k = [], start
        for i, seg in enumerate(_segments(_frames(src, job["short_side"], start, end), seg_n)):
            if not seg:
                break
            rel = f"{stem}_seg{i:04d}{suffix}" if seg_n else f"{stem}{suffix}"
            final = out_root / rel
            tmp = final.with_name(final.stem + ".partial" + suffix)
            write_video(tmp, seg, fps=fps, codec=job["codec"], gop=job["gop"],
                        threads=job["threads"])
            info = probe_with_packets(tmp)
            if info["num_frames"] != len(seg):
                raise VideoError(src, f"re-encoded segment {i} holds {info['num_frames']} "
                                      f"frames, {len(seg)} were written")
            os.replace(tmp, final)
            written.append(final)
            indexes.append(info["packets"])
            d = rec.to_json()
            d.pop("packets", None)  # a row of the source manifest's sidecar
            d.update(path=rel, num_frames=len(seg), fps=info["fps"], width=info["width"],
                     height=info["height"], codec=info["codec"],
                     video_id=rec.video_id or Path(rec.path).stem)
            if seg_n:
                d.update(start_frame=0, end_frame=-1,
                         extra={**rec.extra, "segment": i, "source_start": k,
                                "source": rec.path})
            rows.append(d)
            k += len(seg)
        if not rows:
            raise VideoError(src, "truncated or corrupt (no frames decoded)")
    except Exception as exc:  # one bad input must never stop the others
        for p in written:
            p.unlink(missing_ok=True)
        for p in out_root.glob(f"{stem}*.partial{suffix}"):
            p.unlink(missing_ok=True)
        reason = exc.reason if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
        return rec.path, reason.splitlines()[0] if reason else "failed", []
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, done)
    return rec.path, rows, indexes


def _packets_of(path: Path):
    from dalivssl.data.index import probe_with_packets

    try:
        return probe_with_packets(path)["packets"]
    except VideoError:
        return None


def _claim(out: Path, settings: dict, overwrite: bool) -> None:
    """Make ``out`` hold output of ``settings`` only: an output of other settings (or of an
    unknown version) is refused, or removed with ``overwrite``; then the settings are recorded."""
    done = out / DONE_DIR
    f = done / SETTINGS_FILE
    old = json.loads(f.read_text()) if f.is_file() else None
    made = [p for p in done.rglob("*.json") if p != f] if done.is_dir() else []
    if (made or (out / "manifest.jsonl").is_file()) and old != settings:
        if not overwrite:
            diff = "; ".join(f"{k}: {(old or {}).get(k)!r} → {v!r}" for k, v in settings.items()
                             if (old or {}).get(k) != v) if old else "settings not recorded"
            raise DalivsslError(f"{out}: holds a dataset prepared from or with other settings "
                                f"({diff}); pass --overwrite to replace it, or another OUTPUT")
        for rows in made:  # the outputs of the old settings, then their bookkeeping
            for row in json.loads(rows.read_text()):
                (out / row["path"]).unlink(missing_ok=True)
        shutil.rmtree(done)
        (out / "manifest.jsonl").unlink(missing_ok=True)
    done.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(settings, indent=1))


def prepare(manifest: Manifest, out_dir, codec: str = "vp9", short_side: int | None = 128,
            gop: int | None = 16, segment_frames: int | None = None, workers: int | None = None,
            progress: bool = False, overwrite: bool = False
            ) -> tuple[Manifest, list[tuple[str, str]], Path]:
    """Transcode every record of ``manifest`` into ``out_dir``; writes out_dir/manifest.jsonl.
    ``out_dir`` prepared with other settings is refused, or replaced with ``overwrite``.

    Returns (new manifest, failures [(source path, reason)], manifest path).
    """
    if codec not in PREPARE_CODECS:
        from dalivssl.errors import unknown_name

        raise unknown_name("codec", codec, PREPARE_CODECS)
    if segment_frames is not None and segment_frames < 2:
        raise DalivsslError(f"--segment-frames must be >= 2, got {segment_frames}")
    if short_side and short_side < 2:  # 0 / None: keep the size
        raise DalivsslError(f"--short-side must be >= 2 (or 0: keep the size), got {short_side}")
    for key, value in (("gop", gop), ("workers", workers)):
        if value is not None and value < 1:
            raise DalivsslError(f"--{key} must be >= 1, got {value}")
    out = Path(out_dir).resolve()
    if out == Path(manifest.root).resolve():
        raise DalivsslError(f"{out}: output folder must differ from the dataset root")
    out.mkdir(parents=True, exist_ok=True)
    from dalivssl.data.manifest import manifest_hash

    _claim(out, {"source_root": str(Path(manifest.root).resolve()),
                 "source_hash": manifest_hash(manifest), "codec": codec,
                 "short_side": short_side, "gop": gop, "segment_frames": segment_frames},
           overwrite)
    for stale in out.rglob("*.partial.*"):  # left by a killed run; never part of the output
        stale.unlink(missing_ok=True)
    n_workers = parallel.default_workers(len(manifest)) if workers is None else workers
    if workers is None and len(manifest) < 8:
        n_workers = 1
    jobs = [{"record": r.to_json(), "src": str(manifest.abspath(r)), "out": str(out),
             "codec": codec, "short_side": short_side, "gop": gop,
             "segment_frames": segment_frames, "fps": r.fps,
             "threads": 1 if n_workers > 1 else None} for r in manifest.records]
    records, failures, indexes = [], [], []
    for path, res, packets in parallel.run(_prepare_one, jobs, n_workers, progress, "prepare"):
        if isinstance(res, str):
            failures.append((path, res))
            continue
        for d, ix in zip(res, packets):
            row = -1 if ix is None else len(indexes)
            records.append(VideoRecord.from_json({**d, "packets": row}))
            if ix is not None:
                indexes.append(ix)
    meta = {**manifest.meta, "prepared": {"codec": codec, "short_side": short_side, "gop": gop,
                         "segment_frames": segment_frames, "source_root": str(manifest.root)}}
    new = Manifest(out, records, list(manifest.classes), meta, packets=indexes)
    path = save_manifest(new, out / "manifest.jsonl")
    return new, failures, path
