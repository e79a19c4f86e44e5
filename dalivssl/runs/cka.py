"""The cka command as a :class:`~dalivssl.runs.base.RunSpec`: a layer × layer minibatch linear CKA
map (Nguyen et al. ICLR 2021; unbiased HSIC_1, float64) between one or two checkpoints on the same
centre clips, each model fed as its run record says (:mod:`dalivssl.engine.cka`).

Outputs in the run dir: ``cka.h5`` (group ``cka``: ``map``, ``layers_a``, ``layers_b``,
``feature_dims_a/b``, ``checkpoints``, ``names``), ``cka.csv``, ``cka.png`` (heatmap),
``record.json`` and ``config.yaml``. ``--resume`` with other inputs is refused: the stored map is
replaced only with ``--overwrite``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dalivssl.config import CKAConfig, save_yaml
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, execute, result_unchanged

__all__ = ["SPEC", "cka"]

ARTIFACT = "cka.h5"
OUTPUTS = (ARTIFACT, "cka.csv", "cka.png", "record.json", "config.yaml")
# what a --resume must share with the stored map (record fields, then settings)
RESUME_KEYS = ("arch", "data_hash", "parent_hash", "clip", "seed", "batch_size", "batches",
               "models", "normalize", "layers", "layers_b")


def cka(cfg: CKAConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """The CKA map of ``cfg``; returns {'map' (engine.cka.CKAMap), 'record'} ({'metrics'} when
    ``resume`` found the same map done)."""
    cfg, inputs = prepare(cfg)
    return execute(SPEC, cfg, cfg.out, resume=resume, overwrite=overwrite, **inputs)


def distinct_names(names: list[str], checkpoints) -> list[str]:
    """Two equal record names get ``-<tag>``: the last part of their checkpoint paths (suffix
    dropped) that differs, e.g. ``ft_rotnet_squeezenet-ft1`` and ``…-ft2`` for
    ``ft1/checkpoint.pt`` and ``ft2/checkpoint.pt``; one file given twice keeps its name."""
    if len(names) != 2 or names[0] != names[1]:
        return names
    parts = [Path(p).resolve().with_suffix("").parts[::-1] for p in checkpoints]
    for a, b in zip(*parts):
        if a != b:
            return [f"{names[0]}-{a}", f"{names[1]}-{b}"]
    return names


def prepare(cfg: CKAConfig):
    """The inputs, checked and loaded before the run dir is touched: the backbones (on the CPU),
    their records' clip settings (``record.resolve_clip``; both must agree on clip length and
    size), the manifest, the names and the run dir. Returns (cfg resolved, inputs)."""
    import torch

    from dalivssl import record as rec
    from dalivssl.console import stderr_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.engine.checkpoint import load_backbone

    cfg = cfg.check()
    torch.set_num_threads(cfg.threads)
    loaded = [load_backbone(p, device="cpu") for p in cfg.checkpoints]
    records = [rec.record_of(ck, p) for (_, ck), p in zip(loaded, cfg.checkpoints)]
    over = dict(clip_len=cfg.clip_len, size=cfg.size, normalize=cfg.normalize)
    clips = [rec.resolve_clip(r, over, say=lambda s: stderr_console().print(s, highlight=False))
             for r in records]
    if len({(c.clip_len, c.size) for c in clips}) > 1:
        a, b = clips
        raise DalivsslError(f"{records[0].name} was trained on {a.clip_len}×{a.size}² clips and "
                            f"{records[1].name} on {b.clip_len}×{b.size}²; CKA needs the same "
                            "clips for both: pass --clip-len/--size")
    names = distinct_names([r.name for r in records], cfg.checkpoints)
    name = cfg.name or (f"{names[0]}_vs_{names[1]}" if len(names) == 2 else f"{names[0]}_self")
    out = cfg.out or str(Path("runs/cka") / re.sub(r"[^\w.-]+", "_", name))
    data, manifest = resolve_manifest(cfg.data)
    cfg = dataclasses.replace(cfg, name=name, out=out, data=str(data),
                              clip_len=clips[0].clip_len, size=clips[0].size)
    return cfg, dict(models=[m for m, _ in loaded], records=records, clips=clips, names=names,
                     manifest=manifest)


def _check(cfg: CKAConfig, dev) -> None:
    if dev.is_gpu:  # the CKA arithmetic runs in CuPy there: say so before the dir is touched
        from dalivssl.engine.arrays import get_xp

        get_xp(dev.torch)


def _run(cfg: CKAConfig, ctx, models, records, clips, names, manifest) -> dict:
    from dalivssl import record as rec
    from dalivssl.console import stderr_console
    from dalivssl.devices import dali_threads
    from dalivssl.engine.cka import cka_map, feed_normalized
    from dalivssl.engine.features import eval_loader, normalized_batches
    from dalivssl.engine.fit import Reporter

    dev = ctx.device
    stderr_console().print(f"device: {dev.reason}", highlight=False)
    cfg = dataclasses.replace(cfg, device=dev.name)
    record = rec.new_record(
        "cka", cfg.name, data_path=cfg.data, manifest=manifest, device=dev.name,
        parents=cfg.checkpoints, arch=records[0].arch, clip=clips[0], seed=cfg.seed,
        settings=dict(batch_size=cfg.batch_size, batches=cfg.batches, models=names,
                      normalize=[c.normalize for c in clips],
                      layers=list(cfg.layers) if cfg.layers else None,
                      layers_b=list(cfg.layers_b) if cfg.layers_b else None), status="complete")
    if result_unchanged(ctx, record, RESUME_KEYS, ARTIFACT):
        return {"metrics": _metrics(ctx.run_dir), "record": record}
    for model, c in zip(models, clips):  # each model sees its own normalisation of [0,1] clips
        feed_normalized(model, c.normalize)
    loader = eval_loader(manifest, 1, cfg.batch_size, cfg.clip_len, cfg.size, device=dev.name,
                         seed=cfg.seed, raw=True, num_threads=dali_threads(dev, cfg.dali_threads),
                         where=str(cfg.data))
    total = len(loader) if cfg.batches is None else min(cfg.batches, len(loader))
    rep = Reporter("CKA batches", total, enabled=cfg.progress)
    try:
        res = cka_map(models[0], models[1] if len(models) == 2 else None,
                      normalized_batches(loader, "unit", dev.torch), layers_a=cfg.layers,
                      layers_b=cfg.layers_b or cfg.layers, batches=cfg.batches,
                      device=dev.torch, progress=rep.update)
    finally:
        rep.close()
    if ctx.dist.is_main:
        write_cka(ctx.run_dir, res, record, names, records, cfg.checkpoints)
        save_yaml(cfg, ctx.run_dir / "config.yaml")  # replay: dalivssl cka --config …
        rec.write_run_record(ctx.run_dir, record)
        print(f"CKA map {res.map.shape[0]}x{res.map.shape[1]} over {res.n_examples} clips "
              f"({res.n_batches} batches) -> {ctx.run_dir / ARTIFACT}, "
              f"{ctx.run_dir / 'cka.png'}")
    return {"map": res, "record": record}


def write_cka(out: Path, res, record, names, records, checkpoints) -> None:
    """cka.h5 (the map, its layers and feature sizes, the checkpoints and their names; the record
    and settings in the meta), cka.csv (the map, one row per layer of A) and cka.png."""
    from dalivssl.plots import plot_cka_map
    from dalivssl.results import ResultsFile

    cks = [str(Path(p).resolve()) for p in checkpoints]
    cks = cks + cks[:1] if len(cks) == 1 else cks
    arch_b = records[-1].arch
    with ResultsFile(out / ARTIFACT, "w") as rf:
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


def _metrics(run_dir) -> list[dict]:
    """What the study reads: cka_last (last layers), cka_mean and, when A and B share their
    layers, cka_diag (mean of the diagonal) from cka.h5."""
    import numpy as np

    from dalivssl.results import ResultsFile

    with ResultsFile(Path(run_dir) / ARTIFACT, "r") as f:
        m = np.asarray(f.read("cka", "map"), dtype=float)
        same = list(f.read("cka", "layers_a")) == list(f.read("cka", "layers_b"))
    rows = [{"metric": "cka_last", "value": float(m[-1, -1])},
            {"metric": "cka_mean", "value": float(np.nanmean(m))}]
    return rows + ([{"metric": "cka_diag", "value": float(np.nanmean(np.diag(m)))}]
                   if same else [])


SPEC = RunSpec(name="cka", config=CKAConfig, artifact=ARTIFACT, resume_keys=RESUME_KEYS,
               outputs=OUTPUTS, run=_run, metrics=_metrics, check=_check)
