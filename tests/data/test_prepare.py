"""`data prepare`: transcode to DALI-friendly files, segments, resume, bad inputs."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dalivssl.data.check import check_manifest
from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest
from dalivssl.data.prepare import _segments, prepare
from dalivssl.data.videoio import decode_frames
from dalivssl.errors import DalivsslError


@pytest.mark.parametrize("n,total,want", [
    (16, 40, [16, 16, 8]),      # tail 8 >= 16/2: its own segment
    (12, 40, [12, 12, 16]),     # tail 4 < 6: joins the last segment
    (10, 40, [10, 10, 10, 10]),
    (16, 9, [9]),               # shorter than N: one segment
    (5, 7, [7]),                # tail 2 < 3 joins
    (5, 8, [5, 3]),             # tail 3 >= ceil(5/2)
    (None, 13, [13]),
])
def test_segment_rule(n, total, want):
    segs = list(_segments(iter(range(total)), n))
    assert [len(s) for s in segs] == want
    assert sum(segs, []) == list(range(total))  # consecutive, nothing dropped


@pytest.fixture()
def src(tmp_path, make_video):
    """Manifest of two 40-frame and one 20-frame VP9 videos (64x80), two classes, two splits."""
    root = tmp_path / "src"
    specs = [("a/x.webm", 40, 0, "train", 1), ("b/y.webm", 40, 1, "test", 2),
             ("b/z.webm", 20, 1, "train", 3)]
    recs = []
    for rel, n, label, split, seed in specs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(make_video(n, size=(64, 80), seed=seed), root / rel)
        recs.append(VideoRecord(rel, n, label, "ab"[label], split, 25.0, 80, 64, "vp9",
                                video_id=rel[2]))
    return Manifest(root, recs, ["a", "b"], {"format": "ssv2"})


def test_prepare_resizes_and_keeps_labels(src, tmp_path):
    new, failures, path = prepare(src, tmp_path / "out", short_side=32, gop=8)
    assert failures == [] and path == (tmp_path / "out" / "manifest.jsonl").resolve()
    m = load_manifest(path)
    assert [r.path for r in m] == ["a/x.webm", "b/y.webm", "b/z.webm"]
    for r, s in zip(m, src):
        assert (r.num_frames, r.label, r.class_name, r.split, r.video_id) == (
            s.num_frames, s.label, s.class_name, s.split, s.video_id)
        assert (r.width, r.height, r.codec) == (40, 32, "vp9")  # short side 32, aspect kept
    assert m.classes == ["a", "b"]
    assert check_manifest(m, "cpu", decode=True) == []  # DALI's CPU decoder reads every file


def test_segments_sum_to_source_and_keep_frame_order(src, tmp_path):
    new, failures, _ = prepare(src, tmp_path / "out", short_side=0, segment_frames=16)
    assert failures == []
    segs = [r for r in new if r.video_id == "x"]
    assert [r.num_frames for r in segs] == [16, 16, 8]
    assert [r.extra["segment"] for r in segs] == [0, 1, 2]
    assert [r.extra["source_start"] for r in segs] == [0, 16, 32]
    assert {r.extra["source"] for r in segs} == {"a/x.webm"}
    assert [r.num_frames for r in new if r.video_id == "z"] == [20]  # 16 + tail 4 < 8
    # every segment has its packet index, recorded by the probe that counted its frames
    m = load_manifest(tmp_path / "out" / "manifest.jsonl")
    for r in m:
        assert m.packet_index(r).num_frames == r.num_frames
    assert all(r.label == 1 and r.split == "test" for r in new if r.video_id == "y")
    # frame j of segment i is source frame source_start + j (compare through both codecs)
    source = decode_frames(src.abspath(src[0])).astype(np.float32)
    seg1 = decode_frames(new.abspath(segs[1])).astype(np.float32)
    for j in (0, 7, 15):
        errs = [np.abs(seg1[j] - source[k]).mean() for k in range(40)]
        assert int(np.argmin(errs)) == 16 + j
    assert check_manifest(new, "cpu", decode=True) == []


def test_segments_use_the_usable_range(src, tmp_path):
    rec = VideoRecord("a/x.webm", 40, 0, "a", start_frame=5, end_frame=35, video_id="x")
    new, _, _ = prepare(src.select([rec]), tmp_path / "out", short_side=0, segment_frames=10)
    assert [(r.num_frames, r.extra["source_start"], r.start_frame, r.end_frame) for r in new] == [
        (10, 5, 0, -1), (10, 15, 0, -1), (10, 25, 0, -1)]


def test_resume_skips_finished_videos(src, tmp_path):
    out = tmp_path / "out"
    first, _, _ = prepare(src, out, short_side=32)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.webm")}
    (out / "b" / "y.webm").unlink()  # pretend y never finished: remove it and its marker
    (out / ".done" / "b" / "y.webm.json").unlink()
    (out / "b" / "z.partial.webm").write_bytes(b"half-written")  # leftover of a killed run
    second, failures, _ = prepare(src, out, short_side=32)
    assert failures == []
    assert second.records == first.records
    # resumed videos get their packet index too (re-read from the finished files)
    m = load_manifest(out / "manifest.jsonl")
    assert [m.packet_index(r).num_frames for r in m] == [r.num_frames for r in m]
    assert (out / "a" / "x.webm").stat().st_mtime_ns == stamps[out / "a" / "x.webm"]
    assert (out / "b" / "z.webm").stat().st_mtime_ns == stamps[out / "b" / "z.webm"]
    assert (out / "b" / "y.webm").is_file()
    assert not any(".partial" in r.path for r in second)
    assert not (out / "b" / "z.partial.webm").exists()


def test_bad_input_is_reported_and_others_succeed(src, tmp_path):
    (src.root / "b" / "y.webm").write_bytes(b"not a video at all" * 10)
    rec = VideoRecord("a/gone.webm", 40, 0, "a")
    m = src.select(src.records + [rec])
    new, failures, _ = prepare(m, tmp_path / "out", short_side=32)
    assert failures == [("b/y.webm", "not a video"), ("a/gone.webm", "missing")]
    assert [r.path for r in new] == ["a/x.webm", "b/z.webm"]
    assert not list((tmp_path / "out").rglob("*.partial.*"))


def test_mjpeg_decodes_on_cpu(src, tmp_path):
    new, failures, _ = prepare(src.select(src.records[2:]), tmp_path / "out", codec="mjpeg",
                               short_side=32)
    assert failures == [] and new[0].path == "b/z.avi" and new[0].codec == "mjpeg"
    assert new[0].num_frames == 20
    assert check_manifest(new, "cpu", decode=True) == []


def test_cli_prepare(src, tmp_path):
    from dalivssl.cli import cli

    path = save_manifest(src, tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["data", "prepare", str(path), str(tmp_path / "out"),
                                   "--short-side", "32", "--segment-frames", "20",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [r.num_frames for r in m] == [20, 20, 20, 20, 20]
    assert m.meta["prepared"]["segment_frames"] == 20
    # the source's dataset meta is kept: a prepared SSv2 is still not flip-safe
    assert m.meta["format"] == "ssv2" and m.flip_safe is False


@pytest.mark.parametrize("opt,value,msg", [
    ("--short-side", "-5", "--short-side must be >= 2 (or 0: keep the size), got -5"),
    ("--short-side", "1", "--short-side must be >= 2"),
    ("--gop", "0", "--gop must be >= 1, got 0"),
    ("--workers", "-1", "--workers must be >= 1, got -1"),
])
def test_out_of_range_prepare_options_are_one_line(src, tmp_path, opt, value, msg, capsys):
    """Review t3 #48: --short-side -5 made 2×2-px videos."""
    from dalivssl.cli import main

    path = save_manifest(src, tmp_path / "m.jsonl")
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", str(path), str(tmp_path / "out"), opt, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_h264_for_the_mixed_decoder(src, tmp_path):
    new, failures, _ = prepare(src, tmp_path / "out", codec="h264", short_side=32,
                               segment_frames=16)
    assert failures == [] and {r.codec for r in new} == {"h264"}
    assert [r.num_frames for r in new if r.video_id == "x"] == [16, 16, 8]
    assert check_manifest(new, "gpu", decode=True) == []
    assert len(check_manifest(new, "cpu")) == len(new)  # and the CPU check says why not


def test_rerun_with_other_settings_is_refused_or_replaced(src, tmp_path):
    """Review t3 #48: a rerun with another short side kept the old 32-px files. It is refused
    in one line; with overwrite the output is the new settings' only."""
    out = tmp_path / "out"
    first, _, _ = prepare(src, out, short_side=32)
    assert {min(r.width, r.height) for r in first} == {32}
    assert prepare(src, out, short_side=32)[0].records == first.records  # same: resumes
    with pytest.raises(DalivsslError, match=r"other settings \(short_side: 32 → 48\); pass "
                                            r"--overwrite") as exc:
        prepare(src, out, short_side=48)
    assert "\n" not in str(exc.value)
    seg, _, _ = prepare(src, out, short_side=48, segment_frames=10, overwrite=True)
    assert {min(r.width, r.height) for r in seg} == {48}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.webm")}
    assert files == {r.path for r in seg} and "a/x.webm" not in files  # no old file left
    assert load_manifest(out / "manifest.jsonl").records == seg.records
    (src.root / "a" / "x.webm").write_bytes((src.root / "b" / "y.webm").read_bytes())
    with pytest.raises(DalivsslError, match="source_hash"):  # the source videos changed
        prepare(src, out, short_side=48, segment_frames=10)
