"""`dalivssl robustness`: noise-robustness sweep of finetuned checkpoints (R_s per noise/severity).

Writes OUT/robustness.h5 (dalivssl.results layout, see dalivssl.analysis.robustness),
OUT/robustness.csv and OUT/robustness.png, and prints a table. Re-running with the same --out
skips the cells already stored.
"""
from __future__ import annotations

from pathlib import Path

import click

NOISES = ("gaussian", "shot", "impulse", "speckle")


@click.command("robustness")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Finetuned checkpoint (repeatable).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Test manifest (default: the embedded synthetic dataset's test split).")
@click.option("--noises", default=",".join(NOISES), show_default=True,
              help="Comma-separated noises.")
@click.option("--severities", default="1-5", show_default=True, help="e.g. 1-5 or 1,3,5.")
@click.option("--constants", default="imagenet-c", show_default=True,
              type=click.Choice(["imagenet-c", "schiappa"]),
              help="Severity constants: imagecorruptions (ImageNet-C) or Schiappa et al.'s mix.")
@click.option("--rounding", default="floor", show_default=True, type=click.Choice(["floor", "round"]),
              help="floor = imagecorruptions' uint8 truncation; round = plain DALI ops.")
@click.option("--clips-per-video", "--clips", "clips_per_video", default=5, show_default=True, type=click.IntRange(1),
              help="Evenly spaced clips per video; their logits are averaged.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1),
              help="Videos per decoded batch.")
@click.option("--noise-at", default="model", show_default=True,
              type=click.Choice(["model", "decoded"]),
              help="model: noise at model resolution; decoded: on the decoded frames before the "
                   "resize (the paper's reference code).")
@click.option("--videos-per-cell", default="0", show_default=True,
              help="Videos per noise cell: 0 = all, N = a seeded class-balanced subset, paper = "
                   "the paper's sets (gaussian all; others 400 at severity 1, 550 above).")
@click.option("--forward-clips", default=None, type=click.IntRange(1),
              help="Clips per model forward call (noise cells are stacked to fill it). "
                   "Default: 64 on a GPU, one cell per call on a CPU.")
@click.option("--out", "out_dir", default=Path("runs/robustness"), show_default=True,
              type=click.Path(path_type=Path), help="Output directory (a rerun resumes the "
              "cells of the same checkpoints, data and settings; anything else is refused).")
@click.option("--overwrite", is_flag=True, help="Start the sweep in --out again.")
@click.option("--no-progress", is_flag=True, help="No progress bar or periodic lines.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "gpu"]),
              help="auto: the GPU when CUDA and NVDEC are usable, else the CPU (stated).")
@click.option("--decoder", default="dali", show_default=True, type=click.Choice(["dali", "pyav"]),
              help="dali: the raw eval loader; pyav: reference decoder (any codec, slower).")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed.")
@click.option("--threads", "--num-threads", "num_threads", default=2, show_default=True,
              type=click.IntRange(1), help="CPU threads for torch and DALI.")
def robustness(checkpoints, data, noises, severities, constants, rounding, clips_per_video,
               batch_size, noise_at, videos_per_cell, forward_clips, out_dir, overwrite,
               no_progress, device, decoder, seed, num_threads):
    """Clean and noisy video accuracy of each CHECKPOINT; R_s = (A_c − A_p)/A_c per cell."""
    from dalivssl.errors import DalivsslError
    from pipelines.noise import parse_noises, parse_severities

    try:
        noise_list = parse_noises(noises)
        sev_list = parse_severities(severities)
    except ValueError as exc:
        raise DalivsslError(str(exc)) from None
    for p in checkpoints:
        if not p.is_file():
            raise DalivsslError(f"{p}: checkpoint not found")
    if videos_per_cell != "paper":
        if not videos_per_cell.isdigit():
            raise DalivsslError(f"--videos-per-cell {videos_per_cell!r}: expected an integer "
                                ">= 0 or 'paper'")
        videos_per_cell = int(videos_per_cell)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from dalivssl import record as rec
    from dalivssl.analysis import robustness as rb
    from dalivssl.engine.features import torch_device
    from dalivssl.console import stderr_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.results import ResultsFile

    from dalivssl.devices import announce as resolve_device

    dev = resolve_device(device)
    device, tdev = dev.name, dev.torch
    # writable and locked before any work; a rerun into it resumes (content-keyed cells)
    lock = rec.open_run_dir(out_dir, "robustness.h5", resume=True)
    try:
        _sweep(checkpoints, data, noise_list, sev_list, constants, rounding, clips_per_video,
               batch_size, forward_clips, out_dir, overwrite, no_progress, device, tdev,
               decoder, seed, num_threads, noise_at, videos_per_cell)
    finally:
        lock.release()


def _sweep(checkpoints, data, noise_list, sev_list, constants, rounding, clips_per_video,
           batch_size, forward_clips, out_dir, overwrite, no_progress, device, tdev, decoder,
           seed, num_threads, noise_at="model", videos_per_cell=0):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from dalivssl import record as rec
    from dalivssl.analysis import robustness as rb
    from dalivssl.console import stderr_console, stdout_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.errors import DalivsslError
    from dalivssl.results import ResultsFile

    import torch

    torch.set_num_threads(num_threads)
    data_arg = data
    data, manifest = resolve_manifest(data, "test")
    models = rb.load_models(checkpoints, device=tdev)
    labels = [r.label for r in manifest.records]
    if any(lb < 0 for lb in labels):
        raise DalivsslError(f"{data}: robustness needs labelled test videos")
    for m in models:
        if labels and max(labels) >= m.num_classes:
            raise DalivsslError(f"{m.source}: classifier has {m.num_classes} classes, but "
                                f"{data} uses label {max(labels)}")
    settings = rb.SweepSettings(noise_list, sev_list, constants, rounding, clips_per_video, seed,
                                decoder, rec.manifest_hash(manifest), device, noise_at,
                                rb.decoded_side(manifest) if noise_at == "decoded" else 0,
                                videos_per_cell).check()
    if overwrite:
        (out_dir / "robustness.h5").unlink(missing_ok=True)

    def make_source(clip_len, size):
        if decoder == "pyav":
            return rb.PyAVSource(manifest, clips_per_video, clip_len, size, batch_size)
        return rb.dali_source(manifest, clips_per_video, clip_len, size, batch_size,
                              device=device, seed=seed, num_threads=num_threads)

    console = stderr_console()
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=no_progress) as bar:

        def progress(total, desc):
            task = bar.add_task(desc, total=total)
            return lambda n: bar.advance(task, n)

        with ResultsFile(out_dir / "robustness.h5") as res:
            summaries = rb.run_sweep(models, make_source, res, settings, device=device,
                                     forward_clips=forward_clips, progress=progress)
            record = rec.new_record(
                "robustness", "+".join(m.name for m in models), data_path=data,
                manifest=manifest, device=device, decoder=decoder,
                parents=[m.source for m in models], arch=models[0].record.arch,
                clip=models[0].record.clip, seed=seed, settings={**settings.key(), "noises": list(noise_list),
                          "severities": list(sev_list), "videos": len(manifest)},
                status="complete")
            res.set_meta(command="robustness", data=str(data), settings=settings.key(),
                         record=record.to_dict())
    csv_path = rb.write_csv(summaries, out_dir / "robustness.csv")
    png_path = rb.plot_rs(summaries, out_dir / "robustness.png",
                          title=f"robustness · {Path(str(data)).name} · {len(manifest)} videos · "
                                f"{clips_per_video} clips/video · {constants}")
    rec.write_run_record(out_dir, record)
    stdout_console().print(rb.rich_table(summaries))
    console.print(f"wrote {out_dir / 'robustness.h5'}, {csv_path.name}, {png_path.name}")
