"""``dalivssl pretrain --explain``: the settings a run would use, each beside the paper
protocol's value (Kumar et al., ``protocol: paper``) and the original's (the task's
``ORIGINAL``), then the paper's augmentation with the values the paper does not give, and the
task's known ``DIFFERENCES``. ``dalivssl finetune --explain``: the same table
(:func:`table`) for finetuning and the linear probe (:func:`explain_finetune`)."""
from __future__ import annotations

import inspect

from dalivssl.tasks import RUN_PARAMS, option_defaults

RUN_KEYS = ("clip_len", "size", "batch_size", "epochs")
OPTIM_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup", "milestones",
              "gamma", "min_lr_ratio", "grad_clip", "sync_bn")


def demo_note(demo: dict) -> str:
    """One line saying which demo-preset values a run uses."""
    items = ", ".join(f"{k}={_fmt(v)}" for k, v in demo.items())
    return (f"demo preset (no --data): {items}; not the original's, to make the CPU demo learn "
            f"in minutes. With --data every task runs with its original's settings.")


def settings(cfg) -> tuple[dict, dict, object]:
    """({setting name: value this run uses}, demo-preset values in effect, the sampler) for
    ``cfg`` (a PretrainConfig), resolved and checked as the trainer does (one process)."""
    from dalivssl.engine.optim import resolve_optim
    from dalivssl.engine.trainer import check_task_options
    from dalivssl.tasks import get_task, head_context, resolve_options

    task = get_task(cfg.task)
    spec = task.SPEC
    opts = resolve_options(cfg)
    sampler = check_task_options(cfg, opts)  # what a real run would refuse, refused here too
    out = {k: getattr(cfg, k) for k in RUN_KEYS}
    o = resolve_optim(cfg, spec, cfg.batch_size, total_steps=1)
    o["warmup"] = (f"{cfg.warmup_steps} steps" if cfg.warmup_steps is not None
                   else spec.get("schedule", {}).get("warmup", 0.0))
    o["sync_bn"] = bool(spec.get("sync_bn", False))
    out.update({k: o[k] for k in OPTIM_KEYS})
    sampler_vals = {**option_defaults(type(sampler).__init__), **opts["sampler"]}
    ctx = head_context(task.build_head, cfg, sampler, opts["sampler"], 1)
    head_vals = {**option_defaults(task.build_head, RUN_PARAMS - {"clip_len", "size",
                                                                  "num_classes"}),
                 **ctx, **opts["head"]}
    backbone_vals = {**_backbone_defaults(cfg.arch), **opts["backbone"]}
    for prefix, vals in (("sampler", sampler_vals), ("head", head_vals),
                         ("backbone", backbone_vals)):
        out.update({f"{prefix}.{k}": v for k, v in vals.items()})
    return out, opts["demo"], sampler


def _backbone_defaults(arch: str) -> dict:
    from models import BACKBONES

    builder = BACKBONES[arch]
    return option_defaults(builder.__init__ if inspect.isclass(builder) else builder,
                           RUN_PARAMS | {"dropout"})


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _same(a, b) -> bool:
    """a (this run) equals b (the original; a string may add a note after the value)."""
    if isinstance(b, str) and not isinstance(a, str):
        return _fmt(a) == b.split(" ")[0]
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def table(vals: dict, paper: dict, original: dict) -> list[str]:
    """Rows 'setting | this run | paper | original | ≠' (pretrain and finetune --explain): every
    key of ``vals`` and ``paper``; '–' where a column has no value; '≠' where this run differs
    from the original."""
    rows = [("setting", "this run", "paper", "original", "")]
    for k in dict.fromkeys([*vals, *paper]):
        v, p = vals.get(k, "–"), paper.get(k, "–")
        if k in original:
            mark = "" if _same(v, original[k]) else "≠"
            rows.append((k, _fmt(v), _fmt(p), _fmt(original[k]), mark))
        else:
            rows.append((k, _fmt(v), _fmt(p), "–", ""))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d:<{w[3]}}  {e}".rstrip()
            for a, b, c, d, e in rows]


def paper_lines(cfg) -> list[str]:
    """The paper protocol's augmentation for ``cfg.task`` (supp. C.3), each value marked
    "paper gives no value" with where the value used comes from."""
    from dalivssl.tasks import get_task
    from pipelines.samplers import SAMPLERS
    from pipelines.samplers.base import GAMMA_CHOICE, PAPER_CHOICES

    task = get_task(cfg.task)
    own = [f"  - {part}.{k}: {v} (the paper's value, §4)"
           for part, opts in getattr(task, "PAPER", {}).items() for k, v in opts.items()]
    what = getattr(SAMPLERS[task.SPEC["sampler"]], "paper_augment", False)
    if not what:
        return ["  the paper keeps this task's own augmentation (supp. C.3)", *own]
    choices = PAPER_CHOICES if what is True else (GAMMA_CHOICE,)
    head = ("random rotation, resize, random crop, colour jitter, horizontal flip" if what is True
            else "the original's augmentation plus gamma adjustment")
    return [f"  supp. C.3: {head}"] + [f"  - {a}: {v} (paper gives no value; from {src})"
                                      for a, v, src in choices] + own


def explain(cfg) -> str:
    """Text table: setting, this run's value, the paper protocol's, the original's, '≠' where
    this run differs from the original; then the paper's augmentation, the task's known
    differences and, without --data, the demo preset."""
    import dataclasses

    from dalivssl.tasks import get_task

    task = get_task(cfg.task)
    vals, demo, sampler = settings(cfg)
    paper, _, _ = settings(dataclasses.replace(cfg, protocol="paper"))
    original = dict(getattr(task, "ORIGINAL", {}))
    for k, v in _backbone_defaults(cfg.arch).items():  # the original: the reference default
        original.setdefault(f"backbone.{k}", v)
    original.setdefault("sampler.protocol", "original")
    data = cfg.data or "the embedded synthetic dataset" + (" (demo preset)" if demo else "")
    lines = [f"pretrain {cfg.task} / {cfg.arch} on {data} (protocol {cfg.protocol})"]
    need, fix = sampler.need()  # the sampler's min_frames, stated (pipelines.samplers.base)
    lines += [f"frames a video needs: {need}" + (f"; lowered by {fix}" if fix else ""), ""]
    lines += table(vals, paper, original)
    lines += ["", "Paper protocol (Kumar et al., protocol: paper):", *paper_lines(cfg)]
    lines += ["", "Known differences from the original:"]
    lines += [f"  - {d}" for d in getattr(task, "DIFFERENCES", ())]
    if demo:
        lines += ["", demo_note(demo)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ finetune
NO_VALUE = "paper gives no value"
CENTRE = "resize+centre-crop"
# the original finetuning recipe as the code records it: VCOP's ``ft_classify.py``, the
# benchmark's downstream protocol (engine/finetune.py; lr and SGD: FinetuneConfig); '–' for
# the settings no file here records
FT_ORIGINAL = {"train_crop": "resize+random-crop+flip", "eval_crop": CENTRE,
               "optimizer": "sgd", "momentum": 0.9, "lr": 1e-3}
# Kumar et al.: "For finetuning the augmentations are Resize and Center Crop for all" (supp.
# C.3), input 16×112² and full finetuning (§4); no batch size, lr or finetuning epochs
FT_PAPER = {"train_crop": CENTRE, "eval_crop": CENTRE, "clip_len": 16, "size": 112,
            "linear_probe": False}
FT_KEYS = ("clip_len", "size", "normalize", "linear_probe", "l2_norm", "optimizer", "lr",
           "momentum", "weight_decay", "epochs", "max_steps", "batch_size", "eval_clips",
           "dropout")


def train_crop(cfg, flip: bool) -> str:
    """What the finetuning sampler does to a training clip, read off the sampler the run builds
    (``EvalSampler(random=True)``, engine.finetune.train_loader)."""
    from pipelines.samplers.eval import EvalSampler

    s = EvalSampler(cfg.clip_len, cfg.size, True, protocol=cfg.protocol, random=True, flip=flip)
    return ("resize+random-crop" + ("+flip" if s.flip else "")) if s.jitter else CENTRE


def finetune_settings(cfg, flip: bool) -> dict:
    """{setting: value} a finetuning run of ``cfg`` (resolved, clip settings filled in) uses."""
    cfg = cfg.resolved()
    return {"train_crop": train_crop(cfg, flip), "eval_crop": CENTRE,
            **{k: getattr(cfg, k) for k in FT_KEYS}}


def explain_finetune(cfg, data, parent=None) -> str:
    """``finetune --explain``: this run's settings beside the paper protocol's (supp. C.3:
    resize and centre crop; "paper gives no value" where Kumar et al. state none) and the
    original recipe's (VCOP ``ft_classify.py``); '≠' where this run differs from the original.
    ``cfg``: the FinetuneConfig the run would use, its clip settings resolved from ``parent``'s
    record (record.resolve_clip); ``data``: engine.finetune.FinetuneData."""
    flip = cfg.flip if cfg.flip is not None else data.train.flip_safe
    vals = finetune_settings(cfg, flip)
    paper = {k: FT_PAPER.get(k, NO_VALUE) for k in vals}
    kind = "linear probe" if cfg.linear_probe else "finetune"
    src = f"{parent.name}'s record" if parent is not None else "the defaults (random init)"
    lines = [f"{kind} {cfg.arch} from {parent.name if parent else 'random init'} on "
             f"{data.train_path} → test {data.test_path} (protocol {cfg.protocol})",
             f"clip settings: {cfg.clip_len}×{cfg.size}² {cfg.normalize}, from {src} "
             f"(record.resolve_clip; a --clip-len/--size/--normalize given wins, noted above)",
             f"flip: {flip}" + ("" if cfg.flip is not None else
                                " (the train manifest's flip_safe: off where classes name a "
                                "left/right direction)"), ""]
    lines += table(vals, paper, FT_ORIGINAL)
    lines += ["", "Paper protocol (Kumar et al., protocol: paper): \"For finetuning the "
              "augmentations are Resize and Center Crop for all\" (supp. C.3); input 16×112², "
              "full finetuning (§4); it states no batch size, lr or finetuning epochs.",
              "Original: VCOP's ft_classify.py (random crop + flip; SGD momentum 0.9, lr 1e-3); "
              "'–' where no value is recorded here."]
    return "\n".join(lines)
