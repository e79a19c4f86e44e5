"""`dalivssl finetune`: full finetuning or linear probe, then clip- and video-level top-1."""
from __future__ import annotations

import click

from dalivssl.config import OPTIMIZERS

# fallbacks when neither the flag nor the checkpoint says (paper: 16×112; 64 px keeps CPU runs short)
DEFAULT_CLIP_LEN = 16
DEFAULT_SIZE = 64


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
@click.option("--linear-probe", is_flag=True,
              help="Freeze the backbone (eval mode, BN statistics frozen); train a linear head.")
@click.option("--l2-norm", is_flag=True,
              help="L2-normalise features before the head (CVRL linear-eval style).")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps "
              "(wins over --epochs).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=None,
              help="Base lr, cosine decay (default 1e-3; 0.1 with --l2-norm).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd",
              show_default=True, help="SGD momentum 0.9 (VCOP's finetuning) or AdamW.")
@click.option("--weight-decay", type=float, default=None,
              help="Default 5e-4 finetune, 0 probe.")
@click.option("--dropout", type=float, default=0.0, show_default=True,
              help="Dropout before the linear head (training only).")
@click.option("--flip/--no-flip", default=None,
              help="Random horizontal flip of training clips. Default: on, except for datasets "
                   "whose classes name a left/right direction (synthetic, SSv2).")
@click.option("--clip-len", type=int, default=None,
              help=f"Frames per clip (default: the checkpoint's, else {DEFAULT_CLIP_LEN}).")
@click.option("--size", type=int, default=None,
              help=f"Crop size in px (default: the checkpoint's, else {DEFAULT_SIZE}).")
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default=None,
              help="Input normalisation (default: the pretraining task's, else imagenet).")
@click.option("--eval-clips", type=int, default=10, show_default=True,
              help="Evenly spaced test clips per video (video-level score = mean logits).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run dir (default runs/finetune/<arch>[_probe]).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch intra-op threads.")
@click.option("--resume", is_flag=True,
              help="Continue from the checkpoint in --out (without it, a new run overwrites it).")
def finetune(checkpoint, random_init, arch, data, test_data, linear_probe, l2_norm, epochs,
             max_steps, batch_size, lr, optimizer, weight_decay, dropout, flip, clip_len, size,
             normalize, eval_clips, out, device, seed, threads, resume):
    """Finetune (or linear-probe) a backbone on labelled videos and report top-1 accuracy.

    Training: one random clip per video (random crop + flip, see --flip). Test: --eval-clips
    evenly spaced centre clips per video; clip-level top-1 and video-level top-1 (averaged
    logits). Writes OUT/checkpoint.pt (kind 'finetune'), OUT/finetune.h5 and OUT/finetune_log.csv.
    """
    from pathlib import Path

    from rich.console import Console

    from dalivssl.console import stderr_console
    from dalivssl.errors import DalivsslError

    if bool(checkpoint) == bool(random_init):
        raise DalivsslError("give exactly one of --checkpoint PATH or --random-init --arch NAME")
    if random_init and not arch:
        raise DalivsslError("--random-init needs --arch")
    for name, v in (("--epochs", epochs), ("--batch-size", batch_size),
                    ("--eval-clips", eval_clips)):
        if v < 1:
            raise DalivsslError(f"{name} must be >= 1, got {v}")
    if max_steps is not None and max_steps < 1:
        raise DalivsslError(f"--max-steps must be >= 1, got {max_steps}")

    import torch

    from dalivssl.analysis.finetune import (FinetuneConfig, pretrain_normalize, resolve_data,
                                            run_finetune)

    if threads:
        torch.set_num_threads(threads)
    from dalivssl.analysis.features import torch_device

    tdev = torch_device(device)
    console = stderr_console()

    fdata = resolve_data(data, test_data)
    ckpt = {}
    if checkpoint:
        from dalivssl.engine.checkpoint import load_backbone

        backbone, ckpt = load_backbone(checkpoint, arch=arch, device="cpu")
        arch = ckpt["arch"]
        backbone_kwargs = dict(ckpt.get("backbone_kwargs") or {})
    else:
        from models import create_backbone

        torch.manual_seed(seed)
        backbone = create_backbone(arch)
        backbone_kwargs = {}
    pre_cfg = ckpt.get("config") or {}
    clip_len = clip_len or ckpt.get("clip_len") or pre_cfg.get("clip_len") or DEFAULT_CLIP_LEN
    size = size or ckpt.get("size") or pre_cfg.get("size") or DEFAULT_SIZE
    normalize = normalize or (pretrain_normalize(ckpt) if ckpt else None) or "imagenet"
    from dalivssl.analysis.features import check_input_size

    check_input_size(backbone, int(clip_len), int(size), arch)
    if lr is None:  # raw features have norms ~50-100: larger steps blow the head up
        lr = 0.1 if l2_norm else 1e-3
    if weight_decay is None:
        weight_decay = 0.0 if linear_probe else 5e-4
    cfg = FinetuneConfig(arch=arch, linear_probe=linear_probe, l2_norm=l2_norm, epochs=epochs,
                         max_steps=max_steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         weight_decay=weight_decay, dropout=dropout, flip=flip,
                         clip_len=int(clip_len), size=int(size), eval_clips=eval_clips, normalize=normalize, seed=seed,
                         device=tdev, pretrained=str(checkpoint) if checkpoint else None)
    out = Path(out or f"runs/finetune/{arch}{'_probe' if linear_probe else ''}")
    res = run_finetune(cfg, fdata, backbone, out, resume=resume, console=console,
                       backbone_kwargs=backbone_kwargs)

    from rich.table import Table

    table = Table(title=f"{'linear probe' if linear_probe else 'finetune'} {arch} "
                        f"({'pretrained' if checkpoint else 'random init'})")
    for col in ("train videos", "test videos", "epochs", "steps", "clip top-1", "video top-1"):
        table.add_column(col, justify="right")
    table.add_row(str(len(fdata.train)), str(len(fdata.test)), str(res["epochs"]),
                  str(res["step"]), f"{res['clip_acc']:.4f}", f"{res['video_acc']:.4f}")
    Console().print(table)
    console.print(f"checkpoint: {res['checkpoint']}\nresults: {res['results']}")
