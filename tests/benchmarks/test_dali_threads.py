"""G5: finetune and `bench sweep` give DALI its own thread count (8 on a GPU for parallel NVDEC
sessions, 2 on a CPU, or the one asked for), not torch's ``--threads``."""
from __future__ import annotations

import json

import pytest

from dalivssl.config import FinetuneConfig
from dalivssl.errors import DalivsslError


def test_finetune_loaders_take_dali_threads_not_torch_threads(tiny_synth, monkeypatch):
    from dalivssl.data.manifest import load_manifest
    from dalivssl.engine import finetune as ft

    assert ft.loader_threads(FinetuneConfig(device="cuda", threads=1)) == 8
    assert ft.loader_threads(FinetuneConfig(device="cpu", threads=1)) == 2
    assert ft.loader_threads(FinetuneConfig(device="cuda", threads=1, dali_threads=3)) == 3
    with pytest.raises(DalivsslError, match="dali_threads must be >= 1, got 0"):
        FinetuneConfig(dali_threads=0).check()
    loader = ft.train_loader(load_manifest(tiny_synth["train"]),
                             FinetuneConfig(size=32, clip_len=4, threads=1, dali_threads=3))
    assert loader.num_threads == 3


def test_bench_sweep_gives_dali_its_threads(tiny_synth, tmp_path, monkeypatch):
    from benchmarks import sweep_cost
    from dalivssl.engine import robustness as rb

    seen = []
    real = rb.dali_source

    def spy(*a, **kw):
        seen.append(kw["num_threads"])
        return real(*a, **kw)

    monkeypatch.setattr(rb, "dali_source", spy)
    base = ["--data", str(tiny_synth["test"]), "--clip-len", "4", "--size", "32",
            "--clips-per-video", "1", "--batch-size", "2", "--videos", "2"]
    for extra, want in (([], 2), (["--dali-threads", "3"], 3)):
        out = tmp_path / f"sweep{want}.json"
        sweep_cost.cli.main(base + extra + ["--out", str(out)], standalone_mode=False)
        assert set(seen) == {want} and json.loads(out.read_text())["dali_threads"] == want
        seen.clear()
