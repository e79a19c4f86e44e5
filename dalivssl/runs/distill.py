"""The distill command as a :class:`~dalivssl.runs.base.RunSpec`: multi-teacher knowledge
distillation (``engine.distill.DistillTask``) trained by the one loop, ``engine.fit.fit``, with
AMP (``amp``) and, under torchrun, DDP of the student over a sharded training set.

Outputs in the run dir: ``checkpoint.pt`` (a finetune checkpoint, contract C7), ``record.json``,
``config.yaml`` (resolved; replayable with ``--config``), ``losses.csv``, ``tb/`` and
``distill.h5`` (groups ``distill``: per-step loss/ce/kd/kd_teachers and the teachers' paths;
``eval``: the student's video top-1 and each live teacher's) and ``distill.png``
(``dalivssl.plots.plot_distill``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from dalivssl.config import DistillConfig, save_yaml, to_dict
from dalivssl.errors import DalivsslError
from dalivssl.runs.base import RunSpec, already_done, execute, stored_checkpoint

__all__ = ["SPEC", "run_distill", "resolved"]

RESULTS_NAME = "distill.h5"
LOG_NAME = "losses.csv"
OUTPUTS = ("checkpoint.pt", "record.json", "config.yaml", RESULTS_NAME, LOG_NAME, "distill.png",
           "tb")
# settings a resumed distillation must share with the stored run (thread counts and AMP change
# the numbers)
RESUME_KEYS = ("arch", "data_hash", "clip", "seed", "batch_size", "lr", "temperature", "alpha",
               "kd_loss", "parent_hash", "threads", "dali_threads", "amp")


def run_distill(cfg: DistillConfig, out=None, resume: bool = False,
                overwrite: bool = False) -> dict:
    """Distil ``cfg``'s teachers into its student in ``out`` (default ``runs/distill/<name>``).
    Returns {'name', 'arch', 'step', 'first_loss', 'last_loss', 'accuracy', 'videos', 'teachers'
    ({name: top-1}), 'out'}."""
    cfg = resolved(cfg)
    out = Path(out or Path("runs/distill") / cfg.name)
    return execute(SPEC, cfg, out, resume=resume, overwrite=overwrite)


def resolved(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` checked, with its name and clip settings filled in: clip_len/size/normalize from the
    first model teacher's record unless given (an override is stated), the name
    ``kd_<arch>_from_<teachers>`` (``sup_<arch>`` without teachers)."""
    from dalivssl import record as rec
    from dalivssl.engine.checkpoint import load_checkpoint

    _check(cfg, None)
    records = [rec.record_of(load_checkpoint(p), p) for p in cfg.teachers]
    clip = rec.resolve_clip(records[0] if records else None,
                            dict(clip_len=cfg.clip_len, size=cfg.size, normalize=cfg.normalize),
                            say=_say)
    sources = [r.name for r in records] + [Path(p).stem for p in cfg.teacher_logits]
    name = cfg.name or (f"kd_{cfg.arch}_from_{'+'.join(sources)}" if sources
                        else f"sup_{cfg.arch}")
    return replace(cfg, name=name, clip_len=clip.clip_len, size=clip.size,
                   normalize=clip.normalize)


def _check(cfg: DistillConfig, dev) -> None:
    cfg.check()
    for path, what in [(p, "teacher checkpoint") for p in cfg.teachers] + \
            [(p, "teacher logits file") for p in cfg.teacher_logits] + \
            [(cfg.student_checkpoint, "student checkpoint")]:
        if path and not Path(path).is_file():
            raise DalivsslError(f"{path}: {what} not found")


def _say(line: str) -> None:
    from dalivssl.console import stderr_console

    stderr_console().print(line, highlight=False)


def _manifests(cfg: DistillConfig):
    """(train path, train manifest, eval path, eval manifest): --eval-data, else the synthetic
    test split without --data, else the training manifest."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.synth import resolve_manifest

    data_path, manifest = resolve_manifest(cfg.data, "train")
    if cfg.eval_data is not None:
        return data_path, manifest, Path(cfg.eval_data), load_manifest(cfg.eval_data)
    if cfg.data is None:
        return (data_path, manifest, *resolve_manifest(None, "test"))
    return data_path, manifest, data_path, manifest


def _run(cfg: DistillConfig, ctx) -> dict:
    import torch

    from dalivssl import record as rec
    from dalivssl.engine.features import (check_input_size, eval_loader, gather_skipped,
                                          make_loader, shard_line)
    from dalivssl.devices import dali_threads
    from dalivssl.engine import distill as D
    from dalivssl.engine.finetune import Classifier
    from dalivssl.engine.fit import FitConfig, fit, loss_summary, make_scheduler, restore, seed_all
    from dalivssl.engine.optim import OptimSpec, make_optimizer
    from dalivssl.plots import plot_distill

    dev, dist, out = ctx.device, ctx.dist, ctx.run_dir
    cfg = replace(cfg, device=dev.name)
    tdev = torch.device(dist.device)
    if dist.is_main:
        _say(f"device: {dev.reason}")
    torch.set_num_threads(cfg.threads)
    data_path, manifest, eval_path, eval_manifest = _manifests(cfg)
    classes = D.manifest_classes(manifest)
    t_models = [D.load_model_teacher(p, classes, tdev) for p in cfg.teachers]
    t_files = [D.load_logits_teacher(p, manifest, classes, tdev, data_path)
               for p in cfg.teacher_logits]
    clip = rec.ClipSettings(cfg.clip_len, cfg.size, cfg.normalize)
    teachers = [t.path for t in t_models] + list(cfg.teacher_logits)
    record = rec.new_record(
        "distill", cfg.name, data_path=data_path, manifest=manifest, device=cfg.device,
        parents=teachers + ([cfg.student_checkpoint] if cfg.student_checkpoint else []),
        arch=cfg.arch, clip=clip, seed=cfg.seed,
        settings={**to_dict(cfg), "device_info": dev.record()})
    old = stored_checkpoint(ctx, "finetune", "distill", record, RESUME_KEYS)
    seed_all(cfg.seed)  # the same initial student on every rank
    student = Classifier(D.student_backbone(cfg), len(classes)).to(tdev)
    check_input_size(student.backbone, clip.clip_len, clip.size, cfg.arch)
    task = D.DistillTask(student, [*t_models, *t_files], clip.normalize, cfg.temperature,
                         cfg.alpha, cfg.kd_loss, record=record, classes=classes, config=cfg)
    optimizer = make_optimizer(student.parameters(), OptimSpec(name="adamw", lr=cfg.lr))
    loader = make_loader("eval", manifest, str(data_path), batch_size=cfg.batch_size,
                         device=cfg.device, clip_len=clip.clip_len, size=clip.size,
                         seed=cfg.seed, augment=True, drop_last=True, raw=True, num_clips=1,
                         random=True, flip=manifest.flip_safe, shard=(dist.rank, dist.world),
                         num_threads=dali_threads(dev, cfg.dali_threads))
    total = len(loader) * cfg.epochs
    total = min(cfg.max_steps, total) if cfg.max_steps else total
    if old is not None:
        done = already_done(ctx, rec.record_of(old), int(old.get("step", 0)), total,
                            "distillation")
        if done is not None:
            return _summary(out)
    scheduler = make_scheduler(optimizer, "constant", total)
    step = restore(old, task, optimizer, scheduler, loader, dist.rank) if old is not None else 0
    if dist.is_main:
        rec.write_run_record(out, record)
        save_yaml(cfg, out / "config.yaml")  # replay: dalivssl distill --config …
    res = fit(task, loader, optimizer, scheduler,
              FitConfig(total_steps=total, label=f"distill {cfg.name}", log_name=LOG_NAME,
                        amp=cfg.amp, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                        progress=cfg.progress, items_per_step=cfg.batch_size * dist.world),
              out, task.run_state, net=task.prepare_distributed(dist), dist=dist, device=tdev,
              start_step=step, start_losses=(old or {}).get("losses"))
    test_loader = eval_loader(eval_manifest, cfg.eval_clips, cfg.batch_size, clip.clip_len,
                              clip.size, device=cfg.device, seed=cfg.seed, raw=True,
                              num_threads=dali_threads(dev, cfg.dali_threads),
                              where=str(eval_path), shard=(dist.rank, dist.world))
    # under torchrun each rank scores its shard of the eval videos; all get every rank's
    scored = D.video_outputs(student, test_loader, clip.normalize, tdev, gather=dist.enabled)
    acc, n_eval = D.top1(scored)
    teacher_acc = {t.record.name: D.teacher_accuracy(t, test_loader, dist.enabled)[0]
                   for t in t_models}
    skipped = gather_skipped(test_loader)
    if dist.is_main:
        if scored.per_rank:
            _say(shard_line(scored.per_rank, n_eval, "eval videos"))
        record = record.marked(True)
        _write(out / RESULTS_NAME, record, cfg, res.history, acc, n_eval, eval_path,
               teacher_acc, teachers, skipped)
        plot_distill(out / "distill.png", res.history, teachers, acc, n_eval, teacher_acc,
                     cfg.name, f"distill {record.describe()}")
        rec.write_run_record(out, record)
    first_loss, last_loss = loss_summary(res.losses)
    return {"name": cfg.name, "arch": cfg.arch, "step": res.step, "first_loss": first_loss,
            "last_loss": last_loss, "accuracy": acc, "videos": n_eval, "teachers": teacher_acc,
            "out": out, "eval_per_rank": list(scored.per_rank)}


def _write(path: Path, record, cfg, history, acc, n_eval, eval_path, teacher_acc,
           teacher_paths, skipped) -> None:
    """distill.h5: per-step loss/ce/kd/kd_teachers, the teachers, the eval accuracies."""
    from dalivssl.results import ResultsFile

    n_t = len(teacher_paths)
    col = lambda k: np.array([float(h[k]) for h in history], np.float64)  # noqa: E731
    kd_i = (np.stack([col(f"kd_{i}") for i in range(n_t)], 1) if n_t
            else np.zeros((len(history), 0)))
    with ResultsFile(path, "w") as rf:
        rf.set_meta(command="distill", record=record.to_dict(), config=record.settings)
        rf.write("distill", "step", col("step").astype(np.int64))
        rf.write("distill", "epoch", col("epoch").astype(np.int64))
        rf.write("distill", "loss", col("loss"), formula="ce + sum_i KL_i (T = 1)"
                 if cfg.kd_loss == "paper" else "ce + alpha * sum_i T^2 KL_i")
        rf.write("distill", "ce", col("ce"))
        rf.write("distill", "kd", col("kd"))
        rf.write("distill", "kd_teachers", kd_i)
        if teacher_paths:
            rf.write("distill", "teachers", [str(Path(p).resolve()) for p in teacher_paths])
        rf.write("eval", "accuracy", acc, videos=n_eval, clips=cfg.eval_clips,
                 data=str(eval_path), skipped=sum(skipped.values()))
        if teacher_acc:
            rf.write("eval", "teacher_accuracy", np.array(list(teacher_acc.values())),
                     names=list(teacher_acc))


def _summary(run_dir) -> dict:
    """A finished run's result, read back from its distill.h5 (what ``run_distill`` returns)."""
    from dalivssl.engine.fit import loss_summary
    from dalivssl.results import ResultsFile

    with ResultsFile(Path(run_dir) / RESULTS_NAME, "r") as rf:
        meta, losses = rf.meta(), [float(v) for v in rf.read("distill", "loss")]
        acc, videos = float(rf.read("eval", "accuracy")), rf.attrs("eval", "accuracy")["videos"]
        teachers = ({} if not rf.has("eval", "teacher_accuracy") else
                    dict(zip(rf.attrs("eval", "teacher_accuracy")["names"],
                             map(float, rf.read("eval", "teacher_accuracy")))))
        steps = [int(s) for s in rf.read("distill", "step")]
    first, last = loss_summary(losses)
    return {"name": meta["record"]["name"], "arch": meta["record"]["arch"],
            "step": steps[-1] if steps else 0,
            "first_loss": first, "last_loss": last, "accuracy": acc, "videos": int(videos),
            "teachers": teachers, "out": Path(run_dir)}


def _metrics(run_dir) -> list[dict]:
    """What the study reads of a distillation: [{metric 'top1', value}], the student's video
    top-1 in its distill.h5."""
    from dalivssl.results import ResultsFile

    with ResultsFile(Path(run_dir) / RESULTS_NAME, "r") as rf:
        return [{"metric": "top1", "value": float(rf.read("eval", "accuracy"))}]


SPEC = RunSpec(name="distill", config=DistillConfig, artifact="checkpoint.pt",
               resume_keys=RESUME_KEYS, outputs=OUTPUTS, run=_run, metrics=_metrics, check=_check)
