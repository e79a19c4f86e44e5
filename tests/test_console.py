"""Progress output in logs: off a terminal, rich must not squeeze a bar into 80 columns."""
from __future__ import annotations

import subprocess
import sys

from dalivssl.console import stderr_console

BAR = """
from dalivssl.data.parallel import progress_bar
with progress_bar("checking the videos of a manifest with a long name, " * 2, 3) as advance:
    advance(); advance(); advance()
"""


def test_stderr_console_is_wide_off_a_terminal():
    c = stderr_console()  # pytest captures stderr: not a terminal
    assert c.stderr and not c.is_terminal and c.width == 160


def test_progress_bar_in_a_log_keeps_its_count_and_times():
    proc = subprocess.run([sys.executable, "-c", BAR], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "3/3" in last and last.count("0:00:0") == 2, last
