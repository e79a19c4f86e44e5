"""The loader keeps undecodable files away from DALI (G1-G3), bisects a failed batch (G4) and
hands small tensors over without blocking (G6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from dalivssl.data.manifest import Manifest, VideoRecord  # noqa: E402
from pipelines.loader import PretextLoader  # noqa: E402

FIX_GPU = "transcode with `dalivssl data prepare MANIFEST OUT --codec h264"


class Listed:
    """Sampler that plays back frames 0..3 as one clip."""

    normalize, min_frames, num_clips, clip_len = "unit", 1, 1, 4

    def __init__(self, out_size=(32, 32)):
        self.out_size = out_size

    def plan(self, record, rng):
        from pipelines.types import ClipPlan

        return ClipPlan(np.arange(4)[None], label=0)


def _gpu_reasons(man):
    """_precheck of every record as the GPU loader runs it (the loader is built on CPU: only the
    device it checks against is switched)."""
    loader = PretextLoader(Listed(), man, batch_size=1, raw=True)
    loader.device = "gpu"
    return [loader._precheck(i, r) for i, r in enumerate(man.records)]


def test_gpu_precheck_gives_each_rejected_file_its_reason(tmp_path, make_video, monkeypatch):
    from dalivssl.data.decode_matrix import CASES, write_case

    monkeypatch.setenv("DALIVSSL_GPU_PROBE", "")
    small = make_video(8, size=(112, 112), seed=1)  # VP9 below NVDEC's 128
    ok = make_video(8, size=(128, 128), seed=2)
    h444 = write_case(CASES["h264-444"], 64, tmp_path / "h444.mp4", n=8)
    hevc10 = write_case(CASES["hevc-10bit"], 160, tmp_path / "hevc10.mp4", n=8)
    av1 = tmp_path / "clip.mkv"
    av1.write_bytes(b"\0")  # the record says av1: nothing opens the file
    recs = [VideoRecord(str(small), 8, codec="vp9", width=112, height=112),
            VideoRecord(str(ok), 8, codec="vp9", width=128, height=128),
            VideoRecord(str(h444), 8),  # old manifest: codec, size, pix_fmt from the header
            VideoRecord(str(hevc10), 8, codec="hevc", width=160, height=160),
            VideoRecord(str(av1), 8, codec="av1", width=320, height=240,
                        extra={"pix_fmt": "yuv420p"})]
    got = _gpu_reasons(Manifest(tmp_path, recs, []))
    assert got == [
        (f"112x112 below the GPU decoder's vp9 minimum of 128x128; {FIX_GPU} --short-side 128`",
         ""),
        None,
        (f"pixel format yuv444p (4:4:4) not decodable by DALI's GPU decoder for h264 (8-bit "
         f"4:2:0 only); {FIX_GPU}`", ""),
        (f"pixel format yuv420p10le (10-bit) not decodable by DALI's GPU decoder for hevc (8-bit "
         f"4:2:0 only); {FIX_GPU}`", ""),
        (f"codec av1 not decodable by NVDEC on this GPU (no successful decode probe); "
         f"{FIX_GPU}`", "")]


def test_cpu_precheck_skips_gpu_codecs_with_the_fix(make_video):
    good = make_video(num_frames=12, size=(32, 32), seed=9)
    man = Manifest(good.parent, [VideoRecord(good.name, 12, codec="vp9"),
                                 VideoRecord("clip.mp4", 12, codec="h264"),
                                 VideoRecord("clip.mov", 12, codec="prores")], [])
    loader = PretextLoader(Listed(), man, batch_size=3, raw=True, prefetch=0)
    batch = loader.batch_at(0, 0)
    assert batch.indices.tolist() == [0, 0, 0]
    assert sorted(loader.skipped) == [
        "codec h264 not decodable by DALI's CPU decoder (VP8/VP9/MJPEG only); transcode with "
        "`dalivssl data prepare MANIFEST OUT --codec vp9` or decode it on the GPU (--device gpu)",
        "codec prores not decodable by DALI on cpu; transcode with `dalivssl data prepare "
        "MANIFEST OUT --codec vp9`"]


@pytest.mark.parametrize("pos,runs,builds", [
    # bad file last in the batch: the first half decodes, so each later half is known bad and
    # split without decoding it whole; the single file is decoded to confirm it
    (7, [8, 4, 2, 1, 1, 8], 3),
    # bad file first: 8, 4, 2, 1 fail (one rebuild after each), then 1, 2, 4 decode, then the
    # batch
    (0, [8, 4, 2, 1, 1, 2, 4, 8], 5),
])
def test_a_bad_file_in_a_batch_is_found_by_bisection(tmp_path, make_video, monkeypatch, pos,
                                                      runs, builds):
    """One undecodable file among 8 (it passes every precheck: the record says VP9) at batch
    position ``pos``: found by halving the failed batch, not by decoding all 8 one at a time
    with a rebuild after each failure."""
    import pipelines.video as video

    good = [make_video(8, size=(32, 32), seed=20 + i) for i in range(8)]
    bad = tmp_path / "bad.webm"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    recs = [VideoRecord(str(p), 8, codec="vp9") for p in good]
    order = PretextLoader(Listed(), Manifest(tmp_path, recs, []), 8).shard_order(0)
    recs[int(order[pos])] = VideoRecord(str(bad), 8, codec="vp9")
    man = Manifest(tmp_path, recs, [])
    built, ran = [], []
    real_build, real_run = video.build_pipeline, video.run
    monkeypatch.setattr(video, "build_pipeline", lambda *a, **k: built.append(1) or
                        real_build(*a, **k))
    monkeypatch.setattr(video, "run", lambda pipe, cfg, enc, *a: ran.append(len(enc)) or
                        real_run(pipe, cfg, enc, *a))
    loader = PretextLoader(Listed(), man, batch_size=8, raw=True, prefetch=0)
    batch = loader.batch_at(0, 0)
    assert int(order[pos]) not in batch.indices.tolist() and len(batch) == 8
    assert loader.skipped == {"decode error": 1}
    assert (ran, len(built)) == (runs, builds)


def test_small_batch_tensors_stay_on_the_clip_device(make_video):
    import torch

    v = make_video(20, size=(32, 32))
    man = Manifest(v.parent, [VideoRecord(v.name, 20, codec="vp9", label=2)], [])
    b = PretextLoader(Listed(), man, 1, raw=True, prefetch=0, return_indices=True).batch_at(0, 0)
    for t in (b.labels, b.targets, b.indices, b.frames):
        assert t.device == b.clips.device and t.dtype == torch.int64
    assert b.targets.tolist() == [2] and b.frames.tolist() == [[[0, 1, 2, 3]]]


def test_an_error_no_single_file_reproduces_is_raised(make_video, monkeypatch):
    """A batch that fails once for a reason no file explains (here: the first run of the
    pipeline raises) marks no video bad: the error is raised, as before bisection."""
    import pipelines.video as video

    recs = [VideoRecord(str(make_video(8, size=(32, 32), seed=40 + i)), 8, codec="vp9")
            for i in range(2)]
    real_run, calls = video.run, []

    def flaky(*a):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return real_run(*a)

    monkeypatch.setattr(video, "run", flaky)
    loader = PretextLoader(Listed(), Manifest(Path("/"), recs, []), 2, raw=True, prefetch=0)
    with pytest.raises(RuntimeError, match="transient"):
        loader.batch_at(0, 0)
    assert loader.skipped == {}
