"""Pure-numpy clip samplers, one per pretext task plus the evaluation sampler (contract C3).

``SAMPLERS[name](clip_len=16, size=112, augment=True, **task_options).plan(record, rng)`` returns
a :class:`pipelines.types.ClipPlan`. See each class docstring for the original implementation it
follows (Kumar et al. 2306.06010 §3 and the original repositories), its complexity knob and its short-video policy.
"""
from __future__ import annotations

from pipelines.samplers.base import Sampler, TooShort
from pipelines.samplers.cvrl import CVRLSampler
from pipelines.samplers.eval import EvalSampler
from pipelines.samplers.prp import PRPSampler
from pipelines.samplers.rotnet import RotNetSampler
from pipelines.samplers.rspnet import RSPNetSampler
from pipelines.samplers.tdl import TDLSampler
from pipelines.samplers.vcop import VCOPSampler
from pipelines.samplers.videomae import VideoMAESampler

SAMPLERS: dict[str, type[Sampler]] = {
    "rotnet": RotNetSampler,
    "vcop": VCOPSampler,
    "prp": PRPSampler,
    "cvrl": CVRLSampler,
    "tdl": TDLSampler,
    "rspnet": RSPNetSampler,
    "videomae": VideoMAESampler,
    "eval": EvalSampler,
}


def create_sampler(name: str, **kwargs) -> Sampler:
    """SAMPLERS[name](**kwargs); an unknown name raises KeyError listing the valid names."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise KeyError(f"unknown sampler {name!r}; valid: {', '.join(sorted(SAMPLERS))}") from None
    return cls(**kwargs)


__all__ = ["SAMPLERS", "Sampler", "TooShort", "create_sampler"]
