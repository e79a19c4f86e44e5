"""The one training loop: ``fit`` trains any module whose ``forward(batch)`` returns a dict with
``'loss'`` — pretext pretraining (``trainer.TaskModel``), finetuning and linear probing
(``engine.finetune.ClassifierTask``) and multi-teacher distillation (``engine.distill.
DistillTask``) alike (timm's ``TrainingTask`` → ``ClassificationTask`` / ``LogitDistillationTask``
with one ``train.py``).

It owns: AMP (bf16 autocast, on GPU or CPU), DDP (the caller passes the wrapped module), gradient clipping,
the per-step LR schedule (:class:`LRFactor`: constant / step / cosine, linear warmup), the CSV +
TensorBoard log (:class:`RunLog`), progress (a bar on a terminal, a plain line every
``report_s`` seconds in a log file), checkpoints every ``ckpt_every`` steps, at the end and on
SIGINT/SIGTERM (:class:`StopSignals`: the step finishes, the checkpoint is saved, the run stops),
and exact resume: a checkpoint holds optimiser, scheduler, RNG states and the loader position, and
the loader regenerates any batch from (seed, epoch, index), so a run killed at any moment and
resumed reaches the same weights (bitwise on CPU).
"""
from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dalivssl.engine import checkpoint as ck
from dalivssl.engine import faults
from dalivssl.errors import DalivsslError

SCHEDULES = ("constant", "step", "cosine")


class Interrupted(DalivsslError):
    """SIGINT/SIGTERM stopped a run after a checkpoint was saved; the CLI exits 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopSignals:
    """While open, SIGINT and SIGTERM (SLURM's preemption notice) only set ``signum``: the loop
    finishes its step, saves a checkpoint and stops (:class:`Interrupted`). A second Ctrl-C
    interrupts at once. Not under DDP (ranks could stop at different steps) nor off the main
    thread, where the handlers stay as they were."""

    def __init__(self, enabled: bool = True):
        import signal
        import threading

        self.signum, self.old = 0, {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._note)

    def _note(self, signum, frame):
        import signal

        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def close(self) -> None:
        import signal

        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}


# ---------------------------------------------------------------------------------- schedule
class LRFactor:
    """lr multiplier per optimiser step (picklable; LambdaLR saves its __dict__)."""

    def __init__(self, name: str, total: int, warmup: int = 0, milestones=(), gamma: float = 0.1,
                 min_ratio: float = 0.0):
        if name not in SCHEDULES:
            raise DalivsslError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
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


def make_scheduler(optimizer, name: str, total_steps: int, warmup: int = 0, milestones=(),
                   gamma: float = 0.1, min_ratio: float = 0.0):
    """LambdaLR stepping :class:`LRFactor` once per optimiser step; ``milestones`` are fractions
    of ``total_steps``."""
    fn = LRFactor(name, total_steps, warmup, [round(f * total_steps) for f in milestones], gamma,
                  min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [fn] * len(optimizer.param_groups))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- logging
class RunLog:
    """CSV + TensorBoard scalars (rank 0). On resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, start_step: int, tensorboard: bool, tb_dir: Path | None = None):
        self.path = Path(path)
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

                self.tb = SummaryWriter(str(tb_dir or self.path.parent / "tb"),
                                        purge_step=start_step + 1)
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
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, self.fields).writeheader()
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


class Reporter:
    """Progress of a long loop: a rich bar on a terminal; in a log file (stderr not a terminal) a
    plain line every ``every_s`` seconds (step, loss, rate, ETA). ``enabled=False`` shows
    neither (the caller still prints its summary)."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True,
                 every_s: float = 30.0):
        from dalivssl.console import stderr_console

        self.console = stderr_console()
        self.label, self.total, self.enabled = label, int(total), enabled
        self.tty = self.console.is_terminal
        self.every_s, self.t0, self.last = every_s, time.perf_counter(), time.perf_counter()
        self.start = int(done)
        self.info = ""
        self.bar = None
        if enabled and self.tty:
            from dalivssl.console import progress

            self.bar = progress(self.console, info=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=self.total, completed=done, info="")

    def update(self, done: int, info: str | None = None) -> None:
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=self.info)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s or done == self.total:
            self.last = now
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(f"{self.label}: {done}/{self.total} {self.info} "
                               f"({rate:.2f}/s, ETA {eta:.0f} s)", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ---------------------------------------------------------------------------------- the loop
@dataclass
class FitConfig:
    """How ``fit`` runs (what it trains is in the model, loader and optimiser)."""

    total_steps: int
    label: str = "fit"
    amp: bool = False
    grad_clip: float | None = None
    log_every: int = 5
    ckpt_every: int = 50
    tensorboard: bool = True
    progress: bool = True
    log_name: str = "log.csv"
    items_per_step: int = 1  # clips per optimiser step over all ranks (for the rate column)
    # step -> epoch: after these steps a copy is kept as ``epoch_<E>.pt`` (training stages)
    keep: dict = field(default_factory=dict)


@dataclass
class FitResult:
    step: int
    losses: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    wall_s: float = 0.0
    data_wait: float = 0.0
    items_per_s: float = 0.0


def restore(ckpt: dict, model, optimizer, scheduler, loader, rank: int = 0) -> int:
    """Load a checkpoint written by :func:`fit` into the run's objects; returns its step.
    ``model`` must have ``load_run_state(ckpt)`` (the module knows which of its parts are stored)."""
    model.load_run_state(ckpt)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    loader.load_state_dict(ckpt["loader"])
    rng = ckpt["rng"]
    if isinstance(rng, list):  # one state per rank (DDP); a new world size reuses rank 0's
        rng = rng[rank] if rank < len(rng) else rng[0]
    ck.set_rng_state(rng)
    return int(ckpt["step"])


def fit(model, loader, optimizer, scheduler, cfg: FitConfig, run_dir: Path,
        checkpoint_fields: Callable[[], dict], net=None, dist=None, device="cpu",
        start_step: int = 0, stage_fields: Callable[[int], dict] | None = None,
        start_losses=None) -> FitResult:
    """Train ``model`` for ``cfg.total_steps`` optimiser steps from ``start_step``.

    model: nn.Module, ``forward(batch) -> {'loss': scalar tensor, other scalars...}``.
    net: what to call (``model`` or its DDP wrapper). loader: iterable of Batch with
    ``state_dict``, ``epoch`` and ``__len__`` (a new epoch starts when it is exhausted).
    checkpoint_fields: (final) -> the run's own checkpoint fields (kind, record — 'complete' in
    the final save — and weights); ``fit`` adds
    optimiser, scheduler, rng, loader, step and epoch. Checkpoints go to ``run_dir/checkpoint.pt``.
    stage_fields: (epoch) -> the fields of a kept stage ``run_dir/epoch_<E>.pt`` (its own,
    complete record), written after each step of ``cfg.keep``. start_losses: the ``losses`` of
    the checkpoint a resumed run was restored from (its summary then covers the whole run).
    """
    from dalivssl.engine import distributed
    from dalivssl.record import versions

    net = net if net is not None else model
    is_main = dist is None or dist.is_main
    run_dir = Path(run_dir)
    ckpt_path = run_dir / ck.CKPT_NAME
    step = int(start_step)

    def save(final: bool, epoch: int | None = None) -> None:
        enabled = dist is not None and dist.enabled
        rng = distributed.all_gather_object(ck.rng_state()) if enabled else ck.rng_state()
        if not is_main:
            return
        path, fields = ckpt_path, checkpoint_fields
        if epoch is not None:
            path, fields = run_dir / stage_name(epoch), lambda _final: stage_fields(epoch)
        ck.save_checkpoint(path, **fields(final), versions=versions(), step=step,
                           epoch=loader.epoch, optimizer=optimizer.state_dict(),
                           scheduler=scheduler.state_dict(), rng=rng, loader=loader.state_dict(),
                           final=final, losses=torch.tensor(res.losses, dtype=torch.float64))

    log = RunLog(run_dir / cfg.log_name, step, cfg.tensorboard) if is_main else None
    kill_at = faults.kill_step()  # the kill/resume tests' hook (engine.faults)
    # a resumed run's summary covers the whole run: the losses before ``start_step`` come back
    res = FitResult(step=step, losses=_resumed_losses(start_losses, step) if is_main else [])
    wait_total = busy_total = window_wait = window_time = 0.0
    window_steps = 0
    t_start = time.perf_counter()
    # bf16 autocast on the device's type: CUDA on GPU, the CPU's bf16 kernels on CPU
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if cfg.amp else None
    model.train()
    rep = Reporter(cfg.label, cfg.total_steps, step, cfg.progress and is_main)
    pending: list = []  # (step, loss tensor, outputs) not yet read back from the device

    def flush() -> None:
        """Read the pending losses in one transfer; a non-finite one stops the run before it
        can reach a checkpoint."""
        if not pending:
            return
        values = torch.stack([p[1].float() for p in pending]).tolist()
        for (s, _, _), v in zip(pending, values):
            if not math.isfinite(v):
                raise DalivsslError(f"{cfg.label}: loss is {v} at step {s}; lower the learning "
                                    "rate (--set lr=… / --lr)")
        res.losses.extend(values)
        res.metrics = {k: float(v) for k, v in pending[-1][2].items() if k != "loss"}
        pending.clear()

    signals = StopSignals(enabled=not (dist is not None and dist.enabled))
    try:
        while step < cfg.total_steps:
            t0 = time.perf_counter()
            for batch in loader:
                t1 = time.perf_counter()
                batch = batch.to(device)
                if amp is not None:
                    with amp:
                        out = net(batch)
                else:
                    out = net(batch)
                loss = out["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                lr_used = optimizer.param_groups[0]["lr"]  # the lr of this step, for the log
                optimizer.step()
                scheduler.step()
                step += 1
                t2 = time.perf_counter()
                wait_total += t1 - t0
                busy_total += t2 - t1
                window_wait += t1 - t0
                window_time += t2 - t0
                window_steps += 1
                # losses stay on the device until a log or a checkpoint needs them: one sync
                # per log step, not three per step (G13)
                pending.append((step, loss.detach(), out))
                logging = step % cfg.log_every == 0 or step == cfg.total_steps \
                    or step == start_step + 1
                saving = step % cfg.ckpt_every == 0 and step < cfg.total_steps
                if logging or saving:
                    flush()
                if is_main and logging:
                    loss_v = res.losses[-1]
                    rate = cfg.items_per_step * window_steps / max(window_time, 1e-9)
                    row = {"step": step, "epoch": loader.epoch, "loss": loss_v,
                           "lr": lr_used, "clips_per_s": rate,
                           "data_wait": window_wait / max(window_time, 1e-9), **res.metrics}
                    log.write(row)
                    rep.update(step, f"loss {loss_v:.4f}  lr {row['lr']:.2e}  {rate:.1f} clips/s"
                                     f"  data {100 * row['data_wait']:.0f}%")
                    window_wait = window_time = 0.0
                    window_steps = 0
                else:
                    rep.update(step)
                if saving:
                    save(final=False)
                if step in cfg.keep and stage_fields is not None:
                    save(final=True, epoch=cfg.keep[step])
                if signals.signum and step < cfg.total_steps:
                    flush()
                    save(final=False)
                    import signal

                    name = signal.Signals(signals.signum).name
                    raise Interrupted(f"{cfg.label}: {name} at step {step} of {cfg.total_steps}; "
                                      f"checkpoint saved to {ckpt_path}; to go on, rerun the same "
                                      "command with --resume", signals.signum)
                faults.after_step(step, kill_at)
                if step >= cfg.total_steps:
                    break
                t0 = time.perf_counter()
            else:
                if len(loader) == 0:
                    raise DalivsslError(f"{cfg.label}: the loader yields no batch")
        flush()
    finally:
        rep.close()
        signals.close()
        if log is not None and signals.signum:
            log.close()
    save(final=True)
    res.step = step
    res.wall_s = time.perf_counter() - t_start
    res.data_wait = wait_total / max(wait_total + busy_total, 1e-9)
    res.items_per_s = cfg.items_per_step * (step - int(start_step)) / max(res.wall_s, 1e-9)
    if log is not None:
        res.history = list(log.rows)
        log.close()
    return res


def stage_name(epoch: int) -> str:
    """File name of the checkpoint kept after ``epoch`` (``PretrainConfig.keep_epochs``)."""
    return f"epoch_{int(epoch)}.pt"


def keep_steps(keep_epochs, steps_per_epoch: int) -> dict:
    """{step: epoch} of the kept stages: the end of each epoch in ``keep_epochs``."""
    return {int(e) * int(steps_per_epoch): int(e) for e in keep_epochs}


def _resumed_losses(stored, step: int) -> list:
    """The per-step losses of steps 1..``step`` from the checkpoint a run resumes from (its
    ``losses``); [] for a fresh run or an older checkpoint that has none."""
    return stored.tolist() if step > 0 and stored is not None and len(stored) == step else []


def loss_summary(losses: list) -> tuple[float, float]:
    """(first, last) loss as means over the first / last fifth of the steps (at most 10 each):
    single steps are noisy."""
    if not losses:
        return float("nan"), float("nan")
    n = max(1, min(10, len(losses) // 5))
    return float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
