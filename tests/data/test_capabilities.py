"""The one capability table: what each DALI backend decodes, and the reason + fix for what not."""
from __future__ import annotations

import pytest

from dalivssl.data import capabilities as cap
from dalivssl.data.manifest import Manifest, VideoRecord

FIX_GPU = "transcode with `dalivssl data prepare MANIFEST OUT --codec h264"
FIX_CPU = "transcode with `dalivssl data prepare MANIFEST OUT --codec vp9`"


@pytest.fixture(autouse=True)
def no_probe(monkeypatch):
    """The GPU decode probe answers 'nothing decodes' unless a test says otherwise."""
    monkeypatch.setenv(cap.PROBE_ENV, "")
    monkeypatch.setattr(cap, "_probe", None)


def test_table_holds_the_documented_limits():
    assert set(cap.DECODERS["cpu"]) == {"vp8", "vp9", "mjpeg"}
    assert set(cap.DECODERS["gpu"]) == {"h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg"}
    gpu = cap.DECODERS["gpu"]
    assert gpu["vp9"].min_size == (128, 128) and gpu["hevc"].min_size == (144, 144)
    assert gpu["h264"].min_size == gpu["mpeg4"].min_size == gpu["vp8"].min_size == (48, 16)
    assert {c for c, lim in gpu.items() if lim.status == "probe"} == {"av1", "mjpeg"}
    rows = cap.table_rows()
    assert len(rows) == 10
    assert {"device": "gpu", "codec": "vp9", "min_size": "128x128", "chroma": "4:2:0",
            "bits": "8", "status": "yes"} in rows


@pytest.mark.parametrize("name,expected", [
    ("yuv420p", ("4:2:0", 8)), ("yuvj420p", ("4:2:0", 8)), ("nv12", ("4:2:0", 8)),
    ("yuv420p10le", ("4:2:0", 10)), ("yuv422p", ("4:2:2", 8)), ("yuv444p12le", ("4:4:4", 12)),
    ("gray", ("4:0:0", 8)), ("gray10le", ("4:0:0", 10)), ("p010le", ("4:2:0", 10)),
    ("rgb24", ("4:4:4", 8)), ("", (None, None)), ("weird", (None, None))])
def test_pix_fmt_info(name, expected):
    assert cap.pix_fmt_info(name) == expected


def test_accepted_videos_have_no_problem():
    assert cap.problem("vp9", 64, 64, "yuv420p", "cpu") is None
    assert cap.problem("mjpeg", 32, 32, "yuvj422p", "cpu") is None  # CPU: any format, any size
    assert cap.problem("vp9", 128, 128, "yuv420p", "gpu") is None
    assert cap.problem("h264", 320, 240, "yuv420p", "gpu") is None
    assert cap.problem("avc1", 320, 240, "yuvj420p", "gpu") is None  # alias, full-range 4:2:0
    assert cap.problem("mpeg4", 320, 240, "yuv420p", "gpu") is None
    assert cap.problem("hevc", 144, 144, "yuv420p", "gpu") is None
    # H.264 is coded in 16-px macroblocks: 40x32 is coded 48x32, which NVDEC takes
    assert cap.problem("h264", 40, 32, "yuv420p", "gpu") is None
    # unknown size or pixel format is not held against a video
    assert cap.problem("vp9", 0, 0, "", "gpu") is None


@pytest.mark.parametrize("args,reason", [
    (("h264", 320, 240, "yuv420p", "cpu"),
     f"codec h264 not decodable by DALI's CPU decoder (VP8/VP9/MJPEG only); {FIX_CPU} or decode "
     f"it on the GPU (--device gpu)"),
    (("prores", 320, 240, "yuv422p10le", "cpu"),
     f"codec prores not decodable by DALI on cpu; {FIX_CPU}"),
    (("vp9", 112, 112, "yuv420p", "gpu"),
     f"112x112 below the GPU decoder's vp9 minimum of 128x128; {FIX_GPU} --short-side 128`"),
    (("vp9", 320, 120, "yuv420p", "gpu"),
     f"320x120 below the GPU decoder's vp9 minimum of 128x128; {FIX_GPU} --short-side 128`"),
    (("hevc", 128, 128, "yuv420p", "gpu"),
     f"128x128 below the GPU decoder's hevc minimum of 144x144; {FIX_GPU} --short-side 128`"),
    (("h264", 32, 32, "yuv420p", "gpu"),
     f"32x32 below the GPU decoder's h264 minimum of 48x16; {FIX_GPU} --short-side 128`"),
    (("h264", 320, 240, "yuv444p", "gpu"),
     f"pixel format yuv444p (4:4:4) not decodable by DALI's GPU decoder for h264 (8-bit 4:2:0 "
     f"only); {FIX_GPU}`"),
    (("hevc", 320, 240, "yuv422p", "gpu"),
     f"pixel format yuv422p (4:2:2) not decodable by DALI's GPU decoder for hevc (8-bit 4:2:0 "
     f"only); {FIX_GPU}`"),
    (("h264", 320, 240, "yuv420p10le", "gpu"),
     f"pixel format yuv420p10le (10-bit) not decodable by DALI's GPU decoder for h264 (8-bit "
     f"4:2:0 only); {FIX_GPU}`"),
    (("av1", 320, 240, "yuv420p", "gpu"),
     f"codec av1 not decodable by NVDEC on this GPU (no successful decode probe); {FIX_GPU}`"),
    (("mjpeg", 320, 240, "yuvj420p", "gpu"),
     f"codec mjpeg not decodable by NVDEC on this GPU (no successful decode probe); {FIX_GPU}`"),
    (("msmpeg4v3", 320, 240, "yuv420p", "gpu"),
     f"codec msmpeg4v3 not decodable by DALI on gpu; {FIX_GPU}`"),
])
def test_each_rejection_has_its_reason_and_fix(args, reason):
    assert cap.problem(*args) == reason


def test_probe_entries_count_when_the_probe_decoded_them(monkeypatch):
    monkeypatch.setenv(cap.PROBE_ENV, "av1")
    assert cap.PROBE_CODECS == ("av1", "mjpeg")
    assert cap.probed() == {"av1": True, "mjpeg": False}
    assert cap.problem("av1", 320, 240, "yuv420p", "gpu") is None
    assert cap.problem("av1", 64, 64, "yuv420p", "gpu").startswith("64x64 below the GPU")
    assert cap.problem("mjpeg", 320, 240, "yuvj420p", "gpu").startswith("codec mjpeg not")
    # static: the table alone, as doctor compares it with a measurement
    assert cap.problem("mjpeg", 320, 240, "yuvj420p", "gpu", static=True) is None


def test_the_installed_probe_decides_and_the_environment_overrides_it(monkeypatch):
    """The table measures nothing itself: without a probe (and without the variable) the probe
    entries do not decode; an installed probe is asked on need; $DALIVSSL_GPU_PROBE wins."""
    monkeypatch.delenv(cap.PROBE_ENV)
    assert cap.probed() == {"av1": False, "mjpeg": False}
    assert cap.problem("av1", 320, 240, "yuv420p", "gpu").startswith("codec av1 not decodable "
                                                                     "by NVDEC on this GPU")
    asked = []
    cap.use_probe(lambda: asked.append(1) or {"mjpeg": True, "h264": True})
    assert cap.probed() == {"av1": False, "mjpeg": True}  # only the table's probe entries
    assert cap.problem("mjpeg", 320, 240, "yuvj420p", "gpu") is None
    assert cap.problem("av1", 320, 240, "yuv420p", "gpu") is not None
    assert cap.problem("vp9", 320, 240, "yuv420p", "gpu") is None and len(asked) == 3
    monkeypatch.setenv(cap.PROBE_ENV, "av1")
    assert cap.probed() == {"av1": True, "mjpeg": False} and len(asked) == 3
    cap.use_probe(None)
    monkeypatch.delenv(cap.PROBE_ENV)
    assert cap.problem("mjpeg", 320, 240, "yuvj420p", "gpu") is not None


def test_record_problem_reads_the_header_on_gpu_when_the_record_lacks_it(tmp_path):
    from dalivssl.data.decode_matrix import CASES, write_case

    p444 = write_case(CASES["h264-444"], 64, tmp_path / "a.mp4", n=4)
    p420 = write_case(CASES["h264"], 64, tmp_path / "b.mp4", n=4)
    assert cap.stream_info(p444) == {"codec": "h264", "width": 64, "height": 64,
                                     "pix_fmt": "yuv444p"}
    old = VideoRecord("a.mp4", 4, codec="h264", width=64, height=64)  # no pix_fmt: old manifest
    assert cap.record_problem(old, p444, "gpu").startswith("pixel format yuv444p (4:4:4)")
    assert cap.record_problem(VideoRecord("b.mp4", 4), p420, "gpu") is None  # all from header
    # CPU: the record alone decides (no file opened), as before
    assert cap.record_problem(old, tmp_path / "gone.mp4", "cpu").startswith("codec h264 not")
    assert cap.record_problem(VideoRecord("x.webm", 4), tmp_path / "gone.webm", "cpu") is None
    # a record that says 4:2:0 wins over nothing; the header is not read then
    rec = VideoRecord("a.mp4", 4, codec="h264", width=64, height=64,
                      extra={"pix_fmt": "yuv420p"})
    assert cap.record_problem(rec, tmp_path / "gone.mp4", "gpu") is None


def test_probe_and_synth_record_the_pixel_format(tmp_path):
    from dalivssl.data.probe import probe
    from dalivssl.data.synth import generate
    from dalivssl.data.manifest import load_manifest

    paths = generate(tmp_path, videos=2, classes=2, frames=4, size=32)
    m = load_manifest(paths["all"])
    assert [r.extra["pix_fmt"] for r in m.records] == ["yuv420p", "yuv420p"]
    assert probe(m.abspath(m.records[0]))["pix_fmt"] == "yuv420p"


def test_check_uses_the_table_for_size_on_gpu(tmp_path, make_video):
    from dalivssl.data.check import check_manifest

    src = make_video(6, size=(64, 64), seed=3)  # VP9 64 px: fine on CPU, too small for NVDEC
    m = Manifest(src.parent, [VideoRecord(src.name, 6, 0, "a")], ["a"])
    assert check_manifest(m, device="cpu") == []
    ((rec, why),) = check_manifest(m, device="gpu")
    assert why == f"64x64 below the GPU decoder's vp9 minimum of 128x128; {FIX_GPU} --short-side 128`"


def test_embedded_dataset_is_decodable_by_both_decoders():
    from dalivssl.data import synth

    d = synth.DEFAULT
    assert d.size == synth.GPU_MIN_SIZE == cap.DECODERS["gpu"]["vp9"].min_size[0]
    assert cap.problem("vp9", d.size, d.size, "yuv420p", "gpu") is None
    assert cap.problem("vp9", d.size, d.size, "yuv420p", "cpu") is None
    # the cache key changed with the size, so a 112-px cache is never reused
    assert synth._default_name(d) == "synth-v5-300v-12c-150f-128px-s0"
