"""The one driver that runs a command: ``execute(spec, cfg)``.

Layer: models → pipelines → data → tasks → engine → **runs** → study → cli. A run module
imports the engine and the leaves below it; the CLI and the study import runs, never the reverse.

``execute`` alone resolves the device (one ``devices.resolve_device`` call, kept in the context
and recorded by the spec), sets up the process group, opens and locks the run dir, gives
``--overwrite`` a clean dir (the spec's outputs removed before anything new is written) .
``already_done`` lets a spec answer ``--resume`` of a finished run in one line, untouched. The spec's ``run`` builds
the training module, calls ``engine.fit.fit`` and writes its outputs (timm ``timm/task/``: one
trainer, one task object per recipe; solo-learn ``solo/methods/__init__.py``: the linear probe is
one more method on the same trainer).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

__all__ = ["RunSpec", "RunContext", "execute", "clean_outputs", "already_done",
           "result_unchanged", "stored_checkpoint", "extend_schedule"]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a command is, for the driver.

    name: the command ('pretrain', 'finetune', 'probe', …); config: its frozen config class;
    artifact: the run's main output in its dir (what ``--resume``/``--overwrite`` guard);
    resume_keys: settings a resume must not change; outputs: every file/dir the run writes
    (removed by ``--overwrite``); run(cfg, ctx) -> summary dict; metrics(run_dir) -> dict
    (what the study reads); check(cfg, device) raises on bad input before the dir is touched;
    resume_flag: the command takes ``--resume`` (robustness resumes a rerun by itself)."""

    name: str
    config: type
    artifact: str
    resume_keys: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[Any, "RunContext"], dict]
    metrics: Callable[[Path], dict] | None = None
    check: Callable[[Any, Any], None] | None = None  # (cfg, device): bad input, before any write
    resume_flag: bool = True


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the driver resolved once: the run dir, the device, the process group, the flags."""

    run_dir: Path
    device: Any        # devices.Device
    dist: Any          # engine.distributed.DistInfo
    resume: bool
    overwrite: bool


def clean_outputs(run_dir: Path, outputs) -> None:
    """Remove a run's outputs (files and dirs such as tb/) so an overwrite starts clean: a
    failed overwrite can never leave the old checkpoint beside a new config."""
    for name in outputs:
        p = Path(run_dir) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def already_done(ctx: "RunContext", stored_record, step: int, total: int, what: str):
    """On ``--resume`` of a complete run with nothing left to do (``step >= total``): say so in
    one line and return the stored summary (``summary.json``, or {}); else None. The run dir is
    left untouched: no config, record or summary is rewritten."""
    if stored_record is None or stored_record.status != "complete" or step < total:
        return None
    if ctx.dist.is_main:
        from dalivssl.console import stderr_console

        stderr_console().print(f"{ctx.run_dir}: {what} already complete at step {step}; "
                               "nothing to resume (left untouched)", highlight=False)
    summary = ctx.run_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {}


def result_unchanged(ctx: "RunContext", record, keys, artifact: str) -> bool:
    """``--resume`` of an analysis whose result is stored (``artifact`` and a complete
    ``record.json``): inputs or settings that differ in ``keys`` are refused in one line (the old
    result is never replaced without ``--overwrite``); the same ones leave it untouched, said in
    one line (True). False: nothing stored to resume, so run."""
    from dalivssl import record as rec

    if not ctx.resume or not (ctx.run_dir / artifact).is_file():
        return False
    old = rec.read_run_record(ctx.run_dir)
    if old is None or old.status != "complete":
        return False
    rec.check_resumable(old, record, keys, ctx.run_dir / artifact)
    if ctx.dist.is_main:
        from dalivssl.console import stderr_console

        stderr_console().print(f"{ctx.run_dir}: {record.kind} already complete with these "
                               "inputs; nothing to resume (left untouched)", highlight=False)
    return True


def stored_checkpoint(ctx: "RunContext", kind: str, command: str, record, keys) -> dict | None:
    """The checkpoint ``--resume`` continues: None without ``--resume`` or without one. A
    checkpoint of another ``kind`` is refused, and so is one whose record differs from
    ``record`` in ``keys`` (``record.check_resumable``), in one line each."""
    from dalivssl import record as rec
    from dalivssl.engine import checkpoint as ck
    from dalivssl.errors import DalivsslError

    path = ctx.run_dir / ck.CKPT_NAME
    if not (ctx.resume and path.is_file()):
        return None
    old = ck.load_checkpoint(path)
    if old.get("kind") != kind:
        raise DalivsslError(f"{path}: a {old.get('kind')!r} checkpoint cannot be resumed by "
                            f"{command}")
    rec.check_resumable(rec.record_of(old), record, keys, path)
    return old


def extend_schedule(scheduler, step: int, total: int) -> str | None:
    """A resume with another step count: the restored schedule is stretched (or shrunk) to span
    ``total`` steps from its start, as if the run had been planned that long ('step' milestones
    keep their fractions), and the optimiser's lr is set to the stretched schedule's value at
    ``step`` (the restored one is the old schedule's: 0 at the end of a cosine). Returns the rule
    as one line to state, or None when the total did not change."""
    fns = scheduler.lr_lambdas
    old = fns[0].total
    if old == max(1, int(total)):
        return None
    for fn in fns:  # the same object per group: stretch it once
        if fn.total == old:
            fn.milestones = [round(m * total / old) for m in fn.milestones]
            fn.total = max(1, int(total))
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, fns):
        group["lr"] = base * fn(step)
    lr = scheduler.optimizer.param_groups[0]["lr"]
    return (f"the {fns[0].name} schedule planned for {old} steps now spans {total} (from step 0); "
            f"it goes on from step {step} at lr {lr:.3g}")


def execute(spec: RunSpec, cfg, run_dir, resume: bool = False, overwrite: bool = False,
            **inputs) -> dict:
    """Run ``spec`` with ``cfg`` in ``run_dir``; returns the spec's summary. ``inputs``: what the
    command was handed beside its config (e.g. finetune's data and backbone), passed to run."""
    from dalivssl import record as rec
    from dalivssl.devices import resolve_device
    from dalivssl.engine import distributed
    from dalivssl.errors import DalivsslError

    if resume and overwrite:
        raise DalivsslError("give --resume or --overwrite, not both")
    dev = resolve_device(cfg.device)  # the one resolution of the run (stated, recorded)
    if spec.check is not None:
        spec.check(cfg, dev)
    run_dir = Path(run_dir)
    dist = distributed.setup(dev.name)
    lock = None
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()] if dist.is_main else []
    try:
        if dist.is_main:  # writable, locked, no silent overwrite: before any work
            lock = rec.open_run_dir(run_dir, spec.artifact, resume, overwrite)
            if overwrite:
                clean_outputs(run_dir, spec.outputs)
        ctx = RunContext(run_dir=run_dir, device=dev, dist=dist, resume=resume,
                         overwrite=overwrite)
        return spec.run(cfg, ctx, **inputs)
    except BaseException:
        if lock is not None:
            lock.release()
            lock = None
        _remove_empty(made)
        raise
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def _remove_empty(dirs) -> None:
    """Remove the folders a failed run created (deepest first) while they are empty: a run that
    fails before writing anything leaves no empty output dir behind (review t3 #17)."""
    for path in dirs:
        try:
            path.rmdir()
        except OSError:
            return
