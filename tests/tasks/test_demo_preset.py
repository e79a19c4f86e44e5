"""Benchmark-faithful defaults: with --data every task runs with its original's settings; the demo
preset (no --data) changes a few, says so on screen and records them; --explain puts every
resolved setting beside the original's."""
from __future__ import annotations

import pytest
import torch
import yaml

from dalivssl.config import PretrainConfig, check_options
from dalivssl.tasks import TASKS, demo_overrides, resolve_options


def test_demo_preset_applies_only_without_data():
    demo = resolve_options(PretrainConfig(task="vcop"))
    assert demo["head"] == {"feature_norm": "batch", "backbone_pass": "joint"}
    assert demo["backbone"] == {"zero_init_residual": True}
    assert demo["demo"] == {"head.feature_norm": "batch", "head.backbone_pass": "joint",
                            "backbone.zero_init_residual": True}
    real = resolve_options(PretrainConfig(task="vcop", data="train.jsonl"))
    assert real == {"demo": {}, "sampler": {"num_clips": 3}, "head": {}, "backbone": {}}
    # explicit values win over the preset, and are then not reported as the preset's
    mine = resolve_options(PretrainConfig(task="vcop", head={"feature_norm": "none"},
                                          backbone={"zero_init_residual": False}))
    assert mine["head"] == {"feature_norm": "none", "backbone_pass": "joint"}
    assert mine["demo"] == {"head.backbone_pass": "joint"}
    assert resolve_options(PretrainConfig(task="vcop", arch="r21d"))["backbone"] == {}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_originals_and_differences(name):
    from models import create_backbone
    from pipelines.samplers import SAMPLERS

    task = TASKS[name]
    assert task.DIFFERENCES and all(isinstance(d, str) and d for d in task.DIFFERENCES)
    assert task.ORIGINAL["clip_len"] == 16 and "lr" in task.ORIGINAL
    demo = demo_overrides(name, "shufflenet")
    check_options(f"{name} head", task.build_head, demo["head"])
    check_options(f"{name} sampler", SAMPLERS[task.SPEC["sampler"]], demo["sampler"])
    create_backbone("shufflenet", **demo["backbone"])
    # the SPEC's own defaults are the original's wherever ORIGINAL names the setting
    head_keys = {k.split(".", 1)[1]: v for k, v in task.ORIGINAL.items() if k.startswith("head.")}
    import inspect

    defaults = {n: p.default for n, p in inspect.signature(task.build_head).parameters.items()}
    for k, v in head_keys.items():
        if k in defaults and not isinstance(v, str) and k not in ("num_classes", "num_clips",
                                                                   "speeds"):
            assert defaults[k] == v, (name, k)


def test_shufflenet_reference_init_by_default():
    from models import create_backbone

    ref = create_backbone("shufflenet")
    zero = create_backbone("shufflenet", zero_init_residual=True)
    assert torch.all(ref.layer1[1].bn3.weight == 1)
    assert torch.all(zero.layer1[1].bn3.weight == 0)
    assert TASKS["vcop"].build_head(ref).norm.__class__ is torch.nn.Identity  # feature_norm none


@pytest.fixture
def embedded_is_tiny(monkeypatch, tiny_synth):
    """The embedded dataset (no --data) replaced by the session's tiny one."""
    from dalivssl.data import synth
    from dalivssl.data.manifest import load_manifest

    monkeypatch.setattr(synth, "resolve_manifest",
                        lambda data, split="test": (tiny_synth["train"],
                                                    load_manifest(data or tiny_synth["train"])))


@pytest.mark.parametrize("with_data", [False, True])
@pytest.mark.parametrize("task,arch,clip_len,size", [("vcop", "r21d", 8, 32),
                                                    ("rotnet", "shufflenet", 16, 48)])
def test_trainer_records_the_preset(task, arch, clip_len, size, with_data, embedded_is_tiny,
                                    tiny_synth, tmp_path, capsys):
    from dalivssl.runs.pretrain import pretrain

    out = tmp_path / "run"
    cfg = PretrainConfig(task=task, arch=arch, clip_len=clip_len, size=size, batch_size=2,
                         max_steps=1, threads=1, out=str(out), tensorboard=False,
                         data=str(tiny_synth["train"]) if with_data else None)
    pretrain(cfg)
    err = " ".join(capsys.readouterr().err.split())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    preset = {"vcop": "head.feature_norm=batch, head.backbone_pass=joint",
              "rotnet": "backbone.zero_init_residual=True"}
    if with_data:
        assert saved["backbone"] == {} and ckpt["backbone_kwargs"] == {}
        assert "demo preset" not in err
        if task == "vcop":
            assert saved["head"].get("feature_norm", "none") == "none"  # the default
    else:
        assert f"demo preset (no --data): {preset[task]};" in err
        if task == "vcop":
            assert saved["head"]["feature_norm"] == "batch" and saved["backbone"] == {}
            assert saved["head"]["backbone_pass"] == "joint"
        else:
            assert saved["backbone"] == {"zero_init_residual": True}
            assert ckpt["backbone_kwargs"] == {"zero_init_residual": True}


def _explain(argv, capsys) -> tuple[dict, str]:
    from dalivssl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", *argv, "--explain"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines()[3:]
            if ln.startswith("  ") and not ln.startswith("  -")}
    return rows, text


def test_explain_prints_settings_beside_the_originals(capsys):
    rows, text = _explain(["--task", "tdl", "--arch", "r21d", "--set", "sampler.jitter=all"],
                          capsys)
    assert rows["sampler.jitter"] == ["all", "all", "one_of", "≠"]  # this run, paper, original
    assert rows["head.shuffle_groups"] == ["1", "1", "1"]
    assert rows["lr"] == ["0.003", "0.003", "0.003"]
    assert rows["size"] == ["64", "64", "224", "≠"]
    assert rows["head.queue_size"][:3] == ["5000", "500", "5000"]  # the paper: K = 500 for TDL
    assert rows["head.queue_size"][-1] != "≠"
    assert "rotation: U(±10°) per clip (paper gives no value" not in text  # TDL keeps its own
    assert "Known differences from the original:" in text and "Rotation after the crop" in text
    assert "demo preset" not in text  # r21d: the preset changes nothing for tdl
    rows, text = _explain(["--task", "vcop"], capsys)
    assert rows["head.feature_norm"] == ["batch", "batch", "none", "≠"]
    assert rows["backbone.zero_init_residual"] == ["True", "True", "False", "≠"]
    assert ("demo preset (no --data): head.feature_norm=batch, head.backbone_pass=joint, "
            "backbone.zero_init_residual=True" in " ".join(text.split()))
    assert rows["head.backbone_pass"] == ["joint", "joint", "position", "≠"]
    assert ("rotation: U(±10°) per clip (paper gives no value; from TDL's RandomRotation(10))"
            in text)
    rows, text = _explain(["--task", "vcop", "--data", __file__], capsys)
    assert rows["head.feature_norm"] == ["none", "none", "none"]
    assert rows["head.backbone_pass"] == ["position", "position", "position"]
    assert rows["backbone.zero_init_residual"] == ["False", "False", "False"]
    assert rows["sampler.protocol"] == ["original", "paper", "original"]
    assert "demo preset" not in text
