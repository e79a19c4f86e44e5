"""The export-logits command as a :class:`~dalivssl.runs.base.RunSpec`: a finetuned checkpoint's
video-level logits (the mean over ``clips`` evenly spaced eval clips, fed with the clip settings of
the checkpoint's record) for every video of a manifest, keyed by video path, for ``distill
--teacher-logits`` (file layout: ``dalivssl.engine.distill``).

Outputs: the HDF5 file ``output`` (its resolved config in the file's meta as well) and beside it
``<stem>.config.yaml``, which replays the export (``dalivssl export-logits --config``). An existing
``output`` is replaced only with ``--overwrite``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dalivssl.config import ExportLogitsConfig, save_yaml, to_dict
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, execute

__all__ = ["SPEC", "export_logits", "config_path"]


def config_path(output) -> Path:
    """The config.yaml written beside ``output``: ``<stem>.config.yaml``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.config.yaml")


def export_logits(cfg: ExportLogitsConfig, overwrite: bool = False) -> dict:
    """Write ``cfg.output``; returns {'shape': (N, C), 'clips', 'output', 'skipped'}. The output
    file and its config are this run's artifact and outputs (the driver locks their dir)."""
    _check(cfg, None)
    out = Path(cfg.output)
    if out.exists() and not overwrite:
        raise DalivsslError(f"{out}: already exists; pass --overwrite to replace it, or another "
                            "-o/--output")
    spec = replace(SPEC, artifact=out.name, outputs=(out.name, config_path(out).name))
    return execute(spec, cfg, out.parent, overwrite=overwrite)


def _check(cfg: ExportLogitsConfig, dev) -> None:
    cfg.check()
    if not Path(cfg.checkpoint).is_file():
        raise DalivsslError(f"{cfg.checkpoint}: checkpoint not found")


def _run(cfg: ExportLogitsConfig, ctx) -> dict:
    from dalivssl import record as rec
    from dalivssl.engine.features import eval_loader
    from dalivssl.console import stderr_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.devices import dali_threads
    from dalivssl.engine.distill import video_logits, write_logits_file
    from dalivssl.engine.finetune import load_classifier

    dev = ctx.device
    cfg = replace(cfg, device=dev.name)
    stderr_console().print(f"device: {dev.reason}", highlight=False)
    data_path, manifest = resolve_manifest(cfg.data, "train")
    model, ck = load_classifier(cfg.checkpoint, device=dev.torch)
    clip = rec.record_of(ck, cfg.checkpoint).clip
    loader = eval_loader(manifest, cfg.clips, cfg.batch_size, clip.clip_len, clip.size,
                         device=dev.name, raw=True, where=str(data_path),
                         num_threads=dali_threads(dev, cfg.dali_threads))
    # manifest order, one row per video (a loader may substitute a repeat for a bad video)
    logits, idx = video_logits(model, loader, clip.normalize, dev.torch)
    write_logits_file(cfg.output, logits, [manifest.records[i].path for i in idx], idx,
                      classes=list(ck.get("classes") or []), num_clips=cfg.clips,
                      clip_len=clip.clip_len, size=clip.size, normalize=clip.normalize,
                      arch=ck["arch"], checkpoint=str(Path(cfg.checkpoint).resolve()),
                      checkpoint_hash=rec.file_hash(cfg.checkpoint), data=str(data_path),
                      data_hash=rec.manifest_hash(manifest), device=cfg.device,
                      meta={"config": to_dict(cfg)})
    save_yaml(cfg, config_path(cfg.output))  # replay: dalivssl export-logits --config …
    return {"shape": tuple(logits.shape), "clips": cfg.clips, "output": Path(cfg.output),
            "skipped": dict(getattr(loader, "skipped", {}) or {})}


SPEC = RunSpec(name="export-logits", config=ExportLogitsConfig, artifact="logits.h5",
               resume_keys=(), outputs=("logits.h5",), run=_run, check=_check,
               resume_flag=False)
