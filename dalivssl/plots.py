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


def plot_topk(path: Path, ks, accuracy, title: str) -> Path:
    """Top-k retrieval accuracy against k (log axis), one point per k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ks, accuracy, marker="o")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("k")
    ax.set_ylabel("top-k retrieval accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_rs(summaries, path, title: str | None = None) -> Path:
    """R_s against severity: one panel per noise, one line per model (``summaries``: the dicts of
    ``engine.robustness.summarize``); ``title``: the data and settings the cells came from."""
    plt = _pyplot()
    noises = summaries[0]["noises"]
    fig, axes = plt.subplots(1, len(noises), figsize=(3.2 * len(noises), 3.0), sharey=True,
                             squeeze=False)
    for ax, (i, n) in zip(axes[0], enumerate(noises)):
        for s in summaries:
            ax.plot(s["severities"], s["rs"][i], marker="o", label=s["model"])
        ax.set_title(n)
        ax.set_xlabel("severity")
        ax.set_xticks(summaries[0]["severities"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("R_s = (A_c − A_p) / A_c")
    axes[0][-1].legend(fontsize=7)
    if title:
        clean = ", ".join(f"{s['model']} A_c={s['clean_acc']:.3f}" for s in summaries)
        fig.suptitle(f"{title}\n{clean}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_cka_map(result, path, name_a: str = "A", name_b: str = "B",
                 title: str | None = None):
    """Heatmap PNG of an ``engine.cka.CKAMap``: rows (y) = layers of A, columns (x) = layers of
    B; imshow(origin='lower', cmap='magma', vmin 0, vmax 1) as ckatorch / torch-cka plot theirs."""
    plt = _pyplot()
    import matplotlib

    la, lb = len(result.layers_a), len(result.layers_b)
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * lb, 1.6 + 0.4 * la))
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.6")  # NaN (constant layer): grey
    im = ax.imshow(result.map, origin="lower", cmap=cmap, vmin=0.0, vmax=1.0,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(range(lb), result.layers_b, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(la), result.layers_a, fontsize=7)
    ax.set_xlabel(f"{name_b} layers")
    ax.set_ylabel(f"{name_a} layers")
    ax.set_title(title or f"minibatch linear CKA (n={result.n_examples})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_distill(path: Path, history: list[dict], teachers, accuracy: float, n_eval: int,
                 teacher_acc: dict, name: str, title: str) -> Path:
    """``distill.png``: the training loss with its CE and per-teacher KD parts per logged step
    (left), and the student's video top-1 beside each live teacher's (right): Hinton et al. 2015;
    multi-teacher as in Kumar et al. 2023 (arXiv 2306.06010, sec. KD)."""
    plt = _pyplot()
    step = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(step, [h["loss"] for h in history], label="loss")
    a.plot(step, [h["ce"] for h in history], label="CE")
    for i, t in enumerate(teachers):
        a.plot(step, [h[f"kd_{i}"] for h in history], label=f"KD {Path(t).stem}", alpha=0.7)
    a.set_xlabel("step")
    a.legend(fontsize=7)
    a.set_title("training loss")
    names = [name] + list(teacher_acc)
    b.bar(range(len(names)), [accuracy] + list(teacher_acc.values()),
          color=["tab:green"] + ["tab:gray"] * len(teacher_acc))
    b.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    b.set_ylim(0, 1)
    b.set_ylabel(f"video top-1 ({n_eval} videos)")
    b.set_title("student vs each teacher")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
