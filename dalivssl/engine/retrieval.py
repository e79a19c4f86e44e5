"""Nearest-neighbour video retrieval (VCOP protocol: Xu et al., CVPR 2019, ``retrieve_clips.py``;
used by Kumar et al., arXiv 2306.06010).

Every video is described by the mean of the backbone features of N evenly spaced clips. Each test
video queries the training set by cosine similarity; a query scores a hit at k when any of its k
nearest training videos has the query's class. Reported for k = 1, 5, 10, 20, 50.

Differences from the original, on purpose: ties in similarity are broken by training-set position
(stable sort), so results are deterministic; k larger than the training set is capped at its size
(and the cap is recorded); features are the pooled ``forward_features`` of the backbone (VCOP's
C3D used max-pooled conv5 maps).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dalivssl.errors import DalivsslError

DEFAULT_TOPK = (1, 5, 10, 20, 50)
CACHE_VERSION = 3  # 2: hashes from dalivssl.record.file_hash, device in the settings;
#                   3: the manifest by content (record.manifest_hash: video sizes, mtimes)


@dataclass
class RetrievalResult:
    """topk: requested k → accuracy in [0, 1]; effective: requested k → k used (capped);
    ranking: Q×min(maxk, N) gallery positions, nearest first; hits: Q×len(ks) bool."""

    ks: tuple[int, ...]
    topk: dict[int, float]
    effective: dict[int, int]
    ranking: np.ndarray
    hits: np.ndarray

    @property
    def capped(self) -> list[int]:
        return [k for k in self.ks if self.effective[k] != k]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a Q×D, b N×D → Q×N cosine similarities (a zero vector has similarity 0 to everything)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T


def topk_retrieval(query: np.ndarray, query_labels, gallery: np.ndarray, gallery_labels,
                   ks=DEFAULT_TOPK) -> RetrievalResult:
    """Top-k retrieval accuracy of ``query`` (Q×D) against ``gallery`` (N×D).

    Ranking is by descending cosine similarity; equal similarities keep gallery order (stable
    sort), so the lower gallery position ranks first. k > N is capped at N.
    """
    query_labels = np.asarray(query_labels).reshape(-1)
    gallery_labels = np.asarray(gallery_labels).reshape(-1)
    if len(query) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise DalivsslError("retrieval: features and labels differ in length")
    if len(gallery) == 0 or len(query) == 0:
        raise DalivsslError("retrieval: empty query or gallery set")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise DalivsslError(f"retrieval: top-k values must be >= 1, got {list(ks)}")
    n = len(gallery)
    sim = cosine_similarity(query, gallery)
    maxk = min(max(ks), n)
    ranking = np.argsort(-sim, axis=1, kind="stable")[:, :maxk]
    match = gallery_labels[ranking] == query_labels[:, None]  # Q×maxk
    # first hit position along the ranking (maxk if none) → hit at k iff first < k
    first = np.where(match.any(axis=1), match.argmax(axis=1), maxk)
    effective = {k: min(k, n) for k in ks}
    hits = np.stack([first < effective[k] for k in ks], axis=1)
    topk = {k: float(hits[:, j].mean()) for j, k in enumerate(ks)}
    return RetrievalResult(ks, topk, effective, ranking, hits)


# ---------------------------------------------------------------------------------------------
# feature cache


def cache_key(checkpoint: str | None, arch: str, manifest_path, settings: dict) -> str:
    """Hash of what determines the features: checkpoint bytes (or 'random' + arch + seed),
    manifest content (record.manifest_hash: records, root, each video's size and mtime), and
    the clip settings (clips, clip_len, size, normalize)."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.record import file_hash, manifest_hash

    m = load_manifest(manifest_path)
    parts = {
        "version": CACHE_VERSION,
        "checkpoint": file_hash(checkpoint) if checkpoint else "random",
        "arch": arch,
        "manifest": manifest_hash(m),
        "settings": {k: settings[k] for k in sorted(settings)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DALIVSSL_CACHE", Path.home() / ".cache" / "dalivssl")) / "features"


def load_cached(cache_dir, key: str):
    """-> VideoOutputs from ``cache_dir/<key>.h5`` or None. Half-written files never exist
    (written to a temp name, then renamed)."""
    from dalivssl.engine.features import VideoOutputs
    from dalivssl.results import ResultsFile

    path = Path(cache_dir) / f"{key}.h5"
    if not path.is_file():
        return None
    try:
        with ResultsFile(path, "r") as rf:
            return VideoOutputs(video=rf.read("features", "video"), clips=None,
                                targets=rf.read("features", "targets"),
                                indices=rf.read("features", "indices"))
    except Exception:  # unreadable cache entry: recompute (and overwrite) rather than fail
        return None


def save_cached(cache_dir, key: str, out, meta: dict) -> Path:
    from dalivssl.results import ResultsFile

    path = Path(cache_dir) / f"{key}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with ResultsFile(tmp, "w") as rf:
        rf.set_meta(**meta)
        rf.write("features", "video", out.video)
        rf.write("features", "targets", out.targets)
        rf.write("features", "indices", out.indices)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# the whole run


def compute_features(backbone, manifest, settings: dict, device="cpu", batch_size: int = 4,
                     on_batch=None, where: str = ""):
    """Video features of ``manifest`` (N clips per video, averaged) through the eval loader."""
    from dalivssl.engine.features import backbone_features, eval_loader

    loader = eval_loader(manifest, settings["num_clips"], batch_size, settings["clip_len"],
                         settings["size"], device, 0, settings["normalize"], where=where)
    return backbone_features(backbone, loader, device, keep_clips=False, on_batch=on_batch)


def run_retrieval(backbone, arch: str, checkpoint: str | None, train_path, test_path,
                  settings: dict, ks=DEFAULT_TOPK, device="cpu", batch_size: int = 4,
                  cache_dir=None, console=None, record=None, progress: bool = True) -> dict:
    """Features for train (gallery) and test (queries), cached by :func:`cache_key`; top-k.
    Returns {'result', 'cached', 'features', 'num_train', 'num_test'} ('features': {'train',
    'test'} VideoOutputs)."""
    from dalivssl.console import progress as progress_bar
    from dalivssl.data.manifest import load_manifest

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    feats, cached = {}, {}
    with progress_bar(console, disable=not progress) as progress:
        for name, path in (("train", train_path), ("test", test_path)):
            manifest = load_manifest(path)
            if not len(manifest):
                raise DalivsslError(f"{path}: manifest has no videos")
            key = cache_key(checkpoint, arch, path, settings)
            out = load_cached(cache_dir, key)
            cached[name] = out is not None
            if out is None:
                task = progress.add_task(f"features {name}", total=len(manifest))
                out = compute_features(backbone, manifest, settings, device, batch_size,
                                       on_batch=lambda b, t=task: progress.update(t, advance=b),
                                       where=str(path))
                save_cached(cache_dir, key, out, {"checkpoint": str(checkpoint or "random"),
                                                  "arch": arch, "manifest": str(path),
                                                  "settings": settings, "key": key,
                                                  **({"record": record.to_dict()}
                                                     if record is not None else {})})
            if (out.targets < 0).any():
                raise DalivsslError(f"{path}: videos without labels; retrieval needs classes")
            feats[name] = out
    result = topk_retrieval(feats["test"].video, feats["test"].targets, feats["train"].video,
                            feats["train"].targets, ks)
    return {"result": result, "cached": cached, "features": feats,
            "num_train": len(feats["train"]), "num_test": len(feats["test"])}
