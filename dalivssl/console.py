"""The rich console that every command draws its progress bars and status lines on."""
from __future__ import annotations


def stderr_console():
    """A rich ``Console`` on stderr (stdout stays clean for results). When stderr is not a
    terminal (logs, pipes, CI) it is 160 columns wide: rich would otherwise squeeze a progress
    line into 80 characters and cut its counts and times to ``…``."""
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=160)


def stdout_console():
    """A rich ``Console`` on stdout for results (tables); 160 columns off a terminal, so a table
    in a log file is not wrapped at 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def progress(console=None, *, info: bool = False, disable: bool = False):
    """The one rich progress bar of every command: description, bar, done/total, elapsed and
    remaining time, plus the task's ``info`` field when ``info``; drawn on ``console`` (default
    :func:`stderr_console`). Returns a ``rich.progress.Progress`` to use as a context manager."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console or stderr_console(), disable=disable)
