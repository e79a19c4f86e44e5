"""Dataset adapters: official annotation files -> candidate records (path, label, class, split).

One function per format in ``ADAPTERS``; each reads only annotation files and the directory tree
(no probing) and returns an :class:`Listing`. ``dalivssl.data.index`` probes the files afterwards.

Conventions followed (paths relative to ROOT, the folder given on the command line):

- ``folders``: ``ROOT/<class>/<video>``; or ``ROOT/<split>/<class>/<video>`` when every top-level
  folder is a split name (train, val, validation, test). Classes sorted by name.
- ``ucf101``: ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based) + ``trainlist0N.txt`` ("Class/v_x.avi
  1") + ``testlist0N.txt`` ("Class/v_x.avi"); videos ``ROOT/<Class>/v_*.avi``.
- ``hmdb51``: ``<class>_test_splitN.txt`` lines "<video> <flag>", flag 0 unused / 1 train / 2 test;
  videos ``ROOT/<class>/<video>``. Classes sorted by name.
- ``kinetics400``: CSV files (label,youtube_id,time_start,time_end,split[,is_cc]); files named
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` under class folders or flat (any depth).
  A CSV without a label column (the test set) gives label -1.
- ``ssv2``: labels JSON {template: "index"} + train/validation JSON lists [{id, label, template,
  placeholders}]; files ``ROOT/<id>.webm``. Class = template with the brackets removed.
- ``diving48``: JSON lists [{vid_name, label, start_frame, end_frame}] (train/test by file name),
  optional vocab JSON; files ``ROOT/<vid_name>.mp4``. start/end frames are recorded; end_frame is
  taken as exclusive and clipped to the decoded frame count by ``VideoRecord.usable_frames``.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dalivssl.errors import DalivsslError

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv",
              ".ogv", ".3gp")
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class IndexOptions:
    """Adapter options: official split number (UCF101/HMDB51) and annotation files/folders."""

    split: int = 1
    annotations: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A video named by the annotations, before probing."""

    path: str  # relative to ROOT
    label: int
    class_name: str
    split: str
    video_id: str = ""
    start_frame: int = 0
    end_frame: int = -1
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Listing:
    classes: list[str]
    entries: list[Entry]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# ------------------------------------------------------------------------------------ helpers
def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".")


def _videos_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_video(p))


def _rel(root: Path, p: Path) -> str:
    return p.relative_to(root).as_posix()


def _find_annotation(root: Path, opts: IndexOptions, names: list[str], what: str,
                     required: bool = True) -> Path | None:
    """First existing file among ``names`` in the --annotations folders/files, ROOT, ROOT/..,
    and common sub-folders."""
    dirs: list[Path] = []
    for a in opts.annotations:
        a = Path(a)
        if a.is_file() and a.name in names:
            return a
        dirs.append(a if a.is_dir() else a.parent)
    dirs += [root, root.parent, root / "annotations", root / "labels",
             root.parent / "annotations", root.parent / "labels"]
    for d in dirs:
        for sub in ("", "ucfTrainTestlist", "testTrainMulti_7030_splits"):
            for n in names:
                p = d / sub / n if sub else d / n
                if p.is_file():
                    return p
    if required:
        raise DalivsslError(f"{what}: none of {', '.join(names)} found (pass --annotations)")
    return None


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()]


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DalivsslError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _existing(root: Path, rel: str, entry: Entry, out: Listing) -> None:
    if (root / rel).is_file():
        out.entries.append(entry)
    else:
        out.missing.append((rel, "missing"))


# ----------------------------------------------------------------------------------- adapters
def index_folders(root: Path, opts: IndexOptions) -> Listing:
    """ROOT/<class>/<video> (split 'train'), or ROOT/<split>/<class>/<video>."""
    tops = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_tree = bool(tops) and all(d.name.lower() in SPLIT_DIRS for d in tops)
    groups = [(SPLIT_DIRS[d.name.lower()], d) for d in tops] if split_tree else [("train", root)]
    classes = sorted({c.name for _, g in groups for c in g.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise DalivsslError(f"{root}: no class folders found (expected ROOT/<class>/<video>)")
    index = {c: i for i, c in enumerate(classes)}
    out = Listing(classes, [])
    for split, g in groups:
        for c in sorted(d for d in g.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for v in _videos_under(c):
                rel = _rel(root, v)
                out.entries.append(Entry(rel, index[c.name], c.name, split, v.stem))
    return out


def index_ucf101(root: Path, opts: IndexOptions) -> Listing:
    """UCF101 official split ``opts.split`` (1-3)."""
    if opts.split not in (1, 2, 3):
        raise DalivsslError(f"ucf101: --split must be 1, 2 or 3, got {opts.split}")
    cls_file = _find_annotation(root, opts, ["classInd.txt"], "ucf101")
    classes: dict[int, str] = {}
    for n, ln in enumerate(_lines(cls_file), 1):
        parts = ln.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DalivsslError(f"{cls_file}:{n}: expected '<index> <class>', got {ln!r}")
        classes[int(parts[0]) - 1] = parts[1]
    names = [classes[i] for i in sorted(classes)]
    if sorted(classes) != list(range(len(classes))):
        raise DalivsslError(f"{cls_file}: class indices are not 1..{len(classes)}")
    by_lower = {c.lower(): i for i, c in enumerate(names)}
    out = Listing(names, [])
    for split, fname in (("train", f"trainlist0{opts.split}.txt"),
                         ("test", f"testlist0{opts.split}.txt")):
        f = _find_annotation(root, opts, [fname], "ucf101")
        for n, ln in enumerate(_lines(f), 1):
            rel = ln.split()[0].replace("\\", "/")
            cls = rel.split("/")[0]
            if cls.lower() not in by_lower:
                raise DalivsslError(f"{f}:{n}: class {cls!r} not in {cls_file.name}")
            label = by_lower[cls.lower()]
            _existing(root, rel, Entry(rel, label, names[label], split, Path(rel).stem), out)
    return out


def index_hmdb51(root: Path, opts: IndexOptions) -> Listing:
    """HMDB51 official split ``opts.split`` (1-3): <class>_test_split<N>.txt, flags 1/2."""
    if opts.split not in (1, 2, 3):
        raise DalivsslError(f"hmdb51: --split must be 1, 2 or 3, got {opts.split}")
    pattern = re.compile(rf"^(.+)_test_split{opts.split}\.txt$")
    dirs = [Path(a) if Path(a).is_dir() else Path(a).parent for a in opts.annotations]
    dirs += [root, root.parent, root / "testTrainMulti_7030_splits",
             root.parent / "testTrainMulti_7030_splits", root / "annotations"]
    files: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.iterdir()):
                m = pattern.match(f.name)
                if m and m.group(1) not in files:
                    files[m.group(1)] = f
        if files:
            break
    if not files:
        raise DalivsslError(f"hmdb51: no <class>_test_split{opts.split}.txt files found "
                            f"(pass --annotations DIR)")
    names = sorted(files)
    out = Listing(names, [])
    for label, cls in enumerate(names):
        for n, ln in enumerate(_lines(files[cls]), 1):
            parts = ln.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DalivsslError(f"{files[cls]}:{n}: expected '<video> <0|1|2>', got {ln!r}")
            if parts[1] == "0":
                continue
            rel = f"{cls}/{parts[0]}"
            split = "train" if parts[1] == "1" else "test"
            _existing(root, rel, Entry(rel, label, cls, split, Path(parts[0]).stem), out)
    return out


def index_kinetics400(root: Path, opts: IndexOptions) -> Listing:
    """Kinetics-400 CSVs (--annotations, repeatable; default ROOT/{train,validate,val,test}.csv)."""
    csvs = [Path(a) for a in opts.annotations if Path(a).suffix.lower() == ".csv"]
    for a in opts.annotations:
        if Path(a).is_dir():
            csvs += sorted(Path(a).glob("*.csv"))
    if not opts.annotations:
        for d in (root, root.parent, root / "annotations", root.parent / "annotations"):
            csvs += [d / n for n in ("train.csv", "validate.csv", "val.csv", "test.csv")
                     if (d / n).is_file()]
            if csvs:
                break
    if not csvs:
        raise DalivsslError("kinetics400: no annotation CSV found (pass --annotations FILE.csv)")
    rows = []
    for f in csvs:
        if not f.is_file():
            raise DalivsslError(f"{f}: annotation file not found")
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = {"youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or ()):
                raise DalivsslError(f"{f}: expected columns label,youtube_id,time_start,time_end,"
                                    f"split; got {reader.fieldnames}")
            for n, row in enumerate(reader, 2):
                rows.append((f, n, row))
    classes = sorted({r["label"] for _, _, r in rows if r.get("label")})
    index = {c: i for i, c in enumerate(classes)}
    # files may sit under class folders (spaces or underscores) or flat: find them by stem
    by_stem = {p.stem: p for p in _videos_under(root)}
    out = Listing(classes, [])
    for f, n, row in rows:
        try:
            stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
        except ValueError:
            raise DalivsslError(f"{f}:{n}: time_start/time_end are not integers") from None
        split = (row.get("split") or "train").strip()
        split = {"validate": "val", "validation": "val"}.get(split, split)
        label_name = row.get("label") or ""
        label = index[label_name] if label_name else -1
        p = by_stem.get(stem)
        if p is None:
            out.missing.append((stem, "missing"))
            continue
        out.entries.append(Entry(_rel(root, p), label, label_name, split, row["youtube_id"],
                                 extra={"time_start": int(row["time_start"]),
                                        "time_end": int(row["time_end"])}))
    return out


def _template_class(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def index_ssv2(root: Path, opts: IndexOptions) -> Listing:
    """Something-Something v2: labels JSON + train/validation JSON; files ROOT/<id>.webm."""
    labels_f = _find_annotation(root, opts, ["something-something-v2-labels.json",
                                             "labels.json"], "ssv2")
    labels = _load_json(labels_f)
    if not isinstance(labels, dict):
        raise DalivsslError(f"{labels_f}: expected an object {{template: index}}")
    names_by_index = {int(v): k for k, v in labels.items()}
    if sorted(names_by_index) != list(range(len(labels))):
        raise DalivsslError(f"{labels_f}: label indices are not 0..{len(labels) - 1}")
    classes = [names_by_index[i] for i in range(len(labels))]
    index = {c: i for i, c in enumerate(classes)}
    out = Listing(classes, [])
    for split, fnames in (("train", ["something-something-v2-train.json", "train.json"]),
                          ("val", ["something-something-v2-validation.json", "validation.json"])):
        f = _find_annotation(root, opts, fnames, "ssv2", required=False)
        if f is None:
            continue
        items = _load_json(f)
        for n, it in enumerate(items):
            try:
                vid = str(it["id"])
                cls = _template_class(it["template"])
            except (KeyError, TypeError):
                raise DalivsslError(f"{f}: item {n} lacks 'id' or 'template'") from None
            if cls not in index:
                raise DalivsslError(f"{f}: item {n}: template {cls!r} not in {labels_f.name}")
            rel = f"{vid}.webm"
            extra = {"caption": it["label"]} if "label" in it else {}
            _existing(root, rel, Entry(rel, index[cls], cls, split, vid, extra=extra), out)
    if not out.entries and not out.missing:
        raise DalivsslError("ssv2: no train/validation JSON found (pass --annotations DIR)")
    return out


def index_diving48(root: Path, opts: IndexOptions) -> Listing:
    """Diving48: train/test JSON lists with vid_name, label, start_frame, end_frame."""
    files = [Path(a) for a in opts.annotations if Path(a).suffix.lower() == ".json"]
    for a in opts.annotations:
        if Path(a).is_dir():
            files += sorted(Path(a).glob("*.json"))
    if not opts.annotations:
        for d in (root, root.parent, root / "annotations", root.parent / "annotations"):
            if d.is_dir():
                files += sorted(d.glob("Diving48*_t*.json"))
            if files:
                files += sorted(d.glob("Diving48*vocab*.json"))
                break
    vocab_f = next((f for f in files if "vocab" in f.name.lower()), None)
    lists = [f for f in files if "vocab" not in f.name.lower()]
    if not lists:
        raise DalivsslError("diving48: no Diving48_*_{train,test}.json found "
                            "(pass --annotations FILE.json)")
    items = []
    for f in lists:
        split = "test" if "test" in f.name.lower() else "train"
        data = _load_json(f)
        if not isinstance(data, list):
            raise DalivsslError(f"{f}: expected a list of {{vid_name, label, ...}}")
        for n, it in enumerate(data):
            if not isinstance(it, dict) or not {"vid_name", "label"} <= set(it):
                raise DalivsslError(f"{f}: item {n} lacks 'vid_name' or 'label'")
            items.append((split, it))
    n_cls = max(int(it["label"]) for _, it in items) + 1
    if vocab_f is not None:
        vocab = _load_json(vocab_f)
        classes = ["/".join(map(str, v)) if isinstance(v, list) else str(v) for v in vocab]
        if len(classes) < n_cls:
            raise DalivsslError(f"{vocab_f}: {len(classes)} names for {n_cls} labels")
    else:
        classes = [f"class_{i:02d}" for i in range(n_cls)]
    by_stem = {p.stem: p for p in _videos_under(root)}
    out = Listing(classes, [])
    for split, it in items:
        name = str(it["vid_name"])
        label = int(it["label"])
        p = by_stem.get(name)
        if p is None:
            out.missing.append((name, "missing"))
            continue
        out.entries.append(Entry(_rel(root, p), label, classes[label], split, name,
                                 int(it.get("start_frame", 0)), int(it.get("end_frame", -1))))
    return out


ADAPTERS: dict[str, Callable[[Path, IndexOptions], Listing]] = {
    "folders": index_folders,
    "ucf101": index_ucf101,
    "hmdb51": index_hmdb51,
    "kinetics400": index_kinetics400,
    "ssv2": index_ssv2,
    "diving48": index_diving48,
}


def list_videos(root: str | os.PathLike, format: str, opts: IndexOptions = IndexOptions()
                ) -> Listing:
    """Run the adapter for ``format`` over ``root``."""
    from dalivssl.errors import unknown_name

    if format not in ADAPTERS:
        raise unknown_name("dataset format", format, ADAPTERS)
    root = Path(root)
    if not root.is_dir():
        raise DalivsslError(f"{root}: dataset folder not found")
    return ADAPTERS[format](root.resolve(), opts)
