"""Noise where the paper puts it (--noise-at decoded: before the resize, the reference code's
order) vs at model resolution, and the per-cell class-balanced video subsets (--videos-per-cell)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dalivssl.engine import robustness as rb
from dalivssl.errors import DalivsslError
from dalivssl.results import ResultsFile
from tests.analysis.test_robustness import _oracle, _sweep, flat_manifest  # noqa: F401

pytest.importorskip("nvidia.dali")


def test_decoded_noise_equals_noise_then_resize_and_differs_from_model():
    from pipelines.noise import NoiseRunner

    rng = np.random.default_rng(0)
    x = rng.integers(30, 220, (2, 3, 48, 48, 3), dtype=np.uint8)
    cell = ("gaussian", 3)
    dec = NoiseRunner([cell], 2, seed=5, out_size=(16, 16))
    assert dec.outputs == [("clean", 0), cell]
    got = dec.run_numpy(x)
    resize = NoiseRunner([], 2, out_size=(16, 16))  # the same resize, no noise
    noisy_full = NoiseRunner([cell], 2, seed=5).run_numpy(x)[cell]
    want = resize.run_numpy(noisy_full)[("clean", 0)]
    clean = resize.run_numpy(x)[("clean", 0)]
    assert np.abs(got[cell].astype(int) - want.astype(int)).max() <= 1
    np.testing.assert_array_equal(got[("clean", 0)], clean)
    at_model = NoiseRunner([cell], 2, seed=5).run_numpy(clean)[cell]
    sd_dec = np.std(got[cell].astype(float) - clean)
    sd_model = np.std(at_model.astype(float) - clean)
    # σ = 0.18·255 ≈ 46 at model resolution; a 3× antialiased downscale averages most of it
    # away
    assert sd_model > 35 and sd_dec < sd_model / 2


def test_sweep_with_noise_at_decoded_is_its_own_cache_key(flat_manifest, tmp_path):  # noqa: F811
    side = rb.decoded_side(flat_manifest)
    assert side == 42  # 48-px frames: 112/128 of the short side
    dec = rb.SweepSettings(noises=("gaussian",), severities=(5,), clips_per_video=1,
                           noise_at="decoded", decoded_size=side)
    (s,) = _sweep(flat_manifest, [_oracle()], tmp_path / "r.h5", dec)
    assert s["clean_acc"] == 1.0 and 0.0 <= s["accuracy"][0, 0] <= 1.0
    with ResultsFile(tmp_path / "r.h5", "r") as res:
        stored = json.loads(res.read("robustness/oracle", "settings"))
    assert stored["noise_at"] == "decoded" and stored["decoded_size"] == 42
    model = rb.SweepSettings(noises=("gaussian",), severities=(5,), clips_per_video=1)
    with pytest.raises(DalivsslError, match="noise_at"):
        _sweep(flat_manifest, [_oracle()], tmp_path / "r.h5", model)
    with pytest.raises(DalivsslError, match="decoded_size"):
        rb.SweepSettings(noise_at="decoded").check()


def test_videos_per_cell_subsets_are_seeded_class_balanced_and_per_cell():
    targets = np.repeat([0, 1, 2], 10)
    a = rb.cell_subset(targets, 7, 0, ("shot", 1))
    assert a.sum() == 7 and sorted(np.bincount(targets[a]).tolist()) == [2, 2, 3]
    np.testing.assert_array_equal(a, rb.cell_subset(targets, 7, 0, ("shot", 1)))
    assert not np.array_equal(a, rb.cell_subset(targets, 7, 0, ("shot", 2)))
    assert rb.cell_subset(targets, 0, 0, ("shot", 1)).all()
    assert rb.cell_subset(targets, 99, 0, ("shot", 1)).all()
    # the paper's offline sets: gaussian on all videos, the others 400 / 550
    assert [rb.cell_videos(c, "paper") for c in (rb.CLEAN, ("gaussian", 1), ("shot", 1),
                                                 ("speckle", 4))] == [0, 0, 400, 550]


def test_sweep_accuracy_is_over_the_cell_subset(flat_manifest, tmp_path):  # noqa: F811
    s = rb.SweepSettings(noises=("impulse",), severities=(1, 2), clips_per_video=1,
                         videos_per_cell=3)
    _sweep(flat_manifest, [_oracle()], tmp_path / "r.h5", s)
    with ResultsFile(tmp_path / "r.h5", "r") as res:
        g = "robustness/oracle"
        assert res.attrs(g, "cells/clean")["videos"] == 6
        for c in ("impulse_1", "impulse_2"):
            mask = res.read(g, f"subsets/{c}").astype(bool)
            pred, tg = res.read(g, f"cells/{c}"), res.read(g, "targets")
            assert mask.sum() == 3 and res.attrs(g, f"cells/{c}")["videos"] == 3
            assert sorted(np.bincount(tg[mask]).tolist()) == [1, 1, 1]
            assert res.attrs(g, f"cells/{c}")["accuracy"] == pytest.approx(
                np.mean(pred[mask] == tg[mask]))
