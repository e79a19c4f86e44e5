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
