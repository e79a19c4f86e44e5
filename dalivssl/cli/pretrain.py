"""``dalivssl pretrain``: pretrain a backbone on a pretext task (torch/DALI imported lazily)."""
from __future__ import annotations

import click

from dalivssl.cli.options import RegistryOption


@click.command("pretrain")
# each task's sampler has its name (tests/tasks): the numpy-only SAMPLERS keeps --help light
@click.option("--task", cls=RegistryOption, registry="pipelines.samplers:SAMPLERS",
              exclude=("eval",), default=None, help="Pretext task: {names} (default vcop).")
@click.option("--arch", default=None, help="Backbone, e.g. shufflenet, r21d, r3d, c3d "
              "(default shufflenet).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Train manifest (JSONL). Default: the embedded synthetic dataset.")
@click.option("--subset", type=int, default=None, help="Use N videos (nested, class-balanced).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 2).")
@click.option("--max-steps", type=int, default=None, help="Stop after S optimiser steps.")
@click.option("--batch-size", type=int, default=None, help="Per-process batch (default 8).")
@click.option("--clip-len", type=int, default=None, help="Frames per clip (default 16, as the paper).")
@click.option("--size", type=int, default=None, help="Crop size in px (default 64; paper 112).")
@click.option("--protocol", type=click.Choice(["original", "paper"]), default=None,
              help="original (default): each task as its original repository; paper: the "
                   "benchmark's settings (Kumar et al. supp. C.3; README 'Reproducing the paper').")
@click.option("--keep-epochs", default=None, metavar="E1,E2,…",
              help="Also keep epoch_<E>.pt after these epochs (training stages), each with its "
                   "own run record.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML run config (flat keys).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable): lr=0.01, sampler.num_clips=4, "
                   "head.queue_size=500.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="auto (default: the GPU when CUDA and NVDEC are usable, else the CPU; "
                   "stated and recorded), cpu or gpu.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run dir (default runs/pretrain/<task>_<arch>).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--overwrite", is_flag=True, help="Start again even if --out holds a checkpoint.")
@click.option("--seed", type=int, default=None, help="Seed (default 0).")
@click.option("--name", default=None, help="Human name of the run for tables and plots "
              "(default <task>_<arch>).")
@click.option("--threads", "--workers", "threads", type=int, default=None,
              help="CPU threads for torch and DALI (default 2).")
@click.option("--no-progress", is_flag=True, help="No progress bar or summary table.")
@click.option("--explain", is_flag=True, help="Print the resolved settings beside the paper "
              "protocol's and the original's, and the task's known differences, then exit.")
def pretrain(task, arch, data, subset, epochs, max_steps, batch_size, clip_len, size,
             protocol, keep_epochs, config_path, sets, device, out, resume, overwrite, seed, name,
             threads, no_progress, explain):
    """Pretrain a backbone on a pretext task (Kumar et al., arXiv 2306.06010).

    Writes checkpoint.pt, config.yaml, log.csv, tb/ and summary.json into the run dir. Under
    torchrun (`torchrun --nproc_per_node=N -m dalivssl pretrain …`) it trains with DDP.
    """
    from dalivssl.config import PretrainConfig, resolve

    flags = dict(task=task, arch=arch, data=data, subset=subset, epochs=epochs,
                 max_steps=max_steps, batch_size=batch_size, clip_len=clip_len, size=size,
                 device=device, out=out, seed=seed, name=name, threads=threads,
                 progress=False if no_progress else None, protocol=protocol,
                 keep_epochs=_epochs(keep_epochs))
    cfg = resolve(PretrainConfig, config_path, flags, sets)
    _validate_names(cfg)
    _check_arch(cfg)
    if explain:
        from dalivssl.engine.explain import explain as explain_text

        click.echo(explain_text(cfg))
        return

    from dalivssl.runs.pretrain import pretrain as run

    run(cfg, resume=resume, overwrite=overwrite)


def _epochs(text):
    """'50,100,150' -> [50, 100, 150] (None when not given); one-line error otherwise."""
    if text is None:
        return None
    from dalivssl.errors import DalivsslError

    try:
        return [int(e) for e in str(text).split(",") if e.strip()]
    except ValueError:
        raise DalivsslError(f"--keep-epochs {text!r}: expected comma-separated epochs, e.g. "
                            "50,100,150") from None


def _validate_names(cfg) -> None:
    """Fail on an unknown task/arch or a missing manifest before importing torch/DALI."""
    from pathlib import Path

    from dalivssl.errors import DalivsslError, unknown_name

    from dalivssl.tasks import TASKS

    if cfg.task not in TASKS:
        raise unknown_name("task", cfg.task, TASKS)
    if cfg.data and not Path(cfg.data).is_file():
        raise DalivsslError(f"{cfg.data}: manifest not found")
    cfg.check()


def _check_arch(cfg) -> None:
    """An unknown arch, or clips smaller than the arch declares it takes (``min_input``): one
    line, before anything is built (imports the models, not DALI)."""
    from dalivssl.engine.features import check_arch, check_input_size

    check_input_size(check_arch(cfg.arch), cfg.clip_len, cfg.size, cfg.arch)
