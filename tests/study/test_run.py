"""Studies end to end on a 24-video dataset: every cell finished and in the results table, a
stopped or killed study finishes only what is left, and the submitit path (local executor)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dalivssl.study import results as R
from dalivssl.study.runner import LOG_FILE, attempts, run_dir, status
from dalivssl.study.spec import expand, load_study
from tests.conftest import run_cli
from tests.study.conftest import study_dict, write_study

pytestmark = pytest.mark.slow


def dalivssl(*args, check=True, process=False):
    """A study in this process (tests/conftest.py: run_cli); its commands run as the study runs
    them, each in its own process. ``process``: the study runner itself in a process of its own
    (submitit's local executor starts and watches job processes: a process boundary under test)."""
    res = (subprocess.run([sys.executable, "-m", "dalivssl", *map(str, args)],
                          capture_output=True, text=True) if process else run_cli(*args))
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def cli(*args) -> str:
    """A quick subcommand in this process (no second torch import); its output."""
    from click.testing import CliRunner

    from dalivssl.cli import cli as group

    res = CliRunner().invoke(group, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def starts(d) -> int:
    """How many times the study started the command in run dir ``d``."""
    p = Path(d) / LOG_FILE
    return sum(line.startswith("$ ") for line in p.read_text().splitlines()) if p.is_file() else 0


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


def test_killed_study_resumes_the_killed_run(tmp_path, tiny_data):
    raw = study_dict(tiny_data, steps={"finetune": {"max_steps": 2, "batch_size": 4}})
    raw["axes"].update(task=["rotnet"], subset=[8])
    raw["pretrain"].update(max_steps=40, set={"ckpt_every": 1, "log_every": 1})
    path = write_study(tmp_path / "study.yaml", raw)
    out = tmp_path / "out"
    plan = expand(load_study(path))
    pre = next(r for r in plan.runs.values() if r.step == "pretrain")
    proc = subprocess.Popen([sys.executable, "-m", "dalivssl", "study", "run", path, "--out",
                             str(out)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run_dir(out, pre) / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and the command it runs
    proc.wait()
    killed_mid_run = status(out, pre) == "partial"
    dalivssl("study", "run", path, "--out", out)
    assert all(status(out, r) == "done" for r in plan.runs.values())
    if killed_mid_run:  # the rerun continued the pretraining from its checkpoint
        assert starts(run_dir(out, pre)) == 2
        assert [a["resumed"] for a in attempts(run_dir(out, pre))] == [True]
        summary = json.loads((run_dir(out, pre) / "summary.json").read_text())
        assert summary["steps"] == 40


def test_submitit_local_executor(tmp_path, tiny_data):
    pytest.importorskip("submitit")
    raw = study_dict(tiny_data, steps={"finetune": {"max_steps": 2, "batch_size": 4}})
    raw["axes"].update(task=["rotnet"], subset=[8])
    path = write_study(tmp_path / "study.yaml", raw)
    out = tmp_path / "out"
    res = dalivssl("study", "run", path, "--out", out, "--executor", "submitit-local",
                   "--time-min", "10", process=True)
    plan = expand(load_study(path))
    assert "submitted 2 job(s) to local" in res.stdout
    assert all(status(out, r) == "done" for r in plan.runs.values())
    assert any((out / "submitit").rglob("*_result.pkl"))


def test_submitit_local_job_waits_for_its_folder(tmp_path, tiny_data, monkeypatch):
    """submitit's local executor makes a job's folder only after starting its controller: a
    controller quicker than that (a busy machine) could not open its logs, and the job ended
    with no output. Here the folder comes 1.5 s late, every time; the jobs still run."""
    submitit = pytest.importorskip("submitit")
    move = submitit.core.utils.JobPaths.move_temporary_file

    def late(self, *a, **kw):
        time.sleep(1.5)
        return move(self, *a, **kw)

    monkeypatch.setattr(submitit.core.utils.JobPaths, "move_temporary_file", late)
    raw = study_dict(tiny_data, steps={"finetune": {"max_steps": 2, "batch_size": 4}})
    raw["axes"].update(task=["rotnet"], subset=[8])
    path = write_study(tmp_path / "study.yaml", raw)
    out = tmp_path / "out"
    dalivssl("study", "run", path, "--out", out, "--executor", "submitit-local", "--time-min",
             "10")
    assert all(status(out, r) == "done" for r in expand(load_study(path)).runs.values())
