"""Packet index and GOP-range sub-streams (pipelines.packets): the index round-trips through the
sidecar; sub-streams decode bit-identically to the full file (DALI CPU on VP9 with long and short
GOPs; PyAV on H.264/HEVC Annex B with B-frames); the ranges decode at most window + GOP frames."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest

from dalivssl.data.index import probe_with_packets
from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest
from dalivssl.data.videoio import decode_frames
from pipelines.packets import (PacketIndex, PacketTable, choose_ranges, save_table, shift_frames,
                              substream, substream_pts)

N = 300  # frames of the long videos: keyframes at 0, 128, 256 (GOP 128) or 0, 250 (GOP 250)


def _write_altref(path, frames: np.ndarray, gop: int) -> None:
    """VP9 as libvpx's 'good' mode writes it for the web: look-ahead with hidden alt-ref frames
    (packed into superframes, one packet per shown frame)."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"deadline": "good", "cpu-used": "8", "lag-in-frames": "16",
                     "auto-alt-ref": "1", "g": str(gop), "crf": "30", "b": "0"}
        for img in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)


@pytest.fixture(scope="module")
def gop_videos(make_video, tmp_path_factory):
    """{gop: (path, PacketIndex)} for VP9 videos of N frames with keyframes every 128, 250, 8,
    and 'altref': keyframes every 100 with hidden alt-ref frames."""
    from tests.conftest import distinct_frames

    out = {}
    for gop in (128, 250, 8):
        path = make_video(num_frames=N, size=(32, 48), gop=gop, seed=gop)
        out[gop] = (path, probe_with_packets(path)["packets"])
    path = tmp_path_factory.mktemp("altref") / "altref.webm"
    _write_altref(path, distinct_frames(N, (32, 48), seed=9), gop=100)
    out["altref"] = (path, probe_with_packets(path)["packets"])
    return out


@pytest.fixture(scope="module")
def dali_decode():
    """decode(list of (bytes, frames)) -> list of uint8 (F, H, W, 3) from DALI's CPU decoder."""
    pytest.importorskip("nvidia.dali")
    import nvidia.dali as dali
    from nvidia.dali import fn, types

    pipe = dali.Pipeline(batch_size=8, num_threads=2, device_id=None, prefetch_queue_depth=1,
                         exec_dynamic=True)
    with pipe:
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        pipe.set_outputs(fn.decoders.video(enc, frames=frames, pad_mode="none"))
    pipe.build()

    def decode(items):
        pipe.feed_input("enc", [np.asarray(d, np.uint8) for d, _ in items])
        pipe.feed_input("frames", [np.asarray(f, np.int32) for _, f in items])
        out = pipe.run()[0]
        return [np.array(out.at(i)) for i in range(len(items))]

    return decode


def test_index_records_keyframes_offsets_and_the_frame_count(gop_videos):
    for gop, (path, ix) in gop_videos.items():
        assert ix is not None and ix.num_frames == N and ix.codec == "vp9" and ix.supported
        assert ix.keyframes().tolist() == list(range(0, N, 100 if gop == "altref" else gop))
        np.testing.assert_array_equal(ix.pres, np.arange(N))  # VP9: no reordering
        data = path.read_bytes()
        assert ix.file_size == len(data)
        import av

        with av.open(str(path)) as c:  # every recorded range holds exactly the packet's bytes
            for i, pk in enumerate(c.demux(video=0)):
                if pk.size:
                    assert data[ix.offset[i]:ix.offset[i] + ix.size[i]] == bytes(pk)


def test_sidecar_round_trip_and_manifest_pointer(gop_videos, tmp_path):
    idx = [gop_videos[128][1], None, gop_videos[8][1]]
    table = PacketTable(save_table(idx, tmp_path / "t.packets.npz"))
    assert len(table) == 3 and table[1] is None and table[7] is None
    for want, got in ((idx[0], table[0]), (idx[2], table[2])):
        for name in ("offset", "size", "key", "pres"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert (got.codec, got.header, got.width, got.height, got.file_size) == (
            want.codec, want.header, want.width, want.height, want.file_size)
    # a manifest carries the sidecar: written beside it, found again on load, kept by subsets
    path = gop_videos[128][0]
    recs = [VideoRecord(path.name, N, packets=0),
            VideoRecord(gop_videos[8][0].name, N, packets=2), VideoRecord("x.webm", 1)]
    m = Manifest(path.parent, recs, [], packets=idx)
    save_manifest(m, tmp_path / "m.jsonl")
    assert (tmp_path / "m.packets.npz").is_file()
    back = load_manifest(tmp_path / "m.jsonl")
    assert back.packet_index(back.records[0]).keyframes().tolist() == [0, 128, 256]
    assert back.packet_index(back.records[1]).keyframes().tolist() == list(range(0, N, 8))
    assert back.packet_index(back.records[2]) is None
    save_manifest(back.select(back.records[1:2]), tmp_path / "sub" / "s.jsonl")
    sub = load_manifest(tmp_path / "sub" / "s.jsonl")
    assert sub.packet_index(sub.records[0]).num_frames == N
    # a manifest without a sidecar still works: no index
    save_manifest(Manifest(path.parent, recs, []), tmp_path / "plain.jsonl")
    assert load_manifest(tmp_path / "plain.jsonl").packet_index(recs[0]) is None


def test_large_sidecar_opens_fast(tmp_path):
    """A Kinetics-size table (650k videos) opens without reading its packet arrays."""
    v, p = 650_000, 8
    ix = PacketIndex(np.arange(p, dtype=np.int64), np.ones(p, np.int32), np.ones(p, bool),
                     np.arange(p, dtype=np.int32), "vp9", b"", 8, 8, 100)
    path = save_table([ix] * v, tmp_path / "big.packets.npz")
    t = time.perf_counter()
    table = PacketTable(path)
    row = table[v - 1]
    assert time.perf_counter() - t < 1.0
    assert len(table) == v and row.num_frames == p
    import pickle

    assert len(pickle.dumps(table)) < 1000  # pickled as its path, not its arrays


# ------------------------------------------------------------------------------- frame exactness
PLANS = {  # name -> frames (one sample's frames, any order, duplicates allowed)
    "start": np.arange(0, 16),
    "at 200": np.arange(200, 216),
    "across a keyframe": np.arange(120, 136),
    "tail": np.arange(N - 16, N),
    "overlapping clips": np.concatenate([np.arange(140, 172, 2), np.arange(150, 166)]),
    "far apart": np.concatenate([np.arange(5, 13), np.arange(262, 270), np.array([140])]),
    "dilated, unsorted": np.array([290, 10, 150, 150, 60, 251, 249]),
}


@pytest.mark.parametrize("gop", [128, 250, 8, "altref"])
def test_substreams_decode_bit_identically_to_the_full_file(gop, gop_videos, dali_decode):
    path, ix = gop_videos[gop]
    full = dali_decode([(np.fromfile(path, np.uint8), np.arange(N))])[0]
    subs = {name: substream(path, ix, f) for name, f in PLANS.items()}
    got = dali_decode([(s.data, np.unique(s.frames)) for s in subs.values()])
    for (name, frames), s, g in zip(PLANS.items(), subs.values(), got):
        inv = np.searchsorted(np.unique(s.frames), s.frames)
        np.testing.assert_array_equal(g[inv], full[frames], err_msg=f"GOP {gop}, {name}")
        assert s.data.size < path.stat().st_size or s.ranges == ((0, N),)


@pytest.mark.parametrize("gop", [128, 250, 8])
def test_decoded_frames_are_bounded_by_window_plus_gop(gop, gop_videos):
    _, ix = gop_videos[gop]
    rng = np.random.default_rng(gop)
    for _ in range(200):
        span = int(rng.integers(1, 120))
        start = int(rng.integers(0, N - span + 1))
        frames = rng.integers(start, start + span, size=int(rng.integers(1, 40)))
        frames[0], frames[-1] = start, start + span - 1
        ranges = choose_ranges(ix, frames)
        decoded = sum(e - k for k, e in ranges)
        lead = start - int(ix.keyframes()[ix.keyframes() <= start].max())
        assert np.unique(frames).size <= decoded <= span + lead and lead < gop
        assert (shift_frames(ix, ranges, frames) < decoded).all()


def test_truncated_file_decodable_count(gop_videos):
    path, ix = gop_videos[128]
    assert ix.decodable_frames(ix.file_size) == N
    cut = int(ix.offset[100]) + 1  # inside packet 100
    assert ix.decodable_frames(cut) == 100
    assert ix.decodable_frames(10) == 0


# ------------------------------------------------------------------- H.264 / HEVC with B-frames
def _write_bframes(path, codec: str, frames: np.ndarray, gop: int) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        s.gop_size = gop
        s.options = ({"preset": "veryfast", "bf": "3"} if codec == "libx264" else
                     {"preset": "ultrafast", "x265-params": f"keyint={gop}:min-keyint={gop}:"
                                                           "bframes=3:log-level=error"})
        for img in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)


@pytest.mark.parametrize("container", ["mkv", "annexb"])
@pytest.mark.parametrize("codec,fmt", [("libx264", "h264"), ("libx265", "hevc")])
def test_h264_hevc_substreams_decode_the_same_frames(codec, fmt, container, tmp_path):
    """GPU-only codecs: the timestamped Matroska remux and the raw Annex B bytes (parameter sets +
    start codes) both decode, with PyAV, to the full file's frames at the shifted indices,
    B-frames (presentation order) included; the Matroska blocks carry presentation times."""
    import av

    from tests.conftest import distinct_frames

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not in this PyAV build")
    n = 120
    path = tmp_path / f"b.{'mp4'}"
    _write_bframes(path, codec, distinct_frames(n, (64, 80), seed=3), gop=48)
    ix = probe_with_packets(path)["packets"]
    assert ix is not None and ix.codec == fmt and ix.supported and len(ix.header) > 0
    assert not np.array_equal(ix.pres, np.arange(n)), "expected B-frames (reordered packets)"
    full = decode_frames(path)
    for frames in (np.arange(50, 66), np.arange(96, 120), np.r_[3:9, 100:104], np.arange(0, 5)):
        s = substream(path, ix, frames, container)
        with av.open(io.BytesIO(s.data.tobytes()),
                     format=fmt if container == "annexb" else "matroska") as c:
            pts = [p.pts for p in c.demux(video=0) if p.size]
        with av.open(io.BytesIO(s.data.tobytes()),
                     format=fmt if container == "annexb" else "matroska") as c:
            got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert len(got) == s.decoded
        if container == "mkv":  # block times = presentation ranks: a pts-sorting decoder is right
            ranks = np.argsort(np.argsort(pts, kind="stable"), kind="stable")
            np.testing.assert_array_equal(ranks, substream_pts(ix, s.ranges)
                                          - substream_pts(ix, s.ranges).min())
            assert not np.array_equal(ranks, np.arange(len(ranks)))
        np.testing.assert_array_equal(got[s.frames], full[frames], err_msg=f"{fmt} {frames[:3]}")


@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["libx264", "libx265", "vp9"])
def test_mixed_decoder_substreams(codec, tmp_path):
    """On a GPU: the mixed (NVDEC) decoder gives the same frames from sub-streams (Annex B with
    B-frames; IVF) as from the whole file. When this passes for H.264/HEVC, add them to
    ``packets.DEFAULT_RANGE_CODECS['gpu']``."""
    import nvidia.dali as dali
    from nvidia.dali import fn, types

    from dalivssl.data.videoio import write_video
    from tests.conftest import distinct_frames

    n = 160
    frames = distinct_frames(n, (144, 176), seed=7)  # above NVDEC's minimum sizes
    if codec == "vp9":
        path = write_video(tmp_path / "v.webm", frames, codec="vp9", gop=64)
    else:
        path = tmp_path / "v.mp4"
        _write_bframes(path, codec, frames, gop=48)
    ix = probe_with_packets(path)["packets"]
    pipe = dali.Pipeline(batch_size=4, num_threads=2, device_id=0, prefetch_queue_depth=1,
                         exec_dynamic=True)
    with pipe:
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        idx = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        pipe.set_outputs(fn.decoders.video(enc, frames=idx, pad_mode="none", device="mixed"))
    pipe.build()

    def decode(items):
        pipe.feed_input("enc", [np.asarray(d, np.uint8) for d, _ in items])
        pipe.feed_input("frames", [np.asarray(f, np.int32) for _, f in items])
        out = pipe.run()[0].as_cpu()
        return [np.array(out.at(i)) for i in range(len(items))]

    full = decode([(np.fromfile(path, np.uint8), np.arange(n))])[0]
    plans = [np.arange(70, 86), np.arange(140, 160), np.r_[3:9, 120:126]]
    subs = [substream(path, ix, f) for f in plans]  # Matroska for H.264/HEVC, IVF for VP9
    got = decode([(s.data, s.frames) for s in subs])
    for f, g in zip(plans, got):
        np.testing.assert_array_equal(g, full[f], err_msg=f"{codec}: frames {f[:3]}…")
