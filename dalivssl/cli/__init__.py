"""`dalivssl` command line: a click group whose subcommands are imported only when invoked.

Every command module lives in this package and defines one click command (or group). The table
below is the single place that names them; `dalivssl --help` imports none of them, so it answers
fast and never touches DALI, torch or a GPU.
"""
from __future__ import annotations

import importlib
import sys

import click

# command name -> (module under dalivssl.cli, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("data", "data", "Index, subset, synthesise, check and prepare video datasets."),
    "pretrain": ("pretrain", "pretrain", "Pretrain a backbone on a pretext task."),
    "finetune": ("finetune", "finetune", "Finetune or linear-probe a pretrained backbone."),
    "retrieve": ("retrieve", "retrieve", "Nearest-neighbour clip retrieval (top-k)."),
    "robustness": ("robustness", "robustness", "Noise-robustness sweep (R_s per noise/severity)."),
    "corrupt": ("corrupt", "corrupt", "Write a noise-corrupted copy of a video."),
    "cka": ("cka", "cka", "Layer x layer minibatch CKA map between checkpoints."),
    "distill": ("distill", "distill", "Multi-teacher knowledge distillation into a student."),
    "export-logits": ("distill", "export_logits", "Export a checkpoint's logits to HDF5."),
    "bench": ("bench", "bench", "Throughput benchmarks (loader, noise, CKA, sweep)."),
    "doctor": ("doctor", "doctor", "Check this machine: versions, GPUs, NVDEC, what DALI decodes."),
    "study": ("study", "study", "Run the paper's experiment grids and make its tables."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"dalivssl.cli.{module}"), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dalivssl")
def cli():
    """dalivssl: contextual self-supervised video representation learning on NVIDIA DALI.

    Kumar et al., "A Large-Scale Analysis on Contextual Self-Supervised Video Representation
    Learning". Without --data, commands use the embedded synthetic dataset.
    """


def main(argv=None):
    """Console entry point: user errors become one line on stderr and exit code 2."""
    from dalivssl.errors import DalivsslError

    try:
        rv = cli.main(args=argv, prog_name="dalivssl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DalivsslError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))  # 2, or 128 + signal for a stopped run
    except ValueError as exc:
        # pipelines/ and models/ cannot import dalivssl, so their input errors (LoaderError,
        # TooShort, bad noise names, models.ModelError) are ValueError subclasses defined there:
        # report them the same way.
        if not type(exc).__module__.startswith(("pipelines", "models")):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # the file system refused (unwritable --out, a path through a file, disk full): one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    # commands return None or an int exit code (e.g. `data check` reports problems with 1)
    sys.exit(rv if isinstance(rv, int) else 0)
