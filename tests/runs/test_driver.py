"""The run driver's guarantees (runs.base.execute): --overwrite gives a clean dir, --resume of a
complete run leaves it untouched, a resume across another thread count is refused, bad input
fails before the dir is touched."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dalivssl.config import PretrainConfig
from dalivssl.errors import DalivsslError


def _cfg(tiny_synth, out, **kw):
    return PretrainConfig(**{**dict(task="rotnet", arch="r21d", data=str(tiny_synth["train"]),
                                    clip_len=8, size=32, batch_size=2, max_steps=2, threads=1,
                                    out=str(out), progress=False, log_every=1, ckpt_every=1,
                                    deterministic=True), **kw})


def test_overwrite_removes_old_outputs_before_the_new_run(tiny_synth, tmp_path):
    from dalivssl.runs.pretrain import pretrain

    run = tmp_path / "r"
    pretrain(_cfg(tiny_synth, run))
    old_events = set((run / "tb").glob("events.*"))
    assert old_events and (run / "summary.json").is_file()
    (run / "stray.txt").write_text("not ours")
    # a failing overwrite (the arch cannot take 4×32² clips): the old outputs are gone, so no
    # old checkpoint can sit beside a new config
    with pytest.raises(DalivsslError, match="cannot take 4-frame clips"):
        pretrain(_cfg(tiny_synth, run, arch="shufflenet", clip_len=4, size=32), overwrite=True)
    assert not (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    (run / "checkpoint.pt").write_bytes(b"")  # a new run over it: --overwrite still needed
    pretrain(_cfg(tiny_synth, run, tensorboard=False), overwrite=True)
    assert not (run / "tb").exists()  # the old event files went with the old run
    assert (run / "stray.txt").read_text() == "not ours"  # only the run's own outputs go
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_resume_of_a_complete_run_leaves_it_untouched(tiny_synth, tmp_path, capsys):
    from dalivssl.runs.pretrain import pretrain

    run = tmp_path / "r"
    cfg = _cfg(tiny_synth, run, tensorboard=False)
    first = pretrain(cfg)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    again = pretrain(cfg, resume=True)
    err = capsys.readouterr().err
    assert "already complete at step 2; nothing to resume (left untouched)" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert again["final_loss"] == first["final_loss"] and again["steps"] == 2


def test_resume_refuses_another_thread_count(tiny_synth, tmp_path):
    from dalivssl.runs.pretrain import pretrain

    run = tmp_path / "r"
    cfg = _cfg(tiny_synth, run, tensorboard=False)
    pretrain(cfg)
    with pytest.raises(DalivsslError, match=r"cannot resume with other settings \(threads: 1 → 2\)"):
        pretrain(replace(cfg, threads=2, max_steps=3), resume=True)


def test_bad_input_fails_before_the_run_dir_exists(tmp_path):
    from dalivssl.runs.pretrain import pretrain

    with pytest.raises(DalivsslError, match="batch_size must be >= 2"):
        pretrain(PretrainConfig(batch_size=1, out=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()


def test_a_run_failing_before_writing_leaves_no_empty_dir(tiny_synth, tmp_path):
    from dalivssl.runs.pretrain import pretrain

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")  # review t3 #17: clean error, but an empty out dir was left
    with pytest.raises(DalivsslError, match="bad.jsonl"):
        pretrain(_cfg(tiny_synth, tmp_path / "new" / "run", data=str(bad)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # run and its parent gone
    (tmp_path / "mine").mkdir()  # a folder the user made stays, even empty
    with pytest.raises(DalivsslError, match="bad.jsonl"):
        pretrain(_cfg(tiny_synth, tmp_path / "mine", data=str(bad)))
    assert (tmp_path / "mine").is_dir()


def test_summary_after_resume_covers_the_whole_run(tiny_synth, tmp_path):
    from dalivssl.runs.pretrain import pretrain

    # 10 steps: the first / last loss are means over 2 steps; steps 1-2 see the same lr whether
    # the run was planned for 6 or 10 steps (milestones 1/3, 2/3)
    full = pretrain(_cfg(tiny_synth, tmp_path / "full", max_steps=10, tensorboard=False))
    run = tmp_path / "r"
    pretrain(_cfg(tiny_synth, run, max_steps=6, tensorboard=False))
    resumed = pretrain(_cfg(tiny_synth, run, max_steps=10, tensorboard=False), resume=True)
    # review t3 #20: "loss first→last" covered only the resumed part (steps 7-10)
    assert resumed["steps"] == 10 and resumed["first_loss"] == full["first_loss"]
    assert json.loads((run / "summary.json").read_text())["first_loss"] == full["first_loss"]


def test_every_registered_spec_loads():
    from dalivssl.runs import SPECS, spec

    for name in SPECS:
        s = spec(name)
        assert s.name == name and "checkpoint.pt" in s.outputs or s.artifact in s.outputs
    with pytest.raises(DalivsslError, match="unknown command"):
        spec("nope")


def test_resume_with_more_steps_stretches_the_schedule(tiny_synth, tmp_path, capsys):
    """Review t3 #56: the resumed steps ran at the old schedule's lr (0 after a cosine)."""
    import csv
    import math

    from dalivssl.runs.pretrain import pretrain

    run = tmp_path / "r"
    cfg = _cfg(tiny_synth, run, tensorboard=False, schedule="cosine", warmup_steps=0, lr=0.01)
    pretrain(cfg)
    capsys.readouterr()
    pretrain(replace(cfg, max_steps=4), resume=True)
    err = capsys.readouterr().err
    assert "the cosine schedule planned for 2 steps now spans 4 (from step 0)" in err
    with open(run / "log.csv") as f:
        lr = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f)}
    for s in (3, 4):
        assert lr[s] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 4)))
