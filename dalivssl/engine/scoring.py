"""Scoring a classifier on a test set: clip- and video-level top-1, confusion, the results file
(its picture: :func:`dalivssl.plots.plot_finetune`). Training (finetune / linear probe) lives in
:mod:`dalivssl.engine.finetune`.

Protocol (Kumar et al., arXiv 2306.06010, §4; VCOP ``ft_classify.py``): N evenly spaced centre
clips per test video; clip-level top-1 scores every clip on its own, video-level top-1 the mean
of the N clip logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from torch import nn

from dalivssl.errors import DalivsslError

LOG_COLUMNS = ("step", "epoch", "loss", "acc", "lr")


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
    per_rank: tuple[int, ...] = ()  # videos each torchrun rank evaluated (() in one process)


def evaluate(model: nn.Module, batches: Iterable, num_classes: int, device="cpu",
             on_batch=None, gather: bool = False) -> EvalResult:
    """Clip- and video-level top-1 of ``model`` over eval batches (K clips per video).
    ``gather``: under torchrun each rank passes its shard and scores all the ranks' videos
    (``engine.features.gather_outputs``)."""
    from dalivssl.engine.features import model_logits

    out = model_logits(model, batches, device, on_batch, gather)
    if (out.targets < 0).any():
        raise DalivsslError("test videos without labels (label -1): cannot score accuracy")
    pred = video_predictions(out.clips)
    return EvalResult(clip_accuracy(out.clips, out.targets), video_accuracy(out.clips, out.targets),
                      out.clips, pred, out.targets, out.indices,
                      confusion_matrix(pred, out.targets, num_classes), out.per_rank)


def write_results(path: Path, record, cfg, data, history: list[dict], r: EvalResult,
                  skipped: dict | None = None) -> None:
    """HDF5 (C8): the run record, /finetune scalars + confusion + per-video predictions, /log
    per logged step. ``skipped``: {reason: videos} the test loader could not use."""
    from dalivssl.results import ResultsFile

    if path.exists():
        path.unlink()  # one file per run: a resumed run rewrites it whole
    recs = data.test.records
    with ResultsFile(path, "w") as rf:
        rf.set_meta(kind=record.kind, record=record.to_dict(), train_manifest=data.train_path,
                    test_manifest=data.test_path)
        rf.write("finetune", "clip_acc", r.clip_acc)
        rf.write("finetune", "video_acc", r.video_acc, clips_per_video=cfg.eval_clips,
                 videos=len(r.targets), skipped=sum((skipped or {}).values()))
        rf.write("finetune", "confusion", r.confusion, rows="true", cols="predicted")
        rf.write("finetune", "classes", list(data.classes))
        rf.write("predictions", "video_index", r.indices)
        rf.write("predictions", "video_target", r.targets)
        rf.write("predictions", "video_pred", r.video_pred)
        rf.write("predictions", "video_logits", r.clip_logits.mean(axis=1))
        rf.write("predictions", "clip_pred", r.clip_logits.argmax(axis=-1))
        rf.write("predictions", "video_path", [recs[i].path for i in r.indices])
        for col in LOG_COLUMNS:
            rf.write("log", col, np.array([h.get(col, np.nan) for h in history], np.float64))
