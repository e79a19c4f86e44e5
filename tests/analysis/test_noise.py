"""DALI noise graphs (pipelines/noise.py) against the imagecorruptions formulas (NumPy reference)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.noise import (CONSTANTS, NOISES, NoiseRunner, cell_seed, corrupt, dali_args,
                             noise_constant, parse_noises, parse_severities, reference_noise)

GREY = np.full((8, 96, 96, 3), 128, np.uint8)
# horizontal ramp 0..255 (covers dark, bright and saturating pixels)
RAMP = np.ascontiguousarray(np.broadcast_to(
    np.linspace(0, 255, 96).round().astype(np.uint8)[None, None, :, None], (8, 96, 96, 3)))


def test_constant_sets_match_spec():
    ic, sc = CONSTANTS["imagenet-c"], CONSTANTS["schiappa"]
    assert ic["gaussian"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert ic["shot"] == (60, 25, 12, 5, 3)
    assert ic["impulse"] == (0.03, 0.06, 0.09, 0.17, 0.27)
    assert ic["speckle"] == (0.15, 0.20, 0.35, 0.45, 0.60)
    assert sc["gaussian"] == ic["gaussian"] and sc["impulse"] == ic["impulse"]
    assert sc["shot"] == (250, 100, 50, 30, 15)
    assert sc["speckle"] == (0.15, 0.20, 0.25, 0.30, 0.35)
    # DALI mapping table of spec/noise.md §3
    assert dali_args("gaussian", 5) == pytest.approx({"stddev": 96.9})
    assert dali_args("shot", 3)["factor"] == pytest.approx(21.25)
    assert dali_args("shot", 5, "schiappa")["factor"] == pytest.approx(17.0)
    assert dali_args("impulse", 4) == {"prob": 0.17, "salt_vs_pepper": 0.5, "per_channel": True}
    assert dali_args("speckle", 3, "schiappa") == {"stddev": 0.25}


@pytest.mark.parametrize("constants", sorted(CONSTANTS))
@pytest.mark.parametrize("kind", NOISES)
def test_dali_matches_reference_statistics(kind, constants):
    """mean/std of (output − input) of DALI and the NumPy formula agree on the same inputs
    (clipping and truncation included), within sampling error."""
    rng = np.random.default_rng(123)
    for severity in (1, 3, 5):
        c = noise_constant(kind, severity, constants)
        for x in (GREY, RAMP):
            d = corrupt(x, kind, severity, constants, seed=severity).astype(np.float64) - x
            r = reference_noise(x, kind, c, rng).astype(np.float64) - x
            se = np.hypot(d.std(), r.std()) / np.sqrt(d.size)
            assert abs(d.mean() - r.mean()) < 5 * se + 0.05, (severity, d.mean(), r.mean())
            assert d.std() == pytest.approx(r.std(), rel=0.03, abs=0.3), severity


def test_floor_rounding_reproduces_truncation_and_round_does_not():
    x = np.full((4, 128, 128, 3), 128, np.uint8)  # 8σ from both ends at severity 1: no clipping
    floor = corrupt(x, "gaussian", 1, seed=3, rounding="floor").astype(np.float64) - 128
    rnd = corrupt(x, "gaussian", 1, seed=3, rounding="round").astype(np.float64) - 128
    ref = reference_noise(x, "gaussian", 0.08, np.random.default_rng(0)).astype(np.float64) - 128
    se = 20.4 / np.sqrt(x.size)
    assert floor.mean() == pytest.approx(-0.5, abs=5 * se)
    assert ref.mean() == pytest.approx(-0.5, abs=5 * se)  # np.uint8 truncation
    assert rnd.mean() == pytest.approx(0.0, abs=5 * se)
    assert floor.std() == pytest.approx(20.4, rel=0.02)
    # speckle and shot floor variants sit below their round variants as well
    for kind, sev in (("speckle", 2), ("shot", 1)):
        f = corrupt(x, kind, sev, seed=5, rounding="floor").astype(np.float64).mean()
        r = corrupt(x, kind, sev, seed=5, rounding="round").astype(np.float64).mean()
        assert 0.3 < r - f < 0.7, (kind, r - f)


def test_impulse_fraction_salt_pepper_and_per_channel():
    x = np.full((4, 128, 128, 3), 128, np.uint8)
    y = corrupt(x, "impulse", 5, seed=11)  # prob 0.27
    hit = y != 128
    assert set(np.unique(y[hit]).tolist()) == {0, 255}
    assert hit.mean() == pytest.approx(0.27, abs=0.005)
    assert (y[hit] == 255).mean() == pytest.approx(0.5, abs=0.01)
    # channels hit independently (skimage 's&p'): all three hit w.p. c³, not c
    all3 = hit.all(axis=-1).mean()
    assert all3 == pytest.approx(0.27 ** 3, abs=0.003)
    assert hit.any(axis=-1).mean() == pytest.approx(1 - 0.73 ** 3, abs=0.01)


def test_shot_is_poisson_in_photons():
    """Poisson(x/f)·f: variance = x·f grows with intensity; with an integer factor (IC severity 4:
    f = 51) every output is a multiple of it."""
    lo = np.full((4, 128, 128, 3), 64, np.uint8)
    hi = np.full((4, 128, 128, 3), 192, np.uint8)
    f = dali_args("shot", 1)["factor"]  # 4.25
    v_lo = corrupt(lo, "shot", 1, seed=1, rounding="round").astype(np.float64).var()
    v_hi = corrupt(hi, "shot", 1, seed=1, rounding="round").astype(np.float64).var()
    assert v_lo == pytest.approx(64 * f, rel=0.05)
    assert v_hi == pytest.approx(192 * f, rel=0.05)
    y = corrupt(RAMP, "shot", 4, seed=2)
    assert np.all(y % 51 == 0)
    assert len(np.unique(y)) == 6  # 0, 51, …, 255


def test_noise_independent_across_frames_and_samples():
    x = np.full((2, 6, 64, 64, 3), 100, np.uint8)  # identical frames and samples
    for kind in ("gaussian", "speckle", "shot"):
        y = corrupt(x, kind, 3, seed=0).astype(np.float64) - 100
        flat = y.reshape(12, -1)
        assert not any(np.array_equal(flat[0], flat[i]) for i in range(1, 12))
        corr = np.corrcoef(flat)[np.triu_indices(12, 1)]
        assert np.abs(corr).max() < 0.05, kind
    y = corrupt(x, "impulse", 3, seed=0)
    hits = (y != 100).reshape(12, -1)
    assert not np.array_equal(hits[0], hits[1])


def test_seed_reproducible_and_different_seeds_differ():
    x = RAMP[:4]
    for kind in NOISES:
        a = corrupt(x, kind, 2, seed=7)
        b = corrupt(x, kind, 2, seed=7)
        c = corrupt(x, kind, 2, seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_runner_cells_are_seeded_independently_of_other_cells():
    """A cell's noise depends on (seed, noise, severity) only, so resumed sweeps redraw it."""
    x = np.stack([RAMP[:4], GREY[:4]])
    full = NoiseRunner([("gaussian", 1), ("shot", 2), ("speckle", 3)], 2, seed=4).run_numpy(x)
    alone = NoiseRunner([("shot", 2)], 2, seed=4).run_numpy(x)
    np.testing.assert_array_equal(full[("shot", 2)], alone[("shot", 2)])
    np.testing.assert_array_equal(alone[("shot", 2)][0], corrupt(RAMP[:4], "shot", 2, seed=4))
    assert cell_seed(4, "shot", 2) != cell_seed(4, "shot", 3) != cell_seed(5, "shot", 3)
    # variable batch size up to the maximum
    one = NoiseRunner([("impulse", 1)], 3, seed=0).run_numpy(x[:1])[("impulse", 1)]
    assert one.shape == (1, 4, 96, 96, 3)


@pytest.mark.parametrize("shape", [(5, 32, 40, 3), (3, 4, 32, 40, 3), (4, 16, 16, 1)])
def test_shape_and_dtype_preserved(shape):
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for kind in NOISES:
        y = corrupt(x, kind, 4)
        assert y.shape == x.shape and y.dtype == np.uint8
        assert not np.array_equal(x, y)


def test_bad_arguments_raise_clear_errors():
    x = GREY[:2]
    with pytest.raises(ValueError, match="unknown noise 'fog'.*gaussian, shot, impulse, speckle"):
        corrupt(x, "fog", 1)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError, match="severity must be an integer 1..5"):
            corrupt(x, "gaussian", bad)
    with pytest.raises(ValueError, match="constant set 'foo'.*imagenet-c, schiappa"):
        corrupt(x, "gaussian", 1, constants="foo")
    with pytest.raises(ValueError, match="rounding"):
        corrupt(x, "gaussian", 1, rounding="ceil")
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.astype(np.float32), "gaussian", 1)
    with pytest.raises(ValueError, match=r"\(F,H,W,C\)"):
        corrupt(x[0], "gaussian", 1)
    with pytest.raises(ValueError, match="unknown noise 'x'"):
        reference_noise(x, "x", 0.1, np.random.default_rng())


def test_parsers():
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("5,1,3") == (1, 3, 5)
    assert parse_severities("1-2,4") == (1, 2, 4)
    assert parse_noises("shot, gaussian") == ("shot", "gaussian")
    for bad in ("0-2", "x", "", "6"):
        with pytest.raises(ValueError):
            parse_severities(bad)
    with pytest.raises(ValueError, match="unknown noise 'blur'"):
        parse_noises("gaussian,blur")


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, pipelines.noise; print('nvidia.dali' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.gpu
@pytest.mark.cuda_only
def test_corrupt_on_gpu_matches_cpu_statistics():
    for kind in NOISES:
        g = corrupt(RAMP, kind, 3, seed=1, device="gpu")
        c = corrupt(RAMP, kind, 3, seed=1, device="cpu")
        assert g.shape == RAMP.shape and g.dtype == np.uint8
        dg, dc = g.astype(np.float64) - RAMP, c.astype(np.float64) - RAMP
        assert abs(dg.mean() - dc.mean()) < 1.0
        assert dg.std() == pytest.approx(dc.std(), rel=0.03)
        np.testing.assert_array_equal(g, corrupt(RAMP, kind, 3, seed=1, device="gpu"))
