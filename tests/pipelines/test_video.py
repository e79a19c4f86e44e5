"""The DALI graph (pipelines.video): one decoder call per sample, clip slicing, noise hook, codec
handling, and the mixed (GPU) decoder."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from dalivssl.data.manifest import Manifest, VideoRecord  # noqa: E402
from dalivssl.data.videoio import decode_frames  # noqa: E402
from pipelines.augment import graph_keys, param_arrays  # noqa: E402
from pipelines.loader import PretextLoader  # noqa: E402
from pipelines.types import ClipPlan  # noqa: E402
from pipelines.video import GraphConfig, build_pipeline, run  # noqa: E402


def _nearest(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d = np.abs(out[:, None].astype(np.int16) - ref[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return d.argmin(axis=1)


class Listed:
    """Sampler that plays back a fixed frame list: K clips of T, given by the test."""

    normalize, min_frames = "unit", 1

    def __init__(self, frames, out_size):
        self.frames = np.asarray(frames)
        self.num_clips, self.clip_len = self.frames.shape
        self.out_size = out_size

    def plan(self, record, rng):
        return ClipPlan(self.frames.copy(), label=0)


def test_one_call_decodes_any_order_with_duplicates_and_slices_clips(make_video):
    path = make_video(num_frames=30, size=(32, 48), seed=7)
    ref = decode_frames(path)
    cfg = GraphConfig(num_clips=3, clip_len=4, extra=(("x", 2),), out_size=(32, 48),
                      keys=graph_keys(()))
    assert cfg.total_frames == 14
    pipe = build_pipeline(cfg, batch_size=2)
    frames = [np.array([29, 3, 3, 0, 5, 6, 7, 8, 20, 10, 21, 1, 2, 2]),
              np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])]
    enc = np.fromfile(path, dtype=np.uint8)
    (out,) = run(pipe, cfg, [enc, enc], frames, [param_arrays({}, cfg.keys, 3)] * 2)
    assert out.shape == (2, 14, 32, 48, 3) and out.dtype == torch.uint8
    for b in range(2):
        np.testing.assert_array_equal(_nearest(out[b].numpy(), ref), frames[b])


def test_noise_option_is_applied_before_normalisation(make_video):
    path = make_video(num_frames=12, size=(32, 32), seed=8)
    man = Manifest(path.parent, [VideoRecord(path.name, 12)], [])
    s = Listed([[0, 1, 2, 3]], (32, 32))
    clean = next(iter(PretextLoader(s, man, batch_size=1, raw=True))).clips.numpy()
    noisy = next(iter(PretextLoader(s, man, batch_size=1, raw=True,
                                    noise=("impulse", 5)))).clips.numpy()
    assert noisy.shape == clean.shape and noisy.dtype == np.uint8
    changed = noisy != clean
    # impulse (salt and pepper) noise: every changed value became 0 or 255
    assert 0.05 < changed.mean() < 0.5
    assert np.isin(noisy[changed], [0, 255]).all()
    normed = next(iter(PretextLoader(s, man, batch_size=1, noise=("impulse", 5)))).clips
    assert normed.dtype == torch.float32 and normed.shape == (1, 1, 3, 4, 32, 32)


def test_gpu_only_codec_on_cpu_is_skipped_with_a_clear_reason(make_video):
    good = make_video(num_frames=12, size=(32, 32), seed=9)
    man = Manifest(good.parent, [VideoRecord(good.name, 12, codec="vp9"),
                                 VideoRecord("clip.mp4", 12, codec="h264")], [])
    loader = PretextLoader(Listed([[0, 1, 2, 3]], (32, 32)), man, batch_size=2, raw=True)
    batch = next(iter(loader))
    assert batch.indices.tolist() == [0, 0]  # the H.264 record is replaced by the VP9 one
    (reason,) = loader.skipped
    assert "h264" in reason and "GPU" in reason and "dalivssl data prepare" in reason


@pytest.mark.gpu
def test_mixed_decoder_gives_the_planned_frames_on_cuda(make_video):
    """device='gpu': NVDEC decodes H.264 (which the CPU decoder cannot) with the same indices."""
    path = make_video(num_frames=40, size=(64, 80), codec="h264", seed=11)
    ref = decode_frames(path)
    frames = [[3, 9, 9, 15], [39, 0, 20, 21]]
    man = Manifest(path.parent, [VideoRecord(path.name, 40, codec="h264")], [])
    loader = PretextLoader(Listed(frames, (64, 80)), man, batch_size=1, device="gpu", raw=True,
                           return_indices=True, verify=False)  # this test is the verification
    batch = next(iter(loader))
    assert batch.clips.is_cuda and batch.labels.is_cuda
    got = _nearest(batch.clips[0].reshape(-1, 64, 80, 3).cpu().numpy(), ref)
    np.testing.assert_array_equal(got, np.asarray(frames).reshape(-1))
    normed = next(iter(PretextLoader(Listed(frames, (64, 80)), man, batch_size=1,
                                     device="gpu", verify=False))).clips
    assert normed.is_cuda and normed.shape == (1, 2, 3, 4, 64, 80)
