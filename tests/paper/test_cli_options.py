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
    # --explain refuses what the run would refuse: an unknown head or sampler option
    rc, out = _run("pretrain", "--task", "rspnet", "--set", "head.queue_sise=64", "--explain")
    assert rc == 2 and "unknown rspnet head option 'queue_sise'" in out and "queue_size" in out
    rc, out = _run("pretrain", "--task", "vcop", "--set", "sampler.num_clip=3", "--explain")
    assert rc == 2 and "vcop sampler: unknown option(s) num_clip" in out
    rc, out = _run("pretrain", "--task", "tdl", "--set", "head.temperature=0", "--explain")
    assert rc == 2 and "tdl head: temperature must be > 0, got 0" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
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
    notes = out.split("Paper protocol")[1].split("Known differences")[0]
    assert "head.queue_size: 500 (the paper's value" in notes  # K = 500 named, not only tabled


def _row(out, key):
    """A finetune --explain table row's cells: setting, this run, paper, original[, ≠]."""
    return next(ln.split() for ln in out.splitlines() if ln.strip().startswith(key + " "))


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    """A finetuned squeezenet checkpoint whose record says 8×48² 'unit' (not the defaults)."""
    import torch

    from dalivssl.engine.checkpoint import save_checkpoint
    from models import create_backbone

    bb = create_backbone("squeezenet")
    path = tmp_path_factory.mktemp("ck") / "ft.pt"
    return save_checkpoint(path, kind="finetune", arch="squeezenet", backbone=bb.state_dict(),
                           config={}, versions={}, step=0, epoch=0, num_classes=2,
                           classes=["a", "b"], head=torch.nn.Linear(bb.feature_dim, 2).state_dict(),
                           clip_len=8, size=48, normalize="unit")


def _ft_explain(tiny_synth, ckpt, out, *extra):
    return _run("finetune", "--checkpoint", ckpt, "--data", tiny_synth["train"], "--test-data",
                tiny_synth["test"], "--out", out, "--explain", *extra)


def test_finetune_protocol_paper_explain(tiny_synth, clip_ckpt, tmp_path):
    rc, out = _ft_explain(tiny_synth, clip_ckpt, tmp_path / "ft", "--protocol", "paper",
                          "--linear-probe", "--lr", "0.05")
    assert rc == 0 and "linear probe squeezenet" in out and "(protocol paper)" in out, out
    assert _row(out, "train_crop")[1:] == ["resize+centre-crop", "resize+centre-crop",
                                           "resize+random-crop+flip", "≠"]
    assert _row(out, "eval_crop")[1:] == ["resize+centre-crop"] * 3
    # the checkpoint's clip settings, resolved by record.resolve_clip as the run does
    assert "clip settings: 8×48² unit" in out
    assert _row(out, "clip_len")[1:] == ["8", "16", "–"]
    assert _row(out, "size")[1:] == ["48", "112", "–"]
    assert " ".join(_row(out, "normalize")[1:]) == "unit paper gives no value –"
    # FinetuneConfig.resolved(): the probe's weight decay is 0; the lr given wins and differs
    assert _row(out, "weight_decay")[1] == "0" and " ".join(_row(out, "weight_decay")[2:]) == \
        "paper gives no value –"
    assert _row(out, "lr")[1] == "0.05" and _row(out, "lr")[-2:] == ["0.001", "≠"]
    assert not (tmp_path / "ft").exists()  # nothing written, no training


def test_finetune_default_protocol_explain(tiny_synth, clip_ckpt, tmp_path):
    rc, out = _ft_explain(tiny_synth, clip_ckpt, tmp_path / "ft", "--flip", "--size", "56")
    assert rc == 0 and "(protocol original)" in out, out
    assert _row(out, "train_crop")[1:] == ["resize+random-crop+flip", "resize+centre-crop",
                                           "resize+random-crop+flip"]  # same as the original
    assert _row(out, "size")[1:] == ["56", "112", "–"] and "size 48 → 56" in out
    assert _row(out, "weight_decay")[1] == "0.0005" and _row(out, "lr")[1:2] == ["0.001"]
    # the synthetic classes name a direction: without --flip the run does not flip
    rc, out = _ft_explain(tiny_synth, clip_ckpt, tmp_path / "ft")
    assert _row(out, "train_crop")[1:] == ["resize+random-crop", "resize+centre-crop",
                                           "resize+random-crop+flip", "≠"]
    assert not (tmp_path / "ft").exists()
    # bad input: one line, exit 2, before anything
    rc, out = _ft_explain(tiny_synth, clip_ckpt, tmp_path / "ft", "--size", "0")
    assert rc == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    rc, out = _run("finetune", "--checkpoint", tmp_path / "none.pt", "--explain")
    assert rc == 2 and "none.pt" in out and "Traceback" not in out, out


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
