"""One driver per command: ``runs.base.execute(spec, cfg)`` and one ``RunSpec`` per command.

Layer: models → pipelines → data → tasks → engine → runs → study → cli (imports go
down only). ``spec(name)`` imports a command's module lazily (torch stays out of ``--help``).
"""
from __future__ import annotations

import importlib

# command → module holding its SPEC (the registry of commands the driver runs)
SPECS = {"pretrain": "dalivssl.runs.pretrain", "finetune": "dalivssl.runs.finetune",
         "retrieve": "dalivssl.runs.retrieve", "robustness": "dalivssl.runs.robustness",
         "cka": "dalivssl.runs.cka",
         "distill": "dalivssl.runs.distill", "export-logits": "dalivssl.runs.export"}


def spec(name: str):
    """The RunSpec of command ``name`` (unknown names fail with the list)."""
    if name not in SPECS:
        from dalivssl.errors import unknown_name

        raise unknown_name("command", name, SPECS)
    return importlib.import_module(SPECS[name]).SPEC
