"""Multi-teacher knowledge distillation into a student backbone.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"); multi-teacher as in Kumar et
al. 2023 (arXiv 2306.06010, sec. KD): the student learns from the labels and from every teacher,

    L = CE(s, y) + alpha * sum_i T^2 * KL(softmax(t_i / T) || softmax(s / T)),

with s, t_i: B x C logits. T^2 keeps the soft-target gradients on the scale of the CE term.
Teachers are finetuned dalivssl checkpoints (run live, eval mode, no grad) or precomputed
video-level logits in an HDF5 file (external teachers such as video foundation models).

Logits file layout (written and read only through :class:`dalivssl.results.ResultsFile`):
group ``logits``: ``logits`` float32 (N_videos, C) with attrs num_classes, num_clips, clip_len,
size, normalize, arch, checkpoint; ``paths`` (N,) manifest-relative video paths (the key: rows are
looked up by path, so any manifest holding those videos can use the file); ``indices`` int64 (N,)
positions in the exporting manifest; ``classes`` (C,) class names (when known).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dalivssl.errors import DalivsslError

LOGITS_GROUP = "logits"


# ----------------------------------------------------------------------------------- loss
def kd_loss(student_logits, targets, teacher_logits: Sequence = (), temperature: float = 4.0,
            alpha: float = 1.0):
    """-> (loss, parts). student_logits B x C (requires grad), targets int64 B, teacher_logits: a
    list of B x C tensors (detached here: gradients reach the student only).
    parts: {'ce', 'kd' (weighted sum over teachers, before alpha), 'kd_i': [per teacher]} floats.
    With no teachers the loss is exactly the cross-entropy."""
    import torch.nn.functional as F

    T = float(temperature)
    if T <= 0:
        raise DalivsslError(f"temperature must be > 0, got {temperature}")
    ce = F.cross_entropy(student_logits, targets)
    loss = ce
    per = []
    if teacher_logits:
        log_ps = F.log_softmax(student_logits / T, dim=1)
        for t in teacher_logits:
            if tuple(t.shape) != tuple(student_logits.shape):
                raise DalivsslError(f"teacher logits {tuple(t.shape)} do not match student logits "
                                    f"{tuple(student_logits.shape)}")
            log_pt = F.log_softmax(t.detach().to(student_logits) / T, dim=1)
            # KL(p_t || p_s) averaged over the batch
            per.append(T * T * F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True))
        kd = sum(per)
        loss = ce + alpha * kd
    parts = {"ce": float(ce.detach()), "kd": float(sum(p.detach() for p in per)) if per else 0.0,
             "kd_i": [float(p.detach()) for p in per]}
    return loss, parts


# ------------------------------------------------------------------------------- teachers
def manifest_classes(manifest) -> list[str]:
    """Class names of a manifest (falls back to '0'..'C-1' from the labels)."""
    classes = list(getattr(manifest, "classes", []) or [])
    if classes:
        return classes
    labels = [int(r.label) for r in manifest.records if int(r.label) >= 0]
    if not labels:
        raise DalivsslError("the manifest has no labelled videos; distillation needs labels")
    return [str(i) for i in range(max(labels) + 1)]


def _check_classes(source: str, num_classes: int, classes: Sequence[str] | None,
                   data_classes: Sequence[str]) -> None:
    if int(num_classes) != len(data_classes):
        raise DalivsslError(f"{source}: teacher has {num_classes} classes but the data has "
                            f"{len(data_classes)}")
    if classes and list(classes) != list(data_classes):
        diff = next(i for i, (a, b) in enumerate(zip(classes, data_classes)) if a != b)
        raise DalivsslError(f"{source}: teacher class {diff} is {classes[diff]!r} but the data's "
                            f"is {data_classes[diff]!r} (class lists differ)")


@dataclass
class ModelTeacher:
    """A finetuned checkpoint run live. Inputs are re-normalised and, if its clip_len/size differ
    from the student's, trilinearly resized to what it was trained on."""

    path: str
    model: Any
    normalize: str
    clip_len: int
    size: int

    def __call__(self, raw, indices):
        import torch
        import torch.nn.functional as F

        from pipelines.loader import normalize_clips

        dev = next(self.model.parameters()).device
        x = normalize_clips(raw, self.normalize)[:, 0].to(dev)  # B x C x T x H x W
        if tuple(x.shape[2:]) != (self.clip_len, self.size, self.size):
            x = F.interpolate(x, size=(self.clip_len, self.size, self.size), mode="trilinear",
                              align_corners=False)
        with torch.no_grad():
            return self.model(x)


@dataclass
class LogitsTeacher:
    """Precomputed video-level logits; rows follow the student manifest (looked up by path)."""

    path: str
    table: Any  # torch float32 (N_manifest, C), row i = manifest record i

    def __call__(self, raw, indices):
        return self.table[indices.to(self.table.device)]


def load_model_teacher(path, data_classes, device) -> ModelTeacher:
    from dalivssl.engine.checkpoint import load_classifier

    model, ck = load_classifier(path, device=device)
    _check_classes(str(path), int(ck["num_classes"]), ck.get("classes"), data_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    return ModelTeacher(str(path), model.eval(), ck.get("normalize") or "imagenet",
                        int(ck.get("clip_len") or 16), int(ck.get("size") or 112))


def write_logits_file(path, logits: np.ndarray, paths: Sequence[str], indices: Sequence[int],
                      classes: Sequence[str] = (), **attrs) -> Path:
    """Write video-level logits (N x C) keyed by manifest-relative path (layout: module doc)."""
    from dalivssl.results import ResultsFile

    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or len(logits) != len(paths) or len(paths) != len(indices):
        raise DalivsslError(f"{path}: logits {logits.shape} do not match {len(paths)} paths")
    with ResultsFile(path, "w") as rf:
        rf.set_meta(command="export-logits")
        rf.write(LOGITS_GROUP, "logits", logits, num_classes=int(logits.shape[1]), **attrs)
        rf.write(LOGITS_GROUP, "paths", list(paths))
        rf.write(LOGITS_GROUP, "indices", np.asarray(indices, np.int64))
        if classes:
            rf.write(LOGITS_GROUP, "classes", list(classes))
    return Path(path)


def read_logits_file(path) -> dict:
    """-> {'logits': (N, C) float32, 'paths': [...], 'classes': [...], 'attrs': {...}}."""
    from dalivssl.results import ResultsFile

    path = Path(path)
    if not path.is_file():
        raise DalivsslError(f"{path}: logits file not found")
    try:
        with ResultsFile(path, "r") as rf:
            if not rf.has(LOGITS_GROUP, "logits") or not rf.has(LOGITS_GROUP, "paths"):
                raise DalivsslError(f"{path}: not a logits file (no /{LOGITS_GROUP}/logits and "
                                    f"/{LOGITS_GROUP}/paths; write it with dalivssl "
                                    "export-logits)")
            out = {"logits": np.asarray(rf.read(LOGITS_GROUP, "logits"), np.float32),
                   "paths": list(rf.read(LOGITS_GROUP, "paths")),
                   "classes": (list(rf.read(LOGITS_GROUP, "classes"))
                               if rf.has(LOGITS_GROUP, "classes") else []),
                   "attrs": rf.attrs(LOGITS_GROUP, "logits")}
    except OSError as exc:
        raise DalivsslError(f"{path}: not a readable HDF5 file ({exc})") from None
    if out["logits"].ndim != 2 or len(out["logits"]) != len(out["paths"]):
        raise DalivsslError(f"{path}: logits {out['logits'].shape} and {len(out['paths'])} paths "
                            "disagree")
    return out


def load_logits_teacher(path, manifest, data_classes, device) -> LogitsTeacher:
    """Rows of the file aligned to ``manifest``; every manifest video must have a row."""
    import torch

    f = read_logits_file(path)
    _check_classes(str(path), f["logits"].shape[1], f["classes"], data_classes)
    row = {p: i for i, p in enumerate(f["paths"])}
    want = [r.path for r in manifest.records]
    missing = [p for p in want if p not in row]
    if missing:
        raise DalivsslError(f"{path}: no logits for {len(missing)} of {len(want)} videos of the "
                            f"data (first: {missing[0]})")
    table = f["logits"][[row[p] for p in want]]
    if not np.all(np.isfinite(table)):
        raise DalivsslError(f"{path}: logits contain NaN/inf")
    return LogitsTeacher(str(path), torch.from_numpy(table).to(device))


# ------------------------------------------------------------------------------- running
def video_logits(model, loader, normalize: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Video-level logits: the mean over each video's K eval clips. ``loader`` yields raw uint8
    batches (B, K, T, H, W, C). -> (logits (N, C) float32, manifest indices (N,) ascending;
    a video the loader repeats is kept once)."""
    from dalivssl.analysis.features import model_logits, normalized_batches

    out = model_logits(model, normalized_batches(loader, normalize, device), device)
    return out.video, out.indices


def accuracy(model, loader, normalize: str, device) -> tuple[float, int]:
    """Top-1 video accuracy (logits averaged over clips) -> (accuracy, videos)."""
    logits, idx = video_logits(model, loader, normalize, device)
    targets = np.array([int(loader.records[i].label) for i in idx])
    return float(np.mean(logits.argmax(1) == targets)), int(len(idx))


@dataclass
class DistillHistory:
    """Per-step records: step, epoch, loss, ce, kd and kd_i (one column per teacher)."""

    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    ce: list[float] = field(default_factory=list)
    kd: list[float] = field(default_factory=list)
    kd_i: list[list[float]] = field(default_factory=list)


def train_student(student, teachers: Sequence[Callable], loader, optimizer, normalize: str,
                  device, epochs: int = 1, max_steps: int | None = None,
                  temperature: float = 4.0, alpha: float = 1.0,
                  progress: Callable[[int, dict], None] | None = None) -> DistillHistory:
    """Distil ``teachers`` into ``student`` over ``loader`` (raw uint8 batches, K = 1 clip).

    Each teacher is called as teacher(raw_clips, manifest_indices) -> B x C logits.
    Stops after ``epochs`` epochs or ``max_steps`` optimizer steps, whichever comes first."""
    from pipelines.loader import normalize_clips

    hist = DistillHistory()
    step = 0
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        student.train()
        for batch in loader:
            if max_steps is not None and step >= max_steps:
                return hist
            raw = batch.clips
            x = normalize_clips(raw, normalize)[:, 0].to(device)
            y = batch.targets.to(device)
            if bool((y < 0).any()):
                raise DalivsslError("distillation needs labelled videos; found label -1")
            t_logits = [t(raw, batch.indices) for t in teachers]
            loss, parts = kd_loss(student(x), y, t_logits, temperature, alpha)
            if not math.isfinite(float(loss.detach())):
                raise DalivsslError(f"loss became {float(loss.detach())} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            hist.step.append(step)
            hist.epoch.append(epoch)
            hist.loss.append(float(loss.detach()))
            hist.ce.append(parts["ce"])
            hist.kd.append(parts["kd"])
            hist.kd_i.append(parts["kd_i"])
            if progress is not None:
                progress(step, parts)
    return hist


def student_checkpoint_fields(student, arch: str, classes: Sequence[str], clip_len: int,
                              size: int, normalize: str, config: dict, step: int,
                              epoch: int) -> dict:
    """C7 finetune fields: the backbone without its classifier, the classifier as ``head``
    (the Linear(feature_dim, C) layout that load_classifier rebuilds)."""
    from dalivssl.engine.checkpoint import versions

    sd = student.state_dict()
    return dict(kind="finetune", arch=arch,
                backbone={k: v for k, v in sd.items() if not k.startswith("classifier.")},
                head=student.classifier.state_dict(), config=config, versions=versions(),
                step=int(step), epoch=int(epoch), num_classes=len(classes),
                classes=list(classes), clip_len=int(clip_len), size=int(size),
                normalize=normalize)
