"""`dalivssl bench noise`: DALI noise injection (pipelines/noise.py) vs the NumPy reference.

Both corrupt the same uint8 batch (B clips of F frames, H×W×3) with each noise at one severity;
the figure is frames/s (median of --repeats timed runs after one warm-up). The NumPy reference is
what a user of imagecorruptions-style code would run per frame on the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("noise")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1), help="Clips per batch.")
@click.option("--frames", default=16, show_default=True, type=click.IntRange(1), help="Frames per clip.")
@click.option("--size", default=112, show_default=True, type=click.IntRange(8), help="Frame side (px).")
@click.option("--severity", default=3, show_default=True, type=click.IntRange(1, 5))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]))
@click.option("--num-threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--out", default=Path("runs/bench/noise_throughput.json"), show_default=True,
              type=click.Path(path_type=Path), help="JSON output.")
def cli(batch, frames, size, severity, repeats, device, num_threads, out):
    """Frames/s of DALI noise vs the NumPy formulas, per noise type."""
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from pipelines.noise import NOISES, NoiseRunner, noise_constant, reference_noise

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)
    n_frames = batch * frames

    def timed(fn):
        fn()  # warm-up (pipeline build, first allocation)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))

    rows = []
    for kind in NOISES:
        runner = NoiseRunner([(kind, severity)], batch, seed=0, device=device,
                             num_threads=num_threads)
        if device == "gpu":
            def dali_fn():  # include the copy back so both sides end with host arrays
                runner.run_numpy(x)
        else:
            def dali_fn():
                runner.run(x)
        c = noise_constant(kind, severity)
        t_dali = timed(dali_fn)
        t_np = timed(lambda: reference_noise(x, kind, c, rng))
        rows.append({"noise": kind, "severity": severity, "dali_fps": n_frames / t_dali,
                     "numpy_fps": n_frames / t_np, "speedup": t_np / t_dali})
    table = Table(title=f"Noise throughput ({device}, {batch}×{frames} frames of {size}² px, "
                        f"severity {severity})")
    for col in ("noise", "DALI frames/s", "NumPy frames/s", "DALI / NumPy"):
        table.add_column(col, justify="left" if col == "noise" else "right")
    for r in rows:
        table.add_row(r["noise"], f"{r['dali_fps']:.0f}", f"{r['numpy_fps']:.0f}",
                      f"{r['speedup']:.2f}×")
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "noise_throughput", "device": device, "batch": batch,
                               "frames": frames, "size": size, "num_threads": num_threads,
                               "repeats": repeats, "results": rows}, indent=2))
    Console(stderr=True).print(f"wrote {out}")
