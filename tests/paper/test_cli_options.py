"""The paper's options on the commands: pretrain --protocol/--keep-epochs, finetune --protocol,
robustness --noise-at/--videos-per-cell, distill --kd-loss/--student-checkpoint (one-line
errors; recorded in config.yaml / the run's files)."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli


def _run(*args):
    res = run_cli(*args)  # in this process (tests/conftest.py)
    return res.returncode, res.stdout + res.stderr


def test_bad_values_fail_in_one_line():
    rc, out = _run("pretrain", "--keep-epochs", "1,x", "--explain")
    assert rc == 2 and "--keep-epochs '1,x'" in out and "Traceback" not in out
    rc, out = _run("pretrain", "--keep-epochs", "5", "--epochs", "2", "--explain")
    assert rc == 2 and "keep_epochs: 5 is not an epoch" in out
    rc, out = _run("robustness", "--checkpoint", __file__, "--videos-per-cell", "many")
    assert rc == 2 and "--videos-per-cell 'many'" in out
    rc, out = _run("distill", "--student", "r21d", "--student-checkpoint", "/nope.pt")
    assert rc == 2 and "/nope.pt: student checkpoint not found" in out


def test_pretrain_protocol_paper_explain():
    rc, out = _run("pretrain", "--task", "tdl", "--protocol", "paper", "--data", __file__,
                   "--explain")
    assert rc == 0 and "(protocol paper)" in out
    row = next(ln.split() for ln in out.splitlines() if ln.strip().startswith("head.queue_size"))
    assert row[1:3] == ["500", "500"]


@pytest.mark.slow
def test_commands_record_the_paper_options(tiny_synth, tmp_path):
    rc, out = _run("pretrain", "--task", "rotnet", "--arch", "squeezenet", "--data",
                   tiny_synth["train"], "--clip-len", "8", "--size", "32", "--batch-size", "4",
                   "--epochs", "2", "--protocol", "paper", "--keep-epochs", "1", "--threads", "1",
                   "--no-progress", "--set", "tensorboard=false", "--out", tmp_path / "pre")
    assert rc == 0, out
    cfg = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())
    assert cfg["protocol"] == "paper" and cfg["keep_epochs"] == [1]
    assert (tmp_path / "pre" / "epoch_1.pt").is_file()
    rc, out = _run("finetune", "--checkpoint", tmp_path / "pre" / "epoch_1.pt", "--data",
                   tiny_synth["train"], "--test-data", tiny_synth["test"], "--max-steps", "1",
                   "--batch-size", "4", "--eval-clips", "1", "--protocol", "paper",
                   "--threads", "1", "--no-progress", "--out", tmp_path / "ft")
    assert rc == 0, out
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["protocol"] == "paper"
    rc, out = _run("robustness", "--checkpoint", tmp_path / "ft" / "checkpoint.pt", "--data",
                   tiny_synth["test"], "--noises", "gaussian", "--severities", "1",
                   "--clips-per-video", "1", "--noise-at", "decoded", "--videos-per-cell", "3",
                   "--threads", "1", "--no-progress", "--out", tmp_path / "rob")
    assert rc == 0, out
    from dalivssl.results import ResultsFile

    with ResultsFile(tmp_path / "rob" / "robustness.h5", "r") as f:
        (group,) = f.names("robustness")
        settings = json.loads(f.read(f"robustness/{group}", "settings"))
        videos = f.attrs(f"robustness/{group}", "cells/gaussian_1")["videos"]
    assert settings["noise_at"] == "decoded" and settings["decoded_size"] == 56  # 64-px frames
    assert settings["videos_per_cell"] == 3 and videos == 3
    rc, out = _run("distill", "--student", "squeezenet", "--student-checkpoint",
                   tmp_path / "pre" / "checkpoint.pt", "--teacher", tmp_path / "ft" /
                   "checkpoint.pt", "--data", tiny_synth["train"], "--eval-data",
                   tiny_synth["test"], "--kd-loss", "paper", "--max-steps", "1",
                   "--batch-size", "4", "--threads", "1", "--no-progress", "--out",
                   tmp_path / "kd")
    assert rc == 0, out
    cfg = yaml.safe_load((tmp_path / "kd" / "config.yaml").read_text())
    assert cfg["kd_loss"] == "paper" and cfg["student_checkpoint"].endswith("checkpoint.pt")
    rec = json.loads((tmp_path / "kd" / "record.json").read_text())
    assert str(tmp_path / "pre" / "checkpoint.pt") in rec["parent"]
