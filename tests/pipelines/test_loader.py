"""PretextLoader: the frames a batch holds are exactly the frames its plans name (DALI vs PyAV by
nearest-frame matching), labels, determinism, epochs, shards, resume, skipping, normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from dalivssl.data.manifest import Manifest, VideoRecord
from dalivssl.data.videoio import decode_frames
from pipelines.types import ClipPlan

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from pipelines.loader import PretextLoader, normalize_clips  # noqa: E402

H, W = 64, 80


class TooShort(ValueError):
    """Stand-in for pipelines.samplers.base.TooShort (matched by name)."""


class TwoClipSampler:
    """K clips of T frames at random starts and random strides 1..2; label = start of clip 0 mod 5.
    One extra frame group ('tail', 2 frames). augment=False: full-frame crop, nothing else."""

    normalize = "unit"

    def __init__(self, clip_len=4, size=(H, W), num_clips=2, augment=False, keys=()):
        self.clip_len, self.num_clips = clip_len, num_clips
        self.out_size = size
        self.min_frames = 2 * clip_len
        self.augment, self.keys = augment, keys

    def plan(self, record, rng):
        n = record.num_frames
        if n < self.min_frames:
            raise TooShort(f"{record.path}: need {self.min_frames} frames, have {n}")
        frames = []
        for _ in range(self.num_clips):
            stride = int(rng.integers(1, 3))
            start = int(rng.integers(0, n - stride * (self.clip_len - 1)))
            frames.append(start + stride * np.arange(self.clip_len))
        frames = np.stack(frames).astype(np.int64)
        params = {"crop": np.tile(np.array([0, 0, 1, 1], np.float32), (self.num_clips, 1))}
        for k in self.keys:
            params[k] = rng.integers(0, 2, self.num_clips).astype(np.int32)
        tail = np.array([n - 1, n - 2], np.int64)
        return ClipPlan(frames, label=int(frames[0, 0] % 5), params=params,
                        extra_frames={"tail": tail}, extras={"n": np.array([n], np.int64)})


@pytest.fixture(scope="module")
def videos(make_video):
    """Six VP9 videos of different lengths (all frames distinct), as a manifest."""
    lengths = [24, 30, 36, 26, 28, 32]
    paths = [make_video(num_frames=n, size=(H, W), seed=i) for i, n in enumerate(lengths)]
    root = paths[0].parent
    recs = [VideoRecord(p.name, n, label=i % 3) for i, (p, n) in enumerate(zip(paths, lengths))]
    return Manifest(root, recs, ["a", "b", "c"])


@pytest.fixture(scope="module")
def reference(videos):
    """PyAV decode of every frame of every video (ground truth)."""
    return [decode_frames(videos.abspath(r)).astype(np.int16) for r in videos.records]


def nearest(frames_out: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest reference frame for each output frame, and the (best, 2nd) distance."""
    d = np.abs(frames_out[:, None].astype(np.int16) - ref[None]).mean(axis=(2, 3, 4))
    order = np.argsort(d, axis=1)
    return order[:, 0], np.take_along_axis(d, order[:, :2], axis=1)


def test_batches_hold_exactly_the_planned_frames(videos, reference):
    loader = PretextLoader(TwoClipSampler(), videos, batch_size=2, raw=True, return_indices=True,
                           seed=3, augment=False)
    assert len(loader) == 3
    seen = []
    for batch in loader:
        assert batch.clips.dtype == torch.uint8 and batch.clips.shape == (2, 2, 4, H, W, 3)
        assert batch.frames.shape == (2, 2, 4)
        assert batch.extra_clips["tail"].shape == (2, 2, H, W, 3)
        for b in range(2):
            vid = int(batch.indices[b])
            seen.append(vid)
            rec = videos.records[vid]
            # regenerate the plan from its rng stream: the batch must follow it exactly
            planned = batch.frames[b].numpy()
            got, dist = nearest(batch.clips[b].reshape(-1, H, W, 3).numpy(), reference[vid])
            np.testing.assert_array_equal(got, planned.reshape(-1))
            assert dist[:, 0].max() < 8 and (dist[:, 1] - dist[:, 0]).min() > 10
            got_tail, _ = nearest(batch.extra_clips["tail"][b].numpy(), reference[vid])
            np.testing.assert_array_equal(got_tail, [rec.num_frames - 1, rec.num_frames - 2])
            assert int(batch.labels[b]) == planned[0, 0] % 5
            assert int(batch.targets[b]) == rec.label
            assert int(batch.extras["n"][b, 0]) == rec.num_frames
    assert sorted(seen) == list(range(6))  # one epoch = every video once


def test_plans_follow_sample_rng(videos):
    from pipelines.types import sample_rng

    loader = PretextLoader(TwoClipSampler(), videos, batch_size=3, raw=True, return_indices=True,
                           seed=11)
    batch = next(iter(loader))
    for pos in range(3):
        rec = videos.records[int(batch.indices[pos])]
        plan = TwoClipSampler().plan(rec, sample_rng(11, 0, pos))
        np.testing.assert_array_equal(batch.frames[pos].numpy(), plan.frames)


def test_same_seed_identical_and_epochs_differ(videos):
    def run(seed, epoch):
        loader = PretextLoader(TwoClipSampler(), videos, batch_size=2, seed=seed,
                               return_indices=True)
        loader.set_epoch(epoch)
        return [(b.clips.clone(), b.indices.clone(), b.frames.clone()) for b in loader]

    a, b = run(5, 0), run(5, 0)
    assert len(a) == len(b) == 3
    for (ca, ia, fa), (cb, ib, fb) in zip(a, b):
        assert ca.dtype == torch.float32 and ca.shape == (2, 2, 3, 4, H, W)
        assert torch.equal(ca, cb) and torch.equal(ia, ib) and torch.equal(fa, fb)
    c = run(5, 1)
    assert [i.tolist() for _, i, _ in a] != [i.tolist() for _, i, _ in c]


def test_iterating_twice_advances_the_epoch(videos):
    loader = PretextLoader(TwoClipSampler(), videos, batch_size=2)
    first = [b.indices.tolist() for b in loader]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    second = [b.indices.tolist() for b in loader]
    assert first != second


def test_shards_are_disjoint_with_equal_batch_counts(make_video):
    lengths = [24] * 7  # 7 videos over 2 ranks: one is dropped so both ranks get 3
    paths = [make_video(num_frames=n, size=(32, 32), seed=10 + i) for i, n in enumerate(lengths)]
    man = Manifest(paths[0].parent, [VideoRecord(p.name, 24) for p in paths], [])
    sampler = TwoClipSampler(size=(32, 32))
    shards = [PretextLoader(sampler, man, batch_size=1, shard=(r, 2), raw=True) for r in (0, 1)]
    seen = [[int(b.indices[0]) for b in s] for s in shards]
    assert len(shards[0]) == len(shards[1]) == 3
    assert len(seen[0]) == len(seen[1]) == 3
    assert not set(seen[0]) & set(seen[1])
    # no drop_last: the permutation wraps so both ranks still get 4 samples
    padded = [PretextLoader(sampler, man, batch_size=2, shard=(r, 2), drop_last=False)
              for r in (0, 1)]
    assert len(padded[0]) == len(padded[1]) == 2
    assert [len(b) for b in padded[1]] == [2, 2]


def test_resume_mid_epoch_equals_uninterrupted(videos):
    full = PretextLoader(TwoClipSampler(), videos, batch_size=2, seed=9, return_indices=True,
                         raw=True)
    full.set_epoch(2)
    ref = [(b.clips.clone(), b.frames.clone()) for b in full]
    part = PretextLoader(TwoClipSampler(), videos, batch_size=2, seed=9, raw=True)
    part.set_epoch(2)
    it = iter(part)
    next(it)
    state = part.state_dict()
    assert state["epoch"] == 2 and state["position"] == 1
    resumed = PretextLoader(TwoClipSampler(), videos, batch_size=2, seed=9, return_indices=True,
                            raw=True)
    resumed.load_state_dict(state)
    rest = [(b.clips.clone(), b.frames.clone()) for b in resumed]
    assert len(rest) == len(ref) - 1
    for (c1, f1), (c2, f2) in zip(ref[1:], rest):
        assert torch.equal(c1, c2) and torch.equal(f1, f2)


def test_too_short_and_corrupt_and_missing_are_skipped(make_video, tmp_path):
    good = [make_video(num_frames=24, size=(32, 32), seed=20 + i) for i in range(3)]
    short = make_video(num_frames=5, size=(32, 32), seed=30)
    root = good[0].parent
    corrupt = root / "corrupt.webm"
    data = bytearray(good[0].read_bytes())
    corrupt.write_bytes(bytes(data[:64]) + bytes(b ^ 0x5A for b in data[64:]))  # header + garbage
    (root / "empty.webm").write_bytes(b"")
    recs = [VideoRecord(p.name, 24) for p in good] + [
        VideoRecord(short.name, 5), VideoRecord("corrupt.webm", 24),
        VideoRecord("empty.webm", 24), VideoRecord("missing.webm", 24)]
    man = Manifest(root, recs, [])
    # drop_last=False: every one of the 7 positions is visited, so each bad video is met
    loader = PretextLoader(TwoClipSampler(size=(32, 32)), man, batch_size=3, raw=True, seed=1,
                           drop_last=False)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b) for b in batches] == [3, 3, 1]
    used = {int(i) for b in batches for i in b.indices}
    assert used <= {0, 1, 2}
    sk = loader.skipped
    assert sk.get("too short for the task") == 1
    assert sk.get("decode error") == 1
    assert sk.get("empty file") == 1 and sk.get("unreadable file") == 1
    # a second epoch keeps going and does not count the same videos again
    assert [len(b) for b in loader] == [3, 3, 1]
    assert sum(loader.skipped.values()) == 4


def test_flip_param_flips_and_is_clip_consistent(make_video):
    from tests.conftest import distinct_frames

    from dalivssl.data.videoio import write_video

    # a static video: every frame the same, so all frames of an augmented clip must be equal
    frame = distinct_frames(1, (32, 48), seed=4)[0]
    path = write_video(make_video(num_frames=8).parent / "static.webm",
                       np.repeat(frame[None], 16, axis=0))
    man = Manifest(path.parent, [VideoRecord(path.name, 16)], [])

    class Fixed:
        normalize, num_clips, clip_len, out_size, min_frames = "unit", 2, 6, (32, 48), 1

        def __init__(self, extra):
            self.extra = extra

        def plan(self, record, rng):
            params = {"crop": np.array([[0.25, 0.25, 0.5, 0.5]] * 2, np.float32),
                      "flip": np.array([0, 1], np.int32), **self.extra}
            # the same decoded frame 6 times: a truly static clip (VP9 inter frames of a static
            # video still differ by a few grey levels), so any per-frame variation is the op's
            return ClipPlan(np.full((2, 6), 3), params=params)

    b = next(iter(PretextLoader(Fixed({}), man, batch_size=1, raw=True)))
    clips = b.clips[0].numpy().astype(np.int16)  # K, T, H, W, C
    # same frames and crop in both clips: clip 1 is exactly clip 0 mirrored along W
    np.testing.assert_array_equal(clips[1], clips[0][:, :, ::-1])
    assert np.abs(clips[0] - clips[0][:, :, ::-1]).mean() > 20  # the frame is not symmetric
    # full colour + geometry augmentation, one parameter set per clip: frames stay equal
    jitter = {"angle": np.array([90, 10], np.float32),
              "brightness": np.array([1.2, 0.7], np.float32),
              "contrast": np.array([0.6, 1.3], np.float32),
              "saturation": np.array([0.5, 1.5], np.float32),
              "hue": np.array([20, -30], np.float32), "gray": np.array([1, 0], np.int32),
              "blur_sigma": np.array([1.0, 0.0], np.float32),
              "solarize": np.array([0, 1], np.int32)}
    b = next(iter(PretextLoader(Fixed(jitter), man, batch_size=1, raw=True)))
    clips = b.clips[0].numpy().astype(np.int16)
    for k in range(2):
        assert np.abs(clips[k] - clips[k, :1]).max() == 0, f"clip {k} varies over time"
    g = clips[0]
    assert np.abs(g[..., 0] - g[..., 1]).max() <= 1 and np.abs(g[..., 1] - g[..., 2]).max() <= 1
    assert np.abs(clips[1][..., 0] - clips[1][..., 1]).mean() > 5  # clip 1 keeps its colour


def test_rotation_multiples_of_90_are_exact(make_video):
    from tests.conftest import distinct_frames

    from dalivssl.data.videoio import write_video

    path = write_video(make_video(num_frames=8).parent / "rot.webm",
                       distinct_frames(8, (32, 32), seed=2))
    man = Manifest(path.parent, [VideoRecord(path.name, 8)], [])

    class Rot:
        normalize, num_clips, clip_len, out_size, min_frames = "unit", 4, 3, (32, 32), 1

        def plan(self, record, rng):
            return ClipPlan(np.tile(np.arange(3), (4, 1)),
                            params={"angle": np.array([0, 90, 180, 270], np.float32)})

    clips = next(iter(PretextLoader(Rot(), man, batch_size=1, raw=True))).clips[0].numpy()
    for k in range(4):  # DALI angles are counter-clockwise, like np.rot90 over (H, W)
        np.testing.assert_array_equal(clips[k], np.rot90(clips[0], k, axes=(1, 2)))


def test_normalisation_values():
    raw = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 3, 1, 1, 1).expand(
        1, 1, 3, 1, 1, 3).contiguous()  # B K T H W C with T=3 grey levels
    unit = normalize_clips(raw, "unit")
    assert unit.shape == (1, 1, 3, 3, 1, 1)
    np.testing.assert_allclose(unit[0, 0, :, :, 0, 0].numpy(), [[0, 0.2, 1]] * 3, atol=1e-6)
    imnet = normalize_clips(raw, "imagenet")[0, 0, :, :, 0, 0].numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expect = (np.array([0, 0.2, 1])[None] - mean[:, None]) / std[:, None]
    np.testing.assert_allclose(imnet, expect, atol=1e-5)
    # the loader applies the sampler's mode to clips and extra clips alike
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_clips(raw, "zscore")


def test_loader_normalises_like_normalize_clips(videos):
    s = TwoClipSampler()
    s.normalize = "imagenet"
    raw = next(iter(PretextLoader(s, videos, batch_size=2, raw=True, seed=2)))
    norm = next(iter(PretextLoader(s, videos, batch_size=2, seed=2)))
    assert torch.allclose(norm.clips, normalize_clips(raw.clips, "imagenet"))
    assert norm.extra_clips["tail"].shape == (2, 3, 2, H, W)
    assert torch.allclose(norm.extra_clips["tail"], normalize_clips(raw.extra_clips["tail"],
                                                                    "imagenet"))


def test_bad_arguments_raise_one_line_errors(videos):
    from pipelines.loader import LoaderError

    with pytest.raises(LoaderError, match="device"):
        PretextLoader(TwoClipSampler(), videos, batch_size=2, device="tpu")
    with pytest.raises(LoaderError, match="shard"):
        PretextLoader(TwoClipSampler(), videos, batch_size=2, shard=(2, 2))
    with pytest.raises(LoaderError, match="cannot fill one batch"):
        PretextLoader(TwoClipSampler(), videos, batch_size=7)


def test_plan_past_the_last_frame_is_an_error_not_black_frames(videos):
    """The decoder pads frames past the end with black silently: the loader refuses such plans."""
    from pipelines.loader import LoaderError

    class PastEnd(TwoClipSampler):
        def plan(self, record, rng):
            p = super().plan(record, rng)
            return ClipPlan(p.frames + record.num_frames, params=p.params)

    with pytest.raises(LoaderError, match="record has"):
        next(iter(PretextLoader(PastEnd(), videos, batch_size=2)))
