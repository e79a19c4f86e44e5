"""`dalivssl cka`: layer x layer minibatch linear CKA map between one or two checkpoints.

Writes ``<out>/cka.h5`` (group ``cka``: ``map``, ``layers_a``, ``layers_b``, ``checkpoints``),
``<out>/cka.png`` (heatmap) and ``<out>/cka.csv``. Torch, DALI and matplotlib load only when the
command runs.
"""
from __future__ import annotations

from pathlib import Path

import click

from dalivssl.cli.options import clip_options, run_options
from dalivssl.errors import DalivsslError


def _split_layers(text: str | None):
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


@click.command("cka")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(dir_okay=False),
              help="Checkpoint A; give it twice (A then B) to compare two models. "
                   "With one, the map is the model against itself.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Manifest (JSONL). Default: the embedded synthetic test split.")
@click.option("--layers", default=None, help="Comma-separated layer names of A (default: "
              "the backbone's cka_layers); also used for B unless --layers-b is given.")
@click.option("--layers-b", default=None, help="Comma-separated layer names of B.")
@click.option("--batches", type=int, default=None, help="Use at most N batches (default: all).")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Examples per minibatch (>= 4; HSIC_1 needs it).")
@clip_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output dir (default runs/cka/<A>_vs_<B>).")
@run_options
def cka(checkpoints, data, layers, layers_b, batches, batch_size, clip_len, size, normalize, out,
        name, device, threads, seed, resume, overwrite, no_progress):
    """Minibatch linear CKA map (Nguyen et al. ICLR 2021; unbiased HSIC_1, float64) between the
    layers of checkpoint A and checkpoint B on the same centre clips. Each model is fed as its
    run record says (clip length, size and its own normalisation), so cka(A,B) = cka(B,A)ᵀ.
    Activations are flattened per clip, not pooled."""
    if len(checkpoints) > 2:
        raise DalivsslError(f"--checkpoint takes one or two files, got {len(checkpoints)}")
    if batch_size < 4:
        raise DalivsslError(f"--batch-size must be >= 4 (HSIC_1 needs 4 examples), got "
                            f"{batch_size}")
    import torch

    from dalivssl import record as rec
    from dalivssl.analysis.cka import cka_map, feed_normalized, plot_cka_map
    from dalivssl.engine.features import eval_loader, normalized_batches
    from dalivssl.console import stderr_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.engine.checkpoint import load_backbone
    from dalivssl.results import ResultsFile

    from dalivssl.devices import announce as resolve_device

    dev = resolve_device(device)
    device, seed, threads = dev.name, seed or 0, threads or 2
    torch.set_num_threads(threads)
    tdev = torch.device(dev.torch)
    loaded = [load_backbone(p, device=tdev) for p in checkpoints]
    records = [rec.record_of(ck, p) for (_, ck), p in zip(loaded, checkpoints)]
    say = lambda s: stderr_console().print(s, highlight=False)  # noqa: E731
    over = dict(clip_len=clip_len, size=size, normalize=normalize)
    clips = [rec.resolve_clip(r, over, say=say) for r in records]
    if len({(c.clip_len, c.size) for c in clips}) > 1:
        a, b = clips
        raise DalivsslError(f"{records[0].name} was trained on {a.clip_len}×{a.size}² clips and "
                            f"{records[1].name} on {b.clip_len}×{b.size}²; CKA needs the same "
                            "clips for both: pass --clip-len/--size")
    names = [r.name for r in records]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{n} ({Path(p).parent.name}/{Path(p).name})" for n, p in zip(names, checkpoints)]
    name = name or (f"{names[0]}_vs_{names[1]}" if len(names) == 2 else f"{names[0]}_self")
    out = Path(out or Path("runs/cka") / name.replace("/", "_").replace(" ", "_"))
    lock = rec.open_run_dir(out, "cka.h5", resume, overwrite)
    try:
        model_a = loaded[0][0]
        model_b = loaded[1][0] if len(loaded) == 2 else None
        # each model sees its own normalisation of the same [0,1] clips
        for model, c in zip([model_a, model_b], clips):
            if model is not None:
                feed_normalized(model, c.normalize)
        manifest_path, manifest = resolve_manifest(data)
        c = clips[0]
        loader = eval_loader(manifest, 1, batch_size, c.clip_len, c.size, device=device,
                             seed=seed, raw=True, num_threads=threads, where=str(manifest_path))
        total = len(loader) if batches is None else min(batches, len(loader))
        from dalivssl.engine.fit import Reporter

        rep = Reporter("CKA batches", total, enabled=not no_progress)
        try:
            res = cka_map(model_a, model_b, normalized_batches(loader, "unit", tdev),
                          layers_a=_split_layers(layers),
                          layers_b=_split_layers(layers_b) or _split_layers(layers),
                          batches=batches, device=device, progress=rep.update)
        finally:
            rep.close()
        record = rec.new_record(
            "cka", name, data_path=manifest_path, manifest=manifest, device=device,
            parents=checkpoints, arch=records[0].arch, clip=clips[0], seed=seed, settings=dict(batch_size=batch_size, batches=batches, models=names,
                          normalize=[c.normalize for c in clips]), status="complete")
        _write(out, res, record, names, records, checkpoints)
        rec.write_run_record(out, record)
    finally:
        lock.release()
    click.echo(f"CKA map {res.map.shape[0]}x{res.map.shape[1]} over {res.n_examples} clips "
               f"({res.n_batches} batches) -> {out / 'cka.h5'}, {out / 'cka.png'}")


def _write(out: Path, res, record, names, records, checkpoints) -> None:
    from dalivssl.analysis.cka import plot_cka_map
    from dalivssl.results import ResultsFile

    cks = [str(Path(p).resolve()) for p in checkpoints]
    cks = cks + cks[:1] if len(cks) == 1 else cks
    arch_b = records[-1].arch
    with ResultsFile(out / "cka.h5", "w") as rf:
        rf.set_meta(command="cka", record=record.to_dict(), checkpoint_a=cks[0],
                    checkpoint_b=cks[1], arch_a=records[0].arch, arch_b=arch_b,
                    data=record.data or "synthetic", config=record.settings)
        rf.write("cka", "map", res.map, kernel="linear", estimator="minibatch unbiased HSIC_1",
                 features="flatten", n_examples=res.n_examples, n_batches=res.n_batches,
                 skipped_batches=res.skipped_batches, self_map=len(checkpoints) == 1)
        rf.write("cka", "layers_a", res.layers_a)
        rf.write("cka", "layers_b", res.layers_b)
        rf.write("cka", "feature_dims_a", res.feature_dims_a)
        rf.write("cka", "feature_dims_b", res.feature_dims_b)
        rf.write("cka", "checkpoints", cks)
        rf.write("cka", "names", [names[0], names[-1]])
    with open(out / "cka.csv", "w") as f:
        f.write("layer_a," + ",".join(res.layers_b) + "\n")
        for layer, row in zip(res.layers_a, res.map):
            f.write(layer + "," + ",".join(f"{v:.6f}" for v in row) + "\n")
    plot_cka_map(res, out / "cka.png", f"A: {names[0]} ({records[0].arch})",
                 f"B: {names[-1]} ({arch_b})", title=f"CKA {record.describe()}")
