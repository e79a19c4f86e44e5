"""Downstream action recognition — full finetuning or a linear probe — trained by the one loop.

Protocol of the benchmark (Kumar et al., arXiv 2306.06010, §4; VCOP ``ft_classify.py``): train on
one uniformly random clip per video (random crop + flip; no flip where a flip changes the class,
``Manifest.flip_safe``), test on N evenly spaced centre-cropped clips per video and report
clip-level top-1 (every clip on its own) and video-level top-1 (the N clip logits averaged).

Linear probe: the backbone is frozen *and kept in eval mode* (BN running statistics never move);
only ``Linear(feature_dim, C)`` is trained. As in CVRL's linear evaluation (Qian et al. 2021) the
features may be L2-normalised first (``l2_norm``).

Optimiser: SGD momentum 0.9 (or AdamW), cosine decay per step from ``lr`` to 0 (the engine's
schedule); the head uses ``lr × head_lr_mult``. :class:`ClassifierTask` satisfies the engine's
contract (``forward(batch) -> {'loss', 'acc'}``); :func:`run_finetune` builds the run, calls
:func:`dalivssl.engine.fit.fit`, evaluates and writes checkpoint, record and results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dalivssl.config import FinetuneConfig, save_yaml
from dalivssl.errors import DalivsslError

RESULTS_NAME = "finetune.h5"
LOG_NAME = "finetune_log.csv"
# settings a resumed finetuning must share with the stored run
RESUME_KEYS = ("arch", "data_hash", "clip", "seed", "linear_probe", "l2_norm", "batch_size", "lr",
               "optimizer", "head_lr_mult", "momentum", "weight_decay", "dropout", "flip",
               "parent_hash")


class Classifier(nn.Module):
    """backbone.forward_features (B×D) → [L2-norm] → [dropout] → Linear(D, C): logits B×C.

    The one classifier of the toolkit: finetuning, linear probing, the distillation student, and
    every evaluation of a finetuned checkpoint (:func:`load_classifier`). With ``frozen`` the
    backbone takes no gradient and stays in eval mode even under ``model.train()``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, frozen: bool = False,
                 l2_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.feature_dim), int(num_classes))
        self.frozen = bool(frozen)
        self.l2_norm = bool(l2_norm)
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

    def load_run_state(self, ckpt: dict) -> None:
        self.backbone.load_state_dict(ckpt["backbone"])
        self.head.load_state_dict(ckpt["head"])


class ClassifierTask(nn.Module):
    """The engine contract for supervised training: clips B×K×C×T×H×W are flattened to B·K
    samples, each with its video's label (``batch.targets``); cross-entropy."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, batch) -> dict:
        x = batch.clips.float()
        b, k = x.shape[:2]
        y = batch.targets.long().repeat_interleave(k)
        if bool((y < 0).any()):
            raise DalivsslError("training videos without labels (label -1): cannot finetune")
        logits = self.classifier(x.flatten(0, 1))
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "acc": (logits.detach().argmax(1) == y).float().mean()}

    def load_run_state(self, ckpt: dict) -> None:
        self.classifier.load_run_state(ckpt)


def build_optimizer(model: Classifier, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD momentum (VCOP's finetuning) or AdamW; the probe optimises the head only."""
    from dalivssl.engine.trainer import make_optimizer

    cfg = cfg.resolved().check()
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr * cfg.head_lr_mult}]
    if not model.frozen:
        groups.insert(0, {"params": [p for p in model.backbone.parameters() if p.requires_grad],
                          "lr": cfg.lr})
    return make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)


def checkpoint_fields(model: Classifier, record, classes, cfg: FinetuneConfig,
                      backbone_kwargs: dict | None = None) -> dict:
    """The fields of a finetune checkpoint (contract C7) — also the distillation student's."""
    from dalivssl.config import to_dict

    c = record.clip
    return dict(kind="finetune", arch=record.arch, record=record.to_dict(),
                backbone=model.backbone.state_dict(), head=model.head.state_dict(),
                num_classes=len(classes), classes=list(classes), clip_len=c.clip_len,
                size=c.size, normalize=c.normalize, feature_l2_norm=model.l2_norm,
                backbone_kwargs=dict(backbone_kwargs or {}),
                config=to_dict(cfg))


def load_classifier(path, device="cpu"):
    """-> (Classifier in eval mode, ckpt) from a finetune checkpoint."""
    from dalivssl.engine.checkpoint import build_backbone_from, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt["kind"] != "finetune":
        raise DalivsslError(f"{path}: a {ckpt['kind']!r} checkpoint has no classifier; "
                            "finetune it first (dalivssl finetune)")
    model = Classifier(build_backbone_from(ckpt, "cpu"), int(ckpt["num_classes"]),
                       l2_norm=ckpt.get("feature_l2_norm", False))
    try:
        model.head.load_state_dict(ckpt["head"])
    except RuntimeError as exc:
        raise DalivsslError(f"{path}: classifier head does not fit "
                            f"({str(exc).splitlines()[0][:120]})") from None
    return model.to(device).eval(), ckpt


# ---------------------------------------------------------------------------------- data
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


def train_loader(manifest, cfg: FinetuneConfig, where: str = "", shard=(0, 1)):
    """One random clip per video with random crop + flip (eval sampler, ``random=True``; under
    ``protocol='paper'`` the centre crop, no flip: supp. C.3 "Resize and Center Crop"); under
    DDP each rank takes its ``shard`` (rank, world) of every epoch's order."""
    from dalivssl.analysis.features import make_loader

    drop_last = len(manifest) >= 2 * cfg.batch_size
    return make_loader("eval", manifest, where, batch_size=cfg.batch_size, device=cfg.device,
                       clip_len=cfg.clip_len, size=cfg.size, seed=cfg.seed, augment=True,
                       drop_last=drop_last, num_threads=cfg.threads, random=True,
                       num_clips=1, normalize=cfg.normalize, flip=cfg.flip, shard=shard,
                       protocol=cfg.protocol)


class BatchList:
    """A fixed list of batches as a resumable loader (tests, precomputed batches): the same
    ``epoch`` / ``state_dict`` interface as ``PretextLoader``."""

    def __init__(self, batches):
        self.batches, self.epoch, self.position = list(batches), 0, 0
        self.manifest = None
        self.skipped: dict = {}

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in range(self.position, len(self.batches)):
            self.position = b + 1
            yield self.batches[b]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def default_name(cfg: FinetuneConfig, parent=None) -> str:
    """``ft_<parent run's name>`` / ``probe_<…>``, or ``ft_scratch_<arch>`` from random init."""
    kind = "probe" if cfg.linear_probe else "ft"
    return f"{kind}_{parent.name}" if parent is not None else f"{kind}_scratch_{cfg.arch}"


def finetune_record(cfg: FinetuneConfig, data: FinetuneData, status: str = "running"):
    from dalivssl import record as rec

    return rec.new_record(
        "probe" if cfg.linear_probe else "finetune", cfg.name, data_path=data.train_path,
        manifest=data.train, device=cfg.device, arch=cfg.arch,
        clip=rec.ClipSettings(cfg.clip_len, cfg.size, cfg.normalize), seed=cfg.seed,
        parents=[cfg.pretrained],
        settings={**cfg.to_dict(), "test_data": data.test_path,
                  "test_data_hash": rec.manifest_hash(data.test)}, status=status)


# ---------------------------------------------------------------------------------- the run
def run_finetune(cfg: FinetuneConfig, data: FinetuneData, backbone: nn.Module, out_dir,
                 resume: bool = False, overwrite: bool = False, train_batches=None,
                 test_batches=None, backbone_kwargs: dict | None = None) -> dict:
    """Train (engine.fit), evaluate, write ``checkpoint.pt`` (finetune kind), ``record.json``,
    ``config.yaml``, ``finetune.h5``, ``finetune_log.csv`` and ``finetune.png``. Under torchrun
    the training set is sharded over the ranks and the model wrapped in DDP (rank 0 writes).
    ``train_batches`` / ``test_batches`` replace the DALI loaders (tests).
    Returns {'clip_acc', 'video_acc', 'epochs', 'step', 'checkpoint', 'results', 'history'}."""
    from dalivssl import record as rec
    from dalivssl.engine import checkpoint as ck
    from dalivssl.engine import distributed

    cfg = cfg.resolved().check()
    if cfg.device in ("auto", "cpu", "gpu"):  # a dalivssl device name: resolve to torch's
        from dalivssl.devices import announce

        cfg = replace(cfg, device=announce(cfg.device).torch)
    if cfg.flip is None:  # stored resolved: the run's config says what the loader did
        cfg = replace(cfg, flip=data.train.flip_safe)
    if cfg.name is None:
        parent = None
        if cfg.pretrained:
            from dalivssl.engine.checkpoint import load_checkpoint

            parent = rec.record_of(load_checkpoint(cfg.pretrained), cfg.pretrained)
        cfg = replace(cfg, name=default_name(cfg, parent))
    out_dir = Path(out_dir)
    dist = distributed.setup("gpu" if str(cfg.device).startswith("cuda") else "cpu")
    lock = rec.open_run_dir(out_dir, ck.CKPT_NAME, resume, overwrite) if dist.is_main else None
    try:
        return _finetune(cfg, data, backbone, out_dir, resume, train_batches, test_batches,
                         backbone_kwargs, dist)
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def _finetune(cfg, data, backbone, out_dir, resume, train_batches, test_batches,
              backbone_kwargs, dist) -> dict:
    from dalivssl import record as rec
    from dalivssl.engine import checkpoint as ck
    from dalivssl.engine.fit import FitConfig, fit, make_scheduler, restore, seed_all

    torch.set_num_threads(max(1, cfg.threads))
    device = torch.device(dist.device if dist.enabled else cfg.device)
    record = finetune_record(cfg, data)
    ckpt_path = out_dir / ck.CKPT_NAME
    old = ck.load_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if old is not None:
        if old.get("kind") != "finetune":
            raise DalivsslError(f"{ckpt_path}: a {old.get('kind')!r} checkpoint cannot be "
                                "resumed by finetune")
        rec.check_resumable(rec.record_of(old), record, RESUME_KEYS, ckpt_path)
    seed_all(cfg.seed)  # the same initial head on every rank
    model = Classifier(backbone, len(data.classes), frozen=cfg.linear_probe,
                       l2_norm=cfg.l2_norm, dropout=cfg.dropout).to(device)
    task = ClassifierTask(model)
    optimizer = build_optimizer(model, cfg)
    if train_batches is None:
        loader = train_loader(data.train, cfg, where=data.train_path,
                              shard=(dist.rank, dist.world))
    else:  # anything with the loader's state interface, or a plain list of batches
        loader = (train_batches if hasattr(train_batches, "state_dict")
                  else BatchList(train_batches))
    if len(loader) == 0:
        raise DalivsslError(f"{data.train_path}: no training batches (videos too short or "
                            f"batch size {cfg.batch_size} too large)")
    total = int(cfg.max_steps) if cfg.max_steps else int(cfg.epochs) * len(loader)
    scheduler = make_scheduler(optimizer, "cosine", total)
    step = restore(old, task, optimizer, scheduler, loader, dist.rank) if old is not None else 0
    if dist.is_main:
        rec.write_run_record(out_dir, record)
        save_yaml(cfg, out_dir / "config.yaml")  # replay: dalivssl finetune --config …
    net = task
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(task, device_ids=[dist.gpu_index] if device.type == "cuda" else None)

    def fields(final: bool) -> dict:
        return checkpoint_fields(model, record.marked(final), data.classes, cfg, backbone_kwargs)

    kind = "linear probe" if cfg.linear_probe else "finetune"
    fcfg = FitConfig(total_steps=total, label=f"{kind} {cfg.name}", log_name=LOG_NAME,
                     ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, progress=cfg.progress,
                     tensorboard=True, items_per_step=cfg.batch_size * dist.world)
    res = fit(task, loader, optimizer, scheduler, fcfg, out_dir, fields, net=net, dist=dist,
              device=device, start_step=step)
    if test_batches is None:
        from dalivssl.analysis.features import eval_loader

        test_batches = eval_loader(data.test, cfg.eval_clips, cfg.batch_size, cfg.clip_len,
                                   cfg.size, cfg.device, cfg.seed, cfg.normalize,
                                   num_threads=cfg.threads, where=data.test_path)
    from dalivssl.analysis.finetune import evaluate, plot_finetune, write_results

    result = evaluate(model, test_batches, len(data.classes), device)
    skipped = dict(getattr(test_batches, "skipped", {}) or {})
    epochs = math.ceil(res.step / len(loader))
    results_path = out_dir / RESULTS_NAME
    # the logged rows (those of a resumed run's earlier part were read back from its CSV: str)
    history = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in res.history]
    if dist.is_main:
        record = record.marked(True)  # the scores go to finetune.h5, not into the checkpoint
        write_results(results_path, record, cfg, data, history, result, skipped)
        plot_finetune(out_dir / "finetune.png", record, history, result, data.classes)
        rec.write_run_record(out_dir, record)
    return {"clip_acc": result.clip_acc, "video_acc": result.video_acc, "epochs": epochs,
            "step": res.step, "checkpoint": ckpt_path, "results": results_path,
            "history": history, "skipped": skipped, "name": cfg.name}
