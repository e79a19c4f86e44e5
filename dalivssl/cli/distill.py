"""`dalivssl distill` (multi-teacher knowledge distillation) and `dalivssl export-logits`.

distill writes ``<out>/checkpoint.pt`` (a finetune checkpoint, contract C7), ``<out>/distill.h5``
(groups ``distill``: per-step loss/ce/kd/kd_teachers; ``eval``: accuracy) and
``<out>/losses.csv``. export-logits writes the HDF5 logits file that ``--teacher-logits`` reads
(layout in dalivssl.analysis.distill). Torch and DALI load only when a command runs.
"""
from __future__ import annotations

from pathlib import Path

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
    Trained by the one engine (resumable); writes OUT/checkpoint.pt (a finetune checkpoint),
    record.json, distill.h5, losses.csv and distill.png (student vs each teacher)."""
    from dalivssl.config import DistillConfig, resolve

    flags = dict(arch=arch, teachers=teachers or None, teacher_logits=teacher_logits or None,
                 data=data, eval_data=eval_data, epochs=epochs, max_steps=max_steps,
                 temperature=temperature, alpha=alpha, lr=lr, batch_size=batch_size,
                 clip_len=clip_len, size=size, normalize=normalize, eval_clips=eval_clips,
                 name=name, device=device, threads=threads, seed=seed,
                 progress=False if no_progress else None, kd_loss=kd_loss,
                 student_checkpoint=student_checkpoint)
    cfg = resolve(DistillConfig, config_path, flags, sets).check()
    if cfg.student_checkpoint and not Path(cfg.student_checkpoint).is_file():
        from dalivssl.errors import DalivsslError

        raise DalivsslError(f"{cfg.student_checkpoint}: student checkpoint not found")
    from dalivssl.analysis.distill import run_distill

    res = run_distill(cfg, out, resume=resume, overwrite=overwrite)
    click.echo(f"student {res['name']} ({cfg.arch}): {res['step']} steps, loss "
               f"{res['first_loss']:.4f} -> {res['last_loss']:.4f}, accuracy {res['accuracy']:.3f} "
               f"on {res['videos']} videos" + "".join(
                   f"; teacher {n}: {a:.3f}" for n, a in res["teachers"].items())
               + f" -> {res['out']}")


@click.command("export-logits")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False),
              help="Finetuned checkpoint.")
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="Manifest. Default: the embedded synthetic train split.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write.")
@click.option("--clips", type=int, default=10, show_default=True,
              help="Evenly spaced clips per video; logits are averaged over them.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True, help="auto: the GPU when usable, else the CPU (stated).")
def export_logits(checkpoint, data, output, clips, batch_size, device):
    """Write a checkpoint's video-level logits (mean over --clips eval clips) for every video of
    a manifest, keyed by video path, for `dalivssl distill --teacher-logits`."""
    from dalivssl.analysis import distill as D
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.engine.features import eval_loader, torch_device
    from dalivssl import record as rec
    from dalivssl.engine.finetune import load_classifier

    from dalivssl.devices import announce as resolve_device

    dev = resolve_device(device)
    device, tdev = dev.name, dev.torch
    data_path, manifest = resolve_manifest(data, "train")
    rec.check_writable(Path(output).parent)  # before computing anything
    model, ck = load_classifier(checkpoint, device=tdev)
    clip = rec.record_of(ck, checkpoint).clip
    clip_len, size, normalize = clip.clip_len, clip.size, clip.normalize
    loader = eval_loader(manifest, clips, batch_size, clip_len, size, device=device, raw=True,
                         where=str(data_path))
    # manifest order, one row per video (a loader may substitute a repeat for a bad video)
    logits, idx = D.video_logits(model, loader, normalize, tdev)
    D.write_logits_file(output, logits, [manifest.records[i].path for i in idx], idx,
                        classes=list(ck.get("classes") or []), num_clips=clips,
                        clip_len=clip_len, size=size, normalize=normalize, arch=ck["arch"],
                        checkpoint=str(Path(checkpoint).resolve()),
                        checkpoint_hash=rec.file_hash(checkpoint), data=str(data_path),
                        data_hash=rec.manifest_hash(manifest), device=device)
    skipped = getattr(loader, "skipped", {})
    click.echo(f"logits {logits.shape[0]}x{logits.shape[1]} ({clips} clips/video) -> {output}"
               + (f"; skipped {skipped}" if skipped else ""))
