"""`dalivssl cka`: layer x layer minibatch linear CKA map between one or two checkpoints.

Writes ``<out>/cka.h5`` (group ``cka``: ``map``, ``layers_a``, ``layers_b``, ``checkpoints``),
``<out>/cka.png`` (heatmap) and ``<out>/cka.csv``. Torch, DALI and matplotlib load only when the
command runs.
"""
from __future__ import annotations

from pathlib import Path

import click

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
@click.option("--clip-len", type=int, default=None, help="Frames per clip (default: the "
              "checkpoint's, else 16).")
@click.option("--size", type=int, default=None, help="Crop size (default: the checkpoint's, "
              "else 112).")
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default=None,
              help="Input normalisation (default: the checkpoint's, else imagenet).")
@click.option("--out", type=click.Path(file_okay=False), default="runs/cka", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: DALI mixed decoder, models on CUDA, CKA in CuPy.")
@click.option("--seed", type=int, default=0, show_default=True)
def cka(checkpoints, data, layers, layers_b, batches, batch_size, clip_len, size, normalize, out,
        device, seed):
    """Minibatch linear CKA map (Nguyen et al. ICLR 2021; unbiased HSIC_1, float64) between the
    layers of checkpoint A and checkpoint B on the same centre clips. Activations are flattened
    per clip, not pooled."""
    if len(checkpoints) > 2:
        raise DalivsslError(f"--checkpoint takes one or two files, got {len(checkpoints)}")
    if batch_size < 4:
        raise DalivsslError(f"--batch-size must be >= 4 (HSIC_1 needs 4 examples), got "
                            f"{batch_size}")
    import torch
    from rich.progress import Progress

    from dalivssl.analysis.cka import cka_map, plot_cka_map
    from dalivssl.analysis.features import eval_loader, normalized_batches, torch_device
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.engine.checkpoint import load_backbone
    from dalivssl.results import ResultsFile

    tdev = torch.device(torch_device(device))
    loaded = [load_backbone(p, device=tdev) for p in checkpoints]
    (model_a, ck_a) = loaded[0]
    model_b, ck_b = loaded[1] if len(loaded) == 2 else (None, ck_a)
    clip_len = clip_len or int(ck_a.get("clip_len") or 16)
    size = size or int(ck_a.get("size") or 112)
    normalize = normalize or ck_a.get("normalize") or "imagenet"
    manifest_path, manifest = resolve_manifest(data)
    loader = eval_loader(manifest, 1, batch_size, clip_len, size, device=device, seed=seed,
                         raw=True, where=str(manifest_path))
    total = len(loader) if batches is None else min(batches, len(loader))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(transient=True) as prog:
        task = prog.add_task("CKA batches", total=total)
        res = cka_map(model_a, model_b, normalized_batches(loader, normalize, tdev),
                      layers_a=_split_layers(layers),
                      layers_b=_split_layers(layers_b) or _split_layers(layers),
                      batches=batches, device=device,
                      progress=lambda i: prog.update(task, completed=i))
    names = [Path(p).stem for p in checkpoints] + [Path(checkpoints[0]).stem]
    cks = [str(Path(p).resolve()) for p in checkpoints]
    with ResultsFile(out / "cka.h5", "w") as rf:
        rf.set_meta(command="cka", checkpoint_a=cks[0], checkpoint_b=cks[-1],
                    arch_a=ck_a["arch"], arch_b=ck_b["arch"], data=str(manifest_path),
                    config=dict(batch_size=batch_size, batches=batches, clip_len=clip_len,
                                size=size, normalize=normalize, seed=seed, device=device))
        rf.write("cka", "map", res.map, kernel="linear", estimator="minibatch unbiased HSIC_1",
                 features="flatten", n_examples=res.n_examples, n_batches=res.n_batches,
                 skipped_batches=res.skipped_batches, self_map=len(checkpoints) == 1)
        rf.write("cka", "layers_a", res.layers_a)
        rf.write("cka", "layers_b", res.layers_b)
        rf.write("cka", "feature_dims_a", res.feature_dims_a)
        rf.write("cka", "feature_dims_b", res.feature_dims_b)
        rf.write("cka", "checkpoints", [cks[0], cks[-1]])
    with open(out / "cka.csv", "w") as f:
        f.write("layer_a," + ",".join(res.layers_b) + "\n")
        for name, row in zip(res.layers_a, res.map):
            f.write(name + "," + ",".join(f"{v:.6f}" for v in row) + "\n")
    plot_cka_map(res, out / "cka.png", f"A: {names[0]} ({ck_a['arch']})",
                 f"B: {names[1]} ({ck_b['arch']})")
    click.echo(f"CKA map {res.map.shape[0]}x{res.map.shape[1]} over {res.n_examples} clips "
               f"({res.n_batches} batches) -> {out / 'cka.h5'}, {out / 'cka.png'}")
