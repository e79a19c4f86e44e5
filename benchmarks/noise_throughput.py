"""`dalivssl bench noise`: DALI noise injection (pipelines/noise.py) vs the NumPy reference.

Both corrupt the same uint8 batch (B clips of F frames, H×W×3) with each noise at one severity;
the figure is frames/s (median of --repeats timed runs after one warm-up). The NumPy reference is
what a user of imagecorruptions-style code would run per frame on the CPU.

Both places of the noise (``robustness --noise-at``): 'model' (on --size frames) and 'decoded'
(on --decoded-size frames, the centre crop of a 240-p source, then resized to --size in the same
DALI graph); for each, frames/s and the RMS change the noise makes to the delivered clip at
model resolution (the resize averages part of the decoded-frame noise away).
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
@click.option("--decoded-size", default=210, show_default=True, type=click.IntRange(8),
              help="Decoded crop side for --noise-at decoded (210: 112/128 of 240 p).")
@click.option("--out", default=Path("runs/bench/noise_throughput.json"), show_default=True,
              type=click.Path(path_type=Path), help="JSON output.")
def cli(batch, frames, size, severity, repeats, device, num_threads, decoded_size, out):
    """Frames/s of DALI noise vs the NumPy formulas, per noise type."""
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from pipelines.noise import NOISES, NoiseRunner, noise_constant, reference_noise

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)
    # smooth content at the decoded size (noise-free pixels survive the resize)
    x_dec = np.kron(rng.integers(30, 220, (batch, frames, decoded_size // 8 + 1,
                                            decoded_size // 8 + 1, 3), dtype=np.uint8),
                    np.ones((1, 1, 8, 8, 1), np.uint8))[:, :, :decoded_size, :decoded_size]
    x_dec = np.ascontiguousarray(x_dec)
    n_frames = batch * frames

    def rms(a, b):
        return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))

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
        cell = (kind, severity)
        dec = NoiseRunner([cell], batch, seed=0, device=device, num_threads=num_threads,
                          out_size=(size, size))
        t_dec = timed(lambda: dec.run_numpy(x_dec))
        got = dec.run_numpy(x_dec)
        clean = got[("clean", 0)]
        at_model = runner.run_numpy(clean)[cell]
        rows.append({"noise": kind, "severity": severity, "dali_fps": n_frames / t_dali,
                     "numpy_fps": n_frames / t_np, "speedup": t_np / t_dali,
                     "decoded_fps": n_frames / t_dec, "rms_model": rms(at_model, clean),
                     "rms_decoded": rms(got[cell], clean)})
    table = Table(title=f"Noise throughput ({device}, {batch}×{frames} frames of {size}² px, "
                        f"severity {severity})")
    for col in ("noise", "DALI frames/s", "NumPy frames/s", "DALI / NumPy",
                f"decoded {decoded_size}² frames/s", "RMS at model", "RMS decoded"):
        table.add_column(col, justify="left" if col == "noise" else "right")
    for r in rows:
        table.add_row(r["noise"], f"{r['dali_fps']:.0f}", f"{r['numpy_fps']:.0f}",
                      f"{r['speedup']:.2f}×", f"{r['decoded_fps']:.0f}",
                      f"{r['rms_model']:.1f}", f"{r['rms_decoded']:.1f}")
    Console().print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "noise_throughput", "device": device, "batch": batch,
                               "frames": frames, "size": size, "num_threads": num_threads,
                               "decoded_size": decoded_size,
                               "repeats": repeats, "results": rows}, indent=2))
    Console(stderr=True).print(f"wrote {out}")
