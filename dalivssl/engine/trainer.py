"""Pretraining loop: task step → backward → optimiser → schedule, with logging and checkpoints.

``pretrain(cfg)`` builds everything from a :class:`dalivssl.config.PretrainConfig`:
loader (``pipelines.loader.PretextLoader``, sharded per rank), backbone (``models``), head and
step (``dalivssl.tasks``), optimiser (SGD / AdamW) and per-step schedule (constant, step,
cosine with linear warmup) from the task's SPEC unless the config overrides them.

Outputs in the run dir: ``checkpoint.pt`` (contract C7; rewritten atomically every
``ckpt_every`` steps and at the end), ``config.yaml`` (resolved), ``log.csv``, ``tb/``
(TensorBoard scalars) and ``summary.json``.

Resume: the checkpoint holds model, optimiser, scheduler, RNG states (python, numpy, torch) and
the loader position; the loader regenerates any batch from (seed, epoch, index), so a run killed
at any moment and resumed reaches the same weights as an uninterrupted one (bitwise on CPU with
``deterministic=true``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dalivssl.config import OPTIMIZERS, PretrainConfig, check_options, save_yaml, to_dict
from dalivssl.engine import checkpoint as ck
from dalivssl.engine import distributed
from dalivssl.errors import DalivsslError

SCHEDULES = ("constant", "step", "cosine")
KILL_ENV = "DALIVSSL_KILL_AT_STEP"  # test hook: SIGKILL ourselves after this step (resume tests)


class TaskModel(nn.Module):
    """backbone + head; ``forward(batch)`` runs the task's step so that DDP sees one forward."""

    def __init__(self, task, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._step = task.step

    def forward(self, batch) -> dict:
        return self._step(self.backbone, self.head, batch)


# ---------------------------------------------------------------------------------- schedule
class LRFactor:
    """lr multiplier per optimiser step (picklable; LambdaLR saves its __dict__)."""

    def __init__(self, name: str, total: int, warmup: int = 0, milestones=(), gamma: float = 0.1,
                 min_ratio: float = 0.0):
        self.name, self.total, self.warmup = name, max(1, int(total)), int(warmup)
        self.milestones = [int(m) for m in milestones]
        self.gamma, self.min_ratio = float(gamma), float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.name == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.name == "cosine":
            span = max(1, self.total - self.warmup)
            progress = min(1.0, (step - self.warmup) / span)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


def resolve_optim(cfg: PretrainConfig, spec: dict, global_batch: int, total_steps: int) -> dict:
    """Optimiser/schedule settings: config value if set, else SPEC (lr scaled from the SPEC's
    reference batch when it says so)."""
    o, s = dict(spec.get("optimizer", {})), dict(spec.get("schedule", {}))
    lr = cfg.lr
    if lr is None:
        lr = float(o.get("lr", 0.01))
        ref, scaling = o.get("ref_batch"), o.get("scaling")
        if ref and scaling == "linear":
            lr *= global_batch / ref
        elif ref and scaling == "sqrt":
            lr *= math.sqrt(global_batch / ref)
    warm = cfg.warmup_steps
    if warm is None:
        warm = int(round(float(s.get("warmup", 0.0)) * total_steps))
    out = {
        "optimizer": cfg.optimizer or o.get("name", "sgd"),
        "lr": float(lr),
        "momentum": cfg.momentum if cfg.momentum is not None else float(o.get("momentum", 0.9)),
        "weight_decay": (cfg.weight_decay if cfg.weight_decay is not None
                         else float(o.get("weight_decay", 0.0))),
        "schedule": cfg.schedule or s.get("name", "constant"),
        "warmup_steps": int(warm),
        "milestones": tuple(cfg.milestones if cfg.milestones is not None
                            else s.get("milestones", ())),
        "gamma": cfg.gamma if cfg.gamma is not None else float(s.get("gamma", 0.1)),
        "min_lr_ratio": (cfg.min_lr_ratio if cfg.min_lr_ratio is not None
                         else float(s.get("min_lr_ratio", 0.0))),
        "grad_clip": cfg.grad_clip if cfg.grad_clip is not None else spec.get("grad_clip"),
    }
    if out["optimizer"] not in OPTIMIZERS:
        raise DalivsslError(f"unknown optimizer {out['optimizer']!r}; valid: {', '.join(OPTIMIZERS)}")
    if out["schedule"] not in SCHEDULES:
        raise DalivsslError(f"unknown schedule {out['schedule']!r}; valid: {', '.join(SCHEDULES)}")
    return out


def build_optimizer(model: TaskModel, opt: dict, lr_mult: dict | None = None):
    """SGD/AdamW over trainable params; head params under a prefix in ``lr_mult`` get lr × mult."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # EMA key encoders
        mult = 1.0
        for prefix, m in (lr_mult or {}).items():
            if name.startswith(f"head.{prefix}"):
                mult = float(m)
        groups.setdefault(mult, []).append(p)
    params = [{"params": ps, "lr": opt["lr"] * m} for m, ps in sorted(groups.items())]
    return make_optimizer(params, opt["optimizer"], opt["lr"], opt["momentum"],
                          opt["weight_decay"])


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    """``name`` in OPTIMIZERS over ``params`` (tensors or param groups); SGD uses ``momentum``."""
    if name not in OPTIMIZERS:
        raise DalivsslError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_scheduler(optimizer, opt: dict, total_steps: int):
    fn = LRFactor(opt["schedule"], total_steps, opt["warmup_steps"],
                  [round(f * total_steps) for f in opt["milestones"]], opt["gamma"],
                  opt["min_lr_ratio"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [fn] * len(optimizer.param_groups))


# ---------------------------------------------------------------------------------- building
def _manifest(cfg: PretrainConfig):

    from dalivssl.data.synth import resolve_manifest

    _, manifest = resolve_manifest(cfg.data or None, "train")
    if cfg.subset:
        from dalivssl.data.subsets import nested_subsets

        manifest = nested_subsets(manifest, [cfg.subset], seed=cfg.seed)[cfg.subset]
    return manifest


def head_context(build_head, cfg: PretrainConfig, sampler, sampler_opts: dict, world: int):
    """Values ``build_head`` may take from the run: sampler options of the same name (e.g.
    RSPNet's speeds), num_classes / num_clips of the sampler, clip_len, size, batch sizes."""
    import inspect

    ctx = {}
    known = {"num_classes": getattr(sampler, "num_classes", None),
             "num_clips": getattr(sampler, "num_clips", None), "clip_len": cfg.clip_len,
             "size": cfg.size, "batch_size": cfg.batch_size, "world_size": world}
    for name in inspect.signature(build_head).parameters:
        if name in sampler_opts:
            ctx[name] = sampler_opts[name]
        elif known.get(name) is not None:
            ctx[name] = known[name]
    return ctx


def _check_out_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DalivsslError(f"{run_dir}: output directory is not writable "
                            f"({exc.strerror or exc})") from None


def _check_input_size(backbone, cfg) -> None:
    """One tiny forward: a clip smaller than the arch's total stride fails here, in one line."""
    backbone.eval()
    try:
        with torch.no_grad():
            backbone.forward_map(torch.zeros(1, 3, cfg.clip_len, cfg.size, cfg.size))
    except RuntimeError as exc:
        raise DalivsslError(f"arch {cfg.arch!r} cannot take {cfg.clip_len}-frame clips at "
                            f"{cfg.size} px (too small for its strides: "
                            f"{str(exc).splitlines()[0][:100]}); raise --clip-len/--size") from None
    finally:
        backbone.train()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- logging
class RunLog:
    """CSV + TensorBoard scalars (rank 0). On resume, rows past the resumed step are dropped."""

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool):
        self.path = run_dir / "log.csv"
        self.rows: list[dict] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        else:
            self.path.unlink(missing_ok=True)
        self.fields = list(self.rows[0].keys()) if self.rows else None
        self._rewrite()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)
            except Exception:  # tensorboard missing or broken: CSV still has everything
                self.tb = None

    def _rewrite(self):
        if not self.fields:
            return
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    def write(self, row: dict) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            self._rewrite()
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from dalivssl.console import stderr_console

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=stderr_console(), disable=not enabled, transient=False)


def _summary_table(summary: dict):
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pretrain {summary['task']} / {summary['arch']}", show_header=False)
    rows = [("steps", summary["steps"]), ("epochs", f"{summary['epochs']:.2f}"),
            ("loss first → last (means)",
             f"{summary['first_loss']:.4f} → {summary['final_loss']:.4f}"),
            ("wall time", f"{summary['wall_s']:.1f} s"),
            ("clips / s", f"{summary['clips_per_s']:.1f}"),
            ("waiting for data", f"{100 * summary['data_wait']:.0f} %"),
            ("checkpoint", summary["checkpoint"])]
    for k, v in summary.get("metrics", {}).items():
        rows.append((k, f"{v:.4f}"))
    if summary.get("skipped"):
        rows.append(("skipped videos", ", ".join(f"{k}: {v}" for k, v in summary["skipped"].items())))
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)


# ---------------------------------------------------------------------------------- main loop
def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) a pretraining job; returns the summary dict (also in summary.json)."""
    from dalivssl.tasks import get_task

    task = get_task(cfg.task)
    spec = task.SPEC
    from models import BACKBONES, create_backbone

    if cfg.arch not in BACKBONES:
        from dalivssl.errors import unknown_name

        raise unknown_name("architecture", cfg.arch, BACKBONES)
    if cfg.device not in ("cpu", "gpu"):
        raise DalivsslError(f"unknown device {cfg.device!r}; valid: cpu, gpu")
    if cfg.batch_size < 2:
        raise DalivsslError(f"batch_size must be >= 2 (BatchNorm, contrastive negatives), got "
                            f"{cfg.batch_size}")
    if cfg.amp and cfg.device != "gpu":
        raise DalivsslError("amp needs --device gpu")
    run_dir = cfg.run_dir
    ckpt_path = run_dir / ck.CKPT_NAME
    ckpt = None
    if resume and ckpt_path.is_file():
        ckpt = ck.load_checkpoint(ckpt_path)
        if ckpt.get("kind") != "pretrain":
            raise DalivsslError(f"{ckpt_path}: a {ckpt.get('kind')!r} checkpoint cannot be resumed")
        if ckpt["arch"] != cfg.arch:
            raise DalivsslError(f"{ckpt_path}: checkpoint is for arch {ckpt['arch']!r}, not "
                                f"{cfg.arch!r}")
        if ckpt.get("task") != cfg.task:
            raise DalivsslError(f"{ckpt_path}: checkpoint is for task {ckpt.get('task')!r}, not "
                                f"{cfg.task!r}")
    elif ckpt_path.is_file() and not overwrite and not resume:
        raise DalivsslError(f"{run_dir}: already holds a checkpoint; pass --resume to continue "
                            "it, --overwrite to start again, or another --out")

    dist = distributed.setup(cfg.device)
    try:
        return _run(cfg, task, spec, create_backbone, dist, run_dir, ckpt_path, ckpt, resume)
    finally:
        distributed.cleanup()


def _run(cfg, task, spec, create_backbone, dist, run_dir, ckpt_path, ckpt, resume):
    if dist.is_main:
        _check_out_dir(run_dir)
    torch.set_num_threads(max(1, cfg.threads))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # on GPU some kernels (e.g. 3D pooling backward) have no deterministic version: warn there
        torch.use_deterministic_algorithms(True, warn_only=cfg.device == "gpu")
        torch.backends.cudnn.benchmark = False
    elif cfg.device == "gpu":
        torch.backends.cudnn.benchmark = True
    device = torch.device(dist.device)

    # data -------------------------------------------------------------------------------
    from pipelines.loader import LoaderError, PretextLoader
    from pipelines.samplers import SAMPLERS

    from dalivssl.tasks import resolve_options

    opts = resolve_options(cfg)  # SPEC < demo preset (no --data) < config
    sampler_opts = opts["sampler"]
    check_options(f"{cfg.task} sampler", SAMPLERS[spec["sampler"]], sampler_opts,
                  reserved=("clip_len", "size", "augment"))
    manifest = _manifest(cfg)
    try:
        loader = PretextLoader(spec["sampler"], manifest, cfg.batch_size, device=cfg.device,
                               clip_len=cfg.clip_len, size=cfg.size, seed=cfg.seed,
                               shard=(dist.rank, dist.world), num_threads=max(1, cfg.threads),
                               **sampler_opts)
    except LoaderError as exc:
        raise DalivsslError(f"{cfg.data or 'synthetic dataset'}: {exc}") from None
    sampler = loader.sampler
    total_steps = cfg.max_steps if cfg.max_steps else cfg.epochs * len(loader)
    global_batch = cfg.batch_size * dist.world

    # model: identical init on every rank (seed, not seed + rank) ------------------------
    _seed_all(cfg.seed)
    backbone = create_backbone(cfg.arch, **opts["backbone"])
    _check_input_size(backbone, cfg)
    ctx = head_context(task.build_head, cfg, sampler, sampler_opts, dist.world)
    check_options(f"{cfg.task} head", task.build_head, cfg.head)
    head_opts = {**ctx, **opts["head"]}
    try:
        head = task.build_head(backbone, **head_opts)
    except ValueError as exc:  # a head option of the right name but a bad value
        raise DalivsslError(f"{cfg.task} head: {exc}") from None
    model = TaskModel(task, backbone, head).to(device)
    opt = resolve_optim(cfg, spec, global_batch, total_steps)
    optimizer = build_optimizer(model, opt, spec.get("lr_mult"))
    scheduler = build_scheduler(optimizer, opt, total_steps)
    resolved = dataclasses.replace(
        cfg, out=str(run_dir), optimizer=opt["optimizer"], lr=opt["lr"], momentum=opt["momentum"],
        weight_decay=opt["weight_decay"], schedule=opt["schedule"],
        warmup_steps=opt["warmup_steps"], milestones=opt["milestones"], gamma=opt["gamma"],
        min_lr_ratio=opt["min_lr_ratio"], grad_clip=opt["grad_clip"], sampler=sampler_opts,
        head=dict(head_opts), backbone=opts["backbone"])
    _seed_all(cfg.seed + 1000 * dist.rank)  # per-rank streams for dropout, mixup, speed split

    step = 0
    if ckpt is not None:
        model.backbone.load_state_dict(ckpt["backbone"])
        model.head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        loader.load_state_dict(ckpt["loader"])
        rng = ckpt["rng"]
        if isinstance(rng, list):  # one state per rank (DDP); a new world size reuses rank 0's
            rng = rng[dist.rank] if dist.rank < len(rng) else rng[0]
        ck.set_rng_state(rng)
        step = int(ckpt["step"])
    if dist.is_main:
        save_yaml(resolved, run_dir / "config.yaml")
        if cfg.progress:
            from rich.console import Console

            note = (f"resuming {ckpt_path} at step {step}" if ckpt is not None else
                    f"no checkpoint in {run_dir}: starting from step 0" if resume else
                    f"run dir {run_dir}")
            Console(stderr=True).print(f"[dim]{note}; {total_steps} steps, "
                                       f"{len(loader)} batches/epoch, lr {opt['lr']:.3g}[/dim]")
            if opts["demo"]:
                from dalivssl.tasks.explain import demo_note

                Console(stderr=True).print(f"[yellow]{demo_note(opts['demo'])}[/yellow]")

    net = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if spec.get("sync_bn"):  # BN statistics over the global batch, as the original
            from dalivssl.engine.syncbn import convert_sync_batchnorm
            convert_sync_batchnorm(model)
        net = DDP(model, device_ids=[dist.local_rank] if cfg.device == "gpu" else None)

    def save(final: bool):
        rng = distributed.all_gather_object(ck.rng_state()) if dist.enabled else ck.rng_state()
        if not dist.is_main:
            return
        ck.save_checkpoint(
            ckpt_path, kind="pretrain", arch=cfg.arch, task=cfg.task,
            backbone=model.backbone.state_dict(), head=model.head.state_dict(),
            backbone_kwargs=opts["backbone"],
            config=to_dict(resolved), versions=ck.versions(), step=step,
            epoch=loader.epoch, optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), rng=rng, loader=loader.state_dict(), final=final)

    log = RunLog(run_dir, step, cfg.tensorboard) if dist.is_main else None
    kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
    clips_per_batch = cfg.batch_size * sampler.num_clips * dist.world
    losses: list[float] = []
    last_metrics: dict = {}
    wait_total = compute_total = 0.0
    window_wait = window_time = 0.0
    window_steps = 0
    start_step = step
    t_start = time.perf_counter()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp else None
    model.train()
    progress = _progress(cfg.progress and dist.is_main)
    with progress:
        bar = progress.add_task(f"{cfg.task}/{cfg.arch}", total=total_steps, completed=step,
                                info="")
        while step < total_steps:
            it = iter(loader)
            t0 = time.perf_counter()
            for batch in it:
                t1 = time.perf_counter()
                batch = batch.to(device)
                if amp is not None:
                    with amp:
                        out = net(batch)
                else:
                    out = net(batch)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()):
                    raise DalivsslError(f"{cfg.task}/{cfg.arch}: loss is {loss.item()} at step "
                                        f"{step + 1}; lower the learning rate (--set lr=…)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if opt["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"])
                optimizer.step()
                scheduler.step()
                step += 1
                t2 = time.perf_counter()
                wait, busy = t1 - t0, t2 - t1
                wait_total += wait
                compute_total += busy
                window_wait += wait
                window_time += wait + busy
                window_steps += 1
                loss_v = float(loss.detach())
                losses.append(loss_v)
                last_metrics = {k: float(v) for k, v in out.items() if k != "loss"}
                if dist.is_main and (step % cfg.log_every == 0 or step == total_steps
                                     or step == start_step + 1):
                    cps = clips_per_batch * window_steps / max(window_time, 1e-9)
                    row = {"step": step, "epoch": loader.epoch, "loss": loss_v,
                           "lr": optimizer.param_groups[0]["lr"], "clips_per_s": cps,
                           "data_wait": window_wait / max(window_time, 1e-9), **last_metrics}
                    log.write(row)
                    progress.update(bar, info=f"loss {loss_v:.4f}  lr {row['lr']:.2e}  "
                                              f"{cps:.1f} clips/s  data {100 * row['data_wait']:.0f}%")
                    window_wait = window_time = 0.0
                    window_steps = 0
                progress.update(bar, completed=step)
                if step % cfg.ckpt_every == 0 and step < total_steps:
                    save(final=False)
                if kill_at and step == kill_at:
                    import signal

                    os.kill(os.getpid(), signal.SIGKILL)
                if step >= total_steps:
                    break
                t0 = time.perf_counter()
    save(final=True)
    wall = time.perf_counter() - t_start
    n_avg = max(1, min(10, len(losses) // 5))
    summary = {
        "task": cfg.task, "arch": cfg.arch, "steps": step,
        "epochs": step / max(1, len(loader)),
        # means over the first / last fifth of this run's steps (at most 10): single steps are noisy
        "first_loss": float(np.mean(losses[:n_avg])) if losses else float("nan"),
        "final_loss": float(np.mean(losses[-n_avg:])) if losses else float("nan"),
        "wall_s": wall, "clips_per_s": clips_per_batch * len(losses) / max(wall, 1e-9),
        "data_wait": wait_total / max(wait_total + compute_total, 1e-9),
        "metrics": last_metrics, "checkpoint": str(ckpt_path), "world_size": dist.world,
        "skipped": loader.skipped,
    }
    # every rank's weights must agree after DDP; record a checksum per rank
    checksum = float(sum(p.detach().double().sum() for p in model.backbone.parameters()))
    summary["rank_checksums"] = distributed.all_gather_object(checksum)
    if dist.is_main:
        log.close()
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.progress:
            _summary_table(summary)
    return summary
