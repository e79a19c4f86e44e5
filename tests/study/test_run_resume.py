"""A study killed mid-run resumes the killed run; submitit's local executor runs a study, also
when a job's folder comes late (in their own file, so pytest-xdist can run them beside the
two-session study of test_run.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dalivssl.study.runner import attempts, run_dir, status
from dalivssl.study.spec import expand, load_study
from tests.study.conftest import dalivssl, starts, study_dict, write_study

pytestmark = pytest.mark.slow


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
