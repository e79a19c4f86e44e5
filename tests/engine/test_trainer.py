"""Trainer: schedules, optimiser resolution, end-to-end pretraining on the tiny synthetic data,
bitwise resume after kill -9, and 2-process DDP on CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dalivssl.config import PretrainConfig
from dalivssl.engine.faults import KILL_ENV
from dalivssl.engine.optim import resolve_optim
from dalivssl.engine.trainer import LRFactor
from dalivssl.tasks import TASKS
from tests.conftest import run_torchrun

ROOT = Path(__file__).resolve().parents[2]


def test_schedules():
    assert [LRFactor("constant", 10)(s) for s in (0, 9)] == [1.0, 1.0]
    step = LRFactor("step", 9, milestones=[3, 6], gamma=0.1)
    assert [round(step(s), 6) for s in (2, 3, 5, 6, 8)] == [1, 0.1, 0.1, 0.01, 0.01]
    cos = LRFactor("cosine", 12, warmup=2, min_ratio=0.1)
    assert cos(0) == 0.5 and cos(1) == 1.0 and cos(2) == 1.0
    assert cos(7) == pytest.approx(0.1 + 0.9 * 0.5) and cos(12) == pytest.approx(0.1)


def test_resolve_optim_from_spec_and_overrides():
    spec = TASKS["rspnet"].SPEC
    o = resolve_optim(PretrainConfig(task="rspnet"), spec, global_batch=16, total_steps=100)
    assert o["lr"] == pytest.approx(0.1 * 16 / 64) and o["schedule"] == "cosine"
    assert o["min_lr_ratio"] == 1e-3
    o = resolve_optim(PretrainConfig(task="cvrl"), TASKS["cvrl"].SPEC, 16, 200)
    assert o["lr"] == pytest.approx(0.32 * (16 / 1024) ** 0.5) and o["warmup_steps"] == 5
    o = resolve_optim(PretrainConfig(task="rotnet", lr=0.5, optimizer="adamw", schedule="cosine"),
                      TASKS["rotnet"].SPEC, 8, 30)
    assert (o["lr"], o["optimizer"], o["schedule"], o["grad_clip"]) == (0.5, "adamw", "cosine", 40.0)
    assert o["milestones"] == pytest.approx((1 / 3, 2 / 3))


def _cmd(out, *extra):
    return [sys.executable, "-m", "dalivssl", "pretrain", "--task", "rotnet", "--arch",
            "shufflenet", "--size", "48", "--batch-size", "2", "--threads", "1",
            "--out", str(out), "--no-progress", "--set", "deterministic=true",
            "--set", "ckpt_every=2", "--set", "tensorboard=false", *extra]


def _in_process(cmd):
    """``cmd`` (from :func:`_cmd`) in this process (tests/conftest.py: run_cli): only the run
    that is killed needs a process of its own."""
    from tests.conftest import run_cli

    res = run_cli(*cmd[3:])
    assert res.returncode == 0, res.stderr


def _env(**kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **kw}
    env.pop(KILL_ENV, None) if KILL_ENV not in kw else None
    return env


def test_pretrain_runs_and_writes_outputs(tiny_synth, tmp_path):
    from dalivssl.engine.checkpoint import load_backbone, load_checkpoint
    from dalivssl.runs.pretrain import pretrain

    cfg = PretrainConfig(task="vcop", arch="r21d", data=str(tiny_synth["train"]), clip_len=8,
                         size=32, batch_size=2, max_steps=3, threads=1, out=str(tmp_path / "r"),
                         progress=False, log_every=1, ckpt_every=2)
    summary = pretrain(cfg)
    run = tmp_path / "r"
    assert summary["steps"] == 3 and summary["world_size"] == 1
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr,clips_per_s,data_wait,acc")
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert (run / "config.yaml").read_text().count("lr: 0.001") == 1  # VCOP's SPEC lr resolved
    assert list((run / "tb").glob("events.*"))
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["task"] == "vcop" and ckpt["step"] == 3 and ckpt["loader"]["position"] == 3
    assert ckpt["config"]["sampler"] == {"num_clips": 3}
    bb, _ = load_backbone(run / "checkpoint.pt", arch="r21d")
    assert bb.feature_dim == 512
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_pretrain_with_amp_on_cpu_trains_in_bf16(tiny_synth, tmp_path):
    """amp=True on the CPU (the loop's bf16 autocast, as finetune and distill): recorded, finite,
    and not the fp32 losses of the same seed."""
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.runs.pretrain import pretrain

    losses = {}
    for amp in (False, True):
        cfg = PretrainConfig(task="vcop", arch="r21d", data=str(tiny_synth["train"]), clip_len=8,
                             size=32, batch_size=2, max_steps=2, threads=1, amp=amp,
                             out=str(tmp_path / str(amp)), progress=False, log_every=1,
                             tensorboard=False)
        pretrain(cfg)
        rows = (tmp_path / str(amp) / "log.csv").read_text().splitlines()[1:]
        losses[amp] = [float(r.split(",")[2]) for r in rows]
        rec = load_checkpoint(tmp_path / str(amp) / "checkpoint.pt")["record"]
        assert rec["settings"]["amp"] is amp and rec["status"] == "complete"
    assert len(losses[True]) == 2 and all(np.isfinite(losses[True]))
    assert losses[True] != losses[False]


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_identical(tiny_synth, tmp_path):
    data = str(tiny_synth["train"])
    full, killed = tmp_path / "full", tmp_path / "killed"
    base = ["--data", data, "--max-steps", "7"]
    _in_process(_cmd(full, *base))
    # killed by SIGKILL right after step 5 (last checkpoint: step 4), then resumed to 7
    p = subprocess.run(_cmd(killed, *base), env=_env(**{KILL_ENV: "5"}), capture_output=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 4
    _in_process(_cmd(killed, *base, "--resume"))
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 7
    for part in ("backbone", "head"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)
    # the log of the resumed run has no duplicate rows and the same losses as the full run
    def rows(run):
        lines = (run / "log.csv").read_text().splitlines()[1:]
        return [(r.split(",")[0], r.split(",")[2]) for r in lines]

    assert rows(killed) == rows(full) and [s for s, _ in rows(full)] == ["1", "5", "7"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tiny_synth, tmp_path):
    out = tmp_path / "ddp"
    p = run_torchrun(29531, "pretrain", "--task", "cvrl", "--arch", "r21d", "--clip-len", "8",
                     "--size", "32", "--batch-size", "2", "--threads", "1", "--data",
                     tiny_synth["train"], "--max-steps", "2", "--out", out, "--no-progress",
                     "--set", "tensorboard=false", "--set", "head.hidden=64", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    a, b = summary["rank_checksums"]
    assert a == b
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 2
    assert ckpt["loader"]["shard"] == [0, 2]


@pytest.mark.gpu
@pytest.mark.parametrize("task", ["vcop", "rspnet"])
def test_pretrain_on_gpu_with_amp(task, gpu_synth, tmp_path):
    from dalivssl.runs.pretrain import pretrain

    cfg = PretrainConfig(task=task, arch="r21d", data=str(gpu_synth["train"]), clip_len=8,
                         size=32, batch_size=2, max_steps=3, device="gpu", amp=True,
                         out=str(tmp_path / "g"), progress=False, tensorboard=False,
                         head={"queue_size": 64} if task == "rspnet" else {})
    summary = pretrain(cfg)
    assert summary["steps"] == 3 and summary["final_loss"] == summary["final_loss"]  # not NaN
    from dalivssl.engine.checkpoint import load_backbone

    bb, _ = load_backbone(tmp_path / "g" / "checkpoint.pt", arch="r21d")  # GPU run → CPU load
    assert next(bb.parameters()).device.type == "cpu"
