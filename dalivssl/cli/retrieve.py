"""`dalivssl retrieve`: nearest-neighbour video retrieval, top-k (VCOP protocol)."""
from __future__ import annotations

import click

from dalivssl.cli.options import clip_options, run_options


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
@clip_options
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir (default runs/retrieve/<name>).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache (default $DALIVSSL_CACHE/features).")
@run_options
def retrieve(checkpoint, random_init, arch, train, test, clips, topk, clip_len, size, normalize,
             batch_size, out, cache_dir, name, device, threads, seed, resume, overwrite,
             no_progress):
    """Test videos query the train set by cosine similarity of clip-averaged features; a hit at k
    when any of the k nearest train videos shares the query's class. Clip settings come from the
    checkpoint's run record. Writes OUT/retrieval.h5, retrieval.csv, retrieval.png and
    record.json; features are cached by content and reused across runs."""
    from pathlib import Path

    from rich.table import Table

    from dalivssl import record as rec
    from dalivssl.console import stderr_console, stdout_console
    from dalivssl.errors import DalivsslError

    ks = _parse_topk(topk)
    seed, threads = seed or 0, threads or 2
    if bool(checkpoint) == bool(random_init):
        raise DalivsslError("give exactly one of --checkpoint PATH or --random-init --arch NAME")
    if random_init and not arch:
        raise DalivsslError("--random-init needs --arch")
    if clips < 1 or batch_size < 1:
        raise DalivsslError(f"--clips and --batch-size must be >= 1, got {clips}, {batch_size}")
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

    from dalivssl.analysis.retrieval import run_retrieval
    from dalivssl.devices import announce as resolve_device

    torch.set_num_threads(threads)
    console = stderr_console()
    parent = None
    if checkpoint:
        from dalivssl.engine.checkpoint import load_backbone

        backbone, ckpt = load_backbone(checkpoint, arch=arch, device="cpu")
        arch, parent = ckpt["arch"], rec.record_of(ckpt, checkpoint)
    else:
        from models import create_backbone

        torch.manual_seed(seed)
        backbone = create_backbone(arch)
    dev = resolve_device(device)  # after the inputs are known good
    device, tdev = dev.name, dev.torch
    backbone = backbone.to(tdev)
    clip = rec.resolve_clip(parent, dict(clip_len=clip_len, size=size, normalize=normalize),
                            say=lambda s: console.print(s, highlight=False))
    settings = {"num_clips": clips, **clip.as_dict(), "device": device}
    from dalivssl.engine.features import check_input_size

    check_input_size(backbone, clip.clip_len, clip.size, arch)
    if random_init:
        settings["seed"] = seed  # random weights differ per seed: part of the cache key
    name = name or (f"ret_{parent.name}" if parent else f"ret_scratch_{arch}")
    out = Path(out or Path("runs/retrieve") / name)
    lock = rec.open_run_dir(out, "retrieval.h5", resume, overwrite)
    try:
        record = rec.new_record(
            "retrieval", name, data_path=train, manifest=load_manifest(train), device=device,
            parents=[checkpoint], arch=arch, task=parent.task if parent else None, clip=clip,
            seed=seed, settings={**settings, "topk": list(ks), "test": str(Path(test).resolve()),
                      "test_hash": rec.manifest_hash(load_manifest(test))}, status="complete")
        res = run_retrieval(backbone, arch, checkpoint, train, test, settings, ks, out_dir=out,
                            device=tdev, batch_size=batch_size, cache_dir=cache_dir,
                            console=console, record=record, progress=not no_progress)
        rec.write_run_record(out, record)
    finally:
        lock.release()
    r = res["result"]
    table = Table(title=f"retrieval {name} ({arch}): {res['num_test']} queries -> "
                        f"{res['num_train']} train videos, {clips} clips/video")
    table.add_column("k", justify="right")
    table.add_column("top-k acc", justify="right")
    for k in r.ks:
        note = f" (capped at {r.effective[k]})" if r.effective[k] != k else ""
        table.add_row(f"{k}{note}", f"{r.topk[k]:.4f}")
    stdout_console().print(table)
    cached = [n for n, c in res["cached"].items() if c]
    if cached:
        console.print(f"features reused from cache: {', '.join(cached)}")
    console.print(f"results: {res['paths']['h5']}  {res['paths']['csv']}")
