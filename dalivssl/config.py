"""Typed, flat run configuration: one YAML per experiment + ``--set key=value`` overrides.

A config is a frozen dataclass with flat fields (no nesting, no ``_base_`` chains). The three
sub-configs, ``sampler``, ``head`` and ``backbone``, are plain option dicts passed to the pretext
sampler, the task's ``build_head`` and ``create_backbone``; they are checked when the run is built
(:func:`check_options`). Unknown keys and wrongly typed values raise :class:`DalivsslError`.

Precedence: dataclass defaults < YAML file < explicit CLI flags < ``--set`` overrides.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dalivssl.errors import DalivsslError

OPTIMIZERS = ("sgd", "adamw")  # names for pretraining and finetuning (engine.optim.OptimSpec)
SUB_CONFIGS = ("sampler", "head", "backbone")  # dict-valued fields, keys checked at build time


def _check_ranges(cfg, at_least_one=(), positive=(), non_negative=()):
    """One-line errors for values no run can use (a None value means "the default": skipped)."""
    for keys, ok, want in ((at_least_one, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0,
                           "> 0"), (non_negative, lambda v: v >= 0, ">= 0")):
        for key in keys:
            value = getattr(cfg, key)
            if value is not None and not ok(value):
                raise DalivsslError(f"{key} must be {want}, got {value}")
    return cfg


KD_LOSSES = ("hinton", "paper")  # DistillConfig.kd_loss (engine.distill.kd_loss)


def _check_protocol(protocol: str) -> None:
    from pipelines.samplers.base import PROTOCOLS  # the one list (the samplers hold both recipes)

    if protocol not in PROTOCOLS:
        raise DalivsslError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


# (low, high, low included, high included): fractions and factors a schedule or optimiser can use
INTERVALS = {"gamma": (0, 1, False, True), "min_lr_ratio": (0, 1, True, True),
             "momentum": (0, 1, True, False), "milestones": (0, 1, False, False)}


def _check_intervals(cfg, keys):
    """One-line errors for values outside :data:`INTERVALS` (a tuple: every element checked)."""
    for key in keys:
        value = getattr(cfg, key, None)
        lo, hi, lo_in, hi_in = INTERVALS[key]
        for v in value if isinstance(value, tuple) else (value,):
            if v is not None and not ((v >= lo if lo_in else v > lo) and
                                      (v <= hi if hi_in else v < hi)):
                raise DalivsslError(f"{key} must be in {'[' if lo_in else '('}{lo}, {hi}"
                                    f"{']' if hi_in else ')'}, got {v}")
    return cfg


@dataclass(frozen=True)
class PretrainConfig:
    """``dalivssl pretrain``. CPU-friendly defaults: 16-frame clips at 64 px (the paper uses 16 at
    112); ``None`` optimiser fields mean "the task's SPEC value"."""

    task: str = "vcop"
    arch: str = "shufflenet"
    name: str | None = None           # human name for tables and plots; None = <task>_<arch>
    data: str | None = None           # train manifest; None = embedded synthetic dataset
    subset: int | None = None         # number of training videos (nested, class-balanced)
    epochs: int = 2                   # 2 epochs of the embedded dataset: 56 steps, ~2 min on 2 cores
    max_steps: int | None = None      # stops after this many optimiser steps (wins over epochs)
    batch_size: int = 8               # per process
    clip_len: int = 16
    size: int = 64
    seed: int = 0
    device: str = "auto"              # auto | cpu | gpu (auto: the GPU when usable, else CPU)
    out: str | None = None            # run dir; None = runs/pretrain/<task>_<arch>
    threads: int = 2                  # torch intra-op threads (CPU work)
    dali_threads: int | None = None   # DALI's threads; None: 8 on GPU (NVDEC sessions), 2 on CPU
    optimizer: str | None = None      # sgd | adamw
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None       # constant | step | cosine
    warmup_steps: int | None = None
    milestones: tuple[float, ...] | None = None  # 'step' decay points, fractions of total steps
    gamma: float | None = None        # 'step' decay factor
    min_lr_ratio: float | None = None  # 'cosine' floor as a fraction of lr
    grad_clip: float | None = None    # max gradient norm
    amp: bool = False                 # bf16 autocast of the training forward (GPU, or CPU)
    deterministic: bool = False       # torch.use_deterministic_algorithms: bitwise resume on CPU
    ckpt_every: int = 50              # steps between checkpoints (and one at the end)
    log_every: int = 5
    tensorboard: bool = True
    progress: bool = True
    sampler: dict = field(default_factory=dict)  # task sampler options (over SPEC defaults)
    head: dict = field(default_factory=dict)     # task head options (over SPEC defaults)
    backbone: dict = field(default_factory=dict)  # create_backbone options (zero_init_residual…)
    # original: each task as its original repository; paper: the benchmark's changes (Kumar et
    # al. supp. C.3 augmentation, TDL K = 500; tasks.paper_overrides)
    protocol: str = "original"
    warmup_epochs: float | None = None  # warmup in epochs (VideoMAE's 40); wins over warmup_steps
    keep_epochs: tuple[int, ...] = ()  # also keep epoch_<E>.pt after these epochs (stages)

    def check(self) -> "PretrainConfig":
        """One-line errors for values no run can use (before any work)."""
        _check_protocol(self.protocol)
        for e in self.keep_epochs:
            if not 1 <= e <= self.epochs:
                raise DalivsslError(f"keep_epochs: {e} is not an epoch of this run "
                                    f"(1..{self.epochs})")
        _check_ranges(self, ("epochs", "max_steps", "batch_size", "clip_len", "size", "subset",
                             "threads", "dali_threads", "ckpt_every", "log_every"),
                      ("lr",), ("weight_decay", "momentum", "grad_clip", "warmup_steps",
                                "warmup_epochs"))
        return _check_intervals(self, ("gamma", "min_lr_ratio", "momentum", "milestones"))

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs/pretrain") / f"{self.task}_{self.arch}"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a finetuning run (stored in its record, checkpoint and results).

    lr: base learning rate (VCOP's finetuning lr, 1e-3). The head's effective step scales with
    ‖f‖² of the un-normalised pooled features (~9–18 for random backbones at 16×64²); with
    ``l2_norm`` the features have unit norm and a probe wants a much larger lr (CLI: 0.1).
    """

    arch: str = "shufflenet"
    name: str | None = None
    linear_probe: bool = False
    l2_norm: bool = False
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float | None = None  # None: 1e-3, or 0.1 with l2_norm (unit-norm features)
    optimizer: str = "sgd"  # "sgd" (momentum) or "adamw"
    head_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 finetuning, 0 for a linear probe
    dropout: float = 0.0
    flip: bool | None = None  # random horizontal flip of training clips; None: Manifest.flip_safe
    clip_len: int = 16
    size: int = 64
    eval_clips: int = 10
    normalize: str = "imagenet"
    seed: int = 0
    device: str = "auto"
    threads: int = 2  # torch intra-op threads (CPU work)
    dali_threads: int | None = None  # DALI's threads; None: 8 on GPU, 2 on CPU (G5)
    pretrained: str | None = None  # checkpoint path (--checkpoint)
    random_init: bool = False  # start from random weights (--random-init; needs arch)
    # train manifest (its 'train' split when test_data is None) and test manifest; stored
    # resolved, so that a run's config.yaml replays it on the same data
    data: str | None = None
    test_data: str | None = None
    # paper: "Resize and Center Crop" for training and evaluation clips (supp. C.3)
    protocol: str = "original"
    ckpt_every: int = 50
    log_every: int = 5
    progress: bool = True
    amp: bool = False  # bf16 autocast of the training forward (GPU, or the CPU's bf16 kernels)

    def to_dict(self) -> dict:
        return to_dict(self)

    def resolved(self) -> "FinetuneConfig":
        """The defaults that depend on other settings filled in (what the run records)."""
        return dataclasses.replace(
            self, lr=self.lr if self.lr is not None else 0.1 if self.l2_norm else 1e-3,
            weight_decay=(self.weight_decay if self.weight_decay is not None
                          else 0.0 if self.linear_probe else 5e-4))

    def check(self) -> "FinetuneConfig":
        """One-line errors for values no run can use (before any work)."""
        _check_protocol(self.protocol)
        _check_ranges(self, ("epochs", "max_steps", "batch_size", "eval_clips", "clip_len", "size",
                             "threads", "dali_threads", "ckpt_every", "log_every"), ("lr",),
                      ("weight_decay", "momentum", "dropout", "head_lr_mult"))
        _check_intervals(self, ("momentum",))
        if self.dropout >= 1:
            raise DalivsslError(f"dropout must be < 1, got {self.dropout}")
        if self.optimizer not in OPTIMIZERS:
            raise DalivsslError(f"unknown optimizer {self.optimizer!r}; valid: "
                                f"{', '.join(OPTIMIZERS)}")
        return self


def _int_list(key: str, value) -> tuple[int, ...]:
    """'1,5,10' (flag text) or a list → a tuple of ints; one line otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(v) for v in parts if str(v).strip())
    except ValueError:
        raise DalivsslError(f"{key}: expected comma-separated integers, got {value!r}") from None


def _name_list(value) -> tuple[str, ...] | None:
    """'a,b' (flag text) or a list → a tuple of stripped names; None or empty: None."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    return tuple(p.strip() for p in parts if p.strip()) or None


def _check_choice(key: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise DalivsslError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def _check_normalize(value) -> None:
    from pipelines.types import NORMALIZE_MODES

    _check_choice("normalize", value, NORMALIZE_MODES)


@dataclass(frozen=True)
class RetrieveConfig:
    """``dalivssl retrieve``: nearest-neighbour retrieval (VCOP protocol). Clip settings None:
    the checkpoint's record (record.resolve_clip). ``topk``: a list, or flag text '1,5,10'."""

    checkpoint: str | None = None     # whose backbone gives the features
    random_init: bool = False         # a random backbone (baseline; needs arch)
    arch: str | None = None
    train: str | None = None          # gallery manifest; None (with test): the embedded dataset
    test: str | None = None           # query manifest
    clips: int = 10                   # evenly spaced clips per video, features averaged
    topk: tuple[int, ...] | str = (1, 5, 10, 20, 50)
    clip_len: int | None = None
    size: int | None = None
    normalize: str | None = None
    batch_size: int = 4
    out: str | None = None            # run dir; None = runs/retrieve/<name>
    cache_dir: str | None = None      # feature cache; None = $DALIVSSL_CACHE/features
    name: str | None = None
    device: str = "auto"
    threads: int = 2
    seed: int = 0
    progress: bool = True

    def check(self) -> "RetrieveConfig":
        """One-line errors for values no run can use; returns the config with ``topk`` parsed."""
        ks = _int_list("topk", self.topk)
        if not ks or any(k < 1 for k in ks):
            raise DalivsslError(f"topk values must be >= 1, got {self.topk!r}")
        _check_normalize(self.normalize)
        if bool(self.checkpoint) == bool(self.random_init):
            raise DalivsslError("give exactly one of --checkpoint PATH or --random-init "
                                "--arch NAME")
        if self.random_init and not self.arch:
            raise DalivsslError("--random-init needs --arch")
        if (self.train is None) != (self.test is None):
            raise DalivsslError("give both --train and --test, or neither (synthetic dataset)")
        _check_ranges(self, ("clips", "batch_size", "clip_len", "size", "threads"))
        return dataclasses.replace(self, topk=ks)


@dataclass(frozen=True)
class RobustnessConfig:
    """``dalivssl robustness``: R_s per noise × severity of finetuned checkpoints (Kumar et al.;
    Schiappa et al.). ``noises``/``severities``: lists, or flag text ('gaussian,shot', '1-5')."""

    checkpoints: tuple[str, ...] = ()
    data: str | None = None           # test manifest; None: the embedded dataset's test split
    noises: tuple[str, ...] | str = ()      # () = all (pipelines.noise.NOISES)
    severities: tuple[int, ...] | str = ()  # () = all (pipelines.noise.SEVERITIES)
    constants: str = "imagenet-c"     # imagenet-c | schiappa (pipelines.noise.CONSTANTS)
    rounding: str = "floor"           # floor (imagecorruptions' uint8 truncation) | round
    clips_per_video: int = 5
    batch_size: int = 4
    noise_at: str = "model"           # model | decoded (pipelines.noise.NOISE_AT)
    videos_per_cell: int | str = 0    # 0 = all, N = a class-balanced subset, 'paper'
    forward_clips: int | None = None  # clips per forward call; None: 64 on GPU, a cell on CPU
    out: str = "runs/robustness"
    device: str = "auto"
    decoder: str = "dali"             # dali | pyav (reference decoder)
    seed: int = 0                     # noise seed
    threads: int = 2                  # torch threads
    dali_threads: int | None = None   # DALI's threads; None: 8 on GPU, 2 on CPU
    progress: bool = True

    def check(self) -> "RobustnessConfig":
        """One-line errors for values no run can use; returns the config with the noise and
        severity lists parsed (severities sorted) and videos_per_cell an int unless 'paper'."""
        from pipelines.noise import (CONSTANTS, NOISE_AT, NOISES, ROUNDINGS, SEVERITIES,
                                     parse_noises, parse_severities)

        try:
            noises = parse_noises(self.noises or NOISES)
            sevs = parse_severities(self.severities or SEVERITIES)
        except ValueError as exc:
            raise DalivsslError(str(exc)) from None
        v = self.videos_per_cell
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if not (v == "paper" or (isinstance(v, int) and v >= 0)):
            raise DalivsslError(f"videos_per_cell: --videos-per-cell {v!r} is not an integer "
                                ">= 0 or 'paper'")
        cfg = dataclasses.replace(self, noises=noises, severities=sevs, videos_per_cell=v)
        if not cfg.checkpoints:
            raise DalivsslError("give at least one --checkpoint")
        _check_choice("constants", cfg.constants, tuple(CONSTANTS))
        _check_choice("rounding", cfg.rounding, ROUNDINGS)
        _check_choice("noise_at", cfg.noise_at, NOISE_AT)
        _check_choice("decoder", cfg.decoder, ("dali", "pyav"))
        return _check_ranges(cfg, ("clips_per_video", "batch_size", "forward_clips", "threads",
                                   "dali_threads"))


@dataclass(frozen=True)
class CKAConfig:
    """``dalivssl cka``: layer × layer minibatch linear CKA (Nguyen et al. ICLR 2021) of one or two
    checkpoints. Clip settings None: each checkpoint's record. ``layers``: a list or 'a,b'."""

    checkpoints: tuple[str, ...] = ()  # A (and B); one: the model against itself
    data: str | None = None            # manifest; None: the embedded dataset's test split
    layers: tuple[str, ...] | str | None = None    # of A (and B); None: backbone.cka_layers
    layers_b: tuple[str, ...] | str | None = None  # of B; None: as layers
    batches: int | None = None         # at most N batches; None: all
    batch_size: int = 16               # >= 4 (HSIC_1)
    clip_len: int | None = None
    size: int | None = None
    normalize: str | None = None
    out: str | None = None             # run dir; None = runs/cka/<A>_vs_<B>
    name: str | None = None
    device: str = "auto"
    threads: int = 2
    dali_threads: int | None = None    # DALI's threads; None: 8 on GPU, 2 on CPU
    seed: int = 0
    progress: bool = True

    def check(self) -> "CKAConfig":
        """One-line errors for values no run can use; returns the config with the layer lists
        parsed."""
        if not 1 <= len(self.checkpoints) <= 2:
            raise DalivsslError(f"--checkpoint takes one or two files, got "
                                f"{len(self.checkpoints)}")
        if self.batch_size < 4:
            raise DalivsslError(f"--batch-size must be >= 4 (HSIC_1 needs 4 examples), got "
                                f"{self.batch_size}")
        _check_normalize(self.normalize)
        _check_ranges(self, ("batches", "clip_len", "size", "threads", "dali_threads"))
        return dataclasses.replace(self, layers=_name_list(self.layers),
                                   layers_b=_name_list(self.layers_b))


# ------------------------------------------------------------ distill / export-logits (runs1)
@dataclass(frozen=True)
class DistillConfig:
    """``dalivssl distill``: multi-teacher KD into ``arch`` (Hinton et al. 2015; Kumar et al.).
    ``clip_len``/``size``/``normalize`` None: the first model teacher's record (else defaults)."""

    arch: str = "shufflenet"
    name: str | None = None
    teachers: tuple[str, ...] = ()
    teacher_logits: tuple[str, ...] = ()
    data: str | None = None
    eval_data: str | None = None
    epochs: int = 1
    max_steps: int | None = None
    temperature: float = 4.0
    alpha: float = 1.0
    # hinton: CE + α·Σ T²·KL at ``temperature``; paper: CE + Σ KL at T = 1 (Kumar et al. §4.4)
    kd_loss: str = "hinton"
    student_checkpoint: str | None = None  # start the student from this checkpoint's backbone
    lr: float = 1e-3          # Adam (AdamW without weight decay)
    batch_size: int = 8       # per process (under torchrun each rank takes its shard)
    clip_len: int | None = None
    size: int | None = None
    normalize: str | None = None
    eval_clips: int = 1
    seed: int = 0
    device: str = "auto"
    threads: int = 2                  # torch intra-op threads (CPU work)
    dali_threads: int | None = None   # DALI's threads; None: 8 on GPU (NVDEC sessions), 2 on CPU
    amp: bool = False  # bf16 autocast of the training forward (GPU, or the CPU's bf16 kernels)
    ckpt_every: int = 50
    log_every: int = 1
    progress: bool = True

    def check(self) -> "DistillConfig":
        if self.kd_loss not in KD_LOSSES:
            raise DalivsslError(f"kd_loss must be one of {', '.join(KD_LOSSES)}, got "
                                f"{self.kd_loss!r}")
        return _check_ranges(self, ("epochs", "max_steps", "batch_size", "eval_clips", "threads",
                                    "dali_threads", "clip_len", "size", "ckpt_every",
                                    "log_every"), ("lr", "temperature"), ("alpha",))


@dataclass(frozen=True)
class ExportLogitsConfig:
    """``dalivssl export-logits``: a finetuned checkpoint's video-level logits (the mean over
    ``clips`` evenly spaced clips) for every video of ``data``, written to ``output`` for
    ``distill --teacher-logits``. Clip settings are the checkpoint's (its run record)."""

    checkpoint: str | None = None    # required: a finetune checkpoint
    data: str | None = None          # manifest; None = the embedded synthetic train split
    output: str | None = None        # required: the HDF5 file to write
    clips: int = 10
    batch_size: int = 8
    device: str = "auto"
    dali_threads: int | None = None  # DALI's threads; None: 8 on GPU (NVDEC sessions), 2 on CPU

    def check(self) -> "ExportLogitsConfig":
        for key, flag in (("checkpoint", "--checkpoint"), ("output", "-o/--output")):
            if not getattr(self, key):
                raise DalivsslError(f"{key} is required: give {flag} (or {key}: in --config)")
        return _check_ranges(self, ("clips", "batch_size", "dali_threads"))
# ------------------------------------------------------------ end distill / export-logits


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value, tp):
    """Check/convert ``value`` to the annotation ``tp`` (int, float, str, bool, dict, optional,
    tuple[x, ...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except DalivsslError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise DalivsslError(f"config key {key!r}: expected a list, got {value!r}")
        return tuple(_coerce(key, v, elem) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    raise DalivsslError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def from_dict(cls, values: dict, base=None):
    """A new ``cls`` from ``base`` (or defaults) updated with ``values``; keys and types checked."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    current = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        if key not in hints:
            raise DalivsslError(f"unknown config key {key!r}; valid: {', '.join(names)}")
        value = _coerce(key, value, hints[key])
        if key in SUB_CONFIGS:
            value = {**current.get(key, {}), **value}
        current[key] = value
    return cls(**current)


def parse_set(items) -> dict:
    """``['lr=0.1', 'head.queue_size=500']`` -> ``{'lr': 0.1, 'head': {'queue_size': 500}}``.
    Values are YAML scalars/lists (``milestones=[0.5,0.75]``, ``amp=true``)."""
    import yaml

    out: dict = {}
    for item in items or ():
        if "=" not in item:
            raise DalivsslError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if "." in key:
            sub, opt = key.split(".", 1)
            if sub not in SUB_CONFIGS:
                raise DalivsslError(f"--set {item!r}: only {', '.join(SUB_CONFIGS)} take "
                                    "dotted keys")
            out.setdefault(sub, {})[opt] = value
        else:
            out[key] = value
    return out


def load_yaml(path) -> dict:
    """The mapping in a YAML config file (DalivsslError if missing or not a mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DalivsslError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DalivsslError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DalivsslError(f"{path}: config must be a mapping of key: value")
    return data


def resolve(cls, yaml_path=None, flags: dict | None = None, sets=None):
    """defaults < YAML < flags (None values ignored) < --set."""
    cfg = cls()
    if yaml_path:
        data = load_yaml(yaml_path)  # its errors name the file already
        try:
            cfg = from_dict(cls, data, cfg)
        except DalivsslError as exc:
            raise DalivsslError(f"{yaml_path}: {exc}") from None
    cfg = from_dict(cls, {k: v for k, v in (flags or {}).items() if v is not None}, cfg)
    return from_dict(cls, parse_set(sets), cfg)


def _plain(v):
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_dict(cfg) -> dict:
    """Plain dict (tuples as lists, also inside the option dicts) for YAML and checkpoints."""
    return _plain(dataclasses.asdict(cfg))


def save_yaml(cfg, path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_options(what: str, fn, options: dict, reserved=()) -> None:
    """Raise DalivsslError if ``options`` has a key ``fn`` does not accept (or a reserved one)."""
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and n not in reserved and n not in ("self", "backbone")]
    for key in options:
        if key in reserved or (not accepts_any and key not in params):
            raise DalivsslError(f"unknown {what} option {key!r}; valid: {', '.join(valid)}")
