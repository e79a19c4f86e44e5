"""benchmarks/offline_bundle.sh: the wheels an offline GPU node needs, split into parts, carried
to a "node" folder transfer by transfer as CARRY.txt says (each <= 60 MiB and <= 8 paths, the
device tool's carry), installed there by install.sh into a fresh venv with --no-index, then DALI
imports from the venv and builds a pipeline. Downloads ~225 MB from the package index (about
4.5 minutes here, most of it the download and the venv's numpy): marked slow, skipped when the
index cannot be reached."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = """
import numpy as np, nvidia.dali as dali, sys
from nvidia.dali import fn, types
@dali.pipeline_def(batch_size=1, num_threads=1, device_id=None)
def p():
    enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
    return fn.decoders.video(enc, device="cpu")
pipe = p(); pipe.build()
pipe.feed_input("enc", [np.fromfile(sys.argv[1], np.uint8)])
print("frames", np.asarray(pipe.run()[0][0]).shape[0], "from", dali.__file__)
"""


@pytest.mark.slow
def test_bundle_installs_from_its_parts_into_a_fresh_venv(tmp_path, make_video):
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    bundle = tmp_path / "bundle"
    res = subprocess.run([str(ROOT / "benchmarks" / "offline_bundle.sh"), str(bundle),
                          "--split-mib", "60", "--python-version", v], capture_output=True,
                         text=True, timeout=900)
    if res.returncode != 0:
        if any(s in res.stderr for s in ("No matching distribution", "Could not find a version",
                                         "NewConnectionError", "Network is unreachable",
                                         "Temporary failure in name resolution")):
            pytest.skip(f"package index unreachable: {res.stderr.strip().splitlines()[-1]}")
        raise AssertionError(res.stdout + res.stderr)
    wheels = sorted(p.name for p in (bundle / "wheels").iterdir())
    parts = sorted(p.name for p in (bundle / "parts").iterdir())
    assert parts and all(p.startswith("nvidia_dali_cuda130-") for p in parts)
    assert all((bundle / "parts" / p).stat().st_size <= 60 * 2**20 for p in parts)
    assert (bundle / "PARTS").read_text().split() == parts
    for name in ("av-", "optree-", "astunparse-", "six-", "gast-", "packaging-"):
        assert any(w.startswith(name) and w.endswith(".whl") for w in wheels), name
    if shutil.which("ffmpeg"):  # the vp9-altref files for a node without ffmpeg (R3)
        assert len(list((bundle / "premade").glob("vp9-altref_*.webm"))) == 5
    # the transfers: every file once, each transfer <= 60 MiB and <= 8 paths
    plan = [json.loads(ln.split(" ", 2)[2]) for ln in
            (bundle / "CARRY.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(plan) == 4  # 3 full DALI parts, then the rest

    def files(path):
        p = Path(path)
        return [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]

    carried = [f for call in plan for path in call for f in files(path)]
    every = [f for f in bundle.rglob("*") if f.is_file() and f.name != "CARRY.txt"]
    assert sorted(carried) == sorted(every)
    for call in plan:
        assert len(call) <= 8 and sum(f.stat().st_size for p in call for f in files(p)) <= 60 * 2**20
    # the node: a copy made transfer by transfer; install.sh refuses while a part is missing
    node = tmp_path / "node" / "bundle"

    def carry(call):
        for path in call:
            dst = node / Path(path).relative_to(bundle)
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if Path(path).is_dir() else shutil.copyfile)(path, dst)

    for call in plan[1:]:
        carry(call)
    venv = tmp_path / "venv"  # a fresh venv with numpy only (the node's own, like torch)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(py), PIP_NO_INDEX="1")
    res = subprocess.run(["bash", str(node / "install.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 2 and "missing parts" in res.stderr and parts[0] in res.stderr
    carry(plan[0])
    del env["PIP_NO_INDEX"]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy"], check=True, env=env,
                   timeout=600)
    env["PIP_NO_INDEX"] = "1"
    res = subprocess.run(["bash", str(node / "install.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "installed: DALI 2." in res.stdout
    assert not list((node / "parts").iterdir())  # reassembled
    video = make_video(12, (32, 32))
    res = subprocess.run([str(py), "-c", PIPELINE, str(video)], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("frames 12 from " + str(venv))
