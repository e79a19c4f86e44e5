"""Finetuning / linear probe: metrics, training, frozen probe, checkpoint + results, CLI errors."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from dalivssl.errors import DalivsslError
from tests.analysis.test_features import TinyBackbone, make_batches
from tests.batches import BatchList
from tests.conftest import run_torchrun

# 6 videos, 3 classes; the class is the dominant colour channel (learnable by the tiny net)
COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.9, 0.1, 0), (0.1, 0.8, 0.1), (0, 0.2, 0.9)]
LABELS = [0, 1, 2, 0, 1, 2]


def _fake_data(tmp_path):
    """FinetuneData over manifests whose records need not exist (batches are hand-made)."""
    from dalivssl.engine.finetune import FinetuneData
    from dalivssl.data.manifest import Manifest, VideoRecord

    classes = ["red", "green", "blue"]
    recs = [VideoRecord(f"v{i}.webm", 40, label=LABELS[i], class_name=classes[LABELS[i]])
            for i in range(len(LABELS))]
    m = Manifest(tmp_path, recs, classes)
    return FinetuneData(m, m, classes, "train.jsonl", "test.jsonl")


def test_video_accuracy_uses_averaged_logits_not_votes():
    from dalivssl.engine.scoring import (clip_accuracy, confusion_matrix, video_accuracy,
                                            video_predictions)

    # video 0: one confident clip for class 0, two weak clips for class 1 -> mean logits say 0,
    # a majority vote would say 1. video 1: all clips say class 1.
    logits = np.array([[[5.0, 0.0], [0.0, 1.0], [0.0, 1.0]],
                       [[0.0, 2.0], [0.0, 3.0], [1.0, 0.0]]])
    targets = np.array([0, 1])
    assert video_predictions(logits).tolist() == [0, 1]
    assert video_accuracy(logits, targets) == 1.0
    assert clip_accuracy(logits, targets) == pytest.approx(3 / 6)
    assert video_accuracy(logits, np.array([1, 1])) == 0.5
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def _fit(model, batches, cfg, epochs, run_dir):
    """Train a Classifier with the engine's one loop over a fixed list of batches."""
    from dalivssl.engine.finetune import ClassifierTask, build_optimizer
    from dalivssl.engine.fit import FitConfig, fit, make_scheduler

    loader = BatchList(batches)
    opt = build_optimizer(model, cfg)
    sched = make_scheduler(opt, "constant", epochs * len(loader))
    res = fit(ClassifierTask(model), loader, opt, sched,
              FitConfig(epochs * len(loader), log_every=1, progress=False, tensorboard=False),
              run_dir, lambda final: {"kind": "test"})
    return opt, res


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 0.01)])
def test_training_loss_falls_on_fixed_tiny_set(optimizer, lr, tmp_path):
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.finetune import Classifier

    torch.manual_seed(0)
    batches = make_batches(COLOURS, LABELS, batch_size=3, noise=0.05)
    model = Classifier(TinyBackbone(), 3)
    opt, res = _fit(model, batches, FinetuneConfig(lr=lr, weight_decay=0.0, optimizer=optimizer),
                    10, tmp_path)
    assert type(opt).__name__.lower() == optimizer
    first, last = np.mean(res.losses[:2]), np.mean(res.losses[-2:])
    assert last < 0.5 * first, res.losses


def test_unknown_optimizer_is_a_one_line_error():
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.finetune import Classifier, build_optimizer

    with pytest.raises(DalivsslError, match="unknown optimizer 'lamb'; valid: sgd, adamw"):
        build_optimizer(Classifier(TinyBackbone(), 3), FinetuneConfig(optimizer="lamb"))


def test_linear_probe_freezes_backbone_weights_and_bn_stats(tmp_path):
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.finetune import Classifier

    torch.manual_seed(0)
    model = Classifier(TinyBackbone(), 3, frozen=True)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.weight.clone()
    model.train()
    assert not model.backbone.training and not model.backbone.bn.training
    opt, _ = _fit(model, make_batches(COLOURS, LABELS, batch_size=3, noise=0.1),
                  FinetuneConfig(lr=0.5, weight_decay=1e-3), 3, tmp_path)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # head weight + bias only
    after = model.backbone.state_dict()
    for k, v in before.items():  # includes bn.running_mean / running_var / num_batches_tracked
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, model.head.weight)
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_l2_norm_probe_features_have_unit_norm():
    from dalivssl.engine.finetune import Classifier

    model = Classifier(TinyBackbone(), 3, frozen=True, l2_norm=True).eval()
    f = model.features(make_batches(COLOURS[:2], LABELS[:2])[0].clips.flatten(0, 1))
    np.testing.assert_allclose(f.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_run_finetune_writes_checkpoint_record_results_and_plot(tmp_path):
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.runs.finetune import run_finetune
    from dalivssl.record import read_run_record
    from dalivssl.results import ResultsFile

    data = _fake_data(tmp_path)
    train = make_batches(COLOURS, LABELS, batch_size=3, noise=0.05)
    test = make_batches(COLOURS, LABELS, batch_size=4, clips=3, noise=0.05, seed=1)
    cfg = FinetuneConfig(arch="tiny", epochs=1, lr=0.1, eval_clips=3, clip_len=4, size=8,
                         progress=False)
    torch.manual_seed(0)
    res = run_finetune(cfg, data, TinyBackbone(), tmp_path / "run",
                       train_batches=BatchList(train), test_batches=test)
    assert res["epochs"] == 1 and res["step"] == 2 and res["name"] == "ft_scratch_tiny"
    ck = load_checkpoint(res["checkpoint"])
    for key in ("kind", "arch", "backbone", "head", "num_classes", "classes", "clip_len", "size",
                "normalize", "config", "versions", "step", "epoch", "record"):
        assert key in ck, key
    assert ck["kind"] == "finetune" and ck["arch"] == "tiny" and ck["num_classes"] == 3
    assert ck["classes"] == ["red", "green", "blue"]
    assert set(ck["head"]) == {"weight", "bias"} and ck["head"]["weight"].shape == (3, 8)
    assert ck["config"]["flip"] is True  # flip=None resolved from a manifest without direction
    assert ck["record"]["clip"] == {"clip_len": 4, "size": 8, "normalize": "imagenet"}
    assert ck["record"]["data_hash"] and ck["record"]["kind"] == "finetune"
    assert read_run_record(tmp_path / "run").status == "complete"
    assert (tmp_path / "run" / "finetune.png").stat().st_size > 10_000
    with ResultsFile(res["results"], "r") as rf:
        clip_acc, video_acc = rf.read("finetune", "clip_acc"), rf.read("finetune", "video_acc")
        assert 0.0 <= clip_acc <= 1.0 and 0.0 <= video_acc <= 1.0
        assert clip_acc == pytest.approx(res["clip_acc"])
        assert rf.read("finetune", "confusion").shape == (3, 3)
        assert rf.read("finetune", "confusion").sum() == 6
        assert rf.read("predictions", "video_index").tolist() == list(range(6))
        assert rf.read("predictions", "video_target").tolist() == LABELS
        assert rf.read("predictions", "clip_pred").shape == (6, 3)
        assert rf.read("predictions", "video_path")[0] == "v0.webm"
        assert rf.read("log", "step").tolist() == [1.0, 2.0]
        assert rf.meta()["kind"] == "finetune" and rf.meta()["record"]["name"] == res["name"]
    # a second run into the same dir is refused, not silently overwritten
    with pytest.raises(DalivsslError, match="already holds a checkpoint; pass --resume"):
        run_finetune(cfg, data, TinyBackbone(), tmp_path / "run",
                     train_batches=BatchList(train), test_batches=test)


class _CrashAt:
    """A loader that dies before batch ``n`` of the run (a killed process)."""

    def __init__(self, batches, n):
        self.inner, self.n, self.count = BatchList(batches), n, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for b in self.inner:
            self.count += 1
            if self.count > self.n:
                raise KeyboardInterrupt
            yield b


@pytest.mark.parametrize("probe", [False, True])
def test_resume_after_kill_is_bitwise_identical(tmp_path, probe):
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.runs.finetune import run_finetune

    data = _fake_data(tmp_path)
    train = make_batches(COLOURS, LABELS, batch_size=3, noise=0.05)
    test = make_batches(COLOURS, LABELS, batch_size=4, clips=2, noise=0.05, seed=1)
    cfg = FinetuneConfig(arch="tiny", epochs=4, lr=0.1, eval_clips=2, dropout=0.3,
                         linear_probe=probe, ckpt_every=2, log_every=1, progress=False)
    torch.manual_seed(0)
    full = run_finetune(cfg, data, TinyBackbone(), tmp_path / "full",
                        train_batches=BatchList(train), test_batches=test)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # dies after step 5, mid-epoch; last save at step 4
        run_finetune(cfg, data, TinyBackbone(), tmp_path / "cut",
                     train_batches=_CrashAt(train, 5), test_batches=test)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    torch.manual_seed(123)  # resume must not depend on the caller's RNG: restored from the file
    res = run_finetune(cfg, data, TinyBackbone(), tmp_path / "cut", resume=True,
                       train_batches=BatchList(train), test_batches=test)
    assert res["epochs"] == 4 and res["step"] == 8
    rows = list(csv.DictReader(open(tmp_path / "cut" / "finetune_log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    # cosine per step: the last of 8 steps (index 7) ran at lr * 0.5 * (1 + cos(7π/8))
    assert float(rows[-1]["lr"]) == pytest.approx(0.1 * 0.5 * (1 + np.cos(7 * np.pi / 8)))
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(res["checkpoint"])
    for part in ("head", "backbone"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    assert res["clip_acc"] == full["clip_acc"]


def test_resume_with_other_settings_is_refused(tmp_path):
    from dataclasses import replace

    from dalivssl.config import FinetuneConfig
    from dalivssl.runs.finetune import run_finetune

    data = _fake_data(tmp_path)
    train = make_batches(COLOURS, LABELS, batch_size=3)
    cfg = FinetuneConfig(arch="tiny", max_steps=2, eval_clips=1, progress=False)
    run_finetune(cfg, data, TinyBackbone(), tmp_path / "r", train_batches=BatchList(train),
                 test_batches=make_batches(COLOURS, LABELS))
    with pytest.raises(DalivsslError, match=r"cannot resume with other settings \(batch_size: 8 "
                                            r"→ 4; lr: 0.001 → 0.5\)"):
        run_finetune(replace(cfg, batch_size=4, lr=0.5), data, TinyBackbone(), tmp_path / "r",
                     resume=True, train_batches=BatchList(train),
                     test_batches=make_batches(COLOURS, LABELS))


def test_max_steps_stops_mid_epoch(tmp_path):
    from dalivssl.config import FinetuneConfig
    from dalivssl.runs.finetune import run_finetune

    cfg = FinetuneConfig(arch="tiny", max_steps=3, eval_clips=1, progress=False)
    res = run_finetune(cfg, _fake_data(tmp_path), TinyBackbone(), tmp_path / "r",
                       train_batches=BatchList(make_batches(COLOURS, LABELS, batch_size=3)),
                       test_batches=make_batches(COLOURS, LABELS))
    assert res["step"] == 3 and res["epochs"] == 2


# ---------------------------------------------------------------------------------------- CLI
def _main_error(capsys, argv):
    from dalivssl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def _c7_checkpoint(path, arch, backbone_state):
    torch.save({"kind": "pretrain", "arch": arch, "backbone": backbone_state, "head": {},
                "config": {}, "versions": {}, "step": 0, "epoch": 0, "task": "vcop"}, path)
    return path


def test_cli_missing_manifest_is_one_line_exit_2(tmp_path, capsys):
    code, err = _main_error(capsys, ["finetune", "--random-init", "--arch", "shufflenet",
                                     "--data", str(tmp_path / "missing.jsonl")])
    assert code == 2 and len(err.splitlines()) == 1
    assert "missing.jsonl" in err and "not found" in err


def test_cli_wrong_arch_checkpoint(tmp_path, capsys, tiny_synth):
    ck = _c7_checkpoint(tmp_path / "pre.pt", "shufflenet", TinyBackbone().state_dict())
    code, err = _main_error(capsys, ["finetune", "--checkpoint", str(ck), "--arch", "r3d",
                                     "--data", str(tiny_synth["train"]),
                                     "--test-data", str(tiny_synth["test"])])
    assert code == 2 and len(err.splitlines()) == 1
    assert "pre.pt" in err and "'shufflenet'" in err and "'r3d'" in err


def test_cli_weights_of_another_model(tmp_path, capsys, tiny_synth):
    pytest.importorskip("models")
    ck = _c7_checkpoint(tmp_path / "pre.pt", "shufflenet", TinyBackbone().state_dict())
    code, err = _main_error(capsys, ["finetune", "--checkpoint", str(ck),
                                     "--data", str(tiny_synth["train"]),
                                     "--test-data", str(tiny_synth["test"])])
    assert code == 2 and len(err.splitlines()) == 1
    assert "pre.pt" in err and "do not fit" in err


@pytest.mark.slow
def test_cli_finetune_end_to_end(tmp_path, tiny_synth):
    """Pretrained C7 checkpoint -> DALI loader -> finetune on the tiny synthetic dataset."""
    pytest.importorskip("pipelines.loader")
    models = pytest.importorskip("models")
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.checkpoint import load_checkpoint, save_checkpoint
    from dalivssl.results import ResultsFile

    torch.manual_seed(1)
    pre = models.create_backbone("r3d")
    pre_state = {k: v.clone() for k, v in pre.state_dict().items()}
    save_checkpoint(tmp_path / "pre.pt", kind="pretrain", arch="r3d", backbone=pre_state,
                    head={}, config={"clip_len": 8, "size": 32, "normalize": "unit"},
                    versions={}, step=5, epoch=1, task="vcop")
    out = tmp_path / "ft"
    args = ["finetune", "--checkpoint", str(tmp_path / "pre.pt"), "--data",
            str(tiny_synth["train"]), "--test-data", str(tiny_synth["test"]), "--max-steps", "2",
            "--batch-size", "2", "--eval-clips", "2", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["kind"] == "finetune" and ck["arch"] == "r3d" and ck["num_classes"] == 3
    # clip settings and normalisation come from the pretrained checkpoint
    assert (ck["clip_len"], ck["size"], ck["normalize"]) == (8, 32, "unit")
    assert ck["step"] == 2 and ck["head"]["weight"].shape == (3, 512)
    # synthetic classes name directions (move_right, spin_cw): no flip unless asked for
    assert ck["config"]["flip"] is False
    # training started from the pretrained weights (and moved them)
    w = "stem.0.weight" if "stem.0.weight" in pre_state else next(
        k for k in pre_state if k.endswith("weight") and pre_state[k].dim() == 5)
    delta = (ck["backbone"][w] - pre_state[w]).abs().max().item()
    assert 0 < delta < 0.5 * pre_state[w].abs().max().item()
    with ResultsFile(out / "finetune.h5", "r") as rf:
        assert 0 <= rf.read("finetune", "clip_acc") <= 1
        assert 0 <= rf.read("finetune", "video_acc") <= 1
        n_test = len(rf.read("predictions", "video_index"))
        assert rf.read("predictions", "clip_pred").shape == (n_test, 2)
    assert n_test == len(load_manifest(tiny_synth["test"]))


def test_record_of_legacy_checkpoints_follows_the_pretext_task():
    from dalivssl.record import record_of

    assert record_of({"normalize": "unit"}).clip.normalize == "unit"
    assert record_of({"config": {"normalize": "imagenet"}, "task": "vcop"}).clip.normalize == \
        "imagenet"
    pytest.importorskip("pipelines.samplers")
    assert record_of({"task": "vcop", "config": {}}).clip.normalize == "unit"  # VCOP: [0,1]
    assert record_of({"task": "rotnet", "config": {}}).clip.normalize == "imagenet"
    assert record_of({"task": "nope", "config": {}}).clip.normalize == "imagenet"


@pytest.mark.slow
def test_finetune_under_torchrun_ddp_two_cpu_processes(tmp_path, tiny_synth):
    """The one engine's DDP path for finetuning: 2 gloo processes, sharded loaders, one writer.
    The evaluation is sharded too: each rank scores 2 of the 3 (odd) test videos, one of them the
    padded repeat, and the gathered result is what one process computes on the checkpoint."""
    import yaml

    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.engine.features import eval_loader
    from dalivssl.engine.finetune import load_classifier
    from dalivssl.engine.scoring import evaluate
    from dalivssl.results import ResultsFile

    out = tmp_path / "ddp"
    p = run_torchrun(29533, "finetune", "--random-init", "--arch", "shufflenet", "--clip-len",
                     "16", "--size", "48", "--batch-size", "2", "--threads", "1", "--data",
                     tiny_synth["train"], "--test-data", tiny_synth["test"], "--max-steps", "2",
                     "--eval-clips", "2", "--out", out, "--no-progress", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 2 and ck["loader"]["shard"] == [0, 2]
    assert isinstance(ck["rng"], list) and len(ck["rng"]) == 2
    assert "optimizer" in ck and ck["record"]["status"] == "complete"  # final, still resumable
    # rank 0 states the shards: 2 + 2 videos decoded and scored, 3 distinct (once, no drop)
    assert p.stderr.count("evaluation sharded over 2 ranks: 2 + 2 test videos evaluated "
                          "(3 distinct)") == 1, p.stderr[-2000:]
    # the same checkpoint scored by one process on the whole test set
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    test = load_manifest(tiny_synth["test"])
    model, _ = load_classifier(out / "checkpoint.pt")
    one = evaluate(model, eval_loader(test, 2, 2, 16, 48, seed=cfg["seed"],
                                      normalize=cfg["normalize"]), 3)
    assert one.per_rank == () and len(one.targets) == 3
    with ResultsFile(out / "finetune.h5", "r") as rf:
        assert rf.attrs("finetune", "video_acc")["videos"] == 3
        assert float(rf.read("finetune", "video_acc")) == one.video_acc
        assert float(rf.read("finetune", "clip_acc")) == one.clip_acc
        assert rf.read("predictions", "video_index").tolist() == one.indices.tolist() == [0, 1, 2]
        assert rf.read("predictions", "video_target").tolist() == one.targets.tolist()
        assert rf.read("predictions", "video_pred").tolist() == one.video_pred.tolist()
        assert rf.read("predictions", "clip_pred").tolist() == \
            one.clip_logits.argmax(-1).tolist()
        assert rf.read("finetune", "confusion").tolist() == one.confusion.tolist()
        np.testing.assert_allclose(rf.read("predictions", "video_logits"),
                                   one.clip_logits.mean(axis=1), rtol=1e-4, atol=1e-5)
        assert [str(v) for v in rf.read("predictions", "video_path")] == \
            [r.path for r in test.records]


def test_dependent_defaults_resolve_once_in_the_config():
    """lr and weight decay default from l2_norm / linear_probe unless given (flag, file or --set)."""
    from dalivssl.config import FinetuneConfig, resolve

    assert (FinetuneConfig().resolved().lr, FinetuneConfig().resolved().weight_decay) == (1e-3, 5e-4)
    assert FinetuneConfig(l2_norm=True).resolved().lr == 0.1
    assert FinetuneConfig(linear_probe=True).resolved().weight_decay == 0.0
    assert resolve(FinetuneConfig, None, {"l2_norm": True}, ["lr=0.02"]).resolved().lr == 0.02
    probe = resolve(FinetuneConfig, None, {"linear_probe": True, "weight_decay": 1e-4}).resolved()
    assert probe.weight_decay == 1e-4


def test_finetune_with_amp_trains_in_bf16(tmp_path):
    """amp=True: bf16 autocast of the training forward (on CPU too); recorded, finite, and not
    the fp32 numbers."""
    import yaml

    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.runs.finetune import run_finetune

    seen = []

    class Recording(TinyBackbone):
        def forward_features(self, x):
            out = super().forward_features(x)
            seen.append(out.dtype) if torch.is_grad_enabled() else None
            return out

    data, train = _fake_data(tmp_path), make_batches(COLOURS, LABELS, batch_size=3, noise=0.05)
    test = make_batches(COLOURS, LABELS, batch_size=4, noise=0.05, seed=1)
    losses = {}
    for amp in (False, True):
        cfg = FinetuneConfig(arch="tiny", max_steps=3, lr=0.1, eval_clips=1, log_every=1,
                             progress=False, amp=amp)
        torch.manual_seed(0)
        seen.clear()
        res = run_finetune(cfg, data, Recording(), tmp_path / str(amp),
                           train_batches=BatchList(train), test_batches=test)
        assert seen == [torch.bfloat16 if amp else torch.float32] * 3
        losses[amp] = [h["loss"] for h in res["history"]]
        assert load_checkpoint(res["checkpoint"])["record"]["settings"]["amp"] is amp
        assert yaml.safe_load((tmp_path / str(amp) / "config.yaml").read_text())["amp"] is amp
    assert np.all(np.isfinite(losses[True])) and losses[True] != losses[False]


@pytest.mark.slow
def test_cli_finetune_with_set_amp_true(tmp_path, tiny_synth):
    """`finetune --set amp=true` on the DALI loader: trains, evaluates, records amp."""
    import yaml
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.engine.checkpoint import load_checkpoint

    out = tmp_path / "ft"
    res = CliRunner().invoke(cli, [
        "finetune", "--random-init", "--arch", "shufflenet", "--clip-len", "16", "--size", "48",
        "--batch-size", "2", "--threads", "1", "--data", str(tiny_synth["train"]),
        "--test-data", str(tiny_synth["test"]), "--max-steps", "2", "--eval-clips", "1",
        "--set", "amp=true", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["step"] == 2 and ck["record"]["status"] == "complete"
    assert ck["record"]["settings"]["amp"] is True
    assert yaml.safe_load((out / "config.yaml").read_text())["amp"] is True
    rows = (out / "finetune_log.csv").read_text().splitlines()
    assert len(rows) == 3 and all(np.isfinite(float(r.split(",")[2])) for r in rows[1:])
