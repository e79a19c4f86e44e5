"""Downstream action recognition: full finetuning or a linear probe on a (pretrained) backbone.

Protocol of the benchmark (Kumar et al., arXiv 2306.06010, §4; VCOP ``ft_classify.py``):
train on one uniformly random clip per video (random crop + flip; no flip where a flip changes
the class, ``Manifest.flip_safe``), test on N evenly spaced
centre-cropped clips per video and report

* clip-level top-1: every test clip classified on its own;
* video-level top-1: the N clip logits of a video are averaged, then argmax.

Linear probe: the backbone is frozen *and kept in eval mode* (BN running statistics never move);
only ``Linear(feature_dim, C)`` is trained. As in CVRL's linear evaluation (Qian et al. 2021) the
features may be L2-normalised first (``l2_norm``; off by default, recorded in the checkpoint).

Optimiser: SGD momentum 0.9 (or AdamW), cosine decay per step from ``lr`` to 0; the probe's
head uses ``lr × head_lr_mult``. The core functions take any iterable of
:class:`pipelines.types.Batch` (clips B×K×C×T×H×W); :func:`run_finetune` wires them to the DALI
loaders, checkpoints (C7) and the results file (C8).
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dalivssl.errors import DalivsslError

RESULTS_NAME = "finetune.h5"
LOG_NAME = "finetune_log.csv"
LOG_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "lr", "seconds")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a finetuning run (stored in the checkpoint and results file).

    lr: base learning rate (VCOP's finetuning lr, 1e-3). The head's effective step scales with
    ‖f‖² of the un-normalised pooled features: ~9–18 for the randomly initialised backbones at
    16×64² (ShuffleNet 2.0x: 18 with its zero-γ init, 66 with the reference init, where 3e-3
    already diverged for batch 8). With ``l2_norm``
    the features have unit norm and a probe wants a much larger lr (CLI default 0.1).
    The head gets ``lr × head_lr_mult``.
    """

    arch: str = "shufflenet"
    linear_probe: bool = False
    l2_norm: bool = False
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw"
    head_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.0
    flip: bool | None = None  # random horizontal flip of training clips; None: Manifest.flip_safe
    clip_len: int = 16
    size: int = 112
    eval_clips: int = 10
    normalize: str = "imagenet"
    seed: int = 0
    device: str = "cpu"
    pretrained: str | None = None  # checkpoint path, None = random init

    def to_dict(self) -> dict:
        return asdict(self)


class FinetuneModel(nn.Module):
    """backbone.forward_features (B×D) → [L2-norm] → [dropout] → Linear(D, C) → logits B×C.

    With ``frozen`` the backbone takes no gradient and stays in eval mode even under
    ``model.train()``, so its BN running statistics are not updated by probing.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, frozen: bool = False,
                 l2_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.feature_dim), int(num_classes))
        self.frozen = frozen
        self.l2_norm = l2_norm
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if frozen:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×C×T×H×W → B×D (normalised if ``l2_norm``)."""
        if self.frozen:
            with torch.no_grad():
                f = self.backbone.forward_features(x)
        else:
            f = self.backbone.forward_features(x)
        return F.normalize(f, dim=1) if self.l2_norm else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ---------------------------------------------------------------------------------------------
# metrics


def clip_accuracy(clip_logits: np.ndarray, targets: np.ndarray) -> float:
    """clip_logits V×K×C, targets V → fraction of the V·K clips classified correctly."""
    pred = np.asarray(clip_logits).argmax(axis=-1)  # V×K
    return float((pred == np.asarray(targets)[:, None]).mean())


def video_predictions(clip_logits: np.ndarray) -> np.ndarray:
    """clip_logits V×K×C → V predicted classes from the clip-averaged logits."""
    return np.asarray(clip_logits).mean(axis=1).argmax(axis=-1)


def video_accuracy(clip_logits: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 of the clip-averaged logits (mean over K, then argmax), as in VCOP / Kumar et al."""
    return float((video_predictions(clip_logits) == np.asarray(targets)).mean())


def confusion_matrix(pred: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 C×C, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(targets, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


@dataclass
class EvalResult:
    clip_acc: float
    video_acc: float
    clip_logits: np.ndarray  # V×K×C
    video_pred: np.ndarray  # V
    targets: np.ndarray  # V
    indices: np.ndarray  # V manifest positions
    confusion: np.ndarray  # C×C


def evaluate(model: nn.Module, batches: Iterable, num_classes: int, device="cpu",
             on_batch=None) -> EvalResult:
    """Clip- and video-level top-1 of ``model`` over eval batches (K clips per video)."""
    from dalivssl.analysis.features import model_logits

    out = model_logits(model, batches, device, on_batch)
    if (out.targets < 0).any():
        raise DalivsslError("test videos without labels (label -1): cannot score accuracy")
    pred = video_predictions(out.clips)
    return EvalResult(clip_accuracy(out.clips, out.targets), video_accuracy(out.clips, out.targets),
                      out.clips, pred, out.targets, out.indices,
                      confusion_matrix(pred, out.targets, num_classes))


# ---------------------------------------------------------------------------------------------
# training


def build_optimizer(model: FinetuneModel, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD momentum (VCOP's finetuning) or AdamW; the probe optimises the head only. Each group
    remembers its base lr."""
    from dalivssl.engine.trainer import make_optimizer

    head_lr = cfg.lr * cfg.head_lr_mult
    groups = [{"params": list(model.head.parameters()), "lr": head_lr, "base_lr": head_lr}]
    if not model.frozen:
        groups.insert(0, {"params": [p for p in model.backbone.parameters() if p.requires_grad],
                          "lr": cfg.lr, "base_lr": cfg.lr})
    return make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay 1 → 0 over ``total`` steps (per step, no warmup)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def set_lr(optimizer, step: int, total: int) -> float:
    f = cosine_factor(step, total)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * f
    return optimizer.param_groups[-1]["lr"]


def train_epoch(model: FinetuneModel, batches: Iterable, optimizer, device="cpu",
                step: int = 0, total_steps: int | None = None,
                on_step: Callable[[int, float], None] | None = None) -> dict:
    """One pass of cross-entropy training on the manifest labels (``batch.targets``).

    Clips B×K×C×T×H×W are flattened to B·K samples (each clip carries its video's label).
    Stops early once ``step`` reaches ``total_steps``. Returns mean loss, accuracy, steps taken
    and the new global step.
    """
    model.train()
    loss_sum, correct, seen, taken = 0.0, 0, 0, 0
    for batch in batches:
        if total_steps is not None and step >= total_steps:
            break
        x = batch.clips.to(device, non_blocking=True).float()
        b, k = x.shape[:2]
        x = x.flatten(0, 1)
        y = batch.targets.to(device).long().repeat_interleave(k)
        if (y < 0).any():
            raise DalivsslError("training videos without labels (label -1): cannot finetune")
        if total_steps is not None:
            set_lr(optimizer, step, total_steps)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        taken += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "steps": taken,
            "step": step}


# ---------------------------------------------------------------------------------------------
# the whole run (loaders, checkpoints, results)


@dataclass
class FinetuneData:
    """Train/test manifests of a run (contract C1) and the class names."""

    train: object
    test: object
    classes: list[str] = field(default_factory=list)
    train_path: str = ""
    test_path: str = ""


def resolve_data(data: str | None, test_data: str | None) -> FinetuneData:
    """--data/--test-data → manifests. Without --test-data the train/test splits of --data are
    used; without --data the default synthetic dataset (C2)."""
    from dalivssl.data.manifest import load_manifest

    if data is None:
        if test_data is not None:
            raise DalivsslError("--test-data needs --data")
        from dalivssl.data.synth import ensure_default_dataset

        paths = ensure_default_dataset()
        data, test_data = str(paths["train"]), str(paths["test"])
    train_m = load_manifest(data)
    if test_data is not None:
        test_m = load_manifest(test_data)
        if test_m.classes != train_m.classes:
            raise DalivsslError(f"{test_data}: classes differ from {data} "
                                f"({len(test_m.classes)} vs {len(train_m.classes)})")
    else:
        test_m = train_m.split("test")
        train_m = train_m.split("train")
        test_data = data
        if not len(test_m):
            raise DalivsslError(f"{data}: no 'test' split; pass --test-data")
    if not len(train_m):
        raise DalivsslError(f"{data}: no training videos")
    if not train_m.classes:
        raise DalivsslError(f"{data}: manifest has no classes (unlabelled); cannot finetune")
    return FinetuneData(train_m, test_m, list(train_m.classes), str(data), str(test_data))


def pretrain_normalize(ckpt: dict) -> str | None:
    """Input normalisation the backbone was pretrained with ('imagenet' | 'unit'), if known."""
    for src in (ckpt, ckpt.get("config") or {}):
        if isinstance(src.get("normalize"), str):
            return src["normalize"]
    task = ckpt.get("task")
    if task:
        try:
            from pipelines.samplers import SAMPLERS
            from dalivssl.tasks import TASKS

            spec = TASKS[task].SPEC
            name = spec["sampler"] if isinstance(spec, dict) else getattr(spec, "sampler")
            return SAMPLERS[name].normalize if isinstance(
                getattr(SAMPLERS[name], "normalize", None), str) else None
        except Exception:  # unknown task / layout: fall back to the caller's default
            return None
    return None


def train_loader(manifest, cfg: FinetuneConfig, num_threads: int = 2, where: str = ""):
    """One random clip per video with random crop + flip (eval sampler, ``random=True``); no
    flip when ``cfg.flip`` is False (:func:`run_finetune` resolves None)."""
    from dalivssl.analysis.features import make_loader

    drop_last = len(manifest) >= 2 * cfg.batch_size
    return make_loader("eval", manifest, where, batch_size=cfg.batch_size, device=cfg.device,
                       clip_len=cfg.clip_len, size=cfg.size, seed=cfg.seed, augment=True,
                       drop_last=drop_last, num_threads=num_threads, random=True,
                       num_clips=1, normalize=cfg.normalize, flip=cfg.flip)


def run_finetune(cfg: FinetuneConfig, data: FinetuneData, backbone: nn.Module, out_dir,
                 resume: bool = False, train_batches=None, test_batches=None,
                 console=None, backbone_kwargs: dict | None = None) -> dict:
    """Train, evaluate, write ``out_dir/checkpoint.pt`` (finetune kind), ``finetune.h5`` and
    ``finetune_log.csv``. ``train_batches`` / ``test_batches`` override the DALI loaders (tests);
    ``train_batches`` must then have ``set_epoch`` or be re-iterable.
    Returns {'clip_acc', 'video_acc', 'epochs', 'step', 'checkpoint', 'results'}.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    from dalivssl.engine.checkpoint import (CKPT_NAME, load_checkpoint, rng_state,
                                            save_checkpoint, set_rng_state, versions)

    if cfg.flip is None:  # stored resolved: the run's config says what the loader did
        cfg = replace(cfg, flip=data.train.flip_safe)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CKPT_NAME
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    num_classes = len(data.classes)
    model = FinetuneModel(backbone, num_classes, frozen=cfg.linear_probe, l2_norm=cfg.l2_norm,
                          dropout=cfg.dropout).to(cfg.device)
    optimizer = build_optimizer(model, cfg)

    if train_batches is None:
        train_batches = train_loader(data.train, cfg, where=data.train_path)
    steps_per_epoch = len(train_batches)
    if steps_per_epoch == 0:
        raise DalivsslError(f"{data.train_path}: no training batches (videos too short or "
                            f"batch size {cfg.batch_size} too large)")
    if cfg.max_steps:
        total_steps = int(cfg.max_steps)
        epochs = math.ceil(total_steps / steps_per_epoch)
    else:
        epochs = int(cfg.epochs)
        total_steps = epochs * steps_per_epoch

    history: list[dict] = []
    start_epoch, step = 0, 0
    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        if ck.get("kind") != "finetune" or ck.get("arch") != cfg.arch or bool(
                ck["config"].get("linear_probe")) != cfg.linear_probe:
            raise DalivsslError(f"{ckpt_path}: cannot resume: it is a {ck.get('kind')} run of "
                                f"{ck.get('arch')!r} (linear_probe="
                                f"{ck['config'].get('linear_probe')}), not this one")
        model.backbone.load_state_dict(ck["backbone"])
        model.head.load_state_dict(ck["head"])
        if "optimizer" in ck:
            optimizer.load_state_dict(ck["optimizer"])
        if "rng" in ck:
            set_rng_state(ck["rng"])
        history = list(ck.get("history") or [])
        start_epoch, step = int(ck["epoch"]), int(ck["step"])

    def checkpoint(epoch: int, extra: dict | None = None) -> None:
        save_checkpoint(
            ckpt_path, kind="finetune", arch=cfg.arch, backbone=model.backbone.state_dict(),
            head=model.head.state_dict(), num_classes=num_classes, classes=list(data.classes),
            clip_len=cfg.clip_len, size=cfg.size, normalize=cfg.normalize,
            feature_l2_norm=cfg.l2_norm, backbone_kwargs=dict(backbone_kwargs or {}),
            config=cfg.to_dict(), versions=versions(), step=step, epoch=epoch,
            optimizer=optimizer.state_dict(), rng=rng_state(), history=history,
            **(extra or {}))

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    kind = "linear probe" if cfg.linear_probe else "finetune"
    with Progress(*columns, console=console, transient=False) as progress:
        for epoch in range(start_epoch, epochs):
            if step >= total_steps:
                break
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(epoch)
            n = min(steps_per_epoch, total_steps - step)
            task = progress.add_task(f"{kind} epoch {epoch + 1}/{epochs}", total=n, info="")
            t0 = time.perf_counter()
            stats = train_epoch(model, train_batches, optimizer, cfg.device, step, total_steps,
                                on_step=lambda s, loss: progress.update(
                                    task, advance=1, info=f"loss {loss:.3f}"))
            step = stats["step"]
            history.append({"epoch": epoch + 1, "step": step, "train_loss": stats["loss"],
                            "train_acc": stats["acc"],
                            "lr": optimizer.param_groups[-1]["lr"],
                            "seconds": time.perf_counter() - t0})
            progress.update(task, info=f"loss {stats['loss']:.3f} acc {stats['acc']:.3f}")
            checkpoint(epoch + 1)
            _write_log(out_dir / LOG_NAME, history)

        if test_batches is None:
            from dalivssl.analysis.features import eval_loader

            test_batches = eval_loader(data.test, cfg.eval_clips, cfg.batch_size, cfg.clip_len,
                                       cfg.size, cfg.device, cfg.seed, cfg.normalize,
                                       where=data.test_path)
        n_test = len(data.test) if data.test is not None else None
        task = progress.add_task("test", total=n_test, info=f"{cfg.eval_clips} clips/video")
        result = evaluate(model, test_batches, num_classes, cfg.device,
                          on_batch=lambda b: progress.update(task, advance=b))
        progress.update(task, info=f"clip {result.clip_acc:.3f} video {result.video_acc:.3f}")

    final_epoch = history[-1]["epoch"] if history else start_epoch
    checkpoint(final_epoch, {"clip_acc": result.clip_acc, "video_acc": result.video_acc})
    _write_log(out_dir / LOG_NAME, history)
    results_path = out_dir / RESULTS_NAME
    _write_results(results_path, cfg, data, history, result)
    return {"clip_acc": result.clip_acc, "video_acc": result.video_acc, "epochs": final_epoch,
            "step": step, "checkpoint": ckpt_path, "results": results_path,
            "history": history}


def _write_log(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        for row in history:
            w.writerow({k: row[k] for k in LOG_COLUMNS})
    os.replace(tmp, path)


def _write_results(path: Path, cfg: FinetuneConfig, data: FinetuneData, history: list[dict],
                   r: EvalResult) -> None:
    """HDF5 (C8): /finetune scalars + confusion + per-video predictions, /log per epoch."""
    import yaml

    from dalivssl.engine.checkpoint import versions
    from dalivssl.results import ResultsFile

    if path.exists():
        path.unlink()  # one file per run: a resumed run rewrites it whole
    recs = data.test.records
    with ResultsFile(path, "w") as rf:
        rf.set_meta(kind="finetune", config=yaml.safe_dump(cfg.to_dict()), versions=versions(),
                    train_manifest=data.train_path, test_manifest=data.test_path)
        rf.write("finetune", "clip_acc", r.clip_acc)
        rf.write("finetune", "video_acc", r.video_acc, clips_per_video=cfg.eval_clips)
        rf.write("finetune", "confusion", r.confusion, rows="true", cols="predicted")
        rf.write("finetune", "classes", list(data.classes))
        rf.write("predictions", "video_index", r.indices)
        rf.write("predictions", "video_target", r.targets)
        rf.write("predictions", "video_pred", r.video_pred)
        rf.write("predictions", "video_logits", r.clip_logits.mean(axis=1))
        rf.write("predictions", "clip_pred", r.clip_logits.argmax(axis=-1))
        rf.write("predictions", "video_path", [recs[i].path for i in r.indices])
        for col in LOG_COLUMNS:
            rf.write("log", col, np.array([h[col] for h in history], np.float64))
