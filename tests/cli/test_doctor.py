"""`dalivssl doctor` on CPU: the decode matrix's CPU rows, GPU rows skipped, and child processes
that die or hang become cells (and check reasons), not crashes."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("nvidia.dali")

from dalivssl.data import decode_matrix as dm  # noqa: E402

OK_LINE = '{"status": "OK", "detail": "", "mean_abs": 0.0, "seconds": 0.0}'


@pytest.fixture(scope="module")
def matrix():
    return dm.run_matrix(["vp9", "h264", "hevc", "mjpeg"], (64, 128))


def _cell(m, case, size):
    return next(r for r in m["cells"] if (r["case"], r["size"]) == (case, size))


def test_matrix_cpu_rows(matrix, monkeypatch):
    assert matrix["backends"] == {"cpu": "", "gpu": "no CUDA GPU"}
    assert [(r["case"], r["size"]) for r in matrix["cells"]] == [
        ("vp9", 64), ("vp9", 128), ("h264", 64), ("h264", 128), ("hevc", 64), ("hevc", 128),
        ("mjpeg", 64), ("mjpeg", 128)]
    verdicts = {(r["case"], r["size"]): dm.verdict(r, "cpu") for r in matrix["cells"]}
    assert verdicts == {("vp9", 64): "OK", ("vp9", 128): "OK", ("h264", 64): "GPU only",
                        ("h264", 128): "GPU only", ("hevc", 64): "FAIL", ("hevc", 128): "FAIL",
                        ("mjpeg", 64): "OK", ("mjpeg", 128): "OK"}
    vp9 = _cell(matrix, "vp9", 64)
    assert vp9["expected"] == {"cpu": "yes", "gpu": "no"}  # below NVDEC's VP9 minimum
    assert _cell(matrix, "vp9", 128)["expected"] == {"cpu": "yes", "gpu": "yes"}
    assert _cell(matrix, "hevc", 128)["expected"] == {"cpu": "no", "gpu": "no"}  # < 144
    assert _cell(matrix, "mjpeg", 64)["expected"] == {"cpu": "yes", "gpu": "probe"}
    assert 0 < vp9["cpu"]["mean_abs"] < dm.MAX_MEAN_ABS
    for r in matrix["cells"]:
        assert r["gpu"] == {"status": "SKIP", "detail": "no CUDA GPU"}
        assert dm.agrees(r, "cpu") in (True, None) and dm.agrees(r, "gpu") is None


def test_doctor_prints_the_table(matrix, monkeypatch):
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.cli import doctor as doc

    monkeypatch.setattr(dm, "run_matrix", lambda *a, **k: matrix)
    res = CliRunner().invoke(cli, ["doctor"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "--device auto -> cpu (decoder cpu): auto: no CUDA device" in out
    assert "  vp9             64  OK         SKIP       yes/no" in out
    assert "  h264           128  GPU only   SKIP       no/yes" in out
    assert "  gpu: SKIP (no CUDA GPU)" in out
    assert "every measured cell agrees with the table" in out
    res = CliRunner().invoke(cli, ["doctor", "--json"])
    rep = json.loads(res.output)
    assert set(rep) == {"versions", "gpus", "device_auto", "nvdec", "cupy", "table", "verdicts",
                        "matrix"}
    assert rep["gpus"] == [] and rep["device_auto"]["device"] == "cpu"
    assert rep["versions"]["dali"].startswith("2.")
    assert doc.render_matrix(matrix)[-1] == "  every measured cell agrees with the table"


def test_a_child_that_aborts_costs_one_cell(monkeypatch):
    """Answers the first job, aborts on the second: the second is ABORT, a new child does the
    third (each child here answers once, then aborts)."""
    script = (f"import sys, os; sys.stdin.readline(); print({OK_LINE!r}, flush=True); "
              "sys.stdin.readline(); sys.stderr.write('terminate called\\n'); os.abort()")
    monkeypatch.setattr(dm, "_child_cmd", lambda b, i: [sys.executable, "-c", script])
    jobs = [{"path": f"/x/{i}", "n": 4} for i in range(3)]
    res = dm.decode_in_children(jobs, "cpu")
    assert [r["status"] for r in res] == ["OK", "ABORT", "OK"]
    assert res[1]["detail"] == "exit code -6: terminate called"


def test_a_child_that_hangs_is_killed(tmp_path):
    import os

    fifo = tmp_path / "fifo.webm"
    os.mkfifo(fifo)  # reading it blocks for ever: a stand-in for a decoder that never returns
    ok = dm.write_case(dm.CASES["vp9"], 32, tmp_path / "ok.webm")
    res = dm.decode_in_children([{"path": str(fifo), "n": 4}, {"path": str(ok), "n": 16}],
                                "cpu", timeout=6)
    assert [r["status"] for r in res] == ["HANG", "OK"]
    assert res[0]["detail"] == "no answer in 6 s"


def test_check_decode_child_that_aborts_names_the_file(tmp_path, make_video, monkeypatch):
    from dalivssl.data import check
    from dalivssl.data.manifest import Manifest, VideoRecord

    script = ("import sys, os; sys.stdin.readline(); print('{\"why\": null}', flush=True); "
              "sys.stdin.readline(); os.abort()")
    monkeypatch.setattr(check, "_decode_cmd", lambda d, i: [sys.executable, "-c", script])
    v = make_video(6, size=(32, 32))
    m = Manifest(v.parent, [VideoRecord(v.name, 6), VideoRecord(v.name, 6),
                            VideoRecord(v.name, 6)], [])
    assert check.dali_decode_check(m, m.records) == [
        (m.records[1], "truncated or corrupt (DALI aborted the decoder process: exit code -6)")]


def test_check_decode_child_with_thousands_of_files_does_not_block(tmp_path, monkeypatch):
    """Jobs are fed from a thread: with more input and output than a pipe holds (~64 KB each),
    writing every job first would block parent and child on each other."""
    from dalivssl.data import check
    from dalivssl.data.manifest import Manifest, VideoRecord

    script = "import sys\nfor _ in sys.stdin:\n    print('{\"why\": null}', flush=True)"
    monkeypatch.setattr(check, "_decode_cmd", lambda d, i: [sys.executable, "-c", script])
    recs = [VideoRecord("v" * 100 + f"{i}.webm", 6) for i in range(6000)]
    m = Manifest(tmp_path, recs, [])
    assert check.dali_decode_check(m, m.records) == []


def test_first_run_cases_on_cpu():
    """The cases the first GPU run settles R1-R4 with are written and decoded here: VP9 with
    hidden alt-ref frames and at 200x150 read on CPU; the GPU-only ones fail on CPU with DALI's
    reason; the Annex B probe really has B-frames (else ENC)."""
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("vp9-altref needs the ffmpeg binary")
    cells = dm.first_run_cells()
    assert cells[:len(dm.NEW_CASES)] == [(c, 128) for c in dm.NEW_CASES]
    assert ("h264", 240) in cells and ("hevc-10bit", 128) in cells and len(cells) == 22
    m = dm.run_matrix(cells=[(c, 128) for c in dm.NEW_CASES], backends=("cpu",), timeout=15)
    got = {r["case"]: (r["size"], dm.verdict(r, "cpu"), r["expected"]["cpu"]) for r in m["cells"]}
    assert got == {"vp9-altref": (128, "OK", "yes"), "vp9-200x150": ("200x150", "OK", "yes"),
                   "mpeg4-avi": (128, "FAIL", "no"), "mpeg4-avi-nob": (128, "FAIL", "no"),
                   "h264-1080p": ("1920x1080", "FAIL", "no"),
                   "h264-200x150": ("200x150", "FAIL", "no"), "annexb-bframes": (128, "FAIL", "no")}
    assert all("Failed to create video decoder" in r["cpu"]["detail"] for r in m["cells"]
               if r["expected"]["cpu"] == "no")


def test_every_fail_cell_carries_a_reason(matrix):
    """Review t3 #34: 17 FAIL cells with no reason given."""
    from dalivssl import doctor as doc

    lines = doc.render_matrix(matrix)
    reasons = [ln for ln in lines if ln.startswith("  FAIL on ")]
    assert reasons == [
        "  FAIL on cpu: h264 (64/128): DALI's CPU decoder has no h264 (it reads vp8, vp9, mjpeg)",
        "  FAIL on cpu: hevc (64/128): DALI's CPU decoder has no hevc (it reads vp8, vp9, mjpeg)"]
    # a codec the decoder has, failing: DALI's own message, whitespace folded
    vp9 = json.loads(json.dumps(_cell(matrix, "vp9", 64)))
    vp9["cpu"] = {"status": "FAIL", "detail": "bad\n  stream"}
    assert doc.fail_reasons({"backends": {"cpu": ""}, "cells": [vp9]}) == [
        "  FAIL on cpu: vp9 (64): bad stream"]
