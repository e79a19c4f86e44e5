"""SIGINT/SIGTERM during training: the step finishes, a checkpoint is saved at that step, the
run stops with the resume hint (exit 128 + signal), and --resume reaches the same weights
(review t3 #54, #55: nothing was saved and up to ckpt_every - 1 steps were lost)."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.analysis.test_features import TinyBackbone, make_batches
from tests.analysis.test_finetune import COLOURS, LABELS, _CrashAt, _fake_data
from tests.batches import BatchList


class _SignalAt(_CrashAt):
    """A loader that sends ``sig`` to this process while serving batch ``n`` of the run."""

    def __init__(self, batches, n, sig):
        super().__init__(batches, n)
        self.sig = sig

    def __iter__(self):
        for b in self.inner:
            self.count += 1
            if self.count == self.n:
                os.kill(os.getpid(), self.sig)
            yield b


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, sig):
    from dalivssl.config import FinetuneConfig
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.engine.fit import Interrupted
    from dalivssl.runs.finetune import run_finetune

    data = _fake_data(tmp_path)
    train = make_batches(COLOURS, LABELS, batch_size=3, noise=0.05)
    test = make_batches(COLOURS, LABELS, batch_size=4, clips=2, noise=0.05, seed=1)
    cfg = FinetuneConfig(arch="tiny", epochs=4, lr=0.1, eval_clips=2, ckpt_every=50,
                         log_every=1, progress=False)
    torch.manual_seed(0)
    full = run_finetune(cfg, data, TinyBackbone(), tmp_path / "full",
                        train_batches=BatchList(train), test_batches=test)
    before = signal.getsignal(sig)
    torch.manual_seed(0)
    with pytest.raises(Interrupted) as exc:
        run_finetune(cfg, data, TinyBackbone(), tmp_path / "cut",
                     train_batches=_SignalAt(train, 3, sig), test_batches=test)
    assert signal.getsignal(sig) is before  # the handlers are given back
    assert exc.value.exit_code == 128 + sig
    msg = str(exc.value)
    assert f"{signal.Signals(sig).name} at step 3 of 8" in msg and "--resume" in msg
    assert str(tmp_path / "cut" / "checkpoint.pt") in msg
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["record"]["status"] != "complete"
    res = run_finetune(cfg, data, TinyBackbone(), tmp_path / "cut", resume=True,
                       train_batches=BatchList(train), test_batches=test)
    assert res["step"] == 8
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(res["checkpoint"])
    for part in ("head", "backbone"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"


def test_the_cli_exits_128_plus_the_signal(monkeypatch, capsys):
    import click

    from dalivssl import cli
    from dalivssl.engine.fit import Interrupted

    @click.command("stopped")
    def stopped():
        raise Interrupted("x: SIGTERM at step 3 of 8; checkpoint saved", signal.SIGTERM)

    monkeypatch.setitem(cli.COMMANDS, "stopped", ("finetune", "stopped", ""))
    import dalivssl.cli.finetune as mod

    monkeypatch.setattr(mod, "stopped", stopped, raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["stopped"])
    assert exc.value.code == 143
    assert "SIGTERM at step 3 of 8; checkpoint saved" in capsys.readouterr().err
