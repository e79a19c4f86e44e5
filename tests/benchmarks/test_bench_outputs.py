"""Benchmark output (review t3 #15): logged lines carry no ``loader_throughput.py:NNN`` suffix,
and every benchmark JSON names its benchmark under ``benchmark``."""
from __future__ import annotations

import io
import json

from click.testing import CliRunner


def test_loader_log_lines_have_no_source_location():
    from benchmarks.loader_throughput import make_console

    buf = io.StringIO()
    console = make_console(buf)
    console.log("decoded 2 batches")
    text = buf.getvalue()
    assert "decoded 2 batches" in text and ".py:" not in text
    assert console.width == 160  # not a terminal: the table's width


def test_cka_json_names_its_benchmark(tmp_path):
    from benchmarks.cka_throughput import cli

    out = tmp_path / "cka.json"
    res = CliRunner().invoke(cli, ["--examples", "8", "--batch-size", "4", "--layers", "1",
                                   "--dims", "16", "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["benchmark"] == "cka_throughput"
    assert data["config"]["examples"] == 8 and data["results"][0]["backend"].startswith("numpy")
