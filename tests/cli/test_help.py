"""Every command and subcommand answers --help fast without importing torch, DALI or CuPy."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dalivssl.cli import COMMANDS

PROBE = r"""
import sys, json, time
from click.testing import CliRunner
from dalivssl.cli import cli
args = json.loads(sys.argv[1])
t = time.perf_counter()
res = CliRunner().invoke(cli, args + ["--help"])
dt = time.perf_counter() - t
heavy = [m for m in ("torch", "nvidia.dali", "cupy", "h5py", "av", "matplotlib") if m in sys.modules]
print(json.dumps({"code": res.exit_code, "out": res.output, "dt": dt, "heavy": heavy,
                  "exc": repr(res.exception) if res.exception else None}))
"""


def _help(args):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def _subcommands(name):
    """Names of a group's subcommands (data, bench), [] for plain commands."""
    import click

    from dalivssl.cli import cli

    ctx = click.Context(cli)
    cmd = cli.get_command(ctx, name)
    return sorted(cmd.list_commands(ctx)) if isinstance(cmd, click.Group) else []


def test_top_level_help_lists_every_command():
    res, wall = _help([])
    assert res["code"] == 0
    for name in COMMANDS:
        assert name in res["out"]
    assert res["heavy"] == []
    assert wall < 2.0


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_is_fast_and_light(name):
    res, wall = _help([name])
    assert res["code"] == 0, res["exc"]
    assert "Usage:" in res["out"]
    assert res["heavy"] == [], f"{name} --help imported {res['heavy']}"
    assert wall < 2.0, f"{name} --help took {wall:.2f}s"
    for sub in _subcommands(name):
        res, wall = _help([name, sub])
        assert res["code"] == 0, (sub, res["exc"])
        assert res["heavy"] == [], f"{name} {sub} --help imported {res['heavy']}"
        assert wall < 2.0, f"{name} {sub} --help took {wall:.2f}s"


def test_unknown_command_fails_cleanly():
    out = subprocess.run([sys.executable, "-m", "dalivssl", "no-such-command"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_pretrain_help_lists_every_registered_task():
    """The --task help is read from dalivssl.tasks.TASKS: a new task needs no help edit."""
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.tasks import TASKS

    out = CliRunner().invoke(cli, ["pretrain", "--help"]).output
    text = " ".join(out.split())
    assert "{names}" not in text
    assert "Pretext task: " + ", ".join(TASKS) + " (default vcop)." in text
