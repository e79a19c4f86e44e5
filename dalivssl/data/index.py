"""Index a dataset: adapter listing -> probe every file once (in parallel) -> Manifest.

Files that cannot be probed (missing, empty, corrupt, not a video, no video stream) are left out
and returned as failures ``(path, reason)``; they never stop the indexing. The same demuxing pass
records each video's packet index (``pipelines.packets.PacketIndex``: keyframes, byte offsets and
sizes, presentation order), which ``save_manifest`` writes to the manifest's sidecar.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
from pathlib import Path

import numpy as np

from dalivssl.data import parallel
from dalivssl.data.adapters import IndexOptions, list_videos
from dalivssl.data.manifest import Manifest, VideoRecord
from dalivssl.errors import VideoError


class _PacketRecorder:
    """``probe(on_packet=...)`` callback: where each packet's bytes lie in the file.

    Demuxers report a packet's position as the start of its container element (Matroska: the
    block header, a few bytes before the data), so the exact data offset is found by looking
    for the packet's bytes just after it; a packet not found verbatim (e.g. Matroska header
    stripping) leaves the video without an index (it is then decoded from frame 0).
    """

    def __init__(self, path):
        self.path = str(path)
        self.offset, self.size, self.key, self.pts = [], [], [], []
        self.extradata = b""
        self.ok = True
        self._end = 0
        self._f = open(self.path, "rb")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)

    def __call__(self, packet) -> None:
        if not self.ok:
            return
        if not self.offset:
            self.extradata = bytes(packet.stream.codec_context.extradata or b"")
        data = bytes(packet)
        start = packet.pos if packet.pos is not None and packet.pos >= 0 else self._end
        off = start if self._mm[start:start + len(data)] == data else \
            self._mm.find(data, start, start + len(data) + 256)
        if off < 0:
            self.ok = False
            return
        self._end = off + len(data)
        self.offset.append(off)
        self.size.append(len(data))
        self.key.append(bool(packet.is_keyframe))
        self.pts.append(packet.pts)

    def close(self) -> None:
        self._mm.close()
        self._f.close()

    def index(self, info: dict):
        """The PacketIndex of the probed file, or None when it cannot be used."""
        from pipelines.packets import PacketIndex

        n = len(self.offset)
        if not self.ok or n == 0 or n != info["num_frames"]:
            return None
        pts = self.pts
        if any(p is None for p in pts):
            pres = np.arange(n)  # no timestamps: decode order is presentation order
        else:
            order = np.argsort(np.asarray(pts, np.int64), kind="stable")
            pres = np.empty(n, np.int64)
            pres[order] = np.arange(n)
        return PacketIndex(np.asarray(self.offset, np.int64), np.asarray(self.size, np.int32),
                           np.asarray(self.key, np.bool_), pres.astype(np.int32),
                           info["codec"], self.extradata, int(info["width"]),
                           int(info["height"]), os.path.getsize(self.path))


def probe_with_packets(path, exact: bool = False) -> dict:
    """``probe.probe`` plus ``'packets'``: the file's PacketIndex (None if not usable)."""
    from dalivssl.data.probe import probe

    rec = _PacketRecorder(path) if os.path.isfile(path) and os.path.getsize(path) else None
    try:
        info = probe(path, exact=exact, on_packet=rec)
        info["packets"] = rec.index(info) if rec is not None else None
        return info
    finally:
        if rec is not None:
            rec.close()


def _probe_job(job: tuple[str, bool, bool]):
    """Worker: probe one file; returns the probe dict or the failure reason (a str)."""
    from dalivssl.data.probe import probe

    path, exact, packets = job
    try:
        return probe_with_packets(path, exact) if packets else probe(path, exact=exact)
    except VideoError as exc:
        return exc.reason


def probe_many(paths: list[str], exact: bool = False, workers: int | None = None,
               progress: bool = False, packets: bool = False) -> list[dict | str]:
    """Probe results (dict; with 'packets' when asked) or failure reasons (str), in order."""
    if workers is None and len(paths) < 64:
        workers = 1  # a spawn pool costs ~1 s to start
    return parallel.run(_probe_job, [(p, exact, packets) for p in paths], workers, progress,
                        "probe")


def index_dataset(root: str | os.PathLike, format: str, opts: IndexOptions = IndexOptions(),
                  exact: bool = False, workers: int | None = None, progress: bool = False
                  ) -> tuple[Manifest, list[tuple[str, str]]]:
    """Build the manifest of ``root`` in ``format`` (with packet indexes); returns (manifest,
    failures)."""
    root = Path(root).resolve()
    listing = list_videos(root, format, opts)
    results = probe_many([str(root / e.path) for e in listing.entries], exact, workers, progress,
                         packets=True)
    records, failures, indexes = [], list(listing.missing), []
    for e, res in zip(listing.entries, results):
        if isinstance(res, str):
            failures.append((e.path, res))
            continue
        row = -1
        if res["packets"] is not None:
            row = len(indexes)
            indexes.append(res["packets"])
        records.append(VideoRecord(path=e.path, num_frames=res["num_frames"], label=e.label,
                                   class_name=e.class_name, split=e.split, fps=res["fps"],
                                   width=res["width"], height=res["height"], codec=res["codec"],
                                   start_frame=e.start_frame, end_frame=e.end_frame,
                                   video_id=e.video_id, extra=dict(e.extra), packets=row))
    meta = {"format": format, **({"split": opts.split} if format in ("ucf101", "hmdb51") else {})}
    return Manifest(root, records, list(listing.classes), meta, packets=indexes), failures


def update_packets(manifest: Manifest, workers: int | None = None, progress: bool = False
                   ) -> tuple[Manifest, list[tuple[str, str]]]:
    """``manifest`` with a fresh packet index for every record (``data index --update``).

    Returns (new manifest, problems): a record whose file no longer probes, or whose packet count
    differs from its ``num_frames``, is listed; its frame count is set to the packet count (the
    count the decoder sees) and unprobeable records keep no index (decoded from frame 0).
    """
    results = probe_many(manifest.paths(), False, workers, progress, packets=True)
    records, problems, indexes = [], [], []
    for rec, res in zip(manifest.records, results):
        if isinstance(res, str):
            problems.append((rec.path, res))
            records.append(dataclasses.replace(rec, packets=-1))
            continue
        n = rec.num_frames
        if res["num_frames"] != n:
            problems.append((rec.path, f"manifest says {n} frames, the file holds "
                                       f"{res['num_frames']}: updated"))
            n = res["num_frames"]
        row = -1
        if res["packets"] is not None:
            row = len(indexes)
            indexes.append(res["packets"])
        else:
            problems.append((rec.path, "no packet index (packets not stored verbatim): decoded "
                                       "from frame 0"))
        records.append(dataclasses.replace(rec, num_frames=n, packets=row))
    return Manifest(manifest.root, records, list(manifest.classes), dict(manifest.meta),
                    packets=indexes), problems

