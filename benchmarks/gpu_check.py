"""The GPU path verified in one command: ``benchmarks/gpu_check.sh`` (= ``python -m
benchmarks.gpu_check``, = ``dalivssl bench gpu-check``). Under 8 minutes on one H200.

Steps (``STEPS``; each a row of one table and one entry of one JSON file):
  doctor       ``dalivssl doctor``: versions, GPUs, NVDEC, and the decode matrix (codec x size x
               backend, against PyAV and against the capability table);
  pytest-gpu   ``pytest -m gpu`` (the GPU-marked tests);
  same-plans   every pretext task's first batch decoded + augmented on CPU and on GPU from the
               same plans (128-px VP9, decodable by both): mean and p99 |GPU - CPU| per pixel;
  loader       clips/s of the loader for VCOP and RSPNet: DALI GPU on H.264 UCF-like videos vs
               DataLoader + PyAV (and torchcodec, if installed) on the same plans, and DALI CPU on
               the VP9 originals (``benchmarks.loader_throughput``);
  sweep        the 21-cell robustness sweep vs one clean evaluation (goal <= 3x;
               ``benchmarks.sweep_cost``);
  cka          CKA map, CuPy vs NumPy float64: agreement and speed-up (goal >= 20x;
               ``benchmarks.cka_throughput``);
  pretrain     20 optimiser steps of RSPNet/R(2+1)D with bf16 AMP: steps/s and the share of time
               spent waiting for data (goal < 5 %).

Without a GPU every step still runs its CPU side at small sizes (``--tiny``), and the GPU rows
say 'skipped: no GPU', so the script cannot rot unnoticed (tests/benchmarks/test_gpu_check.py).
A step that raises is an 'error' row; the others still run. Exit code 1 if a step failed.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

SKIP_GPU = "skipped: no GPU"


class Ctx:
    """What every step gets: sizes (full or tiny), the work folder, whether a GPU is usable."""

    def __init__(self, tiny: bool, work: Path, gpu: bool, log, pytest_timeout: int):
        self.tiny, self.work, self.gpu, self.log = tiny, work, gpu, log
        self.pytest_timeout = pytest_timeout
        self._synth = None

    def synth(self) -> dict:
        """A small 128-px VP9 synthetic set (decodable by both decoders), made once."""
        if self._synth is None:
            from dalivssl.data.synth import generate

            self._synth = generate(self.work / "synth", videos=8 if self.tiny else 16, classes=4,
                                   frames=150, size=128, seed=0)
        return self._synth


def _quiet(fn, *args, **kw):
    """Run ``fn`` with its stdout (rich tables of the reused benchmarks) captured."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        return fn(*args, **kw)


def _click(cmd, args: list[str]):
    """Run a click command in-process (its printout captured)."""
    return _quiet(cmd.main, args=args, standalone_mode=False)


# ---------------------------------------------------------------------------------------- steps
def step_doctor(ctx: Ctx) -> list[dict]:
    from dalivssl.doctor import report
    from dalivssl.data.decode_matrix import agrees

    kw = {"cases": ["vp9", "h264"], "sizes": (64, 128)} if ctx.tiny else {}
    rep = report(matrix=True, **kw)
    cells = rep["matrix"]["cells"]
    rows = []
    for dev in ("cpu", "gpu"):
        got = [r for r in cells if r[dev]["status"] != "SKIP"]
        if not got:
            rows.append({"step": "doctor", "device": dev, "status": SKIP_GPU})
            continue
        bad = [f"{r['case']}@{r['size']}" for r in got if agrees(r, dev) is False]
        ok = sum(r[dev]["status"] == "OK" for r in got)
        rows.append({"step": "doctor", "device": dev, "status": "fail" if bad else "ok",
                     "result": f"{ok}/{len(got)} cells OK; {len(bad)} disagree with the table"
                               + (f" ({', '.join(bad[:6])})" if bad else ""),
                     "goal": "matrix = table", "data": {"disagree": bad}})
    rows[0]["data"] = {**rows[0].get("data", {}), "report": rep}
    return rows


def step_pytest_gpu(ctx: Ctx) -> list[dict]:
    if not ctx.gpu:
        return [{"step": "pytest-gpu", "device": "gpu", "status": SKIP_GPU}]
    root = Path(__file__).resolve().parent.parent
    try:
        res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE",
                              "-p", "no:cacheprovider", "tests"], cwd=root, capture_output=True,
                             text=True, timeout=ctx.pytest_timeout)
        out = res.stdout
        status = "ok" if res.returncode == 0 else "fail"
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        status = "fail"
        out += f"\ntimed out after {ctx.pytest_timeout} s"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return [{"step": "pytest-gpu", "device": "gpu", "status": status, "result": summary[:120],
             "goal": "all pass", "data": {"failed": failed, "tail": lines[-40:]}}]


def step_same_plans(ctx: Ctx) -> list[dict]:
    import numpy as np

    from dalivssl.data.manifest import load_manifest
    from pipelines.loader import PretextLoader
    from pipelines.samplers import SAMPLERS

    man = load_manifest(ctx.synth()["train"])
    clip_len, size, bs = (8, 32, 2) if ctx.tiny else (16, 112, 4)
    rows = []
    for task in sorted(SAMPLERS):
        def first(device):
            ld = PretextLoader(task, man, bs, device=device, clip_len=clip_len, size=size,
                               seed=0, raw=True, prefetch=0, return_indices=True)
            t = time.perf_counter()
            b = ld.batch_at(0, 0)
            parts = [b.clips.reshape(-1)] + [v.reshape(-1) for v in b.extra_clips.values()]
            import torch

            arr = torch.cat([p.cpu() for p in parts]).numpy()
            return arr, b.frames.cpu().numpy(), time.perf_counter() - t

        cpu, cpu_frames, t_cpu = first("cpu")
        if not ctx.gpu:
            rows.append({"step": f"same-plans {task}", "device": "gpu", "status": SKIP_GPU,
                         "result": f"CPU side decoded {cpu.size} values in {t_cpu:.2f} s"})
            continue
        gpu, gpu_frames, t_gpu = first("gpu")
        if not np.array_equal(cpu_frames, gpu_frames) or cpu.shape != gpu.shape:
            rows.append({"step": f"same-plans {task}", "device": "gpu", "status": "fail",
                         "result": "plans or shapes differ between CPU and GPU"})
            continue
        d = np.abs(gpu.astype(np.int16) - cpu.astype(np.int16))
        mean, p99 = float(d.mean()), float(np.percentile(d, 99))
        rows.append({"step": f"same-plans {task}", "device": "gpu",
                     "status": "ok" if mean < 8 else "fail",
                     "result": f"|GPU-CPU| mean {mean:.2f}, p99 {p99:.0f} grey levels; "
                               f"{t_cpu:.2f} s CPU vs {t_gpu:.2f} s GPU",
                     "goal": "mean < 8", "data": {"mean_abs": mean, "p99_abs": p99}})
    return rows


def step_loader(ctx: Ctx) -> list[dict]:
    import importlib.util

    from benchmarks.loader_throughput import bench_dataset, ucf_like_dataset
    from dalivssl.devices import dali_threads

    videos = 2 if ctx.tiny else 8
    kw = (dict(batches=2, batch_size=2, clip_len=8, size=32, repeats=1) if ctx.tiny else
          dict(batches=8, batch_size=8, clip_len=16, size=112, repeats=1))
    ucf = ucf_like_dataset(videos)
    rows = []
    h264 = _h264_copy(ucf, ctx) if ctx.gpu else None
    decoders = ["pyav"] + (["torchcodec"] if importlib.util.find_spec("torchcodec") else [])
    for task in ("vcop", "rspnet"):
        def bench(name, path, device, decs):
            return bench_dataset(name, path, task, device, kw["batches"], kw["batch_size"],
                                 kw["clip_len"], kw["size"], dali_threads(device), {}, decs,
                                 lambda *a: None, kw["repeats"])

        cpu = bench("ucf-vp9", ucf, "cpu", [])
        cps_cpu = cpu["dali"]["clips_per_s"]
        rows.append({"step": f"loader {task}", "device": "cpu", "status": "ok",
                     "result": f"DALI CPU on VP9: {cps_cpu:.1f} clips/s",
                     "data": {"cpu_vp9": cpu}})
        if not ctx.gpu:
            rows.append({"step": f"loader {task}", "device": "gpu", "status": SKIP_GPU})
            continue
        gpu = bench("ucf-h264", h264, "gpu", decoders)
        cps = gpu["dali"]["clips_per_s"]
        base = ", ".join(f"{d} {gpu[d]['clips_per_s']:.1f}" for d in decoders)
        rows.append({"step": f"loader {task}", "device": "gpu",
                     "status": "ok" if not gpu["skipped"] else "fail",
                     "result": f"DALI GPU on H.264 {cps:.1f} clips/s ({cps / cps_cpu:.1f}x DALI "
                               f"CPU); DataLoader+{base}; skipped {gpu['skipped'] or 0}",
                     "goal": "GPU > CPU", "data": {"gpu_h264": gpu}})
    return rows


def _h264_copy(src_manifest: Path, ctx: Ctx) -> Path:
    """The UCF-like videos transcoded to H.264 (size and length kept), made once per run."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.prepare import prepare

    _, failures, path = prepare(load_manifest(src_manifest), ctx.work / "ucf_h264", codec="h264",
                                short_side=None, gop=None, segment_frames=None)
    if failures:
        raise RuntimeError(f"H.264 transcode failed: {failures[0]}")
    return path


def step_sweep(ctx: Ctx) -> list[dict]:
    from benchmarks.sweep_cost import cli as sweep

    dev = "gpu" if ctx.gpu else "cpu"
    out = ctx.work / "sweep.json"
    args = ["--data", str(ctx.synth()["test"]), "--device", dev, "--out", str(out)]
    args += (["--arch", "squeezenet", "--clip-len", "8", "--size", "32", "--clips-per-video",
              "1", "--batch-size", "2", "--videos", "2"] if ctx.tiny else
             ["--arch", "r21d", "--videos", "8"])
    _click(sweep, args)
    res = json.loads(out.read_text())
    ratio = res["ratio"]
    row = {"step": "sweep 21 cells", "device": dev, "status": "ok",
           "result": f"sweep / clean = {ratio:.2f} (decode {res['sweep']['decode']:.1f} s, noise "
                     f"{res['sweep']['noise']:.1f} s, forward {res['sweep']['forward']:.1f} s)",
           "data": res}
    if dev == "gpu":
        row.update(status="ok" if ratio <= 3 else "fail", goal="<= 3x")
        return [row]
    return [row, {"step": "sweep 21 cells", "device": "gpu", "status": SKIP_GPU}]


def step_cka(ctx: Ctx) -> list[dict]:
    from benchmarks.cka_throughput import cli as cka

    out = ctx.work / "cka.json"
    args = ["--out", str(out), "--repeats", "1"]
    if ctx.tiny:
        args += ["--examples", "64", "--batch-size", "16", "--dims", "256", "--layers", "2"]
    _click(cka, args)
    res = {r["backend"].split()[0]: r for r in json.loads(out.read_text())["results"]}
    rows = [{"step": "cka", "device": "cpu", "status": "ok",
             "result": f"NumPy float64 {res['numpy']['examples_per_s']:.0f} examples/s"}]
    if "cupy" not in res:
        rows.append({"step": "cka", "device": "gpu", "status": SKIP_GPU})
        return rows
    speed = res["cupy"]["examples_per_s"] / res["numpy"]["examples_per_s"]
    err = res["cupy"]["max_abs_err"]
    rows.append({"step": "cka", "device": "gpu", "status": "ok" if err < 1e-8 else "fail",
                 "result": f"CuPy {speed:.0f}x NumPy, max |err| {err:.1e}",
                 "goal": ">= 20x, err < 1e-8", "data": {"speedup": speed, "max_abs_err": err}})
    return rows


def step_pretrain(ctx: Ctx) -> list[dict]:
    dev = "gpu" if ctx.gpu else "cpu"
    out = ctx.work / "pretrain"
    if ctx.gpu:
        from dalivssl.data.synth import ensure_default_dataset

        data = ensure_default_dataset()["train"]
        args = ["--task", "rspnet", "--arch", "r21d", "--max-steps", "20", "--batch-size", "8",
                "--clip-len", "16", "--size", "112", "--threads", "8", "--set", "amp=true"]
    else:
        data = ctx.synth()["train"]
        args = ["--task", "rspnet", "--arch", "squeezenet", "--max-steps", "2",
                "--batch-size", "2", "--clip-len", "8", "--size", "32",
                "--set", "head.queue_size=16"]
    cmd = [sys.executable, "-m", "dalivssl", "pretrain", *args, "--device", dev, "--data",
           str(data), "--out", str(out), "--overwrite", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()][-3:]
        return [{"step": "pretrain", "device": dev, "status": "fail",
                 "result": " | ".join(tail)[:160]}]
    s = json.loads((out / "summary.json").read_text())
    sps = s["steps"] / max(s["wall_s"], 1e-9)
    row = {"step": "pretrain" + (" (AMP bf16)" if ctx.gpu else " (fp32)"), "device": dev,
           "status": "ok",
           "result": f"{s['steps']} steps, {sps:.2f} steps/s, {s['clips_per_s']:.1f} clips/s, "
                     f"data wait {100 * s['data_wait']:.0f} %, loss {s['final_loss']:.3f}",
           "data": s}
    if ctx.gpu:
        ok = s["steps"] == 20 and s["final_loss"] == s["final_loss"] and not s.get("skipped")
        row.update(status="ok" if ok else "fail", goal="data wait < 5 %")
        return [row]
    return [row, {"step": "pretrain (AMP bf16)", "device": "gpu", "status": SKIP_GPU}]


STEPS = {"doctor": step_doctor, "pytest-gpu": step_pytest_gpu, "same-plans": step_same_plans,
         "loader": step_loader, "sweep": step_sweep, "cka": step_cka, "pretrain": step_pretrain}


# ------------------------------------------------------------------------------------ the run
def run_checks(tiny: bool = False, steps=None, work: Path | None = None, log=print,
               pytest_timeout: int = 210) -> dict:
    """Run ``steps`` (default all); returns {'gpu': bool, 'device': ..., 'rows': [...]}."""
    from dalivssl.devices import resolve_device

    dev = resolve_device("auto")
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="gpu_check-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(tiny, work, dev.is_gpu, log, pytest_timeout)
    rows = []
    t_all = time.perf_counter()
    for name in steps or STEPS:
        log(f"[gpu_check] {name} …")
        t = time.perf_counter()
        try:
            got = STEPS[name](ctx)
        except Exception as exc:
            got = [{"step": name, "device": "gpu" if ctx.gpu else "cpu", "status": "error",
                    "result": f"{type(exc).__name__}: {exc}"[:160],
                    "data": {"traceback": traceback.format_exc()[-2000:]}}]
        secs = round(time.perf_counter() - t, 2)
        for r in got:
            r.setdefault("result", "")
            r.setdefault("goal", "")
            r["step_seconds"] = secs
        rows += got
    return {"gpu": dev.is_gpu, "device": dev.record(), "tiny": tiny,
            "seconds": round(time.perf_counter() - t_all, 1), "rows": rows}


def render(res: dict) -> str:
    """One plain-text table."""
    head = ("step", "device", "status", "step s", "result", "goal")
    body, last = [], None
    for r in res["rows"]:  # a step's seconds on its first row only
        name = r["step"].split()[0]
        secs = f"{r['step_seconds']:.1f}" if name != last else ""
        last = name
        body.append((r["step"], r["device"], r["status"], secs, r["result"], r["goal"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    widths[4] = min(widths[4], 110)
    fmt = "  ".join(f"{{:{w}.{w}}}" for w in widths)
    lines = [f"gpu_check on {res['device']['reason']} ({res['seconds']:.0f} s"
             f"{', tiny sizes' if res['tiny'] else ''})", fmt.format(*head),
             fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, row)) for row in body]
    return "\n".join(lines)


@click.command("gpu-check")
@click.option("--tiny", is_flag=True, help="CPU-test sizes (seconds, not minutes).")
@click.option("--steps", default=None, help=f"Comma list (default all): {', '.join(STEPS)}.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("runs/gpu_check/gpu_check.json"), show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for generated data (default: a temporary folder).")
@click.option("--pytest-timeout", type=int, default=210, show_default=True,
              help="Seconds for `pytest -m gpu` (the rest of the run takes ~4 min on an H200).")
def cli(tiny, steps, out, work, pytest_timeout):
    """Verify the GPU path in one command: doctor, pytest -m gpu, CPU-vs-GPU pixels, loader,
    sweep, CKA and AMP pretrain figures; one table, one JSON (GPU rows skipped without a GPU)."""
    from dalivssl.errors import unknown_name

    names = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    for n in names or []:
        if n not in STEPS:
            raise unknown_name("step", n, STEPS)
    res = run_checks(tiny, names, work, lambda m: click.echo(m, err=True), pytest_timeout)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    click.echo(render(res))
    click.echo(f"wrote {out}")
    return 1 if any(r["status"] in ("fail", "error") for r in res["rows"]) else 0


if __name__ == "__main__":
    sys.exit(cli.main(standalone_mode=False) or 0)
