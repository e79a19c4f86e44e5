"""The synthetic dataset: motion-defined classes, reversal pairs, balanced splits, exact counts."""
from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest

from dalivssl.data import load_manifest, synth
from dalivssl.data.probe import probe
from dalivssl.errors import DalivsslError


def classify(traj: dict) -> str:
    """Name the motion of a trajectory from its numbers alone (independent of synth's tables)."""
    x, y, ang, scale = traj["x"], traj["y"], traj["angle"], traj["scale"]
    growth = math.log(scale[-1] / scale[0])
    if abs(growth) > 0.3:
        return "zoom_in" if growth > 0 else "zoom_out"
    turn = ang[-1] - ang[0]
    if abs(turn) > 90:
        return "spin_cw" if turn > 0 else "spin_ccw"  # angles grow clockwise on screen
    dx, dy = np.diff(x), np.diff(y)
    step = np.hypot(dx, dy)
    med = np.median(step)
    jumps = step > 5 * med
    if jumps.any():
        slow = np.median(dx[~jumps])
        assert np.all(np.sign(dx[jumps]) == -np.sign(slow)), "sawtooth jumps back"
        return "saw_right" if slow > 0 else "saw_left"
    heading = np.arctan2(dy, dx)
    if np.ptp(np.unwrap(heading)) > math.pi:  # heading turns: circular path
        cx, cy = x.mean(), y.mean()
        cross = np.sum((x[:-1] - cx) * dy - (y[:-1] - cy) * dx)
        return "orbit_cw" if cross > 0 else "orbit_ccw"  # y points down: positive = clockwise
    deg = math.degrees(math.atan2(dy.mean(), dx.mean())) % 360
    names = {0: "move_right", 45: "move_down_right", 90: "move_down", 135: "move_down_left",
             180: "move_left", 225: "move_up_left", 270: "move_up", 315: "move_up_right"}
    return names[int(round(deg / 45.0)) % 8 * 45]


def test_reverse_is_a_fixed_point_free_involution():
    assert set(synth.REVERSE) == set(synth.CLASS_NAMES)
    for name, rev in synth.REVERSE.items():
        assert rev != name
        assert synth.REVERSE[rev] == name


@pytest.mark.parametrize("name", synth.CLASS_NAMES)
def test_motion_defines_class_and_reversal_maps_to_partner(name):
    for seed in range(6):
        traj = synth.trajectory(name, 150, 112, np.random.default_rng(seed))
        assert classify(traj) == name
        assert classify(synth.reverse_trajectory(traj)) == synth.REVERSE[name]


def test_first_classes_keep_reversal_pairs_together():
    # the tiny fixture uses the first classes; pairs must not be split for even class counts
    for c in range(0, len(synth.CLASS_NAMES), 2):
        assert synth.REVERSE[synth.CLASS_NAMES[c]] == synth.CLASS_NAMES[c + 1]


def test_render_is_deterministic_and_seed_dependent():
    a, info = synth.render("orbit_cw", 12, 64, np.random.default_rng(3))
    b, _ = synth.render("orbit_cw", 12, 64, np.random.default_rng(3))
    c, _ = synth.render("orbit_cw", 12, 64, np.random.default_rng(4))
    assert a.shape == (12, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 1 <= info["objects"] <= 3
    # objects move and the background pans or not: consecutive frames are not all identical
    assert np.abs(np.diff(a.astype(int), axis=0)).sum() > 0


def test_plan_is_balanced_with_test_share():
    plan = synth.plan_videos(300, 12)
    per = Counter(label for label, _ in plan)
    assert set(per.values()) == {25}
    tests = Counter(label for label, split in plan if split == "test")
    assert set(tests.values()) == {6}
    uneven = Counter(label for label, _ in synth.plan_videos(14, 3))
    assert sorted(uneven.values()) == [4, 5, 5]


def test_tiny_dataset(tiny_synth):
    train, test = load_manifest(tiny_synth["train"]), load_manifest(tiny_synth["test"])
    assert train.classes == ["move_right", "move_left", "spin_cw"]
    assert len(train) == 9 and len(test) == 3
    assert Counter(r.label for r in train) == {0: 3, 1: 3, 2: 3}
    assert Counter(r.label for r in test) == {0: 1, 1: 1, 2: 1}
    assert {r.split for r in train} == {"train"} and {r.split for r in test} == {"test"}
    allm = load_manifest(tiny_synth["all"])
    assert len(allm) == 12
    assert not {r.path for r in train} & {r.path for r in test}
    for m in (train, test):
        for r in m:
            assert m.abspath(r).is_file()
            assert r.class_name == m.classes[r.label]
            assert (r.num_frames, r.width, r.height, r.codec) == (40, 64, 64, "vp9")
            assert r.fps == 25.0


def test_frame_counts_match_exact_decode_and_dali(tiny_synth):
    from nvidia.dali import fn, pipeline_def

    m = load_manifest(tiny_synth["all"])
    recs = [m[0], m[len(m) - 1]]
    for r in recs:
        assert probe(m.abspath(r), exact=True)["num_frames"] == r.num_frames

    @pipeline_def(batch_size=len(recs), num_threads=1, device_id=None)
    def full_decode():
        enc, _ = fn.readers.file(files=[str(m.abspath(r)) for r in recs])
        return fn.decoders.video(enc, device="cpu")  # no frame arguments: every frame

    pipe = full_decode()
    pipe.build()
    (out,) = pipe.run()
    for i, r in enumerate(recs):
        assert np.asarray(out[i]).shape == (r.num_frames, 64, 64, 3)


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(DalivsslError, match="classes"):
        synth.generate(tmp_path, videos=4, classes=99, frames=8, size=32)
    with pytest.raises(DalivsslError, match="at least one video per class"):
        synth.generate(tmp_path, videos=2, classes=3, frames=8, size=32)


def test_ensure_default_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DALIVSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(synth, "DEFAULT",
                        synth.SynthConfig(videos=4, classes=2, frames=8, size=32))
    calls = []
    real = synth.generate
    monkeypatch.setattr(synth, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    # a half-written folder from a crashed run (no COMPLETE marker) must not be used
    final = tmp_path / "cache" / synth._default_name(synth.DEFAULT)
    (final / "videos").mkdir(parents=True)
    (final / "train.jsonl").write_text("half")
    paths = synth.ensure_default_dataset()
    assert calls == [1]
    assert (final / "COMPLETE").is_file()
    assert len(load_manifest(paths["train"])) + len(load_manifest(paths["test"])) == 4
    again = synth.ensure_default_dataset()
    assert again == paths and calls == [1]
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


UNGUARDED = """
from dalivssl.data import parallel, synth
parallel.default_workers = lambda n: 2  # a pool even on a 1-core machine
synth.DEFAULT = synth.SynthConfig(videos=4, classes=2, frames=48, size=128)  # big enough for a pool
print(synth.ensure_default_dataset())  # at module level: spawn workers re-import this
"""


def test_unguarded_script_fails_with_the_fix_instead_of_deadlocking(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    env = {**os.environ, "DALIVSSL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0
    assert "under `if __name__ == '__main__':`" in proc.stderr
    assert "DalivsslError: a worker process died" in proc.stderr
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        synth._default_name(synth.SynthConfig(videos=4, classes=2, frames=48, size=128)) + ".lock"]
    guarded = tmp_path / "guarded.py"
    guarded.write_text(UNGUARDED.replace("print(", "if __name__ == '__main__':\n    print("))
    proc = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train.jsonl" in proc.stdout


def test_pool_gives_the_same_dataset_as_one_process(tmp_path):
    kw = dict(videos=4, classes=2, frames=8, size=32, seed=5)
    a = synth.generate(tmp_path / "a", workers=1, **kw)
    b = synth.generate(tmp_path / "b", workers=2, **kw)
    ra, rb = load_manifest(a["all"]).records, load_manifest(b["all"]).records
    assert ra == rb and [r.extra for r in ra] == [r.extra for r in rb]
    from dalivssl.data.videoio import decode_frames

    for r in ra:  # (file bytes differ: Matroska writes random segment UIDs)
        assert np.array_equal(decode_frames(tmp_path / "a" / r.path),
                              decode_frames(tmp_path / "b" / r.path))


def test_cli_synth(tmp_path):
    from click.testing import CliRunner

    from dalivssl.cli import cli

    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "s"), "--videos", "8",
                                   "--classes", "4", "--frames", "8", "--size", "32"])
    assert res.exit_code == 0, res.output
    train = load_manifest(tmp_path / "s" / "train.jsonl")
    test = load_manifest(tmp_path / "s" / "test.jsonl")
    assert train.classes == synth.CLASS_NAMES[:4]
    assert sorted(r.label for r in train) == sorted(r.label for r in test) == [0, 1, 2, 3]


def test_exposure_fades_in_linearly(monkeypatch):
    """Every frame is the unlit frame times a gain rising linearly from EXPOSURE[0] to
    EXPOSURE[1] (the low-level arrow of time the CPU demo learns); uint8 truncation aside."""
    lo, hi = synth.EXPOSURE
    assert (lo, hi) == (0.55, 1.0)
    lit, _ = synth.render("spin_cw", 12, 32, np.random.default_rng(3))
    monkeypatch.setattr(synth, "EXPOSURE", (1.0, 1.0))
    plain, _ = synth.render("spin_cw", 12, 32, np.random.default_rng(3))
    for i in range(12):
        gain = lo + (hi - lo) * i / 11
        diff = lit[i].astype(float) - gain * plain[i].astype(float)
        assert np.abs(diff).max() <= 1.0 + 1e-9, (i, np.abs(diff).max())
    assert lit[-1].mean() > 1.7 * lit[0].mean()


def test_synth_into_a_fuller_folder_is_refused_or_replaced(tmp_path):
    """Review t3 #60: 8 videos over a 24-video dir left 18 stale videos that `data index` took
    in. Refused in one line; with --overwrite only the new dataset's videos remain."""
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.data.index import index_dataset
    from dalivssl.errors import DalivsslError

    out = tmp_path / "s"
    synth.generate(out, videos=12, classes=4, frames=8, size=32, workers=1)
    synth.generate(out, videos=12, classes=4, frames=8, size=32, workers=1)  # same: fine
    with pytest.raises(DalivsslError, match=r"holds another dataset \(videos 12 → 4\); pass "
                                            r"--overwrite") as exc:
        synth.generate(out, videos=4, classes=4, frames=8, size=32, workers=1)
    assert "\n" not in str(exc.value)
    args = ["data", "synth", str(out), "--videos", "4", "--classes", "4", "--frames", "8",
            "--size", "32"]
    assert CliRunner().invoke(cli, args).exit_code != 0
    res = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "videos").rglob("*.webm"))) == 4
    assert len(load_manifest(out / "all.jsonl")) == 4
    assert len(index_dataset(out / "videos", "folders", workers=1)[0]) == 4
    (tmp_path / "mine" / "videos").mkdir(parents=True)  # videos no synthetic manifest lists
    (tmp_path / "mine" / "videos" / "own.webm").write_bytes(b"x")
    with pytest.raises(DalivsslError, match="videos no synthetic manifest lists"):
        synth.generate(tmp_path / "mine", videos=4, classes=4, frames=8, size=32, workers=1)
