"""The bench loader baselines deliver exactly a plan's frame indices (checked against a full
PyAV decode of a video whose frames all differ) and the ceiling decodes exactly the GOP ranges."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from benchmarks.baselines import DECODERS, ceiling_decode, torchcodec_missing  # noqa: E402

INDICES = [3, 17, 18, 40, 41, 5]


def _all_frames(path):
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _nearest(frame, ref):
    return int(np.argmin(np.abs(ref.astype(np.int16) - frame.astype(np.int16)).mean(axis=(1, 2, 3))))


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_baseline_delivers_the_plans_frame_indices(decoder, make_video):
    if decoder == "torchcodec" and torchcodec_missing():
        pytest.skip(torchcodec_missing())
    path = make_video(num_frames=48, size=(32, 48), gop=16, seed=7)
    ref = _all_frames(path)
    frames, _ = DECODERS[decoder](str(path), INDICES)
    frames = np.asarray(frames)
    if frames.shape[-1] != 3:  # torchcodec: N C H W
        frames = frames.transpose(0, 2, 3, 1)
    assert frames.shape == (len(INDICES), 32, 48, 3)
    assert [_nearest(f, ref) for f in frames] == INDICES


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_dataloader_item_holds_the_plans_frames_and_flip(decoder, make_video):
    """What the bench's DataLoader gets per plan (PlanDataset: decode + torch_augment): clip k
    holds plan.frames[k] in plan order (shuffled, repeated), flipped where the plan says so, as
    float K×C×T×H×W in [0, 1]; a second decoder setting is stated in the module."""
    import torch

    from benchmarks.baselines import (TORCHCODEC_SEEK_MODE, TORCHCODEC_THREADS, PlanDataset)
    from pipelines.types import ClipPlan

    if decoder == "torchcodec" and torchcodec_missing():
        pytest.skip(torchcodec_missing())
    assert TORCHCODEC_SEEK_MODE in ("exact", "approximate") and TORCHCODEC_THREADS >= 1
    path = make_video(num_frames=48, size=(32, 48), gop=16, seed=9)
    ref = _all_frames(path)
    frames = np.array([[30, 2, 2, 17], [41, 40, 5, 6]])
    plan = ClipPlan(frames, 3, {"crop": np.tile(np.float32([0, 0, 1, 1]), (2, 1)),
                                "flip": np.array([0, 1], np.int32)})
    clips, label, _ = PlanDataset([(str(path), plan)], (32, 48), "unit", decoder)[0]
    assert clips.shape == (2, 3, 4, 32, 48) and clips.dtype == torch.float32 and int(label) == 3
    got = (clips.permute(0, 2, 3, 4, 1).numpy() * 255).round().astype(np.uint8)
    flipped = got[1].copy()
    got[1] = got[1][:, :, ::-1]  # undo the plan's flip of clip 1
    assert [[_nearest(f, ref) for f in clip] for clip in got] == frames.tolist()
    want = ref[frames].astype(np.int16)
    close = np.abs(got.astype(np.int16) - want).mean()
    assert close < 3 and np.abs(flipped.astype(np.int16) - want[1]).mean() > 10 + close


def test_ceiling_decodes_exactly_the_ranges(make_video):
    path = make_video(num_frames=48, size=(32, 48), gop=16, seed=8)
    assert ceiling_decode(str(path), [(16, 20)]) == 4
    assert ceiling_decode(str(path), [(0, 3), (32, 48)]) == 3 + 16


def test_dataloader_baselines_never_fork():
    """The DataLoader baselines start their workers by forkserver: `bench loader` runs them after
    CUDA and DALI's threads exist, where a forked worker inherits a broken CUDA context."""
    from benchmarks.loader_throughput import TorchLoader

    tl = TorchLoader([], [], 2, 2, (8, 8), "unit", "pyav")
    assert tl.dl.multiprocessing_context.get_start_method() == "forkserver"
    assert TorchLoader([], [], 2, 0, (8, 8), "unit", "pyav").dl.multiprocessing_context is None


def test_pipeline_pool_gives_the_single_pipelines_batches_in_order(tiny_synth):
    """The 'pipelines-2' row (two pipelines, a thread each) delivers what one pipeline does,
    batch for batch, and counts both pipelines' decoding."""
    import torch

    from benchmarks.loader_throughput import PipelinePool
    from dalivssl.data.manifest import load_manifest
    from pipelines.loader import PretextLoader

    man = load_manifest(tiny_synth["train"])

    def make(threads):
        return PretextLoader("vcop", man, batch_size=2, clip_len=4, size=32, seed=3,
                             num_threads=threads, return_indices=True)

    one, pool = make(2), PipelinePool([make(1), make(1)])
    pool.set_epoch(1)
    one.set_epoch(1)
    got, want = list(pool), list(one)
    assert len(got) == len(want) == len(one) >= 3
    for g, w in zip(got, want):
        assert torch.equal(g.frames, w.frames) and torch.equal(g.labels, w.labels)
        assert torch.allclose(g.clips, w.clips)
    used = [lo.decode_stats["samples"] for lo in pool.loaders]
    assert all(n > 0 for n in used) and pool.decode_stats["samples"] == sum(used)
