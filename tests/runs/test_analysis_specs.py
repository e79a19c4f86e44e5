"""retrieve, robustness and cka on the run driver: each config.yaml replays its run (data keys
included), bad values are one line with exit 2 before any work, DALI gets its own thread count,
``cka --resume`` with a changed input never replaces the stored map (issue 24), and the study reads
each command's metrics from its spec."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from dalivssl.errors import DalivsslError
from dalivssl.results import ResultsFile


def _main(capsys, *argv):
    """(exit code, stderr) of `dalivssl ARGV` in this process."""
    from dalivssl.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


def _checkpoint(path, seed, kind="pretrain", num_classes=3):
    import torch

    from dalivssl.engine.checkpoint import save_checkpoint
    from models import create_backbone

    torch.manual_seed(seed)
    bb = create_backbone("squeezenet")
    extra = dict(num_classes=num_classes, classes=[f"c{i}" for i in range(num_classes)],
                 head=torch.nn.Linear(bb.feature_dim, num_classes).state_dict(), clip_len=8,
                 size=64, normalize="unit") if kind == "finetune" else dict(head={})
    return save_checkpoint(path, kind=kind, arch="squeezenet", backbone=bb.state_dict(),
                           config={}, versions={}, step=0, epoch=0, **extra)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"a": _checkpoint(d / "a.pt", 0), "b": _checkpoint(d / "b.pt", 1),
            "ft": _checkpoint(d / "ft.pt", 2, kind="finetune")}


@pytest.mark.parametrize("argv, message", [
    (["robustness", "--set", "noises=[gausian]"], "unknown noise 'gausian'"),
    (["robustness", "--set", "constants=nope"],
     "constants must be one of imagenet-c, schiappa, got 'nope'"),
    (["robustness", "--set", "noise_at=middle"], "noise_at must be one of model, decoded"),
    (["robustness", "--set", "dali_threads=0"], "dali_threads must be >= 1, got 0"),
    (["robustness", "--videos-per-cell", "-3"], "--videos-per-cell '-3' is not an integer"),
    (["cka", "--set", "batch_size=2"], "--batch-size must be >= 4"),
    (["cka", "--set", "normalize=zscore"], "normalize must be one of imagenet, unit"),
    (["cka", "--set", "dali_threads=-1"], "dali_threads must be >= 1, got -1"),
    (["retrieve", "--topk", "1,0"], "topk values must be >= 1"),
    (["retrieve", "--topk", "1,x"], "topk: expected comma-separated integers"),
    (["retrieve", "--set", "clips=0"], "clips must be >= 1, got 0"),
    (["retrieve", "--set", "bogus=1"], "unknown config key 'bogus'"),
])
def test_bad_values_are_one_line_before_any_work(argv, message, ckpts, tmp_path, capsys):
    which = {"robustness": ["--checkpoint", ckpts["ft"]], "cka": ["--checkpoint", ckpts["a"]],
             "retrieve": ["--checkpoint", ckpts["a"]]}[argv[0]]
    rc, err = _main(capsys, *argv[:1], *which, *argv[1:], "--out", tmp_path / "never")
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "never").exists()


@pytest.fixture(scope="module")
def runs(ckpts, tiny_synth, tmp_path_factory):
    """One run of each command (small settings), made in this process; the thread counts DALI
    was given."""
    from dalivssl.cli import main

    root = tmp_path_factory.mktemp("runs")
    argv = {
        "retrieve": ["retrieve", "--checkpoint", ckpts["a"], "--train", tiny_synth["train"],
                     "--test", tiny_synth["test"], "--clips", "1", "--clip-len", "8", "--size",
                     "64", "--topk", "1,5", "--cache-dir", root / "cache", "--no-progress"],
        "robustness": ["robustness", "--checkpoint", ckpts["ft"], "--data", tiny_synth["test"],
                       "--noises", "gaussian", "--severities", "1", "--clips", "1",
                       "--no-progress", "--set", "dali_threads=1"],
        "cka": ["cka", "--checkpoint", ckpts["a"], "--data", tiny_synth["train"], "--batch-size",
                "4", "--batches", "1", "--layers", "features.2,features.5", "--clip-len", "8",
                "--size", "64", "--no-progress", "--set", "dali_threads=1"],
    }
    from dalivssl.engine import features, robustness

    seen = {}
    eval_loader, dali_source = features.eval_loader, robustness.dali_source

    def spy(name, fn):
        def wrapped(*a, **k):
            seen.setdefault(name, []).append(k.get("num_threads"))
            return fn(*a, **k)
        return wrapped

    loaders = {"robustness": (robustness, "dali_source", dali_source),
               "cka": (features, "eval_loader", eval_loader)}
    for step, args in argv.items():
        with pytest.MonkeyPatch.context() as mp:
            if step in loaders:
                module, attr, fn = loaders[step]
                mp.setattr(module, attr, spy(step, fn))
            with pytest.raises(SystemExit) as exc:
                main([str(a) for a in args + ["--out", root / step]])
        assert exc.value.code == 0, step
    return {"root": root, "argv": argv, "threads": seen}


def test_dali_gets_its_own_thread_count(runs):
    assert runs["threads"]["robustness"] == [1] and runs["threads"]["cka"] == [1]
    for step in ("robustness", "cka"):
        cfg = yaml.safe_load((runs["root"] / step / "config.yaml").read_text())
        assert cfg["dali_threads"] == 1 and cfg["threads"] == 2


def _outputs(d, step):
    if step == "retrieve":
        return (d / "retrieval.csv").read_text()
    if step == "robustness":
        return (d / "robustness.csv").read_text()
    with ResultsFile(d / "cka.h5", "r") as rf:
        return rf.read("cka", "map").tolist()


@pytest.mark.parametrize("step", ["retrieve", "robustness", "cka"])
def test_config_yaml_replays_the_run(step, runs, tiny_synth, capsys):
    d = runs["root"] / step
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    data = {"retrieve": {"train": str(tiny_synth["train"]), "test": str(tiny_synth["test"])},
            "robustness": {"data": str(tiny_synth["test"])},
            "cka": {"data": str(tiny_synth["train"])}}[step]
    assert {k: cfg[k] for k in data} == data and cfg["device"] == "cpu"
    rc, err = _main(capsys, step, "--config", d / "config.yaml", "--out", d.parent / f"{step}2")
    assert rc == 0, err
    assert _outputs(d.parent / f"{step}2", step) == _outputs(d, step)


def test_cka_resume_never_replaces_the_map_with_other_inputs(runs, ckpts, tiny_synth, tmp_path,
                                                              capsys):
    out = tmp_path / "cka"
    shutil.copytree(runs["root"] / "cka", out)
    ck = tmp_path / "a.pt"
    shutil.copy(ckpts["a"], ck)
    argv = [a if a != ckpts["a"] else ck for a in runs["argv"]["cka"]] + ["--out", out]
    rc, err = _main(capsys, *argv, "--overwrite")  # the map of the copy at its own path
    assert rc == 0, err
    before = (out / "cka.h5").read_bytes()
    rc, err = _main(capsys, *argv, "--resume")
    assert rc == 0 and "already complete with these inputs; nothing to resume" in err
    assert (out / "cka.h5").read_bytes() == before
    other_layers = [a if a != "features.2,features.5" else "features.2" for a in argv]
    other_data = [a if a != tiny_synth["train"] else tiny_synth["test"] for a in argv]
    for args, what in ((other_layers, "layers: ['features.2', 'features.5'] → ['features.2']"),
                       (other_data, "data_hash: ")):
        rc, err = _main(capsys, *args, "--resume")
        assert rc == 2 and f"cannot resume with other settings ({what}" in err, err
        assert [ln.startswith("error: ") for ln in err.splitlines()].count(True) == 1
        assert "Traceback" not in err
        assert (out / "cka.h5").read_bytes() == before
    shutil.copy(ckpts["b"], ck)  # retrained weights at the same path: content, not the name
    rc, err = _main(capsys, *argv, "--resume")
    assert rc == 2 and "parent_hash: " in err
    assert (out / "cka.h5").read_bytes() == before
    rc, err = _main(capsys, *argv, "--overwrite")
    assert rc == 0, err
    with ResultsFile(out / "cka.h5", "r") as new, ResultsFile(runs["root"] / "cka" / "cka.h5",
                                                              "r") as old:
        assert new.read("cka", "checkpoints") == [str(ck.resolve())] * 2
        assert not np.array_equal(new.read("cka", "map"), old.read("cka", "map"))


def test_the_study_reads_metrics_from_each_spec(runs):
    import csv

    from dalivssl.study.results import read_metrics

    root = runs["root"]
    rows = {s: read_metrics(s, root / s) for s in ("retrieve", "robustness", "cka")}
    table = list(csv.DictReader(open(root / "retrieve" / "retrieval.csv")))
    assert [r["metric"] for r in rows["retrieve"]] == ["top1", "top5"]
    assert [r["value"] for r in rows["retrieve"]] == pytest.approx(
        [float(r["accuracy"]) for r in table], abs=1e-6)
    rob = list(csv.DictReader(open(root / "robustness" / "robustness.csv")))
    by = {(r["metric"], r.get("noise"), r.get("severity")): r["value"] for r in rows["robustness"]}
    assert by[("A_c", None, None)] == pytest.approx(float(rob[0]["accuracy"]), abs=1e-6)
    assert by[("R_s", "gaussian", 1)] == pytest.approx(float(rob[1]["rs"]), abs=1e-6)
    cka = {r["metric"]: r["value"] for r in rows["cka"]}
    assert set(cka) == {"cka_last", "cka_mean", "cka_diag"} and cka["cka_diag"] == 1.0


def test_retrieve_resume_leaves_the_result_or_refuses_other_settings(runs, tmp_path, capsys):
    out = tmp_path / "ret"
    shutil.copytree(runs["root"] / "retrieve", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = runs["argv"]["retrieve"] + ["--out", out, "--resume"]
    rc, err = _main(capsys, *argv)
    assert rc == 0 and "already complete with these inputs" in err
    rc, err = _main(capsys, *[a if a != "1,5" else "1,10" for a in argv])
    assert rc == 2 and "cannot resume with other settings (topk: [1, 5] → [1, 10])" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_retrieve_warns_when_queries_are_gallery_videos(tiny_synth, capsys):
    """Review t3 #57 for retrieval: a query set that is the gallery finds itself at top-1."""
    from dalivssl.config import RetrieveConfig
    from dalivssl.data.manifest import load_manifest
    from dalivssl.runs.retrieve import prepare

    train, test = str(tiny_synth["train"]), str(tiny_synth["test"])
    prepare(RetrieveConfig(random_init=True, arch="squeezenet", train=train, test=train))
    n = len(load_manifest(train))
    err = capsys.readouterr().err
    assert f"warning: {n} of the {n} test videos ({train}) are training videos too" in err
    assert "retrieval accuracy (a query finds itself) will overstate" in err
    prepare(RetrieveConfig(random_init=True, arch="squeezenet", train=train, test=test))
    assert "training videos too" not in capsys.readouterr().err  # disjoint splits: no word


def test_cka_default_dir_for_two_checkpoints_of_one_run_name(tiny_synth, tmp_path):
    """Review t3 #11: two checkpoints with one record name gave the run dir
    ``…_(ft1_checkpoint.pt)_vs_…``; now ``<name>-<dir>_vs_<name>-<dir>``."""
    import dataclasses

    import torch

    from dalivssl import record as rec
    from dalivssl.config import CKAConfig
    from dalivssl.runs.cka import prepare

    paths = []
    for d, seed in (("ft1", 0), ("ft2", 1)):
        p = tmp_path / d / "checkpoint.pt"
        p.parent.mkdir()
        _checkpoint(p, seed)
        ck = torch.load(p, weights_only=False)
        ck["record"] = dataclasses.replace(rec.record_of(ck, p), name="ft_rotnet").to_dict()
        torch.save(ck, p)
        paths.append(str(p))
    cfg, inputs = prepare(CKAConfig(checkpoints=tuple(paths), data=str(tiny_synth["train"])))
    assert inputs["names"] == ["ft_rotnet-ft1", "ft_rotnet-ft2"]
    assert cfg.name == "ft_rotnet-ft1_vs_ft_rotnet-ft2"
    assert cfg.out == "runs/cka/ft_rotnet-ft1_vs_ft_rotnet-ft2"
    cfg, inputs = prepare(CKAConfig(checkpoints=(paths[0], paths[0]),
                                    data=str(tiny_synth["train"])))
    assert cfg.out == "runs/cka/ft_rotnet_vs_ft_rotnet"


def test_every_study_step_reads_its_metrics_through_its_spec(tmp_path):
    """The study knows no output layout: every step's rows come from its command's RunSpec."""
    from dalivssl.runs import spec
    from dalivssl.study.results import read_metrics
    from dalivssl.study.spec import STEP_COMMANDS

    assert all(callable(spec(c).metrics) for c in STEP_COMMANDS.values())
    (tmp_path / "summary.json").write_text('{"final_loss": 1.5, "metrics": {"acc": 0.25}}')
    assert read_metrics("pretrain", tmp_path) == [
        {"metric": "final_loss", "value": 1.5}, {"metric": "pretext_acc", "value": 0.25}]
    with pytest.raises(DalivsslError, match="unknown step 'nope'"):
        read_metrics("nope", tmp_path)
