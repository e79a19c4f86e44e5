"""The loader on long-GOP videos with a packet index: every task's batches are bit-identical to
whole-file decoding, the decoded frames per sample stay within window + GOP, and a truncated
video is skipped (pretraining and evaluation), never decoded into black frames."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")

from dalivssl.data.index import update_packets  # noqa: E402
from dalivssl.data.manifest import Manifest, VideoRecord  # noqa: E402
from pipelines.loader import PretextLoader  # noqa: E402
from pipelines.samplers import SAMPLERS  # noqa: E402

EXCLUDE: set[str] = set()  # every sampler (eval included) must decode the same clips from GOP ranges
TASKS = sorted(set(SAMPLERS) - EXCLUDE)
OPTIONS = {"prp": {"rates": (1, 2, 4)}}
N = 300


@pytest.fixture(scope="module")
def long_gop(make_video):
    """Indexed manifest of 4 VP9 videos of N frames: keyframes every 128 (2 videos) and 250."""
    gops = (128, 250, 128, 250)
    paths = [make_video(num_frames=N, size=(32, 48), gop=g, seed=60 + i)
             for i, g in enumerate(gops)]
    man = Manifest(paths[0].parent, [VideoRecord(p.name, N, width=48, height=32) for p in paths],
                   [])
    indexed, problems = update_packets(man)
    assert problems == []
    return indexed, gops


@pytest.mark.parametrize("task", TASKS)
def test_gop_range_batches_equal_whole_file_batches(task, long_gop):
    man, gops = long_gop
    out = {}
    for ranges in (True, False):
        loader = PretextLoader(task, man, batch_size=4, clip_len=8, size=32, augment=False,
                               raw=True, seed=2, prefetch=0, gop_ranges=ranges,
                               **OPTIONS.get(task, {}))
        out[ranges] = [loader.batch_at(0, 0).clips.clone() for _ in range(1)]
        out[ranges].append(loader.batch_at(1, 0).clips)
        stats = loader.decode_stats
        if ranges:
            # decoded frames per sample <= window + GOP: the ratio is bounded by 1 + GOP/window
            assert stats["decoded"] <= stats["window"] + stats["samples"] * max(gops)
            ratio_ranges = stats["decoded"] / stats["delivered"]
        else:
            ratio_full = stats["decoded"] / stats["delivered"]
    for a, b in zip(out[True], out[False]):
        assert torch.equal(a, b), f"{task}: GOP-range decode differs from whole-file decode"
    assert ratio_ranges <= ratio_full


def _truncated(make_video, tmp_path, indexed: bool):
    """Manifest of 3 good videos and one cut to half its bytes (its record keeps the full count:
    the file was damaged after indexing)."""
    paths = [make_video(num_frames=48, size=(32, 32), seed=80 + i) for i in range(4)]
    root = paths[0].parent
    man = Manifest(root, [VideoRecord(p.name, 48, label=i % 2) for i, p in enumerate(paths)],
                   ["a", "b"])
    if indexed:
        man, _ = update_packets(man)
    cut = tmp_path / "cut.webm"
    data = paths[3].read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    files = [*paths[:3], cut]
    return Manifest(root.parent, [VideoRecord(str(f.relative_to(root.parent)), 48, label=r.label,
                                              packets=r.packets)
                                  for f, r in zip(files, man.records)], ["a", "b"],
                    packets=man.packets)


@pytest.mark.parametrize("indexed", [True, False])
def test_truncated_video_is_skipped_in_pretraining_never_black(indexed, make_video, tmp_path):
    man = _truncated(make_video, tmp_path, indexed)
    loader = PretextLoader("rotnet", man, batch_size=3, clip_len=8, size=32, raw=True, seed=0,
                           drop_last=False)
    batches = list(loader)
    used = {int(i) for b in batches for i in b.indices}
    assert 3 not in used and used == {0, 1, 2}
    reason = "truncated file (fewer bytes than when indexed)" if indexed else "decode error"
    assert loader.skipped == {reason: 1}
    for b in batches:  # no black frame anywhere
        assert b.clips.float().mean(dim=(-3, -2, -1)).min() > 5


def test_truncated_video_is_skipped_in_evaluation(make_video, tmp_path):
    from dalivssl.engine.features import eval_loader, extract

    man = _truncated(make_video, tmp_path, indexed=True)
    loader = eval_loader(man, num_clips=3, batch_size=2, clip_len=8, size=32, raw=True)
    out = extract(lambda x: x.float().mean(dim=(1, 2, 3, 4))[:, None], loader)
    means = out.clips
    assert out.indices.tolist() == [0, 1, 2]
    assert loader.counts() == {"videos": 4, "skipped": 1, "short": 0, "skipped_by_reason": {
        "truncated file (fewer bytes than when indexed)": 1}}
    assert means.min() > 5


def test_short_video_is_counted(make_video, tmp_path):
    """RotNet on an 8-frame video with T=16: used (as the task's sampler plans it) and counted."""
    p = make_video(num_frames=8, size=(32, 32), seed=90)
    q = make_video(num_frames=100, size=(32, 32), seed=91)  # > 5·15+1: never clamped
    man = Manifest(p.parent, [VideoRecord(p.name, 8), VideoRecord(q.name, 100)], [])
    loader = PretextLoader("rotnet", man, batch_size=2, clip_len=16, size=32, raw=True)
    next(iter(loader))
    assert loader.short == 1 and loader.counts()["short"] == 1


def test_a_rejected_substream_falls_back_to_the_whole_file(long_gop, monkeypatch):
    """A sub-stream DALI cannot read is retried as the whole file; the codec is then decoded
    whole, and the video is not counted as bad."""
    import pipelines.loader as loader_mod

    man, _ = long_gop
    ref = PretextLoader("vcop", man, batch_size=2, clip_len=8, size=32, augment=False, raw=True,
                        prefetch=0, gop_ranges=False).batch_at(0, 0).clips
    real = loader_mod.PretextLoader._encode

    def broken(self, idx, rec, frames):
        enc = real(self, idx, rec, frames)
        if enc.codec:  # garble the IVF signature: libavformat no longer recognises the stream
            enc.data = enc.data.copy()
            enc.data[:32] = 0
        return enc

    monkeypatch.setattr(loader_mod.PretextLoader, "_encode", broken)
    loader = PretextLoader("vcop", man, batch_size=2, clip_len=8, size=32, augment=False,
                           raw=True, prefetch=0)
    assert torch.equal(loader.batch_at(0, 0).clips, ref)
    assert loader.skipped == {} and "vp9" not in loader._range_codecs


def test_plan_past_the_indexed_end_is_skipped_before_decoding(make_video, tmp_path):
    """A record promising more frames than its packet index holds: VCOP's window (> 48 frames)
    always ends past the 48 indexed frames, so the video is skipped without a decode."""
    paths = [make_video(num_frames=n, size=(32, 32), seed=95 + i) for i, n in enumerate((48, 120))]
    man, _ = update_packets(Manifest(paths[0].parent, [VideoRecord(p.name, 1) for p in paths], []))
    man.records[0] = VideoRecord(paths[0].name, 300, packets=man.records[0].packets)
    loader = PretextLoader("vcop", man, batch_size=1, clip_len=8, size=32, raw=True,
                           drop_last=False)
    assert [int(b.indices[0]) for b in loader] == [1, 1]
    assert loader.skipped == {"plan past the decodable end": 1}
