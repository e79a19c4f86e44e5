"""Study fixtures: a 24-video synthetic dataset and tiny study files on it; running a study."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

# 8-frame 32-px clips, 2 steps a run: squeezenet is the smallest backbone that takes them
TINY_PRETRAIN = {"max_steps": 2, "batch_size": 4, "clip_len": 8, "size": 32, "no_progress": True}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """{train, test} manifests of 24 videos (4 classes, 48 frames, 64 px)."""
    from dalivssl.data.synth import generate

    return generate(tmp_path_factory.mktemp("study_data"), videos=24, classes=4, frames=48,
                    size=64, workers=1)


def study_dict(data, **changes) -> dict:
    """A study on ``data``: 2 tasks × squeezenet × 2 subsets, every downstream step but
    distill; ``changes`` replace top-level keys."""
    raw = {
        "name": "t",
        "device": "cpu",
        "threads": 1,
        "data": {"synth": {"train": str(data["train"]), "test": str(data["test"])}},
        "axes": {"task": ["rotnet", "vcop"], "arch": ["squeezenet"], "data": ["synth"],
                 "subset": [8, 16]},
        "pretrain": dict(TINY_PRETRAIN),
        "steps": {"finetune": {"max_steps": 2, "batch_size": 4},
                  "retrieve": {"topk": [1, 5]},
                  "robustness": {"noises": ["gaussian"], "severities": [1, 3],
                                 "clips_per_video": 1},
                  "cka": {"against": [{"task": "vcop"}], "batches": 2, "batch_size": 4}},
    }
    raw.update(changes)
    return raw


def write_study(path, raw) -> str:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def dalivssl(*args, check=True, process=False):
    """A study in this process (tests/conftest.py: run_cli); its commands run as the study runs
    them, each in its own process. ``process``: the study runner itself in a process of its own
    (submitit's local executor starts and watches job processes: a process boundary under test)."""
    res = (subprocess.run([sys.executable, "-m", "dalivssl", *map(str, args)],
                          capture_output=True, text=True) if process else run_cli(*args))
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def starts(d) -> int:
    """How many times the study started the command in run dir ``d``."""
    from dalivssl.study.runner import LOG_FILE

    p = Path(d) / LOG_FILE
    return sum(line.startswith("$ ") for line in p.read_text().splitlines()) if p.is_file() else 0
