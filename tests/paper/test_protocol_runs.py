"""``protocol: paper`` resolved for a run (sampler protocol, TDL K = 500), warmup in epochs and
the kept training stages (``keep_epochs``: epoch_<E>.pt with its own record)."""
from __future__ import annotations

import pytest
import torch

from dalivssl.config import PretrainConfig
from dalivssl.errors import DalivsslError
from dalivssl.tasks import TASKS, resolve_options


def test_paper_protocol_options_and_explicit_values_win():
    opts = resolve_options(PretrainConfig(task="tdl", data="x", protocol="paper"))
    assert opts["sampler"]["protocol"] == "paper" and opts["head"]["queue_size"] == 500
    opts = resolve_options(PretrainConfig(task="tdl", data="x"))
    assert "protocol" not in opts["sampler"] and "queue_size" not in opts["head"]
    own = resolve_options(PretrainConfig(task="tdl", data="x", protocol="paper",
                                         head={"queue_size": 64}))
    assert own["head"]["queue_size"] == 64
    with pytest.raises(DalivsslError, match="protocol must be one of original, paper"):
        PretrainConfig(protocol="benchmark").check()
    with pytest.raises(DalivsslError, match="keep_epochs: 3 is not an epoch"):
        PretrainConfig(epochs=2, keep_epochs=(3,)).check()


def test_warmup_in_epochs():
    from dalivssl.engine.optim import resolve_optim

    spec = TASKS["videomae"].SPEC
    o = resolve_optim(PretrainConfig(task="videomae", warmup_epochs=40), spec, 8, 8000,
                      steps_per_epoch=10)
    assert o["warmup_steps"] == 400
    assert resolve_optim(PretrainConfig(task="videomae"), spec, 8, 8000)["warmup_steps"] == 400


def test_keep_epochs_writes_each_stage_with_its_own_record(tiny_synth, tmp_path):
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.runs.pretrain import pretrain

    cfg = PretrainConfig(task="rotnet", arch="r21d", data=str(tiny_synth["train"]), clip_len=4,
                         size=32, batch_size=4, epochs=3, threads=1, out=str(tmp_path / "r"),
                         progress=False, tensorboard=False, protocol="paper",
                         keep_epochs=(1, 2))
    summary = pretrain(cfg)
    run = tmp_path / "r"
    per_epoch = summary["steps"] // 3
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    last = load_checkpoint(run / "checkpoint.pt")
    assert last["config"]["sampler"]["protocol"] == "paper"
    assert last["config"]["protocol"] == "paper"
    weights = []
    for e in (1, 2):
        ck = load_checkpoint(run / f"epoch_{e}.pt")
        assert ck["step"] == e * per_epoch and ck["stage"] == e
        assert ck["record"]["status"] == "complete" and ck["record"]["settings"]["stage"] == e
        assert ck["record"]["name"] == f"rotnet_r21d@{e}"
        weights.append(next(iter(ck["backbone"].values())))
    weights.append(next(iter(last["backbone"].values())))
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_finetune_train_loader_under_paper_is_a_centre_crop(tiny_synth):
    from dalivssl.config import FinetuneConfig
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine.finetune import train_loader

    m = load_manifest(tiny_synth["train"])
    paper = train_loader(m, FinetuneConfig(size=32, clip_len=4, flip=True,
                                           protocol="paper"))
    assert paper.sampler.protocol == "paper" and paper.sampler.param_keys == ("crop",)
    b = next(iter(paper))
    orig = train_loader(m, FinetuneConfig(size=32, clip_len=4, flip=True))
    assert orig.sampler.param_keys == ("crop", "flip")
    assert b.clips.shape[-2:] == (32, 32)


def test_videomae_sampling_rate_per_dataset_and_the_original_row():
    from types import SimpleNamespace

    from dalivssl.tasks import dataset_overrides
    from dalivssl.engine.explain import explain

    ssv2 = SimpleNamespace(meta={"format": "ssv2"})
    assert dataset_overrides("videomae", ssv2)["sampler"] == {"sampling_rate": 2}
    assert dataset_overrides("videomae", SimpleNamespace(meta={"format": "kinetics"})) == {
        "sampler": {}, "head": {}, "backbone": {}}
    assert dataset_overrides("vcop", ssv2)["sampler"] == {}
    text = explain(PretrainConfig(task="videomae", arch="vit_s", data="x"))
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    assert "2048 (32 × 64 GPUs)" in rows["batch_size"] and "801" in rows["epochs"]
    assert "40 epochs" in rows["warmup"]


def test_trainer_applies_the_ssv2_rate_under_the_configs_own(tiny_synth, monkeypatch):
    """The trainer reads the manifest's format: an SSv2 manifest samples VideoMAE at rate 2,
    an explicit sampler.sampling_rate wins."""
    from types import SimpleNamespace

    from dalivssl.engine import trainer

    real = trainer._manifest

    def as_ssv2(cfg):
        m = real(cfg)
        m.meta = {**m.meta, "format": "ssv2"}
        return m

    monkeypatch.setattr(trainer, "_manifest", as_ssv2)
    seen = {}

    class Stop(Exception):
        pass

    def fake_loader(task, manifest, batch, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr("pipelines.loader.PretextLoader", fake_loader)
    for own, want in (({}, 2), ({"sampling_rate": 3}, 3)):
        cfg = PretrainConfig(task="videomae", arch="vit_s", data=str(tiny_synth["train"]),
                             sampler=own)
        with pytest.raises(Stop):
            trainer._build(cfg, TASKS["videomae"], SimpleNamespace(rank=0, world=1))
        assert seen["sampling_rate"] == want
