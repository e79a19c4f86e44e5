"""`dalivssl doctor`: what this machine offers the toolkit; run it first on a new machine (the
report itself: ``dalivssl.doctor``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dalivssl.doctor import render, render_matrix, report  # noqa: F401 (render_matrix: API)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON report to this file.")
@click.option("--no-matrix", is_flag=True, help="Skip the decode matrix.")
@click.option("--cases", default=None,
              help="Comma list of matrix cases (default: all of decode_matrix.CASES).")
@click.option("--sizes", default=None, help="Comma list of frame sides (default 64,112,128,240).")
def doctor(as_json, out, no_matrix, cases, sizes):
    """Check this machine: versions, GPUs, NVDEC, and what DALI decodes here (run it first)."""
    from dalivssl.data.decode_matrix import CASES
    from dalivssl.errors import unknown_name

    case_list = [c.strip() for c in cases.split(",") if c.strip()] if cases else None
    for c in case_list or []:
        if c not in CASES:
            raise unknown_name("case", c, CASES)
    size_list = [int(s) for s in sizes.split(",")] if sizes else None
    if as_json:
        rep = report(not no_matrix, case_list, size_list)
        click.echo(json.dumps(rep, indent=2))
    else:
        from dalivssl.console import stderr_console

        with stderr_console().status("decode matrix: writing and decoding test videos …"):
            rep = report(not no_matrix, case_list, size_list)
        click.echo(render(rep))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rep, indent=2))
    sys.stdout.flush()
