"""Pretext tasks (contract C6): one module per task, each with

- ``SPEC``: sampler name, default sampler options (``complexity`` names the benchmark's knob,
  ``levels`` its values C1 < C2 < C3 for the study),
  default optimiser / schedule (from the original, scaled for small batches), ``sync_bn``
  (BatchNorm synchronised across processes under DDP, as the original);
- ``build_head(backbone, **opts) -> nn.Module`` (may hold a MoCo key encoder and queue);
- ``step(backbone, head, batch) -> dict`` with at least ``'loss'``;
- ``ORIGINAL``: the original's value of each setting ("head.dim", "lr", …) for ``--explain``;
- ``DIFFERENCES``: the known differences from the original, one line each;
- ``DEMO`` (optional): sampler/head overrides of the demo preset (below);
- ``HEAD_RANGES`` (optional): {head option: rule} of its numeric options (:data:`RULES`), checked
  before anything is built (:func:`check_head_values`), by ``--explain`` too;
- ``PAPER`` (optional): head/sampler values of the benchmark's protocol (``protocol: paper``,
  Kumar et al. arXiv 2306.06010: supp. C.3 and §4), beyond the sampler's own ``protocol``;
  ``--explain`` lists them under "Paper protocol" beside the augmentation.

Demo preset: with no ``--data`` the trainer runs the embedded synthetic dataset on CPU for two
minutes; a few settings that are not the originals' make those first steps count. They apply
only then (``demo_overrides``), explicit ``--set`` values win, the run says so on screen and its
config.yaml records the values like every other setting. With ``--data`` every task runs with
its original's settings.
"""
import inspect

from dalivssl.tasks import cvrl, prp, rotnet, rspnet, tdl, vcop, videomae

TASKS = {"rotnet": rotnet, "vcop": vcop, "prp": prp, "cvrl": cvrl, "tdl": tdl, "rspnet": rspnet,
         "videomae": videomae}

# Demo-preset backbone options, per arch. ShuffleNet's zero-γ init: with γ = 1 its 13 residual
# adds grow untrained features to |f| ≈ 66 at 16×64² and SGD at the tasks' small lrs overshoots
# (models/shufflenet3d.py); the reference init (Efficient-3DCNNs) has γ = 1.
DEMO_BACKBONE = {"shufflenet": {"zero_init_residual": True}}
SUB_OPTIONS = ("sampler", "head", "backbone")
# parameters of a sampler, head or backbone builder that the run supplies (never options)
RUN_PARAMS = frozenset({"self", "backbone", "clip_len", "size", "augment", "unknown",
                        "num_classes", "net", "kwargs", "kw"})


# the range rules of HEAD_RANGES: name -> (type, test, words)
RULES = {"int>=1": (int, lambda v: v >= 1, ">= 1"), ">0": (float, lambda v: v > 0, "> 0"),
         ">=0": (float, lambda v: v >= 0, ">= 0"),
         "[0,1)": (float, lambda v: 0 <= v < 1, "in [0, 1)")}


def check_head_values(task_name: str, head: dict) -> None:
    """ValueError naming the option, its value and its range (the form of
    ``models.heads.check_at_least``) when a head option the run sets breaks the task's
    ``HEAD_RANGES`` (e.g. TDL's ``queue_size: 0``, a temperature of 0)."""
    ranges = getattr(get_task(task_name), "HEAD_RANGES", {})
    for key, rule in ranges.items():
        kind, test, words = RULES[rule]
        value = head.get(key)
        if value is None:
            continue
        ok_type = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float
                                                              else int)
        if not ok_type:
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"{task_name} head: {key} must be {noun}, got {value!r}")
        if not test(value):
            raise ValueError(f"{task_name} head: {key} must be {words}, got {value!r}")


def get_task(name: str):
    """The task module ``name``; DalivsslError listing the valid names otherwise."""
    from dalivssl.errors import unknown_name

    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name]


def demo_overrides(task_name: str, arch: str | None = None) -> dict:
    """{"sampler": {…}, "head": {…}, "backbone": {…}}: the demo preset of ``task_name`` (its
    ``DEMO``) and of ``arch`` (``DEMO_BACKBONE``); empty dicts where the preset changes nothing."""
    demo = getattr(get_task(task_name), "DEMO", {})
    out = {k: dict(demo.get(k, {})) for k in SUB_OPTIONS}
    out["backbone"] = {**DEMO_BACKBONE.get(arch, {}), **out["backbone"]}
    return out



def dataset_overrides(task_name: str, manifest) -> dict:
    """The task's per-dataset option defaults (``DATASET``, keyed by the manifest's meta
    'format', e.g. VideoMAE's sampling rate 2 on SSv2): {"sampler": {…}, …}."""
    fmt = (getattr(manifest, "meta", None) or {}).get("format")
    own = getattr(get_task(task_name), "DATASET", {}).get(fmt, {})
    return {k: dict(own.get(k, {})) for k in SUB_OPTIONS}


def paper_overrides(task_name: str) -> dict:
    """{"sampler": {…}, "head": {…}, "backbone": {…}} of ``protocol: paper``: the sampler's
    ``protocol='paper'`` (supp. C.3 augmentation) and the task's ``PAPER`` (TDL: K = 500)."""
    paper = getattr(get_task(task_name), "PAPER", {})
    out = {k: dict(paper.get(k, {})) for k in SUB_OPTIONS}
    out["sampler"] = {"protocol": "paper", **out["sampler"]}
    return out


def resolve_options(cfg) -> dict:
    """The option dicts a run of ``cfg`` (a PretrainConfig) uses, each lowest to highest: SPEC
    (sampler_opts) < demo preset (only when ``cfg.data`` is None) < the paper's
    values (``cfg.protocol == 'paper'``, :func:`paper_overrides`) < the config's own
    ``sampler`` / ``head`` / ``backbone``. Returns {"sampler", "head", "backbone": dicts, "demo":
    the preset values that took effect ({} with --data or when all were overridden)}. Head values
    the trainer takes from the run (num_classes, clip_len, …) are added later, under these."""
    spec = get_task(cfg.task).SPEC
    demo = demo_overrides(cfg.task, cfg.arch) if cfg.data is None else {}
    paper = (paper_overrides(cfg.task) if getattr(cfg, "protocol", "original") == "paper"
             else {})
    base = {"sampler": spec.get("sampler_opts", {}), "head": {}, "backbone": {}}
    out: dict = {"demo": {}}
    for key in SUB_OPTIONS:
        own = dict(getattr(cfg, key, None) or {})
        preset = {k: v for k, v in demo.get(key, {}).items() if k not in own}
        out[key] = {**base[key], **preset, **paper.get(key, {}), **own}
        preset = {k: v for k, v in preset.items() if k not in paper.get(key, {})}
        out["demo"].update({f"{key}.{k}": v for k, v in preset.items()})
    return out


def option_defaults(fn, skip=RUN_PARAMS) -> dict:
    """{option: default} of a sampler, head or backbone builder ``fn``: its keyword parameters
    with a default, less ``skip`` (what the run supplies)."""
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if n not in skip and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def head_context(build_head, cfg, sampler, sampler_opts: dict, world: int) -> dict:
    """Values ``build_head`` may take from the run of ``cfg`` (a PretrainConfig): sampler
    options of the same name (e.g. RSPNet's speeds), num_classes / num_clips of the sampler,
    clip_len, size, batch sizes."""
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
