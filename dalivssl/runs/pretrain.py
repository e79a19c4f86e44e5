"""The pretrain command as a :class:`~dalivssl.runs.base.RunSpec`: build the pretext run from a
:class:`~dalivssl.config.PretrainConfig` (``engine.trainer``: loader, backbone, head, optimiser)
and train it with the one loop, ``engine.fit.fit``.

Outputs in the run dir: ``checkpoint.pt`` (the run record inside), ``config.yaml`` (resolved;
replayable with ``--config``), ``record.json``, ``log.csv``, ``tb/`` and ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import json

from dalivssl.config import PretrainConfig, save_yaml, to_dict
from dalivssl.engine.trainer import RESUME_KEYS
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, already_done, execute, extend_schedule

__all__ = ["SPEC", "pretrain"]

OUTPUTS = ("checkpoint.pt", "config.yaml", "record.json", "log.csv", "tb", "summary.json")


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) a pretraining job; returns the summary dict (also in summary.json)."""
    return execute(SPEC, cfg, cfg.run_dir, resume=resume, overwrite=overwrite)


def _check(cfg: PretrainConfig, dev) -> None:
    from dalivssl.engine.features import check_arch
    from dalivssl.tasks import get_task

    get_task(cfg.task)
    check_arch(cfg.arch)
    if cfg.batch_size < 2:
        raise DalivsslError(f"batch_size must be >= 2 (BatchNorm, contrastive negatives), got "
                            f"{cfg.batch_size}")
    cfg.check()  # the CLI checked already; the Python API gets the same one-line errors


def _stored(cfg: PretrainConfig, ctx):
    """The checkpoint to resume, or None; the cheap, common mistakes fail before building."""
    from dalivssl.engine import checkpoint as ck

    path = ctx.run_dir / ck.CKPT_NAME
    if not (ctx.resume and path.is_file()):
        return None
    ckpt = ck.load_checkpoint(path)
    if ckpt.get("kind") != "pretrain":
        raise DalivsslError(f"{path}: a {ckpt.get('kind')!r} checkpoint cannot be resumed by "
                            "pretrain")
    for key in ("arch", "task"):
        if ckpt.get(key) != getattr(cfg, key):
            raise DalivsslError(f"{path}: checkpoint is for {key} {ckpt.get(key)!r}, not "
                                f"{getattr(cfg, key)!r}")
    return ckpt


def _run(cfg: PretrainConfig, ctx) -> dict:
    import torch

    from dalivssl import record as rec
    from dalivssl.engine import checkpoint as ck
    from dalivssl.engine import distributed
    from dalivssl.engine.fit import (FitConfig, fit, keep_steps, loss_summary, restore,
                                     seed_all)
    from dalivssl.engine.trainer import _build, _summary_table, run_record
    from dalivssl.tasks import get_task

    dev, dist, run_dir = ctx.device, ctx.dist, ctx.run_dir
    cfg = dataclasses.replace(cfg, device=dev.name)
    task = get_task(cfg.task)
    ckpt = _stored(cfg, ctx)
    torch.set_num_threads(max(1, cfg.threads))
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # on GPU some kernels (e.g. 3D pooling backward) have no deterministic version: warn there
        torch.use_deterministic_algorithms(True, warn_only=cfg.device == "gpu")
        torch.backends.cudnn.benchmark = False
    elif cfg.device == "gpu":
        torch.backends.cudnn.benchmark = True
    loader, model, optimizer, scheduler, resolved, opt, total_steps, opts = _build(cfg, task,
                                                                                  dist)
    record = run_record(resolved, loader, device_info=dev.record())
    seed_all(cfg.seed + 1000 * dist.rank)  # per-rank streams for dropout, mixup, speed split
    step, notes = 0, []
    if ckpt is not None:
        old = rec.record_of(ckpt)
        notes = rec.check_resumable(old, record, RESUME_KEYS, run_dir / ck.CKPT_NAME)
        done = already_done(ctx, old, int(ckpt.get("step", 0)), total_steps, "pretraining")
        if done is not None:
            return done
        step = restore(ckpt, model, optimizer, scheduler, loader, dist.rank)
        stretched = extend_schedule(scheduler, step, total_steps)
        notes += [stretched] if stretched else []
    if dist.is_main:
        save_yaml(resolved, run_dir / "config.yaml")
        rec.write_run_record(run_dir, record)
        from dalivssl.console import stderr_console

        con = stderr_console()
        con.print(f"device: {dev.reason}", highlight=False)
        note = (f"resuming {run_dir / ck.CKPT_NAME} at step {step}" if ckpt is not None else
                f"no checkpoint in {run_dir}: starting from step 0" if ctx.resume else
                f"run dir {run_dir}")
        con.print(f"{note}; {record.describe()}; {total_steps} steps, {len(loader)} "
                  f"batches/epoch, lr {opt['lr']:.3g}", highlight=False)
        for n in notes:
            con.print(f"resume: {n}", highlight=False)
        if opts["demo"]:
            from dalivssl.engine.explain import demo_note

            con.print(f"[yellow]{demo_note(opts['demo'])}[/yellow]")

    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if task.SPEC.get("sync_bn"):  # BN statistics over the global batch, as the original
            from dalivssl.engine.syncbn import convert_sync_batchnorm

            convert_sync_batchnorm(model)
        net = DDP(model, device_ids=[dist.gpu_index] if cfg.device == "gpu" else None)

    def fields(final: bool) -> dict:
        return dict(kind="pretrain", arch=cfg.arch, task=cfg.task,
                    record=record.marked(final).to_dict(),
                    backbone=model.backbone.state_dict(), head=model.head.state_dict(),
                    backbone_kwargs=opts["backbone"], config=to_dict(resolved),
                    clip_len=resolved.clip_len, size=resolved.size,
                    normalize=record.clip.normalize)

    def stage(epoch: int) -> dict:
        """A kept stage: the weights after ``epoch``, with its own complete record."""
        staged = record.replace(name=f"{record.name}@{epoch}",
                                settings={**record.settings, "stage": epoch})
        return {**fields(True), "record": staged.marked(True).to_dict(), "stage": epoch}

    clips_per_step = cfg.batch_size * loader.sampler.num_clips * dist.world
    fcfg = FitConfig(total_steps=total_steps, label=f"{cfg.task}/{cfg.arch}", amp=cfg.amp,
                     grad_clip=opt["grad_clip"], log_every=cfg.log_every,
                     ckpt_every=cfg.ckpt_every, tensorboard=cfg.tensorboard,
                     progress=cfg.progress, items_per_step=clips_per_step,
                     keep=keep_steps(cfg.keep_epochs, len(loader)))
    res = fit(model, loader, optimizer, scheduler, fcfg, run_dir, fields, net=net, dist=dist,
              device=torch.device(dist.device), start_step=step, stage_fields=stage,
              start_losses=(ckpt or {}).get("losses"))
    first, last = loss_summary(res.losses)
    summary = {
        "name": record.name, "task": cfg.task, "arch": cfg.arch, "steps": res.step,
        "epochs": res.step / max(1, len(loader)), "first_loss": first, "final_loss": last,
        "wall_s": res.wall_s, "clips_per_s": res.items_per_s, "data_wait": res.data_wait,
        "metrics": res.metrics, "checkpoint": str(run_dir / ck.CKPT_NAME),
        "world_size": dist.world, "skipped": loader.skipped, "short_videos": loader.short,
    }
    # every rank's weights must agree after DDP; record a checksum per rank
    checksum = float(sum(p.detach().double().sum() for p in model.backbone.parameters()))
    summary["rank_checksums"] = distributed.all_gather_object(checksum)
    if dist.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        rec.write_run_record(run_dir, record.marked(True))
        _summary_table(summary)
        if loader.short:  # review t3 #16: not only in summary.json
            from dalivssl.console import stderr_console

            stderr_console().print(
                f"warning: {loader.short} of {len(loader.records)} videos are shorter than a "
                f"{cfg.clip_len}-frame clip's span, so their clips repeat frames (looped or "
                "padded); lower --clip-len or use longer videos", highlight=False, soft_wrap=True)
    return summary


def _metrics(run_dir) -> list[dict]:
    """What the study reads of a pretraining: [{metric, value}] of its summary.json, the final
    loss and the task's own metrics (``pretext_<name>``)."""
    from pathlib import Path

    s = json.loads((Path(run_dir) / "summary.json").read_text())
    return [{"metric": "final_loss", "value": s.get("final_loss")}] + [
        {"metric": f"pretext_{k}", "value": v} for k, v in (s.get("metrics") or {}).items()]


SPEC = RunSpec(name="pretrain", config=PretrainConfig, artifact="checkpoint.pt",
               resume_keys=RESUME_KEYS, outputs=OUTPUTS, run=_run, metrics=_metrics, check=_check)
