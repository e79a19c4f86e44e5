"""Run records: what defines an artifact, stored with it, read back through one resolver.

Every checkpoint, feature cache, logits file and results file carries a :class:`RunRecord` at its
top level (checkpoints: ``ckpt["record"]``; HDF5 results: the ``record`` attribute of the root,
JSON; run dirs: ``record.json``). A record says what the artifact *is*: the kind of run, its human
name, task and arch, the clip settings a model must be fed (clip_len, size, normalisation, clips),
the data (manifest path and a hash of its records), device and decoder, seed, versions, and its
lineage (the checkpoint it started from, by path and content hash).

Rules that make chained commands honest:

* settings of a model come from its record through :func:`resolve_clip` (record + explicit
  overrides); an override that contradicts the record is stated on screen; no command keeps a
  fallback of its own;
* caches and resumable results are keyed on content (:func:`file_hash`, :func:`manifest_hash`),
  never on paths alone;
* a run dir is used by one process at a time (:class:`RunLock`), refuses an existing run without
  ``--resume``/``--overwrite`` (:func:`open_run_dir`), and ``--resume`` refuses settings it cannot
  honour (:func:`check_resumable`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from dalivssl.errors import DalivsslError
from dalivssl.data.manifest import manifest_hash, video_stamp  # noqa: F401  (re-exported)
from pipelines.types import NORMALIZE_MODES

RECORD_VERSION = 1
RECORD_FILE = "record.json"
LOCK_FILE = ".lock"
# last-resort clip settings for a model no record describes (random init): the paper's 16 frames
# and the CPU size; every command uses these same values
DEFAULT_CLIP_LEN = 16
DEFAULT_SIZE = 64
DEFAULT_NORMALIZE = "imagenet"


@dataclass(frozen=True)
class ClipSettings:
    """What a model must be fed: ``clip_len`` frames of ``size``² px, normalised by
    ``normalize`` ('imagenet' | 'unit'). Clips B×C×clip_len×size×size."""

    clip_len: int = DEFAULT_CLIP_LEN
    size: int = DEFAULT_SIZE
    normalize: str = DEFAULT_NORMALIZE

    def __post_init__(self):
        if int(self.clip_len) < 1 or int(self.size) < 1:
            raise DalivsslError(f"clip_len and size must be >= 1, got {self.clip_len}, {self.size}")
        if self.normalize not in NORMALIZE_MODES:
            raise DalivsslError(f"unknown normalisation {self.normalize!r}; valid: "
                                f"{', '.join(NORMALIZE_MODES)}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """The identity of one artifact (see module doc). ``settings`` holds the command's whole
    resolved configuration; ``status`` is 'running' until the run has written its outputs."""

    kind: str
    name: str
    arch: str | None = None
    task: str | None = None
    clip: ClipSettings = field(default_factory=ClipSettings)
    data: str | None = None
    data_hash: str | None = None
    device: str = "cpu"
    decoder: str = "dali-cpu"
    seed: int = 0
    versions: dict = field(default_factory=dict)
    parent: str | None = None
    parent_hash: str | None = None
    settings: dict = field(default_factory=dict)
    status: str = "running"
    version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=_plain))  # tuples → lists, paths → str

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        d = dict(d)
        d["clip"] = ClipSettings(**dict(d.get("clip") or {}))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> "RunRecord":
        return dataclasses.replace(self, **changes)

    def marked(self, complete: bool) -> "RunRecord":
        """This record with status 'complete' or 'running'."""
        return dataclasses.replace(self, status="complete" if complete else "running")

    def describe(self) -> str:
        """One line for plot titles and logs: name, data and input settings."""
        data = Path(self.data).name if self.data else "synthetic"
        c = self.clip
        return f"{self.name} · {data} · {c.clip_len}×{c.size}² {c.normalize} · {self.device}"


def _plain(v):
    if isinstance(v, Path):
        return str(v)
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    if hasattr(v, "item"):
        return v.item()
    return str(v)


# ----------------------------------------------------------------------------------- hashes
_FILE_HASHES: dict[tuple, str] = {}


def file_hash(path) -> str:
    """sha256 (hex, 16 chars) of a file's bytes; memoised on (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


def versions() -> dict:
    """Library versions worth recording next to weights (metadata only: DALI is not imported)."""
    from importlib import metadata

    import dalivssl

    out = {"dalivssl": dalivssl.__version__}
    for key, dists in (("torch", ("torch",)), ("numpy", ("numpy",)),
                       ("dali", ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali"))):
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def new_record(kind: str, name: str, *, data_path, manifest, device: str = "cpu",
               decoder: str = "dali", parents=(), **fields) -> RunRecord:
    """A 'running' record with what every command fills in the same way: the data's identity
    (the manifest file it read — the embedded dataset's too — and its content hash), the device
    ('cpu' | 'gpu', from a dalivssl or torch device name), the decoder ('dali-cpu' |
    'dali-mixed' | 'pyav'), the package versions, and the lineage: ``parents`` (the files the
    run started from) by absolute path and content hash, ';'-joined when several."""
    gpu = str(device).split(":")[0] in ("gpu", "cuda")
    parents = [p for p in parents if p]
    return RunRecord(kind=kind, name=name, data=str(Path(data_path).resolve()),
                     data_hash=manifest_hash(manifest), device="gpu" if gpu else "cpu",
                     decoder="pyav" if decoder == "pyav" else "dali-mixed" if gpu else "dali-cpu",
                     versions=versions(),
                     parent=";".join(str(Path(p).resolve()) for p in parents) or None,
                     parent_hash=";".join(file_hash(p) for p in parents) or None, **fields)


# ------------------------------------------------------------------------------ reading
def record_of(ckpt: dict, path=None) -> RunRecord:
    """The record of a checkpoint. Checkpoints written before records existed are described
    from their fields (the only place that knows the old layouts)."""
    if isinstance(ckpt.get("record"), dict):
        return RunRecord.from_dict(ckpt["record"])
    cfg = dict(ckpt.get("config") or {})
    kind = ckpt.get("kind", "pretrain")
    task = ckpt.get("task") or cfg.get("task")
    normalize = ckpt.get("normalize") or cfg.get("normalize") or _task_normalize(task)
    clip = ClipSettings(int(ckpt.get("clip_len") or cfg.get("clip_len") or DEFAULT_CLIP_LEN),
                        int(ckpt.get("size") or cfg.get("size") or DEFAULT_SIZE),
                        normalize or DEFAULT_NORMALIZE)
    if path:  # a run dir's checkpoint.pt is named after its dir, another file after itself
        name = Path(path).parent.name if Path(path).name == "checkpoint.pt" else Path(path).stem
    else:
        name = f"{kind}_{ckpt.get('arch')}"
    return RunRecord(kind=kind, name=name, arch=ckpt.get("arch"), task=task, clip=clip,
                     data=cfg.get("data"), device=cfg.get("device", "cpu"),
                     seed=int(cfg.get("seed") or 0), versions=dict(ckpt.get("versions") or {}),
                     parent=cfg.get("pretrained"), settings=cfg, status="complete")


def _task_normalize(task: str | None) -> str | None:
    """The input normalisation of a pretext task (its sampler's), or None."""
    if not task:
        return None
    from dalivssl.tasks import TASKS
    from pipelines.samplers import SAMPLERS

    if task not in TASKS:
        return None
    mode = getattr(SAMPLERS.get(TASKS[task].SPEC["sampler"]), "normalize", None)
    return mode if isinstance(mode, str) else None


def read_run_record(run_dir) -> RunRecord | None:
    """``run_dir/record.json`` as a record, or None when the dir has none (not started)."""
    p = Path(run_dir) / RECORD_FILE
    if not p.is_file():
        return None
    try:
        return RunRecord.from_dict(json.loads(p.read_text()))
    except (ValueError, TypeError) as exc:
        raise DalivsslError(f"{p}: unreadable run record ({exc})") from None


def write_run_record(run_dir, record: RunRecord) -> Path:
    """Write ``record.json`` atomically (a reader sees the old or the new file)."""
    p = Path(run_dir) / RECORD_FILE
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2))
    os.replace(tmp, p)
    return p


# ------------------------------------------------------------------------------ resolver
def resolve_clip(record: RunRecord | None, overrides: dict | None = None, say=None,
                 what: str = "") -> ClipSettings:
    """The clip settings to feed a model: its record's, with explicit ``overrides`` (None values
    ignored) on top. An override that contradicts the record is stated through ``say`` (a
    callable taking one line), since the model then sees inputs it was not trained on."""
    base = record.clip if record is not None else ClipSettings()
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(ClipSettings)}
    if unknown:
        raise DalivsslError(f"unknown clip setting(s) {sorted(unknown)}")
    out = dataclasses.replace(base, **given)
    if record is not None and say is not None:
        diffs = [f"{k} {getattr(base, k)} → {v}" for k, v in given.items()
                 if getattr(base, k) != v]
        if diffs:
            say(f"note: {what or record.name} was trained with {base.clip_len}×{base.size}² "
                f"{base.normalize}; overriding {', '.join(diffs)}")
    return out


# record fields a resume can be checked on (the rest: the command's settings)
_IDENTITY = {f.name for f in dataclasses.fields(RunRecord)} - {"name", "settings", "status",
                                                                "versions", "version"}


def check_resumable(old: RunRecord, new: RunRecord, keys, where) -> list[str]:
    """Refuse a resume whose settings differ from the stored run in ``keys`` (settings keys, or
    record fields such as 'data_hash'); returns the harmless differences (e.g. more steps) for
    the caller to state."""
    def get(rec, k):
        return getattr(rec, k) if k in _IDENTITY else rec.settings.get(k)

    bad = [f"{k}: {get(old, k)!r} → {get(new, k)!r}" for k in keys if get(old, k) != get(new, k)]
    if bad:
        raise DalivsslError(f"{where}: cannot resume with other settings ({'; '.join(bad)}); "
                            "rerun with the stored ones, or --overwrite / another --out")
    return [f"{k}: {old.settings.get(k)!r} → {v!r}" for k, v in new.settings.items()
            if k not in keys and old.settings.get(k) != v]


# ------------------------------------------------------------------------------ run dirs
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Exclusive use of a run dir: ``.lock`` holds 'pid host time'. A second process gets a
    one-line error; a lock whose pid is dead (same host) is taken over."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self.token = f"{os.getpid()} {socket.gethostname()} {time.time():.0f}"
        self.held = False

    def acquire(self) -> "RunLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                owner = self.path.read_text().split() if self.path.is_file() else ["?"]
                raise DalivsslError(f"{self.path.parent}: in use by another run (pid "
                                    f"{owner[0]}); wait for it or use another --out") from None
            with os.fdopen(fd, "w") as f:
                f.write(self.token)
            self.held = True
            return self
        raise DalivsslError(f"{self.path}: could not take the run lock")

    def busy(self) -> bool:
        """Another live process holds the lock (what :meth:`acquire` would refuse)."""
        return self.path.exists() and not self._stale()

    def _stale(self) -> bool:
        try:
            pid, host = self.path.read_text().split()[:2]
        except (OSError, ValueError):
            return True  # empty or half-written by a process killed mid-write
        if host != socket.gethostname():
            return False  # cannot tell on another host (shared file system): assume in use
        return int(pid) != os.getpid() and not _pid_alive(int(pid))

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text() == self.token:
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def check_writable(run_dir) -> Path:
    """Create ``run_dir`` and prove it writable, before any work (one-line error otherwise)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        files = [p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()]
        why = f"{files[0]} is a file, not a directory" if files else exc.strerror or exc
        raise DalivsslError(f"{run_dir}: output directory is not writable ({why})") from None
    return run_dir


def open_run_dir(run_dir, artifact: str, resume: bool = False, overwrite: bool = False,
                 lock: bool = True) -> RunLock | None:
    """Check ``run_dir`` is writable, lock it, refuse to replace ``artifact`` (the run's main
    output) without ``resume``/``overwrite``, and remove temporary files a killed run left.
    Returns the held lock (release it, or use it as a context manager)."""
    run_dir = check_writable(run_dir)
    held = RunLock(run_dir).acquire() if lock else None
    try:
        if (run_dir / artifact).exists() and not (resume or overwrite):
            what = "a checkpoint" if artifact.endswith(".pt") else artifact
            raise DalivsslError(f"{run_dir}: already holds {what}; pass --resume to continue "
                                "it, --overwrite to start again, or another --out")
        for tmp in run_dir.glob(".*.tmp"):  # orphans of atomic writes interrupted by a kill
            tmp.unlink(missing_ok=True)
    except BaseException:
        if held is not None:
            held.release()
        raise
    return held
