"""A study's results: one tidy table of every finished run, and the paper's views.

The table has one row per (run, metric[, noise, severity]): the run's settings columns
(spec.COLUMNS), ``metric`` and ``value``. Metrics, read from the files each command writes
(:func:`read_metrics`, the one place that knows them):

=========== ================================================================================
pretrain    final_loss, pretext_<metric> (summary.json)
finetune    clip_top1, video_top1 (finetune.h5); probe: the same
retrieve    top<k> (retrieval.h5)
robustness  A_c; A_p and R_s per noise/severity, and their means (noise 'mean') (robustness.h5)
cka         cka_diag (mean of the diagonal), cka_last (last layers), cka_mean (cka.h5)
distill     top1 (distill.h5), kd_gain (top1 − the same student trained without teachers)
every run   wall_s (the study's attempt log)
=========== ================================================================================

Views: accuracy vs subset size per task/arch, complexity bars, R_s vs severity per task (PNG),
and markdown/LaTeX tables in the paper's layout (mean ± std over seeds).
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from dalivssl.errors import DalivsslError
from dalivssl.record import read_run_record
from dalivssl.study.runner import PLAN_FILE, RUN_FILE, attempts, read_plan, run_done
from dalivssl.study.spec import COLUMNS, STEP_COMMANDS

FIELDS = ("study", "name", *COLUMNS, "metric", "noise", "severity", "value")
GROUP = tuple(c for c in FIELDS if c not in ("name", "seed", "value"))
# the headline metric of each step: the tables and --compare
HEADLINE = {"finetune": "video_top1", "probe": "video_top1", "retrieve": "top1",
            "robustness": "R_s", "cka": "cka_diag", "distill": "kd_gain"}


# ------------------------------------------------------------------------------ reading
def read_metrics(step: str, d: Path) -> list[dict]:
    """[{metric, value[, noise, severity]}] of the finished run in ``d``, as its command's
    RunSpec reads its own files (``runs.spec(step).metrics``; a probe is a finetune run)."""
    from dalivssl.runs import spec

    command = STEP_COMMANDS.get(step)
    if command is None:
        raise DalivsslError(f"unknown step {step!r}")
    return spec(command).metrics(Path(d))


def collect(out, warn=None) -> list[dict]:
    """The tidy table of every finished, current run of the study dir ``out``'s plan (runs of
    older versions of the study file are left out: ``study status`` lists them). A run whose
    files cannot be read is named through ``warn`` (a callable taking one line) and skipped."""
    rows = []
    for d in plan_dirs(out):
        where = info_path = d / RUN_FILE
        if not info_path.is_file():
            continue  # not started (its dir removed by hand)
        try:
            info = json.loads(info_path.read_text())
            read_run_record(d)  # an unreadable record.json: named (it raises), not "pending"
            if not run_done(d, info["step"]):
                continue
            where = d
            metrics = read_metrics(info["step"], d)
        except (OSError, ValueError, KeyError, TypeError, DalivsslError) as exc:
            if warn is not None:  # a DalivsslError names its file already
                warn(f"{exc}; skipped" if isinstance(exc, DalivsslError) else
                     f"{getattr(exc, 'filename', None) or where}: unreadable ({_reason(exc)}); "
                     "skipped")
            continue
        base = {"study": info.get("study"), "name": info["name"], **info["columns"]}
        wall = sum(a["end"] - a["start"] for a in attempts(d) if a.get("rc") == 0)
        for m in metrics + ([{"metric": "wall_s", "value": wall}] if wall else []):
            rows.append({k: None for k in FIELDS} | base | m)
    return _with_kd_gain(rows)


def _reason(exc) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plan_dirs(out) -> list[Path]:
    """The run dirs of ``out``'s current plan (OUT/study_plan.json; a dir written before plans
    were recorded: every OUT/<step>/<run>/study.json). One-line error for a non-study dir."""
    out = Path(out)
    if not out.is_dir():
        raise DalivsslError(f"{out}: no such study directory")
    plan = read_plan(out)
    if plan is not None:
        return [out / step / name for name, step in plan["runs"].items()]
    dirs = sorted(p.parent for p in out.glob(f"*/*/{RUN_FILE}"))
    if not dirs:
        raise DalivsslError(f"{out}: not a study directory (no {PLAN_FILE}); give the --out of "
                            "`dalivssl study run`")
    return dirs


def progress(out) -> dict:
    """How far ``out``'s plan is: {total, done, failed (last attempt failed), pending}."""
    dirs = plan_dirs(out)
    done = failed = 0
    for d in dirs:
        try:
            if run_done(d):
                done += 1
                continue
        except DalivsslError:
            pass
        tries = attempts(d)
        failed += bool(tries) and tries[-1].get("rc") != 0
    return {"total": len(dirs), "done": done, "failed": failed,
            "pending": len(dirs) - done - failed}


def _with_kd_gain(rows: list[dict]) -> list[dict]:
    """kd_gain: a distilled student's top1 minus the baseline student (no teachers) of the same
    arch, data and seed."""
    base = {(r["arch"], r["target"], r["seed"]): r["value"] for r in rows
            if r["step"] == "distill" and r["ref"] == "none" and r["metric"] == "top1"}
    gains = [{**r, "metric": "kd_gain", "value": r["value"] - base[(r["arch"], r["target"],
                                                                      r["seed"])]}
             for r in rows if r["step"] == "distill" and r["ref"] != "none"
             and r["metric"] == "top1" and (r["arch"], r["target"], r["seed"]) in base]
    return rows + gains


# ------------------------------------------------------------------------------ writing
def write_table(rows: list[dict], out_dir) -> dict:
    """results.csv (+ results.parquet when pyarrow is installed) and summary.csv (mean, std, n
    over seeds). Returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(out_dir / "results.csv", rows, FIELDS)}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    else:
        types = {"subset": pa.int64(), "seed": pa.int64(), "stage": pa.int64(),
                 "severity": pa.int64(),
                 "value": pa.float64()}
        pq.write_table(pa.table({k: pa.array([r[k] if k in types else _text(r[k])
                                              for r in rows], type=types.get(k, pa.string()))
                                 for k in FIELDS}), out_dir / "results.parquet")
        paths["parquet"] = out_dir / "results.parquet"
    summary = summarize(rows)
    paths["summary"] = write_csv(out_dir / "summary.csv", summary,
                                  (*GROUP, "mean", "std", "n"))
    return paths


def _text(v):
    return None if v is None else str(v)


def write_csv(path: Path, rows, fields) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in fields} for r in rows)
    return path


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, std (sample, over seeds) and n per group of all settings but the seed."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in GROUP)].append(r["value"])
    out = []
    for key, vals in groups.items():
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) \
            if len(vals) > 1 else None
        out.append(dict(zip(GROUP, key)) | {"mean": mean, "std": std, "n": len(vals)})
    return out


# ------------------------------------------------------------------------------- tables
def _fmt(mean, std) -> str:
    mean = 0.0 if abs(mean) < 5e-4 else mean  # no "-0.000"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _key(v):
    return (v is None, str(type(v)), v if v is not None else 0)


def headline_tables(summary: list[dict]) -> list[dict]:
    """Per step, its headline metric as the paper lays it out: rows arch/task (and any other
    setting that varies), columns subset sizes (or targets). [{title, header, rows}]."""
    tables = []
    for step, metric in HEADLINE.items():
        sel = [s for s in summary if s["step"] == step and s["metric"] == metric
               and s["severity"] is None and s["noise"] in (None, "mean")]
        if not sel:
            continue
        col = "subset" if len({s["subset"] for s in sel}) > 1 else "target"
        varying = [k for k in ("arch", "task", "data", "complexity", "target", "ref")
                   if k != col and (k in ("arch", "task") or len({s[k] for s in sel}) > 1)]
        cols = sorted({s[col] for s in sel}, key=_key)
        cells = defaultdict(dict)
        for s in sel:
            cells[tuple(s[k] for k in varying)][s[col]] = _fmt(s["mean"], s["std"])
        header = [*varying, *(f"{col} {c if c is not None else 'all'}" for c in cols)]
        body = [[*("" if v is None else str(v) for v in key), *(cells[key].get(c, "")
                                                                for c in cols)]
                for key in sorted(cells, key=lambda t: tuple(_key(v) for v in t))]
        tables.append({"title": f"{step}: {metric}", "header": header, "rows": body})
    return tables


def markdown(tables: list[dict]) -> str:
    parts = []
    for t in tables:
        parts.append(f"**{t['title']}**\n")
        parts.append("| " + " | ".join(t["header"]) + " |")
        parts.append("|" + "---|" * len(t["header"]))
        parts += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        parts.append("")
    return "\n".join(parts)


def latex(tables: list[dict]) -> str:
    def esc(s):
        return str(s).replace("_", r"\_").replace("±", r"$\pm$")

    parts = []
    for t in tables:
        parts += [r"\begin{table}[t]", r"\centering", f"\\caption{{{esc(t['title'])}}}",
                  r"\begin{tabular}{" + "l" * len(t["header"]) + "}", r"\toprule",
                  " & ".join(map(esc, t["header"])) + r" \\", r"\midrule"]
        parts += [" & ".join(map(esc, r)) + r" \\" for r in t["rows"]]
        parts += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(parts)


# -------------------------------------------------------------------------------- plots
def plot_views(summary: list[dict], out_dir) -> list[Path]:
    """The paper's figures that this study's axes allow."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for fn in (_plot_subset, _plot_complexity, _plot_severity):
        p = fn(summary, Path(out_dir))
        if p is not None:
            written.append(p)
    return written


def _panels(rows, key):
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in key)].append(r)
    return sorted(groups.items(), key=lambda kv: tuple(_key(v) for v in kv[0]))


def _figure(n):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    return plt, fig, axes[0]


def _plot_subset(summary, out_dir):
    sel = [s for s in summary if s["step"] in ("finetune", "probe")
           and s["metric"] == "video_top1" and s["subset"] is not None]
    if len({s["subset"] for s in sel}) < 2:
        return None
    panels = _panels(sel, ("step", "arch", "target", "complexity"))
    plt, fig, axes = _figure(len(panels))
    for ax, (key, rows) in zip(axes, panels):
        for task, rs in _panels(rows, ("task",)):
            rs = sorted(rs, key=lambda r: int(r["subset"]))
            ax.errorbar([int(r["subset"]) for r in rs], [r["mean"] for r in rs],
                        yerr=[r["std"] or 0 for r in rs], marker="o", capsize=3, label=task[0])
        sizes = sorted({int(r["subset"]) for r in rows})
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
                              for n in sizes])
        ax.set_title(" ".join(str(k) for k in key if k is not None), fontsize=9)
        ax.set_xlabel("pretraining videos")
        ax.set_ylabel("video top-1")
        ax.legend(fontsize=8)
    return _save(plt, fig, out_dir / "acc_vs_subset.png")


def _plot_complexity(summary, out_dir):
    sel = [s for s in summary if s["step"] == "finetune" and s["metric"] == "video_top1"
           and s["complexity"] is not None]
    if not sel:
        return None
    panels = _panels(sel, ("arch", "target", "subset"))
    plt, fig, axes = _figure(len(panels))
    for ax, (key, rows) in zip(axes, panels):
        tasks = sorted({r["task"] for r in rows})
        levels = sorted({r["complexity"] for r in rows})
        width = 0.8 / len(levels)
        for i, lv in enumerate(levels):
            by_task = {r["task"]: r for r in rows if r["complexity"] == lv}
            ax.bar([t + i * width for t in range(len(tasks))],
                   [by_task[t]["mean"] if t in by_task else 0 for t in tasks], width,
                   yerr=[(by_task[t]["std"] or 0) if t in by_task else 0 for t in tasks],
                   label=lv, capsize=2)
        ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
        ax.set_title(" ".join(str(k) for k in key if k is not None), fontsize=9)
        ax.set_ylabel("video top-1")
        ax.legend(fontsize=8)
    return _save(plt, fig, out_dir / "complexity.png")


def _plot_severity(summary, out_dir):
    sel = [s for s in summary if s["step"] == "robustness" and s["metric"] == "R_s"
           and s["noise"] == "mean" and s["severity"] is not None]
    if not sel:
        return None
    panels = _panels(sel, ("arch", "target"))
    plt, fig, axes = _figure(len(panels))
    for ax, (key, rows) in zip(axes, panels):
        for (task, subset, level), rs in _panels(rows, ("task", "subset", "complexity")):
            rs = sorted(rs, key=lambda r: int(r["severity"]))
            ax.plot([int(r["severity"]) for r in rs], [r["mean"] for r in rs], marker="o",
                    label=" ".join([task] + ([f"n{subset}"] if subset else []) + ([level]
                                                                           if level else [])))
        ax.set_xticks(sorted({int(r["severity"]) for r in rows}))
        ax.set_title(" ".join(str(k) for k in key if k is not None), fontsize=9)
        ax.set_xlabel("severity")
        ax.set_ylabel("R_s (mean over noises)")
        ax.legend(fontsize=7)
    return _save(plt, fig, out_dir / "rs_vs_severity.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ compare
def compare(a: list[dict], b: list[dict]) -> list[dict]:
    """Two studies' summaries side by side, keyed by settings: means of A and B, Δ = B − A."""
    def index(summary):
        return {tuple(s[k] for k in GROUP if k != "study"): s for s in summary}

    ia, ib = index(a), index(b)
    keys = [k for k in GROUP if k != "study"]
    out = []
    for key in sorted(set(ia) | set(ib), key=lambda t: tuple(_key(v) for v in t)):
        sa, sb = ia.get(key), ib.get(key)
        out.append(dict(zip(keys, key)) | {
            "a": sa and sa["mean"], "a_std": sa and sa["std"], "b": sb and sb["mean"],
            "b_std": sb and sb["std"], "delta": sb["mean"] - sa["mean"] if sa and sb else None})
    return out


def compare_markdown(rows: list[dict], name_a: str, name_b: str) -> str:
    sel = [r for r in rows if HEADLINE.get(r["step"]) == r["metric"] and r["severity"] is None
           and r["noise"] in (None, "mean")]
    keys = ["step", "task", "arch", "data", "subset", "complexity", "target", "ref"]
    keys = [k for k in keys if len({r[k] for r in sel}) > 1 or k in ("step", "task", "arch")]
    head = [*keys, "metric", name_a, name_b, "Δ"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sel:
        vals = [_fmt(r["a"], r["a_std"]) if r["a"] is not None else "",
                _fmt(r["b"], r["b_std"]) if r["b"] is not None else "",
                f"{r['delta']:+.3f}" if r["delta"] is not None else ""]
        lines.append("| " + " | ".join(["" if r[k] is None else str(r[k]) for k in keys]
                                       + [r["metric"], *vals]) + " |")
    return "\n".join(lines)


def report(out, views_dir=None, warn=None) -> dict:
    """Collect ``out``, write the table, summary, views and tables into ``views_dir``
    (default OUT/results). Returns {rows, summary, tables, paths, progress}."""
    rows = collect(out, warn)
    views_dir = Path(views_dir or Path(out) / "results")
    paths = write_table(rows, views_dir)
    summary = summarize(rows)
    tables = headline_tables(summary)
    (views_dir / "tables.md").write_text(markdown(tables))
    (views_dir / "tables.tex").write_text(latex(tables))
    paths["figures"] = plot_views(summary, views_dir)
    return {"rows": rows, "summary": summary, "tables": tables, "paths": paths,
            "progress": progress(out)}
