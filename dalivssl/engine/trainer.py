"""Pretraining's parts: a pretext run built from a :class:`dalivssl.config.PretrainConfig`
(``dalivssl.runs.pretrain`` runs it through the driver with the one loop, ``engine.fit.fit``).

``_build(cfg)`` builds the loader (``pipelines.loader.PretextLoader``, sharded per rank), the
backbone (``models``), head and step (``dalivssl.tasks``), the optimiser from the task's SPEC
unless the config overrides it, and the per-step schedule; ``fit`` does the rest.

Outputs in the run dir: ``checkpoint.pt`` (contract C7 + the run record; rewritten atomically
every ``ckpt_every`` steps and at the end), ``config.yaml`` (resolved; replayable with
``--config``), ``record.json``, ``log.csv``, ``tb/`` and ``summary.json``. The dir is locked while
the run is alive; ``--resume`` refuses settings it cannot honour.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dalivssl.config import PretrainConfig, check_options, to_dict
from dalivssl.engine.fit import LRFactor, make_scheduler, seed_all
from dalivssl.engine.optim import build_optimizer, resolve_optim
from dalivssl.errors import DalivsslError

__all__ = ["TaskModel", "LRFactor", "RESUME_KEYS"]

# settings a resumed pretraining must share with the stored run (anything else, e.g. more
# steps, is honoured and stated)
RESUME_KEYS = ("task", "arch", "data_hash", "clip", "seed", "batch_size", "subset", "optimizer",
               "lr", "momentum", "weight_decay", "schedule", "warmup_steps", "milestones",
               "gamma", "min_lr_ratio", "grad_clip", "sampler", "head", "amp", "threads",
               "dali_threads")  # thread counts change the numbers (reductions, DALI order)


class TaskModel(nn.Module):
    """backbone + head; ``forward(batch)`` runs the task's step so that DDP sees one forward."""

    def __init__(self, task, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self._step = task.step

    def forward(self, batch) -> dict:
        return self._step(self.backbone, self.head, batch)

    def load_run_state(self, ckpt: dict) -> None:
        self.backbone.load_state_dict(ckpt["backbone"])
        self.head.load_state_dict(ckpt["head"])


# ---------------------------------------------------------------------------------- optimiser
def build_scheduler(optimizer, opt: dict, total_steps: int):
    return make_scheduler(optimizer, opt["schedule"], total_steps, opt["warmup_steps"],
                          opt["milestones"], opt["gamma"], opt["min_lr_ratio"])


# ---------------------------------------------------------------------------------- building
def _manifest(cfg: PretrainConfig):
    """The training manifest (its ``source`` attribute: the file it came from, the embedded
    dataset's included, for the run record), nested-subset when ``cfg.subset``."""
    from dalivssl.data.synth import resolve_manifest

    path, manifest = resolve_manifest(cfg.data or None, "train")
    if cfg.subset:
        from dalivssl.data.subsets import nested_subsets

        manifest = nested_subsets(manifest, [cfg.subset], seed=cfg.seed)[cfg.subset]
    manifest.source = str(path)
    return manifest


def _check_input_size(backbone, cfg) -> None:
    """One tiny forward: a clip smaller than the arch's total stride fails here, in one line."""
    backbone.eval()
    try:
        with torch.no_grad():
            backbone.forward_map(torch.zeros(1, 3, cfg.clip_len, cfg.size, cfg.size))
    except (RuntimeError, ValueError) as exc:
        raise DalivsslError(f"arch {cfg.arch!r} cannot take {cfg.clip_len}-frame clips at "
                            f"{cfg.size} px (too small for its strides: "
                            f"{str(exc).splitlines()[0][:100]}); raise --clip-len/--size") from None
    finally:
        backbone.train()


def _summary_table(summary: dict):
    """The end-of-run table on stdout (printed with --no-progress too: it is the run's result)."""
    from rich.table import Table

    from dalivssl.console import stdout_console

    t = Table(title=f"pretrain {summary['name']} ({summary['task']} / {summary['arch']})",
              show_header=False)
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
    stdout_console().print(t)


def check_task_options(cfg: PretrainConfig, opts: dict):
    """The sampler and head options of a pretrain run (``opts``: ``tasks.resolve_options``) checked
    before anything is built, by the real run and by ``--explain`` alike: unknown keys are one
    line with the valid ones, and the sampler is built once so that its values fail here, not
    blamed on the dataset by the loader. Returns the sampler."""
    from dalivssl.tasks import check_head_values, get_task
    from pipelines.samplers import SAMPLERS

    task = get_task(cfg.task)
    make = SAMPLERS[task.SPEC["sampler"]]
    check_options(f"{cfg.task} sampler", make, opts["sampler"],
                  reserved=("clip_len", "size", "augment"))
    check_options(f"{cfg.task} head", task.build_head, cfg.head)
    try:
        check_head_values(cfg.task, opts["head"])
        return make(clip_len=cfg.clip_len, size=cfg.size, **opts["sampler"])
    except (TypeError, ValueError) as exc:
        raise DalivsslError(str(exc)) from None


def _build(cfg: PretrainConfig, task, dist):
    """-> (loader, model, optimizer, scheduler, resolved cfg, opt, total_steps)."""
    from dalivssl.devices import dali_threads
    from models import create_backbone
    from pipelines.loader import LoaderError, PretextLoader

    spec = task.SPEC
    from dalivssl.tasks import dataset_overrides, head_context, option_defaults, resolve_options

    manifest = _manifest(cfg)
    opts = resolve_options(cfg)  # SPEC < demo preset (no --data) < paper < config
    for key, vals in dataset_overrides(cfg.task, manifest).items():  # under the config's own
        own = dict(getattr(cfg, key, None) or {})
        opts[key].update({k: v for k, v in vals.items() if k not in own})
    sampler_opts = opts["sampler"]
    check_task_options(cfg, opts)
    from dalivssl.data.verify import routes

    try:
        loader = PretextLoader(spec["sampler"], manifest, cfg.batch_size, device=cfg.device,
                               clip_len=cfg.clip_len, size=cfg.size, seed=cfg.seed,
                               shard=(dist.rank, dist.world),
                               num_threads=dali_threads(cfg.device, cfg.dali_threads),
                               router=routes, **sampler_opts)
    except LoaderError as exc:
        raise DalivsslError(f"{cfg.data or 'synthetic dataset'}: {exc}") from None
    total_steps = cfg.max_steps if cfg.max_steps else cfg.epochs * len(loader)

    seed_all(cfg.seed)  # identical init on every rank (seed, not seed + rank)
    backbone = create_backbone(cfg.arch, **opts["backbone"])
    _check_input_size(backbone, cfg)
    ctx = head_context(task.build_head, cfg, loader.sampler, sampler_opts, dist.world)
    head_opts = {**ctx, **opts["head"]}
    try:
        head = task.build_head(backbone, **head_opts)
    except ValueError as exc:  # a head option of the right name but a bad value
        raise DalivsslError(f"{cfg.task} head: {exc}") from None
    model = TaskModel(task, backbone, head).to(torch.device(dist.device))
    opt = resolve_optim(cfg, spec, cfg.batch_size * dist.world, total_steps, len(loader))
    try:
        optimizer = build_optimizer(model, opt, spec.get("lr_mult"))
    except ValueError as exc:  # torch's own range checks (e.g. betas)
        raise DalivsslError(f"{cfg.task} optimiser: {exc}") from None
    scheduler = build_scheduler(optimizer, opt, total_steps)
    resolved = dataclasses.replace(
        cfg, out=str(cfg.run_dir), name=cfg.name or f"{cfg.task}_{cfg.arch}",
        optimizer=opt["optimizer"], lr=opt["lr"], momentum=opt["momentum"],
        weight_decay=opt["weight_decay"], schedule=opt["schedule"],
        warmup_steps=opt["warmup_steps"], milestones=opt["milestones"], gamma=opt["gamma"],
        min_lr_ratio=opt["min_lr_ratio"], grad_clip=opt["grad_clip"], sampler=sampler_opts,
        # every head setting in effect, defaults included: a config.yaml stays unambiguous when
        # a default changes between versions
        head={**option_defaults(task.build_head), **head_opts}, backbone=opts["backbone"])
    return loader, model, optimizer, scheduler, resolved, opt, total_steps, opts


def run_record(resolved: PretrainConfig, loader, status: str = "running",
               device_info: dict | None = None):
    """The run record of a pretraining (clip settings are what the loader feeds the model)."""
    from dalivssl import record as rec

    return rec.new_record(
        "pretrain", resolved.name, data_path=loader.manifest.source, manifest=loader.manifest,
        device=resolved.device, arch=resolved.arch, task=resolved.task,
        clip=rec.ClipSettings(resolved.clip_len, resolved.size, loader.normalize),
        seed=resolved.seed, settings={**to_dict(resolved), "device_info": device_info or {}},
        status=status)
