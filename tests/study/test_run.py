"""Studies end to end on a 24-video dataset: every cell finished and in the results table, and a
stopped study finishes only what is left (killed studies and submitit: test_run_resume.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from dalivssl.study import results as R
from dalivssl.study.runner import attempts, run_dir, status
from dalivssl.study.spec import expand, load_study
from tests.study.conftest import dalivssl, starts, study_dict, write_study

pytestmark = pytest.mark.slow


def cli(*args) -> str:
    """A quick subcommand in this process (no second torch import); its output."""
    from click.testing import CliRunner

    from dalivssl.cli import cli as group

    res = CliRunner().invoke(group, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data):
    """The tiny study run in two sessions: stopped after 5 runs (--max-runs), then rerun."""
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp / "study.yaml", study_dict(tiny_data))
    out = tmp / "out"
    first = dalivssl("study", "run", path, "--out", out, "--jobs", "2", "--max-runs", "5")
    plan = expand(load_study(path))
    done = [r for r in plan.runs.values() if status(out, r) == "done"]
    assert len(done) == 5 and "left (rerun to continue)" in first.stdout
    second = dalivssl("study", "run", path, "--out", out, "--jobs", "2")
    return {"path": path, "out": out, "plan": plan, "first": done, "second": second}


def test_rerun_finishes_only_the_remaining_runs(finished):
    plan, out = finished["plan"], finished["out"]
    assert all(status(out, r) == "done" for r in plan.runs.values())
    assert f"{len(plan.runs)}/{len(plan.runs)} runs done ({len(plan.runs) - 5} now, 5 before)" \
        in finished["second"].stdout
    for r in plan.runs.values():  # every command started exactly once over both sessions
        assert starts(run_dir(out, r)) == 1, r.name
        assert [a["rc"] for a in attempts(run_dir(out, r))] == [0]
    assert "(0 now," in cli("study", "run", finished["path"], "--out", out)
    plan_out = cli("study", "plan", finished["path"], "--out", out)
    assert f"{len(plan.runs)} done in" in plan_out


def test_results_table_has_every_cell(finished):
    out, plan = finished["out"], finished["plan"]
    printed = cli("study", "results", out)
    rows = R.collect(out)
    for cell in plan.cells:
        mine = [r for r in rows if r["task"] == cell.task and r["subset"] == cell.subset]
        got = {(r["step"], r["metric"]) for r in mine}
        assert {("pretrain", "final_loss"), ("finetune", "video_top1"), ("finetune", "clip_top1"),
                ("retrieve", "top1"), ("retrieve", "top5"), ("robustness", "A_c"),
                ("robustness", "R_s")} <= got, cell.label
        sev = {r["severity"] for r in mine if r["metric"] == "R_s" and r["noise"] == "gaussian"}
        assert sev == {1, 3}
    cka = [r for r in rows if r["step"] == "cka" and r["metric"] == "cka_diag"]
    assert sorted(r["subset"] for r in cka) == [8, 16]
    assert all(0 <= r["value"] <= 1.0001 for r in cka)
    views = Path(out) / "results"
    for name in ("results.csv", "results.parquet", "summary.csv", "tables.md", "tables.tex",
                 "acc_vs_subset.png", "rs_vs_severity.png"):
        assert (views / name).is_file(), name
    import pyarrow.parquet as pq

    assert pq.read_table(views / "results.parquet").num_rows == len(rows)
    assert "finetune: video_top1" in printed and "subset 8" in printed
    cmp = cli("study", "results", out, "--compare", out)
    assert "+0.000" in cmp and (views / "compare.csv").is_file()
