"""Decode verification (dalivssl.data.verify): classes from the packet index, verdicts by
content, the per-machine cache, and the loader's routing, on CPU with fault injection."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from dalivssl.data import verify as V  # noqa: E402
from dalivssl.data.index import probe_with_packets  # noqa: E402
from dalivssl.data.manifest import Manifest, VideoRecord  # noqa: E402

HOOK = "tests.data.faults:"


def _bframes(path, frames):
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"preset": "veryfast", "bf": "3", "g": "24"}
        for img in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path}: VP9 clean 128x128, VP9 with hidden alt-ref frames, H.264 with B-frames,
    VP9 at an odd size."""
    from dalivssl.data.videoio import write_video
    from tests.conftest import distinct_frames
    from dalivssl.data.decode_matrix import write_vp9_altref

    root = tmp_path_factory.mktemp("verify")
    out = {"vp9": write_video(root / "clean.webm", distinct_frames(40, (128, 128), 1),
                              codec="vp9", gop=20),
           "h264b": _bframes(root / "b.mp4", distinct_frames(40, (128, 128), 2)),
           "odd": write_video(root / "odd.webm", distinct_frames(24, (150, 200), 4), codec="vp9")}
    if shutil.which("ffmpeg") is None:
        pytest.skip("the alt-ref file needs the ffmpeg binary (two-pass libvpx)")
    out["altref"] = write_vp9_altref(root / "altref.webm", distinct_frames(40, (128, 128), 3))
    return out


def _manifest(files, names):
    recs, ixs = [], []
    for i, name in enumerate(names):
        info = probe_with_packets(files[name])
        ixs.append(info["packets"])
        recs.append(VideoRecord(files[name].name, info["num_frames"], label=0,
                                codec=info["codec"], width=info["width"],
                                height=info["height"], packets=i,
                                extra={"pix_fmt": info["pix_fmt"]}))
    return Manifest(files[names[0]].parent, recs, ["a"], packets=ixs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DALIVSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(V.HOOK_ENV, raising=False)
    return tmp_path / "cache" / V.CACHE_NAME


def test_decode_classes_from_the_packet_index(files):
    m = _manifest(files, ["vp9", "altref", "h264b", "odd"])
    got = {r.path: V.decode_class(r, m.packet_index(r), m.abspath(r)) for r in m.records}
    assert got == {"clean.webm": "vp9/p0/sd/a16/inorder",
                   "altref.webm": "vp9/p0/sd/a16/inorder/hidden",
                   "b.mp4": "h264/p100/sd/a16/reorder",
                   "odd.webm": "vp9/p0/sd/odd/inorder"}
    assert V.decode_class(m.records[0]) == "vp9/?/sd/a16/noindex"
    assert sorted(V.classes(m)) == sorted(got.values())


def test_clean_classes_pass_and_a_rerun_reads_the_cache(files, cache, monkeypatch):
    m = _manifest(files, ["vp9", "altref", "odd", "h264b"])
    first = V.verify(m, "cpu", n=2)
    verdicts = {c: e["verdict"] for c, e in first.items()}
    assert verdicts["vp9/p0/sd/a16/inorder"] == "ok"
    assert verdicts["vp9/p0/sd/a16/inorder/hidden"] == "ok"  # DALI CPU = FFmpeg's libvpx
    assert verdicts["vp9/p0/sd/odd/inorder"] == "ok"
    # DALI's CPU decoder has no H.264: the table's reason, nothing decoded
    assert verdicts["h264/p100/sd/a16/reorder"].startswith("bad: codec h264 not decodable")
    assert all(e["clips"] == 2 and e["substream"] for c, e in first.items() if "vp9" in c)
    assert cache.is_file() and not any(e["cached"] for e in first.values())

    def no_decoding(*a, **k):
        raise AssertionError("a cached class was decoded again")

    monkeypatch.setattr(V, "_run_jobs", no_decoding)
    again = V.verify(m, "cpu", n=2)
    assert all(e["cached"] for e in again.values())
    assert {c: e["verdict"] for c, e in again.items()} == verdicts


def test_a_decoder_that_shifts_frames_is_caught_and_routed_to_the_cpu(files, cache,
                                                                      monkeypatch):
    monkeypatch.setenv(V.HOOK_ENV, HOOK + "shift_by_one")
    m = _manifest(files, ["vp9", "altref"])
    got = V.verify(m, "gpu", n=2)
    for e in got.values():
        assert e["verdict"].startswith("bad: frame"), e
        assert e["decoder"] == HOOK + "shift_by_one"  # never counts for DALI itself
    routes, of = V.routes(m, m.records, "gpu")
    assert of == ["vp9/p0/sd/a16/inorder", "vp9/p0/sd/a16/inorder/hidden"]
    assert {c: (r.backend, r.stop) for c, r in routes.items()} == {
        c: ("cpu", "") for c in of}  # VP9 is read by DALI's CPU decoder: moved there


def test_a_decoder_that_returns_decode_order_is_caught_and_stops_the_run(files, cache,
                                                                        monkeypatch):
    monkeypatch.setenv(V.HOOK_ENV, HOOK + "decode_order")
    m = _manifest(files, ["h264b", "vp9"])
    got = V.verify(m, "gpu", n=2)
    cls = "h264/p100/sd/a16/reorder"
    assert got[cls]["verdict"] == "bad: frames in decode order, not presentation order"
    assert got["vp9/p0/sd/a16/inorder"]["verdict"] == "ok"  # no reordering: order is right
    routes, _ = V.routes(m, m.records, "gpu")
    stop = routes[cls].stop
    assert routes["vp9/p0/sd/a16/inorder"] == V.Route("gpu", True)
    assert cls in stop and "decode order" in stop and "--codec vp9" in stop
    assert "\n" not in stop


def test_verdict_by_content_names_the_fault():
    ref = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(12)])
    frames = np.arange(3, 9)
    assert V.compare(ref[frames], ref, frames, 0) == "ok"
    assert V.compare(ref[frames + 1], ref, frames, 0) == "bad: frames shifted by +1"
    dec = np.array([3, 5, 4, 6, 8, 7])
    assert (V.compare(ref[dec], ref, frames, 0, dec.tolist())
            == "bad: frames in decode order, not presentation order")
    assert V.compare(ref[dec], ref, frames, 0).startswith("bad: frame 4 looks like frame 5")
    noisy = np.clip(ref[frames].astype(int) + 40, 0, 255).astype(np.uint8)
    assert V.compare(noisy, ref, frames, 0).startswith("bad: frame")


def test_the_loader_stops_on_a_class_verified_bad_and_runs_a_clean_one(files, cache,
                                                                       monkeypatch):
    from pipelines.loader import LoaderError, PretextLoader

    m = _manifest(files, ["vp9", "vp9", "altref", "altref"])
    loader = PretextLoader("rotnet", m, batch_size=2, size=32, verify=True, prefetch=0,
                           router=V.routes)
    batch = next(iter(loader))
    assert batch.clips.shape[0] == 2 and loader.skipped == {}
    entries = V.Cache().rows()
    assert {e["class"] for e in entries} == {"vp9/p0/sd/a16/inorder",
                                             "vp9/p0/sd/a16/inorder/hidden"}
    # a cached bad verdict for this machine's CPU decoder: the run stops with one line
    c = V.Cache()
    c.put(V.machine("cpu"), "vp9/p0/sd/a16/inorder/hidden", "bad: frames shifted by +1", 2)
    loader = PretextLoader("rotnet", m, batch_size=2, size=32, verify=True, prefetch=0,
                           router=V.routes)
    with pytest.raises(LoaderError, match=r"^decode class vp9/p0/sd/a16/inorder/hidden verified "
                                          r"bad on cpu \(frames shifted by \+1\); transcode"):
        next(iter(loader))


def test_data_check_verify_fills_the_cache_that_doctor_shows(files, cache, tmp_path):
    import shutil as sh

    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.data.manifest import save_manifest

    root = tmp_path / "ds"
    root.mkdir()
    sh.copy(files["vp9"], root / "clean.webm")
    m = _manifest({"vp9": root / "clean.webm"}, ["vp9"])
    save_manifest(m, tmp_path / "m.jsonl")
    res = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "m.jsonl"), "--verify", "1"])
    assert res.exit_code == 0, res.output
    assert "cpu vp9/p0/sd/a16/inorder: ok (1 clips, e.g. clean.webm)" in res.output
    res = CliRunner().invoke(cli, ["doctor", "--no-matrix"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "vp9/p0/sd/a16/inorder" in ln)
    assert line.startswith("  cpu, DALI 2.") and ": vp9/p0/sd/a16/inorder: ok (1 clips" in line


def test_a_class_whose_substreams_fail_but_whole_files_decode_is_decoded_whole(files, cache,
                                                                               monkeypatch):
    monkeypatch.setenv(V.HOOK_ENV, HOOK + "substream_decode_order")
    m = _manifest(files, ["h264b"])
    e = V.verify(m, "gpu", n=2)["h264/p100/sd/a16/reorder"]
    assert e["verdict"] == "ok" and e["substream"] is False
    assert e["substream_verdict"] == "bad: frames in decode order, not presentation order"
    routes, _ = V.routes(m, m.records, "gpu")
    assert routes["h264/p100/sd/a16/reorder"] == V.Route("gpu", False)


def test_verify_on_gpu_without_one_is_a_one_line_error(files, cache, tmp_path, capsys):
    import torch

    from dalivssl.cli import main
    from dalivssl.data.manifest import save_manifest

    if torch.cuda.is_available():
        pytest.skip("pins the behaviour without a GPU")
    save_manifest(_manifest(files, ["vp9"]), tmp_path / "m.jsonl")
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(tmp_path / "m.jsonl"), "--device", "gpu", "--verify", "1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: --verify on gpu: no CUDA GPU with NVDEC (libnvcuvid) here; verify where the run "
        "decodes, or use --device cpu\n")
    assert not cache.exists()  # nothing cached


@pytest.mark.gpu
def test_gpu_loader_routes_a_class_verified_bad_to_the_cpu_decoder(files, cache):
    """On a GPU: a VP9 class with a cached bad GPU verdict is decoded by the CPU pipeline twin;
    the batch equals the CPU loader's (same plans, no augmentation), on the GPU."""
    import torch

    from pipelines.loader import PretextLoader

    m = _manifest(files, ["vp9", "vp9", "altref", "altref"])
    c = V.Cache()
    for cls in ("vp9/p0/sd/a16/inorder", "vp9/p0/sd/a16/inorder/hidden"):
        c.put(V.machine("gpu"), cls, "bad: frames shifted by +1", 2)
        c.put(V.machine("cpu"), cls, "ok", 2, {"substream": True})
    kw = dict(batch_size=4, size=64, augment=False, raw=True, prefetch=0, seed=3)
    gpu = PretextLoader("rotnet", m, device="gpu", router=V.routes, **kw)
    got = gpu.batch_at(0, 0).clips
    want = PretextLoader("rotnet", m, device="cpu", **kw).batch_at(0, 0).clips
    assert got.device.type == "cuda" and gpu._cpu is not None
    assert torch.equal(got.cpu(), want)


def test_classes_the_table_refuses_are_skipped_per_file_not_a_stop(files, cache, tmp_path):
    """A class DALI's CPU decoder cannot read (H.264) does not stop a CPU run: its files are
    skipped with the table's reason, the VP9 ones are delivered."""
    from pipelines.loader import PretextLoader

    m = _manifest(files, ["vp9", "h264b", "vp9", "h264b"])
    routes, _ = V.routes(m, m.records, "cpu")
    assert routes["h264/p100/sd/a16/reorder"] == V.Route("cpu")
    loader = PretextLoader("rotnet", m, batch_size=2, size=32, verify=True, prefetch=0,
                           router=V.routes)
    batch = next(iter(loader))
    assert set(batch.indices.tolist()) <= {0, 2}  # skipped files are replaced by usable ones
    assert len(loader.skipped) == 1 and 1 <= sum(loader.skipped.values()) <= 2
    assert next(iter(loader.skipped)).startswith("codec h264 not decodable by DALI's CPU")
