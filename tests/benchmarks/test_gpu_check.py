"""benchmarks/gpu_check.py end to end on CPU at tiny sizes: every step's CPU side runs, every GPU
row says 'skipped: no GPU', one JSON and one table come out, exit code 0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_with_gpu_rows_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test pins the CPU behaviour")
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(out),
                          "--work", str(tmp_path / "work")], capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ,
                                           "DALIVSSL_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(out.read_text())
    assert rep["gpu"] is False and rep["tiny"] is True
    assert rep["device"]["reason"] == "auto: no CUDA device"
    from pipelines.samplers import SAMPLERS

    tasks = sorted(SAMPLERS)  # every sampler (the six tasks, videomae, eval): the registry
    got = [(r["step"], r["device"], r["status"]) for r in rep["rows"]]
    skip = "skipped: no GPU"
    assert got == ([("doctor", "cpu", "ok"), ("doctor", "gpu", skip), ("pytest-gpu", "gpu", skip)]
                   + [(f"same-plans {t}", "gpu", skip) for t in tasks]
                   + [("loader vcop", "cpu", "ok"), ("loader vcop", "gpu", skip),
                      ("loader rspnet", "cpu", "ok"), ("loader rspnet", "gpu", skip),
                      ("sweep 21 cells", "cpu", "ok"), ("sweep 21 cells", "gpu", skip),
                      ("cka", "cpu", "ok"), ("cka", "gpu", skip),
                      ("pretrain (fp32)", "cpu", "ok"), ("pretrain (AMP bf16)", "gpu", skip)])
    rows = {(r["step"], r["device"]): r for r in rep["rows"]}
    assert rows[("doctor", "cpu")]["result"] == "2/4 cells OK; 0 disagree with the table"
    assert rows[("pretrain (fp32)", "cpu")]["data"]["steps"] == 2
    assert rows[("sweep 21 cells", "cpu")]["data"]["cells"] == 21
    table = res.stdout
    assert table.startswith("gpu_check on auto: no CUDA device (")
    assert "step                 device  status" in table and f"wrote {out}" in table
