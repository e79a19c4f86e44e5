"""`dalivssl distill` (multi-teacher knowledge distillation) and `dalivssl export-logits`.

distill writes ``<out>/checkpoint.pt`` (a finetune checkpoint, contract C7), ``<out>/distill.h5``
(groups ``distill``: per-step loss/ce/kd/kd_teachers; ``eval``: accuracy) and
``<out>/losses.csv``. export-logits writes the HDF5 logits file that ``--teacher-logits`` reads
(layout in dalivssl.engine.distill). Both run through the driver (dalivssl.runs.distill,
dalivssl.runs.export); torch and DALI load only when a command runs.
"""
from __future__ import annotations

import click

from dalivssl.cli.options import clip_options, config_options, run_options


@click.command("distill")
@click.option("--teacher", "teachers", multiple=True, type=click.Path(dir_okay=False),
              help="Finetuned teacher checkpoint (repeatable).")
@click.option("--teacher-logits", "teacher_logits", multiple=True,
              type=click.Path(dir_okay=False),
              help="Precomputed teacher logits (HDF5 from export-logits on the same --data; "
                   "repeatable).")
@click.option("--student", "arch", default=None, help="Student architecture (a BACKBONES key).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Training manifest. Default: the embedded synthetic train split.")
@click.option("--eval-data", type=click.Path(dir_okay=False), default=None,
              help="Manifest for the final accuracy. Default: the synthetic test split without "
                   "--data, else the training manifest.")
@click.option("--epochs", type=int, default=None, help="Epochs (default 1).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps.")
@click.option("--temperature", type=float, default=None, help="Softmax temperature (default 4).")
@click.option("--alpha", type=float, default=None,
              help="Weight of the summed KD terms: L = CE + alpha * sum_i T^2 KL_i (default 1).")
@click.option("--kd-loss", type=click.Choice(["hinton", "paper"]), default=None,
              help="hinton (default): CE + alpha·Σ T²·KL; paper: CE + Σ KL at T = 1 (Kumar "
                   "et al.).")
@click.option("--student-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Start the student from this checkpoint's backbone (default: random init).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 1e-3).")
@click.option("--batch-size", type=int, default=None, help="Batch (default 8).")
@clip_options
@click.option("--eval-clips", "--clips", "eval_clips", type=int, default=None,
              help="Clips per video for the final accuracy (default 1).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run dir (default runs/distill/<name>).")
@config_options
@run_options
def distill(teachers, teacher_logits, arch, data, eval_data, epochs, max_steps, temperature,
            alpha, kd_loss, student_checkpoint, lr, batch_size, clip_len, size, normalize,
            eval_clips, out, config_path, sets, name, device, threads, seed, resume, overwrite,
            no_progress):
    """Distil finetuned teachers (and/or precomputed logits) into a student:
    L = CE(s, y) + alpha * sum_i T^2 KL(softmax(t_i/T) || softmax(s/T)) (Hinton et al. 2015;
    multi-teacher as in Kumar et al. 2023). With no teacher this is plain supervised training.
    Trained by the one engine (resumable; --set amp=true for bf16 autocast; DDP under torchrun);
    writes OUT/checkpoint.pt (a finetune checkpoint), record.json, config.yaml, distill.h5,
    losses.csv and distill.png (student vs each teacher)."""
    from dalivssl.config import DistillConfig, resolve
    from dalivssl.runs.distill import run_distill

    flags = dict(arch=arch, teachers=teachers or None, teacher_logits=teacher_logits or None,
                 data=data, eval_data=eval_data, epochs=epochs, max_steps=max_steps,
                 temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size,
                 clip_len=clip_len, size=size, normalize=normalize, eval_clips=eval_clips,
                 name=name, device=device, threads=threads, seed=seed,
                 progress=False if no_progress else None, kd_loss=kd_loss,
                 student_checkpoint=student_checkpoint)
    res = run_distill(resolve(DistillConfig, config_path, flags, sets), out, resume=resume,
                      overwrite=overwrite)
    click.echo(f"student {res['name']} ({res['arch']}): {res['step']} steps, loss "
               f"{res['first_loss']:.4f} -> {res['last_loss']:.4f}, accuracy {res['accuracy']:.3f} "
               f"on {res['videos']} videos" + "".join(
                   f"; teacher {n}: {a:.3f}" for n, a in res["teachers"].items())
               + f" -> {res['out']}")


@click.command("export-logits")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Finetuned checkpoint (required).")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Manifest. Default: the embedded synthetic train split.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HDF5 file to write (required; an existing one only with --overwrite). Its "
                   "config goes beside it as <stem>.config.yaml.")
@click.option("--clips", type=int, default=None,
              help="Evenly spaced clips per video; logits are averaged over them (default 10).")
@click.option("--batch-size", type=int, default=None, help="Batch (default 8).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="auto (default): the GPU when usable, else the CPU (stated).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@config_options
def export_logits(checkpoint, data, output, clips, batch_size, device, overwrite, config_path,
                  sets):
    """Write a checkpoint's video-level logits (mean over --clips eval clips) for every video of
    a manifest, keyed by video path, for `dalivssl distill --teacher-logits`."""
    from dalivssl.config import ExportLogitsConfig, resolve
    from dalivssl.runs.export import export_logits as run

    flags = dict(checkpoint=checkpoint, data=data, output=output, clips=clips,
                 batch_size=batch_size, device=device)
    res = run(resolve(ExportLogitsConfig, config_path, flags, sets), overwrite=overwrite)
    skipped = res["skipped"]
    click.echo(f"logits {res['shape'][0]}x{res['shape'][1]} ({res['clips']} clips/video) -> "
               f"{res['output']}" + (f"; skipped {skipped}" if skipped else ""))
