"""`data check`: one test per kind of bad video, exit codes and --write-clean."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dalivssl.data.check import check_manifest, dali_decode_check
from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest, save_manifest


@pytest.fixture(scope="module")
def good(make_video):
    return make_video(24, size=(48, 64), seed=11)


def one(tmp_path, name, src=None, data=None, frames=24, **kw):
    """Manifest with a single record ``name`` made from a copy of ``src`` or from ``data``."""
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    if src is not None:
        shutil.copyfile(src, root / name)
    elif data is not None:
        (root / name).write_bytes(data)
    rec = VideoRecord(name, frames, 0, "a", **kw)
    return Manifest(root, [rec], ["a"])


def reason(m, **kw):
    bad = check_manifest(m, **kw)
    assert len(bad) == 1 and bad[0][0] is m.records[0]
    assert "\n" not in bad[0][1]
    return bad[0][1]


def test_clean_video_passes(tmp_path, good):
    assert check_manifest(one(tmp_path, "ok.webm", good), min_frames=24, decode=True) == []


def test_missing(tmp_path):
    assert reason(one(tmp_path, "gone.webm")) == "missing"


def test_empty(tmp_path):
    assert reason(one(tmp_path, "empty.webm", data=b"")) == "empty file"


def test_truncated(tmp_path, good):
    data = good.read_bytes()
    assert reason(one(tmp_path, "cut.webm", data=data[: len(data) // 2])).startswith(
        "truncated or corrupt")


def test_corrupt_middle(tmp_path, good):
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 600] = np.random.default_rng(0).bytes(600)
    assert reason(one(tmp_path, "bad.webm", data=bytes(data))).startswith("truncated or corrupt")


def test_random_bytes(tmp_path):
    data = np.random.default_rng(5).bytes(3000)
    assert reason(one(tmp_path, "noise.webm", data=data)).startswith("not a video")


def test_text_renamed_webm(tmp_path):
    assert reason(one(tmp_path, "readme.webm", data=b"hello\n" * 50)).startswith("not a video")


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_gpu_only_codec_on_cpu(tmp_path, make_video, codec):
    src = make_video(10, size=(48, 64), codec=codec)
    m = one(tmp_path, src.name, src, frames=10)
    why = reason(m, device="cpu")
    assert why.startswith(f"codec {codec} not decodable by DALI's CPU decoder (VP8/VP9/MJPEG")
    assert "dalivssl data prepare" in why
    assert check_manifest(m, device="gpu") == []  # the mixed decoder takes it


def test_too_short(tmp_path, good):
    assert reason(one(tmp_path, "ok.webm", good), min_frames=25) == (
        "too short: 24 usable frames, 25 needed")
    # the usable range counts, not the file: Diving48-style start/end
    m = one(tmp_path, "ok2.webm", good, start_frame=4, end_frame=20)
    assert reason(m, min_frames=17) == "too short: 16 usable frames, 17 needed"


def test_frame_count_differs_from_manifest(tmp_path, good):
    assert reason(one(tmp_path, "ok.webm", good, frames=30)).startswith(
        "frame count 24 differs from the manifest's 30")


def test_dali_decode_catches_what_the_manifest_promises(tmp_path, good):
    # a file that demuxes fine but has fewer frames than the record says: DALI cannot reach the end
    m = one(tmp_path, "ok.webm", good, frames=30)
    bad = dali_decode_check(m, m.records)
    assert bad == [(m.records[0], "truncated or corrupt (DALI decodes only 24 of 30 frames)")]
    ok = one(tmp_path / "b", "ok.webm", good, frames=24)
    assert dali_decode_check(ok, ok.records + ok.records) == []  # pipeline reused after success


def test_cli_exit_codes_and_write_clean(tmp_path, good):
    from dalivssl.cli import cli, main

    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(good, root / "ok.webm")
    (root / "empty.webm").write_bytes(b"")
    m = Manifest(root, [VideoRecord("ok.webm", 24, 0, "a"), VideoRecord("empty.webm", 24, 0, "a"),
                        VideoRecord("gone.webm", 24, 0, "a")], ["a"])
    path = save_manifest(m, tmp_path / "m.jsonl")
    clean = tmp_path / "clean.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["data", "check", str(path), "--write-clean", str(clean)])
    assert exc.value.code == 1
    assert [r.path for r in load_manifest(clean)] == ["ok.webm"]
    with pytest.raises(SystemExit) as exc:
        main(["data", "check", str(clean), "--min-frames", "16"])
    assert exc.value.code == 0
    res = CliRunner().invoke(cli, ["data", "check", str(path)])
    assert "empty.webm: empty file" in res.output and "gone.webm: missing" in res.output


@pytest.mark.gpu
def test_gpu_decode_check_h264(tmp_path, make_video):
    src = make_video(10, size=(48, 64), codec="h264")
    m = one(tmp_path, src.name, src, frames=10)
    assert check_manifest(m, device="gpu", decode=True) == []


def test_packet_index_that_no_longer_fits_its_file(tmp_path, good, make_video):
    from dalivssl.data.index import update_packets

    m, _ = update_packets(one(tmp_path, "ok.webm", good))
    assert check_manifest(m) == []
    other = make_video(24, size=(48, 64), seed=12)  # same frame count, other bytes
    shutil.copyfile(other, m.abspath(m.records[0]))
    assert "file changed since its packet index was recorded" in reason(m)


def test_gpu_check_asks_this_gpus_decode_probe(tmp_path, monkeypatch):
    """AV1 (a 'probe' entry of the capability table) passes the GPU check only where the GPU's
    decode probe decoded it: check installs the probe of ``dalivssl.devices``."""
    from dalivssl import devices
    from dalivssl.data import capabilities
    from dalivssl.data.decode_matrix import CASES, write_case

    monkeypatch.delenv(capabilities.PROBE_ENV, raising=False)
    monkeypatch.setattr(capabilities, "_probe", None)
    av1 = write_case(CASES["av1"], 160, tmp_path / "a.mkv", n=4)
    m = one(tmp_path, "a.mkv", av1, frames=4)
    monkeypatch.setattr(devices, "gpu_probe", lambda: {"av1": False, "mjpeg": False})
    assert reason(m, device="gpu").startswith("codec av1 not decodable by NVDEC on this GPU (no "
                                              "successful decode probe)")
    monkeypatch.setattr(devices, "gpu_probe", lambda: {"av1": True, "mjpeg": False})
    assert check_manifest(m, device="gpu") == []
    assert reason(m, device="cpu").startswith("codec av1 not decodable by DALI's CPU decoder")
