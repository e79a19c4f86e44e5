"""Studies under the paper's protocol: the presets' grids (cell and run counts pinned), the
protocol's flags in each command, the stage axis (one pretraining, finetunes from each kept
epoch), self-CKA, and a tiny paper-protocol study run end to end on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dalivssl.study.spec import expand, load_study, parse_study
from tests.conftest import run_cli
from tests.study.conftest import TINY_PRETRAIN, tiny_data, write_study  # noqa: F401

# preset -> (cells, {step: runs}): the paper's grids
PRESETS = {
    "paper-table1-dataset-size": (18, {"pretrain": 18, "finetune": 36}),  # 6 tasks × 3 subsets
    "paper-table2-stages": (24, {"pretrain": 6, "finetune": 48}),  # 6 × 4 stages, 2 targets
    "paper-table11-stages-backbones": (8, {"pretrain": 2, "finetune": 8}),
    "paper-table3-complexity": (18, {"pretrain": 18, "finetune": 18}),  # 3 tasks × 2 × C1-C3
    "paper-ext-complexity-rspnet": (6, {"pretrain": 6, "finetune": 6}),
    "paper-table4-noise": (12, {"pretrain": 12, "finetune": 12, "robustness": 12}),
    "paper-fig3-distribution-shift": (6, {"pretrain": 6, "finetune": 12}),
    "paper-table16-retrieval": (72, {"pretrain": 72, "retrieve": 144}),  # 6 × 6 × 2 sources
    "paper-fig2-cka": (12, {"pretrain": 12, "cka": 12}),
    "paper-kd-a-backbones": (12, {"pretrain": 12, "finetune": 12, "distill": 7}),
    "paper-kd-b-complexity": (9, {"pretrain": 9, "finetune": 9, "distill": 4}),
    "paper-kd-c-sources": (12, {"pretrain": 12, "finetune": 12, "distill": 7}),
    "paper-kd-d-spatial-temporal": (2, {"pretrain": 2, "finetune": 2, "distill": 2}),
    "paper-kd-d-contrastive": (2, {"pretrain": 2, "finetune": 2, "distill": 2}),
    "paper-table7-vifm-kd": (1, {"pretrain": 1, "distill": 2}),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_preset_grids(name):
    plan = expand(load_study(name))
    cells, by_step = PRESETS[name]
    counts: dict = {}
    for r in plan.runs.values():
        counts[r.step] = counts.get(r.step, 0) + 1
    assert (len(plan.cells), counts) == (cells, by_step)
    assert plan.study.protocol == "paper" and plan.study.description.startswith(
        ("Paper", "Extension"))
    for r in plan.runs.values():  # every pretraining and finetuning runs the paper's protocol
        if r.step in ("pretrain", "finetune"):
            assert '--set' in r.argv and 'protocol="paper"' in r.argv, r.name
        if r.step == "distill":
            assert 'kd_loss="paper"' in r.argv
        if r.step == "robustness":  # noise before the resize, the paper's per-cell counts
            assert 'noise_at="decoded"' in r.argv and 'videos_per_cell="paper"' in r.argv


def test_every_paper_preset_is_pinned():
    from dalivssl.study.spec import preset_names

    assert sorted(n for n in preset_names() if n.startswith("paper-")) == sorted(PRESETS)


def test_complexity_batch_changes_for_vcop_only():
    plan = expand(load_study("paper-table3-complexity"))
    batch = {(r.columns["task"], r.columns["complexity"]):
             next(a.split("=")[1] for a in r.argv if a.startswith("batch_size="))
             for r in plan.runs.values() if r.step == "pretrain" and r.columns["arch"] == "r21d"}
    assert [batch[("vcop", c)] for c in ("C1", "C2", "C3")] == ["32", "16", "8"]
    assert {batch[(t, c)] for t in ("rotnet", "prp") for c in ("C1", "C2", "C3")} == {"32"}


def _tiny(data, **changes):
    raw = {"name": "paper-tiny", "protocol": "paper", "device": "cpu", "threads": 1,
           "data": {"synth": {"train": str(data["train"]), "test": str(data["test"])}},
           "axes": {"task": ["rotnet"], "arch": ["squeezenet"], "data": ["synth"],
                    "subset": [8], "stage": [1, 2]},
           # lr (pretrain) and momentum (finetune): config keys without a flag of the command
           "pretrain": {**{k: v for k, v in TINY_PRETRAIN.items() if k != "max_steps"},
                        "epochs": 2, "lr": 0.02},
           "steps": {"finetune": {"max_steps": 2, "batch_size": 4, "momentum": 0.8},
                     "cka": {"against": ["self"], "batches": 2, "batch_size": 4}}}
    raw.update(changes)
    return raw


def test_stage_axis_shares_one_pretraining(tiny_data):  # noqa: F811
    plan = expand(parse_study(_tiny(tiny_data)))
    pre = [r for r in plan.runs.values() if r.step == "pretrain"]
    assert len(plan.cells) == 2 and len(pre) == 1
    assert "keep_epochs=[1, 2]" in pre[0].argv and pre[0].columns["stage"] is None
    ft = sorted((r for r in plan.runs.values() if r.step == "finetune"),
                key=lambda r: r.columns["stage"])
    assert [r.columns["stage"] for r in ft] == [1, 2]
    assert [r.argv[r.argv.index("--checkpoint") + 1] for r in ft] == [
        f"{{run:{pre[0].name}:epoch_1.pt}}", f"{{run:{pre[0].name}:epoch_2.pt}}"]
    cka = [r for r in plan.runs.values() if r.step == "cka"]
    assert len(cka) == 2 and all(r.argv.count("--checkpoint") == 1 for r in cka)
    assert {r.columns["ref"] for r in cka} == {"self"}
    original = expand(parse_study(_tiny(tiny_data, protocol="original")))
    assert not any('protocol="paper"' in r.argv for r in original.runs.values())


@pytest.mark.slow
def test_tiny_paper_protocol_study_runs_end_to_end(tiny_data, tmp_path):  # noqa: F811
    from dalivssl.engine.checkpoint import load_checkpoint
    from dalivssl.results import ResultsFile
    from dalivssl.study import results as R
    from dalivssl.study.runner import LOG_FILE, run_dir, status

    path = write_study(tmp_path / "paper.yaml", _tiny(tiny_data))
    out = tmp_path / "out"
    res = run_cli("study", "run", path, "--out", out)  # in this process; its commands in theirs
    assert res.returncode == 0, res.stdout + res.stderr
    plan = expand(load_study(path))
    assert all(status(out, r) == "done" for r in plan.runs.values())
    (pre,) = [r for r in plan.runs.values() if r.step == "pretrain"]
    d = run_dir(out, pre)
    log = (d / LOG_FILE).read_text()
    assert sum(line.startswith("$ ") for line in log.splitlines()) == 1  # pretrained once
    import yaml

    assert yaml.safe_load((d / "config.yaml").read_text())["lr"] == 0.02  # rotnet's own: 0.01
    kept = {e: load_checkpoint(d / f"epoch_{e}.pt") for e in (1, 2)}
    assert [kept[e]["record"]["settings"]["stage"] for e in (1, 2)] == [1, 2]
    assert kept[1]["config"]["sampler"]["protocol"] == "paper"
    for r in plan.runs.values():
        if r.step == "finetune":
            ck = load_checkpoint(run_dir(out, r) / "checkpoint.pt")
            assert ck["config"]["protocol"] == "paper"
            assert ck["config"]["pretrained"].endswith(f"epoch_{r.columns['stage']}.pt")
            ft_config = yaml.safe_load((run_dir(out, r) / "config.yaml").read_text())
            assert ft_config["momentum"] == 0.8 and ft_config["protocol"] == "paper"
        if r.step == "cka":  # self-CKA: the model against itself, diagonal 1
            with ResultsFile(run_dir(out, r) / "cka.h5", "r") as f:
                m = np.asarray(f.read("cka", "map"), float)
            assert m.shape[0] == m.shape[1] > 1
            np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    rows = R.collect(out)
    assert {r["stage"] for r in rows if r["step"] == "finetune"} == {1, 2}
    assert json.loads((d / "summary.json").read_text())["steps"] == 4
