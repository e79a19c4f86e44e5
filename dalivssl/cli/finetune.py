"""`dalivssl finetune`: full finetuning or linear probe, then clip- and video-level top-1."""
from __future__ import annotations

import click

from dalivssl.cli.options import clip_options, config_options, run_options
from dalivssl.config import OPTIMIZERS


@click.command("finetune")
@click.option("--checkpoint", "checkpoint", type=click.Path(dir_okay=False),
              help="Pretrained (or finetuned) dalivssl checkpoint to start from.")
@click.option("--random-init", is_flag=True, help="Start from random weights (needs --arch).")
@click.option("--arch", default=None,
              help="Backbone name; with --checkpoint it must match the checkpoint's arch.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Train manifest (its 'train' split when --test-data is not given). "
                   "Default: the embedded synthetic dataset.")
@click.option("--test-data", type=click.Path(dir_okay=False), default=None,
              help="Test manifest (all its videos).")
@click.option("--linear-probe", is_flag=True, default=None,
              help="Freeze the backbone (eval mode, BN statistics frozen); train a linear head.")
@click.option("--l2-norm", is_flag=True, default=None,
              help="L2-normalise features before the head (CVRL linear-eval style).")
@click.option("--epochs", type=int, default=None, help="Epochs (default 10).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps "
              "(wins over --epochs).")
@click.option("--batch-size", type=int, default=None, help="Batch (default 8).")
@click.option("--lr", type=float, default=None,
              help="Base lr, cosine decay (default 1e-3; 0.1 with --l2-norm).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help="SGD momentum 0.9 (VCOP's finetuning; default) or AdamW.")
@click.option("--weight-decay", type=float, default=None,
              help="Default 5e-4 finetune, 0 probe.")
@click.option("--dropout", type=float, default=None,
              help="Dropout before the linear head (training only; default 0).")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flip of training clips. Default: on, except for datasets "
                   "whose classes name a left/right direction (synthetic, SSv2).")
@click.option("--protocol", type=click.Choice(["original", "paper"]), default=None,
              help="original (default): each task as its original repository; paper: the "
                   "paper's resize + centre crop for training clips (supp. C.3).")
@clip_options
@click.option("--eval-clips", "--clips", "eval_clips", type=int, default=None,
              help="Evenly spaced test clips per video (video score = mean logits; default 10).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run dir (default runs/finetune/<name>).")
@click.option("--explain", is_flag=True, help="Print the resolved settings (clip settings from "
              "the checkpoint's record) beside the paper protocol's and the original's, then "
              "exit: no training, nothing written.")
@config_options
@run_options
def finetune(checkpoint, random_init, arch, data, test_data, linear_probe, l2_norm, epochs,
             max_steps, batch_size, lr, optimizer, weight_decay, dropout, flip, protocol,
             clip_len, size, normalize, eval_clips, out, config_path, sets, name, device, threads,
             seed, resume, overwrite, no_progress, explain):
    """Finetune (or linear-probe) a backbone on labelled videos and report top-1 accuracy.

    Training: one random clip per video (random crop + flip, see --flip). Test: --eval-clips
    evenly spaced centre clips per video; clip-level top-1 and video-level top-1 (averaged
    logits). Clip settings come from the checkpoint's run record unless overridden (stated on
    screen). Writes OUT/checkpoint.pt, record.json, finetune.h5, finetune_log.csv, finetune.png.
    """
    from pathlib import Path

    from dalivssl.config import FinetuneConfig, resolve
    from dalivssl.console import stderr_console
    from dalivssl.errors import DalivsslError

    flags = dict(linear_probe=linear_probe, l2_norm=l2_norm, epochs=epochs, max_steps=max_steps,
                 batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                 dropout=dropout, flip=flip, eval_clips=eval_clips, name=name, device=device,
                 threads=threads, seed=seed, progress=False if no_progress else None,
                 protocol=protocol, arch=arch, clip_len=clip_len, size=size, normalize=normalize,
                 pretrained=checkpoint, random_init=True if random_init else None, data=data,
                 test_data=test_data)
    cfg = resolve(FinetuneConfig, config_path, flags, sets)
    given = explicit_keys(config_path, flags, sets)  # what the user set, anywhere
    if bool(cfg.pretrained) == bool(cfg.random_init):
        raise DalivsslError("give exactly one of --checkpoint PATH or --random-init --arch NAME")
    if cfg.random_init and "arch" not in given:
        raise DalivsslError("--random-init needs --arch")
    from dalivssl.runs.finetune import prepare, run_finetune

    cfg, inputs, parent = prepare(cfg, given, build=not explain)
    if explain:
        from dalivssl.engine.explain import explain_finetune

        click.echo(explain_finetune(cfg, inputs["data"], parent))
        return
    fdata, console = inputs["data"], stderr_console()
    out = Path(out or Path("runs/finetune") / cfg.name)
    console.print(f"{cfg.name}: {cfg.arch} at {cfg.clip_len}×{cfg.size}² {cfg.normalize}, "
                  f"{'linear probe' if cfg.linear_probe else 'finetune'}"
                  f"{' from ' + parent.name if parent else ' from random init'} → {out}",
                  highlight=False)
    res = run_finetune(cfg, out_dir=out, resume=resume, overwrite=overwrite, **inputs)

    from rich.table import Table

    from dalivssl.console import stdout_console

    table = Table(title=f"{'linear probe' if cfg.linear_probe else 'finetune'} {cfg.name} "
                        f"({cfg.arch}, {'pretrained' if cfg.pretrained else 'random init'})")
    for col in ("train videos", "test videos", "skipped", "epochs", "steps", "clip top-1",
                "video top-1"):
        table.add_column(col, justify="right")
    table.add_row(str(len(fdata.train)), str(len(fdata.test)),
                  str(sum(res["skipped"].values())), str(res["epochs"]), str(res["step"]),
                  f"{res['clip_acc']:.4f}", f"{res['video_acc']:.4f}")
    stdout_console().print(table)
    console.print(f"checkpoint: {res['checkpoint']}\nresults: {res['results']}")


def explicit_keys(config_path, flags: dict, sets) -> set:
    """The config keys the user gave (a --config file's, flags not None, --set's): what must win
    over the values a checkpoint's record supplies."""
    from dalivssl.config import load_yaml, parse_set

    keys = {k for k, v in flags.items() if v is not None} | set(parse_set(sets))
    return keys | set(load_yaml(config_path)) if config_path else keys
