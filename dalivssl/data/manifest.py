"""Video manifests: one JSON-lines file per dataset split, probed once, spoken in frame indices.

Line 1 is a header ``{"format": "dalivssl-manifest", "version": 1, "root": ..., "classes": [...]}``;
every following line is one :class:`VideoRecord`. Paths are stored relative to ``root``; ``root``
itself is stored relative to the manifest file when it lies beside/below it, so a dataset folder can
be moved as a whole.

Packet indexes (keyframes, packet offsets: ``pipelines.packets``) live in one sidecar per manifest,
named in the header (``"packets": "<name>.packets.npz"``, relative to the manifest) and opened
lazily, memory-mapped; a record's row in it is ``record.packets``. A manifest without one
still works (its videos are decoded from frame 0); ``dalivssl data index --update`` adds it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from dalivssl.errors import DalivsslError

FORMAT = "dalivssl-manifest"
VERSION = 1
PACKETS_KEY = "packets"  # header key: the sidecar's path
SIDECAR_SUFFIX = ".packets.npz"


@dataclass(frozen=True)
class VideoRecord:
    """One usable video (or one segment of a video).

    path: file path relative to the manifest root. num_frames: exact decodable frame count of the
    file. label: class index into ``Manifest.classes`` (-1 = unlabelled). start_frame/end_frame:
    the usable frame range [start, end) inside the file (Diving48 annotations); end=-1 = num_frames.
    video_id: identifier of the source video (segments of one video share it).
    packets: row of the video's packet index in the manifest's sidecar (-1 = none).
    """

    path: str
    num_frames: int
    label: int = -1
    class_name: str = ""
    split: str = "train"
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    start_frame: int = 0
    end_frame: int = -1
    video_id: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    packets: int = field(default=-1, compare=False, hash=False)

    @property
    def usable_frames(self) -> int:
        """Number of frames in the usable range [start_frame, end_frame)."""
        end = self.num_frames if self.end_frame < 0 else min(self.end_frame, self.num_frames)
        return max(0, end - self.start_frame)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        if d["packets"] < 0:
            d.pop("packets")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "VideoRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        extra = dict(known.pop("extra", {}) or {})
        extra.update({k: v for k, v in d.items() if k not in names})
        return cls(**known, extra=extra)


@dataclass
class Manifest:
    """A list of records with the dataset root and class names (index = label).

    packets: where the records' packet indexes are: None, the sidecar's path (opened on first
    use), an opened ``PacketTable``, or a list of ``PacketIndex`` (fresh from indexing; written
    to a sidecar by ``save_manifest``).
    """

    root: Path
    records: list[VideoRecord]
    classes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    packets: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self.records)

    def __getitem__(self, i) -> VideoRecord:
        return self.records[i]

    def abspath(self, record: VideoRecord) -> Path:
        """Absolute path of a record's file."""
        return (self.root / record.path).resolve()

    def packet_index(self, record: VideoRecord):
        """The record's ``pipelines.packets.PacketIndex``, or None (no index: decode from 0)."""
        row = getattr(record, "packets", -1)
        if row < 0 or self.packets is None:
            return None
        if isinstance(self.packets, (str, Path)):
            from pipelines.packets import PacketTable

            try:
                self.packets = PacketTable(self.packets)
            except (OSError, ValueError) as exc:
                import logging

                logging.getLogger(__name__).warning("packet index unusable, videos are decoded "
                                                    "from frame 0: %s", exc)
                self.packets = None
                return None
        try:
            return self.packets[int(row)]
        except IndexError:
            return None

    def paths(self) -> list[str]:
        """Absolute paths of all records, in order (what the DALI pipeline reads)."""
        return [str(self.abspath(r)) for r in self.records]

    def select(self, records: Iterable[VideoRecord], **meta) -> "Manifest":
        """A manifest over the same root and classes holding ``records``."""
        return Manifest(self.root, list(records), list(self.classes), {**self.meta, **meta},
                        self.packets)

    @property
    def flip_safe(self) -> bool:
        """Whether a horizontal flip keeps every label, so finetuning may flip clips.

        False for datasets whose classes name a left/right direction: the synthetic dataset
        (move_right, spin_cw, …) and Something-Something-V2 ("pushing something from left to
        right"), where a flipped clip shows another class. ``meta['flip_safe']`` overrides.
        """
        if "flip_safe" in self.meta:
            return bool(self.meta["flip_safe"])
        return not ("synth" in self.meta or self.meta.get("format") == "ssv2")

    def split(self, name: str) -> "Manifest":
        """Only the records of one split ('train', 'test', 'val', …)."""
        return self.select(r for r in self.records if r.split == name)


def shared_videos(a: Manifest, b: Manifest) -> list[Path]:
    """The video files both manifests use (resolved paths; segments of one file count as one):
    a test set that shares them with the training set overstates accuracy."""
    ours = {a.abspath(r).resolve() for r in a}
    return sorted({p for p in (b.abspath(r).resolve() for r in b) if p in ours})


def overlap_warning(train: Manifest, test: Manifest, train_path, test_path,
                    what: str = "test accuracy") -> str | None:
    """One warning line when ``test`` uses videos of ``train`` (:func:`shared_videos`): the
    ``what`` then overstates; None when they are disjoint."""
    shared = shared_videos(train, test)
    if not shared:
        return None
    return (f"warning: {len(shared)} of the {len(test)} test videos ({test_path}) are training "
            f"videos too ({train_path}), e.g. {shared[0].name}: the {what} will overstate")


def save_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON lines, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "version": VERSION,
              "root": _relative(Path(manifest.root).resolve(), path.parent),
              "classes": list(manifest.classes), **({"meta": manifest.meta} if manifest.meta else {})}
    side = _save_packets(manifest, path)
    if side is not None:
        header[PACKETS_KEY] = _relative(side, path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for r in manifest.records:
            f.write(json.dumps(r.to_json()) + "\n")
    os.replace(tmp, path)
    return path


def _save_packets(manifest: Manifest, path: Path) -> Path | None:
    """The sidecar the saved manifest points to: fresh indexes are written beside it; an existing
    sidecar is pointed to where it lies."""
    src = manifest.packets
    if src is None:
        return None
    if isinstance(src, list):
        from pipelines.packets import save_table

        return save_table(src, path.with_name(path.stem + SIDECAR_SUFFIX))
    return Path(getattr(src, "path", src)).resolve()


def _relative(target: Path, base: Path) -> str:
    """``target`` relative to ``base`` when it lies beside/below it, else absolute."""
    try:
        rel = os.path.relpath(Path(target).resolve(), base.resolve())
    except ValueError:  # different drive (Windows)
        return str(target)
    return str(target) if rel.startswith("..") else rel


def _validate(rec: VideoRecord, root: Path, classes: Sequence[str], where: str) -> None:
    if rec.num_frames < 0:
        raise DalivsslError(f"{where}: {rec.path}: negative frame count {rec.num_frames}")
    if not (rec.label == -1 or (classes and 0 <= rec.label < len(classes))) or (
            rec.label != -1 and not classes):
        raise DalivsslError(f"{where}: {rec.path}: unknown label {rec.label} "
                            f"(manifest has {len(classes)} classes)")
    full = (root / rec.path).resolve()
    if os.path.isabs(rec.path) or not full.is_relative_to(root.resolve()):
        raise DalivsslError(f"{where}: {rec.path}: path lies outside the manifest root {root}")


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; any bad line raises DalivsslError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DalivsslError(f"{path}: manifest not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise DalivsslError(f"{path}: empty manifest")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise DalivsslError(f"{path}:1: not a JSON header ({exc.msg})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DalivsslError(f"{path}:1: not a dalivssl manifest (missing header)")
    if header.get("version") != VERSION:
        raise DalivsslError(f"{path}:1: unsupported manifest version {header.get('version')}")
    root = Path(header["root"])
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    classes = list(header.get("classes", []))
    records = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = VideoRecord.from_json(json.loads(line))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DalivsslError(f"{path}:{n}: bad record ({exc})") from None
        _validate(rec, root, classes, f"{path}:{n}")
        records.append(rec)
    side = header.get(PACKETS_KEY)
    if side is not None and not Path(side).is_absolute():
        side = str((path.parent / side).resolve())
    return Manifest(root, records, classes, header.get("meta", {}), side)


def manifest_hash(manifest) -> str:
    """Hash of a manifest's *content*: its resolved root, classes and every record (path, frame
    count, label, split, range) plus each video file's size and mtime (:func:`video_stamp`), so
    two files with the same names but other videos, labels or splits differ, videos replaced in
    place give another hash, and a copied manifest file hashes the same."""
    h = hashlib.sha256()
    root = Path(manifest.root).resolve()
    h.update(str(root).encode())
    h.update(json.dumps(list(manifest.classes)).encode())
    for r in manifest.records:
        h.update(f"\n{r.path}\t{r.num_frames}\t{r.label}\t{r.split}\t{r.start_frame}\t"
                 f"{r.end_frame}\t{video_stamp(root / r.path)}".encode())
    return h.hexdigest()[:16]


def video_stamp(path) -> str:
    """'size:mtime_ns' of a video file ('missing' when it is gone): cheap (one stat), and it
    changes whenever the file is rewritten."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"
