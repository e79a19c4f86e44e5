"""Results from made-up rows: summaries over seeds, KD gain, the paper's tables, views, compare."""
from __future__ import annotations

from dalivssl.study import results as R


def row(step, metric, value, task="vcop", subset=1000, seed=0, complexity=None, **kw):
    base = {k: None for k in R.FIELDS}
    return base | {"study": "s", "name": f"{task}{subset}{seed}{step}", "step": step,
                   "task": task, "arch": "r21d", "data": "k400", "subset": subset,
                   "complexity": complexity, "seed": seed, "target": "ucf101", "metric": metric,
                   "value": value} | kw


def rows():
    out = []
    for task in ("vcop", "rotnet"):
        for subset in (1000, 3000):
            for seed, v in ((0, 0.5), (1, 0.7)):
                out.append(row("finetune", "video_top1", v + subset / 1e4, task, subset, seed))
                out.append(row("robustness", "R_s", 0.2, task, subset, seed, noise="mean"))
                for sev in (1, 3):
                    out.append(row("robustness", "R_s", 0.1 * sev, task, subset, seed,
                                   noise="mean", severity=sev))
        for level in ("C1", "C2"):
            out.append(row("finetune", "video_top1", 0.4, task, 1000, 0, complexity=level))
    out.append(row("distill", "top1", 0.6, "vcop+rotnet", None, 0, ref="a,b"))
    out.append(row("distill", "top1", 0.5, "none", None, 0, ref="none"))
    return R._with_kd_gain(out)


def test_summary_tables_and_kd_gain():
    data = rows()
    gain = [r for r in data if r["metric"] == "kd_gain"]
    assert len(gain) == 1 and abs(gain[0]["value"] - 0.1) < 1e-9
    summary = R.summarize(data)
    ft = [s for s in summary if s["step"] == "finetune" and s["task"] == "vcop"
          and s["subset"] == 1000 and s["complexity"] is None]
    assert len(ft) == 1 and ft[0]["n"] == 2 and abs(ft[0]["mean"] - 0.7) < 1e-9
    assert abs(ft[0]["std"] - 0.1414) < 1e-3
    tables = {t["title"]: t for t in R.headline_tables(summary)}
    t = tables["finetune: video_top1"]
    assert t["header"] == ["arch", "task", "complexity", "subset 1000", "subset 3000"]
    assert ["r21d", "vcop", "", "0.700 ± 0.141", "0.900 ± 0.141"] in t["rows"]
    assert "distill: kd_gain" in tables
    md, tex = R.markdown(list(tables.values())), R.latex(list(tables.values()))
    assert "| r21d | vcop |  | 0.700 ± 0.141 | 0.900 ± 0.141 |" in md
    assert r"0.700 $\pm$ 0.141" in tex


def test_views_and_compare(tmp_path):
    summary = R.summarize(rows())
    names = sorted(p.name for p in R.plot_views(summary, tmp_path))
    assert names == ["acc_vs_subset.png", "complexity.png", "rs_vs_severity.png"]
    other = [dict(s, mean=s["mean"] + 0.05) for s in summary]
    cmp = R.compare(summary, other)
    assert all(abs(c["delta"] - 0.05) < 1e-9 for c in cmp)
    text = R.compare_markdown(cmp, "a", "b")
    assert "+0.050" in text and "video_top1" in text and "R_s" in text
