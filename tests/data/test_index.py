"""`data index`: one adapter per annotation convention, probing, failures left out."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from dalivssl.data.adapters import ADAPTERS, IndexOptions, list_videos
from dalivssl.data.index import index_dataset
from dalivssl.data.manifest import load_manifest
from dalivssl.errors import DalivsslError


@pytest.fixture(scope="module")
def clips(make_video):
    """Three tiny VP9 files with 8, 10 and 12 frames."""
    return [make_video(n, size=(32, 48), seed=n) for n in (8, 10, 12)]


def put(clips, root, rel, k=0):
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clips[k % len(clips)], dst)
    return dst


def by_path(manifest):
    return {r.path: r for r in manifest}


def test_registry_and_unknown_format(tmp_path):
    assert set(ADAPTERS) == {"folders", "ucf101", "hmdb51", "kinetics400", "ssv2", "diving48"}
    with pytest.raises(DalivsslError, match="unknown dataset format 'ucf'; valid: diving48, "
                                            "folders, hmdb51, kinetics400, ssv2, ucf101"):
        list_videos(tmp_path, "ucf")


def test_folders_with_a_broken_video(clips, tmp_path):
    put(clips, tmp_path, "dog/a.webm", 0)
    put(clips, tmp_path, "dog/sub/b.webm", 1)
    put(clips, tmp_path, "cat/c.webm", 2)
    (tmp_path / "cat" / "notes.txt").write_text("not listed: not a video suffix")
    (tmp_path / "cat" / "broken.webm").write_text("garbage")
    m, failures = index_dataset(tmp_path, "folders")
    assert m.classes == ["cat", "dog"]
    got = {p: (r.label, r.class_name, r.split, r.num_frames) for p, r in by_path(m).items()}
    assert got == {"dog/a.webm": (1, "dog", "train", 8), "dog/sub/b.webm": (1, "dog", "train", 10),
                   "cat/c.webm": (0, "cat", "train", 12)}
    assert failures == [("cat/broken.webm", "not a video")]
    r = by_path(m)["cat/c.webm"]
    assert (r.width, r.height, r.codec, r.fps, r.video_id) == (48, 32, "vp9", 25.0, "c")


def test_folders_with_split_dirs(clips, tmp_path):
    put(clips, tmp_path, "train/a/x.webm")
    put(clips, tmp_path, "train/b/y.webm")
    put(clips, tmp_path, "val/b/z.webm")
    m, _ = index_dataset(tmp_path, "folders")
    assert m.classes == ["a", "b"]
    assert {(r.path, r.label, r.split) for r in m} == {
        ("train/a/x.webm", 0, "train"), ("train/b/y.webm", 1, "train"),
        ("val/b/z.webm", 1, "val")}


def test_ucf101(clips, tmp_path):
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    (ann / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "HandstandPushups/v_HandStandPushups_g09_c01.avi 2\n")
    (ann / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    (ann / "trainlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
    (ann / "testlist02.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\n")
    for i, rel in enumerate(["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
                             "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                             "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"]):
        put(clips, root, rel, i)  # VP9 bytes under .avi names: probing goes by content
    m, failures = index_dataset(root, "ucf101")  # annotations found beside ROOT
    assert m.classes == ["ApplyEyeMakeup", "HandstandPushups"]
    assert {(r.path, r.label, r.split, r.num_frames) for r in m} == {
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "train", 8),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 1, "train", 10),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0, "test", 12)}
    assert failures == [("HandstandPushups/v_HandStandPushups_g09_c01.avi", "missing")]
    m2, _ = index_dataset(root, "ucf101", IndexOptions(split=2, annotations=(ann,)))
    assert {(r.path, r.split) for r in m2} == {
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "train"),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "test")}
    with pytest.raises(DalivsslError, match="--split must be 1, 2 or 3"):
        index_dataset(root, "ucf101", IndexOptions(split=4))


def test_hmdb51(clips, tmp_path):
    root, ann = tmp_path / "hmdb51", tmp_path / "splits"
    ann.mkdir()
    (ann / "brush_hair_test_split1.txt").write_text("b1.avi 1 \nb2.avi 2 \nb3.avi 0 \n")
    (ann / "cartwheel_test_split1.txt").write_text("c1.avi 2 \n")
    (ann / "cartwheel_test_split2.txt").write_text("c1.avi 1 \n")
    for i, rel in enumerate(["brush_hair/b1.avi", "brush_hair/b2.avi", "brush_hair/b3.avi",
                             "cartwheel/c1.avi"]):
        put(clips, root, rel, i)
    m, failures = index_dataset(root, "hmdb51", IndexOptions(1, (ann,)))
    assert m.classes == ["brush_hair", "cartwheel"]
    assert {(r.path, r.label, r.split) for r in m} == {
        ("brush_hair/b1.avi", 0, "train"), ("brush_hair/b2.avi", 0, "test"),
        ("cartwheel/c1.avi", 1, "test")}  # flag 0 (b3) is unused
    assert failures == []


@pytest.mark.parametrize("layout", ["class_folders", "flat"])
def test_kinetics400(clips, tmp_path, layout):
    root = tmp_path / "k400"
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,--07WQ2iBlw,1,11,train,0\n"
        "air drumming,-0SCq4wTz9c,35,45,train,0\n"
        "air drumming,zzzMISSING1,5,15,train,0\n")
    (tmp_path / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,0wR5jVB-WPk,417,427,val\n")
    names = [("abseiling", "--07WQ2iBlw_000001_000011.mp4"),
             ("air_drumming", "-0SCq4wTz9c_000035_000045.mp4"),
             ("abseiling", "0wR5jVB-WPk_000417_000427.mp4")]
    for i, (cls, name) in enumerate(names):
        put(clips, root, f"{cls}/{name}" if layout == "class_folders" else name, i)
    m, failures = index_dataset(root, "kinetics400", IndexOptions(
        annotations=(tmp_path / "train.csv", tmp_path / "validate.csv")))
    assert m.classes == ["abseiling", "air drumming"]
    got = {(r.video_id, r.label, r.class_name, r.split, r.num_frames) for r in m}
    assert got == {("--07WQ2iBlw", 0, "abseiling", "train", 8),
                   ("-0SCq4wTz9c", 1, "air drumming", "train", 10),
                   ("0wR5jVB-WPk", 0, "abseiling", "val", 12)}
    assert failures == [("zzzMISSING1_000005_000015", "missing")]
    assert by_path(m)[[r.path for r in m if r.video_id == "0wR5jVB-WPk"][0]].extra == {
        "time_start": 417, "time_end": 427}


def test_ssv2(clips, tmp_path):
    root, ann = tmp_path / "videos", tmp_path / "labels"
    ann.mkdir()
    (ann / "labels.json").write_text(json.dumps({"Holding something": "1",
                                                 "Pushing something from left to right": "0"}))
    (ann / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding a cup", "template": "Holding [something]",
         "placeholders": ["a cup"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]}]))
    (ann / "validation.json").write_text(json.dumps([
        {"id": "100", "label": "holding a box", "template": "Holding [something]",
         "placeholders": ["a box"]}]))
    for i, vid in enumerate(["78687", "42326", "100"]):
        put(clips, root, f"{vid}.webm", i)
    m, failures = index_dataset(root, "ssv2", IndexOptions(annotations=(ann,)))
    assert m.classes == ["Pushing something from left to right", "Holding something"]
    assert {(r.path, r.label, r.split, r.video_id) for r in m} == {
        ("78687.webm", 1, "train", "78687"), ("42326.webm", 0, "train", "42326"),
        ("100.webm", 1, "val", "100")}
    assert by_path(m)["100.webm"].extra == {"caption": "holding a box"}
    assert failures == []


def test_diving48_records_frame_range(clips, tmp_path):
    root = tmp_path / "rgb"
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps([
        {"vid_name": "-mmq0PT-u8k_00155", "label": 1, "start_frame": 0, "end_frame": 7},
        {"vid_name": "gone_00001", "label": 0, "start_frame": 0, "end_frame": 9}]))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps([
        {"vid_name": "abc_00002", "label": 0, "start_frame": 2, "end_frame": 9}]))
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps([["Back", "15som", "05Twis",
                                                               "FREE"],
                                                              ["Back", "15som", "15Twis",
                                                               "FREE"]]))
    put(clips, root, "-mmq0PT-u8k_00155.mp4", 0)
    put(clips, root, "abc_00002.mp4", 1)
    m, failures = index_dataset(root, "diving48")  # annotations found beside ROOT
    assert m.classes == ["Back/15som/05Twis/FREE", "Back/15som/15Twis/FREE"]
    recs = by_path(m)
    a, b = recs["-mmq0PT-u8k_00155.mp4"], recs["abc_00002.mp4"]
    assert (a.label, a.split, a.start_frame, a.end_frame, a.usable_frames) == (1, "train", 0, 7, 7)
    assert (b.label, b.split, b.start_frame, b.end_frame, b.usable_frames) == (0, "test", 2, 9, 7)
    assert failures == [("gone_00001", "missing")]


def test_cli_index(clips, tmp_path):
    from dalivssl.cli import cli

    root = tmp_path / "ds"
    put(clips, root, "a/x.webm", 0)
    put(clips, root, "b/y.webm", 1)
    (root / "b" / "z.webm").write_bytes(b"")
    out = tmp_path / "m.jsonl"
    res = CliRunner().invoke(cli, ["data", "index", str(root), "--format", "folders", "-o",
                                   str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "b/z.webm: empty file" in res.output
    assert "2 videos, 2 classes, train 2; 1 left out" in res.output
    m = load_manifest(out)
    assert {(r.path, r.num_frames) for r in m} == {("a/x.webm", 8), ("b/y.webm", 10)}
    assert m.root == root.resolve()
    # the packet index comes from the same pass: a sidecar beside the manifest, one row a video
    assert out.with_name("m.packets.npz").is_file()
    for r in m:
        ix = m.packet_index(r)
        assert ix.num_frames == r.num_frames and ix.keyframes()[0] == 0


def test_cli_index_update_adds_the_packet_index(clips, tmp_path):
    from dalivssl.cli import cli
    from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest

    root = tmp_path / "ds"
    put(clips, root, "a/x.webm", 0)
    put(clips, root, "b/y.webm", 1)
    old = tmp_path / "old.jsonl"  # an older manifest: no sidecar, one wrong frame count
    save_manifest(Manifest(root, [VideoRecord("a/x.webm", 8), VideoRecord("b/y.webm", 11)], []),
                  old)
    assert load_manifest(old).packet_index(load_manifest(old).records[0]) is None
    res = CliRunner().invoke(cli, ["data", "index", "--update", str(old), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "b/y.webm: manifest says 11 frames, the file holds 10: updated" in res.output
    assert "packet index for 2 of 2 videos" in res.output
    m = load_manifest(old)
    assert [r.num_frames for r in m] == [8, 10]
    assert [m.packet_index(r).num_frames for r in m] == [8, 10]
    res = CliRunner().invoke(cli, ["data", "index", "--update", str(old), "--format", "folders"])
    assert res.exit_code == 2 and "takes no ROOT or --format" in res.output
