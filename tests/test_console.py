"""The one progress bar helper: counts, description and info field reach the console."""
from __future__ import annotations

from rich.console import Console

from dalivssl.console import progress


def test_progress_draws_description_counts_and_info():
    con = Console(record=True, width=120, force_terminal=False)
    with progress(con, info=True) as bar:
        task = bar.add_task("features train", total=7, info="loss 0.25")
        bar.update(task, advance=3)
    text = con.export_text()
    assert "features train" in text and "3/7" in text and "loss 0.25" in text


def test_progress_disabled_draws_nothing():
    con = Console(record=True, width=120)
    with progress(con, disable=True) as bar:
        bar.update(bar.add_task("x", total=2), advance=2)
    assert con.export_text().strip() == ""
