"""`dalivssl cka`: layer x layer minibatch linear CKA map between one or two checkpoints.

Writes ``<out>/cka.h5`` (group ``cka``: ``map``, ``layers_a``, ``layers_b``, ``checkpoints``),
``<out>/cka.png`` (heatmap), ``<out>/cka.csv``, record.json and config.yaml. Torch, DALI and
matplotlib load only when the command runs.
"""
from __future__ import annotations

import click

from dalivssl.cli.options import clip_options, config_options, run_options


@click.command("cka")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Checkpoint A; give it twice (A then B) to compare two models. "
                   "With one, the map is the model against itself.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Manifest (JSONL). Default: the embedded synthetic test split.")
@click.option("--layers", default=None, help="Comma-separated layer names of A (default: "
              "the backbone's cka_layers); also used for B unless --layers-b is given.")
@click.option("--layers-b", default=None, help="Comma-separated layer names of B.")
@click.option("--batches", type=int, default=None, help="Use at most N batches (default: all).")
@click.option("--batch-size", type=int, default=None,
              help="Examples per minibatch (>= 4; HSIC_1 needs it; default 16).")
@clip_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir (default runs/cka/<A>_vs_<B>).")
@config_options
@run_options
def cka(checkpoints, data, layers, layers_b, batches, batch_size, clip_len, size, normalize, out,
        config_path, sets, name, device, threads, seed, resume, overwrite, no_progress):
    """Minibatch linear CKA map (Nguyen et al. ICLR 2021; unbiased HSIC_1, float64) between the
    layers of checkpoint A and checkpoint B on the same centre clips. Each model is fed as its
    run record says (clip length, size and its own normalisation), so cka(A,B) = cka(B,A)ᵀ.
    Activations are flattened per clip, not pooled. DALI's threads: --set dali_threads=N."""
    from dalivssl.config import CKAConfig, resolve
    from dalivssl.runs.cka import cka as run

    flags = dict(checkpoints=checkpoints or None, data=data, layers=layers, layers_b=layers_b,
                 batches=batches, batch_size=batch_size, clip_len=clip_len, size=size,
                 normalize=normalize, out=out, name=name, device=device, threads=threads,
                 seed=seed, progress=False if no_progress else None)
    run(resolve(CKAConfig, config_path, flags, sets), resume=resume, overwrite=overwrite)
