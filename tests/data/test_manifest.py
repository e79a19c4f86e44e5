"""Manifest round trip and validation: every bad line names file, line and reason."""
from __future__ import annotations

import json

import pytest

from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest
from dalivssl.errors import DalivsslError


def _write(tmp_path, records, classes=("a", "b")):
    (tmp_path / "data").mkdir(exist_ok=True)
    header = {"format": "dalivssl-manifest", "version": 1, "root": "data",
              "classes": list(classes)}
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [header, *records]) + "\n")
    return p


def test_round_trip_keeps_records_and_extra(tmp_path):
    recs = [VideoRecord("x/v1.webm", 40, 1, "b", "test", 25.0, 64, 48, "vp9", 2, 30, "v1",
                        {"segment": 3}),
            VideoRecord("v2.webm", 10, 0, "a")]
    path = save_manifest(Manifest(tmp_path / "data", recs, ["a", "b"]), tmp_path / "m.jsonl")
    m = load_manifest(path)
    assert m.records == recs and m.records[0].extra == {"segment": 3}
    assert m.classes == ["a", "b"]
    assert m.abspath(m[0]) == (tmp_path / "data" / "x" / "v1.webm").resolve()
    assert m[0].usable_frames == 28
    assert len(m.split("test")) == 1


@pytest.mark.parametrize("meta, safe", [
    ({}, True), ({"format": "ucf101", "split": 1}, True), ({"format": "diving48"}, True),
    ({"format": "ssv2"}, False), ({"synth": {"classes": 12}}, False),
    ({"synth": {}, "flip_safe": True}, True), ({"format": "folders", "flip_safe": False}, False)])
def test_flip_safe_follows_dataset_and_survives_round_trip(tmp_path, meta, safe):
    m = Manifest(tmp_path / "data", [VideoRecord("v.webm", 10, 0, "a")], ["a"], meta)
    assert m.flip_safe is safe and m.split("train").flip_safe is safe
    assert load_manifest(save_manifest(m, tmp_path / "m.jsonl")).flip_safe is safe


def test_path_outside_root(tmp_path):
    p = _write(tmp_path, [{"path": "../escape.webm", "num_frames": 5, "label": 0}])
    with pytest.raises(DalivsslError, match=r"m\.jsonl:2: \.\./escape\.webm: path lies outside"):
        load_manifest(p)


def test_absolute_path(tmp_path):
    p = _write(tmp_path, [{"path": "/etc/x.webm", "num_frames": 5, "label": 0}])
    with pytest.raises(DalivsslError, match="outside the manifest root"):
        load_manifest(p)


def test_negative_frame_count(tmp_path):
    p = _write(tmp_path, [{"path": "ok.webm", "num_frames": 5, "label": 0},
                          {"path": "v.webm", "num_frames": -3, "label": 0}])
    with pytest.raises(DalivsslError, match=r"m\.jsonl:3: v\.webm: negative frame count -3"):
        load_manifest(p)


def test_unknown_label(tmp_path):
    p = _write(tmp_path, [{"path": "v.webm", "num_frames": 5, "label": 2}])
    with pytest.raises(DalivsslError, match=r"unknown label 2 \(manifest has 2 classes\)"):
        load_manifest(p)


def test_label_without_classes(tmp_path):
    p = _write(tmp_path, [{"path": "v.webm", "num_frames": 5, "label": 0}], classes=())
    with pytest.raises(DalivsslError, match="unknown label 0"):
        load_manifest(p)


def test_unlabelled_is_fine(tmp_path):
    p = _write(tmp_path, [{"path": "v.webm", "num_frames": 5, "label": -1}], classes=())
    assert load_manifest(p)[0].label == -1


def test_not_a_manifest(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"path": "v.webm"}\n')
    with pytest.raises(DalivsslError, match="not a dalivssl manifest"):
        load_manifest(tmp_path / "x.jsonl")
    with pytest.raises(DalivsslError, match="manifest not found"):
        load_manifest(tmp_path / "none.jsonl")


def test_manifest_hash_covers_the_video_files(tmp_path):
    """Videos replaced in place (same records) give another hash; a copied manifest file the
    same one (issue 24 #3: robustness and retrieve reused results of the old videos)."""
    import os
    import shutil

    from dalivssl.record import manifest_hash, video_stamp

    path = _write(tmp_path, [{"path": "a.webm", "num_frames": 8, "label": 0},
                             {"path": "b.webm", "num_frames": 8, "label": 1}])
    (tmp_path / "data" / "a.webm").write_bytes(b"x" * 10)
    (tmp_path / "data" / "b.webm").write_bytes(b"y" * 10)
    h = manifest_hash(load_manifest(path))
    shutil.copy(path, tmp_path / "copy.jsonl")
    assert manifest_hash(load_manifest(tmp_path / "copy.jsonl")) == h
    (tmp_path / "data" / "b.webm").write_bytes(b"z" * 12)  # another video, same name and record
    assert manifest_hash(load_manifest(path)) != h
    st = os.stat(tmp_path / "data" / "b.webm")
    assert video_stamp(tmp_path / "data" / "b.webm") == f"12:{st.st_mtime_ns}"
    h2 = manifest_hash(load_manifest(path))
    os.utime(tmp_path / "data" / "b.webm", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size
    assert manifest_hash(load_manifest(path)) != h2
    (tmp_path / "data" / "b.webm").unlink()
    assert video_stamp(tmp_path / "data" / "b.webm") == "missing"
    assert manifest_hash(load_manifest(path)) not in (h, h2)
