"""Options every command shares, declared once so that their names, defaults and help agree
(threads, device, clip settings, config replay, run-dir handling)."""
from __future__ import annotations

import importlib

import click


class RegistryOption(click.Option):
    """An option whose help lists a registry's keys (``registry="module:NAME"``, less
    ``exclude``; ``{names}`` in the help), read only when help is shown, so a new registry entry
    needs no help edit. Name a light registry: help must not import torch."""

    def __init__(self, *args, registry: str, exclude: tuple = (), **kwargs):
        self.registry, self.exclude = registry, tuple(exclude)
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None:
            return None
        module, name = self.registry.split(":")
        names = ", ".join(k for k in getattr(importlib.import_module(module), name)
                          if k not in self.exclude)
        return record[0], record[1].replace("{names}", names)


def _stack(*decorators):
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


def config_options(fn):
    """--config FILE (a run's config.yaml) and --set KEY=VALUE (repeatable), replayable."""
    return _stack(
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML run config (flat keys; a run's config.yaml replays it)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key (repeatable), e.g. lr=0.01."),
    )(fn)


def clip_options(fn):
    """--clip-len / --size / --normalize: default the model's own (its run record)."""
    return _stack(
        click.option("--clip-len", type=int, default=None,
                     help="Frames per clip (default: the checkpoint's record, else 16)."),
        click.option("--size", type=int, default=None,
                     help="Crop size in px (default: the checkpoint's record, else 64)."),
        click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default=None,
                     help="Input normalisation (default: the checkpoint's record, else "
                          "imagenet)."),
    )(fn)


def run_options(fn):
    """--name, --device, --threads, --seed, --resume / --overwrite, --no-progress."""
    return _stack(
        click.option("--name", default=None,
                     help="Human name of the result for tables and plots (default from the run)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
                     help="auto (default: the GPU when CUDA and NVDEC are usable, else the CPU; "
                          "stated on screen and recorded), cpu or gpu."),
        click.option("--threads", "--workers", "threads", type=int, default=None,
                     help="CPU threads for torch and DALI (default 2)."),
        click.option("--seed", type=int, default=None, help="Seed (default 0)."),
        click.option("--resume", is_flag=True, help="Continue the run in --out."),
        click.option("--overwrite", is_flag=True, help="Replace the run in --out."),
        click.option("--no-progress", is_flag=True,
                     help="No progress bar or periodic lines (the summary is still printed)."),
    )(fn)

