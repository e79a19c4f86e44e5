"""PretextLoader with the real task samplers (pipelines.samplers.SAMPLERS): CPU batches for all six
pretext tasks on the tiny synthetic dataset, and frame-exact batches for every task."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from dalivssl.data.manifest import Manifest, VideoRecord  # noqa: E402
from dalivssl.data.videoio import decode_frames  # noqa: E402
from pipelines.loader import PretextLoader  # noqa: E402
import pipelines.samplers  # noqa: E402  (a broken sampler import fails, never skips)
from pipelines.types import sample_rng  # noqa: E402

TASKS = sorted(set(pipelines.samplers.SAMPLERS) - {"eval"})  # every pretext sampler
# small but valid settings for 8-frame clips on 40-frame videos
OPTIONS = {"prp": {"rates": (1, 2, 4)}}


@pytest.mark.parametrize("task", TASKS)
def test_cpu_batches_for_every_task_on_tiny_synth(task, tiny_synth):
    from dalivssl.data.manifest import load_manifest

    man = load_manifest(tiny_synth["train"])
    loader = PretextLoader(task, man, batch_size=2, clip_len=8, size=32, seed=0,
                           return_indices=True, **OPTIONS.get(task, {}))
    s = loader.sampler
    assert len(loader) == len(man.records) // 2
    batch = next(iter(loader))
    B, K, C, T, Hh, Ww = batch.clips.shape
    assert (B, K, C, (Hh, Ww)) == (2, s.num_clips, 3, tuple(s.out_size))
    assert batch.clips.dtype == torch.float32 and torch.isfinite(batch.clips).all()
    assert batch.frames.shape == (B, K, T)
    lo, hi = float(batch.clips.min()), float(batch.clips.max())
    if s.normalize == "unit":
        assert 0.0 <= lo and hi <= 1.0
    else:  # ImageNet statistics: below 0 and above 1 occur
        assert lo >= -2.2 and hi <= 2.7 and lo < 0.0
    assert ((batch.labels >= 0) & (batch.labels < max(1, s.num_classes))).all()
    assert batch.targets.tolist() == [man.records[i].label for i in batch.indices.tolist()]
    # every plan is regenerated from its rng stream: labels and frames agree with the batch
    for pos in range(B):
        rec = man.records[int(batch.indices[pos])]
        plan = s.plan(rec, sample_rng(0, 0, pos))
        np.testing.assert_array_equal(batch.frames[pos].numpy(), plan.frames)
        assert int(batch.labels[pos]) == plan.label
        for name, arr in plan.extras.items():
            np.testing.assert_array_equal(batch.extras[name][pos].numpy(), arr)
        for name, idx in plan.extra_frames.items():
            assert batch.extra_clips[name].shape[:3] == (B, 3, np.asarray(idx).size)
    assert loader.skipped == {}


def _crop_resize(frames: np.ndarray, box, out_hw) -> np.ndarray:
    """Reference crop (relative [y0, x0, h, w]) + bilinear antialiased resize in torch."""
    import torch.nn.functional as F

    h0, w0 = frames.shape[1:3]
    y0, x0, h, w = (float(v) for v in box)
    ys, xs = int(round(y0 * h0)), int(round(x0 * w0))
    ye, xe = int(round((y0 + h) * h0)), int(round((x0 + w) * w0))
    t = torch.from_numpy(frames[:, ys:ye, xs:xe]).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=tuple(out_hw), mode="bilinear", antialias=True, align_corners=False)
    return t.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("task", TASKS)
def test_every_task_batch_holds_exactly_its_planned_frames(task, make_video):
    """augment=False, raw uint8: each output frame's nearest PyAV frame (after the plan's own
    crop + resize) is the frame the plan names (clips and extra frames)."""
    n = 96
    paths = [make_video(num_frames=n, size=(64, 80), seed=40 + i) for i in range(2)]
    man = Manifest(paths[0].parent, [VideoRecord(p.name, n, width=80, height=64) for p in paths],
                   [])
    loader = PretextLoader(task, man, batch_size=2, clip_len=8, size=32, augment=False, raw=True,
                           return_indices=True, seed=1, **OPTIONS.get(task, {}))
    batch = next(iter(loader))
    assert batch.clips.dtype == torch.uint8
    for pos in range(2):
        vid = int(batch.indices[pos])
        plan = loader.sampler.plan(man.records[vid], sample_rng(1, 0, pos))
        ref_all = decode_frames(man.abspath(man.records[vid])).astype(np.float32)
        K = plan.num_clips
        crops = plan.params.get("crop", np.tile([0, 0, 1, 1], (K, 1)))
        angles = plan.params.get("angle", np.zeros(K))  # RotNet keeps its label rotation
        flips = plan.params.get("flip", np.zeros(K))
        outs = [(batch.clips[pos, k].numpy(), plan.frames[k], k) for k in range(K)]
        outs += [(batch.extra_clips[name][pos].numpy(), np.asarray(idx), 0)
                 for name, idx in plan.extra_frames.items()]
        for got, want, k in outs:
            assert float(angles[k]) % 90 == 0
            ref = _crop_resize(ref_all, crops[k], got.shape[1:3])
            ref = ref[:, :, ::-1] if flips[k] else ref
            ref = np.rot90(ref, int(angles[k]) // 90, axes=(1, 2))
            d = np.abs(got[:, None].astype(np.float32) - ref[None]).mean(axis=(2, 3, 4))
            np.testing.assert_array_equal(d.argmin(axis=1), want.reshape(-1),
                                          err_msg=f"{task}: decoded frames differ from the plan")
            assert d.min(axis=1).max() < 10


def test_vcop_brightness_jitter_scales_each_clip_of_the_same_plan(tiny_synth):
    """sampler.brightness: same frames, crops and labels as without it; clip k is the plain clip
    times the plan's factor b_k (to uint8 rounding, clipped at 1)."""
    from dalivssl.data.manifest import load_manifest

    man = load_manifest(tiny_synth["train"])
    kw = dict(batch_size=2, clip_len=8, size=32, seed=3, return_indices=True, num_clips=3,
              interval=2)
    plain = next(iter(PretextLoader("vcop", man, **kw)))
    loader = PretextLoader("vcop", man, brightness=0.5, **kw)
    jit = next(iter(loader))
    assert jit.labels.tolist() == plain.labels.tolist()
    np.testing.assert_array_equal(jit.frames.numpy(), plain.frames.numpy())
    for pos in range(2):
        b = loader.sampler.plan(man.records[int(jit.indices[pos])],
                                sample_rng(3, 0, pos)).params["brightness"]
        assert np.ptp(b) > 0
        want = np.clip(plain.clips[pos].numpy() * b[:, None, None, None, None], 0, 1)
        np.testing.assert_allclose(jit.clips[pos].numpy(), want, atol=2.5 / 255)
