"""The picture of a finished distillation, drawn from its ``distill.h5`` (written by
``dalivssl.runs.distill``; the training itself is ``dalivssl.engine.distill``).

``distill.png``: the training loss with its CE and per-teacher KD parts per step (left), and the
student's video top-1 beside each live teacher's on the eval data (right): Hinton et al. 2015;
multi-teacher as in Kumar et al. 2023 (arXiv 2306.06010, sec. KD).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_distill"]


def plot_distill(run_dir) -> Path:
    """Draw ``run_dir/distill.png`` from ``run_dir/distill.h5``; returns the PNG's path."""
    from dalivssl.record import RunRecord
    from dalivssl.results import ResultsFile

    run_dir = Path(run_dir)
    with ResultsFile(run_dir / "distill.h5", "r") as rf:
        record = RunRecord.from_dict(rf.meta()["record"])
        col = {k: np.asarray(rf.read("distill", k), np.float64)
               for k in ("step", "loss", "ce", "kd_teachers")}
        teachers = list(rf.read("distill", "teachers")) if rf.has("distill", "teachers") else []
        acc, n_eval = float(rf.read("eval", "accuracy")), rf.attrs("eval", "accuracy")["videos"]
        teacher_acc = ({} if not rf.has("eval", "teacher_accuracy") else
                       dict(zip(rf.attrs("eval", "teacher_accuracy")["names"],
                                map(float, rf.read("eval", "teacher_accuracy")))))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(col["step"], col["loss"], label="loss")
    a.plot(col["step"], col["ce"], label="CE")
    for i, path in enumerate(teachers):
        a.plot(col["step"], col["kd_teachers"][:, i], label=f"KD {Path(path).stem}", alpha=0.7)
    a.set_xlabel("step")
    a.legend(fontsize=7)
    a.set_title("training loss")
    names = [record.name] + list(teacher_acc)
    b.bar(range(len(names)), [acc] + list(teacher_acc.values()),
          color=["tab:green"] + ["tab:gray"] * len(teacher_acc))
    b.set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    b.set_ylim(0, 1)
    b.set_ylabel(f"video top-1 ({n_eval} videos)")
    b.set_title("student vs each teacher")
    fig.suptitle(f"distill {record.describe()}")
    fig.tight_layout()
    png = run_dir / "distill.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
