"""Robustness sweep: accuracy per (noise, severity), R_s, HDF5/CSV/PNG outputs, resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dalivssl.engine import robustness as rb
from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest
from dalivssl.data.videoio import write_video
from dalivssl.errors import DalivsslError
from dalivssl.results import ResultsFile
from pipelines.types import Batch

LEVELS = (60, 128, 200)  # class k = a flat grey video at LEVELS[k]


class PixelOracle(torch.nn.Module):
    """Classifies a clip by the grey level of ONE pixel of its first frame: perfect on clean
    flat videos, increasingly wrong as per-pixel noise grows. Counts the clips it sees."""

    def __init__(self):
        super().__init__()
        self.levels = torch.tensor(LEVELS, dtype=torch.float32) / 255.0
        self.seen = 0

    def forward(self, x):  # N×C×T×H×W in [0, 1] ('unit')
        self.seen += x.shape[0]
        v = x[:, 0, 0, x.shape[3] // 2, x.shape[4] // 2]
        return -(v[:, None] - self.levels[None]).abs() * 10


@pytest.fixture(scope="module")
def flat_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    recs = []
    for label, level in enumerate(LEVELS):
        for j in range(2):
            name = f"c{label}_{j}.webm"
            write_video(root / name, np.full((12, 48, 48, 3), level, np.uint8), codec="vp9")
            recs.append(VideoRecord(name, 12, label, f"c{label}", "test", 25.0, 48, 48, "vp9"))
    path = save_manifest(Manifest(root, recs, [f"c{k}" for k in range(3)]), root / "test.jsonl")
    from dalivssl.data.manifest import load_manifest

    return load_manifest(path)


def _oracle(name="oracle"):
    return rb.SweepModel(name, PixelOracle(), "unit", clip_len=4, size=32, num_classes=3)


def _sweep(man, models, path, settings, decoder="dali", timing=None):
    def make_source(clip_len, size):
        if decoder == "pyav":
            return rb.PyAVSource(man, settings.clips_per_video, clip_len, size, 3)
        return rb.dali_source(man, settings.clips_per_video, clip_len, size, 3)

    with ResultsFile(path) as res:
        return rb.run_sweep(models, make_source, res, settings, timing=timing)


def test_sweep_accuracy_rs_and_hdf5_layout(flat_manifest, tmp_path):
    settings = rb.SweepSettings(severities=(1, 3, 5), clips_per_video=2)
    model = _oracle()
    timing = rb.CellTiming()
    (s,) = _sweep(flat_manifest, [model], tmp_path / "r.h5", settings, timing=timing)
    assert s["clean_acc"] == 1.0
    assert s["accuracy"].shape == s["rs"].shape == (4, 3)
    assert np.all((s["accuracy"] >= 0) & (s["accuracy"] <= 1))
    np.testing.assert_allclose(s["rs"], 1.0 - s["accuracy"])  # A_c = 1
    g = s["noises"].index("gaussian")
    # σ = 20 levels vs class spacing 68-72: mostly right; σ = 97: mostly wrong
    assert s["rs"][g, 0] < s["rs"][g, 2]
    assert s["mean_rs"] > 0.1
    # unweighted means over the cells; R_s of the mean accuracy equals the mean R_s
    assert s["mean_rs"] == pytest.approx(s["rs"].mean())
    assert s["mean_rs"] == pytest.approx((s["clean_acc"] - s["accuracy"].mean()) / s["clean_acc"])
    # decode once: 6 videos × 2 clips, every one of the 13 cells forwarded once
    assert timing.clips == 12 and model.model.seen == 12 * 13
    with ResultsFile(tmp_path / "r.h5", "r") as res:
        grp = "robustness/oracle"
        names = set(res.names(grp))
        assert {"accuracy", "rs", "clean_acc", "mean_rs", "mean_acc", "rs_by_noise",
                "rs_by_severity", "noises", "severities", "settings", "cells", "indices",
                "targets"} <= names
        assert res.read(grp, "noises") == ["gaussian", "shot", "impulse", "speckle"]
        assert res.read(grp, "severities").tolist() == [1, 3, 5]
        assert res.read(grp, "rs").shape == (4, 3)
        assert res.attrs(grp, "rs")["constants"] == "imagenet-c"
        assert sorted(res.read(grp, "targets").tolist()) == [0, 0, 1, 1, 2, 2]
        assert len(res.names(f"{grp}/cells")) == 13
        cell = res.attrs(grp, "cells/gaussian_5")
        pred = res.read(grp, "cells/gaussian_5")
        assert cell["accuracy"] == pytest.approx(np.mean(pred == res.read(grp, "targets")))
        assert cell["videos"] == 6 and cell["severity"] == 5
        assert json.loads(res.read(grp, "settings"))["constants"] == "imagenet-c"


def test_resume_skips_done_cells_and_rejects_other_settings(flat_manifest, tmp_path):
    path = tmp_path / "r.h5"
    first = rb.SweepSettings(noises=("gaussian", "impulse"), severities=(1,), clips_per_video=1)
    m1 = _oracle()
    _sweep(flat_manifest, [m1], path, first)
    assert m1.model.seen == 6 * 3  # clean + 2 cells
    # same cells again: nothing decoded, nothing forwarded
    m2, timing = _oracle(), rb.CellTiming()
    s = _sweep(flat_manifest, [m2], path, first, timing=timing)[0]
    assert m2.model.seen == 0 and timing.batches == 0
    assert s["rs"].shape == (2, 1)
    # one more severity: only its 2 cells run
    more = rb.SweepSettings(noises=("gaussian", "impulse"), severities=(1, 5), clips_per_video=1)
    m3 = _oracle()
    s = _sweep(flat_manifest, [m3], path, more)[0]
    assert m3.model.seen == 6 * 2 and s["rs"].shape == (2, 2)
    with ResultsFile(path, "r") as res:
        assert len(res.names("robustness/oracle/cells")) == 5
    # other constants → the stored cells do not apply
    other = rb.SweepSettings(noises=("gaussian",), severities=(1,), clips_per_video=1,
                             constants="schiappa")
    with pytest.raises(DalivsslError, match="other settings.*constants"):
        _sweep(flat_manifest, [_oracle()], path, other)


def test_models_sharing_geometry_share_one_decode_and_the_same_noise(flat_manifest, tmp_path):
    settings = rb.SweepSettings(noises=("impulse",), severities=(5,), clips_per_video=1)
    a, b = _oracle("a"), _oracle("b")
    timing = rb.CellTiming()
    sa, sb = _sweep(flat_manifest, [a, b], tmp_path / "r.h5", settings, timing=timing)
    assert timing.clips == 6  # one pass for both models
    assert a.model.seen == b.model.seen == 12
    assert sa["accuracy"].tolist() == sb["accuracy"].tolist()  # identical noisy pixels
    with ResultsFile(tmp_path / "r.h5", "r") as res:
        assert res.names("robustness") == ["a", "b"]


def test_pyav_reference_path_agrees_on_clean_accuracy(flat_manifest, tmp_path):
    settings = rb.SweepSettings(noises=("gaussian",), severities=(1,), clips_per_video=2,
                                decoder="pyav")
    (s,) = _sweep(flat_manifest, [_oracle()], tmp_path / "r.h5", settings, decoder="pyav")
    assert s["clean_acc"] == 1.0 and s["accuracy"].shape == (1, 1)


def test_video_level_logits_are_averaged_and_repeats_count_once():
    """Video score = mean of its K clips' logits (not a vote); a padded repeat counts once."""

    class ByValue(torch.nn.Module):  # logits from the clip's first pixel value
        table = {10: [2.0, 0.0, 0.0], 20: [0.0, 1.5, 0.0], 30: [0.0, 0.0, 0.9]}

        def forward(self, x):
            v = (x[:, 0, 0, 0, 0] * 255).round().int().tolist()
            return torch.tensor([self.table[k] for k in v])

    def clip(*vals):  # one video: K clips with the given pixel values, B×K×T×H×W×C
        return np.stack([np.full((2, 4, 4, 3), v, np.uint8) for v in vals])

    # video 0: clips 20, 20, 10 → mean logits [0.67, 1.0, 0] → class 1
    # video 1: clips 10, 30, 30 → [0.67, 0, 0.6] → class 0, although a clip vote would say 2
    # video 2: clips 30, 30, 20 → [0, 0.5, 0.6] → class 2
    b1 = Batch(torch.from_numpy(np.stack([clip(20, 20, 10), clip(10, 30, 30)])),
               torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([0, 1]))
    b2 = Batch(torch.from_numpy(np.stack([clip(30, 30, 20), clip(10, 10, 10)])),
               torch.tensor([2, 1]), torch.tensor([2, 1]), torch.tensor([2, 1]))  # 1 repeated
    m = rb.SweepModel("v", ByValue(), "unit", 2, 4, 3)
    out = rb.evaluate_cells([m], [b1, b2], {"v": [rb.CLEAN]}, rb.SweepSettings())
    idx, tg, pred = out["v"][rb.CLEAN]
    assert idx.tolist() == [0, 1, 2] and tg.tolist() == [1, 2, 2]
    assert pred.tolist() == [1, 0, 2]


def test_cells_per_forward_call_default_and_stacking_give_the_same_predictions():
    assert rb.cells_per_call(None, 20, "cpu") == 1 and rb.cells_per_call(None, 20, "gpu") == 3
    assert rb.cells_per_call(64, 20, "cpu") == 3 and rb.cells_per_call(8, 20, "gpu") == 1

    class Counting(torch.nn.Module):  # logits from the mean pixel; records each call's batch
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, x):
            self.calls.append(x.shape[0])
            m = x.float().mean(dim=(1, 2, 3, 4))
            return torch.stack([m, 1 - m, 0.5 + 0 * m], 1)

    rng = np.random.default_rng(0)
    batch = Batch(torch.from_numpy(rng.integers(0, 256, (2, 3, 2, 4, 4, 3), dtype=np.uint8)),
                  torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    cells = [rb.CLEAN, ("gaussian", 1), ("impulse", 5)]
    preds = {}
    for fc, calls in ((None, [6, 6, 6]), (18, [18])):
        m = rb.SweepModel("c", Counting(), "unit", 2, 4, 3)
        out = rb.evaluate_cells([m], [batch], {"c": cells}, rb.SweepSettings(),
                                forward_clips=fc)
        assert m.model.calls == calls
        preds[fc] = {c: out["c"][c][2].tolist() for c in cells}
    assert preds[None] == preds[18]


def test_rejects_normalised_input():
    b = Batch(torch.zeros(1, 1, 2, 4, 4, 3), torch.tensor([0]), torch.tensor([0]),
              torch.tensor([0]))
    with pytest.raises(DalivsslError, match="raw uint8"):
        rb.evaluate_cells([_oracle()], [b], {"oracle": [rb.CLEAN]}, rb.SweepSettings())


# ----------------------------------------------------------------------------------- CLI
def _finetune_ckpt(path, num_classes=3, kind="finetune", seed=0):
    from dalivssl.engine.checkpoint import save_checkpoint
    from models import create_backbone

    torch.manual_seed(seed)
    bb = create_backbone("squeezenet")
    head = torch.nn.Linear(bb.feature_dim, num_classes)
    return save_checkpoint(path, kind=kind, arch="squeezenet", backbone=bb.state_dict(),
                           head=head.state_dict(), config={}, versions={}, step=0, epoch=0,
                           num_classes=num_classes, classes=[f"c{i}" for i in range(num_classes)],
                           clip_len=8, size=64, normalize="unit")


def _main(argv):
    from dalivssl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_cli_end_to_end_and_resume(tiny_synth, tmp_path, monkeypatch, capsys):
    ck = _finetune_ckpt(tmp_path / "ft.pt")
    out = tmp_path / "out"
    argv = ["robustness", "--checkpoint", str(ck), "--data", str(tiny_synth["test"]),
            "--noises", "gaussian,impulse", "--severities", "1,5", "--clips-per-video", "2",
            "--batch-size", "2", "--out", str(out)]
    assert _main(argv) == 0
    assert (out / "robustness.png").stat().st_size > 1000
    with open(out / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "noise", "severity", "accuracy", "clean_accuracy", "rs"]
    assert [(r["noise"], r["severity"]) for r in rows] == [
        ("clean", "0"), ("gaussian", "1"), ("gaussian", "5"), ("impulse", "1"), ("impulse", "5")]
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
    with ResultsFile(out / "robustness.h5", "r") as res:
        assert res.read("robustness/ft", "rs").shape == (2, 2)
        assert res.meta()["command"] == "robustness"
    # resume: every cell is stored, so nothing is evaluated again
    def boom(*a, **k):
        raise AssertionError("evaluate_cells called on a finished sweep")

    monkeypatch.setattr(rb, "evaluate_cells", boom)
    capsys.readouterr()
    assert _main(argv) == 0
    assert "ft" in capsys.readouterr().out
    assert json.loads((out / "record.json").read_text())["status"] == "complete"
    # the same --out with other data (same file names would not matter: content is hashed) is
    # refused instead of relabelling the old cells
    other = [a if a != str(tiny_synth["test"]) else str(tiny_synth["train"]) for a in argv]
    assert _main(other) == 2
    err = capsys.readouterr().err
    assert "swept with other settings or data (data_hash:" in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1
    # so is a re-finetuned checkpoint at the same path (content, not path)
    _finetune_ckpt(tmp_path / "ft.pt", seed=1)
    assert _main(argv) == 2
    assert "checkpoint_hash:" in capsys.readouterr().err


def test_cli_bad_inputs_exit_2(tiny_synth, tmp_path, capsys):
    missing = tmp_path / "none.pt"
    assert _main(["robustness", "--checkpoint", str(missing), "--data",
                  str(tiny_synth["test"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err
    ck = _finetune_ckpt(tmp_path / "ft.pt")
    assert _main(["robustness", "--checkpoint", str(ck), "--data", str(tiny_synth["test"]),
                  "--noises", "gaussian,fog"]) == 2
    assert "unknown noise 'fog'" in capsys.readouterr().err
    assert _main(["robustness", "--checkpoint", str(ck), "--data", str(tiny_synth["test"]),
                  "--severities", "0-3"]) == 2
    pre = _finetune_ckpt(tmp_path / "pre.pt", kind="pretrain")
    assert _main(["robustness", "--checkpoint", str(pre), "--data",
                  str(tiny_synth["test"])]) == 2
    assert "finetune" in capsys.readouterr().err
    small = _finetune_ckpt(tmp_path / "two.pt", num_classes=2)
    assert _main(["robustness", "--checkpoint", str(small), "--data",
                  str(tiny_synth["test"])]) == 2
    assert "2 classes" in capsys.readouterr().err


def test_cli_videos_replaced_in_place_are_not_reprinted(tmp_path, capsys):
    """Review t3 #38: `data synth --seed 1` over the same dir (same records, other videos); the
    old cells must not be reprinted as the new videos' (the data hash covers the files)."""
    from dalivssl.data.synth import generate

    data = generate(tmp_path / "d", videos=6, classes=3, frames=16, size=32, seed=0, workers=1)
    ck = _finetune_ckpt(tmp_path / "ft.pt")
    argv = ["robustness", "--checkpoint", str(ck), "--data", str(data["test"]), "--noises",
            "gaussian", "--severities", "1", "--clips-per-video", "1", "--out",
            str(tmp_path / "out"), "--no-progress"]
    assert _main(argv) == 0
    generate(tmp_path / "d", videos=6, classes=3, frames=16, size=32, seed=1, workers=1,
             overwrite=True)
    capsys.readouterr()
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert "swept with other settings or data (data_hash:" in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1
