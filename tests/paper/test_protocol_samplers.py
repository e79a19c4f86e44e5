"""The benchmark's protocol in the samplers (Kumar et al. supp. C.3): rotation, flip, colour
jitter and a varying crop for VCOP/RotNet/PRP only under ``protocol='paper'``; CVRL's gamma;
the finetune/eval centre crop; the gamma op of the DALI graph against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from dalivssl.data.manifest import VideoRecord
from pipelines.samplers import SAMPLERS
from pipelines.samplers.base import PAPER_ROTATION
from pipelines.types import sample_rng

REC = VideoRecord("cls/long.webm", num_frames=400, label=2, width=320, height=240)


def _plans(name, protocol, n=60, **kw):
    s = SAMPLERS[name](clip_len=16, size=112, protocol=protocol, **kw)
    return s, [s.plan(REC, sample_rng(0, 0, i)) for i in range(n)]


def _stack(plans, key):
    return np.concatenate([np.asarray(p.params[key]).reshape(len(p.params["crop"]), -1)
                           for p in plans])


@pytest.mark.parametrize("name", ["vcop", "rotnet", "prp"])
def test_paper_plans_carry_rotation_flip_jitter_and_a_varying_crop(name):
    s, plans = _plans(name, "paper")
    for key in ("angle", "flip", "brightness", "contrast", "saturation", "hue"):
        assert key in s.param_keys and all(key in p.params for p in plans)
    flips = _stack(plans, "flip").ravel()
    assert set(flips.tolist()) == {0, 1}
    crops = _stack(plans, "crop")
    assert len({tuple(c[:2].round(5)) for c in crops}) > 5  # the offset varies
    np.testing.assert_allclose(crops[:, 2:], [[112 / 128, 112 / (128 * 4 / 3)]] * len(crops),
                               rtol=1e-5)
    angles = _stack(plans, "angle").ravel()
    if name == "rotnet":  # the label's 90° step plus the C.3 rotation
        labels = np.repeat([p.label for p in plans], 1)
        jitter = angles - 90.0 * labels
    else:
        jitter = angles
    assert np.all(np.abs(jitter) <= PAPER_ROTATION) and np.std(jitter) > 2.0
    bright = _stack(plans, "brightness").ravel()
    assert (bright != 1.0).mean() > 0.5 and np.all((bright >= 0.6) & (bright <= 1.4))


@pytest.mark.parametrize("name", ["vcop", "rotnet", "prp"])
def test_original_plans_have_no_paper_augmentation(name):
    s, plans = _plans(name, "original")
    if name == "rotnet":  # CtP: flip and colour, angle only the label's multiples of 90
        angles = _stack(plans, "angle").ravel()
        assert set((angles % 90).tolist()) == {0.0} and "contrast" not in s.param_keys
    else:  # VCOP: a crop only; PRP: the fixed centre crop
        assert s.param_keys == ("crop",)
        assert all(set(p.params) == {"crop"} for p in plans)
    if name == "prp":
        assert len({tuple(c) for c in _stack(plans, "crop")}) == 1


def test_paper_keeps_the_temporal_plan_and_the_labels():
    for name in ("vcop", "rotnet", "prp"):
        _, orig = _plans(name, "original", n=10)
        _, paper = _plans(name, "paper", n=10)
        if name != "rotnet":  # RotNet's label is drawn before the augmentation in both
            for a, b in zip(orig, paper):
                np.testing.assert_array_equal(a.frames, b.frames)
                assert a.label == b.label


def test_cvrl_paper_adds_gamma_only_under_paper():
    s, plans = _plans("cvrl", "paper")
    g = _stack(plans, "gamma").ravel()
    assert "gamma" in s.param_keys and (g != 1.0).mean() > 0.5
    assert np.all((g >= 1 / 1.5 - 1e-6) & (g <= 1.5 + 1e-6))
    s, plans = _plans("cvrl", "original")
    assert "gamma" not in s.param_keys and all("gamma" not in p.params for p in plans)


def test_finetune_sampler_under_paper_is_resize_and_centre_crop():
    """Supp. C.3 "Resize and Center Crop": at 112 from 320×240 the short side goes to 128, so
    the crop box is [y0, x0, h, w] = [1/16, (1 − 112/170.67)/2, 0.875, 0.65625], never flipped."""
    box = [(1 - 0.875) / 2, (1 - 112 / (128 * 4 / 3)) / 2, 0.875, 112 / (128 * 4 / 3)]
    s, plans = _plans("eval", "paper", n=30, random=True)
    assert s.param_keys == ("crop",)
    for p in plans:
        np.testing.assert_allclose(p.params["crop"][0], box, rtol=1e-6)
        assert "flip" not in p.params
    assert len({int(p.frames[0, 0]) for p in plans}) > 1  # the start stays random
    _, orig = _plans("eval", "original", n=30, random=True)
    assert len({tuple(p.params["crop"][0]) for p in orig}) > 1
    _, test = _plans("eval", "paper", n=2, num_clips=3)
    np.testing.assert_allclose(test[0].params["crop"], [box] * 3, rtol=1e-6)


def test_unknown_protocol_fails_in_one_line():
    with pytest.raises(ValueError, match="protocol must be one of original, paper"):
        SAMPLERS["vcop"](protocol="benchmark")


def test_gamma_op_matches_numpy():
    pytest.importorskip("nvidia.dali")
    from tests.pipelines.test_loader_augment import _run_one

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for g in (0.7, 1.0, 1.4):
        out = _run_one(frame, {"crop": [[0, 0, 1, 1]], "gamma": [g]}, (8, 8))
        want = 255.0 * (frame / 255.0) ** g
        assert np.abs(out - want).max() <= 1.0


def test_cvrl_paper_plans_run_through_the_loader(tiny_synth):
    """The DALI graph applies a plan's gamma (and the rest) end to end."""
    pytest.importorskip("nvidia.dali")
    from dalivssl.data.manifest import load_manifest
    from pipelines.loader import PretextLoader

    m = load_manifest(tiny_synth["train"])
    loader = PretextLoader("cvrl", m, 2, clip_len=4, size=32, protocol="paper", num_threads=1)
    assert "gamma" in loader.sampler.param_keys
    batch = next(iter(loader))
    assert tuple(batch.clips.shape) == (2, 2, 3, 4, 32, 32)
    assert bool(((batch.clips >= 0) & (batch.clips <= 1)).all())
