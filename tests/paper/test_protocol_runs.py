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
    from dalivssl.engine.trainer import resolve_optim

    spec = TASKS["videomae"].SPEC
    o = resolve_optim(PretrainConfig(task="videomae", warmup_epochs=40), spec, 8, 8000,
                      steps_per_epoch=10)
    assert o["warmup_steps"] == 400
    assert resolve_optim(PretrainConfig(task="videomae"), spec, 8, 8000)["warmup_steps"] == 400


def test_keep_epochs_writes_each_stage_with_its_own_record(tiny_synth, tmp_path):
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.engine.trainer import pretrain

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
    paper = train_loader(m, FinetuneConfig(size=32, clip_len=4, flip=True, protocol="paper"))
    assert paper.sampler.protocol == "paper" and paper.sampler.param_keys == ("crop",)
    b = next(iter(paper))
    orig = train_loader(m, FinetuneConfig(size=32, clip_len=4, flip=True))
    assert orig.sampler.param_keys == ("crop", "flip")
    assert b.clips.shape[-2:] == (32, 32)
