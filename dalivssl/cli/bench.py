"""`dalivssl bench …`: throughput benchmarks. Each subcommand lives in benchmarks/<module>.py as a
click command named ``cli`` and is imported only when run."""
from __future__ import annotations

import importlib

import click

# subcommand -> (module under benchmarks, one-line help)
BENCHMARKS = {
    "loader": ("loader_throughput",
               "Pretext loader clips/s vs PyTorch DataLoader + torchcodec / PyAV."),
    "noise": ("noise_throughput", "DALI noise injection throughput vs numpy."),
    "cka": ("cka_throughput", "CKA map throughput (NumPy / CuPy)."),
    "sweep": ("sweep_cost", "Robustness sweep cost: 21 cells vs one clean evaluation."),
    "gpu-check": ("gpu_check", "The GPU path verified in one command (doctor, tests, figures)."),
    "pretrain-vs-scratch": ("pretrain_vs_scratch",
                            "Finetune top-1: pretext-pretrained vs randomly initialised backbone."),
}


class _LazyBench(click.Group):
    def list_commands(self, ctx):
        return sorted(BENCHMARKS)

    def get_command(self, ctx, name):
        if name not in BENCHMARKS:
            return None
        return importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}").cli

    def format_commands(self, ctx, formatter):
        with formatter.section("Benchmarks"):
            formatter.write_dl([(n, BENCHMARKS[n][1]) for n in self.list_commands(ctx)])


@click.group(cls=_LazyBench)
def bench():
    """Throughput benchmarks; each prints a table and writes JSON (never part of the tests)."""
