"""Index a dataset: adapter listing -> probe every file once (in parallel) -> Manifest.

Files that cannot be probed (missing, empty, corrupt, not a video, no video stream) are left out
and returned as failures ``(path, reason)``; they never stop the indexing.
"""
from __future__ import annotations

import os
from pathlib import Path

from dalivssl.data import parallel
from dalivssl.data.adapters import IndexOptions, list_videos
from dalivssl.data.manifest import Manifest, VideoRecord
from dalivssl.errors import VideoError


def _probe_job(job: tuple[str, bool]):
    """Worker: probe one file; returns the probe dict or the failure reason (a str)."""
    from dalivssl.data.probe import probe

    path, exact = job
    try:
        return probe(path, exact=exact)
    except VideoError as exc:
        return exc.reason


def probe_many(paths: list[str], exact: bool = False, workers: int | None = None,
               progress: bool = False) -> list[dict | str]:
    """Probe results (dict) or failure reasons (str), in the order of ``paths``."""
    if workers is None and len(paths) < 64:
        workers = 1  # a spawn pool costs ~1 s to start
    return parallel.run(_probe_job, [(p, exact) for p in paths], workers, progress, "probe")


def index_dataset(root: str | os.PathLike, format: str, opts: IndexOptions = IndexOptions(),
                  exact: bool = False, workers: int | None = None, progress: bool = False
                  ) -> tuple[Manifest, list[tuple[str, str]]]:
    """Build the manifest of ``root`` in ``format``; returns (manifest, failures)."""
    root = Path(root).resolve()
    listing = list_videos(root, format, opts)
    results = probe_many([str(root / e.path) for e in listing.entries], exact, workers, progress)
    records, failures = [], list(listing.missing)
    for e, res in zip(listing.entries, results):
        if isinstance(res, str):
            failures.append((e.path, res))
            continue
        records.append(VideoRecord(path=e.path, num_frames=res["num_frames"], label=e.label,
                                   class_name=e.class_name, split=e.split, fps=res["fps"],
                                   width=res["width"], height=res["height"], codec=res["codec"],
                                   start_frame=e.start_frame, end_frame=e.end_frame,
                                   video_id=e.video_id, extra=dict(e.extra)))
    meta = {"format": format, **({"split": opts.split} if format in ("ucf101", "hmdb51") else {})}
    return Manifest(root, records, list(listing.classes), meta), failures
