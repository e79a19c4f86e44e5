"""Multi-teacher knowledge distillation: the loss, the teachers, the logits file and the training
module the one loop (``engine.fit.fit``) trains.

Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"); multi-teacher as in Kumar et
al. 2023 (arXiv 2306.06010, sec. KD): the student learns from the labels and from every teacher,

    L = CE(s, y) + alpha * sum_i T^2 * KL(softmax(t_i / T) || softmax(s / T)),

with s, t_i: B x C logits. T^2 keeps the soft-target gradients on the scale of the CE term
(``kd_loss: hinton``). ``kd_loss: paper`` is the paper's formula, L = CE + Σ_i KL_i at T = 1 with
no weight (Kumar et al. §4.4; what ``protocol: paper`` studies use).
Teachers are finetuned dalivssl checkpoints (run live, eval mode, no grad) or precomputed
video-level logits in an HDF5 file (external teachers such as video foundation models).
:class:`DistillTask` owns its checkpoint state and its DDP wrapping: only the student trains and
is wrapped, the teachers stay local to each rank (timm ``timm/task/distillation.py``).

Logits file layout (written and read only through :class:`dalivssl.results.ResultsFile`):
group ``logits``: ``logits`` float32 (N_videos, C) with attrs num_classes, num_clips, clip_len,
size, normalize, arch, checkpoint; ``paths`` (N,) manifest-relative video paths (the key: rows are
looked up by path, so any manifest holding those videos can use the file); ``indices`` int64 (N,)
positions in the exporting manifest; ``classes`` (C,) class names (when known).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from dalivssl.config import KD_LOSSES
from dalivssl.errors import DalivsslError

LOGITS_GROUP = "logits"


# ----------------------------------------------------------------------------------- loss
def kd_loss(student_logits, targets, teacher_logits: Sequence = (), temperature: float = 4.0,
            alpha: float = 1.0, kind: str = "hinton"):
    """-> (loss, parts). student_logits B x C (requires grad), targets int64 B, teacher_logits: a
    list of B x C tensors (detached here: gradients reach the student only).
    parts: {'ce', 'kd' (weighted sum over teachers, before alpha), 'kd_i': [per teacher]}, detached
    0-d tensors (no device sync per step).
    With no teachers the loss is exactly the cross-entropy. ``kind`` (``KD_LOSSES``): 'hinton'
    as above; 'paper' ignores temperature and alpha: CE + Σ KL(p_t || p_s) at T = 1."""
    import torch.nn.functional as F

    if student_logits.dtype in (torch.bfloat16, torch.float16):  # under AMP: the loss in fp32
        student_logits = student_logits.float()
    if kind not in KD_LOSSES:
        raise DalivsslError(f"kd_loss must be one of {', '.join(KD_LOSSES)}, got {kind!r}")
    if kind == "paper":
        temperature, alpha = 1.0, 1.0
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
    parts = {"ce": ce.detach(), "kd": sum(p.detach() for p in per) if per else ce.new_zeros(()),
             "kd_i": [p.detach() for p in per]}
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
    record: Any = None

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
    """A finetuned checkpoint as a teacher, fed with the clip settings of its run record."""
    from dalivssl.engine.finetune import load_classifier
    from dalivssl.record import record_of

    model, ck = load_classifier(path, device=device)
    _check_classes(str(path), int(ck["num_classes"]), ck.get("classes"), data_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    clip = record_of(ck, path).clip
    t = ModelTeacher(str(path), model.eval(), clip.normalize, clip.clip_len, clip.size)
    t.record = record_of(ck, path)
    return t


def write_logits_file(path, logits: np.ndarray, paths: Sequence[str], indices: Sequence[int],
                      classes: Sequence[str] = (), meta: dict | None = None, **attrs) -> Path:
    """Write video-level logits (N x C) keyed by manifest-relative path (layout: module doc);
    ``meta``: more file-level attributes (the export's config)."""
    from dalivssl.results import ResultsFile

    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or len(logits) != len(paths) or len(paths) != len(indices):
        raise DalivsslError(f"{path}: logits {logits.shape} do not match {len(paths)} paths")
    with ResultsFile(path, "w") as rf:
        rf.set_meta(command="export-logits", **(meta or {}))
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


def load_logits_teacher(path, manifest, data_classes, device, data_path=None) -> LogitsTeacher:
    """Rows of the file aligned to ``manifest``; every manifest video must have a row, and the
    file must have been exported from this very data (same manifest content hash)."""
    import torch

    from dalivssl.record import manifest_hash

    f = read_logits_file(path)
    made_from, want_hash = f["attrs"].get("data_hash"), manifest_hash(manifest)
    if made_from != want_hash:
        raise DalivsslError(
            f"{path}: logits were exported from {f['attrs'].get('data') or 'unrecorded data'} "
            f"(hash {made_from}), not from {data_path or 'this data'} (hash {want_hash}); "
            "export them from the distillation data (dalivssl export-logits --data …)")
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
def video_outputs(model, loader, normalize: str, device, gather: bool = False):
    """``engine.features.VideoOutputs`` of a classifier on a raw loader (uint8 batches
    (B, K, T, H, W, C), normalised with ``normalize``); ``gather``: all torchrun ranks' shards."""
    from dalivssl.engine.features import model_logits, normalized_batches

    return model_logits(model, normalized_batches(loader, normalize, device), device,
                        gather=gather)


def video_logits(model, loader, normalize: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Video-level logits: the mean over each video's K eval clips. ``loader`` yields raw uint8
    batches (B, K, T, H, W, C). -> (logits (N, C) float32, manifest indices (N,) ascending;
    a video the loader repeats is kept once)."""
    out = video_outputs(model, loader, normalize, device)
    return out.video, out.indices


def top1(out) -> tuple[float, int]:
    """(video top-1 of the clip-averaged outputs, videos) of ``VideoOutputs``."""
    return float(np.mean(out.video.argmax(1) == out.targets)), len(out)


class DistillTask(torch.nn.Module):
    """The engine contract for distillation: ``forward(batch) -> {'loss', 'ce', 'kd', 'kd_<i>'}``.

    batch.clips: raw uint8 B×1×T×H×W×C (each model normalises its own way); the student is a
    :class:`dalivssl.engine.finetune.Classifier` fed ``normalize``-d clips; teachers are called
    as teacher(raw_clips, manifest_indices) -> B×C logits and never get gradients.

    The task owns its state: :meth:`run_state` gives the checkpoint fields (the student as a
    finetune checkpoint, contract C7, described by ``record``; trained with ``config`` on
    ``classes``), :meth:`load_run_state` restores them, and :meth:`prepare_distributed` wraps the
    student alone in DDP."""

    def __init__(self, student, teachers: Sequence[Callable], normalize: str,
                 temperature: float = 4.0, alpha: float = 1.0, kind: str = "hinton",
                 record=None, classes: Sequence[str] = (), config=None):
        super().__init__()
        self.student = student
        self.ddp = None  # the student's DDP wrapper under torchrun (prepare_distributed)
        self.teachers = list(teachers)  # not submodules: never trained, never checkpointed
        self.normalize, self.temperature, self.alpha = normalize, temperature, alpha
        self.kind = kind
        self.record, self.classes, self.config = record, list(classes), config

    def forward(self, batch) -> dict:
        from pipelines.loader import normalize_clips

        y = batch.targets
        if bool((y < 0).any()):
            raise DalivsslError("distillation needs labelled videos; found label -1")
        raw = batch.clips
        x = normalize_clips(raw, self.normalize)[:, 0].to(y.device)  # B×C×T×H×W
        t_logits = [t(raw, batch.indices) for t in self.teachers]
        student = self.ddp if self.ddp is not None else self.student
        loss, parts = kd_loss(student(x), y, t_logits, self.temperature, self.alpha, self.kind)
        out = {"loss": loss, "ce": parts["ce"], "kd": parts["kd"]}
        out.update({f"kd_{i}": v for i, v in enumerate(parts["kd_i"])})
        return out

    def prepare_distributed(self, dist) -> "DistillTask":
        """Under torchrun (``dist.enabled``) wrap the student in DDP: its gradients are averaged
        over the ranks; each rank's teachers score that rank's shard. Returns self (what the
        loop calls)."""
        if dist is not None and dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.student, device_ids=None if dist.gpu_index is None
                           else [dist.gpu_index])
        return self

    def run_state(self, final: bool) -> dict:
        """The checkpoint fields of the run (``engine.fit`` adds optimiser, RNG, loader, step):
        the student as a finetune checkpoint, its record 'complete' in the final save."""
        from dalivssl.engine.finetune import checkpoint_fields

        return checkpoint_fields(self.student, self.record.marked(final), self.classes,
                                 self.config)

    def load_run_state(self, ckpt: dict) -> None:
        self.student.load_run_state(ckpt)


# ------------------------------------------------------------------------------ evaluation
def teacher_accuracy(teacher, loader, gather: bool = False) -> tuple[float, int]:
    """Video top-1 of a live teacher on a raw eval loader (clip logits averaged per video, the
    same :func:`dalivssl.engine.features.extract` every evaluation uses; ``gather``: over all
    torchrun ranks' shards, a collective)."""
    from dalivssl.engine.features import extract

    # extract hands the B·K clips as (N, T, H, W, C); the teacher takes (N, 1, T, H, W, C) raw
    return top1(extract(lambda x: teacher(x[:, None], None), loader, keep_clips=False,
                        gather=gather))


def student_backbone(cfg):
    """The student's backbone: random ``cfg.arch`` weights, or ``cfg.student_checkpoint``'s
    backbone (Table 5's "Ours*" may start from pretrained weights; the paper is ambiguous)."""
    from models import create_backbone

    if not cfg.student_checkpoint:
        return create_backbone(cfg.arch)
    from dalivssl.engine.checkpoint import load_backbone

    return load_backbone(cfg.student_checkpoint, arch=cfg.arch)[0].train()


