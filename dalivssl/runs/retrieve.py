"""The retrieve command as a :class:`~dalivssl.runs.base.RunSpec`: nearest-neighbour video
retrieval (VCOP protocol: Xu et al., CVPR 2019, ``retrieve_clips.py``; used by Kumar et al., arXiv
2306.06010), computed by :mod:`dalivssl.engine.retrieval` with features cached by content.

Outputs in the run dir: ``retrieval.h5`` (/retrieval: k, effective_k, topk, ranking, hits,
query_index, gallery_index), ``retrieval.csv``, ``retrieval.png``, ``record.json`` and
``config.yaml`` (replayable with ``--config``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dalivssl.config import RetrieveConfig, save_yaml
from dalivssl.runs.base import RunSpec, execute, result_unchanged

__all__ = ["SPEC", "retrieve", "write_retrieval"]

ARTIFACT = "retrieval.h5"
OUTPUTS = (ARTIFACT, "retrieval.csv", "retrieval.png", "record.json", "config.yaml")
# what a --resume must share with the stored result (record fields, then settings)
RESUME_KEYS = ("arch", "data_hash", "parent_hash", "clip", "seed", "num_clips", "topk",
               "test_hash")


def retrieve(cfg: RetrieveConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the retrieval of ``cfg``; returns {'result', 'cached', 'paths', 'num_train',
    'num_test', 'name'} ({'metrics'} when ``resume`` found the same result done)."""
    cfg, inputs = prepare(cfg)
    return execute(SPEC, cfg, cfg.out, resume=resume, overwrite=overwrite, **inputs)


def prepare(cfg: RetrieveConfig):
    """The inputs, checked and loaded before the run dir is touched: the manifests (the embedded
    dataset's when none), the backbone (on the CPU), its record's clip settings
    (``record.resolve_clip``), the name and the run dir. Returns (cfg resolved, inputs)."""
    import torch

    from dalivssl import record as rec
    from dalivssl.console import stderr_console
    from dalivssl.data.manifest import load_manifest, overlap_warning
    from dalivssl.engine.features import check_input_size

    cfg = cfg.check()
    train, test = cfg.train, cfg.test
    if train is None:
        from dalivssl.data.synth import ensure_default_dataset

        paths = ensure_default_dataset()
        train, test = str(paths["train"]), str(paths["test"])
    manifests = {"train": load_manifest(train), "test": load_manifest(test)}  # before weights
    warn = overlap_warning(manifests["train"], manifests["test"], train, test,
                           "retrieval accuracy (a query finds itself)")
    if warn:
        stderr_console().print(f"[yellow]{warn}[/yellow]", highlight=False)
    torch.set_num_threads(cfg.threads)
    parent = None
    if cfg.checkpoint:
        from dalivssl.engine.checkpoint import load_backbone

        backbone, ckpt = load_backbone(cfg.checkpoint, arch=cfg.arch, device="cpu")
        arch, parent = ckpt["arch"], rec.record_of(ckpt, cfg.checkpoint)
    else:
        from models import create_backbone

        torch.manual_seed(cfg.seed)
        backbone, arch = create_backbone(cfg.arch), cfg.arch
    clip = rec.resolve_clip(parent, dict(clip_len=cfg.clip_len, size=cfg.size,
                                         normalize=cfg.normalize),
                            say=lambda s: stderr_console().print(s, highlight=False))
    check_input_size(backbone, clip.clip_len, clip.size, arch)
    name = cfg.name or (f"ret_{parent.name}" if parent else f"ret_scratch_{arch}")
    cfg = dataclasses.replace(cfg, arch=arch, train=str(train), test=str(test), name=name,
                              out=str(cfg.out or Path("runs/retrieve") / name), **clip.as_dict())
    return cfg, dict(backbone=backbone, parent=parent, manifests=manifests)


def _run(cfg: RetrieveConfig, ctx, backbone, parent, manifests) -> dict:
    from dalivssl import record as rec
    from dalivssl.console import stderr_console
    from dalivssl.engine.retrieval import run_retrieval

    dev, console = ctx.device, stderr_console()
    console.print(f"device: {dev.reason}", highlight=False)
    cfg = dataclasses.replace(cfg, device=dev.name)
    clip = rec.ClipSettings(cfg.clip_len, cfg.size, cfg.normalize)
    settings = {"num_clips": cfg.clips, **clip.as_dict(), "device": dev.name}
    if cfg.random_init:
        settings["seed"] = cfg.seed  # random weights differ per seed: part of the cache key
    record = rec.new_record(
        "retrieval", cfg.name, data_path=cfg.train, manifest=manifests["train"], device=dev.name,
        parents=[cfg.checkpoint], arch=cfg.arch, task=parent.task if parent else None, clip=clip,
        seed=cfg.seed, settings={**settings, "topk": list(cfg.topk),
                                 "test": str(Path(cfg.test).resolve()),
                                 "test_hash": rec.manifest_hash(manifests["test"])},
        status="complete")
    if result_unchanged(ctx, record, RESUME_KEYS, ARTIFACT):
        return {"metrics": _metrics(ctx.run_dir), "name": cfg.name}
    res = run_retrieval(backbone.to(dev.torch), cfg.arch, cfg.checkpoint, cfg.train, cfg.test,
                        settings, cfg.topk, device=dev.torch, batch_size=cfg.batch_size,
                        cache_dir=cfg.cache_dir, console=console, record=record,
                        progress=cfg.progress)
    res["paths"] = {}
    if ctx.dist.is_main:
        res["paths"] = write_retrieval(ctx.run_dir, res["result"], res["features"], cfg.arch,
                                       cfg.checkpoint, cfg.train, cfg.test, settings, record)
        save_yaml(cfg, ctx.run_dir / "config.yaml")  # replay: dalivssl retrieve --config …
        rec.write_run_record(ctx.run_dir, record)
        _print(cfg, res)
    return {**res, "name": cfg.name}


def write_retrieval(out_dir: Path, r, feats: dict, arch, checkpoint, train_path, test_path,
                    settings, record=None) -> dict:
    """HDF5 (C8) /retrieval: ks, topk, effective_k, ranking, hits; CSV of the top-k table; PNG of
    the top-k curve titled with the run's name, data and settings."""
    import csv

    from dalivssl.plots import plot_topk
    from dalivssl.record import versions
    from dalivssl.results import ResultsFile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5 = out_dir / ARTIFACT
    with ResultsFile(h5, "w") as rf:
        rf.set_meta(kind="retrieval", arch=arch, checkpoint=str(checkpoint or "random"),
                    train_manifest=str(train_path), test_manifest=str(test_path),
                    settings=settings, versions=versions(),
                    **({"record": record.to_dict()} if record is not None else {}))
        rf.write("retrieval", "k", np.array(r.ks, np.int64))
        rf.write("retrieval", "effective_k", np.array([r.effective[k] for k in r.ks], np.int64))
        rf.write("retrieval", "topk", np.array([r.topk[k] for k in r.ks], np.float64))
        rf.write("retrieval", "ranking", r.ranking, note="train positions, nearest first")
        rf.write("retrieval", "hits", r.hits)
        rf.write("retrieval", "query_index", feats["test"].indices)
        rf.write("retrieval", "gallery_index", feats["train"].indices)
    csv_path = out_dir / "retrieval.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "effective_k", "accuracy"])
        for k in r.ks:
            w.writerow([k, r.effective[k], f"{r.topk[k]:.6f}"])
    what = record.describe() if record is not None else f"{arch}"
    png = plot_topk(out_dir / "retrieval.png", r.ks, [r.topk[k] for k in r.ks],
                    f"retrieval {what}\n{len(feats['test'])} queries → {len(feats['train'])} "
                    f"videos, {settings['num_clips']} clips/video")
    return {"h5": h5, "csv": csv_path, "png": png}


def _print(cfg: RetrieveConfig, res: dict) -> None:
    from rich.table import Table

    from dalivssl.console import stderr_console, stdout_console

    r = res["result"]
    table = Table(title=f"retrieval {cfg.name} ({cfg.arch}): {res['num_test']} queries -> "
                        f"{res['num_train']} train videos, {cfg.clips} clips/video")
    table.add_column("k", justify="right")
    table.add_column("top-k acc", justify="right")
    for k in r.ks:
        note = f" (capped at {r.effective[k]})" if r.effective[k] != k else ""
        table.add_row(f"{k}{note}", f"{r.topk[k]:.4f}")
    stdout_console().print(table)
    cached = [n for n, c in res["cached"].items() if c]
    if cached:
        stderr_console().print(f"features reused from cache: {', '.join(cached)}")
    stderr_console().print(f"results: {res['paths']['h5']}  {res['paths']['csv']}")


def _metrics(run_dir) -> list[dict]:
    """What the study reads: [{metric 'top<k>', value}] from retrieval.h5."""
    from dalivssl.results import ResultsFile

    with ResultsFile(Path(run_dir) / ARTIFACT, "r") as f:
        return [{"metric": f"top{int(k)}", "value": float(v)} for k, v in
                zip(f.read("retrieval", "k"), f.read("retrieval", "topk"))]


SPEC = RunSpec(name="retrieve", config=RetrieveConfig, artifact=ARTIFACT,
               resume_keys=RESUME_KEYS, outputs=OUTPUTS, run=_run, metrics=_metrics)
