"""`dalivssl study`: the paper's experiment grids as files: plan, run, collect.

Heavy imports (torch via the task/arch registries, submitit, matplotlib) happen inside the
subcommands, so `dalivssl study --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path

import click

from dalivssl.study.runner import EXECUTORS  # light: torch and submitit load in the commands


def _columns(header, rows) -> str:
    """Plain aligned columns (copies into notes and issues as is)."""
    rows = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


@click.group("study")
def study():
    """Run the paper's experiment grids: a study file (YAML) names axes (tasks × archs × data ×
    subset sizes × complexity × seeds) and the downstream steps of every pretrained cell
    (finetune, probe, retrieval, robustness, CKA, distillation). Each run is an ordinary dalivssl
    command in its own directory under --out; reruns skip what is done."""


@study.command("presets")
@click.argument("name", required=False)
def presets(name):
    """List the shipped study presets, or print preset NAME (copy it to make your own)."""
    from dalivssl.study.spec import PRESETS_DIR, find_study, preset_names

    if name:
        click.echo(find_study(name).read_text(), nl=False)
        return
    import yaml

    rows = []
    for n in preset_names():
        raw = yaml.safe_load((PRESETS_DIR / f"{n}.yaml").read_text())
        text = " ".join(str(raw.get("description", "")).split())
        rows.append([n, text if len(text) <= 90 else text[:89].rstrip() + "…"])
    click.echo(_columns(["preset", "description"], rows))


@study.command("plan")
@click.argument("study_file")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Study dir: also say which runs are done there.")
@click.option("--runs", "show_runs", is_flag=True, help="List every run and its command.")
def plan(study_file, out, show_runs):
    """List the cells of STUDY_FILE (a file or preset name) and the runs they expand to."""
    from dalivssl.study import runner
    from dalivssl.study.spec import AXES, load_plan

    p = load_plan(study_file)
    click.echo(f"{p.study.name} (protocol {p.study.protocol}): {p.study.description}\n")
    state = {n: (runner.status(out, r, p) if out else "") for n, r in p.runs.items()}
    rows = [[*(getattr(c, a) for a in AXES), len(p.by_cell[c.label]),
             sum(state[n] == "done" for n in p.by_cell[c.label]) if out else "-"]
            for c in p.cells]
    click.echo(_columns([*AXES, "runs", "done"], rows))
    if show_runs:
        import shlex

        click.echo()  # commands as a shell reads them ({run:…}, {data:…}: resolved at run time)
        click.echo(_columns(["step", "run", "status", "command"],
                            [[r.step, r.name, state[n] or "-", shlex.join(["dalivssl", *r.argv])]
                             for n, r in p.runs.items()]))
    by_step: dict = {}
    for r in p.runs.values():
        by_step[r.step] = by_step.get(r.step, 0) + 1
    done = sum(s == "done" for s in state.values())
    click.echo(f"\n{p.study.name}: {len(p.cells)} cells, {len(p.runs)} runs ("
               + ", ".join(f"{n} {k}" for k, n in by_step.items()) + ")"
               + (f"; {done} done in {out}" if out else ""))
    missing = _missing_manifests(p.study)
    if missing:
        click.echo(f"note: {len(missing)} manifest(s) not found, e.g. {missing[0]} (needed by "
                   "`study run`; set $DALIVSSL_DATA or edit data:)", err=True)


def _missing_manifests(study) -> list[str]:
    return sorted({f for d in study.datasets.values() for f in (d.train, d.test)
                   if f and not Path(f).is_file()})


@study.command("run")
@click.argument("study_file")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Study dir.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local: N commands at a time here; slurm: one submitit job per run; "
                   "submitit-local/debug: submitit's local/in-process executors.")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None,
              help="local: runs at a time (default: one per GPU group, else 1).")
@click.option("--gpus", default=None, help="local: GPU ids to use, e.g. 0,1,2,3 (default: "
              "all visible when the study's device is gpu).")
@click.option("--gpus-per-run", type=click.IntRange(1), default=1, show_default=True,
              help="GPUs per run (pretraining uses torchrun when > 1).")
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--time-min", type=click.IntRange(1), default=24 * 60, show_default=True,
              help="submitit: time limit per job (minutes).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads per run (default: the study's, else cores / jobs).")
@click.option("--max-runs", type=click.IntRange(0), default=None,
              help="Start at most N runs, then stop (rerun to continue).")
@click.option("--wait/--no-wait", "wait", default=None,
              help="submitit: wait for the jobs (default: wait, except on slurm).")
@click.option("--force", is_flag=True, help="Make --out this study's dir although it holds "
              "another study (its runs stay until `study clean`).")
def run(study_file, out, executor, jobs, gpus, gpus_per_run, partition, time_min, threads,
        max_runs, wait, force):
    """Run STUDY_FILE's runs that are not done yet into --out (resumes killed runs)."""
    import os

    from dalivssl.errors import DalivsslError
    from dalivssl.study import runner
    from dalivssl.study.spec import load_plan

    p = load_plan(study_file)
    missing = _missing_manifests(p.study)
    if missing:
        raise DalivsslError(f"manifest {missing[0]} not found"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if executor == "slurm" and not partition:
        raise DalivsslError("--executor slurm needs --partition")
    say = click.echo
    if executor == "local":
        ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else (
            runner.local_gpus() if p.study.device == "gpu" else [])
        if p.study.device == "gpu" and not ids:
            raise DalivsslError("the study's device is gpu but no GPU is visible")
        jobs = jobs or max(1, len(ids))  # GPUs bound how many run at once
        threads = threads or p.study.threads or max(1, (os.cpu_count() or 1) // jobs)
        res = runner.run_local(p, out, jobs=jobs, gpus=ids, gpus_per_run=gpus_per_run,
                               threads=threads, max_runs=max_runs, say=say, force=force)
    else:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise DalivsslError("--executor slurm needs submitit (pip install "
                                "'dalivssl[study]')") from None
        cluster = {"submitit-local": "local"}.get(executor, executor)
        res = runner.run_submitit(p, out, cluster=cluster, partition=partition,
                                  gpus_per_run=gpus_per_run, threads=threads or p.study.threads,
                                  time_min=time_min, max_runs=max_runs,
                                  wait_jobs=executor != "slurm" if wait is None else wait,
                                  say=say, force=force)
    total = len(p.runs)
    # submitit jobs still queued or running (the local executor submits nothing: waits for all)
    unfinished = max(0, len(res.submitted) - len(res.ran) - len(res.failed) - len(res.blocked))
    click.echo(f"{p.study.name}: {res.done_before + len(res.ran)}/{total} runs done"
               f" ({len(res.ran)} now, {res.done_before} before)"
               + (f"; {unfinished} submitted, not finished (`dalivssl study plan "
                  f"{study_file} --out {out}` shows progress)" if unfinished else "")
               + (f"; {len(res.failed)} failed" if res.failed else "")
               + (f"; {len(res.blocked)} not run (a parent failed)" if res.blocked else "")
               + (f"; {len(res.left)} left (rerun to continue)" if res.left else ""))
    for name, rc, line in res.failed:
        click.echo(f"failed: {name} (exit {rc}): {line}", err=True)
    return 0 if res.ok else 1


@study.command("results")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--compare", "other", type=click.Path(file_okay=False), default=None,
              help="Another study dir: headline metrics side by side (Δ = other − this).")
@click.option("--views", "views_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the table and views (default STUDY_DIR/results).")
def results(study_dir, other, views_dir):
    """Collect every finished run of STUDY_DIR's current plan (the study file it last ran) into
    one tidy table (CSV, Parquet) and the paper's views (PNG, markdown, LaTeX); print the
    headline tables."""
    from dalivssl.study import results as R

    warn = lambda line: click.echo(f"warning: {line}", err=True)  # noqa: E731
    rep = R.report(study_dir, views_dir, warn)
    for t in rep["tables"]:
        click.echo(f"\n{t['title']}")
        click.echo(_columns(t["header"], t["rows"]))
    paths = rep["paths"]
    n = rep["progress"]
    click.echo(f"\n{n['done']} of {n['total']} runs done, {n['failed']} failed, "
               f"{n['pending']} pending; {len(rep['rows'])} rows -> {paths['csv']}" + (f", {paths['parquet'].name}" if "parquet" in paths
                                            else "")
               + f", summary.csv, tables.md, tables.tex"
               + "".join(f", {p.name}" for p in paths["figures"]))
    if other:
        rows_b = R.collect(other, warn)
        cmp = R.compare(rep["summary"], R.summarize(rows_b))
        out = Path(views_dir or Path(study_dir) / "results") / "compare.csv"
        R.write_csv(out, cmp, [*cmp[0].keys()] if cmp else ["metric"])
        click.echo(f"\n{Path(study_dir).name} vs {Path(other).name}")
        click.echo(R.compare_markdown(cmp, Path(study_dir).name, Path(other).name))
        click.echo(f"-> {out}")


@study.command("status")
@click.argument("study_dir", type=click.Path(file_okay=False))
def status(study_dir):
    """How far STUDY_DIR's current plan is (runs per step: done, failed, pending), and the run
    dirs that are not in it (made by an older version of the study file)."""
    from dalivssl.study import results as R
    from dalivssl.study import runner

    rows: dict = {}
    for d in R.plan_dirs(study_dir):
        state = "done" if runner.run_done(d) else "failed" if (
            (a := runner.attempts(d)) and a[-1].get("rc") != 0) else "pending"
        rows.setdefault(d.parent.name, {"done": 0, "failed": 0, "pending": 0})[state] += 1
    click.echo(_columns(["step", "done", "failed", "pending"],
                        [[k, v["done"], v["failed"], v["pending"]] for k, v in rows.items()]))
    n = R.progress(study_dir)
    click.echo(f"\n{n['done']} of {n['total']} runs done, {n['failed']} failed, "
               f"{n['pending']} pending")
    extra = runner.runs_not_in_plan(study_dir)
    if extra:
        click.echo(f"\n{len(extra)} run dir(s) not in the current plan (`dalivssl study clean "
                   f"{study_dir}` removes them):")
        for d in extra:
            click.echo(f"  {d.parent.name}/{d.name}")


@study.command("clean")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
def clean(study_dir, dry_run):
    """Remove the run dirs of STUDY_DIR that its current plan does not have."""
    import shutil

    from dalivssl.errors import DalivsslError
    from dalivssl.record import RunLock
    from dalivssl.study import runner

    if runner.read_plan(study_dir) is None:
        raise DalivsslError(f"{study_dir}: no {runner.PLAN_FILE} (run `dalivssl study run` into "
                            "it first); nothing removed")
    with RunLock(study_dir):
        extra = runner.runs_not_in_plan(study_dir)
        for d in extra:
            click.echo(f"{'would remove' if dry_run else 'removed'} {d.parent.name}/{d.name}")
            if not dry_run:
                shutil.rmtree(d)
    click.echo(f"{len(extra)} run dir(s) not in the plan" + (" (dry run)" if dry_run else
                                                               " removed"))
