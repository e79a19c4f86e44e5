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
@click.option("--clips-per-video", default=5, show_default=True, type=click.IntRange(1),
              help="Evenly spaced clips per video; their logits are averaged.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1),
              help="Videos per decoded batch.")
@click.option("--forward-clips", default=None, type=click.IntRange(1),
              help="Clips per model forward call (noise cells are stacked to fill it). "
                   "Default: 64 on a GPU, one cell per call on a CPU.")
@click.option("--out", "out_dir", default=Path("runs/robustness"), show_default=True,
              type=click.Path(path_type=Path), help="Output directory.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
@click.option("--decoder", default="dali", show_default=True, type=click.Choice(["dali", "pyav"]),
              help="dali: the raw eval loader; pyav: reference decoder (any codec, slower).")
@click.option("--seed", default=0, show_default=True, type=int, help="Noise seed.")
@click.option("--num-threads", default=2, show_default=True, type=click.IntRange(1))
def robustness(checkpoints, data, noises, severities, constants, rounding, clips_per_video,
               batch_size, forward_clips, out_dir, device, decoder, seed, num_threads):
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

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from dalivssl.analysis import robustness as rb
    from dalivssl.analysis.features import torch_device
    from dalivssl.console import stderr_console
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.results import ResultsFile

    tdev = torch_device(device)
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
                                decoder)

    def make_source(clip_len, size):
        if decoder == "pyav":
            return rb.PyAVSource(manifest, clips_per_video, clip_len, size, batch_size)
        return rb.dali_source(manifest, clips_per_video, clip_len, size, batch_size,
                              device=device, seed=seed, num_threads=num_threads)

    console = stderr_console()
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:

        def progress(total, desc):
            task = bar.add_task(desc, total=total)
            return lambda n: bar.advance(task, n)

        with ResultsFile(out_dir / "robustness.h5") as res:
            res.set_meta(command="robustness", data=str(data), settings=settings.key())
            summaries = rb.run_sweep(models, make_source, res, settings, device=device,
                                     forward_clips=forward_clips, progress=progress)
    csv_path = rb.write_csv(summaries, out_dir / "robustness.csv")
    png_path = rb.plot_rs(summaries, out_dir / "robustness.png")
    Console().print(rb.rich_table(summaries))
    console.print(f"wrote {out_dir / 'robustness.h5'}, {csv_path.name}, {png_path.name}")
