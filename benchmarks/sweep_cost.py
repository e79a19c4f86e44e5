"""`dalivssl bench sweep`: cost of the full robustness sweep vs one clean evaluation.

Same model, same data, same run. The sweep is 21 cells (4 noises × 5 severities + clean) drawn
from ONE decode pass (dalivssl.engine.robustness.evaluate_cells); the clean evaluation is the
same loop with the clean cell only. The naive alternative (what a user would write first: a loader
with noise baked in, one full evaluation per cell) costs ≈ 21 clean evaluations plus the noise.
Goal: sweep ≤ 3× clean. Reported with the decode / noise / forward breakdown, because on a CPU
the forward of 21× more clips dominates and no data-side trick can hide it.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("sweep")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Test manifest (default: the embedded synthetic dataset's test split).")
@click.option("--arch", default="squeezenet", show_default=True, help="Backbone (random init).")
@click.option("--clip-len", default=16, show_default=True, type=click.IntRange(1))
@click.option("--size", default=112, show_default=True, type=click.IntRange(8))
@click.option("--clips-per-video", default=5, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1))
@click.option("--forward-clips", default=None, type=click.IntRange(1),
              help="Clips per model forward call (noise cells are stacked to fill it). "
                   "Default: 64 on a GPU, one cell per call on a CPU.")
@click.option("--videos", default=24, show_default=True, type=click.IntRange(1),
              help="Use the first N test videos.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
@click.option("--decoder", default="dali", show_default=True, type=click.Choice(["dali", "pyav"]))
@click.option("--dali-threads", default=None, type=click.IntRange(1),
              help="DALI's threads (default: 8 on a GPU, 2 on a CPU; G5).")
@click.option("--out", default=Path("runs/bench/sweep_cost.json"), show_default=True,
              type=click.Path(path_type=Path), help="JSON output.")
def cli(data, arch, clip_len, size, clips_per_video, batch_size, forward_clips, videos, device,
        decoder, dali_threads, out):
    """Time the 21-cell sweep and one clean evaluation of the same model on the same data."""
    import time

    import torch
    from rich.console import Console
    from rich.table import Table

    from dalivssl.engine import robustness as rb
    from dalivssl.data.synth import resolve_manifest
    from dalivssl.devices import dali_threads as resolve_threads
    from dalivssl.engine.features import check_arch, check_input_size, torch_device
    from models import create_backbone

    check_input_size(check_arch(arch), clip_len, size, arch)  # the declared minimum, first
    threads = resolve_threads(device, dali_threads)
    tdev = torch.device(torch_device(device))

    data, manifest = resolve_manifest(data, "test")
    manifest = manifest.select(manifest.records[:videos])
    n_classes = max(1, max((r.label for r in manifest.records), default=0) + 1)
    torch.manual_seed(0)
    net = create_backbone(arch, num_classes=n_classes).to(tdev).eval()
    if device == "gpu":
        net = net.to(memory_format=torch.channels_last_3d)
    model = rb.SweepModel(arch, net, "imagenet", clip_len, size, n_classes)
    settings = rb.SweepSettings(clips_per_video=clips_per_video, decoder=decoder)

    def source():
        if decoder == "pyav":
            return rb.PyAVSource(manifest, clips_per_video, clip_len, size, batch_size)
        return rb.dali_source(manifest, clips_per_video, clip_len, size, batch_size,
                              device=device, num_threads=threads)

    def timed(cells):
        src = source()
        timing = rb.CellTiming()
        if device == "gpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        rb.evaluate_cells([model], src, {arch: cells}, settings, device=device,
                          forward_clips=forward_clips, timing=timing)
        if device == "gpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t, timing

    all_cells = rb.sweep_cells(settings.noises, settings.severities)
    console = Console(stderr=True)
    with console.status("warm-up"):
        timed([rb.CLEAN, ("gaussian", 1)])  # builds the DALI pipelines, warms the allocator
    with console.status("clean evaluation"):
        t_clean, tm_clean = timed([rb.CLEAN])
    with console.status(f"{len(all_cells)}-cell sweep"):
        t_sweep, tm_sweep = timed(all_cells)
    ratio = t_sweep / t_clean
    naive = len(all_cells) * t_clean + tm_sweep.noise  # one decode + forward pass per cell

    table = Table(title=f"Robustness sweep cost ({arch}, {len(manifest)} videos × "
                        f"{clips_per_video} clips, T={clip_len}, {size}px, {device}, {decoder})")
    for col in ("run", "total s", "decode s", "noise s", "forward s", "× clean"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row("clean evaluation (1 cell)", f"{t_clean:.2f}", f"{tm_clean.decode:.2f}",
                  f"{tm_clean.noise:.2f}", f"{tm_clean.forward:.2f}", "1.00")
    table.add_row(f"sweep ({len(all_cells)} cells, one decode)", f"{t_sweep:.2f}",
                  f"{tm_sweep.decode:.2f}", f"{tm_sweep.noise:.2f}", f"{tm_sweep.forward:.2f}",
                  f"{ratio:.2f}")
    table.add_row("naive: one full pass per cell (est.)", f"{naive:.2f}", "", "", "",
                  f"{naive / t_clean:.2f}")
    Console().print(table)
    ms_clean = 1000 * tm_clean.forward / max(1, tm_clean.clips)
    ms_sweep = 1000 * tm_sweep.forward / max(1, tm_sweep.clips * len(all_cells))
    verdict = "meets" if ratio <= 3 else "misses"
    per_call = rb.cells_per_call(forward_clips, batch_size * clips_per_video, device)
    Console().print(f"sweep/clean = {ratio:.2f} ({verdict} the ≤ 3× goal); naive/sweep = "
                    f"{naive / t_sweep:.1f}×. Forward is {tm_clean.forward / t_clean:.0%} of the "
                    f"clean run; forward per clip {ms_clean:.1f} ms clean vs {ms_sweep:.1f} ms "
                    f"in the sweep ({per_call} cell(s) per forward call)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "sweep_cost", "arch": arch, "videos": len(manifest),
        "clips_per_video": clips_per_video, "clip_len": clip_len, "size": size,
        "batch_size": batch_size, "forward_clips": forward_clips, "cells_per_call": per_call,
        "device": device, "dali_threads": threads,
        "decoder": decoder, "cells": len(all_cells),
        "clean": {"total": t_clean, "decode": tm_clean.decode, "noise": tm_clean.noise,
                  "forward": tm_clean.forward},
        "sweep": {"total": t_sweep, "decode": tm_sweep.decode, "noise": tm_sweep.noise,
                  "forward": tm_sweep.forward},
        "ratio": ratio, "naive_estimate": naive, "naive_ratio": naive / t_clean,
        "forward_ms_per_clip": {"clean": ms_clean, "sweep": ms_sweep}}, indent=2))
    console.print(f"wrote {out}")
