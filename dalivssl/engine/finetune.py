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
contract (``forward(batch) -> {'loss', 'acc'}``); ``dalivssl.runs.finetune`` runs it through the
driver: builds the run, calls :func:`dalivssl.engine.fit.fit`, evaluates and writes the outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dalivssl.config import FinetuneConfig
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
    from dalivssl.engine.optim import OptimSpec, make_optimizer

    cfg = cfg.resolved().check()  # the optimiser's name and values are checked here
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr * cfg.head_lr_mult}]
    if not model.frozen:
        groups.insert(0, {"params": [p for p in model.backbone.parameters() if p.requires_grad],
                          "lr": cfg.lr})
    return make_optimizer(groups, OptimSpec(name=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                            weight_decay=cfg.weight_decay))


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


def loader_threads(cfg: FinetuneConfig) -> int:
    """DALI's threads for the finetune/probe loaders (G5): ``cfg.dali_threads``, else 8 on a
    GPU (parallel NVDEC sessions) and 2 on a CPU (:func:`dalivssl.devices.dali_threads`)."""
    from dalivssl.devices import dali_threads

    return dali_threads(cfg.device, cfg.dali_threads)


def train_loader(manifest, cfg: FinetuneConfig, where: str = "", shard=(0, 1)):
    """One random clip per video with random crop + flip (eval sampler, ``random=True``; under
    ``protocol='paper'`` the centre crop, no flip: supp. C.3 "Resize and Center Crop"); under
    DDP each rank takes its ``shard`` (rank, world) of every epoch's order. DALI gets its own
    thread count (:func:`loader_threads`), not torch's ``threads``."""
    from dalivssl.engine.features import make_loader

    drop_last = len(manifest) >= 2 * cfg.batch_size
    return make_loader("eval", manifest, where, batch_size=cfg.batch_size, device=cfg.device,
                       clip_len=cfg.clip_len, size=cfg.size, seed=cfg.seed, augment=True,
                       drop_last=drop_last, num_threads=loader_threads(cfg), random=True,
                       num_clips=1, normalize=cfg.normalize, flip=cfg.flip, shard=shard,
                       protocol=cfg.protocol)


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
