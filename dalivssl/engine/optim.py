"""Optimiser policy as data: a task's SPEC says which optimiser, with which betas, and whether
norm and bias parameters are exempt from weight decay; the engine only executes it.

``OptimSpec.from_spec(SPEC)`` reads a task SPEC (its ``"optimizer"`` dict and ``"lr_mult"``);
``resolve_optim(cfg, SPEC, …)`` is a pretraining's optimiser and schedule settings (the config's
values over the SPEC's, the lr scaled by ``OptimSpec.scaled_lr``) and ``build_optimizer`` builds
them for a ``TaskModel``; ``param_groups(model, spec)`` splits the trainable parameters into groups by lr multiplier and,
with ``no_decay_norm_bias``, by decay / no decay; ``make_optimizer(groups, spec)`` builds SGD or
AdamW over them. The no-decay rule is the one of MAE / VideoMAE (``optim_factory.
get_parameter_groups``: every 1-D parameter and every ``.bias``) plus every parameter owned by a
normalisation layer.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dalivssl.config import OPTIMIZERS
from dalivssl.errors import DalivsslError

SCALINGS = ("linear", "sqrt")
# modules whose parameters are never decayed when no_decay_norm_bias is set (BatchNorm and
# InstanceNorm derive from _NormBase)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class OptimSpec:
    """One optimiser policy.

    name: sgd | adamw. lr: base lr at ``ref_batch`` (or as is without it). momentum: SGD only.
    betas: AdamW only. weight_decay: for the decayed group. no_decay_norm_bias: put biases, 1-D
    parameters and norm-layer parameters in a group with weight decay 0. ref_batch / scaling:
    scale lr by (global batch / ref_batch) (``linear``) or its square root (``sqrt``).
    lr_mult: parameter-name prefix → lr multiplier (the longest matching prefix wins).
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    no_decay_norm_bias: bool = False
    ref_batch: int | None = None
    scaling: str | None = None
    lr_mult: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ValueError(f"unknown lr scaling {self.scaling!r}; valid: {', '.join(SCALINGS)}")
        if len(tuple(self.betas)) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @classmethod
    def from_spec(cls, spec: dict, **overrides) -> "OptimSpec":
        """From a task SPEC: its ``"optimizer"`` dict (keys = field names) and ``"lr_mult"``;
        ``overrides`` (non-None) win."""
        o = dict(spec.get("optimizer", {}))
        if spec.get("lr_mult") and "lr_mult" not in o:
            o["lr_mult"] = dict(spec["lr_mult"])
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(o) - names)
        if bad:
            raise ValueError(f"optimizer spec: unknown key(s) {', '.join(bad)}; valid: "
                             f"{', '.join(sorted(names))}")
        o.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**o)

    def scaled_lr(self, global_batch: int) -> float:
        """``lr`` scaled from ``ref_batch`` to ``global_batch`` as ``scaling`` says."""
        if not self.ref_batch or not self.scaling:
            return float(self.lr)
        ratio = global_batch / self.ref_batch
        return float(self.lr) * (ratio if self.scaling == "linear" else math.sqrt(ratio))


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters exempt from weight decay: 1-D (biases, norm scales, tokens
    stored 1-D), any ``.bias``, and everything owned by a normalisation layer."""
    out = set()
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(mod, NORM_TYPES) or p.ndim <= 1 or p_name == "bias":
                out.add(full)
    return out


def param_groups(model: nn.Module, spec: OptimSpec) -> list[dict]:
    """Trainable parameters of ``model`` as optimiser groups (``requires_grad=False`` ones,
    e.g. EMA key encoders, are skipped).

    One group per (lr multiplier, decayed?) pair, ordered by multiplier then decayed first; each
    group dict holds ``params``, ``lr`` (= spec.lr × mult), ``weight_decay`` (spec's or 0),
    ``lr_mult`` and ``decay``. Without ``no_decay_norm_bias`` there is one group per
    multiplier, as before this module existed (checkpoints keep loading).
    """
    skip = no_decay_names(model) if spec.no_decay_norm_bias else set()
    prefixes = sorted(spec.lr_mult.items(), key=lambda kv: len(kv[0]))
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        for prefix, m in prefixes:  # longest matching prefix last, so it wins
            if name.startswith(prefix):
                mult = float(m)
        buckets.setdefault((mult, name not in skip), []).append(p)
    order = sorted(buckets, key=lambda k: (k[0], not k[1]))  # by multiplier, decayed first
    return [{"params": buckets[(mult, decay)], "lr": spec.lr * mult,
             "weight_decay": spec.weight_decay if decay else 0.0, "lr_mult": mult, "decay": decay}
            for mult, decay in order]


def make_optimizer(groups, spec: OptimSpec) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW (betas) over ``groups`` (param groups or tensors); a group's own
    lr / weight_decay win over the spec's."""
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas,
                                 weight_decay=spec.weight_decay)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                           weight_decay=spec.weight_decay)


def resolve_optim(cfg, spec: dict, global_batch: int, total_steps: int,
                  steps_per_epoch: int = 1) -> dict:
    """A pretraining's optimiser/schedule settings for ``cfg`` (a PretrainConfig): the config's
    value if set, else the task SPEC's (:meth:`OptimSpec.from_spec`; the lr scaled from the
    SPEC's reference batch to ``global_batch`` when it says so, :meth:`OptimSpec.scaled_lr`).
    ``warmup_epochs`` (VideoMAE's 40) wins over warmup_steps and the SPEC's fraction of the
    steps."""
    from dalivssl.engine.fit import SCHEDULES

    try:
        o = OptimSpec.from_spec(spec, name=cfg.optimizer, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    except ValueError as exc:  # an unknown optimiser or SPEC key
        raise DalivsslError(str(exc)) from None
    s = dict(spec.get("schedule", {}))
    warm = cfg.warmup_steps
    if getattr(cfg, "warmup_epochs", None) is not None:
        warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm is None:
        warm = int(round(float(s.get("warmup", 0.0)) * total_steps))
    out = {
        "optimizer": o.name,
        "lr": float(cfg.lr if cfg.lr is not None else o.scaled_lr(global_batch)),
        "momentum": float(o.momentum),
        "weight_decay": float(o.weight_decay),
        "schedule": cfg.schedule or s.get("name", "constant"),
        "warmup_steps": int(warm),
        "milestones": tuple(cfg.milestones if cfg.milestones is not None
                            else s.get("milestones", ())),
        "gamma": cfg.gamma if cfg.gamma is not None else float(s.get("gamma", 0.1)),
        "min_lr_ratio": (cfg.min_lr_ratio if cfg.min_lr_ratio is not None
                         else float(s.get("min_lr_ratio", 0.0))),
        "grad_clip": cfg.grad_clip if cfg.grad_clip is not None else spec.get("grad_clip"),
        "betas": o.betas,
        "no_decay_norm_bias": bool(o.no_decay_norm_bias),
    }
    if out["schedule"] not in SCHEDULES:
        raise DalivsslError(f"unknown schedule {out['schedule']!r}; valid: {', '.join(SCHEDULES)}")
    return out


def build_optimizer(model: nn.Module, opt: dict, lr_mult: dict | None = None):
    """SGD/AdamW of :func:`resolve_optim`'s settings ``opt`` over a ``TaskModel``'s trainable
    parameters: head parameters under a prefix in ``lr_mult`` (the SPEC's, head-relative) get
    lr × mult; ``opt['no_decay_norm_bias']`` exempts norm/bias parameters from weight decay."""
    spec = OptimSpec(opt["optimizer"], opt["lr"], opt["momentum"], opt.get("betas", (0.9, 0.999)),
                     opt["weight_decay"], bool(opt.get("no_decay_norm_bias", False)),
                     lr_mult={f"head.{k}": v for k, v in (lr_mult or {}).items()})
    return make_optimizer(param_groups(model, spec), spec)
