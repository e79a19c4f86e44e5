"""`dalivssl retrieve`: nearest-neighbour video retrieval, top-k (VCOP protocol)."""
from __future__ import annotations

import click

DEFAULT_CLIP_LEN = 16
DEFAULT_SIZE = 64


def _parse_topk(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise click.BadParameter(f"top-k values must be >= 1, got {value!r}")
    return ks


@click.command("retrieve")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="dalivssl checkpoint whose backbone gives the features.")
@click.option("--random-init", is_flag=True, help="Random backbone (baseline; needs --arch).")
@click.option("--arch", default=None, help="Backbone name; must match the checkpoint's arch.")
@click.option("--train", "train", type=click.Path(dir_okay=False), default=None,
              help="Gallery manifest (default: the synthetic dataset's train split).")
@click.option("--test", "test", type=click.Path(dir_okay=False), default=None,
              help="Query manifest (default: the synthetic dataset's test split).")
@click.option("--clips", type=int, default=10, show_default=True,
              help="Evenly spaced clips per video; their features are averaged.")
@click.option("--topk", default="1,5,10,20,50", show_default=True, help="k values.")
@click.option("--clip-len", type=int, default=None,
              help=f"Frames per clip (default: the checkpoint's, else {DEFAULT_CLIP_LEN}).")
@click.option("--size", type=int, default=None,
              help=f"Crop size in px (default: the checkpoint's, else {DEFAULT_SIZE}).")
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default=None,
              help="Input normalisation (default: the checkpoint's task's, else imagenet).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir (default runs/retrieve/<arch>).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache (default $DALIVSSL_CACHE/features).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random-init.")
def retrieve(checkpoint, random_init, arch, train, test, clips, topk, clip_len, size, normalize,
             batch_size, out, cache_dir, device, seed):
    """Test videos query the train set by cosine similarity of clip-averaged features; a hit at k
    when any of the k nearest train videos shares the query's class. Writes OUT/retrieval.h5 and
    OUT/retrieval.csv; features are cached and reused across runs."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from dalivssl.console import stderr_console
    from dalivssl.errors import DalivsslError

    ks = _parse_topk(topk)
    if bool(checkpoint) == bool(random_init):
        raise DalivsslError("give exactly one of --checkpoint PATH or --random-init --arch NAME")
    if random_init and not arch:
        raise DalivsslError("--random-init needs --arch")
    if clips < 1:
        raise DalivsslError(f"--clips must be >= 1, got {clips}")
    if (train is None) != (test is None):
        raise DalivsslError("give both --train and --test, or neither (synthetic dataset)")
    if train is None:
        from dalivssl.data.synth import ensure_default_dataset

        paths = ensure_default_dataset()
        train, test = str(paths["train"]), str(paths["test"])
    from dalivssl.data.manifest import load_manifest

    for p in (train, test):  # fail on a bad manifest before loading any weights
        load_manifest(p)

    import torch

    from dalivssl.analysis.features import torch_device
    from dalivssl.analysis.finetune import pretrain_normalize
    from dalivssl.analysis.retrieval import run_retrieval

    tdev = torch_device(device)
    ckpt = {}
    if checkpoint:
        from dalivssl.engine.checkpoint import load_backbone

        backbone, ckpt = load_backbone(checkpoint, arch=arch, device=tdev)
        arch = ckpt["arch"]
    else:
        from models import create_backbone

        torch.manual_seed(seed)
        backbone = create_backbone(arch).to(tdev)
    pre_cfg = ckpt.get("config") or {}
    settings = {
        "num_clips": clips,
        "clip_len": int(clip_len or ckpt.get("clip_len") or pre_cfg.get("clip_len")
                        or DEFAULT_CLIP_LEN),
        "size": int(size or ckpt.get("size") or pre_cfg.get("size") or DEFAULT_SIZE),
        "normalize": normalize or (pretrain_normalize(ckpt) if ckpt else None) or "imagenet",
    }
    from dalivssl.analysis.features import check_input_size

    check_input_size(backbone, settings["clip_len"], settings["size"], arch)
    if random_init:
        settings["seed"] = seed  # random weights differ per seed: part of the cache key
    console = stderr_console()
    res = run_retrieval(backbone, arch, checkpoint, train, test, settings, ks,
                        out_dir=Path(out or f"runs/retrieve/{arch}"), device=tdev,
                        batch_size=batch_size, cache_dir=cache_dir, console=console)
    r = res["result"]
    table = Table(title=f"retrieval {arch}: {res['num_test']} queries -> "
                        f"{res['num_train']} train videos, {clips} clips/video")
    table.add_column("k", justify="right")
    table.add_column("top-k acc", justify="right")
    for k in r.ks:
        note = f" (capped at {r.effective[k]})" if r.effective[k] != k else ""
        table.add_row(f"{k}{note}", f"{r.topk[k]:.4f}")
    Console().print(table)
    cached = [n for n, c in res["cached"].items() if c]
    if cached:
        console.print(f"features reused from cache: {', '.join(cached)}")
    console.print(f"results: {res['paths']['h5']}  {res['paths']['csv']}")
