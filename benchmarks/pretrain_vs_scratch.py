"""Does pretext pretraining help? A pretrained vs a randomly initialised backbone, same finetuning.

1. ``dalivssl pretrain --task TASK --arch ARCH`` on the train split of the synthetic dataset;
2. ``dalivssl finetune`` from that checkpoint and from random weights with the same budget
   (epochs, batch, lr, clips, normalisation, seed);
3. a table of clip- and video-level top-1 on the test split, and JSON in --out.

Each step is a subprocess of the real CLI, so this measures what a user would run. Finished
steps are reused when their output exists (``--fresh`` to redo them).

Defaults: PRP for 480 steps (its decoder at width 128, ``PRETRAIN_SET``), then 24 finetuning
epochs with AdamW 1e-3, a budget in which a random init learns the synthetic classes at all.
Measured on 2 CPU cores (``--eval-clips 5``; 34 min of pretraining, 7 of them beside the test
suite, and 8 min per finetuning): PRP-pretrained 0.433 clip / 0.556 video top-1 against 0.406 /
0.528 from random init (seed 0); finetuning seed 1 from the same checkpoint: 0.425 / 0.597
against 0.389 / 0.514. 72 test videos, so one video is 0.014. VCOP (``--task vcop
--pretrain-steps 112``) gave no gain (0.40 / 0.50 vs 0.41 / 0.53): it learns only the dataset's
fade-in, which says nothing about the class.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from dalivssl.config import OPTIMIZERS


REPO = Path(__file__).resolve().parents[1]
# --set overrides of the pretraining when --pretrain-set is not given. PRP's reconstruction
# decoder at its original width 512 took 8.5 s per step of 4 clips on 2 CPU cores at 64 px; at
# width 128 a step of 8 clips takes about 3.5 s (120 steps in 423 s)
PRETRAIN_SET = {"prp": ("head.width=128",)}


def _run(args: list[str], log: Path) -> float:
    # the repo root on the path: models/, pipelines/ import even from a stale editable install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "dalivssl", *args], stdout=f,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise click.ClickException(f"dalivssl {args[0]} failed ({proc.returncode}); "
                                   f"see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t


def _scores(run_dir: Path) -> dict:
    from dalivssl.results import ResultsFile

    with ResultsFile(run_dir / "finetune.h5", "r") as rf:
        loss = rf.read("log", "train_loss")
        return {"clip_acc": float(rf.read("finetune", "clip_acc")),
                "video_acc": float(rf.read("finetune", "video_acc")),
                "final_train_loss": float(loss[-1]) if len(loss) else None}


@click.command("pretrain-vs-scratch")
@click.option("--arch", default="shufflenet", show_default=True)
@click.option("--task", default="prp", show_default=True)
@click.option("--pretrain-epochs", type=int, default=4, show_default=True)
@click.option("--pretrain-steps", type=int, default=480, show_default=True,
              help="Wins over --pretrain-epochs (0: use the epochs).")
@click.option("--pretrain-set", "pretrain_set", multiple=True, metavar="KEY=VALUE",
              help="Passed to the pretraining as --set (repeatable): "
                   "sampler.brightness=0.5, optimizer=adamw, lr=3e-4. "
                   "Default: head.width=128 for prp, none otherwise.")
@click.option("--finetune-epochs", type=int, default=24, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Finetuning lr.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw",
              show_default=True, help="Finetuning optimiser.")
@click.option("--clip-len", type=int, default=16, show_default=True)
@click.option("--size", type=int, default=64, show_default=True)
@click.option("--eval-clips", type=int, default=10, show_default=True)
@click.option("--normalize", type=click.Choice(["imagenet", "unit"]), default="unit",
              show_default=True, help="Same for both finetunings (VCOP pretrains on [0,1]).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads per subprocess.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/bench/pretrain_vs_scratch",
              show_default=True)
@click.option("--fresh", is_flag=True, help="Redo steps whose outputs exist.")
def cli(arch, task, pretrain_epochs, pretrain_steps, pretrain_set, finetune_epochs, batch_size,
        lr, optimizer, clip_len, size, eval_clips, normalize, seed, device, threads, out, fresh):
    """Pretrained-then-finetuned vs random-init-then-finetuned top-1 on the synthetic dataset."""
    from rich.console import Console
    from rich.table import Table

    from dalivssl.data.synth import ensure_default_dataset

    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = ensure_default_dataset()
    common = ["--clip-len", str(clip_len), "--size", str(size), "--batch-size", str(batch_size),
              "--seed", str(seed), "--device", device]
    if threads:
        common += ["--threads", str(threads)]

    overrides = list(pretrain_set or PRETRAIN_SET.get(task, ()))
    pre_dir = out / "pretrain"
    pre_ckpt = pre_dir / "checkpoint.pt"
    timings = {}
    if fresh or not pre_ckpt.is_file():
        budget = (["--max-steps", str(pretrain_steps)] if pretrain_steps
                  else ["--epochs", str(pretrain_epochs)])
        budget += [a for kv in overrides for a in ("--set", kv)]
        console.print(f"pretraining {task} {arch} …")
        timings["pretrain_s"] = _run(["pretrain", "--task", task, "--arch", arch, "--data",
                                      str(data["train"]), *budget, *common, "--out",
                                      str(pre_dir)], out / "pretrain.log")

    ft = ["--data", str(data["train"]), "--test-data", str(data["test"]), "--epochs",
          str(finetune_epochs), "--lr", str(lr), "--optimizer", optimizer,
          "--eval-clips", str(eval_clips),
          "--normalize", normalize, *common]
    runs = {"pretrained": ["--checkpoint", str(pre_ckpt)],
            "scratch": ["--random-init", "--arch", arch]}
    scores = {}
    for name, init in runs.items():
        run_dir = out / f"finetune_{name}"
        if fresh or not (run_dir / "finetune.h5").is_file():
            console.print(f"finetuning from {name} …")
            timings[f"finetune_{name}_s"] = _run(["finetune", *init, *ft, "--out", str(run_dir)],
                                                 out / f"finetune_{name}.log")
        scores[name] = _scores(run_dir)

    table = Table(title=f"{task} pretraining vs scratch, {arch}, {finetune_epochs} finetune "
                        f"epochs, {eval_clips} test clips/video")
    for col in ("init", "clip top-1", "video top-1", "final train loss"):
        table.add_column(col, justify="right")
    for name, s in scores.items():
        table.add_row(name, f"{s['clip_acc']:.4f}", f"{s['video_acc']:.4f}",
                      f"{s['final_train_loss']:.4f}" if s["final_train_loss"] is not None else "-")
    console.print(table)
    report = {"arch": arch, "task": task, "pretrain_epochs": pretrain_epochs,
              "pretrain_steps": pretrain_steps,
              "pretrain_set": overrides,
              "finetune_epochs": finetune_epochs,
              "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "clip_len": clip_len,
              "size": size, "eval_clips": eval_clips, "normalize": normalize, "seed": seed,
              "device": device,
              "dataset": {k: str(v) for k, v in data.items()}, "scores": scores,
              "timings": timings}
    (out / "pretrain_vs_scratch.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out / 'pretrain_vs_scratch.json'}")


if __name__ == "__main__":
    cli()
