"""Study files: read and validate them (one-line errors, before any work), expand them into cells
and runs.

A study file (YAML; ``dalivssl study presets`` lists the shipped ones)::

    name: tiny-cpu
    protocol: paper             # original (default) | paper: the benchmark's settings (below)
    device: cpu                 # every command's --device
    threads: 2                  # --threads of every command that has it
    data:                       # named datasets: manifests relative to this file ($VARS expanded)
      ucf101: {train: $DATA/ucf101/train.jsonl, test: $DATA/ucf101/test.jsonl}
    axes:                       # the grid: one cell per combination ('embedded' needs no entry)
      task: [rotnet, vcop]      # dalivssl.tasks.TASKS
      arch: [r21d]              # models.BACKBONES
      data: [ucf101]            # pretraining data
      subset: [null, 1000]      # training videos (nested subsets); null = all
      complexity: [null, C2]    # C1..C3 of the task's knob (SPEC['levels']); null = the task default
      seed: [0, 1]
      stage: [50, 100]          # finetune from the checkpoint kept after each epoch (one
                                # pretraining per cell, --set keep_epochs); null = the last
    pretrain: {epochs: 100, clip_len: 16, size: 112, amp: true}   # PretrainConfig keys
    steps:                      # downstream of every pretrained cell (options of each command)
      finetune: {data: [ucf101], epochs: 50}            # `dalivssl finetune`
      probe: {data: [ucf101]}                           # `dalivssl finetune --linear-probe`
      retrieve: {data: [ucf101], topk: [1, 5]}          # `dalivssl retrieve`
      robustness: {data: [ucf101], model: finetune}     # `dalivssl robustness` of finetuned models
      cka: {against: [self, finetune, {task: vcop}, my_ref]}  # `dalivssl cka`; self: the
                                                        # model's own layer × layer map
      distill: {teachers: [{task: rotnet}, {task: vcop}], data: ucf101,   # `dalivssl distill`
                teacher_logits: [vifm]}  # precomputed logits files (paths or references)
    per:                        # options fixed per axis value: per.<axis>.<value>.<step>
      task: {vcop: {pretrain: {batch_size: 16}}}
      task+complexity: {vcop+C3: {pretrain: {batch_size: 8}}}   # a combination (wins)
    references: {my_ref: /path/checkpoint.pt}          # named checkpoints for cka `against`

A step's options are keys of its command's typed config (``runs.spec(command).config``, e.g.
``PretrainConfig``: ``lr`` and ``amp`` too, which have no flag), plus ``set:`` (dotted keys of
sampler/head/backbone) and ``no_progress``; reserved keys (:data:`RESERVED`) are the study's own.
A run passes them as ``--set key=value``; its data, checkpoints, seed and device go as flags.
Keys and types are checked when the file is read, ranges and names per run (:func:`check_run`).

Each run's name is its readable settings plus a short hash of its command line (options in
:func:`flag_form`) and of its data's content (manifest records and video files), so a changed
option or other data gives new runs (the unchanged ones are reused) and a rerun skips what is
done.

``protocol: paper`` (Kumar et al.; :data:`PAPER_FLAGS`) adds to each command the settings of the
paper's benchmark: the supp. C.3 augmentation and TDL K = 500 (pretrain), resize + centre crop
(finetune, probe), the CE + Σ KL loss (distill), noise on the decoded frames and the paper's
per-cell video counts (robustness).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from dalivssl.errors import DalivsslError

PRESETS_DIR = Path(__file__).parent / "presets"
AXES = ("task", "arch", "data", "subset", "complexity", "seed", "stage")
# step -> (option, value) pairs ``protocol: paper`` adds (a 'set' entry: --set key=value)
PAPER_FLAGS = {"pretrain": {"set": {"protocol": "paper"}},
               "finetune": {"set": {"protocol": "paper"}},
               "probe": {"set": {"protocol": "paper"}},
               "distill": {"set": {"kd_loss": "paper"}},
               "robustness": {"noise_at": "decoded", "videos_per_cell": "paper"}}
EMBEDDED = "embedded"  # the embedded synthetic dataset: commands run without data flags
TOP_KEYS = ("name", "description", "protocol", "device", "threads", "data", "axes", "pretrain",
            "steps", "per", "complexity", "references")
# step -> the dalivssl command it runs; downstream steps run in this order
STEP_COMMANDS = {"pretrain": "pretrain", "finetune": "finetune", "probe": "finetune",
                 "retrieve": "retrieve", "robustness": "robustness", "cka": "cka",
                 "distill": "distill"}
DOWNSTREAM = tuple(STEP_COMMANDS)[1:]
MODEL_STEPS = ("finetune", "probe")  # steps whose checkpoint is a classifier
# keys of a step that shape the study (not command options)
STRUCTURE = {"pretrain": (), "finetune": ("data",), "probe": ("data",), "retrieve": ("data",),
             "robustness": ("data", "model"), "cka": ("data", "against"),
             "distill": ("data", "teachers", "student", "baseline", "teacher_logits")}
# command options the study sets itself: an error when a study file gives them
RESERVED = {"out", "out_dir", "resume", "overwrite", "name", "checkpoint", "checkpoints", "data",
            "test_data", "eval_data", "train", "test", "task", "arch", "subset", "seed",
            "device", "threads", "num_threads", "workers", "teacher", "teachers",
            "teacher_logits", "student", "random_init", "config", "config_path", "linear_probe",
            "pretrained", "help"}
# a study-file key that negates a boolean config field (`no_progress: true`, as every preset
# writes it, is `progress: false`)
NEGATED = {"no_progress": "progress"}
# structural settings passed under another flag than --<key> (a run's data, checkpoints, seed
# and device go as flags; its options as --set key=value)
FLAGS = {"pretrained": "--checkpoint", "checkpoints": "--checkpoint", "teachers": "--teacher"}
# the file each step's checkpoint lands in (what a downstream run reads)
CHECKPOINTS = {"pretrain": "checkpoint.pt", "finetune": "checkpoint.pt",
               "probe": "checkpoint.pt", "distill": "checkpoint.pt"}
COLUMNS = ("step", "task", "arch", "data", "subset", "complexity", "seed", "stage", "target",
           "ref")
SELF = "self"  # cka against: the model's own layer × layer map (the paper's Figs 2, 8, 9, 12, 14)


# ------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Dataset:
    """A named dataset: train and test manifests (both None for the embedded dataset)."""

    name: str
    train: str | None = None
    test: str | None = None
    given: tuple = ()  # the paths as the file wrote them (part of run hashes)
    content: tuple = ()  # manifest_hash of each manifest found (part of run hashes: new data,
    #                      or videos replaced in place, give new runs)

    def paths(self, step: str) -> dict:
        """The data settings of ``step``'s command for this dataset (config key -> path), paths
        as ``{data:NAME:split}`` (resolved by the runner, so run names do not depend on where
        the data lies)."""
        if self.train is None:
            return {}
        tr, te = f"{{data:{self.name}:train}}", f"{{data:{self.name}:test}}"
        return {"pretrain": {"data": tr}, "finetune": {"data": tr, "test_data": te},
                "probe": {"data": tr, "test_data": te}, "retrieve": {"train": tr, "test": te},
                "robustness": {"data": te}, "cka": {"data": te},
                "distill": {"data": tr, "eval_data": te}}[step]


@dataclass(frozen=True)
class Step:
    """A downstream step: its datasets and options, and for cka/distill whom it compares with."""

    kind: str
    targets: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)
    model: str = "finetune"                 # robustness: the model step it stresses
    against: tuple = ()                     # cka: 'finetune' | 'probe' | reference | selector
    teachers: tuple = ()                    # distill: selectors of teacher cells
    teacher_logits: tuple = ()              # distill: precomputed logits files (Table 7)
    student: str | None = None              # distill: student arch (default: the cell's)
    baseline: bool = True                   # distill: also train the student without teachers


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    device: str
    threads: int | None
    datasets: dict
    axes: dict
    pretrain: dict
    steps: tuple
    per: dict
    complexity: dict
    references: dict
    source: str | None = None
    protocol: str = "original"


    def step(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    task: str
    arch: str
    data: str
    subset: int | None
    complexity: str | None
    seed: int
    stage: int | None = None  # the pretraining epoch whose kept checkpoint it uses

    @property
    def label(self) -> str:
        parts = [self.task, self.arch, self.data]
        parts += [f"n{self.subset}"] if self.subset else []
        parts += [self.complexity] if self.complexity else []
        return "_".join(parts + [f"s{self.seed}"] + ([f"e{self.stage}"] if self.stage else []))

    @property
    def pretraining(self) -> "Cell":
        """The cell whose pretraining run this one uses (stages share one run)."""
        return dataclasses.replace(self, stage=None)

    def columns(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Run:
    """One ordinary command in its own directory. ``structure``: what the study gives it as flags
    (config key -> value: data, checkpoints, seed, device; ``{run:NAME}`` stands for run NAME's
    checkpoint and ``{data:NAME:split}`` for a manifest, both resolved by the runner);
    ``settings``: its options as config keys (``--set key=value``), with where the study file
    gives each (``sources``). ``argv`` follows ``dalivssl``."""

    name: str
    step: str
    argv: tuple
    deps: tuple
    columns: dict
    structure: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return STEP_COMMANDS[self.step]


@dataclass(frozen=True)
class Plan:
    study: Study
    cells: tuple
    runs: dict          # name -> Run, parents before children
    by_cell: dict       # cell label -> run names


# ------------------------------------------------------------------------------ loading
def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def find_study(name_or_path) -> Path:
    """A study file path, or the shipped preset of that name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise DalivsslError(f"{name_or_path}: no such study file or preset; presets: "
                        f"{', '.join(preset_names())}")


def load_study(name_or_path) -> Study:
    """Read and validate a study file (or preset): one-line DalivsslError on any problem."""
    from dalivssl.config import load_yaml

    path = find_study(name_or_path)
    try:
        return parse_study(load_yaml(path), base=path.parent, source=str(path))
    except DalivsslError as exc:
        raise DalivsslError(f"{path}: {exc}") from None


def load_plan(name_or_path) -> Plan:
    """:func:`expand` of :func:`load_study`, every run checked; errors name the file."""
    study = load_study(name_or_path)
    try:
        return expand(study)
    except DalivsslError as exc:
        raise DalivsslError(f"{study.source}: {exc}") from None


def _need(cond, msg):
    if not cond:
        raise DalivsslError(msg)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def parse_study(raw: dict, base=".", source=None) -> Study:
    """A :class:`Study` from a study file's mapping (paths relative to ``base``)."""
    unknown = sorted(set(raw) - set(TOP_KEYS))
    _need(not unknown, f"unknown key {unknown[0] if unknown else ''!r}; valid: "
          f"{', '.join(TOP_KEYS)}")
    _need(isinstance(raw.get("axes"), dict), "needs 'axes:' (a mapping of axis: [values])")
    device = raw.get("device", "cpu")
    _need(device in ("cpu", "gpu"), f"device: expected cpu or gpu, got {device!r}")
    from pipelines.samplers.base import PROTOCOLS

    protocol = raw.get("protocol", "original")
    _need(protocol in PROTOCOLS, f"protocol: expected {' or '.join(PROTOCOLS)}, got "
          f"{protocol!r}")
    threads = raw.get("threads")
    _need(threads is None or (isinstance(threads, int) and threads >= 1),
          f"threads: expected an integer >= 1, got {threads!r}")
    datasets = _parse_datasets(raw.get("data") or {}, Path(base))
    axes = _parse_axes(raw["axes"], datasets)
    complexity = _complexity_levels(raw.get("complexity"))
    for task in axes["task"]:
        for level in axes["complexity"]:
            if level is not None:
                known = complexity.get(task, {})
                _need(level in known, f"axes.complexity: task {task!r} has no level {level!r}; "
                      f"levels: {', '.join(known) or 'none'}")
    refs = {str(k): _path(Path(base), v) for k, v in dict(raw.get("references") or {}).items()}
    pretrain = _check_options("pretrain", dict(raw.get("pretrain") or {}))
    steps = _parse_steps(raw.get("steps") or {}, datasets, axes, refs, Path(base))
    per = _parse_per(raw.get("per") or {}, axes)
    return Study(name=str(raw.get("name") or Path(source or "study").stem),
                 description=str(raw.get("description") or "").strip(), device=device,
                 threads=threads, datasets=datasets, axes=axes, pretrain=pretrain,
                 steps=steps, per=per, complexity=complexity, references=refs, source=source,
                 protocol=protocol)


def _parse_datasets(raw: dict, base: Path) -> dict:
    _need(isinstance(raw, dict), "data: expected a mapping of name: {train: PATH, test: PATH}")
    out = {EMBEDDED: Dataset(EMBEDDED)}
    for name, d in raw.items():
        _need(name != EMBEDDED, f"data: {EMBEDDED!r} is the embedded dataset; pick another name")
        _need(isinstance(d, dict) and set(d) == {"train", "test"},
              f"data.{name}: expected {{train: PATH, test: PATH}}")
        paths = [_path(base, d[k]) for k in ("train", "test")]
        out[str(name)] = Dataset(str(name), *paths, given=(str(d["train"]), str(d["test"])),
                                 content=_content(paths))
    return out


def _content(paths) -> tuple:
    """The content hash (record.manifest_hash: records, root, each video's size and mtime) of
    each manifest in ``paths`` that exists; None for one that does not (yet)."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.record import manifest_hash

    return tuple(manifest_hash(load_manifest(p)) if Path(p).is_file() else None for p in paths)


def _path(base: Path, given) -> str:
    """Absolute path of ``given`` ($VARS expanded; relative to ``base``); left as written when a
    variable is unset (reported as a missing manifest before any run)."""
    p = os.path.expandvars(str(given))
    return p if "$" in p else os.path.abspath(base / p)


def _parse_axes(raw: dict, datasets: dict) -> dict:
    from dalivssl.tasks import TASKS
    from models import BACKBONES

    unknown = sorted(set(raw) - set(AXES))
    _need(not unknown, f"axes: unknown axis {unknown[0] if unknown else ''!r}; valid: "
          f"{', '.join(AXES)}")
    _need("task" in raw and "arch" in raw, "axes: needs at least 'task' and 'arch'")
    defaults = {"data": [EMBEDDED], "subset": [None], "complexity": [None], "seed": [0],
                "stage": [None]}
    axes = {}
    for axis in AXES:
        values = _as_list(raw.get(axis, defaults.get(axis)))
        _need(values, f"axes.{axis}: needs at least one value")
        _need(len(set(map(str, values))) == len(values), f"axes.{axis}: repeated value")
        axes[axis] = tuple(values)
    for kind, names, valid in (("task", axes["task"], TASKS), ("arch", axes["arch"], BACKBONES),
                               ("data", axes["data"], datasets)):
        for v in names:
            _need(v in valid, f"axes.{kind}: unknown {kind} {v!r}; valid: "
                  f"{', '.join(sorted(valid))}")
    for v in axes["subset"]:
        _need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              f"axes.subset: expected integers >= 1 or null, got {v!r}")
    for v in axes["seed"]:
        _need(isinstance(v, int) and not isinstance(v, bool),
              f"axes.seed: expected integers, got {v!r}")
    for v in axes["stage"]:
        _need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              f"axes.stage: expected epochs (integers >= 1) or null, got {v!r}")
    return axes


def _complexity_levels(override) -> dict:
    """task -> {level: value of the task's knob (SPEC['complexity'])}: the task's own
    ``SPEC['levels']``, then the study's ``complexity:``."""
    from dalivssl.tasks import TASKS

    levels = {t: dict(m.SPEC["levels"]) for t, m in TASKS.items() if m.SPEC.get("levels")}
    for task, lv in dict(override or {}).items():
        _need(isinstance(lv, dict), f"complexity.{task}: expected {{C1: value, ...}}")
        levels.setdefault(task, {}).update(lv)
    for task in levels:
        _need(task in TASKS, f"complexity: unknown task {task!r}; valid: "
              f"{', '.join(sorted(TASKS))}")
        _need(TASKS[task].SPEC.get("complexity"), f"complexity.{task}: the task has no "
              "complexity knob (SPEC['complexity'] is None)")
    return levels


def config_class(step: str) -> type:
    """The typed config of ``step``'s command (its RunSpec's): what a step's options are keys of."""
    from dalivssl.runs import spec

    return spec(STEP_COMMANDS[step]).config


def config_fields(step: str) -> set[str]:
    """The keys of ``step``'s config (the runner passes --name and --threads where they are)."""
    return {f.name for f in dataclasses.fields(config_class(step))}


def _noun(tp) -> str:
    """What a config annotation holds, in words (the first type of an optional or union)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    tp = typing.get_origin(tp) or tp
    return {int: "integer", float: "number", bool: "boolean (true or false)", str: "string",
            tuple: "list", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_options(step: str, options: dict, where: str | None = None) -> dict:
    """Keys and value types of ``options`` checked as keys of the command's typed config
    (:func:`config_class`; ``set:`` a mapping of its keys, dotted for sampler/head/backbone, as
    ``--set`` takes them); ranges and names are checked per run (:func:`check_run`)."""
    from dalivssl import config as C

    where = where or step
    _need(isinstance(options, dict), f"{where}: expected a mapping of option: value")
    cls = config_class(step)
    hints = typing.get_type_hints(cls)
    valid = sorted((set(hints) | set(NEGATED) | {"set"}) - RESERVED)
    out = {}
    for key, value in options.items():
        key = str(key).replace("-", "_")
        _need(key not in RESERVED, f"{where}: {key!r} is set by the study, not by the file")
        _need(key in valid, f"{where}: unknown option {key!r} of `dalivssl "
              f"{STEP_COMMANDS[step]}`; valid: {', '.join(valid)}")
        if key == "set":
            _need(isinstance(value, dict), f"{where}.set: expected a mapping of key: value")
            value = {str(k): v for k, v in value.items()}
            for k, v in value.items():
                _need(k.split(".")[0] not in RESERVED,
                      f"{where}.set: {k!r} is set by the study, not by the file")
                _need(k.split(".")[0] in hints, f"{where}.set: unknown key {k!r} of `dalivssl "
                      f"{STEP_COMMANDS[step]}`; valid: {', '.join(sorted(set(hints) - RESERVED))}")
                try:
                    C.from_dict(cls, C.parse_set([f"{k}={set_text(v)}"]))
                except DalivsslError as exc:
                    raise DalivsslError(f"{where}.set: {exc}") from None
        else:
            tp = hints[NEGATED.get(key, key)]
            try:
                C.from_dict(cls, {NEGATED.get(key, key): value})
            except DalivsslError:
                raise DalivsslError(f"{where}.{key}: {value!r} is not a valid {_noun(tp)}"
                                    ) from None
        out[key] = value
    return out


def _selector(sel, where) -> tuple:
    _need(isinstance(sel, dict) and sel and set(sel) <= set(AXES),
          f"{where}: expected a mapping of axis: value (axes: {', '.join(AXES)})")
    return tuple(sorted(sel.items()))


def _parse_steps(raw: dict, datasets: dict, axes: dict, refs: dict, base: Path) -> tuple:
    from models import BACKBONES

    _need(isinstance(raw, dict), "steps: expected a mapping of step: {options}")
    steps = {}
    for kind, body in raw.items():
        _need(kind in DOWNSTREAM, f"steps: unknown step {kind!r}; valid: {', '.join(DOWNSTREAM)}")
        body = dict(body or {})
        where = f"steps.{kind}"
        targets = tuple(str(t) for t in _as_list(body.get("data", [])))
        for t in targets:
            _need(t in datasets, f"{where}.data: unknown dataset {t!r}; valid: "
                  f"{', '.join(sorted(datasets))}")
        extra = {}
        if kind == "robustness":
            extra["model"] = body.get("model", "finetune")
            _need(extra["model"] in MODEL_STEPS, f"{where}.model: expected finetune or probe")
        if kind == "cka":
            _need(len(targets) <= 1, f"{where}.data: one dataset (the clips the maps use)")
            against = []
            for a in _as_list(body.get("against", [])):
                if isinstance(a, dict):
                    against.append(_selector(a, f"{where}.against"))
                else:
                    _need(a in MODEL_STEPS or a in refs or a == SELF, f"{where}.against: {a!r} "
                          f"is neither self, finetune, probe, a selector nor a reference "
                          f"({', '.join(refs)})")
                    against.append(str(a))
            _need(against, f"{where}: needs 'against:' (finetune, probe, selectors, references)")
            extra["against"] = tuple(against)
        if kind == "distill":
            teachers = [_selector(t, f"{where}.teachers") for t in _as_list(body.get("teachers",
                                                                               []))]
            logits = [refs.get(str(t), _path(base, t))
                      for t in _as_list(body.get("teacher_logits", []))]
            _need(teachers or logits, f"{where}: needs 'teachers:' (selectors of teacher cells) "
                  "or 'teacher_logits:' (files)")
            extra["teachers"] = tuple(teachers)
            extra["teacher_logits"] = tuple(logits)
            extra["student"] = body.get("student")
            _need(extra["student"] is None or extra["student"] in BACKBONES,
                  f"{where}.student: unknown arch {extra['student']!r}")
            extra["baseline"] = bool(body.get("baseline", True))
        options = {k: v for k, v in body.items() if k not in STRUCTURE[kind]}
        steps[kind] = Step(kind, targets, _check_options(kind, options, where), **extra)
    for a in steps["cka"].against if "cka" in steps else ():
        _need(a not in MODEL_STEPS or a in steps, f"steps.cka.against: {a!r} needs a {a!r} step")
    for kind in ("robustness", "distill"):
        if kind == "distill" and kind in steps and not steps[kind].teachers:
            steps[kind] = dataclasses.replace(steps[kind], targets=steps[kind].targets
                                              or tuple(axes["data"]))  # logits only
        elif kind in steps:
            model = steps[kind].model if kind == "robustness" else "finetune"
            _need(model in steps, f"steps.{kind}: needs a '{model}' step (its models)")
            have = steps[model].targets or tuple(axes["data"])
            want = steps[kind].targets or have
            missing = [t for t in want if t not in have]
            _need(not missing, f"steps.{kind}: dataset {missing[0] if missing else ''!r} has "
                  f"no {model} step (steps.{model}.data)")
            steps[kind] = dataclasses.replace(steps[kind], targets=want)
    return tuple(steps[k] for k in DOWNSTREAM if k in steps)


def _parse_per(raw: dict, axes: dict) -> dict:
    """{(axis, value, step): options}; ``axis`` may combine axes ('task+complexity', value
    'vcop+C2'): options for that combination only, applied after the single axes'."""
    _need(isinstance(raw, dict), "per: expected per.<axis>.<value>.<step>: {options}")
    out = {}
    for axis, by_value in raw.items():
        names = str(axis).split("+")
        for a in names:
            _need(a in AXES, f"per: unknown axis {a!r}; valid: {', '.join(AXES)}")
        _need(isinstance(by_value, dict), f"per.{axis}: expected a mapping value: {{step: ...}}")
        for value, by_step in by_value.items():
            values = str(value).split("+")
            _need(len(values) == len(names), f"per.{axis}: {value!r} needs one value per axis "
                  f"({'+'.join(names)})")
            for a, v in zip(names, values):
                _need(v in map(str, axes[a]), f"per.{axis}: {v!r} is not a value of axes.{a}")
            _need(isinstance(by_step, dict), f"per.{axis}.{value}: expected step: {{options}}")
            for step, opts in by_step.items():
                _need(step in STEP_COMMANDS, f"per.{axis}.{value}: unknown step {step!r}; "
                      f"valid: {', '.join(STEP_COMMANDS)}")
                out[(axis, str(value), step)] = _check_options(
                    step, dict(opts or {}), f"per.{axis}.{value}.{step}")
    return out


# ---------------------------------------------------------------------------- expansion
def _short_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _merge(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k),
                                                                            dict) else v
    return out


def settings_of(options: dict) -> dict:
    """A step's options (study-file keys) as config settings ``{key or sub.key: value}``, sorted:
    ``set:`` entries win over plain keys (as ``--set`` wins over a flag), :data:`NEGATED` keys
    become their field."""
    out = {NEGATED.get(k, k): (not v if k in NEGATED else v) for k, v in options.items()
           if k != "set"}
    out.update({str(k): v for k, v in options.get("set", {}).items()})
    return dict(sorted(out.items()))


def set_text(value) -> str:
    """``value`` as ``--set`` text that ``config.parse_set`` reads back as the same value: JSON
    (which YAML reads), or YAML's flow form where YAML 1.1 reads the JSON otherwise (``1e-05``
    would be a string)."""
    import yaml

    text = json.dumps(value)
    if yaml.safe_load(text) != value:
        text = yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
    return text


def set_argv(settings: dict) -> list[str]:
    """``settings`` as ``--set key=value`` pairs (in their order)."""
    return [x for k, v in settings.items() for x in ("--set", f"{k}={set_text(v)}")]


def structure_argv(step: str, structure: dict) -> list[str]:
    """A run's structure as flags, in its order (a tuple repeats the flag, True is a bare flag,
    None is left out)."""
    argv: list[str] = []
    for key, value in structure.items():
        flag = "--student" if (step, key) == ("distill", "arch") else \
            FLAGS.get(key, "--" + key.replace("_", "-"))
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple):
            argv += [x for v in value for x in (flag, str(v))]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def flag_form(options: dict) -> list[str]:
    """``options`` as flags sorted by key (``--key value``, a list comma-joined, a boolean as
    ``--key`` or ``--no-key``, ``set:`` entries as ``--set key=JSON``): the form of a run's
    command line before its options went as ``--set`` (d0c9596). Kept as the run's identity,
    hashed into its name, so that the runs of an existing study dir keep their names."""
    argv: list[str] = []
    for key in sorted(options):
        value, flag = options[key], "--" + key.replace("_", "-")
        if key == "set":
            argv += [x for k in sorted(value) for x in ("--set", f"{k}={json.dumps(value[k])}")]
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple))
                     else str(value)]
    return argv


def _combine(sections) -> tuple[dict, dict, dict]:
    """``(where, options)`` sections, later ones winning: the merged options (study-file keys),
    their settings (:func:`settings_of`) and where the study file gives each setting."""
    options = _merge(*(o for _, o in sections))
    plain, sets = {}, {}
    for where, opts in sections:
        for k in opts:
            if k == "set":
                sets.update({str(sk): f"{where}.set.{sk}" for sk in opts[k]})
            else:
                plain[NEGATED.get(k, k)] = f"{where}.{k}"
    settings = settings_of(options)
    return options, settings, {k: sets.get(k) or plain.get(k) for k in settings}


class _Expander:
    """Builds runs as pure functions of (study, cell); equal runs from two cells are one run."""

    def __init__(self, study: Study):
        self.s = study
        self.cells = [Cell(*v) for v in itertools.product(*(study.axes[a] for a in AXES))]
        self.labels = {c.label for c in self.cells}
        self.runs: dict[str, Run] = {}

    def add(self, run: Run) -> str:
        self.runs.setdefault(run.name, run)
        return run.name

    def options(self, cell: Cell, step: str, base: dict, *extra) -> tuple:
        """The step's options for ``cell`` (:func:`_combine`): the paper's (``protocol: paper``,
        those its config has) < the step's own < per-axis values < ``extra`` sections."""
        per = [(f"per.{a}.{getattr(cell, a)}.{step}",
                self.s.per.get((a, str(getattr(cell, a)), step), {})) for a in AXES]
        per += [(f"per.{axis}.{value}.{step}", opts)
                for (axis, value, s), opts in self.s.per.items() if s == step and "+" in axis
                and value == "+".join(str(getattr(cell, a)) for a in axis.split("+"))]
        paper = {}
        if self.s.protocol == "paper":
            paper = {k: v for k, v in PAPER_FLAGS.get(step, {}).items()
                     if k in config_fields(step) | {"set"}}
        own = "pretrain" if step == "pretrain" else f"steps.{step}"
        return _combine([("protocol: paper", paper), (own, base), *per, *extra])

    def checkpoint(self, cell: Cell, pre: str) -> str:
        """The reference to ``cell``'s pretrained weights: the kept ``epoch_<stage>.pt`` of its
        pretraining run, or its last checkpoint."""
        from dalivssl.engine.fit import stage_name

        return f"{{run:{pre}:{stage_name(cell.stage)}}}" if cell.stage else f"{{run:{pre}}}"

    def make(self, step, label, structure, options, deps, columns, data_names) -> Run:
        """A run of ``step``: ``structure`` as flags, then its settings as ``--set`` pairs; its
        name hashes the structure, the options in :func:`flag_form` and the data."""
        opts, settings, sources = options
        head = [STEP_COMMANDS[step], *structure_argv(step, structure)]
        given = {d: (*self.s.datasets[d].given, *self.s.datasets[d].content) for d in data_names}
        identity = head + flag_form(opts)
        name = f"{label}-{_short_hash({'step': step, 'argv': identity, 'data': given})}"
        cols = {k: columns.get(k) for k in COLUMNS}
        cols["step"] = step
        return Run(name, step, tuple(head + set_argv(settings)), tuple(deps), cols,
                   structure, settings, sources)

    def pretrain(self, cell: Cell) -> Run:
        cell = cell.pretraining  # the stages of a cell share one pretraining
        extra = []
        stages = sorted(s for s in self.s.axes["stage"] if s is not None)
        if stages:
            extra.append(("axes.stage", {"set": {"keep_epochs": stages}}))
        if cell.complexity is not None:
            knob = _task_knob(cell.task)
            level = self.s.complexity[cell.task][cell.complexity]
            extra.append(("axes.complexity", {"set": {f"sampler.{knob}": level}}))
        structure = {"task": cell.task, "arch": cell.arch,
                     **self.s.datasets[cell.data].paths("pretrain"), "subset": cell.subset,
                     "seed": cell.seed, "device": self.s.device}
        return self.make("pretrain", cell.label, structure,
                         self.options(cell, "pretrain", self.s.pretrain, *extra), (),
                         cell.columns(), [cell.data])

    def model(self, cell: Cell, kind: str, target: str) -> Run:
        """The finetuned (or probed) model of ``cell`` on ``target``."""
        pre = self.add(self.pretrain(cell))
        structure = {"pretrained": self.checkpoint(cell, pre),
                     **self.s.datasets[target].paths(kind), "seed": cell.seed,
                     "device": self.s.device, "linear_probe": kind == "probe" or None}
        tag = "ft" if kind == "finetune" else "probe"
        return self.make(kind, f"{cell.label}_{tag}-{target}", structure,
                         self.options(cell, kind, self.s.step(kind).options), (pre,),
                         {**cell.columns(), "target": target}, [cell.data, target])

    def other(self, cell: Cell, selector: tuple, where: str) -> Cell:
        other = dataclasses.replace(cell, **dict(selector))
        if other.label not in self.labels:
            raise DalivsslError(f"{where}: {dict(selector)} selects {other.label}, which is not "
                                "a cell of this study")
        return other

    def downstream(self, cell: Cell, step: Step) -> list[Run]:
        targets = step.targets or (cell.data,)
        out = []
        if step.kind in MODEL_STEPS:
            out = [self.model(cell, step.kind, t) for t in targets]
        elif step.kind == "retrieve":
            pre = self.add(self.pretrain(cell))
            for t in targets:
                structure = {"checkpoint": self.checkpoint(cell, pre),
                             **self.s.datasets[t].paths("retrieve"), "device": self.s.device}
                out.append(self.make("retrieve", f"{cell.label}_ret-{t}", structure,
                                     self.options(cell, "retrieve", step.options), (pre,),
                                     {**cell.columns(), "target": t}, [cell.data, t]))
        elif step.kind == "robustness":
            for t in targets:
                m = self.add(self.model(cell, step.model, t))
                structure = {"checkpoints": (f"{{run:{m}}}",),
                             **self.s.datasets[t].paths("robustness"), "seed": cell.seed,
                             "device": self.s.device}
                out.append(self.make("robustness", f"{cell.label}_rob-{step.model}-{t}",
                                     structure, self.options(cell, "robustness", step.options),
                                     (m,), {**cell.columns(), "target": t, "ref": step.model},
                                     [cell.data, t]))
        elif step.kind == "cka":
            out = [r for a in step.against if (r := self.cka(cell, step, a)) is not None]
        elif step.kind == "distill":
            out = [self.distill(cell, step, t) for t in targets]
            if step.baseline:
                out += [self.distill(cell, step, t, baseline=True) for t in targets]
        return out

    def cka(self, cell: Cell, step: Step, against) -> Run | None:
        """One CKA map. Its clips are the checkpoints' own: their records, resolved by the cka
        command, which refuses two checkpoints trained on other clips unless the step's options
        give clip_len and size."""
        data = step.targets[0] if step.targets else cell.data
        a = cell
        if against == SELF:  # the model's own layer × layer map: one --checkpoint
            ra = self.add(self.pretrain(cell))
            label, ref = f"{cell.label}_self", SELF
            paths, deps = [self.checkpoint(cell, ra)], (ra,)
        elif isinstance(against, tuple):  # another cell's pretrained model; one run per pair
            b = self.other(cell, against, "steps.cka.against")
            if b == cell:
                return None
            a, b = sorted((cell, b), key=lambda c: c.label)
            ra, rb = self.add(self.pretrain(a)), self.add(self.pretrain(b))
            ref = ",".join(f"{k}={getattr(b, k)}" for k in AXES if getattr(a, k) != getattr(b, k))
            label, deps = f"{a.label}_vs_{b.label}", (ra, rb)
            paths = [self.checkpoint(a, ra), self.checkpoint(b, rb)]
        elif against in MODEL_STEPS:  # how far finetuning moved the representation
            target = (self.s.step(against).targets or (cell.data,))[0]
            ra, rb = self.add(self.pretrain(cell)), self.add(self.model(cell, against, target))
            label, ref = f"{cell.label}_vs_{against}-{target}", f"{against}-{target}"
            paths, deps = [self.checkpoint(cell, ra), f"{{run:{rb}}}"], (ra, rb)
        else:
            ra = self.add(self.pretrain(cell))
            label, ref = f"{cell.label}_vs_{against}", against
            paths, deps = [self.checkpoint(cell, ra), self.s.references[against]], (ra,)
        structure = {"checkpoints": tuple(paths), **self.s.datasets[data].paths("cka"),
                     "seed": a.seed, "device": self.s.device}
        return self.make("cka", label, structure, self.options(a, "cka", step.options), deps,
                         {**a.columns(), "target": data, "ref": ref}, [a.data, data])

    def distill(self, cell: Cell, step: Step, target: str, baseline=False) -> Run:
        student = step.student or cell.arch
        opts = self.options(cell, "distill", step.options)
        structure = {"arch": student, **self.s.datasets[target].paths("distill"),
                     "seed": cell.seed, "device": self.s.device}
        if baseline:
            return self.make("distill", f"kd_{student}_{target}_s{cell.seed}_none", structure,
                             opts, (), {"arch": student, "task": "none", "seed": cell.seed,
                                        "target": target, "ref": "none"}, [target])
        teachers = sorted({self.other(cell, sel, "steps.distill.teachers")
                           for sel in step.teachers}, key=lambda c: c.label)
        models = [self.add(self.model(c, "finetune", target)) for c in teachers]
        structure.update(teachers=tuple(f"{{run:{m}}}" for m in models),
                         teacher_logits=tuple(step.teacher_logits))
        shared = {a: getattr(teachers[0], a) for a in ("data", "subset", "complexity")
                  if teachers and len({getattr(c, a) for c in teachers}) == 1}
        names = [c.label for c in teachers] + [Path(f).stem for f in step.teacher_logits]
        tasks = "+".join(sorted({c.task for c in teachers}) or ["logits"])
        label = f"kd_{student}_{target}_{len(names)}t_s{cell.seed}"
        return self.make("distill", label, structure, opts, tuple(models),
                         {**shared, "arch": student, "task": tasks, "seed": cell.seed,
                          "target": target, "ref": ",".join(names)},
                         [target, *{c.data for c in teachers}])


def _task_knob(task: str) -> str:
    from dalivssl.tasks import TASKS

    return TASKS[task].SPEC["complexity"]


def expand(study: Study, check: bool = True) -> Plan:
    """Cells (the axes' product, in file order) and their runs, parents before children; with
    ``check`` every run's options are checked as its command checks them (:func:`check_run`)."""
    ex = _Expander(study)
    by_cell = {}
    for cell in ex.cells:
        names = [ex.add(ex.pretrain(cell))]
        for step in study.steps:
            names += [ex.add(r) for r in ex.downstream(cell, step)]
        by_cell[cell.label] = tuple(dict.fromkeys(names))
    plan = Plan(study, tuple(ex.cells), dict(ex.runs), by_cell)
    if check:
        for run in plan.runs.values():
            check_run(plan, run)
    return plan


def run_config(plan: Plan, run: Run, settings: dict | None = None):
    """The typed config ``run``'s command resolves: defaults < its structure (data paths
    resolved; parents' checkpoints as placeholders) < its settings (``--set``)."""
    from dalivssl import config as C

    flags = {k: data_path(plan, v) if isinstance(v, str) else v
             for k, v in run.structure.items()}
    pairs = set_argv(run.settings if settings is None else settings)[1::2]
    return C.resolve(config_class(run.step), None, flags, pairs)


def _checked(plan: Plan, run: Run, settings: dict | None = None):
    cfg = run_config(plan, run, settings)
    return (cfg.resolved() if hasattr(cfg, "resolved") else cfg).check()


def _passes(plan: Plan, run: Run, settings: dict) -> bool:
    try:
        _checked(plan, run, settings)
    except (DalivsslError, ValueError):
        return False
    return True


def check_run(plan: Plan, run: Run) -> None:
    """``run``'s settings checked the way its command checks them, before any run starts
    (review t3 #23: a bad value failed only after the parents had run): its typed config
    resolved and checked (types, ranges, names, ``--set`` keys: robustness's noises and
    severities too), naming the study-file key that makes it fail where one does; and a subset
    larger than its training data."""
    where = f"{run.step} run {run.name}"
    try:
        cfg = _checked(plan, run)
    except (DalivsslError, ValueError) as exc:
        source = next((run.sources[k] for k in run.settings if _passes(
            plan, run, {s: v for s, v in run.settings.items() if s != k})), None)
        raise DalivsslError(f"{where}: {source + ': ' if source else ''}{exc}") from None
    if run.step == "pretrain" and cfg.subset and cfg.data and Path(cfg.data).is_file():
        from dalivssl.data.subsets import nested_subsets
        from dalivssl.data.synth import resolve_manifest

        try:
            nested_subsets(resolve_manifest(cfg.data, "train")[1], [cfg.subset])
        except (DalivsslError, ValueError) as exc:
            raise DalivsslError(f"{where}: {exc}") from None


def data_path(plan: Plan, arg: str) -> str:
    """A ``{data:NAME:split}`` argument as its manifest path (left as is when unknown)."""
    if arg.startswith("{data:") and arg.endswith("}"):
        name, split = arg[6:-1].rsplit(":", 1)
        return getattr(plan.study.datasets[name], split) or arg
    return arg
