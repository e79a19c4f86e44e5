"""The local executor with a stand-in for the commands: order, GPUs, failures, budget, flags."""
from __future__ import annotations

import json
import threading

import pytest

from dalivssl.record import RunRecord, write_run_record
from dalivssl.study import runner
from dalivssl.study.spec import expand, parse_study
from tests.study.conftest import study_dict


@pytest.fixture
def fake(monkeypatch):
    """Replace the command by a record of its job; a run whose name contains ``fail`` fails."""
    calls, lock = [], threading.Lock()

    def execute(job):
        with lock:
            calls.append(job)
        if "fail" in job["name"]:
            return 2
        write_run_record(job["dir"], RunRecord(kind="pretrain", name=job["name"],
                                               status="complete"))
        return 0

    monkeypatch.setattr(runner, "execute", execute)
    return calls


def plan(tiny_data, device="cpu", **axes):
    raw = study_dict(tiny_data, device=device)
    raw["axes"].update(axes)
    if len(raw["axes"]["task"]) == 1:
        del raw["steps"]["cka"]  # against {task: vcop}
    return expand(parse_study(raw))


def test_parents_first_one_gpu_each_and_torchrun(tmp_path, tiny_data, fake):
    p = plan(tiny_data)
    res = runner.run_local(p, tmp_path, jobs=2, gpus=["3", "5"], gpus_per_run=2,
                           say=lambda s: None)
    assert res.ok and len(res.ran) == len(p.runs) and len(fake) == len(p.runs)
    order = [j["name"] for j in fake]
    for j in fake:
        for parent in p.runs[j["name"]].deps:
            assert order.index(parent) < order.index(j["name"])
        gpus = j["env"]["CUDA_VISIBLE_DEVICES"].split(",")
        if j["step"] == "pretrain":
            assert sorted(gpus) == ["3", "5"] and "--nproc_per_node=2" in j["cmd"]
        else:
            assert len(gpus) == 1 and "torch.distributed.run" not in j["cmd"]
    assert runner.run_local(p, tmp_path, say=lambda s: None).done_before == len(p.runs)


def test_failure_blocks_children_and_budget_stops(tmp_path, tiny_data, fake, monkeypatch):
    p = plan(tiny_data, task=["rotnet"], subset=[8])
    pre = next(n for n, r in p.runs.items() if r.step == "pretrain")
    res = runner.run_local(p, tmp_path, max_runs=1, say=lambda s: None)
    assert res.ran == [pre] and len(res.left) == len(p.runs) - 1
    # a failing finetune: robustness (its child) does not start; retrieve (a sibling) does
    fake.clear()

    def execute(job):
        fake.append(job)
        if job["step"] == "finetune":
            return 2
        write_run_record(job["dir"], RunRecord(kind="x", name=job["name"], status="complete"))
        return 0

    monkeypatch.setattr(runner, "execute", execute)
    res = runner.run_local(p, tmp_path, say=lambda s: None)
    assert sorted(j["step"] for j in fake) == ["finetune", "retrieve"] and not res.ok
    assert [p.runs[f[0]].step for f in res.failed] == ["finetune"]
    assert [p.runs[n].step for n in res.blocked] == ["robustness"]


def test_command_line_flags(tmp_path, tiny_data):
    p = plan(tiny_data, task=["rotnet"], subset=[8])
    pre, ft = [r for r in p.runs.values() if r.step in ("pretrain", "finetune")]
    cmd = runner.command_line(p, tmp_path, ft, threads=3)
    assert cmd[cmd.index("--checkpoint") + 1] == str(
        (runner.run_dir(tmp_path, pre) / "checkpoint.pt").resolve())
    assert cmd[cmd.index("--data") + 1] == str(tiny_data["train"])
    assert cmd[cmd.index("--threads") + 1] == "3" and "--resume" not in cmd
    assert cmd[cmd.index("--out") + 1] == str(runner.run_dir(tmp_path, ft).resolve())
    rob = next(r for r in p.runs.values() if r.step == "robustness")
    assert "--threads" in runner.command_line(p, tmp_path, rob, threads=3)
    d = runner.run_dir(tmp_path, pre)  # a killed run: files but not done -> --resume
    d.mkdir(parents=True)
    (d / "checkpoint.pt").write_bytes(b"")
    assert runner.status(tmp_path, pre) == "partial"
    assert "--resume" in runner.command_line(p, tmp_path, pre)


def test_slurm_jobs_wait_for_their_parents(tmp_path, tiny_data, monkeypatch):
    """One submitit job per run; a child's job gets afterok on its parents' job ids."""
    submitit = pytest.importorskip("submitit")
    submitted = []

    class FakeExecutor:
        def __init__(self, folder, cluster):
            assert cluster == "slurm"
            self.params = {}

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn):
            job = fn.job  # a runner.Job: submitit requeues it through its checkpoint()
            assert callable(fn) and callable(fn.checkpoint)
            submitted.append((job, dict(self.params)))
            return type("Job", (), {"job_id": str(100 + len(submitted))})()

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    p = plan(tiny_data, task=["rotnet"], subset=[8], device="gpu")
    res = runner.run_submitit(p, tmp_path, cluster="slurm", partition="gpu", gpus_per_run=4,
                              wait_jobs=False, say=lambda s: None)
    assert len(submitted) == len(p.runs) == len(res.submitted)
    ids = {job["name"]: str(101 + i) for i, (job, _) in enumerate(submitted)}
    for job, params in submitted:
        deps = p.runs[job["name"]].deps
        assert params["slurm_partition"] == "gpu" and job["wait"]
        assert params["gpus_per_node"] == (4 if job["step"] == "pretrain" else 1)
        assert params["slurm_additional_parameters"] == (
            {"dependency": "afterok:" + ":".join(ids[d] for d in deps)} if deps else {})
        assert "--nproc_per_node=4" in job["cmd"] if job["step"] == "pretrain" else \
            "torch.distributed.run" not in job["cmd"]


def _script_job(d, code, **extra) -> dict:
    """A job whose command is a Python one-liner (argv: ... --out D), run by runner.execute."""
    import sys

    return {"name": "x", "step": "pretrain", "dir": str(d), "cmd": [sys.executable, "-c", code,
            "--out", str(d)], "deps": [], "env": {}, "data": [], "resumable": True, **extra}


ARGV_TO_FILE = "import sys, pathlib; pathlib.Path(sys.argv[-1] if sys.argv[-1] != '--resume' " \
               "else sys.argv[-2], 'argv.txt').write_text(' '.join(sys.argv[1:]))"


def test_execute_judges_the_dir_when_it_starts(tmp_path):
    """Pending: started plain; partial: resumed; stale (a parent remade since): the dir is
    cleaned and the run starts again; done: not started (issue 24: done means the same
    content)."""
    d = tmp_path / "run"
    job = _script_job(d, ARGV_TO_FILE)
    assert runner.execute(job) == 0 and (d / "argv.txt").read_text() == f"--out {d}"
    write_run_record(d, RunRecord(kind="pretrain", name="x", status="running"))
    assert runner.execute(job) == 0 and (d / "argv.txt").read_text() == f"--out {d} --resume"
    parent = tmp_path / "parent.pt"
    parent.write_bytes(b"old weights")
    from dalivssl.record import file_hash

    write_run_record(d, RunRecord(kind="pretrain", name="x", status="complete",
                                  parent=str(parent), parent_hash=file_hash(parent)))
    (d / "argv.txt").unlink()
    (d / "old_output.csv").write_text("old")
    assert runner.execute(job) == 0 and not (d / "argv.txt").exists()  # done: not started
    parent.write_bytes(b"new weights")  # the parent was remade
    assert runner.execute(job) == 0
    assert (d / "argv.txt").read_text() == f"--out {d}"
    assert not (d / "old_output.csv").exists() and not (d / "record.json").exists()
    assert (d / runner.LOG_FILE).is_file()  # the study's own files stay


def test_a_killed_runner_takes_its_command_with_it(tmp_path):
    """SIGKILL of `study run` (review t3 #27): its command must not keep running (Linux:
    parent-death signal), so a quick rerun does not find the run dir in use."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signal: Linux only")
    d = tmp_path / "run"
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    job = _script_job(d, code)
    runner_code = ("import json, sys; from dalivssl.study import runner; "
                   f"runner.execute(json.loads({json.dumps(json.dumps(job))}))")
    proc = subprocess.Popen([sys.executable, "-c", runner_code])
    t0 = time.time()
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() - t0 < 60 and proc.poll() is None
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the command outlived its runner")


def test_submitit_requeues_the_same_job():
    """SLURM preemption / time limit: submitit calls Job.checkpoint, which stops the command
    and resubmits the same job (it then resumes the run: test_execute_judges_the_dir...)."""
    job = runner.Job({"name": "x", "dir": "d"})
    again = job.checkpoint()
    assert isinstance(again.function, runner.Job) and again.function.job == job.job
