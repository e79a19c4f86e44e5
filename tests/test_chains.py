"""Chains of commands and the run-dir rules every command follows (issue: every artifact describes
how it was made): records and lineage flow pretrain → finetune → retrieve / robustness / cka /
export-logits / distill; run dirs are locked; --resume refuses settings it cannot honour; an
unwritable --out fails before any work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _env(**kw):
    from dalivssl.engine.faults import KILL_ENV

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **kw}
    env.pop(KILL_ENV, None)
    return env


def _dalivssl(*args):
    """A command in this process (tests/conftest.py: run_cli); the lock test starts the run that
    holds the dir as a real second process."""
    return run_cli(*args)


def _pretrain_args(data, out, *extra):
    return ["pretrain", "--task", "rotnet", "--arch", "shufflenet", "--size", "48", "--clip-len",
            "16", "--batch-size", "2", "--threads", "1", "--data", data, "--out", out,
            "--no-progress", "--set", "tensorboard=false", "--set", "ckpt_every=2", *extra]


@pytest.fixture(scope="module")
def chain(tiny_synth, tmp_path_factory):
    """pretrain (rotnet, 16×48², ImageNet normalisation) → finetune, both without clip flags
    downstream."""
    root = tmp_path_factory.mktemp("chain")
    pre = _dalivssl(*_pretrain_args(tiny_synth["train"], root / "pre", "--max-steps", "4"))
    assert pre.returncode == 0, pre.stderr
    ft = _dalivssl("finetune", "--checkpoint", root / "pre" / "checkpoint.pt", "--data",
                   tiny_synth["train"], "--test-data", tiny_synth["test"], "--max-steps", "3",
                   "--batch-size", "2", "--eval-clips", "2", "--out", root / "ft", "--threads",
                   "1", "--no-progress")
    assert ft.returncode == 0, ft.stderr
    return {"root": root, "pre": root / "pre" / "checkpoint.pt", "ft": root / "ft" /
            "checkpoint.pt", "data": tiny_synth}


@pytest.mark.slow
def test_records_and_lineage_flow_through_a_chain(chain):
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.record import file_hash, read_run_record
    from dalivssl.results import ResultsFile

    root, data = chain["root"], chain["data"]
    pre = read_run_record(root / "pre")
    assert pre.status == "complete" and pre.name == "rotnet_shufflenet"
    assert (pre.clip.clip_len, pre.clip.size, pre.clip.normalize) == (16, 48, "imagenet")
    assert pre.data_hash and pre.device == "cpu" and pre.decoder == "dali-cpu"
    assert load_checkpoint(chain["pre"])["record"]["settings"]["batch_size"] == 2
    ft = read_run_record(root / "ft")
    assert ft.kind == "finetune" and ft.name == "ft_rotnet_shufflenet" and ft.clip == pre.clip
    assert ft.parent == str(chain["pre"].resolve()) and ft.parent_hash == file_hash(chain["pre"])

    r = _dalivssl("retrieve", "--checkpoint", chain["pre"], "--train", data["train"], "--test",
                  data["test"], "--clips", "1", "--out", root / "ret", "--cache-dir",
                  root / "cache", "--no-progress")
    assert r.returncode == 0, r.stderr
    ret = read_run_record(root / "ret")
    assert ret.clip == pre.clip and ret.parent_hash == file_hash(chain["pre"])

    r = _dalivssl("robustness", "--checkpoint", chain["ft"], "--data", data["test"], "--noises",
                  "gaussian", "--severities", "1", "--clips", "1", "--out", root / "rob",
                  "--no-progress")
    assert r.returncode == 0, r.stderr
    with ResultsFile(root / "rob" / "robustness.h5", "r") as rf:
        assert "ft_rotnet_shufflenet" in rf.names("robustness")  # tables use the run's name
        assert rf.meta()["record"]["clip"] == pre.clip.as_dict()

    r = _dalivssl("cka", "--checkpoint", chain["pre"], "--checkpoint", chain["ft"], "--data",
                  data["train"], "--batch-size", "4", "--batches", "1", "--out", root / "cka",
                  "--layers", "conv1")
    assert r.returncode == 0, r.stderr
    with ResultsFile(root / "cka" / "cka.h5", "r") as rf:
        assert rf.read("cka", "names") == ["rotnet_shufflenet", "ft_rotnet_shufflenet"]
        assert rf.meta()["record"]["clip"] == pre.clip.as_dict()

    h5 = root / "t.h5"
    r = _dalivssl("export-logits", "--checkpoint", chain["ft"], "--data", data["train"],
                  "--clips", "1", "-o", h5)
    assert r.returncode == 0, r.stderr
    r = _dalivssl("distill", "--teacher-logits", h5, "--student", "shufflenet", "--data",
                  data["train"], "--eval-data", data["test"], "--batch-size", "2", "--max-steps",
                  "2", "--clip-len", "16", "--size", "48", "--out", root / "kd", "--no-progress")
    assert r.returncode == 0, r.stderr
    kd = read_run_record(root / "kd")
    assert kd.kind == "distill" and kd.parent_hash == file_hash(h5)
    # logits of other data with the same file names are refused, naming both
    r = _dalivssl("distill", "--teacher-logits", h5, "--student", "shufflenet", "--data",
                  data["test"], "--max-steps", "1", "--out", root / "kd2")
    assert r.returncode == 2 and "logits were exported from" in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("error: ")]) == 1
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_resume_refuses_settings_it_cannot_honour(chain, tmp_path):
    import shutil

    run = tmp_path / "pre"
    shutil.copytree(chain["root"] / "pre", run)
    r = _dalivssl(*_pretrain_args(chain["data"]["train"], run, "--max-steps", "6", "--resume",
                                  "--batch-size", "4", "--set", "lr=0.5"))
    assert r.returncode == 2
    assert "cannot resume with other settings (batch_size: 2 → 4; lr: " in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    cfg = (run / "config.yaml").read_text()
    assert "batch_size: 2" in cfg  # the stored description was not rewritten
    r = _dalivssl(*_pretrain_args(chain["data"]["train"], run, "--max-steps", "6", "--resume"))
    assert r.returncode == 0, r.stderr
    assert "resume: max_steps: 4 → 6" in r.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_two_runs_into_one_dir_the_second_is_refused(tiny_synth, tmp_path):
    out = tmp_path / "run"
    a = subprocess.Popen([sys.executable, "-m", "dalivssl",
                          *_pretrain_args(tiny_synth["train"], out, "--max-steps", "6")],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".lock").exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (out / ".lock").exists(), a.communicate()[1]
    b = _dalivssl(*_pretrain_args(tiny_synth["train"], out, "--max-steps", "6", "--overwrite"))
    assert b.returncode == 2 and f"in use by another run (pid {a.pid})" in b.stderr
    assert len(b.stderr.strip().splitlines()) == 1
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err
    steps = [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int)  # one writer: no interleaved rows
    assert not (out / ".lock").exists()
    # a lock left by a dead process is taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid} {os.uname().nodename} 0")
    (out / ".checkpoint.pt.orphan.tmp").write_bytes(b"x" * 10)  # a killed write's leftover
    r = _dalivssl(*_pretrain_args(tiny_synth["train"], out, "--max-steps", "2", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert not (out / ".checkpoint.pt.orphan.tmp").exists()


@pytest.mark.slow
def test_every_command_refuses_an_unwritable_out_before_work(chain, tmp_path):
    """--out below a regular file cannot be created (root ignores chmod, not this)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = blocker / "out"
    data = chain["data"]
    commands = {
        "pretrain": _pretrain_args(data["train"], bad, "--max-steps", "1"),
        "finetune": ["finetune", "--checkpoint", chain["pre"], "--data", data["train"],
                     "--test-data", data["test"], "--out", bad],
        "retrieve": ["retrieve", "--checkpoint", chain["pre"], "--train", data["train"], "--test",
                     data["test"], "--out", bad],
        "robustness": ["robustness", "--checkpoint", chain["ft"], "--data", data["test"],
                       "--out", bad],
        "cka": ["cka", "--checkpoint", chain["pre"], "--data", data["test"], "--out", bad],
        "distill": ["distill", "--teacher", chain["ft"], "--student", "shufflenet", "--data",
                    data["train"], "--out", bad],
        "export-logits": ["export-logits", "--checkpoint", chain["ft"], "--data", data["train"],
                          "-o", bad / "t.h5"],
    }
    for name, argv in commands.items():
        t0 = time.perf_counter()
        r = _dalivssl(*argv)
        assert r.returncode == 2, (name, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "not writable" in errors[0], name
        assert "Traceback" not in r.stderr, name
        assert time.perf_counter() - t0 < 30, name  # failed before the work, not after


@pytest.mark.parametrize("argv", [
    ["data", "synth", "{bad}/s", "--videos", "3", "--classes", "3"],
    ["data", "subset", "{all}", "--sizes", "3", "-o", "{bad}/sub"],
    ["data", "index", "{videos}", "--format", "folders", "-o", "{bad}/i.jsonl"],
    ["data", "prepare", "{train}", "{bad}/prep"],
])
def test_data_commands_refuse_an_unwritable_out_in_one_line(argv, tiny_synth, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    subs = {"bad": str(blocker), "all": str(tiny_synth["all"]), "train": str(tiny_synth["train"]),
            "videos": str(Path(tiny_synth["all"]).parent / "videos")}
    r = _dalivssl(*[a.format(**subs) for a in argv])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    assert len(r.stderr.strip().splitlines()) == 1 and str(blocker) in r.stderr
