"""Samplers (contract C3): exact frame arithmetic, labels, parameter ranges, determinism and the
short-video policies of every pretext sampler. Pure numpy; fixed rngs."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from dalivssl.data.manifest import VideoRecord
from pipelines.samplers import SAMPLERS, TooShort, create_sampler
from pipelines.samplers.base import IDENTITY, PARAM_DTYPES, random_resized_box
from pipelines.samplers.cvrl import draw_interval, interval_cdf
from pipelines.types import PARAM_KEYS, ClipPlan, sample_rng


@dataclass(frozen=True)
class Rec:
    """The minimum a sampler needs (RecordLike), without dalivssl."""

    path: str
    num_frames: int
    label: int = -1
    start_frame: int = 0
    end_frame: int = -1
    width: int = 0
    height: int = 0


# Long enough for every sampler with default options (PRP at rate 8 needs 129).
LONG = VideoRecord("cls/long.webm", num_frames=400, label=2, width=320, height=240,
                   start_frame=13, end_frame=380)
OPTS = {"eval": {"num_clips": 3}}


def make(name, **kw):
    return SAMPLERS[name](**{**OPTS.get(name, {}), **kw})


def rngs(n, seed=0):
    return (sample_rng(seed, 0, i) for i in range(n))


def same_plan(a: ClipPlan, b: ClipPlan) -> bool:
    def eq(x, y):
        return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    return (np.array_equal(a.frames, b.frames) and a.label == b.label and eq(a.params, b.params)
            and eq(a.extra_frames, b.extra_frames) and eq(a.extras, b.extras))


def check_boxes(crop):
    assert crop.dtype == np.float32 and crop.shape[-1] == 4
    y0, x0, h, w = crop.T
    assert np.all(h > 0) and np.all(w > 0)
    assert np.all(y0 >= -1e-6) and np.all(x0 >= -1e-6)
    assert np.all(y0 + h <= 1 + 1e-6) and np.all(x0 + w <= 1 + 1e-6)


def is_centred(crop):
    y0, x0, h, w = np.asarray(crop, np.float64).T
    return np.allclose(y0, (1 - h) / 2, atol=1e-6) and np.allclose(x0, (1 - w) / 2, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# every sampler

def test_registry_names_and_isolation():
    from dalivssl.tasks import TASKS

    # one sampler per pretext task, plus the evaluation sampler
    assert set(SAMPLERS) == {t.SPEC["sampler"] for t in TASKS.values()} | {"eval"}
    with pytest.raises(KeyError, match="valid: cvrl, eval"):
        create_sampler("nope")
    code = ("import sys, pipelines.samplers; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'dalivssl', 'nvidia')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_attributes_and_docstring(name):
    s = make(name)
    assert s.num_clips >= 1 and s.clip_len >= 1 and s.min_frames >= 1
    assert s.normalize in ("imagenet", "unit")
    assert s.out_size == (112, 112)
    assert set(s.param_keys) <= set(PARAM_KEYS) and "crop" in s.param_keys
    doc = type(s).__doc__
    assert "spec" in doc.lower() or "Original" in doc
    assert "Short video" in doc or "short video" in doc.lower()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_plan_shapes_types_and_range(name):
    s = make(name)
    start, end = LONG.start_frame, LONG.end_frame
    for rng in rngs(40):
        p = s.plan(LONG, rng)
        assert p.frames.dtype == np.int64 and p.frames.shape == (s.num_clips, s.clip_len)
        every = p.all_frames()
        assert every.min() >= start and every.max() < end
        assert set(p.params) == set(s.param_keys)
        for k, v in p.params.items():
            assert v.dtype == PARAM_DTYPES[k] and v.shape[0] == s.num_clips, k
        check_boxes(p.params["crop"])
        for k in ("flip", "gray", "solarize"):
            if k in p.params:
                assert set(np.unique(p.params[k])) <= {0, 1}
        if name != "eval":
            assert 0 <= p.label < max(s.num_classes, 1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_rng_same_plan_and_index_changes_plan(name):
    s = make(name, **({"random": True, "num_clips": 1} if name == "eval" else {}))
    a = s.plan(LONG, sample_rng(5, 2, 17))
    b = s.plan(LONG, sample_rng(5, 2, 17))
    assert same_plan(a, b)
    others = [s.plan(LONG, sample_rng(5, 2, i)) for i in range(18, 22)]
    assert not any(same_plan(a, o) for o in others)
    assert not same_plan(a, s.plan(LONG, sample_rng(5, 3, 17)))  # other epoch


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_start_frame_offset_is_applied(name):
    s = make(name)
    base = Rec("v.webm", 300, width=320, height=240)
    shifted = Rec("v.webm", 300 + 50, start_frame=50, end_frame=350, width=320, height=240)
    for i in range(5):
        a = s.plan(base, sample_rng(1, 0, i))
        b = s.plan(shifted, sample_rng(1, 0, i))
        np.testing.assert_array_equal(b.frames, a.frames + 50)
        for k in a.extra_frames:
            np.testing.assert_array_equal(b.extra_frames[k], a.extra_frames[k] + 50)
        assert a.label == b.label


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_augment_false_centre_crop_identity_colour(name):
    s = make(name, augment=False)
    for rng in rngs(10):
        p = s.plan(LONG, rng)
        assert is_centred(p.params["crop"]), p.params["crop"]
        for k, v in p.params.items():
            if k == "crop" or (k == "angle" and name == "rotnet"):
                continue
            assert np.all(v == IDENTITY[k]), (k, v)
        assert not set(p.params) & {"brightness", "contrast", "saturation", "hue", "gray",
                                    "blur_sigma", "solarize", "flip"}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_unknown_and_bad_options(name):
    with pytest.raises(TypeError, match=f"{name} sampler: unknown option.*bogus"):
        SAMPLERS[name](bogus=1)
    with pytest.raises(ValueError, match="clip_len"):
        SAMPLERS[name](clip_len=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_empty_video_raises_too_short(name):
    rec = Rec("empty.webm", 0)
    with pytest.raises(TooShort, match="empty.webm"):
        make(name).plan(rec, sample_rng(0, 0, 0))


def test_too_short_message_and_type():
    err = TooShort("a/b.webm", 64, 40, "vcop")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.webm: too short for vcop: needs 64 usable frames, has 40"
    assert (err.path, err.need, err.have) == ("a/b.webm", 64, 40)


# ------------------------------------------------------------------------------------------------
# RotNet

def test_rotnet_fixed_stride_contiguous_and_uniform_start():
    s = SAMPLERS["rotnet"](stride=3, temporal_jitter=False)
    rec = Rec("r.webm", 60, start_frame=0)
    starts = set()
    for rng in rngs(400):
        f = s.plan(rec, rng).frames[0]
        np.testing.assert_array_equal(np.diff(f), 3)
        starts.add(int(f[0]))
    assert starts == set(range(0, 60 - 46 + 1))  # [0, L − (s(T−1)+1)]


def test_rotnet_temporal_jitter_and_stride_set():
    s = SAMPLERS["rotnet"](strides=(4,))
    rec = Rec("r.webm", 200)
    jittered = False
    for rng in rngs(100):
        f = s.plan(rec, rng).frames[0]
        d = np.diff(f)
        assert np.all(d >= 1) and np.all(d <= 2 * 4 - 1)  # per-frame jitter in [0, s−1]
        assert 15 * 4 - 3 <= f[-1] - f[0] <= 15 * 4 + 3
        jittered |= bool(np.any(d != 4))
    assert jittered
    spans = {int(np.round((p.frames[0, -1] - p.frames[0, 0]) / 15))
             for p in (SAMPLERS["rotnet"](temporal_jitter=False).plan(rec, r) for r in rngs(300))}
    assert spans == {1, 2, 3, 4, 5}


def test_rotnet_short_video_clamps_to_last_frame():
    s = SAMPLERS["rotnet"](stride=1)
    p = s.plan(Rec("s.webm", 30, start_frame=20), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames[0], 20 + np.minimum(np.arange(16), 9))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_rotnet_label_is_rotation_class(n):
    s = SAMPLERS["rotnet"](num_rotations=n)
    assert s.num_classes == n
    labels = []
    for rng in rngs(200):
        p = s.plan(LONG, rng)
        assert p.params["angle"][0] == 90.0 * p.label
        labels.append(p.label)
    assert set(labels) == set(range(n))
    with pytest.raises(ValueError, match="num_rotations"):
        SAMPLERS["rotnet"](num_rotations=5)


def test_rotnet_scale_crop_boxes_and_photometric_rates():
    s = SAMPLERS["rotnet"]()
    sizes = {(round(112 / h, 5), round(112 / w, 5)) for h, w in ((112, 149), (128, 171),
                                                               (144, 192))}
    ps = [s.plan(LONG, rng).params for rng in rngs(1500)]
    seen = {(round(float(p["crop"][0, 2]), 5), round(float(p["crop"][0, 3]), 5)) for p in ps}
    assert seen == sizes
    b = np.array([p["brightness"][0] for p in ps])
    sat = np.array([p["saturation"][0] for p in ps])
    hue = np.array([p["hue"][0] for p in ps])
    assert "contrast" not in ps[0]  # CtP's contrast is a gain without mean: in the brightness
    assert 0.30 < np.mean(b != 1.0) < 0.42  # brightness (p 0.2) or contrast (p 0.2): 0.36
    assert np.all(b >= 0.75 * np.exp(-0.2) - 1e-6) and np.all(b <= 1.25 * np.exp(0.2) + 1e-6)
    assert b.max() > 1.25 and b.min() < 0.75  # both on: product of the two
    assert 0.13 < np.mean(sat != 1.0) < 0.27
    assert np.all(np.abs(np.log(sat)) <= 0.1 + 1e-6)  # exp(U(±0.1))
    assert np.all(np.abs(hue) <= 24) and np.abs(hue).max() > 20  # ±12 OpenCV H units = ±24°
    assert np.array_equal(sat != 1.0, hue != 0.0)  # hue and saturation go together
    assert 0.45 < np.mean([p["flip"][0] for p in ps]) < 0.55


# ------------------------------------------------------------------------------------------------
# VCOP

def test_vcop_lexicographic_labels_tl3():
    s = SAMPLERS["vcop"](num_clips=3)
    expected = {(0, 1, 2): 0, (0, 2, 1): 1, (1, 0, 2): 2, (1, 2, 0): 3, (2, 0, 1): 4,
                (2, 1, 0): 5}
    assert {o: s.label_of(o) for o in expected} == expected


@pytest.mark.parametrize("tl,classes", [(3, 6), (4, 24), (5, 120)])
def test_vcop_every_class_maps_to_its_order(tl, classes):
    s = SAMPLERS["vcop"](num_clips=tl)
    assert s.num_classes == classes and s.num_clips == tl
    for i, order in enumerate(itertools.permutations(range(tl))):
        assert s.label_of(order) == i
    assert s.window == 16 * tl + 8 * (tl - 1)
    rec = Rec("v.webm", s.window + 30, start_frame=4, end_frame=s.window + 30)
    seen = set()
    for rng in rngs(30 * classes if tl < 5 else 400):
        p = s.plan(rec, rng)
        order = s.permutations[p.label]
        starts = p.frames[:, 0] - 4
        # each clip is a contiguous 16-frame run
        np.testing.assert_array_equal(p.frames - p.frames[:, :1], np.tile(np.arange(16), (tl, 1)))
        # unshuffle: clip at position k is original clip order[k]
        unshuffled = np.empty_like(p.frames)
        unshuffled[list(order)] = p.frames
        np.testing.assert_array_equal(np.diff(unshuffled[:, 0]), 16 + 8)
        assert np.all(np.diff(unshuffled.reshape(-1)) > 0)
        assert starts.min() >= 0 and starts.max() + 15 < rec.end_frame - 4
        seen.add(p.label)
    if tl < 5:
        assert seen == set(range(classes))
    else:
        assert len(seen) > 90


def test_vcop_start_range_and_too_short():
    s = SAMPLERS["vcop"]()  # window 64
    rec = Rec("v.webm", 69)
    starts = {int(s.plan(rec, r).frames.min()) for r in rngs(200)}
    assert starts == set(range(0, 6))  # [0, L − window] inclusive
    assert {int(s.plan(Rec("v.webm", 64), r).frames.min()) for r in rngs(20)} == {0}
    with pytest.raises(TooShort) as info:
        s.plan(Rec("short/v.webm", 80, start_frame=17), sample_rng(0, 0, 0))
    assert "short/v.webm" in str(info.value) and "64" in str(info.value) and "63" in str(
        info.value)
    assert s.min_frames == 64


def test_vcop_independent_crops_per_clip():
    s = SAMPLERS["vcop"]()
    p = s.plan(LONG, sample_rng(0, 0, 3))
    crop = p.params["crop"]
    assert crop.shape == (3, 4)
    np.testing.assert_allclose(crop[:, 2:], [[112 / 128, 112 / 171]] * 3, rtol=1e-6)
    differ = sum(not np.allclose(c[0], c[1]) for c in
                 (s.plan(LONG, r).params["crop"] for r in rngs(20)))
    assert differ >= 15
    assert s.normalize == "unit" and set(p.params) == {"crop"}


def test_vcop_brightness_jitter_per_clip():
    plain = SAMPLERS["vcop"]()
    s = SAMPLERS["vcop"](brightness=0.5)
    assert s.param_keys == ("crop", "brightness") and plain.param_keys == ("crop",)
    b = np.stack([s.plan(LONG, r).params["brightness"] for r in rngs(200)])
    assert b.shape == (200, 3) and b.dtype == np.float32
    assert b.min() >= 0.5 and b.max() <= 1.5 and b.min() < 0.55 and b.max() > 1.45
    assert np.mean(b[:, 0] != b[:, 1]) == 1.0  # independent per clip
    # frames and label do not depend on the jitter (same rng stream up to the crops)
    for r1, r2 in zip(rngs(20), rngs(20)):
        p, q = s.plan(LONG, r1), plain.plan(LONG, r2)
        np.testing.assert_array_equal(p.frames, q.frames)
        assert p.label == q.label
    assert set(SAMPLERS["vcop"](brightness=0.5, augment=False).param_keys) == {"crop"}
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="brightness must be in"):
            SAMPLERS["vcop"](brightness=bad)


# ------------------------------------------------------------------------------------------------
# PRP

def test_prp_rate_label_and_default_classes():
    s = SAMPLERS["prp"]()
    assert s.num_classes == 4 and s.min_frames == 16 * 8 + 1
    labels = set()
    for rng in rngs(100):
        p = s.plan(LONG, rng)
        rate = (1, 2, 4, 8)[p.label]
        np.testing.assert_array_equal(np.diff(p.frames[0]), rate)
        assert int(p.extras["rate"]) == rate and int(p.extras["motion_len"]) == 4 * rate
        labels.add(p.label)
    assert labels == {0, 1, 2, 3}
    for rates, n in (((1, 2), 2), ((1, 2, 4), 3)):
        assert SAMPLERS["prp"](rates=rates).num_classes == n
    with pytest.raises(ValueError, match="even"):
        SAMPLERS["prp"](rates=(1, 3))


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_prp_recon_and_motion_indices(s):
    smp = SAMPLERS["prp"](rates=(s,))
    rec = Rec("p.webm", 16 * s + 40, start_frame=9)
    for rng in rngs(10):
        p = smp.plan(rec, rng)
        start = int(p.frames[0, 0])
        np.testing.assert_array_equal(p.frames[0], start + s * np.arange(16))
        recon, flags = p.extra_frames["recon"], p.extras["recon_flags"]
        assert recon.shape == (32,) and flags.shape == (32,)
        if s == 1:
            np.testing.assert_array_equal(recon[0::2], p.frames[0])
            np.testing.assert_array_equal(recon[1::2], p.frames[0])  # left neighbour
            np.testing.assert_array_equal(flags, [1, 0] * 16)
        else:
            np.testing.assert_array_equal(recon, start + (s // 2) * np.arange(32))
            np.testing.assert_array_equal(recon[0::2], p.frames[0])
            np.testing.assert_array_equal(flags, np.ones(32))
        motion = p.extra_frames["motion"]
        assert motion.shape == (4 * s,)  # max(rates) = s here
        expect = start + (np.arange(s)[:, None] * 16 + np.array([0, 5, 10, 15])).reshape(-1)
        np.testing.assert_array_equal(motion, expect)
        assert motion.max() < start + 16 * s


def test_prp_motion_padding_is_fixed_length():
    smp = SAMPLERS["prp"]()
    for rng in rngs(30):
        p = smp.plan(LONG, rng)
        m, n = p.extra_frames["motion"], int(p.extras["motion_len"])
        assert m.shape == (32,)
        assert np.all(m[n:] == m[n - 1]) and np.all(np.diff(m[:n]) > 0)


def test_prp_start_rule_and_too_short():
    smp = SAMPLERS["prp"](rates=(4,))
    rec = Rec("p.webm", 64 + 3)  # raw start in [0, 2], then −1 if > 0 → {0, 0, 1}
    starts = np.array([smp.plan(rec, r).frames[0, 0] for r in rngs(900)])
    assert set(starts) == {0, 1}
    assert 0.6 < np.mean(starts == 0) < 0.73
    assert smp.plan(Rec("p.webm", 65), sample_rng(0, 0, 0)).frames[0, 0] == 0
    with pytest.raises(TooShort, match=r"p\.webm: too short for prp at rate 4: needs 65 usable "
                                       r"frames, has 64"):
        smp.plan(Rec("p.webm", 64), sample_rng(0, 0, 0))
    # default rates on a 40-frame video: rates 1 and 2 plan, 4 and 8 raise (the loader skips)
    d = SAMPLERS["prp"]()
    ok, short = set(), 0
    for r in rngs(100):
        try:
            ok.add(int(d.plan(Rec("p.webm", 40), r).extras["rate"]))
        except TooShort as e:
            short += 1
            assert e.need in (65, 129) and e.have == 40
    assert ok == {1, 2} and short > 20


def test_prp_too_short_is_permanent_only_below_every_rate():
    """D1: a video too short for the drawn rate is short for that draw only; too short for the
    smallest rate (T·min(rates)+1) it is a bad video."""
    d = SAMPLERS["prp"]()
    flags = set()
    for r in rngs(60):
        try:
            d.plan(Rec("p.webm", 40), r)
        except TooShort as e:
            flags.add(e.permanent)
    assert flags == {False}
    for r in rngs(10):
        with pytest.raises(TooShort) as info:
            d.plan(Rec("p.webm", 16), r)
        assert info.value.permanent
    with pytest.raises(TooShort) as info:  # {2, 4}: 32 frames serve no rate (needs 33)
        SAMPLERS["prp"](rates=(2, 4)).plan(Rec("p.webm", 32), sample_rng(0, 0, 0))
    assert info.value.permanent


def test_prp_short_videos_survive_four_epochs_at_the_rates_they_serve(tmp_path):
    """D1 through the loader's planning: 20 videos of 100 frames (rates 1, 2, 4 but not 8) among
    20 long ones stay in the run for 4 epochs and are planned only at the rates they can serve;
    a 10-frame video (no rate) is the only one skipped. A sample whose video is too short for its
    rate takes the next video at the same rate (the original draws another video at that rate)."""
    from dalivssl.data.manifest import Manifest
    from pipelines.loader import PretextLoader

    lengths = [100] * 20 + [400] * 20 + [10]
    recs = []
    for i, n in enumerate(lengths):
        (tmp_path / f"v{i}.webm").write_bytes(b"x")  # planning reads the bytes, never decodes
        recs.append(VideoRecord(f"v{i}.webm", n, label=0))
    loader = PretextLoader("prp", Manifest(tmp_path, recs), batch_size=4, seed=3)
    rates_of_short: dict[int, set] = {}
    for epoch in range(4):
        for b in range(len(loader)):
            for idx, plan in loader.batch_plans(epoch, b):
                rate = int(plan.extras["rate"])
                assert lengths[idx] >= 16 * rate + 1
                if lengths[idx] == 100:
                    rates_of_short.setdefault(idx, set()).add(rate)
        assert loader.skipped == {"too short for the task": 1}, epoch
    assert set(loader._bad) == {40}
    assert len(rates_of_short) == 20  # every short video still trains in epoch 4's run
    assert set().union(*rates_of_short.values()) == {1, 2, 4}
    # the replacement keeps the sample's rate: same rate as the rng's first draw
    order = loader.shard_order(0)
    for pos in range(8):
        idx, plan, _ = loader._plan_one(order, pos, 0)
        g = pos
        drawn = (1, 2, 4, 8)[int(sample_rng(3, 0, g).integers(4))]
        assert int(plan.extras["rate"]) == drawn


def test_prp_centre_crop_always():
    p = SAMPLERS["prp"]().plan(LONG, sample_rng(0, 0, 0))
    np.testing.assert_allclose(p.params["crop"][0], [8 / 128, 29.5 / 171, 112 / 128, 112 / 171],
                               rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# CVRL

def _tf_bisection(u, d):
    """The original's loop, written out (float bisection of the CDF against u)."""
    k_low, k_up, k = 0.0, float(d), math.floor(d / 2.0)
    while abs(k_up - k_low) > 1.0:
        if interval_cdf(k, d) > u:
            k_low, k_up, k = k_low, k, math.floor((k + k_low) / 2.0)
        else:
            k_low, k_up, k = k, k_up, math.floor((k_up + k) / 2.0)
    return int(k)


def test_cvrl_interval_matches_bisection():
    rng = np.random.default_rng(0)
    for d in (1, 2, 3, 7, 50, 201, 1000):
        for u in np.concatenate([rng.random(200), [0.0, 1e-12, 0.5, 1 - 1e-12]]):
            assert draw_interval(float(u), d) == _tf_bisection(float(u), d), (u, d)


def test_cvrl_delta_follows_linear_density():
    s = SAMPLERS["cvrl"]()  # T 16, stride 2
    length = 230
    d = length - 15 * 2
    rng = np.random.default_rng(1)
    draws = np.array([s.offsets(length, rng) for _ in range(20000)])
    o1, o2, delta = draws.T
    assert np.array_equal(np.abs(o1 - o2), delta)
    assert o1.min() >= 0 and np.maximum(o1, o2).max() <= d - 1
    assert 0.47 < np.mean(o1 > o2) < 0.53  # randomly swapped
    k = np.arange(d)
    p = np.array([interval_cdf(i + 1, d) - interval_cdf(i, d) for i in k])
    assert abs(p.sum() - 1) < 1e-9
    emp_cdf = np.cumsum(np.bincount(delta, minlength=d)) / len(delta)
    assert np.max(np.abs(emp_cdf - np.cumsum(p))) < 0.015  # KS distance
    # E[Δ] = D/3 for the continuous density; flooring removes 1/2
    assert abs(delta.mean() - (d / 3 - 0.5)) < 1.5
    assert abs(np.dot(k, p) - (d / 3 - 0.5)) < 0.01


def test_cvrl_frames_and_short_video_wrap():
    s = SAMPLERS["cvrl"]()
    rec = Rec("c.webm", 100, start_frame=3)
    for rng in rngs(20):
        p = s.plan(rec, rng)
        np.testing.assert_array_equal(np.diff(p.frames, axis=1), 2)
        assert int(p.extras["delta"]) == abs(int(p.frames[0, 0]) - int(p.frames[1, 0]))
    short = Rec("c.webm", 25, start_frame=5)  # L = 20 ≤ 30 → offsets uniform, indices wrap
    firsts = set()
    for rng in rngs(50):
        f = s.plan(short, rng).frames - 5
        for row in f:
            np.testing.assert_array_equal(row, (row[0] + 2 * np.arange(16)) % 20)
        firsts.update(f[:, 0].tolist())
    assert len(firsts) > 12


def test_cvrl_view_parameters():
    s = SAMPLERS["cvrl"](size=224)
    ps = [s.plan(LONG, r).params for r in rngs(1500)]
    stack = {k: np.stack([p[k] for p in ps]) for k in ps[0]}
    blur = stack["blur_sigma"]
    assert np.all((blur[:, 0] >= 0.1) & (blur[:, 0] <= 2.0))  # p 1.0 on view 1
    assert 0.06 < np.mean(blur[:, 1] > 0) < 0.14
    assert np.all(stack["solarize"][:, 0] == 0) and 0.16 < stack["solarize"][:, 1].mean() < 0.24
    assert 0.16 < stack["gray"].mean() < 0.24
    jittered = stack["brightness"] != 1.0
    assert 0.77 < jittered.mean() < 0.83
    assert np.array_equal(jittered, stack["hue"] != 0.0)
    for k in ("brightness", "contrast", "saturation"):
        assert stack[k].min() >= 0.2 and stack[k].max() <= 1.8
    assert np.abs(stack["hue"]).max() <= 72.0 and np.abs(stack["hue"]).max() > 60
    crop = stack["crop"].reshape(-1, 4)
    area = crop[:, 2] * crop[:, 3]
    aspect = crop[:, 3] * 320 / (crop[:, 2] * 240)
    assert area.min() >= 0.3 - 1e-5 and area.max() <= 1 + 1e-5
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2 + 1e-4
    small = SAMPLERS["cvrl"](size=112).plan(LONG, sample_rng(0, 0, 0)).params["blur_sigma"]
    assert 0.05 <= small[0] <= 1.0  # sigma scaled to 112 output pixels


# ------------------------------------------------------------------------------------------------
# TDL

class ScriptedRng:
    """integers() answers from a script, everything else from a real generator."""

    def __init__(self, ints):
        self.ints = list(ints)
        self.real = np.random.default_rng(0)

    def integers(self, low, high=None, size=None):
        v = self.ints.pop(0)
        lo, hi = (0, low) if high is None else (low, high)
        assert lo <= v < hi, (v, lo, hi)
        return v

    def __getattr__(self, name):
        return getattr(self.real, name)


def original_walk(start0: int, n: int, length: int = 16, stride: int = 4) -> np.ndarray:
    """TDL dataset.py ``get`` in its own 1-based terms (p += stride while p < N − stride + 1,
    else p = 1), returned 0-based."""
    p, out = start0 + 1, []
    for _ in range(length):
        out.append(p - 1)
        p = p + stride if p < n - stride + 1 else 1
    return np.array(out)


@pytest.mark.parametrize("anchor,neg,n,expect", [
    (50, 51, 300, 151),  # |Δ| < 2 → shifted by N//3
    (50, 50, 300, 150),
    (50, 48, 300, 48),   # |Δ| = 2: kept (the original's threshold is strict)
    (50, 53, 300, 53),
    (150, 172, 300, 172),  # 172 = N − 128, the last anchor start
    (0, 2, 260, 2),
    (130, 131, 260, 217),
    (0, 0, 61, 20),      # N = 61: one start (0) for both; the negative is always shifted
    (0, 0, 40, 13),
    (253, 253, 381, 0),  # 1-based (254 + 127) % 381 = 0 → frame 1, i.e. 0 (not 380)
])
def test_tdl_negative_shift_rule(anchor, neg, n, expect):
    """D2: the negative start is drawn from the anchor's range (ScriptedRng asserts the range),
    shifted only when |neg − anchor| < 2, by the original's 1-based rule; clips walk as the
    original's ``get``."""
    s = SAMPLERS["tdl"](augment=False)
    p = s.plan(Rec("t.webm", n), ScriptedRng([anchor, neg]))
    np.testing.assert_array_equal(p.frames[0], original_walk(anchor, n))
    np.testing.assert_array_equal(p.frames[1], p.frames[0])
    np.testing.assert_array_equal(p.frames[2], original_walk(expect, n))
    assert int(p.extras["neg_start"]) == expect


@pytest.mark.parametrize("n", [300, 61])
def test_tdl_negatives_come_from_the_anchor_range(n):
    """D2 at N = 300 and N = 61: a negative that is not shifted starts in the anchor range and
    its clip never runs past the end; only the shifted ones (|Δ| < 2, as the original) may.
    Before the fix 44 % of the negatives started past the anchor range at N = 300 and 20 %
    wrapped over the end."""
    s = SAMPLERS["tdl"](augment=False)
    last = max(n - 128, 0)
    shifted = past = wrapped = 0
    m = 2000
    for rng in rngs(m):
        p = s.plan(Rec("t.webm", n), rng)
        a, g = int(p.extras["anchor_start"]), int(p.extras["neg_start"])
        assert 0 <= a <= last
        assert np.all(np.diff(p.frames[0]) == 4)  # the anchor never wraps once N ≥ 61
        crosses = bool(np.any(np.diff(p.frames[2]) != 4))
        if g <= last and not crosses:
            continue
        # only a shifted negative leaves the range: it is N//3 (1-based rule) from a start in it
        assert any(abs(x - a) < 2 and g == max((x + 1 + n // 3) % n, 1) - 1
                   for x in range(0, last + 1)), (a, g)
        shifted += 1
        past += g > last
        wrapped += crosses
    if n == 61:
        assert shifted == past == wrapped == m  # one start: always shifted to 20, walks past 60
    else:
        # P(|Δ| < 2) ≈ 3/173 over 173 starts
        assert past / m < 0.03 and wrapped / m < 0.01


def test_tdl_anchor_positive_negative_random():
    s = SAMPLERS["tdl"]()
    rec = Rec("t.webm", 300, start_frame=20, end_frame=280)  # L = 260
    anchors = set()
    for rng in rngs(300):
        p = s.plan(rec, rng)
        np.testing.assert_array_equal(p.frames[0], p.frames[1])
        a, n = int(p.extras["anchor_start"]), int(p.extras["neg_start"])
        assert 0 <= a <= 260 - 128 and 0 <= n < 260
        assert p.frames[0, 0] == 20 + a and p.frames[2, 0] == 20 + n
        assert abs(n - a) >= 2
        anchors.add(a)
        assert np.all(np.diff(p.frames[0]) == 4)
    assert len(anchors) > 80


def test_tdl_short_video_wraps():
    s = SAMPLERS["tdl"]()
    p = s.plan(Rec("t.webm", 40), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames[0], (4 * np.arange(16)) % 40)  # anchor start 0


def test_tdl_parameters():
    s = SAMPLERS["tdl"]()
    ps = [s.plan(LONG, r).params for r in rngs(300)]
    st = {k: np.stack([p[k] for p in ps]) for k in ps[0]}
    assert np.abs(st["angle"]).max() <= 10 and np.abs(st["angle"]).max() > 9
    assert st["brightness"].min() >= 0.5 and st["brightness"].max() <= 1.5
    assert st["contrast"].min() >= 0.5 and st["contrast"].max() <= 1.5
    assert st["saturation"].min() >= 0.75 and st["saturation"].max() <= 1.25
    assert np.abs(st["hue"]).max() <= 180 and np.abs(st["hue"]).max() > 150
    # D3: one colour op per clip, as the released ColorJitter (each op with p 1/4)
    changed = np.stack([st[k] != IDENTITY[k] for k in ("brightness", "contrast", "saturation",
                                                        "hue")], axis=-1)  # 300×3×4
    assert np.all(changed.sum(-1) == 1)
    assert np.all(np.abs(changed.reshape(-1, 4).mean(0) - 0.25) < 0.05)
    assert s.jitter == "one_of"
    every = SAMPLERS["tdl"](jitter="all").plan(LONG, sample_rng(0, 0, 0)).params
    assert all(np.all(every[k] != IDENTITY[k]) for k in ("brightness", "contrast", "hue"))
    with pytest.raises(ValueError, match="jitter must be one of all, one_of"):
        SAMPLERS["tdl"](jitter="some")
    # short side 240 → 128, long side 320 → 170.67; crop 112
    np.testing.assert_allclose(st["crop"][:, :, 2:].reshape(-1, 2),
                               [[112 / 128, 112 / (128 * 4 / 3)]] * 900, rtol=1e-5)
    assert not np.allclose(st["crop"][:, 0], st["crop"][:, 1])  # independent per clip
    assert "flip" not in ps[0]


# ------------------------------------------------------------------------------------------------
# RSPNet

def test_rspnet_windows():
    s = SAMPLERS["rspnet"]()
    assert s.clip_len == 32 and s.input_len == 16 and s.num_clips == 2 and s.num_classes == 0
    assert SAMPLERS["rspnet"](max_speed=4).clip_len == 64
    assert SAMPLERS["rspnet"](speeds=(4, 2, 1)).clip_len == 64
    assert SAMPLERS["rspnet"](speeds=(4, 2, 1), max_speed=4).clip_len == 64
    with pytest.raises(ValueError, match=r"max_speed 2 disagrees with speeds \[4\]; set speeds"):
        SAMPLERS["rspnet"](speeds=(4,), max_speed=2)
    rec = Rec("r.webm", 200, start_frame=10)
    differ = 0
    for rng in rngs(50):
        p = s.plan(rec, rng)
        assert p.frames.shape == (2, 32) and p.label == 0
        np.testing.assert_array_equal(np.diff(p.frames, axis=1), 1)
        assert p.frames.min() >= 10 and p.frames.max() < 200
        differ += p.frames[0, 0] != p.frames[1, 0]
    assert differ >= 45


def test_rspnet_short_videos():
    s = SAMPLERS["rspnet"]()
    p = s.plan(Rec("r.webm", 20), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames, np.tile(np.arange(32) % 20, (2, 1)))
    p = s.plan(Rec("r.webm", 32), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames, np.tile(np.arange(32), (2, 1)))
    p = SAMPLERS["rspnet"](stride=2).plan(Rec("r.webm", 40), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames[0], np.rint(np.linspace(0, 39, 32)))


def test_rspnet_parameters():
    s = SAMPLERS["rspnet"]()
    ps = [s.plan(LONG, r).params for r in rngs(800)]
    st = {k: np.stack([p[k] for p in ps]) for k in ps[0]}
    crop = st["crop"].reshape(-1, 4)
    area = crop[:, 2] * crop[:, 3]
    aspect = crop[:, 3] * 320 / (crop[:, 2] * 240)
    assert area.min() >= 0.4 - 1e-5 and area.max() <= 1 + 1e-5
    assert aspect.min() >= 0.75 - 1e-4 and aspect.max() <= 4 / 3 + 1e-4
    assert 0.16 < st["gray"].mean() < 0.24 and 0.45 < st["flip"].mean() < 0.55
    assert np.all(st["brightness"] != 1.0)  # jitter always on
    for k in ("brightness", "contrast", "saturation"):
        assert st[k].min() >= 0.6 and st[k].max() <= 1.4
    assert np.abs(st["hue"]).max() <= 144 and np.abs(st["hue"]).max() > 120


def test_random_resized_box_fallback():
    rng = np.random.default_rng(0)
    # a 4:1 panorama cannot host any crop with aspect ≤ 4/3 and area ≥ 0.9: centred fallback
    box = random_resized_box(rng, 4.0, (0.9, 1.0), (3 / 4, 4 / 3), attempts=5)
    np.testing.assert_allclose(box, [0, (1 - (4 / 3) / 4) / 2, 1, (4 / 3) / 4], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# eval

def test_eval_evenly_spaced_and_centre():
    rec = Rec("e.webm", 110, label=4, start_frame=10)  # L = 100
    p = SAMPLERS["eval"](num_clips=5).plan(rec, sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames[:, 0] - 10, [0, 21, 42, 63, 84])
    assert p.frames.max() == 109 and p.label == 4
    np.testing.assert_array_equal(p.frames - p.frames[:, :1], np.tile(np.arange(16), (5, 1)))
    c = SAMPLERS["eval"]().plan(rec, sample_rng(0, 0, 0))
    np.testing.assert_array_equal(c.frames[0], 10 + 42 + np.arange(16))
    s2 = SAMPLERS["eval"](num_clips=3, stride=2).plan(rec, sample_rng(0, 0, 0))
    np.testing.assert_array_equal(s2.frames[:, 0] - 10, [0, 34, 69])
    np.testing.assert_array_equal(np.diff(s2.frames, axis=1), 2)
    assert s2.frames.max() == 109
    # deterministic: the rng does not matter
    assert same_plan(p, SAMPLERS["eval"](num_clips=5).plan(rec, sample_rng(3, 1, 9)))
    assert is_centred(p.params["crop"]) and set(p.params) == {"crop"}


def test_eval_short_video_loops():
    p = SAMPLERS["eval"](num_clips=2).plan(Rec("e.webm", 10, start_frame=0), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(p.frames, np.tile(np.arange(16) % 10, (2, 1)))


def test_eval_random_mode_and_options():
    s = SAMPLERS["eval"](random=True)
    rec = Rec("e.webm", 100, width=320, height=240)
    starts, flips, centred = set(), [], 0
    for rng in rngs(300):
        p = s.plan(rec, rng)
        assert p.frames.shape == (1, 16)
        starts.add(int(p.frames[0, 0]))
        flips.append(int(p.params["flip"][0]))
        centred += is_centred(p.params["crop"])
    assert starts <= set(range(85)) and len(starts) > 60
    assert 0.4 < np.mean(flips) < 0.6 and centred < 10
    # flip=False (direction-labelled classes): the crop stays random, the flip is gone
    nf = SAMPLERS["eval"](random=True, flip=False)
    plans = [nf.plan(rec, rng) for rng in rngs(50)]
    assert all(set(p.params) == {"crop"} for p in plans)
    assert sum(is_centred(p.params["crop"]) for p in plans) < 5
    full = SAMPLERS["eval"](crop="full", normalize="unit")
    assert full.normalize == "unit"
    np.testing.assert_array_equal(full.plan(rec, sample_rng(0, 0, 0)).params["crop"],
                                  [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="normalize"):
        SAMPLERS["eval"](normalize="zscore")
    with pytest.raises(ValueError, match="random=True"):
        SAMPLERS["eval"](random=True, num_clips=3)


def test_a_dataset_too_short_for_every_draw_is_one_line_before_decoding(tiny_synth):
    """Review t3 #43: PRP on 48-frame videos ended in 'no usable video left in shard 0/1;
    skipped: {}'. The loader now names the need and the fix before any decoding."""
    from dalivssl.data.manifest import load_manifest
    from pipelines.loader import LoaderError, PretextLoader

    m = load_manifest(tiny_synth["train"])  # 40-frame videos
    with pytest.raises(LoaderError, match=r"^prp at clip_len 8 needs ≥ 65 frames \(rate 8: 8 × 8 "
                       r"\+ 1\); the longest of \d+ videos has 40: lower sampler.rates or "
                       r"--clip-len, or use longer videos$"):
        PretextLoader("prp", m, 2, clip_len=8, size=32)
    with pytest.raises(LoaderError, match=r"vcop at clip_len 16 needs ≥ 64 frames \(3 clips × 16"
                       r" \+ 2 gaps × 8\); the longest of \d+ videos has 40"):
        PretextLoader("vcop", m, 2, clip_len=16, size=32)
    # rates the videos can serve: built (the need follows the settings)
    assert PretextLoader("prp", m, 2, clip_len=8, size=32, rates=(1, 2, 4)).sampler.min_frames == 33
