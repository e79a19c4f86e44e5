"""benchmarks/gpu_check.sh on CPU: it finishes inside its deadline, every GPU row is 'skipped',
the CPU sides run, rows reach the JSON as they finish, and a step that does not fit is 'not run'."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args, timeout=600):
    out = tmp_path / "gpu_check.json"
    t = time.perf_counter()
    res = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(out),
                          "--work", str(tmp_path / "work"), *args], capture_output=True,
                         text=True, timeout=timeout, cwd=tmp_path,
                         env={**os.environ, "DALIVSSL_CACHE": str(tmp_path / "cache")})
    return res, json.loads(out.read_text()), time.perf_counter() - t


@pytest.mark.slow
def test_gpu_check_fits_its_deadline_on_cpu_with_gpu_rows_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test pins the CPU behaviour")
    deadline = 300
    res, rep, wall = _run(tmp_path, "--deadline-s", str(deadline))
    assert res.returncode == 0, res.stdout + res.stderr
    assert wall < deadline + 15  # the children, the table and the interpreter start
    assert rep["gpu"] is False and rep["cuda"] is False and rep["seconds"] <= deadline
    gpu_rows = [r for r in rep["rows"] if r["device"] == "gpu"]
    assert gpu_rows and all(r["status"] == "skipped: no GPU" for r in gpu_rows)
    steps = [r["step"].split()[0] for r in rep["rows"]]
    assert steps[0] == "preflight" and "pytest-gpu" in steps and "pretrain" in steps
    rows = {(r["step"], r["device"]): r for r in rep["rows"]}
    # the verification really ran on CPU, on the synthetic set and the matrix files
    assert rows[("verify vp9/p0/sd/a16/inorder", "cpu")]["status"] == "ok"
    assert rows[("verify vp9/p0/sd/odd/inorder", "cpu")]["status"] == "ok"  # 200x150
    assert rows[("verify h264/p100/sd/a16/reorder", "cpu")]["status"] == "no (table)"
    assert rows[("matrix vp9-altref@128", "cpu")]["status"] == "ok"
    assert rows[("memory", "cpu")]["status"] == "ok"
    assert rows[("pretrain (fp32)", "cpu")]["data"]["steps"] == 2
    assert all(r["status"] not in ("fail", "error", "timeout") for r in rep["rows"])
    assert {"loader", "sweep", "cka"} <= set(steps)  # throughput: tiny sizes fit on CPU
    assert [r["t_s"] for r in rep["rows"]] == sorted(r["t_s"] for r in rep["rows"])
    assert "preflight" in res.stderr.splitlines()[0]  # rows are printed as they finish
    assert res.stdout.startswith("gpu_check: no CUDA device (")


def test_steps_that_do_not_fit_are_not_run(tmp_path):
    res, rep, wall = _run(tmp_path, "--deadline-s", "20", "--steps", "preflight,memory,pretrain",
                          timeout=120)
    got = [(r["step"], r["status"]) for r in rep["rows"]]
    assert got[0] == ("preflight", "ok")
    # pretrain needs 20 s and cannot have them: never started, said so
    assert got[-1] == ("pretrain", "not run (deadline)")
    assert rep["seconds"] <= 20 and wall < 20 + 15
