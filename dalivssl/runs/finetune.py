"""The finetune and linear-probe commands as :class:`~dalivssl.runs.base.RunSpec`\\ s: one trainer
(``engine.fit.fit`` on ``engine.finetune.ClassifierTask``), the probe one more spec on it
(solo-learn ``solo/methods/__init__.py``: ``"linear": LinearModel``).

Outputs: ``checkpoint.pt`` (finetune kind), ``record.json``, ``config.yaml``, ``finetune.h5``,
``finetune_log.csv``, ``finetune.png`` and ``tb/``.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from dalivssl.config import FinetuneConfig, save_yaml
from dalivssl.engine.finetune import (LOG_NAME, RESULTS_NAME, RESUME_KEYS, Classifier,
                                      ClassifierTask, FinetuneData, build_optimizer,
                                      checkpoint_fields, default_name, finetune_record,
                                      loader_threads, train_loader)
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, already_done, execute, extend_schedule, stored_checkpoint

__all__ = ["SPEC", "PROBE", "run_finetune"]

OUTPUTS = ("checkpoint.pt", "record.json", "config.yaml", RESULTS_NAME, LOG_NAME,
           "finetune.png", "tb")


def run_finetune(cfg: FinetuneConfig, data: FinetuneData, backbone: nn.Module, out_dir,
                 resume: bool = False, overwrite: bool = False, train_batches=None,
                 test_batches=None, backbone_kwargs: dict | None = None) -> dict:
    """Train (engine.fit), evaluate, write the outputs above. Under torchrun the training set is
    sharded over the ranks and the model wrapped in DDP (rank 0 writes). ``train_batches`` /
    ``test_batches`` replace the DALI loaders: a resumable loader (``len``, iteration, ``epoch``,
    ``state_dict``/``load_state_dict``) and an iterable of eval batches.
    Returns {'clip_acc', 'video_acc', 'epochs', 'step', 'checkpoint', 'results', 'history'}."""
    return execute(PROBE if cfg.linear_probe else SPEC, cfg, out_dir, resume=resume,
                   overwrite=overwrite, data=data, backbone=backbone,
                   train_batches=train_batches, test_batches=test_batches,
                   backbone_kwargs=backbone_kwargs)


def prepare(cfg: FinetuneConfig, given=frozenset(), build: bool = True):
    """The inputs, checked and loaded before the run dir is touched: the manifests (bad ones
    fail first), the pretrained checkpoint (read once: its arch, record and weights), the clip
    settings (``record.resolve_clip``: the record's, under those the user gave, ``given``), the
    arch's minimum input, the backbone (``build``; not for ``--explain``), the stored data paths
    and the name. Returns (cfg resolved, the inputs of :func:`run_finetune`, parent record)."""
    from dalivssl import record as rec
    from dalivssl.console import stderr_console
    from dalivssl.data.manifest import overlap_warning
    from dalivssl.engine import checkpoint as ck
    from dalivssl.engine.features import check_arch, check_input_size
    from dalivssl.engine.finetune import resolve_data

    cfg = cfg.resolved().check()
    say = stderr_console().print
    torch.set_num_threads(cfg.threads)
    data = resolve_data(cfg.data, cfg.test_data)
    warn = overlap_warning(data.train, data.test, data.train_path, data.test_path)
    if warn:
        say(f"[yellow]{warn}[/yellow]", highlight=False)
    parent, ckpt = None, None
    if cfg.pretrained:
        ckpt = ck.load_checkpoint(cfg.pretrained)
        if "arch" in given and ckpt.get("arch") != cfg.arch:
            raise DalivsslError(f"{cfg.pretrained}: checkpoint is for arch {ckpt.get('arch')!r}, "
                                f"not {cfg.arch!r}")
        parent = rec.record_of(ckpt, cfg.pretrained)
        cfg = replace(cfg, arch=ckpt["arch"], pretrained=str(Path(cfg.pretrained).resolve()))
    clip = rec.resolve_clip(parent, {k: getattr(cfg, k) for k in ("clip_len", "size", "normalize")
                                     if k in given}, say=lambda s: say(s, highlight=False))
    check_input_size(check_arch(cfg.arch), clip.clip_len, clip.size, cfg.arch)
    cfg = replace(cfg, clip_len=clip.clip_len, size=clip.size, normalize=clip.normalize)
    inputs = {"data": data}
    if build:
        if ckpt is not None:
            try:
                backbone = ck.build_backbone_from(ckpt, "cpu").eval()
            except RuntimeError as exc:  # as engine.checkpoint.load_backbone says it
                raise DalivsslError(f"{cfg.pretrained}: backbone weights do not fit "
                                    f"{ckpt['arch']!r} ({str(exc).splitlines()[0][:120]})"
                                    ) from None
            kwargs = dict(ckpt.get("backbone_kwargs") or {})
        else:
            from models import create_backbone

            torch.manual_seed(cfg.seed)
            backbone, kwargs = create_backbone(cfg.arch), {}
        check_input_size(backbone, clip.clip_len, clip.size, cfg.arch)  # its own kwargs' minimum
        inputs.update(backbone=backbone, backbone_kwargs=kwargs)
    cfg = replace(cfg, **stored_data(cfg, data))
    return replace(cfg, name=cfg.name or default_name(cfg, parent)), inputs, parent


def stored_data(cfg, data) -> dict:
    """data / test_data as the run's config.yaml keeps them: absolute paths of the manifests it
    used (the embedded dataset's too), test_data only where it was given, so that ``--config``
    replays the same split."""
    def absolute(p):
        return str(Path(p).resolve())

    test = cfg.test_data if cfg.data else data.test_path
    return dict(data=absolute(data.train_path), test_data=absolute(test) if test else None)


def _check(cfg: FinetuneConfig, dev) -> None:
    cfg.resolved().check()


def _run(cfg, ctx, data, backbone, train_batches=None, test_batches=None,
         backbone_kwargs=None) -> dict:
    from dalivssl import record as rec
    from dalivssl.engine import checkpoint as ck
    from dalivssl.engine.fit import FitConfig, fit, make_scheduler, restore, seed_all

    cfg = replace(cfg.resolved().check(), device=ctx.device.torch)
    if cfg.flip is None:  # stored resolved: the run's config says what the loader did
        cfg = replace(cfg, flip=data.train.flip_safe)
    if cfg.data is None:  # the manifests it trains and tests on, for config.yaml to replay
        cfg = replace(cfg, data=data.train_path,
                      test_data=None if data.test_path == data.train_path else data.test_path)
    if cfg.name is None:
        parent = None
        if cfg.pretrained:
            parent = rec.record_of(ck.load_checkpoint(cfg.pretrained), cfg.pretrained)
        cfg = replace(cfg, name=default_name(cfg, parent))
    dist, out_dir = ctx.dist, ctx.run_dir
    torch.set_num_threads(max(1, cfg.threads))
    device = torch.device(dist.device if dist.enabled else cfg.device)
    record = finetune_record(cfg, data)
    ckpt_path = out_dir / ck.CKPT_NAME
    old = stored_checkpoint(ctx, "finetune", "finetune", record, RESUME_KEYS)
    seed_all(cfg.seed)  # the same initial head on every rank
    model = Classifier(backbone, len(data.classes), frozen=cfg.linear_probe,
                       l2_norm=cfg.l2_norm, dropout=cfg.dropout).to(device)
    task = ClassifierTask(model)
    optimizer = build_optimizer(model, cfg)
    if train_batches is None:
        loader = train_loader(data.train, cfg, where=data.train_path,
                              shard=(dist.rank, dist.world))
    elif hasattr(train_batches, "state_dict"):  # the loader's resumable interface
        loader = train_batches
    else:
        raise TypeError("train_batches needs the loader interface (len, iteration, epoch, "
                        "state_dict, load_state_dict)")
    if len(loader) == 0:
        raise DalivsslError(f"{data.train_path}: no training batches (videos too short or "
                            f"batch size {cfg.batch_size} too large)")
    total = int(cfg.max_steps) if cfg.max_steps else int(cfg.epochs) * len(loader)
    scheduler = make_scheduler(optimizer, "cosine", total)
    step, stretched = 0, None
    if old is not None and (out_dir / RESULTS_NAME).is_file():
        done = already_done(ctx, rec.record_of(old), int(old.get("step", 0)), total,
                            "linear probe" if cfg.linear_probe else "finetuning")
        if done is not None:  # a complete run: its stored results, nothing rewritten
            return _stored(out_dir, int(old["step"]), len(loader), cfg.name)
    if old is not None:
        step = restore(old, task, optimizer, scheduler, loader, dist.rank)
        stretched = extend_schedule(scheduler, step, total)
    if dist.is_main:
        from dalivssl.console import stderr_console

        con = stderr_console()
        if ctx.resume:
            con.print(f"resuming {ckpt_path} at step {step} of {total}" if old is not None else
                      f"no checkpoint in {out_dir}: starting from step 0", highlight=False)
        if stretched:
            con.print(f"resume: {stretched}", highlight=False)
        rec.write_run_record(out_dir, record)
        save_yaml(cfg, out_dir / "config.yaml")  # replay: dalivssl finetune --config …
    net = task
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(task, device_ids=[dist.gpu_index] if device.type == "cuda" else None)

    def fields(final: bool) -> dict:
        return checkpoint_fields(model, record.marked(final), data.classes, cfg, backbone_kwargs)

    kind = "linear probe" if cfg.linear_probe else "finetune"
    fcfg = FitConfig(total_steps=total, label=f"{kind} {cfg.name}", log_name=LOG_NAME, amp=cfg.amp,
                     ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, progress=cfg.progress,
                     tensorboard=True, items_per_step=cfg.batch_size * dist.world)
    res = fit(task, loader, optimizer, scheduler, fcfg, out_dir, fields, net=net, dist=dist,
              device=device, start_step=step, start_losses=(old or {}).get("losses"))
    if test_batches is None:
        from dalivssl.engine.features import eval_loader

        test_batches = eval_loader(data.test, cfg.eval_clips, cfg.batch_size, cfg.clip_len,
                                   cfg.size, cfg.device, cfg.seed, cfg.normalize,
                                   num_threads=loader_threads(cfg), where=data.test_path,
                                   shard=(dist.rank, dist.world))
    from dalivssl.engine.features import gather_skipped, shard_line
    from dalivssl.engine.scoring import evaluate, write_results
    from dalivssl.plots import plot_finetune

    # under torchrun each rank scores its shard of the test videos; all get every rank's
    result = evaluate(model, test_batches, len(data.classes), device, gather=dist.enabled)
    skipped = gather_skipped(test_batches)
    epochs = math.ceil(res.step / len(loader))
    results_path = out_dir / RESULTS_NAME
    # the logged rows (those of a resumed run's earlier part were read back from its CSV: str)
    history = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in res.history]
    if dist.is_main:
        if result.per_rank:
            con.print(shard_line(result.per_rank, len(result.targets)), highlight=False)
        record = record.marked(True)  # the scores go to finetune.h5, not into the checkpoint
        write_results(results_path, record, cfg, data, history, result, skipped)
        plot_finetune(out_dir / "finetune.png", record, history, result, data.classes)
        rec.write_run_record(out_dir, record)
    return {"clip_acc": result.clip_acc, "video_acc": result.video_acc, "epochs": epochs,
            "step": res.step, "checkpoint": ckpt_path, "results": results_path,
            "history": history, "skipped": skipped, "name": cfg.name,
            "eval_per_rank": list(result.per_rank)}


def _stored(out_dir, step: int, batches: int, name: str) -> dict:
    """The summary of a complete run, read back from its finetune.h5 (what ``_run`` returns)."""
    from dalivssl.results import ResultsFile

    path = out_dir / RESULTS_NAME
    with ResultsFile(path, "r") as rf:
        skipped = int(rf.attrs("finetune", "video_acc").get("skipped", 0))
        log = {c: rf.read("log", c) for c in rf.names("log")}
        res = {"clip_acc": float(rf.read("finetune", "clip_acc")),
               "video_acc": float(rf.read("finetune", "video_acc"))}
    rows = len(next(iter(log.values()), []))
    history = [{c: float(v[i]) for c, v in log.items() if not math.isnan(float(v[i]))}
               for i in range(rows)]
    return {**res, "epochs": math.ceil(step / max(1, batches)), "step": step,
            "checkpoint": out_dir / "checkpoint.pt", "results": path, "history": history,
            "skipped": {"test videos skipped": skipped} if skipped else {}, "name": name}


def _metrics(run_dir) -> list[dict]:
    """What the study reads of a finetuning or probe: [{metric 'clip_top1' | 'video_top1',
    value}] from its finetune.h5."""
    from dalivssl.results import ResultsFile

    with ResultsFile(Path(run_dir) / RESULTS_NAME, "r") as f:
        return [{"metric": f"{m}_top1", "value": float(f.read("finetune", f"{m}_acc"))}
                for m in ("clip", "video")]


SPEC = RunSpec(name="finetune", config=FinetuneConfig, artifact="checkpoint.pt",
               resume_keys=RESUME_KEYS, outputs=OUTPUTS, run=_run, metrics=_metrics,
               check=_check)
PROBE = replace(SPEC, name="probe")
