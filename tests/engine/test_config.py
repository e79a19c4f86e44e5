"""Flat typed config: YAML + --set overrides, type checks, unknown keys."""
from __future__ import annotations

import pytest

from dalivssl.config import PretrainConfig, check_options, parse_set, resolve, to_dict
from dalivssl.errors import DalivsslError


def test_precedence_and_types(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("task: rotnet\nlr: 1\nbatch_size: 4\nsampler: {num_rotations: 2}\n")
    cfg = resolve(PretrainConfig, y, {"batch_size": 6, "arch": None},
                  ["lr=5e-1", "milestones=[0.5, 0.75]", "amp=true", "head.dropout=0.1",
                   "sampler.strides=[1, 2]"])
    assert cfg.task == "rotnet" and cfg.batch_size == 6 and cfg.arch == "shufflenet"
    assert cfg.lr == 0.5 and isinstance(cfg.lr, float) and cfg.milestones == (0.5, 0.75)
    assert cfg.amp is True and cfg.head == {"dropout": 0.1}
    assert cfg.sampler == {"num_rotations": 2, "strides": [1, 2]}
    assert to_dict(cfg)["milestones"] == [0.5, 0.75]


@pytest.mark.parametrize("item,msg", [
    ("batchsize=3", "unknown config key 'batchsize'; valid: task, arch"),
    ("batch_size=abc", "config key 'batch_size': expected int"),
    ("batch_size=2.5", "expected int"),
    ("amp=3", "expected bool"),
    ("noequals", "expected key=value"),
    ("optim.lr=1", "only sampler, head, backbone take dotted keys"),
])
def test_bad_overrides(item, msg):
    with pytest.raises(DalivsslError, match=msg):
        resolve(PretrainConfig, None, {}, [item])


def test_yaml_errors(tmp_path):
    with pytest.raises(DalivsslError, match="config file not found"):
        resolve(PretrainConfig, tmp_path / "no.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(DalivsslError, match="must be a mapping"):
        resolve(PretrainConfig, tmp_path / "bad.yaml")
    (tmp_path / "k.yaml").write_text("colour: red\n")
    with pytest.raises(DalivsslError, match="k.yaml: unknown config key 'colour'"):
        resolve(PretrainConfig, tmp_path / "k.yaml")
    (tmp_path / "b.yaml").write_text("lr: [1\n")  # review t3 #18: "b.yaml: b.yaml: invalid YAML"
    with pytest.raises(DalivsslError) as err:
        resolve(PretrainConfig, tmp_path / "b.yaml")
    assert str(err.value).count("b.yaml") == 1 and str(err.value).startswith(f"{tmp_path / 'b.yaml'}: invalid YAML")


def test_config_is_frozen_and_parse_set():
    cfg = PretrainConfig()
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]
    assert parse_set(["head.queue_size=500"]) == {"head": {"queue_size": 500}}


def test_check_options_lists_valid():
    def build_head(backbone, queue_size=1, dim=2):
        pass

    check_options("tdl head", build_head, {"dim": 3})
    with pytest.raises(DalivsslError, match="unknown tdl head option 'q'; valid: queue_size, dim"):
        check_options("tdl head", build_head, {"q": 3})
