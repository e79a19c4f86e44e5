"""Run a picklable function over many jobs: a spawn process pool plus a rich progress bar."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence


@contextmanager
def progress_bar(what: str, total: int, enabled: bool = True):
    """A rich progress bar (description, bar, done/total, elapsed, remaining); yields advance()."""
    if not enabled:
        yield lambda n=1: None
        return
    from dalivssl.console import progress

    # stderr: stdout stays clean for results (one line per bad video, manifest paths)
    with progress() as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)


def default_workers(n_jobs: int) -> int:
    return max(1, min(n_jobs, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def imap(fn: Callable, jobs: Sequence, workers: int | None = None) -> Iterator:
    """Results of ``fn(job)`` in job order. workers <= 1 runs in this process (no start-up cost);
    otherwise a *spawn* pool: the caller may hold DALI/torch threads that fork would copy
    half-alive."""
    workers = default_workers(len(jobs)) if workers is None else max(1, int(workers))
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            yield fn(j)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from dalivssl.errors import DalivsslError

    try:
        with ProcessPoolExecutor(min(workers, len(jobs)),
                                 mp_context=mp.get_context("spawn")) as ex:
            yield from ex.map(fn, jobs, chunksize=max(1, len(jobs) // (16 * workers)))
    except BrokenProcessPool:
        raise DalivsslError("a worker process died before finishing its jobs (its own error, if "
                            "any, is printed above)") from None


def run(fn: Callable, jobs: Sequence, workers: int | None = None, progress: bool = False,
        what: str = "") -> list:
    """``list(imap(...))`` with a progress bar."""
    out = []
    with progress_bar(what, len(jobs), progress) as advance:
        for r in imap(fn, jobs, workers):
            out.append(r)
            advance()
    return out

