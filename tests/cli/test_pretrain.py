"""`dalivssl pretrain`: bad input gives one line and exit code 2; a tiny run works end to end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dalivssl.cli import main
from dalivssl.tasks import TASKS


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.mark.parametrize("argv,msg", [
    (["--task", "jigsaw"], "unknown task 'jigsaw'; valid: " + ", ".join(sorted(TASKS)) + "\n"),
    (["--arch", "resnet9000"], "unknown architecture 'resnet9000'; valid: c3d, mc3_18"),
    (["--data", "/nonexistent/train.jsonl"], "/nonexistent/train.jsonl: manifest not found"),
    (["--set", "lr=fast"], "config key 'lr': expected float"),
    (["--set", "colour=red"], "unknown config key 'colour'"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
    # models.ModelError (models/ imports nothing from dalivssl): one line too
    (["--set", "backbone.width=2"],
     "error: architecture 'shufflenet' has no option width; valid: "),
    (["--set", "backbone.groups=5"],
     "error: shufflenet groups must be one of [1, 2, 3, 4, 8], got 5\n"),
])
def test_bad_input_one_line_exit_2(argv, msg, capsys, tmp_path):
    code, err = _run(["pretrain", "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and msg in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_resume_with_checkpoint_of_other_arch(tmp_path, capsys):
    import torch

    from dalivssl.engine.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "checkpoint.pt", kind="pretrain", arch="r21d", task="vcop",
                    backbone={"w": torch.zeros(1)}, head={}, config={}, versions={}, step=1,
                    epoch=0)
    code, err = _run(["pretrain", "--out", str(tmp_path), "--resume"], capsys)
    assert code == 2 and "checkpoint is for arch 'r21d', not 'shufflenet'" in err
    code, err = _run(["pretrain", "--out", str(tmp_path), "--arch", "r21d"], capsys)
    assert code == 2 and "already holds a checkpoint; pass --resume" in err


def test_unwritable_out_dir(tmp_path, tiny_synth, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _run(["pretrain", "--data", str(tiny_synth["train"]), "--out",
                      str(blocker / "run")], capsys)
    assert code == 2 and "output directory is not writable" in err and str(blocker) in err
    assert err.strip() == (f"error: {blocker / 'run'}: output directory is not writable "
                           f"({blocker} is a file, not a directory)")  # review t3 #18: "(File exists)"


def test_bad_task_option_and_too_small_clip(tmp_path, tiny_synth, capsys):
    data = ["--data", str(tiny_synth["train"]), "--out", str(tmp_path / "o")]
    code, err = _run(["pretrain", *data, "--set", "head.queue=5", "--task", "tdl",
                      "--arch", "r21d"], capsys)
    assert code == 2 and "unknown tdl head option 'queue'; valid: queue_size" in err
    # clip_len 8: VCOP's 3-clip window (3 × 8 + 2 × 8 = 40 frames) fits the 40-frame videos
    code, err = _run(["pretrain", *data, "--clip-len", "8", "--arch", "r21d", "--set",
                      "head.feature_norm=true"],
                     capsys)
    assert code == 2 and "vcop head: feature_norm must be one of none, layer, batch, got True" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    for item, msg in [("sampler.num_rotations=0", "rotnet sampler: num_rotations must be 2, 3 or 4, got 0"),
                      ("sampler.foo=1", "rotnet sampler: unknown option(s) foo; valid: ")]:
        code, err = _run(["pretrain", *data, "--task", "rotnet", "--clip-len", "8", "--arch", "r21d",
                          "--set", item], capsys)  # review t3 #18: not blamed on the dataset
        assert code == 2 and err.startswith(f"error: {msg}") and err.count("\n") == 1, err
    code, err = _run(["pretrain", *data[:2], "--out", str(tmp_path / "small"), "--size", "16"],
                     capsys)
    # the arch's declared minimum, checked before anything is built or written
    assert code == 2 and ("shufflenet needs clips of at least 15 frames and 33 px; got "
                          "--clip-len 16 --size 16") in err
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize("argv,msg", [
    (["pretrain", "--explain", "--arch", "nosuch"], "unknown architecture 'nosuch'; valid: c3d"),
    (["pretrain", "--task", "videomae", "--arch", "nosuch", "--explain"],
     "unknown architecture 'nosuch'"),
    (["bench", "sweep", "--clip-len", "8", "--size", "32", "--arch", "shufflenet"],
     "shufflenet needs clips of at least 15 frames and 33 px; got --clip-len 8 --size 32"),
    (["bench", "sweep", "--arch", "nosuch"], "unknown architecture 'nosuch'"),
])
def test_review_tracebacks_are_one_line(argv, msg, capsys, tmp_path, monkeypatch):
    """Review t3 #8, #36: these ended in a PyTorch traceback / KeyError."""
    monkeypatch.chdir(tmp_path)
    code, err = _run(argv, capsys)
    assert code == 2 and msg in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_tiny_run_via_main(tmp_path, tiny_synth, capsys):
    out = tmp_path / "run"
    code, err = _run(["pretrain", "--task", "rotnet", "--arch", "shufflenet", "--size", "48",
                      "--batch-size", "2", "--max-steps", "2", "--threads", "1", "--data",
                      str(tiny_synth["train"]), "--out", str(out), "--set", "tensorboard=false"],
                     capsys)
    assert code == 0, err
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()


def test_short_videos_are_said_on_screen(tmp_path, tiny_synth, capsys):
    import json

    out = tmp_path / "run"  # 40-frame videos, 16-frame clips at stride 5: an 80-frame span
    code, err = _run(["pretrain", "--task", "rotnet", "--arch", "r21d", "--size", "32",
                      "--batch-size", "2", "--max-steps", "2", "--threads", "1", "--data",
                      str(tiny_synth["train"]), "--out", str(out), "--set", "tensorboard=false",
                      "--set", "sampler.strides=[5]", "--no-progress"], capsys)
    assert code == 0, err
    from dalivssl.data.manifest import load_manifest

    short = json.loads((out / "summary.json").read_text())["short_videos"]
    assert short >= 4  # at least the 2 steps × batch 2 used, each too short (prefetch plans more)
    total = len(load_manifest(tiny_synth["train"]).records)
    warn = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warn == [f"warning: {short} of {total} videos are shorter than a 16-frame clip's span, so "
                    "their clips repeat frames (looped or padded); lower --clip-len or use longer "
                    "videos"], err


def test_help_is_fast_and_lazy():
    code = ("import sys; from dalivssl.cli import main\n"
            "try: main(['pretrain', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'nvidia.dali' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    assert "--task" in p.stdout and "--resume" in p.stdout


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--set", "lr=-1"], "lr must be > 0, got -1.0"),
    (["pretrain", "--set", "weight_decay=-0.1"], "weight_decay must be >= 0, got -0.1"),
    (["pretrain", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["finetune", "--random-init", "--arch", "shufflenet", "--lr", "-1"],
     "lr must be > 0, got -1.0"),
    (["finetune", "--random-init", "--arch", "shufflenet", "--dropout", "1"],
     "dropout must be < 1, got 1.0"),
    (["distill", "--student", "shufflenet", "--temperature", "0"],
     "temperature must be > 0, got 0.0"),
    (["distill", "--student", "shufflenet", "--max-steps", "0"], "max_steps must be >= 1, got 0"),
    # issue 24 item 6: gradient ascent, a rising floor, diverging momentum, "0 videos" = all
    (["pretrain", "--set", "schedule=step", "--set", "milestones=[0.5]", "--set", "gamma=-1"],
     "gamma must be in (0, 1], got -1.0"),
    (["pretrain", "--set", "min_lr_ratio=5"], "min_lr_ratio must be in [0, 1], got 5.0"),
    (["pretrain", "--set", "momentum=2"], "momentum must be in [0, 1), got 2.0"),
    (["pretrain", "--set", "milestones=[1.5]"], "milestones must be in (0, 1), got 1.5"),
    (["pretrain", "--subset", "0"], "subset must be >= 1, got 0"),
    (["finetune", "--random-init", "--arch", "shufflenet", "--set", "momentum=2"],
     "momentum must be in [0, 1), got 2.0"),
])
def test_out_of_range_settings_are_one_line_errors_before_work(argv, message, capsys, tmp_path):
    code, err = _run([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.strip() == f"error: {message}"
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("task,opt,message", [
    ("vcop", "head.hidden=0", "vcop head: hidden must be >= 1, got 0"),
    ("cvrl", "head.hidden=0", "cvrl head: hidden must be >= 1, got 0"),
    ("cvrl", "head.out_dim=0", "cvrl head: out_dim must be >= 1, got 0"),
])
def test_head_sizes_out_of_range_are_one_line(task, opt, message, tiny_synth, capsys, tmp_path):
    """Review t3 #50: head.hidden=0 trained a head with no width (loss stuck at ln 6)."""
    code, err = _run(["pretrain", "--task", task, "--arch", "squeezenet", "--clip-len", "8",
                      "--size", "32", "--data", str(tiny_synth["train"]), "--set", opt,
                      "--out", str(tmp_path / "o"), "--threads", "1"], capsys)
    assert code == 2 and err.strip() == f"error: {message}"
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv,line", [
    (["--task", "prp"], "frames a video needs: ≥ 129 frames (rate 8: 16 × 8 + 1); lowered by "
                        "sampler.rates or --clip-len"),
    (["--task", "prp", "--arch", "squeezenet", "--clip-len", "8", "--set", "sampler.rates=[1,2]"],
     "frames a video needs: ≥ 17 frames (rate 2: 8 × 2 + 1)"),
    (["--task", "vcop"], "frames a video needs: ≥ 64 frames (3 clips × 16 + 2 gaps × 8)"),
    (["--task", "rotnet"], "frames a video needs: any length (a shorter video repeats frames)"),
])
def test_explain_states_the_frames_a_video_needs(argv, line, capsys):
    """Review t3 #35: --explain omitted the frames a task needs."""
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--explain", *argv])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.splitlines()[1].startswith(line)
