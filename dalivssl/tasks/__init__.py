"""Pretext tasks (contract C6): one module per task, each with

- ``SPEC``: sampler name, default sampler options (``complexity`` names the benchmark's knob),
  default optimiser / schedule (from the original, scaled for small batches);
- ``build_head(backbone, **opts) -> nn.Module`` (may hold a MoCo key encoder and queue);
- ``step(backbone, head, batch) -> dict`` with at least ``'loss'``.
"""
from dalivssl.tasks import cvrl, prp, rotnet, rspnet, tdl, vcop, videomae

TASKS = {"rotnet": rotnet, "vcop": vcop, "prp": prp, "cvrl": cvrl, "tdl": tdl, "rspnet": rspnet,
         "videomae": videomae}


def get_task(name: str):
    """The task module ``name``; DalivsslError listing the valid names otherwise."""
    from dalivssl.errors import unknown_name

    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]
