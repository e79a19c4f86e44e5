"""Study files: expansion into cells and runs (names exact), reuse of runs across edits, and
one-line validation errors."""
from __future__ import annotations

import re

import pytest

from dalivssl.errors import DalivsslError
from dalivssl.study.spec import expand, load_study, parse_study, preset_names, run_config
from tests.conftest import run_cli
from tests.study.conftest import study_dict, write_study

HASHED = re.compile(r"^(.*)-[0-9a-f]{6}$")


def plan_of(raw, tmp_path=None):
    return expand(parse_study(raw, base=tmp_path or "."))


def labels(plan, step=None):
    return [HASHED.match(n).group(1) for n, r in plan.runs.items() if step in (None, r.step)]


def test_cells_and_run_names(tiny_data):
    p = plan_of(study_dict(tiny_data))
    assert [c.label for c in p.cells] == [
        "rotnet_squeezenet_synth_n8_s0", "rotnet_squeezenet_synth_n16_s0",
        "vcop_squeezenet_synth_n8_s0", "vcop_squeezenet_synth_n16_s0"]
    assert labels(p) == [
        "rotnet_squeezenet_synth_n8_s0", "rotnet_squeezenet_synth_n8_s0_ft-synth",
        "rotnet_squeezenet_synth_n8_s0_ret-synth",
        "rotnet_squeezenet_synth_n8_s0_rob-finetune-synth",
        "vcop_squeezenet_synth_n8_s0",
        "rotnet_squeezenet_synth_n8_s0_vs_vcop_squeezenet_synth_n8_s0",
        "rotnet_squeezenet_synth_n16_s0", "rotnet_squeezenet_synth_n16_s0_ft-synth",
        "rotnet_squeezenet_synth_n16_s0_ret-synth",
        "rotnet_squeezenet_synth_n16_s0_rob-finetune-synth", "vcop_squeezenet_synth_n16_s0",
        "rotnet_squeezenet_synth_n16_s0_vs_vcop_squeezenet_synth_n16_s0",
        "vcop_squeezenet_synth_n8_s0_ft-synth", "vcop_squeezenet_synth_n8_s0_ret-synth",
        "vcop_squeezenet_synth_n8_s0_rob-finetune-synth",
        "vcop_squeezenet_synth_n16_s0_ft-synth", "vcop_squeezenet_synth_n16_s0_ret-synth",
        "vcop_squeezenet_synth_n16_s0_rob-finetune-synth"]
    pre = p.runs[next(n for n in p.runs if n.startswith("rotnet_squeezenet_synth_n8_s0-"))]
    # the study's structure as flags, the step's options as config settings (--set, sorted)
    assert pre.argv == ("pretrain", "--task", "rotnet", "--arch", "squeezenet", "--data",
                        "{data:synth:train}", "--subset", "8", "--seed", "0", "--device", "cpu",
                        "--set", "batch_size=4", "--set", "clip_len=8", "--set", "max_steps=2",
                        "--set", "progress=false", "--set", "size=32")
    # names do not depend on where the data lies, only on the settings
    moved = {"train": "/elsewhere/train.jsonl", "test": "/elsewhere/test.jsonl"}
    assert list(plan_of(study_dict(tiny_data)).runs) == list(p.runs)
    assert list(plan_of(study_dict(moved)).runs) != list(p.runs)  # the paths as written differ
    ft = [r for r in p.runs.values() if r.step == "finetune"][0]
    assert ft.argv[1:3] == ("--checkpoint", f"{{run:{pre.name}}}") and ft.deps == (pre.name,)
    rob = [r for r in p.runs.values() if r.step == "robustness"][0]
    assert rob.deps == (ft.name,) and "severities=[1, 3]" in rob.argv
    cka = [r for r in p.runs.values() if r.step == "cka"][0]
    assert cka.columns["ref"] == "task=vcop" and len(cka.deps) == 2
    # the clips are the checkpoints' own (their records, resolved by `dalivssl cka`)
    assert cka.argv[-4:] == ("--set", "batch_size=4", "--set", "batches=2")
    assert p.by_cell["vcop_squeezenet_synth_n8_s0"][0].startswith("vcop_squeezenet_synth_n8_s0-")


def test_editing_the_file_only_adds_runs(tiny_data):
    base = plan_of(study_dict(tiny_data))
    raw = study_dict(tiny_data)
    raw["axes"]["subset"] = [8, 16, 12]  # the train split has 16 videos
    more = plan_of(raw)
    assert set(base.runs) < set(more.runs) and len(more.cells) == 6
    raw = study_dict(tiny_data)
    raw["steps"]["finetune"]["max_steps"] = 3  # new finetunes (and their robustness runs)
    changed = plan_of(raw)
    same = {r.step for n, r in changed.runs.items() if n in base.runs}
    new = {r.step for n, r in changed.runs.items() if n not in base.runs}
    assert same == {"pretrain", "retrieve", "cka"} and new == {"finetune", "robustness"}


def test_complexity_per_axis_and_shared_runs(tiny_data):
    raw = study_dict(tiny_data, per={"task": {"vcop": {"pretrain": {"batch_size": 2}}}})
    raw["axes"].update(subset=[8], complexity=["C1", "C2"])
    raw["steps"] = {"finetune": {"max_steps": 2},
                    "cka": {"against": ["finetune", {"task": "vcop"}, {"task": "rotnet"}]},
                    "distill": {"teachers": [{"task": "rotnet"}, {"task": "vcop"}],
                                "max_steps": 2}}
    p = plan_of(raw)
    pre = {HASHED.match(n).group(1): r for n, r in p.runs.items() if r.step == "pretrain"}
    assert set(pre) == {f"{t}_squeezenet_synth_n8_{c}_s0" for t in ("rotnet", "vcop")
                        for c in ("C1", "C2")}
    argv = pre["vcop_squeezenet_synth_n8_C2_s0"].argv
    assert "sampler.num_clips=4" in argv and "batch_size=2" in argv
    assert "batch_size=4" not in argv
    argv = pre["rotnet_squeezenet_synth_n8_C1_s0"].argv
    assert "sampler.num_rotations=2" in argv and "batch_size=4" in argv
    # one cka run per pair of cells (asked from both sides), and one per pretrain-vs-finetune
    assert sorted(labels(p, "cka")) == sorted(
        [f"rotnet_squeezenet_synth_n8_{c}_s0_vs_vcop_squeezenet_synth_n8_{c}_s0"
         for c in ("C1", "C2")]
        + [f"{t}_squeezenet_synth_n8_{c}_s0_vs_finetune-synth" for t in ("rotnet", "vcop")
           for c in ("C1", "C2")])
    # one distilled student per teacher set (each cell asks for it) and one shared baseline
    assert sorted(labels(p, "distill")) == [
        "kd_squeezenet_synth_2t_s0", "kd_squeezenet_synth_2t_s0", "kd_squeezenet_synth_s0_none"]
    kd = [r for r in p.runs.values() if r.step == "distill" and r.deps]
    assert {r.columns["complexity"] for r in kd} == {"C1", "C2"}
    assert all(r.argv.count("--teacher") == 2 for r in kd)


BAD = [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"axes": {"task": ["rotnet"], "arch": ["squeezenet"], "colour": [1]}},
     "unknown axis 'colour'"),
    ({"axes": {"task": ["rotnot"], "arch": ["squeezenet"]}}, "unknown task 'rotnot'"),
    ({"axes": {"task": ["rotnet"], "arch": ["resnet9000"]}}, "unknown arch 'resnet9000'"),
    ({"axes": {"task": ["rotnet"], "arch": ["squeezenet"], "data": ["ucf"]}},
     "unknown data 'ucf'"),
    ({"axes": {"task": ["cvrl"], "arch": ["squeezenet"], "complexity": ["C2"]}},
     "task 'cvrl' has no level 'C2'"),
    ({"axes": {"task": ["rotnet"], "arch": ["squeezenet"], "subset": [0]}}, "axes.subset"),
    ({"pretrain": {"learning_rate": 0.1}}, "unknown option 'learning_rate' of `dalivssl pretrain`"),
    ({"pretrain": {"task": "vcop"}}, "'task' is set by the study"),
    ({"pretrain": {"batch_size": "many"}}, "pretrain.batch_size: 'many' is not a valid integer"),
    ({"steps": {"finetune": {"optimizer": "lion"}}}, "steps.finetune.optimizer"),
    ({"steps": {"finetune": {"data": ["nope"]}}}, "unknown dataset 'nope'"),
    ({"steps": {"train": {}}}, "unknown step 'train'"),
    ({"steps": {"robustness": {}}}, "needs a 'finetune' step"),
    ({"steps": {"cka": {"against": ["someone"]}}}, "'someone' is neither"),
    ({"steps": {"cka": {"against": [{"task": "prp"}]}}}, "not a cell of this study"),
    ({"steps": {"cka": {"against": ["probe"]}}}, "'probe' needs a 'probe' step"),
    ({"per": {"task": {"prp": {"pretrain": {}}}}}, "'prp' is not a value of axes.task"),
    ({"device": "tpu"}, "device: expected cpu or gpu"),
]
# values only the command's own check knew (review t3 #23: `run` failed them after the parents)
ROBUST = {"finetune": {"max_steps": 2}, "robustness": {"noises": ["gaussian"]}}
BAD += [
    ({"steps": {**ROBUST, "robustness": {"noises": ["gausian"]}}}, "unknown noise 'gausian'"),
    ({"steps": {**ROBUST, "robustness": {"severities": [9]}}}, "severit"),
    ({"pretrain": {"size": -5}}, "size must be >= 1, got -5"),
    ({"pretrain": {"batch_size": 0}}, "batch_size must be >= 1, got 0"),
    ({"axes": {"task": ["rotnet", "vcop"], "arch": ["squeezenet"], "data": ["synth"],
               "subset": [100000]}}, "subset size 100000 is larger than the manifest"),
    ({"steps": {"finetune": {"set": {"lr": -1}}}}, "lr must be > 0, got -1"),
    ({"pretrain": {"set": {"foo": 1}}}, "'foo'"),
    ({"per": {"task": {"vcop": {"pretrain": {"set": {"lr": -1}}}}}}, "lr must be > 0"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_validation_errors(tiny_data, change, message):
    with pytest.raises(DalivsslError) as exc:
        plan_of(study_dict(tiny_data, **change))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cli_reports_a_bad_file_in_one_line(tmp_path, tiny_data):
    path = write_study(tmp_path / "bad.yaml", study_dict(tiny_data, pretrain={"lr_max": 0.1}))
    res = run_cli("study", "plan", path)  # in this process (tests/conftest.py)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "bad.yaml: pretrain: unknown option" in res.stderr


def test_config_keys_without_a_flag_reach_the_run_and_bad_values_stop_the_study(tmp_path,
                                                                                 tiny_data):
    """A step's options are keys of its command's typed config (momentum and amp have no flag
    of `dalivssl finetune`): they go as --set and resolve as the command resolves them; a bad
    value stops `study run` in one line before anything starts."""
    steps = {"finetune": {"max_steps": 2, "momentum": 0.8, "lr": 1e-5, "set": {"amp": True}}}
    p = plan_of(study_dict(tiny_data, steps=steps))
    ft = [r for r in p.runs.values() if r.step == "finetune"][0]
    assert ft.argv[-8:] == ("--set", "amp=true", "--set", "lr=1.0e-05", "--set", "max_steps=2",
                            "--set", "momentum=0.8")
    cfg = run_config(p, ft)
    assert (cfg.momentum, cfg.amp, cfg.lr, cfg.max_steps) == (0.8, True, 1e-5, 2)
    assert cfg.pretrained == ft.structure["pretrained"] and cfg.test_data == str(tiny_data["test"])
    bad = {"finetune": {"max_steps": 2, "momentum": 1.5}}
    path = write_study(tmp_path / "bad.yaml", study_dict(tiny_data, steps=bad))
    res = run_cli("study", "run", path, "--out", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "steps.finetune.momentum: momentum must be in [0, 1), got 1.5" in res.stderr
    assert not (tmp_path / "out").exists()  # nothing started, no dir made


@pytest.mark.parametrize("name", preset_names())
def test_presets_validate_and_expand(name):
    p = expand(load_study(name))
    assert p.cells and p.runs
    steps = {r.step for r in p.runs.values()}
    assert "pretrain" in steps and len(steps) >= 2
    if name != "tiny-cpu":
        assert p.study.device == "gpu"


# tiny-cpu's runs (the embedded dataset: no data content in the hash) as study dirs made before
# options went as --set (d0c9596) named them: a rerun there finds them done, none is remade
OLD_NAMES = [
    "rotnet_squeezenet_embedded_n48_s0-d29756",
    "rotnet_squeezenet_embedded_n48_s0_ft-embedded-4cbff4",
    "rotnet_squeezenet_embedded_n48_s0_ret-embedded-2c6d15",
    "rotnet_squeezenet_embedded_n48_s0_rob-finetune-embedded-7aeab4",
    "vcop_squeezenet_embedded_n96_s0-52582f", "vcop_squeezenet_embedded_n96_s0_ft-embedded-a5672e",
    "vcop_squeezenet_embedded_n96_s0_ret-embedded-c279a3",
    "vcop_squeezenet_embedded_n96_s0_rob-finetune-embedded-08331c"]


def test_run_names_of_existing_study_dirs_stay():
    p = expand(load_study("tiny-cpu"))
    assert set(OLD_NAMES) <= set(p.runs)
    # cka runs changed: the clips are no longer copied from the pretraining into their options
    assert len(p.runs) == 18 and sum(r.step == "cka" for r in p.runs.values()) == 2


def test_commands_take_what_the_study_passes():
    """The runner passes --set to every step's command, --name and --threads where the
    command's config has the field, --resume where its RunSpec says (robustness: none)."""
    import importlib

    import click

    from dalivssl.cli import COMMANDS
    from dalivssl.runs import spec
    from dalivssl.study.spec import STEP_COMMANDS, config_fields

    for step, command in STEP_COMMANDS.items():
        module, attr, _ = COMMANDS[command]
        cmd = getattr(importlib.import_module(f"dalivssl.cli.{module}"), attr)
        flags = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        fields = config_fields(step)
        assert "--set" in flags and "--out" in flags, step
        assert ("--name" in flags) == ("name" in fields), step
        assert ("--threads" in flags) == ("threads" in fields), step
        assert ("--resume" in flags) == spec(command).resume_flag, step
