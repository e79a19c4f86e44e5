"""`dalivssl finetune`: --set/--config win over the checkpoint's clip settings (review t3 #51),
its config.yaml replays it, data included (#53), and --resume with more steps stretches the
schedule and says so (#56)."""
from __future__ import annotations

import csv

import pytest
import yaml

from dalivssl.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pretrained(tiny_synth, tmp_path_factory):
    from dalivssl.config import PretrainConfig
    from dalivssl.runs.pretrain import pretrain

    out = tmp_path_factory.mktemp("pre") / "rot"
    pretrain(PretrainConfig(task="rotnet", arch="squeezenet", data=str(tiny_synth["train"]),
                            clip_len=8, size=32, batch_size=2, max_steps=1, threads=1,
                            out=str(out), progress=False, tensorboard=False))
    return out / "checkpoint.pt"


def _ft(tiny_synth, pretrained, out, *extra):
    return ["finetune", "--checkpoint", str(pretrained), "--data", str(tiny_synth["train"]),
            "--test-data", str(tiny_synth["test"]), "--batch-size", "2", "--eval-clips", "1",
            "--threads", "1", "--no-progress", "--out", str(out), *extra]


def _config(out) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def test_set_and_config_win_over_the_checkpoint_clip(tiny_synth, pretrained, tmp_path, capsys):
    out = tmp_path / "a"
    code, err = _run(_ft(tiny_synth, pretrained, out, "--max-steps", "1", "--set", "size=48",
                         "--set", "clip_len=12", "--set", "normalize=unit"), capsys)
    assert code in (0, None), err
    cfg = _config(out)
    assert (cfg["clip_len"], cfg["size"], cfg["normalize"]) == (12, 48, "unit")
    assert "overriding" in err and "size 32 → 48" in err
    # --config's keys win over the record as well (a file holding only size)
    (tmp_path / "c.yaml").write_text("size: 40\n")
    code, err = _run(_ft(tiny_synth, pretrained, tmp_path / "b", "--max-steps", "1",
                         "--config", str(tmp_path / "c.yaml")), capsys)
    cfg = _config(tmp_path / "b")
    assert (cfg["clip_len"], cfg["size"], cfg["normalize"]) == (8, 40, "imagenet")
    # another arch than the checkpoint's is refused, not ignored
    code, err = _run(_ft(tiny_synth, pretrained, tmp_path / "c", "--set", "arch=r3d"), capsys)
    assert code == 2 and "checkpoint is for arch 'squeezenet', not 'r3d'" in err
    assert not (tmp_path / "c").exists()
    # a checkpoint and --random-init together: one line
    code, err = _run(_ft(tiny_synth, pretrained, tmp_path / "d", "--set", "arch=squeezenet")
                     + ["--random-init"], capsys)
    assert code == 2 and "exactly one of --checkpoint" in err


def test_config_yaml_replays_the_run_data_included(tiny_synth, pretrained, tmp_path, capsys):
    out = tmp_path / "a"
    code, err = _run(_ft(tiny_synth, pretrained, out, "--max-steps", "2"), capsys)
    cfg = _config(out)
    assert cfg["data"] == str(tiny_synth["train"].resolve())
    assert cfg["test_data"] == str(tiny_synth["test"].resolve())
    assert cfg["pretrained"] == str(pretrained.resolve())
    code, err = _run(["finetune", "--config", str(out / "config.yaml"), "--out",
                      str(tmp_path / "b")], capsys)
    assert code in (0, None), err
    assert _config(tmp_path / "b") == cfg
    with open(out / "finetune_log.csv") as f, open(tmp_path / "b" / "finetune_log.csv") as g:
        first, again = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [r["loss"] for r in first] == [r["loss"] for r in again]
    # a random-init run replays as one (no --checkpoint needed)
    code, err = _run(["finetune", "--random-init", "--arch", "squeezenet", "--clip-len", "8",
                      "--size", "32", "--data", str(tiny_synth["all"]), "--max-steps", "1",
                      "--batch-size", "2", "--eval-clips", "1", "--threads", "1",
                      "--no-progress", "--out", str(tmp_path / "r")], capsys)
    rcfg = _config(tmp_path / "r")
    assert rcfg["random_init"] is True and rcfg["test_data"] is None
    assert rcfg["data"] == str(tiny_synth["all"].resolve())
    code, err = _run(["finetune", "--config", str(tmp_path / "r" / "config.yaml"), "--out",
                      str(tmp_path / "r2")], capsys)
    assert code in (0, None), err
    assert _config(tmp_path / "r2") == rcfg


def test_resume_with_more_steps_stretches_the_schedule(tiny_synth, pretrained, tmp_path,
                                                       capsys):
    out = tmp_path / "a"
    args = _ft(tiny_synth, pretrained, out, "--set", "log_every=1")
    _run(args + ["--max-steps", "2"], capsys)
    code, err = _run(args + ["--max-steps", "5", "--resume"], capsys)
    assert code in (0, None), err
    assert "resuming" in err and "at step 2 of 5" in err
    assert "the cosine schedule planned for 2 steps now spans 5" in err
    with open(out / "finetune_log.csv") as f:
        lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    # cosine over 5 steps from 1e-3: step 3 trains at the stretched value, never at 0
    import math

    for s in (3, 4, 5):
        assert lr[s] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 5)))


def test_train_and_test_overlap_is_warned(tiny_synth, tmp_path, capsys):
    """Review t3 #57: the same manifest as train and test set gave top-1 1.0 without a word."""
    base = ["finetune", "--random-init", "--arch", "squeezenet", "--clip-len", "8", "--size",
            "32", "--max-steps", "1", "--batch-size", "2", "--eval-clips", "1", "--threads", "1",
            "--no-progress"]
    train = str(tiny_synth["train"])
    code, err = _run(base + ["--data", train, "--test-data", train, "--out",
                             str(tmp_path / "a")], capsys)
    from dalivssl.data.manifest import load_manifest

    n = len(load_manifest(train))
    assert f"warning: {n} of the {n} test videos ({train}) are training videos too" in err
    code, err = _run(base + ["--data", str(tiny_synth["all"]), "--out", str(tmp_path / "b")],
                     capsys)
    assert "training videos too" not in err  # the train/test splits of one manifest: disjoint


def test_resume_of_a_complete_finetune_leaves_it_untouched(tiny_synth, pretrained, tmp_path,
                                                           capsys):
    """As pretrain's: --resume of a finished run rewrote its checkpoint, record and results."""
    out = tmp_path / "a"
    args = _ft(tiny_synth, pretrained, out, "--max-steps", "2")
    code, err = _run(args, capsys)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()
              if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        main(args + ["--resume"])
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    assert "finetuning already complete at step 2; nothing to resume (left untouched)" in \
        captured.err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()
            if p.is_file()} == before
    from dalivssl.results import ResultsFile

    with ResultsFile(out / "finetune.h5", "r") as rf:
        acc = float(rf.read("finetune", "video_acc"))
    assert f"{acc:.4f}" in captured.out  # the stored result is reported
