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
