"""Studies reuse a run only when it is the same (issue 24 #1, #2): results come from the current
plan, a changed $DATA or replaced videos give new runs, a remade parent reruns its children, and
a study dir holds one study. The commands are tests/study/fake_command.py (no torch)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dalivssl.errors import DalivsslError
from dalivssl.study import results as R
from dalivssl.study import runner
from dalivssl.study.spec import expand, parse_study
from tests.study.conftest import TINY_PRETRAIN, write_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fake_commands(monkeypatch):
    monkeypatch.setattr(runner, "launched", lambda cmd: [sys.executable, "-m",
                                                         "tests.study.fake_command", *cmd])
    monkeypatch.chdir(ROOT)


def raw_study(train, test, name="t", max_steps=2):
    return {"name": name, "device": "cpu", "threads": 1,
            "data": {"d": {"train": str(train), "test": str(test)}},
            "axes": {"task": ["rotnet"], "arch": ["squeezenet"], "data": ["d"]},
            "pretrain": dict(TINY_PRETRAIN), "steps": {"finetune": {"max_steps": max_steps}}}


def run(raw, out, **kw):
    return runner.run_local(expand(parse_study(raw)), out, say=lambda s: None, **kw)


def calls(out) -> list[str]:
    p = Path(out) / "calls.txt"
    return p.read_text().split("\n")[:-1] if p.is_file() else []


def cli(*args):
    from dalivssl.cli import cli as group

    return CliRunner().invoke(group, [str(a) for a in args])


def main_rc(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of `dalivssl ARGS` through its main (one-line errors, exit 2)."""
    from dalivssl.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def test_edited_study_file_results_status_clean(tmp_path, tiny_data):
    """Review t3 #24: runs of the file before an edit are not averaged in as seeds."""
    out = tmp_path / "out"
    run(raw_study(tiny_data["train"], tiny_data["test"]), out)
    res = run(raw_study(tiny_data["train"], tiny_data["test"], max_steps=6), out)
    assert len(res.ran) == 1 and res.done_before == 1  # the new finetune; pretrain reused
    rows = R.collect(out)
    finetunes = {r["name"] for r in rows if r["step"] == "finetune"}
    assert len(finetunes) == 1 and finetunes < set(json.loads(
        (out / runner.PLAN_FILE).read_text())["runs"])
    assert R.progress(out) == {"total": 2, "done": 2, "failed": 0, "pending": 0}
    status = cli("study", "status", out)
    assert status.exit_code == 0, status.output
    old = runner.runs_not_in_plan(out)
    assert len(old) == 1 and old[0].parent.name == "finetune"
    assert "1 run dir(s) not in the current plan" in status.output
    assert f"finetune/{old[0].name}" in status.output
    assert "2 of 2 runs done, 0 failed, 0 pending" in status.output
    assert old[0].is_dir() and cli("study", "clean", out, "--dry-run").exit_code == 0
    assert old[0].is_dir()
    cleaned = cli("study", "clean", out)
    assert cleaned.exit_code == 0 and "removed finetune/" in cleaned.stdout
    assert not old[0].exists() and runner.runs_not_in_plan(out) == []


def test_another_study_needs_force(tmp_path, tiny_data, capsys):
    """Review t3 #29: another study file into the same dir is refused, not relabelled."""
    out = tmp_path / "out"
    run(raw_study(tiny_data["train"], tiny_data["test"]), out)
    other = raw_study(tiny_data["train"], tiny_data["test"], name="other")
    with pytest.raises(DalivsslError, match=r"holds study 't'.*is study 'other'.*--force"):
        run(other, out)
    assert json.loads((out / runner.PLAN_FILE).read_text())["study"] == "t"
    path = write_study(tmp_path / "other.yaml", other)
    rc, err = main_rc(capsys, "study", "run", path, "--out", out)
    assert rc == 2 and "--force" in err and len(err.splitlines()) == 1
    assert run(other, out, force=True).ok
    assert json.loads((out / runner.PLAN_FILE).read_text())["study"] == "other"


def test_changed_data_variable_gives_new_runs(tmp_path, tiny_data, monkeypatch):
    """Review t3 #25: `$MYDATA` switched to another dataset: new runs, never "0 now, 2 before"."""
    from dalivssl.data.synth import generate

    other = generate(tmp_path / "other", videos=8, classes=4, frames=16, size=32, workers=1)
    raw = raw_study("$MYDATA/train.jsonl", "$MYDATA/test.jsonl")
    out = tmp_path / "out"
    monkeypatch.setenv("MYDATA", str(Path(tiny_data["train"]).parent))
    first = run(raw, out)
    assert len(first.ran) == 2
    monkeypatch.setenv("MYDATA", str(Path(other["train"]).parent))
    second = run(raw, out)
    assert len(second.ran) == 2 and second.done_before == 0
    assert len(runner.runs_not_in_plan(out)) == 2


def test_replaced_videos_give_new_runs(tmp_path):
    """Review t3 #38/#39 in a study: videos replaced in place (same manifest records)."""
    from dalivssl.data.synth import generate

    data = generate(tmp_path / "d", videos=8, classes=4, frames=16, size=32, workers=1)
    raw, out = raw_study(data["train"], data["test"]), tmp_path / "out"
    plan = expand(parse_study(raw))
    assert len(run(raw, out).ran) == 2
    generate(tmp_path / "d", videos=8, classes=4, frames=16, size=32, seed=1, workers=1,
             overwrite=True)
    again = expand(parse_study(raw))
    assert not set(plan.runs) & set(again.runs)  # the names hash the data's content
    res = run(raw, out)
    assert len(res.ran) == 2 and res.done_before == 0
    assert {d.name for d in runner.runs_not_in_plan(out)} == set(plan.runs)


def test_remade_parent_reruns_its_children(tmp_path, tiny_data):
    """Review t3 #26: a pretrain dir deleted by hand and remade: its finetune reruns (in a clean
    dir), instead of keeping results of the old weights."""
    import shutil

    raw, out = raw_study(tiny_data["train"], tiny_data["test"]), tmp_path / "out"
    plan = expand(parse_study(raw))
    pre, ft = plan.runs.values()
    run(raw, out)
    assert calls(out) == [f"pretrain {pre.name}", f"finetune {ft.name}"]
    assert len(run(raw, out).ran) == 0 and len(calls(out)) == 2  # done: nothing reruns
    shutil.rmtree(runner.run_dir(out, pre))
    assert runner.status(out, ft, plan) == "stale"
    (runner.run_dir(out, ft) / "leftover.txt").write_text("from the old run")
    res = run(raw, out)
    assert res.ran == [pre.name, ft.name] and calls(out)[2:] == [f"pretrain {pre.name}",
                                                                 f"finetune {ft.name}"]
    assert not (runner.run_dir(out, ft) / "leftover.txt").exists()
    assert runner.status(out, ft, plan) == "done"


def test_results_name_unreadable_files_and_go_on(tmp_path, tiny_data, capsys):
    """Review t3 #30/#31: a corrupt study.json or result file is named, the others reported;
    the count of done/failed/pending runs; a dir that is no study is refused in one line."""
    out = tmp_path / "out"
    raw = raw_study(tiny_data["train"], tiny_data["test"])
    raw["axes"]["seed"] = [0, 1, 2]
    plan = expand(parse_study(raw))
    run(raw, out)
    pres = [r for r in plan.runs.values() if r.step == "pretrain"]
    (runner.run_dir(out, pres[0]) / "summary.json").write_text("{not json")
    (runner.run_dir(out, pres[1]) / runner.RUN_FILE).write_text("")
    (runner.run_dir(out, pres[2]) / "record.json").write_text("{")
    ft = next(r for r in plan.runs.values() if r.step == "finetune")
    (runner.run_dir(out, ft) / "record.json").unlink()
    with open(runner.run_dir(out, ft) / runner.ATTEMPTS_FILE, "a") as f:
        f.write(json.dumps({"start": 0, "end": 1, "rc": 1}) + "\n")
    res = cli("study", "results", out)
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3
    text = "\n".join(warnings)
    assert str(runner.run_dir(out, pres[0])) in text
    assert str(runner.run_dir(out, pres[1]) / runner.RUN_FILE) in text
    assert str(runner.run_dir(out, pres[2]) / "record.json") in text
    assert "4 of 6 runs done, 1 failed, 1 pending" in res.stdout
    names = {r["name"] for r in R.collect(out)}  # the two finetunes still readable
    assert len(names) == 2 and all("_ft-" in n for n in names)
    (tmp_path / "plain").mkdir()
    rc, err = main_rc(capsys, "study", "results", tmp_path / "plain")
    assert rc == 2 and "not a study directory" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "plain" / "results").exists()
