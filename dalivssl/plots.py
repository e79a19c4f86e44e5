"""Pictures of finished results (PNG, matplotlib's Agg backend): a leaf module beside
:mod:`dalivssl.results`, numpy and matplotlib only (imported when a plot is drawn). Each function
takes plain numbers and labels, so any layer may draw with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_finetune(path: Path, record, history: list[dict], r, classes) -> Path:
    """Learning curve (loss, train accuracy) and the test confusion matrix (``r``: an
    ``engine.scoring.EvalResult``), titled with the run's name, data and input settings."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    steps = [h["step"] for h in history]
    a.plot(steps, [h["loss"] for h in history], label="train loss")
    if history and "acc" in history[0]:
        a2 = a.twinx()
        a2.plot(steps, [h["acc"] for h in history], color="tab:orange", label="train acc")
        a2.set_ylabel("train accuracy")
        a2.set_ylim(0, 1)
    a.set_xlabel("step")
    a.set_ylabel("cross-entropy")
    a.set_title("learning curve")
    cm = r.confusion / np.maximum(r.confusion.sum(1, keepdims=True), 1)
    im = b.imshow(cm, vmin=0, vmax=1, cmap="viridis")
    n = len(classes)
    if n <= 30:
        b.set_xticks(range(n), classes, rotation=90, fontsize=7)
        b.set_yticks(range(n), classes, fontsize=7)
    b.set_xlabel("predicted")
    b.set_ylabel("true")
    b.set_title(f"test: clip top-1 {r.clip_acc:.3f}, video top-1 {r.video_acc:.3f} "
                f"({len(r.targets)} videos)")
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.suptitle(f"{record.kind} {record.describe()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
