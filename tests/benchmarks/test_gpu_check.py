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


@pytest.mark.slow
def test_no_nvdec_is_not_no_gpu(tmp_path, monkeypatch):
    """G9: with CUDA but no NVDEC the CUDA-only rows still run (memory tries the GPU here and
    reports the error), the decoder rows say 'skipped: no NVDEC (why)'."""
    from benchmarks import gpu_check as gc

    ctx = gc.Ctx(True, tmp_path, cuda=True, nvdec=False, why="libnvcuvid not found")
    assert ctx.skip() == "skipped: no NVDEC (libnvcuvid not found)"
    assert ctx.skip(cuda_only=True) == ""
    assert gc.Ctx(True, tmp_path, cuda=False, nvdec=False).skip(cuda_only=True) == gc.SKIP_GPU
    monkeypatch.setattr(gc, "_gpu_state", lambda: (True, False, "libnvcuvid not found"))
    rep = gc.run_checks(tiny=True, steps=["preflight", "same-plans", "memory"],
                        work=tmp_path / "work", log=lambda m: None, deadline_s=200)
    assert rep["cuda"] is True and rep["gpu"] is False
    assert rep["device"]["reason"] == "CUDA without NVDEC (libnvcuvid not found)"
    rows = [(r["step"], r["device"], r["status"]) for r in rep["rows"]]
    memory = [r for r in rows if r[0].startswith("memory ")]
    assert [r[0] for r in memory] == [f"memory {a}" for a in gc.MEMORY_ARCHS]
    assert all(r[1] == "gpu" and r[2] == "error" for r in memory)  # tried: no CUDA here
    same = [r for r in rows if r[0].startswith("same-plans") and r[1] == "gpu"]
    assert same and all(r[2] == "skipped: no NVDEC (libnvcuvid not found)" for r in same)
    assert ("preflight", "gpu", "fail") in rows  # NVDEC was the goal of the preflight


def test_premade_altref_files_stand_in_for_ffmpeg(tmp_path, monkeypatch):
    """A node without the ffmpeg binary gets the vp9-altref videos (R3) pre-encoded here:
    ``--write-premade`` writes them, DALIVSSL_PREMADE hands them to the matrix and the
    verification, only for the very frames they encode; without them it is a named error."""
    import shutil

    from benchmarks import gpu_check as gc
    from dalivssl.data import decode_matrix as dm
    from dalivssl.data.index import probe_with_packets
    from dalivssl.data.verify import decode_class

    if shutil.which("ffmpeg") is None:
        pytest.skip("writing the vp9-altref files needs the ffmpeg binary")
    monkeypatch.setattr(gc, "PREMADE_ALTREF", ((128, 16),))
    (made,) = gc.write_premade(tmp_path / "premade")
    assert made.name.startswith("vp9-altref_128x128_40_")
    info = probe_with_packets(made)
    assert decode_class(None, info["packets"], made).endswith("/hidden")  # alt-ref frames
    monkeypatch.setattr(shutil, "which", lambda name: None)  # a node without ffmpeg
    monkeypatch.delenv(dm.PREMADE_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"needs the ffmpeg binary .* \$DALIVSSL_PREMADE/"):
        dm.write_case(dm.CASES["vp9-altref"], 128, tmp_path / "a.webm")
    monkeypatch.setenv(dm.PREMADE_ENV, str(tmp_path / "premade"))
    out = dm.write_case(dm.CASES["vp9-altref"], 128, tmp_path / "a.webm")
    assert out.read_bytes() == made.read_bytes()
    with pytest.raises(RuntimeError, match="needs the ffmpeg binary"):  # other frames: no file
        dm.write_case(dm.CASES["vp9-altref"], 112, tmp_path / "b.webm")
