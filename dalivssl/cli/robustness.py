"""`dalivssl robustness`: noise-robustness sweep of finetuned checkpoints (R_s per noise/severity;
outputs and resume rules in dalivssl.runs.robustness)."""
from __future__ import annotations

import click

from dalivssl.cli.options import RegistryOption, config_options


@click.command("robustness")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(),
              help="Finetuned checkpoint (repeatable; at least one).")
@click.option("--data", type=click.Path(), default=None,
              help="Test manifest (default: the embedded synthetic dataset's test split).")
@click.option("--noises", cls=RegistryOption, registry="pipelines.noise:NOISES", default=None,
              help="Comma-separated noises (default all: {names}).")
@click.option("--severities", default=None, help="e.g. 1-5 or 1,3,5 (default 1-5).")
@click.option("--constants", default=None, type=click.Choice(["imagenet-c", "schiappa"]),
              help="Severity constants: imagecorruptions (ImageNet-C; default) or Schiappa et "
                   "al.'s mix.")
@click.option("--rounding", default=None, type=click.Choice(["floor", "round"]),
              help="floor (default) = imagecorruptions' uint8 truncation; round = plain DALI ops.")
@click.option("--clips-per-video", "--clips", "clips_per_video", default=None,
              type=click.IntRange(1), help="Evenly spaced clips per video; their logits are "
              "averaged (default 5).")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Videos per decoded batch (default 4).")
@click.option("--noise-at", default=None, type=click.Choice(["model", "decoded"]),
              help="model (default): noise at model resolution; decoded: on the decoded frames "
                   "before the resize (the paper's reference code).")
@click.option("--videos-per-cell", default=None,
              help="Videos per noise cell: 0 = all (default), N = a seeded class-balanced subset, "
                   "paper = the paper's sets (gaussian all; others 400 at severity 1, 550 above).")
@click.option("--forward-clips", default=None, type=click.IntRange(1),
              help="Clips per model forward call (noise cells are stacked to fill it). "
                   "Default: 64 on a GPU, one cell per call on a CPU.")
@click.option("--out", "out", default=None, type=click.Path(),
              help="Output directory (default runs/robustness; a rerun resumes the cells of the "
                   "same checkpoints, data and settings; anything else is refused).")
@click.option("--overwrite", is_flag=True, help="Start the sweep in --out again.")
@click.option("--no-progress", is_flag=True, help="No progress bar or periodic lines.")
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "gpu"]),
              help="auto (default): the GPU when CUDA and NVDEC are usable, else the CPU (stated).")
@click.option("--decoder", default=None, type=click.Choice(["dali", "pyav"]),
              help="dali (default): the raw eval loader; pyav: reference decoder (any codec).")
@click.option("--seed", default=None, type=int, help="Noise seed (default 0).")
@click.option("--threads", "--num-threads", "threads", default=None, type=click.IntRange(1),
              help="CPU threads for torch (default 2; DALI's: --set dali_threads=N).")
@config_options
def robustness(checkpoints, data, noises, severities, constants, rounding, clips_per_video,
               batch_size, noise_at, videos_per_cell, forward_clips, out, overwrite,
               no_progress, device, decoder, seed, threads, config_path, sets):
    """Clean and noisy video accuracy of each CHECKPOINT; R_s = (A_c − A_p)/A_c per cell."""
    from dalivssl.config import RobustnessConfig, resolve
    from dalivssl.runs.robustness import robustness as run

    flags = dict(checkpoints=checkpoints or None, data=data, noises=noises,
                 severities=severities, constants=constants, rounding=rounding,
                 clips_per_video=clips_per_video, batch_size=batch_size, noise_at=noise_at,
                 videos_per_cell=videos_per_cell, forward_clips=forward_clips, out=out,
                 device=device, decoder=decoder, seed=seed, threads=threads,
                 progress=False if no_progress else None)
    run(resolve(RobustnessConfig, config_path, flags, sets), overwrite=overwrite)
