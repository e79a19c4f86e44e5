"""engine/optim.py: the optimiser policy a task SPEC declares (groups, no-decay rule, betas)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dalivssl.engine.optim import OptimSpec, make_optimizer, no_decay_names, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3)
        self.bn = nn.BatchNorm3d(4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.token = nn.Parameter(torch.zeros(4))       # 1-D: no decay
        self.table = nn.Parameter(torch.zeros(2, 4))    # 2-D: decayed
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(model, group):
    ids = {id(p): n for n, p in model.named_parameters()}
    return sorted(ids[id(p)] for p in group["params"])


def test_no_decay_group_holds_biases_norms_and_1d_params_and_skips_frozen():
    m = Net()
    assert no_decay_names(m) >= {"conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias",
                                 "gn.weight", "gn.bias", "token", "fc.bias"}
    groups = param_groups(m, OptimSpec("adamw", lr=0.1, weight_decay=0.05,
                                       no_decay_norm_bias=True))
    assert [(g["decay"], g["weight_decay"]) for g in groups] == [(True, 0.05), (False, 0.0)]
    assert _names(m, groups[0]) == ["conv.weight", "fc.weight", "table"]
    assert _names(m, groups[1]) == sorted(["bn.bias", "bn.weight", "conv.bias", "fc.bias",
                                           "gn.bias", "gn.weight", "ln.bias", "ln.weight",
                                           "token"])
    assert not any(n.startswith("frozen") for g in groups for n in _names(m, g))


def test_without_the_flag_one_group_per_multiplier_as_before():
    m = Net()
    groups = param_groups(m, OptimSpec(lr=0.1, weight_decay=5e-4, lr_mult={"fc": 10.0}))
    assert [(g["lr_mult"], g["lr"], g["weight_decay"]) for g in groups] == [
        (1.0, 0.1, 5e-4), (10.0, pytest.approx(1.0), 5e-4)]
    assert _names(m, groups[1]) == ["fc.bias", "fc.weight"]
    both = param_groups(m, OptimSpec(lr=0.1, weight_decay=5e-4, lr_mult={"fc": 10.0},
                                     no_decay_norm_bias=True))
    assert [(g["lr_mult"], g["decay"]) for g in both] == [(1.0, True), (1.0, False),
                                                          (10.0, True), (10.0, False)]


def test_make_optimizer_honours_betas_momentum_and_group_decay():
    m = Net()
    spec = OptimSpec("adamw", lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05,
                     no_decay_norm_bias=True)
    opt = make_optimizer(param_groups(m, spec), spec)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95)] * 2
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    sgd = OptimSpec("sgd", lr=0.01, momentum=0.8)
    opt = make_optimizer(param_groups(m, sgd), sgd)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.8


def test_from_spec_scaling_and_bad_values():
    spec = {"optimizer": {"name": "adamw", "lr": 1.5e-4, "betas": [0.9, 0.95], "ref_batch": 256,
                          "scaling": "linear", "no_decay_norm_bias": True},
            "lr_mult": {"cls.fc8": 10.0}}
    o = OptimSpec.from_spec(spec)
    assert o.betas == (0.9, 0.95) and o.lr_mult == {"cls.fc8": 10.0}
    assert o.scaled_lr(512) == pytest.approx(3e-4)
    assert OptimSpec.from_spec(spec, lr=0.5).lr == 0.5
    assert OptimSpec(lr=0.32, ref_batch=1024, scaling="sqrt").scaled_lr(16) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="unknown key"):
        OptimSpec.from_spec({"optimizer": {"name": "sgd", "nesterov": True}})
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        OptimSpec("lamb")


def test_every_task_spec_is_a_valid_policy():
    from dalivssl.tasks import TASKS

    for name, task in TASKS.items():
        OptimSpec.from_spec(task.SPEC)  # raises on an unknown key or optimiser


def test_resolve_optim_is_the_specs_policy_with_the_configs_values_over_it():
    """The trainer's settings come from OptimSpec (one policy): SPEC values, the lr scaled by
    scaled_lr only when the config gives none, config values winning, bad names one line."""
    from dalivssl.config import PretrainConfig
    from dalivssl.engine.optim import resolve_optim
    from dalivssl.errors import DalivsslError

    spec = {"optimizer": {"name": "adamw", "lr": 1.5e-4, "betas": [0.9, 0.95], "ref_batch": 256,
                          "scaling": "linear", "weight_decay": 0.05, "no_decay_norm_bias": True},
            "schedule": {"name": "cosine", "warmup": 0.1}, "grad_clip": 1.0}
    o = resolve_optim(PretrainConfig(task="videomae"), spec, 512, 200)
    assert o == {"optimizer": "adamw", "lr": pytest.approx(3e-4), "momentum": 0.9,
                 "weight_decay": 0.05, "schedule": "cosine", "warmup_steps": 20,
                 "milestones": (), "gamma": 0.1, "min_lr_ratio": 0.0, "grad_clip": 1.0,
                 "betas": (0.9, 0.95), "no_decay_norm_bias": True}
    o = resolve_optim(PretrainConfig(task="videomae", lr=0.01, optimizer="sgd", momentum=0.5,
                                     weight_decay=0.0), spec, 512, 200)
    assert (o["lr"], o["optimizer"], o["momentum"], o["weight_decay"]) == (0.01, "sgd", 0.5, 0.0)
    with pytest.raises(DalivsslError, match=r"^unknown optimizer 'lamb'; valid: sgd, adamw$"):
        resolve_optim(PretrainConfig(optimizer="lamb"), spec, 8, 10)
    with pytest.raises(DalivsslError, match="unknown key.*nesterov"):
        resolve_optim(PretrainConfig(), {"optimizer": {"nesterov": True}}, 8, 10)
    with pytest.raises(DalivsslError, match=r"^unknown schedule 'poly'"):
        resolve_optim(PretrainConfig(schedule="poly"), spec, 8, 10)
