"""`dalivssl bench cka`: throughput of the layer x layer minibatch CKA map computation.

Synthetic post-ReLU activations (L layers of D dims, non-zero mean as real ReLU outputs have) are
generated once and kept resident on each backend; the timed part is the map arithmetic only (no
model forward, no host/device copies). Backends, same batches, same run:

- numpy: :class:`dalivssl.engine.cka.MinibatchCKA` (float64 centred Grams, ratio of sums);
- cupy: the same code on the GPU (only where CuPy reaches a GPU);
- torch-f32: a naive torch-cka-style baseline (float32, uncentred X X^T with zero diagonal,
  HSIC_1 formula per layer pair), on the GPU when torch sees one, else CPU.

Figures: examples/s (median of --repeats after one warm-up), and the max |map - numpy map| (the
float32 baseline's error grows with the feature mean). Prints a table; writes JSON.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click


def _naive_torch_map(batches_a, batches_b):
    """torch-cka 0.21's arithmetic (float32, no centring), written independently."""
    import torch

    la, lb = len(batches_a[0]), len(batches_b[0])
    s_ab = torch.zeros(la, lb, dtype=torch.float32, device=batches_a[0][0].device)
    s_a = torch.zeros(la, dtype=torch.float32, device=s_ab.device)
    s_b = torch.zeros(lb, dtype=torch.float32, device=s_ab.device)

    def gram(x):
        k = x @ x.T
        return k.fill_diagonal_(0)

    def hsic1(k, l):
        n = k.shape[0]
        ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
        res = (torch.trace(k @ l) + (ones.T @ k @ ones @ ones.T @ l @ ones) / ((n - 1) * (n - 2))
               - 2.0 / (n - 2) * (ones.T @ k @ l @ ones))
        return (res / (n * (n - 3))).reshape(())

    for fa, fb in zip(batches_a, batches_b):
        ka = [gram(x) for x in fa]
        kb = [gram(x) for x in fb]
        for i in range(la):
            s_a[i] += hsic1(ka[i], ka[i])
            for j in range(lb):
                s_ab[i, j] += hsic1(ka[i], kb[j])
        for j in range(lb):
            s_b[j] += hsic1(kb[j], kb[j])
    out = s_ab / torch.sqrt(s_a[:, None] * s_b[None, :])
    if out.is_cuda:
        torch.cuda.synchronize()
    return out.cpu().double().numpy()


def _ours(batches_a, batches_b, xp):
    from dalivssl.engine.cka import MinibatchCKA

    acc = MinibatchCKA(len(batches_a[0]), len(batches_b[0]), xp=xp)
    for fa, fb in zip(batches_a, batches_b):
        acc.update(fa, fb)
    out = acc.result()
    if xp is not None and xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()
    return out


def _time(fn, repeats):
    fn()  # warm-up (BLAS/cuBLAS handles, kernels)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2], out


@click.command("cka")
@click.option("--examples", type=int, default=512, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--layers", type=int, default=4, show_default=True, help="Layers per model.")
@click.option("--dims", type=int, default=8192, show_default=True, help="Features per layer.")
@click.option("--mean", type=float, default=1.0, show_default=True,
              help="Offset added before the ReLU (feature mean; 0 = centred Gaussian).")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="runs/bench/cka_throughput.json",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def cli(examples, batch_size, layers, dims, mean, repeats, out, seed):
    """CKA map examples/s: NumPy float64 vs CuPy (GPU only) vs naive float32 torch baseline."""
    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from dalivssl.engine.arrays import cupy_usable

    rng = np.random.default_rng(seed)
    nb = examples // batch_size
    if nb < 1 or batch_size < 4:
        raise click.BadParameter("need examples >= batch-size >= 4")
    src = rng.standard_normal((nb * batch_size, 256), dtype=np.float32)
    feats = []  # 2L layers: each a ReLU of a noisy random projection of one shared source
    for _ in range(2 * layers):
        w = rng.standard_normal((256, dims), dtype=np.float32) / 16.0
        z = src @ w + 0.5 * rng.standard_normal((len(src), dims), dtype=np.float32)
        feats.append(np.maximum(z + np.float32(mean), 0))
    cut = lambda arr, b: arr[b * batch_size:(b + 1) * batch_size]  # noqa: E731
    np_a = [[cut(feats[i], b) for i in range(layers)] for b in range(nb)]
    np_b = [[cut(feats[layers + i], b) for i in range(layers)] for b in range(nb)]

    rows = []
    n = nb * batch_size
    t, ref = _time(lambda: _ours(np_a, np_b, np), repeats)
    rows.append({"backend": "numpy (float64, centred)", "device": "cpu", "seconds": t,
                 "examples_per_s": n / t, "max_abs_err": 0.0})
    if cupy_usable():
        import cupy as cp

        cp_a = [[cp.asarray(x) for x in fa] for fa in np_a]
        cp_b = [[cp.asarray(x) for x in fb] for fb in np_b]
        t, m = _time(lambda: _ours(cp_a, cp_b, cp), repeats)
        rows.append({"backend": "cupy (float64, centred)", "device": "gpu", "seconds": t,
                     "examples_per_s": n / t, "max_abs_err": float(np.nanmax(np.abs(m - ref)))})
    tdev = "cuda" if torch.cuda.is_available() else "cpu"
    t_a = [[torch.from_numpy(x).to(tdev) for x in fa] for fa in np_a]
    t_b = [[torch.from_numpy(x).to(tdev) for x in fb] for fb in np_b]
    t, m = _time(lambda: _naive_torch_map(t_a, t_b), repeats)
    err = np.abs(m - ref)
    rows.append({"backend": "torch naive (float32, uncentred)", "device": tdev, "seconds": t,
                 "examples_per_s": n / t,
                 "max_abs_err": float(np.nanmax(err)) if np.isfinite(err).any() else float("nan"),
                 "non_finite": int((~np.isfinite(m)).sum())})

    table = Table(title=f"CKA map {layers}x{layers} layers, {dims} dims, {n} examples "
                        f"(batch {batch_size}, feature mean offset {mean})")
    for col in ("backend", "device", "seconds", "examples/s", "max |err| vs numpy"):
        table.add_column(col, justify="left" if col in ("backend", "device") else "right")
    for r in rows:
        table.add_row(r["backend"], r["device"], f"{r['seconds']:.4f}",
                      f"{r['examples_per_s']:.1f}", f"{r['max_abs_err']:.2e}")
    Console().print(table)
    result = {"benchmark": "cka_throughput", "config": dict(examples=n, batch_size=batch_size, layers=layers, dims=dims,
                             mean=mean, repeats=repeats, seed=seed), "results": rows}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    click.echo(f"-> {out}")
