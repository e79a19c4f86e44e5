"""Executing a study's runs: each an ordinary ``dalivssl`` command in its own directory.

``OUT/<step>/<run name>/`` holds what the command writes, plus the study's own three files:
``study.json`` (the run's settings and command), ``study.log`` (the command's output, one
``$ command`` line per start) and ``study_attempts.jsonl`` (one line per finished attempt: start,
end, exit code). ``OUT/study_plan.json`` names the study and its current runs (what ``study
results``, ``status`` and ``clean`` read). A run is done when the command says so and what it
was made from is unchanged (:func:`run_done`: its data, its parents' checkpoints); a
rerun of the study skips done runs, restarts killed ones with ``--resume`` where the command
supports it, and remakes stale ones (a parent remade, data changed) in a clean dir.

Executors: ``local`` (N commands at a time, one GPU each via CUDA_VISIBLE_DEVICES, torchrun for
multi-GPU pretraining) and submitit's (``slurm``: one job per run, ``afterok`` dependencies;
``submitit-local`` and ``debug``: the same code path on this machine).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from dalivssl.errors import DalivsslError
from dalivssl.record import RunLock, read_run_record
from dalivssl.study.spec import CHECKPOINTS, Plan, Run, config_fields, data_path

RUN_FILE = "study.json"
PLAN_FILE = "study_plan.json"
LOG_FILE = "study.log"
ATTEMPTS_FILE = "study_attempts.jsonl"
STUDY_FILES = {RUN_FILE, LOG_FILE, ATTEMPTS_FILE, ".lock"}
EXECUTORS = ("local", "slurm", "submitit-local", "debug")
DEP_FAILED = 3  # exit code of a run whose parent failed (submitit jobs waiting on a parent)

def run_done(run_dir, step: str = "", data=()) -> bool:
    """The run in ``run_dir`` finished (its run record says complete: every command writes
    ``record.json`` with status 'running' when it starts and 'complete' when its outputs are
    written) and is still current (:func:`stale_reason`)."""
    return dir_state(Path(run_dir), data) == "done"


def stale_reason(rec, data=()) -> str | None:
    """Why a run no longer matches what the plan would make now, or None: its data is not one
    of the plan's manifests ``data``, or a parent it was made from (checkpoint, reference)
    changed or is gone. (Other data content gives other run names: spec.Dataset.content.)
    Records that lack a field (made by other tools) are not checked on it."""
    from dalivssl.record import file_hash

    if rec.data and data and Path(rec.data).resolve() not in {Path(d).resolve() for d in data}:
        return f"made from other data ({rec.data})"
    if rec.parent and rec.parent_hash:
        for path, h in zip(rec.parent.split(";"), rec.parent_hash.split(";")):
            if not Path(path).is_file() or file_hash(path) != h:
                return f"its parent changed ({path})"
    return None


def run_dir(out, run: Run) -> Path:
    return Path(out) / run.step / run.name


def run_data(plan: Plan, run: Run) -> list[str]:
    """The manifests ``run``'s command reads (its ``{data:NAME:split}`` arguments)."""
    return [data_path(plan, a) for a in run.argv if a.startswith("{data:") and a.endswith("}")]


def status(out, run: Run, plan: Plan | None = None) -> str:
    """'done' | 'stale' (a parent or its data changed since it ran, or its record is unreadable:
    remade in a clean dir) | 'partial' (started, not finished: resumed) | 'pending'. With
    ``plan``, a run whose data is not the plan's is stale too."""
    return dir_state(run_dir(out, run), run_data(plan, run) if plan else ())


def dir_state(d: Path, data=()) -> str:
    """:func:`status` of the run dir ``d`` (``data``: the manifests the plan gives it)."""
    try:
        rec = read_run_record(d)
    except DalivsslError:
        return "stale"
    if rec is not None and stale_reason(rec, data):
        return "stale"
    if rec is not None and rec.status == "complete":
        return "done"
    return "partial" if _started(d) else "pending"


def _started(d: Path) -> bool:
    return d.is_dir() and any(p.name not in STUDY_FILES for p in d.iterdir())


def attempts(d) -> list[dict]:
    p = Path(d) / ATTEMPTS_FILE
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] \
        if p.is_file() else []


# --------------------------------------------------------------------------- command lines
def command_line(plan: Plan, out, run: Run, threads: int | None = None, gpus_per_run: int = 1
                 ) -> list[str]:
    """The full command of ``run``: parents' checkpoints resolved, plus the flags the study sets
    per machine (--name, --threads, --resume) where the command has them (its RunSpec: config
    fields ``name`` and ``threads``, ``resume_flag``)."""
    argv = []
    for a in run.argv:
        if a.startswith("{run:") and a.endswith("}"):  # {run:NAME} or {run:NAME:FILE}
            name, _, file = a[5:-1].partition(":")
            parent = plan.runs[name]
            a = str(run_dir(out, parent).resolve() / (file or CHECKPOINTS[parent.step]))
        argv.append(data_path(plan, a))
    argv += name_flag(run)
    if threads and "threads" in config_fields(run.step):
        argv += ["--threads", str(threads)]
    if status(out, run, plan) == "partial" and resume_flag(run):
        # robustness has no --resume: a rerun into its dir resumes its content-keyed cells
        argv += ["--resume"]
    argv += ["--out", str(run_dir(out, run).resolve())]
    head = [sys.executable, "-m"]
    if gpus_per_run > 1 and run.step == "pretrain":
        head += ["torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}",
                 "-m"]
    return head + ["dalivssl", *argv]


def resume_flag(run: Run) -> bool:
    """Whether ``run``'s command takes ``--resume`` (``RunSpec.resume_flag``)."""
    from dalivssl.runs import spec

    return spec(run.command).resume_flag


def name_flag(run: Run) -> list[str]:
    """``--name`` (the human name tables use) where the command's config has one."""
    return ["--name", run.name.rsplit("-", 1)[0]] if "name" in config_fields(run.step) else []


def write_run_files(plan: Plan, out) -> None:
    """``study.json`` of every run (settings and command): what ``study results`` reads."""
    for run in plan.runs.values():
        d = run_dir(out, run)
        d.mkdir(parents=True, exist_ok=True)
        info = {"name": run.name, "study": plan.study.name, "step": run.step,
                "columns": run.columns, "argv": list(run.argv), "deps": list(run.deps)}
        p = d / RUN_FILE
        if not p.is_file() or json.loads(p.read_text()) != info:
            p.write_text(json.dumps(info, indent=1))


# ------------------------------------------------------------------------------- one run
_CHILDREN: set = set()
_CHILDREN_LOCK = threading.Lock()


# The command runs under this launcher: on Linux it dies with the runner (parent-death signal
# SIGTERM, which a command answers by saving a checkpoint), also when the runner is SIGKILLed;
# SIGUSR2 (SLURM's warning before preemption or the time limit, sent to every process of the
# job) is left to the runner, which stops the command itself (:meth:`Job.checkpoint`).
_LAUNCHER = """import ctypes, os, signal, sys
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(143)  # the runner died before the signal was armed
os.execv(sys.argv[2], sys.argv[2:])
"""


def launched(cmd: list[str]) -> list[str]:
    """``cmd`` under the launcher that ties it to this process (see ``_LAUNCHER``)."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *cmd]


def execute(job: dict) -> int:
    """Run one command (a job dict from :func:`make_job`); returns its exit code. With
    ``job['wait']`` it first waits for its parents (submitit jobs started before them). What the
    dir holds is judged now (a requeued job, a parent remade since the job was made): a done run
    is skipped, a stale one remade in a clean dir, a partial one resumed."""
    d = Path(job["dir"])
    d.mkdir(parents=True, exist_ok=True)
    if job.get("wait") and not _wait_for(job["deps"], job["since"]):
        _append_attempt(d, time.time(), DEP_FAILED, job, note="a parent run failed")
        return DEP_FAILED
    _wait_unlocked(d)
    state = dir_state(d, job.get("data", ()))
    if state == "done":
        return 0
    cmd = list(job["cmd"])
    if state == "stale":
        clean_run_dir(d)
        cmd = [a for a in cmd if a != "--resume"]
    elif state == "partial" and job.get("resumable") and "--resume" not in cmd:
        cmd.append("--resume")
    start = time.time()
    env = {**os.environ, **job.get("env", {})}
    with open(d / LOG_FILE, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(launched(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        try:
            rc = proc.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc)
    _append_attempt(d, start, rc, {**job, "cmd": cmd})
    return rc


def clean_run_dir(d: Path) -> None:
    """Remove what a command wrote into ``d`` (the study's own files stay): a remade run starts
    from a clean dir, so no old file is left beside the new ones."""
    import shutil

    for p in Path(d).iterdir():
        if p.name not in STUDY_FILES:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _wait_unlocked(d: Path, timeout: float = 120.0, poll: float = 0.5) -> None:
    """Wait (up to ``timeout``) while another live process holds ``d``'s run lock: the command
    of a killed runner saving its checkpoint before it exits."""
    lock, t0 = RunLock(d), time.time()
    while lock.busy() and time.time() - t0 < timeout:
        time.sleep(poll)


class Job:
    """A submitit job: :func:`execute` of one job dict. On SLURM's warning before preemption or
    the time limit, submitit calls :meth:`checkpoint`: the command is stopped (SIGTERM: it saves
    a checkpoint) and the same job is requeued; it then resumes the run (see :func:`execute`)."""

    def __init__(self, job: dict):
        self.job = job

    def __call__(self) -> int:
        return execute(self.job)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        _stop_children()
        return DelayedSubmission(Job(self.job))


def _append_attempt(d: Path, start: float, rc: int, job: dict, note: str | None = None):
    entry = {"start": start, "end": time.time(), "rc": rc, "host": socket.gethostname(),
             "gpus": job.get("env", {}).get("CUDA_VISIBLE_DEVICES"),
             "resumed": "--resume" in job["cmd"], **({"note": note} if note else {})}
    with open(d / ATTEMPTS_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _wait_for(deps: list, since: float, poll: float = 2.0) -> bool:
    """Wait until every parent (dir, step) is done; False once one failed after ``since``."""
    while True:
        pending = [(d, s) for d, s in deps if not run_done(d, s)]
        if not pending:
            return True
        for d, _ in pending:
            if any(a["rc"] != 0 and a["start"] >= since for a in attempts(d)):
                return False
        time.sleep(poll)


def make_job(plan: Plan, out, run: Run, threads=None, gpus_per_run=1, env=None,
             wait_deps=False) -> dict:
    """What :func:`execute` needs, as plain data (submitit pickles it)."""
    return {"name": run.name, "step": run.step, "dir": str(run_dir(out, run)),
            "cmd": command_line(plan, out, run, threads, gpus_per_run), "env": dict(env or {}),
            "data": run_data(plan, run), "resumable": resume_flag(run),
            "deps": [(str(run_dir(out, plan.runs[p])), plan.runs[p].step) for p in run.deps],
            "wait": wait_deps, "since": time.time()}


def _last_line(d) -> str:
    p = Path(d) / LOG_FILE
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()] \
        if p.is_file() else []
    return lines[-1].strip() if lines else ""


# ------------------------------------------------------------------------------ executors
@dataclass
class Outcome:
    done_before: int = 0
    ran: list = field(default_factory=list)
    failed: list = field(default_factory=list)     # (name, exit code, last log line)
    blocked: list = field(default_factory=list)    # names whose parent failed
    left: list = field(default_factory=list)       # names not started (run budget)
    submitted: dict = field(default_factory=dict)  # name -> job id (slurm)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked)


class _Budget:
    def __init__(self, max_runs):
        self.left = max_runs

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def prepare(plan: Plan, out, force: bool = False) -> tuple[Path, RunLock, list[Run], Outcome]:
    """Lock OUT, refuse another study's dir (without ``force``), copy the study file there,
    write the plan and each run's study.json; the runs to do: those not done, and every run
    below one of them (a remade parent may change its children: :func:`execute` decides)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    try:
        check_same_study(plan, out, force)
        if plan.study.source:
            (out / "study.yaml").write_text(Path(plan.study.source).read_text())
        write_plan(plan, out)
        write_run_files(plan, out)
    except BaseException:
        lock.release()
        raise
    todo: list[Run] = []
    for r in plan.runs.values():  # parents before children
        if status(out, r, plan) != "done" or any(p in {t.name for t in todo} for p in r.deps):
            todo.append(r)
    return out, lock, todo, Outcome(done_before=len(plan.runs) - len(todo))


def read_plan(out) -> dict | None:
    """OUT/study_plan.json ({study, source, runs: {name: step}}), None when OUT has none."""
    p = Path(out) / PLAN_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise DalivsslError(f"{p}: unreadable study plan ({exc})") from None


def write_plan(plan: Plan, out) -> None:
    info = {"study": plan.study.name, "source": plan.study.source and
            str(Path(plan.study.source).resolve()),
            "runs": {n: r.step for n, r in plan.runs.items()}}
    (Path(out) / PLAN_FILE).write_text(json.dumps(info, indent=1))


def check_same_study(plan: Plan, out, force: bool = False) -> None:
    """A study dir holds one study: another study file (another ``name:``) is refused without
    ``force``. An edited file of the same study replaces the plan (results then read its runs
    only; ``study status`` lists the others, ``study clean`` removes them)."""
    old = read_plan(out)
    if old and old.get("study") != plan.study.name and not force:
        raise DalivsslError(f"{out}: holds study {old.get('study')!r} (from {old.get('source')});"
                            f" {plan.study.source or 'this file'} is study {plan.study.name!r}: "
                            "use another --out, or --force to make it this study's dir")


def runs_not_in_plan(out) -> list[Path]:
    """Run dirs under OUT that the current plan does not have (older versions of the file)."""
    plan = read_plan(out) or {}
    names = set(plan.get("runs", {}))
    return sorted(p.parent for p in Path(out).glob(f"*/*/{RUN_FILE}") if p.parent.name not in names)


def run_local(plan: Plan, out, jobs: int = 1, gpus=(), gpus_per_run: int = 1,
              threads: int | None = None, max_runs: int | None = None, say=print,
              force: bool = False) -> Outcome:
    """Run what is not done, ``jobs`` commands at a time, children after their parents. With
    ``gpus`` each pretraining gets ``gpus_per_run`` of them (torchrun), other runs one
    (CUDA_VISIBLE_DEVICES). SIGTERM or Ctrl-C stops the running commands and the study."""
    out, lock, todo, res = prepare(plan, out, force)
    if gpus and len(gpus) < gpus_per_run:
        lock.release()
        raise DalivsslError(f"--gpus-per-run {gpus_per_run} but only {len(gpus)} GPU(s)")
    local = _Local(plan, out, todo, res, jobs, list(gpus), gpus_per_run, threads, max_runs, say)
    previous = _on_sigterm()
    try:
        local.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        lock.release()
    return res


class _Local:
    """The local executor's state: runs waiting, running (future -> run, GPUs, start), failed."""

    def __init__(self, plan, out, todo, res, jobs, gpus, gpus_per_run, threads, max_runs, say):
        self.plan, self.out, self.todo, self.res, self.say = plan, out, todo, res, say
        self.free, self.per_run, self.threads = gpus, gpus_per_run, threads
        self.gpu_mode = bool(gpus)
        self.slots = max(1, min(jobs, len(gpus)) if gpus else jobs)
        self.budget, self.waiting, self.failed = _Budget(max_runs), list(todo), set()
        self.running: dict = {}

    def run(self) -> None:
        with ThreadPoolExecutor(self.slots) as pool:
            try:
                while self.waiting or self.running:
                    self.start_ready(pool)
                    if not self.running:
                        break
                    finished, _ = wait(self.running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        self.finish(fut)
            except KeyboardInterrupt:  # stop the commands before the pool waits for them
                _stop_children()
                raise
        self.res.left = [r.name for r in self.waiting]

    def start_ready(self, pool) -> None:
        for r in [r for r in self.waiting if any(p in self.failed for p in r.deps)]:
            self.waiting.remove(r)
            self.failed.add(r.name)
            self.res.blocked.append(r.name)
        ready = [r for r in self.waiting
                 if all(status(self.out, self.plan.runs[p], self.plan) == "done"
                        for p in r.deps)]
        for r in [r for r in ready if status(self.out, r, self.plan) == "done"]:
            ready.remove(r)  # below a remade run, but still current (its parents unchanged)
            self.waiting.remove(r)
            self.res.done_before += 1
        for r in ready:
            n_gpus = (self.per_run if r.step == "pretrain" else 1) if self.gpu_mode else 0
            if len(self.running) >= self.slots or len(self.free) < n_gpus or \
                    not self.budget.take():
                break
            self.waiting.remove(r)
            ids = [self.free.pop(0) for _ in range(n_gpus)]
            env = {"CUDA_VISIBLE_DEVICES": ",".join(ids)} if ids else {}
            job = make_job(self.plan, self.out, r, self.threads, max(1, len(ids)), env)
            self.running[pool.submit(execute, job)] = (r, ids, time.time())

    def finish(self, fut) -> None:
        r, ids, t0 = self.running.pop(fut)
        self.free.extend(ids)
        rc = fut.result()
        d = run_dir(self.out, r)
        n = f"[{len(self.res.ran) + len(self.res.failed) + 1}/{len(self.todo)}]"
        if rc == 0 and run_done(d, r.step, run_data(self.plan, r)):
            self.res.ran.append(r.name)
            self.say(f"{n} done {r.name} ({time.time() - t0:.1f}s)")
        else:
            self.failed.add(r.name)
            self.res.failed.append((r.name, rc, _last_line(d)))
            self.say(f"{n} FAILED {r.name} (exit {rc}): {_last_line(d)}")


def _on_sigterm():
    """SIGTERM stops the study like Ctrl-C (children terminated); returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _stop_children():
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def run_submitit(plan: Plan, out, cluster: str = "slurm", partition: str | None = None,
                 gpus_per_run: int = 1, threads: int | None = None, time_min: int = 24 * 60,
                 max_runs: int | None = None, wait_jobs: bool = True, slurm_extra=None,
                 say=print, force: bool = False) -> Outcome:
    """One submitit job per run, in dependency order. On SLURM a child waits for its parents
    with ``--dependency=afterok:…``; every job also waits for its parents' completion itself, so
    submitit's local executor (all jobs at once) keeps the order too. ``cluster``: 'slurm',
    'local' or 'debug' (submitit's in-process executor, one job after the other)."""
    import submitit

    out, lock, todo, res = prepare(plan, out, force)
    try:
        ex = submitit.AutoExecutor(folder=out / "submitit" / "%j", cluster=cluster)
        params = {"timeout_min": time_min, "name": f"study-{plan.study.name}",
                  "cpus_per_task": threads or 2}
        if cluster == "slurm":
            params.update(slurm_partition=partition, **dict(slurm_extra or {}))
        elif cluster == "local":
            params["local_setup"] = [_local_job_dir_wait(out / "submitit")]
        ex.update_parameters(**params)
        budget, jobs = _Budget(max_runs), {}
        for r in todo:
            if not all(p in jobs or status(out, plan.runs[p], plan) == "done" for p in r.deps) \
                    or not budget.take():
                res.left.append(r.name)
                continue
            after = [jobs[p].job_id for p in r.deps if p in jobs]
            if cluster == "slurm":
                ex.update_parameters(slurm_additional_parameters={
                    "dependency": "afterok:" + ":".join(after)} if after else {})
            n_gpus = 1
            if plan.study.device == "gpu":
                n_gpus = gpus_per_run if r.step == "pretrain" else 1
                ex.update_parameters(gpus_per_node=n_gpus)
            job = make_job(plan, out, r, threads, n_gpus, wait_deps=True)
            jobs[r.name] = ex.submit(Job(job))
            res.submitted[r.name] = jobs[r.name].job_id
        say(f"submitted {len(jobs)} job(s) to {cluster}" + (f"; {len(res.left)} left" if
                                                           res.left else ""))
        if wait_jobs:
            for name, job in jobs.items():
                rc = job.result()
                r = plan.runs[name]
                if rc == 0 and run_done(run_dir(out, r), r.step, run_data(plan, r)):
                    res.ran.append(name)
                    say(f"done {name}")
                elif rc == DEP_FAILED:
                    res.blocked.append(name)
                else:
                    res.failed.append((name, rc, _last_line(run_dir(out, r))))
                    say(f"FAILED {name} (exit {rc}): {_last_line(run_dir(out, r))}")
    finally:
        lock.release()
    return res


def _local_job_dir_wait(folder: Path) -> str:
    """A shell line for submitit's local executor: wait (at most 20 s) until the job's folder
    exists. The executor starts a job's controller and only then creates ``<folder>/<job id>``
    (it learns the id, the controller's pid, from the start), so on a busy machine a quick
    controller failed to open its logs there and the job ended with no output. With a setup
    line the controller runs under a shell whose pid (``$$``) is the job id."""
    import shlex

    return (f"i=0; while [ ! -d {shlex.quote(str(folder))}/$$ ] && [ $i -lt 400 ]; "
            "do sleep 0.05; i=$((i+1)); done")


def local_gpus() -> list[str]:
    """GPU ids for local runs: those CUDA_VISIBLE_DEVICES lists, else every GPU torch sees."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return [v.strip() for v in vis.split(",") if v.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
