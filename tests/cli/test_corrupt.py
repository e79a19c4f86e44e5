"""`dalivssl corrupt`: decode → DALI noise → encode."""
from __future__ import annotations

import numpy as np
import pytest

from dalivssl.cli import main
from dalivssl.data.videoio import decode_frames


def _run(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


@pytest.mark.parametrize("noise, severity, expect_std", [("gaussian", 3, 45.9), ("impulse", 2, None)])
def test_corrupt_writes_noisy_copy(make_video, tmp_path, noise, severity, expect_std):
    src = make_video(12, size=(64, 80))
    out = tmp_path / "noisy.webm"
    assert _run(["corrupt", str(src), str(out), "--noise", noise, "--severity", str(severity),
                 "--seed", "1"]) == 0
    clean, noisy = decode_frames(src).astype(np.float64), decode_frames(out).astype(np.float64)
    assert noisy.shape == clean.shape == (12, 64, 80, 3)
    diff = noisy - clean
    if expect_std is not None:
        # VP9 (yuv420p, lossy) removes part of the noise, clipping at 0/255 another part
        assert 0.4 * expect_std < diff.std() < 1.1 * expect_std
        assert abs(diff.mean()) < 5
    else:
        assert np.mean(np.abs(diff) > 40) > 0.02  # salt and pepper survive as outliers
    # same seed → same file content; another seed → different
    again = tmp_path / "again.webm"
    other = tmp_path / "other.webm"
    assert _run(["corrupt", str(src), str(again), "--noise", noise, "--severity", str(severity),
                 "--seed", "1"]) == 0
    assert _run(["corrupt", str(src), str(other), "--noise", noise, "--severity", str(severity),
                 "--seed", "2"]) == 0
    np.testing.assert_array_equal(decode_frames(again), decode_frames(out))
    assert not np.array_equal(decode_frames(other), decode_frames(out))


def test_corrupt_reports_the_noise_the_written_file_holds(make_video, tmp_path, capsys):
    """Review t3 #12: the report said std 43.8 while the lossy file differed by 31.8."""
    src = make_video(12, size=(64, 80))
    out = tmp_path / "noisy.webm"
    capsys.readouterr()
    assert _run(["corrupt", str(src), str(out), "--noise", "shot", "--severity", "3"]) == 0
    err = capsys.readouterr().err
    measured = (decode_frames(out).astype(np.float32) - decode_frames(src)).std()
    added = float(err.split("noise std ")[1].split(" levels added")[0])
    assert f"levels added, {measured:.1f} in the written file (vp9 is lossy" in err, err
    assert added > measured + 1  # the encoder removed part of it
    from click.testing import CliRunner

    from dalivssl.cli import cli

    help_text = " ".join(CliRunner().invoke(cli, ["corrupt", "--help"]).output.split())
    assert "re-encoded with a lossy codec" in help_text and "measured in OUT" in help_text


def test_corrupt_codec_from_suffix(make_video, tmp_path):
    src = make_video(8, size=(64, 64))
    out = tmp_path / "noisy.avi"
    assert _run(["corrupt", str(src), str(out), "--noise", "speckle", "--severity", "1",
                 "--constants", "schiappa"]) == 0
    import av

    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "mjpeg"
        assert sum(1 for _ in c.decode(video=0)) == 8


def test_corrupt_bad_input_is_one_line_exit_2(tmp_path, capsys, make_video):
    missing = tmp_path / "nope.webm"
    assert _run(["corrupt", str(missing), str(tmp_path / "o.webm"), "--noise", "shot",
                 "--severity", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and "not found" in err

    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a video at all" * 10)
    assert _run(["corrupt", str(garbage), str(tmp_path / "o.webm"), "--noise", "shot",
                 "--severity", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(garbage) in err and "not a video" in err
    assert "Traceback" not in err

    src = make_video(8, size=(64, 64))
    assert _run(["corrupt", str(src), str(tmp_path / "o.xyz"), "--noise", "shot",
                 "--severity", "2"]) == 2
    assert "suffix" in capsys.readouterr().err
    # click validates names and ranges itself (usage error, exit 2)
    assert _run(["corrupt", str(src), str(tmp_path / "o.webm"), "--noise", "fog",
                 "--severity", "2"]) == 2
    assert _run(["corrupt", str(src), str(tmp_path / "o.webm"), "--noise", "shot",
                 "--severity", "7"]) == 2


def test_corrupt_refuses_a_truncated_input(tmp_path, capsys, make_video):
    src = make_video(48, size=(64, 64), seed=5)
    cut = tmp_path / "cut.webm"
    data = src.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    out = tmp_path / "o.webm"
    assert _run(["corrupt", str(cut), str(out), "--noise", "shot", "--severity", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "truncated or corrupt" in err and str(cut) in err
    assert not out.exists()
