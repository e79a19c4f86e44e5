"""probe(): exact counts and one canonical reason per kind of bad file."""
from __future__ import annotations


import numpy as np
import pytest

from dalivssl.data.probe import probe
from dalivssl.errors import VideoError


def test_probe_vp9(make_video):
    p = make_video(12, size=(32, 48), fps=30)
    info = probe(p)
    assert info == {"num_frames": 12, "fps": 30.0, "width": 48, "height": 32, "codec": "vp9",
                    "pix_fmt": "yuv420p"}
    assert probe(p, exact=True)["num_frames"] == 12


def test_probe_mjpeg_avi(make_video):
    info = probe(make_video(9, size=(32, 48), codec="mjpeg"))
    assert (info["num_frames"], info["codec"]) == (9, "mjpeg")


def _reason(path, **kw):
    with pytest.raises(VideoError) as exc:
        probe(path, **kw)
    assert exc.value.path == str(path)
    assert "\n" not in str(exc.value)
    return exc.value.reason


def test_missing(tmp_path):
    assert _reason(tmp_path / "nope.webm") == "missing"


def test_empty(tmp_path):
    (tmp_path / "e.webm").write_bytes(b"")
    assert _reason(tmp_path / "e.webm") == "empty file"


def test_text_is_not_a_video(tmp_path):
    (tmp_path / "t.webm").write_text("this is not a video\n" * 20)
    assert _reason(tmp_path / "t.webm").startswith("not a video")


def test_random_bytes_are_not_a_video(tmp_path):
    (tmp_path / "r.webm").write_bytes(np.random.default_rng(0).bytes(4000))
    assert _reason(tmp_path / "r.webm").startswith("not a video")


def test_truncated(make_video, tmp_path):
    data = make_video(40, size=(64, 80), seed=3).read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "cut.webm").startswith("truncated or corrupt")


def test_garbage_in_the_middle(make_video, tmp_path):
    data = bytearray(make_video(40, size=(64, 80), seed=4).read_bytes())
    mid = len(data) // 2
    data[mid:mid + 800] = np.random.default_rng(1).bytes(800)
    (tmp_path / "bad.webm").write_bytes(bytes(data))
    assert _reason(tmp_path / "bad.webm").startswith("truncated or corrupt")


def test_audio_only_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "a.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for pkt in s.encode(frame):
            out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    assert _reason(path) == "no video stream"
