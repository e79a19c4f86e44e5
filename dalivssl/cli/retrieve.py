"""`dalivssl retrieve`: nearest-neighbour video retrieval, top-k (VCOP protocol)."""
from __future__ import annotations

import click

from dalivssl.cli.options import clip_options, config_options, run_options


@click.command("retrieve")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="dalivssl checkpoint whose backbone gives the features.")
@click.option("--random-init", is_flag=True, default=None,
              help="Random backbone (baseline; needs --arch).")
@click.option("--arch", default=None, help="Backbone name; must match the checkpoint's arch.")
@click.option("--train", "train", type=click.Path(dir_okay=False), default=None,
              help="Gallery manifest (default: the synthetic dataset's train split).")
@click.option("--test", "test", type=click.Path(dir_okay=False), default=None,
              help="Query manifest (default: the synthetic dataset's test split).")
@click.option("--clips", type=int, default=None,
              help="Evenly spaced clips per video; their features are averaged (default 10).")
@click.option("--topk", default=None, help="k values (default 1,5,10,20,50).")
@clip_options
@click.option("--batch-size", type=int, default=None, help="Videos per batch (default 4).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir (default runs/retrieve/<name>).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache (default $DALIVSSL_CACHE/features).")
@config_options
@run_options
def retrieve(checkpoint, random_init, arch, train, test, clips, topk, clip_len, size, normalize,
             batch_size, out, cache_dir, config_path, sets, name, device, threads, seed, resume,
             overwrite, no_progress):
    """Test videos query the train set by cosine similarity of clip-averaged features; a hit at k
    when any of the k nearest train videos shares the query's class. Clip settings come from the
    checkpoint's run record. Writes OUT/retrieval.h5, retrieval.csv, retrieval.png, record.json
    and config.yaml; features are cached by content and reused across runs."""
    from dalivssl.config import RetrieveConfig, resolve
    from dalivssl.runs.retrieve import retrieve as run

    flags = dict(checkpoint=checkpoint, random_init=random_init, arch=arch, train=train,
                 test=test, clips=clips, topk=topk, clip_len=clip_len, size=size,
                 normalize=normalize, batch_size=batch_size, out=out, cache_dir=cache_dir,
                 name=name, device=device, threads=threads, seed=seed,
                 progress=False if no_progress else None)
    run(resolve(RetrieveConfig, config_path, flags, sets), resume=resume, overwrite=overwrite)
