"""The GPU path checked in one command that fits five minutes on an offline node:
``benchmarks/gpu_check.sh --deadline-s 300`` (= ``python3 -m benchmarks.gpu_check``, from the
checkout with ``PYTHONPATH=$PWD``).

Steps (``STEPS``, in this order; each writes rows of one table and one JSON file):
  preflight    nvidia-smi (driver, MIG), where libnvcuvid is, DALI/CuPy/torch/PyAV imports,
               NVDEC's caps per codec; printed at once (about 5 s of imports on a quiet 2-core
               machine; it needs 15 s left to start and may take up to 60 s, so a loaded
               machine, where imports and interpreter exit take 30 s, is no timeout);
  verify       the decode verification (``dalivssl.data.verify``) of the synthetic set and the
               decode-matrix files on this GPU (and the CPU), verdicts into the machine's cache;
  matrix       the trimmed decode matrix (``decode_matrix.first_run_cells``: the R1-R4 cases
               first, 15 s per cell): one row per cell, compared with PyAV and the table;
  pytest-gpu   ``pytest -m gpu -o faulthandler_timeout=60 --durations=15`` (log in --work);
  same-plans   every task's first batch decoded on CPU and GPU from the same plans: pixels,
               and a failure when the GPU loader dropped its GOP-range sub-streams;
  memory       forward + backward at 16x224², batch 8, bf16, for r21d, r2plus1d_18, swin, vit_b:
               ``torch.cuda.max_memory_allocated``;
  pretrain     20 AMP steps of RSPNet/R(2+1)D on the small synthetic set;
  loader, sweep, cka   throughput (``OPTIONAL``): only when the deadline leaves time.

Never losing what ran: every step runs in its own child process (``python3 -X faulthandler``, its
own session, killed with its group at its time limit), writes each row the moment it has it, and
the parent prints the row and rewrites the JSON at once. ``--deadline-s``: each step gets at most
what is left minus the minimum of the required steps after it; a step that does not fit is a
'not run (deadline)' row. "No NVDEC" is not "no GPU" (G9): CUDA-only rows (pytest, memory, CKA)
still run. Without a GPU the GPU rows say 'skipped: no GPU' and the CPU sides run at small sizes
(tests/benchmarks/test_gpu_check.py). Exit code 1 if a row failed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

SKIP_GPU = "skipped: no GPU"
NVIDIA_NODES = ("/dev/nvidiactl", "/dev/dxg")  # a CUDA driver's device node (Linux, WSL)
ROOT = Path(__file__).resolve().parent.parent


class Ctx:
    """What every step gets: sizes (full or tiny), the work folder, what the GPU offers, and
    ``emit(row)``, which hands a finished row to the parent at once."""

    def __init__(self, tiny: bool, work: Path, cuda: bool, nvdec: bool, why: str = "",
                 rows_file: Path | None = None, timeout: float = 60.0):
        self.tiny, self.work, self.cuda, self.nvdec, self.why = tiny, Path(work), cuda, nvdec, why
        self.rows_file, self.timeout = rows_file, timeout
        self.rows: list[dict] = []

    @property
    def gpu(self) -> bool:
        """NVDEC decoding usable (the GPU loader, pretraining)."""
        return self.nvdec

    def skip(self, cuda_only: bool = False) -> str:
        """The status of a GPU row that cannot run here."""
        if not self.cuda:
            return SKIP_GPU
        return "" if cuda_only else f"skipped: no NVDEC ({self.why})"

    def emit(self, row: dict) -> dict:
        row.setdefault("result", "")
        row.setdefault("goal", "")
        self.rows.append(row)
        if self.rows_file is not None:
            with open(self.rows_file, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
        return row

    def synth(self) -> dict:
        """A small 128-px VP9 synthetic set (decodable by both decoders), made once per run (the
        children share it through the work folder)."""
        from dalivssl.data.synth import generate

        out = self.work / "synth"
        names = ("train", "test", "all")
        if all((out / f"{n}.jsonl").is_file() for n in names):
            return {n: out / f"{n}.jsonl" for n in names}
        return generate(out, videos=8 if self.tiny else 16, classes=4, frames=150, size=128,
                        seed=0)


def _quiet(fn, *args, **kw):
    """Run ``fn`` with its stdout (rich tables of the reused benchmarks) captured."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def _click(cmd, args: list[str]):
    """Run a click command in-process (its printout captured)."""
    return _quiet(cmd.main, args=args, standalone_mode=False)


def _sh(cmd: list[str], timeout: float = 5.0) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except Exception:  # a missing tool is an empty answer
        return ""


# ---------------------------------------------------------------------------------------- steps
def step_preflight(ctx: Ctx) -> None:
    from dalivssl.doctor import versions

    v = versions()
    smi = _sh(["nvidia-smi", "--query-gpu=name,driver_version,mig.mode.current,memory.total",
               "--format=csv,noheader"])
    ldc = [ln.split("=>")[-1].strip() for ln in _sh(["ldconfig", "-p"]).splitlines()
           if "libnvcuvid" in ln]
    from dalivssl.devices import nvcuvid_path

    lib = nvcuvid_path()
    ctx.emit({"step": "preflight", "device": "cpu", "status": "ok",
              "result": f"torch {v['torch']} (CUDA {v['torch_cuda']}), DALI {v['dali']}, CuPy "
                        f"{v['cupy']}, PyAV {v['pyav']}",
              "data": {"versions": v}})
    if not ctx.cuda:
        ctx.emit({"step": "preflight", "device": "gpu", "status": SKIP_GPU,
                  "result": f"nvidia-smi: {smi or 'none'}; libnvcuvid: {lib or 'not found'}"})
        return
    caps = {}
    if lib:
        from dalivssl.data.capabilities import DECODERS
        from dalivssl.devices import nvdec_caps

        caps = {c: nvdec_caps(0, c) for c in DECODERS["gpu"]}
    yes = [c for c, x in caps.items() if x and x["supported"]]
    n = max([x["nvdecs"] for x in caps.values() if x] or [0])
    ctx.emit({"step": "preflight", "device": "gpu", "status": "ok" if ctx.nvdec else "fail",
              "result": f"{smi or 'nvidia-smi: none'}; libnvcuvid {lib or 'NOT FOUND'} "
                        f"(ldconfig: {', '.join(ldc) or 'none'}); {n} NVDEC(s), caps: "
                        f"{'/'.join(yes) or 'none'}" + ("" if ctx.nvdec else f"; {ctx.why}"),
              "goal": "NVDEC usable", "data": {"caps": caps, "nvidia_smi": smi,
                                               "libnvcuvid": lib, "ldconfig": ldc}})


def _verify_files(ctx: Ctx):
    """The synthetic set plus one file per decode-matrix case that NVDEC should read, as one
    manifest with packet indexes."""
    from dalivssl.data import decode_matrix as dm
    from dalivssl.data.index import probe_with_packets
    from dalivssl.data.manifest import Manifest, VideoRecord, load_manifest

    synth = load_manifest(ctx.synth()["train"])
    folder = ctx.work / "verify_files"
    folder.mkdir(parents=True, exist_ok=True)
    names = ("vp9-altref", "vp9-200x150", "h264", "h264-bframes", "h264-200x150", "hevc",
             "mpeg4-avi", "mpeg4-avi-nob", "vp8")
    records, indexes = [], []
    for rec in synth.records:
        records.append(VideoRecord(str(synth.abspath(rec)), rec.num_frames, label=0,
                                   codec=rec.codec, width=rec.width, height=rec.height,
                                   packets=len(indexes), extra=dict(rec.extra)))
        indexes.append(synth.packet_index(rec))
    for name in names:
        case = dm.CASES[name]
        path = folder / f"{name}{case.suffix}"
        try:
            if not path.is_file():
                dm.write_case(case, 160, path, n=48)
            info = probe_with_packets(path)
        except Exception as exc:  # an encoder or the ffmpeg binary missing: one file fewer,
            # said in a row (on a GPU that class goes unverified: a failure of this run)
            ctx.emit({"step": f"verify file {name}", "device": "gpu" if ctx.gpu else "cpu",
                      "status": "fail" if ctx.gpu else "info",
                      "result": f"not written: {type(exc).__name__}: {exc}"[:160]})
            continue
        records.append(VideoRecord(str(path), info["num_frames"], label=0, codec=info["codec"],
                                   width=info["width"], height=info["height"],
                                   packets=len(indexes), extra={"pix_fmt": info["pix_fmt"]}))
        indexes.append(info["packets"])
    return Manifest(Path("/"), records, ["x"], packets=indexes)


def step_verify(ctx: Ctx) -> None:
    from dalivssl.data.verify import verify

    man = _verify_files(ctx)
    for backend in ("gpu", "cpu"):
        if backend == "gpu" and not ctx.gpu:
            ctx.emit({"step": "verify", "device": "gpu", "status": ctx.skip()})
            continue

        def row(cls, e, backend=backend):
            ok = e["verdict"] == "ok"
            table = e.get("table")  # not decodable by the table: expected, not a failure
            ctx.emit({"step": f"verify {cls}", "device": backend,
                      "status": "ok" if ok else "no (table)" if table else "fail",
                      "result": f"{e['verdict']} ({e['clips']} clips)"[:160],
                      "goal": "ok", "data": e})

        verify(man, backend, 1 if ctx.tiny else 2, force=True, progress=row)


def step_matrix(ctx: Ctx) -> None:
    from dalivssl.data import decode_matrix as dm

    if ctx.gpu:
        cells, backend = dm.first_run_cells(), "gpu"
    else:
        ctx.emit({"step": "matrix", "device": "gpu", "status": ctx.skip()})
        cells, backend = [(c, 128) for c in dm.NEW_CASES], "cpu"
    for cell in cells:  # one matrix per cell: each row is out the moment it is measured
        r = dm.run_matrix(cells=[cell], backends=(backend,), timeout=15)["cells"][0]
        agrees = dm.agrees(r, backend)
        status = {True: "ok", False: "fail", None: "info"}[agrees]
        if backend == "gpu" and r["case"] in dm.NEW_CASES and r[backend]["status"] == "ENC":
            status = "fail"  # an R1-R4 case this run could not even write: not measured
        ctx.emit({"step": f"matrix {r['case']}@{r['size']}", "device": backend,
                  "status": status,
                  "result": f"{dm.verdict(r, backend)}: {r[backend].get('detail', '')}"[:160]
                            .rstrip(": "),
                  "goal": f"table: {r['expected'][backend]}", "data": r})


def step_pytest_gpu(ctx: Ctx) -> None:
    if not ctx.cuda:
        ctx.emit({"step": "pytest-gpu", "device": "gpu", "status": SKIP_GPU})
        return
    log = ctx.work / "pytest_gpu.log"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", "-m", "gpu", "-q", "-rfE",
           "-o", "faulthandler_timeout=60", "--durations=15", "-p", "no:cacheprovider", "tests"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(5.0, ctx.timeout - 5))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    summary = lines[-1] if lines else ""
    if rc is None:
        summary = f"killed at {ctx.timeout - 5:.0f} s; {summary}"
    ctx.emit({"step": "pytest-gpu", "device": "gpu", "status": "ok" if rc == 0 else "fail",
              "result": summary[:160], "goal": "all pass",
              "data": {"failed": failed, "tail": lines[-60:], "log": str(log)}})


def step_same_plans(ctx: Ctx) -> None:
    import numpy as np
    import torch

    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.verify import routes
    from pipelines.loader import PretextLoader
    from pipelines.samplers import SAMPLERS

    man = load_manifest(ctx.synth()["train"])
    clip_len, size, bs = (8, 32, 2) if ctx.tiny else (16, 112, 4)
    for task in sorted(SAMPLERS):
        def first(device):
            ld = PretextLoader(task, man, bs, device=device, clip_len=clip_len, size=size,
                               seed=0, raw=True, prefetch=0, return_indices=True,
                               router=routes)
            t = time.perf_counter()
            b = ld.batch_at(0, 0)
            parts = [b.clips.reshape(-1)] + [v.reshape(-1) for v in b.extra_clips.values()]
            arr = torch.cat([p.cpu() for p in parts]).numpy()
            return arr, b.frames.cpu().numpy(), time.perf_counter() - t, ld

        cpu, cpu_frames, t_cpu, _ = first("cpu")
        if not ctx.gpu:
            ctx.emit({"step": f"same-plans {task}", "device": "gpu", "status": ctx.skip(),
                      "result": f"CPU side decoded {cpu.size} values in {t_cpu:.2f} s"})
            continue
        gpu, gpu_frames, t_gpu, ld = first("gpu")
        stats = dict(ld.decode_stats)
        dropped = "vp9" not in ld._range_codecs  # the loader fell back to whole files
        if not np.array_equal(cpu_frames, gpu_frames) or cpu.shape != gpu.shape:
            ctx.emit({"step": f"same-plans {task}", "device": "gpu", "status": "fail",
                      "result": "plans or shapes differ between CPU and GPU"})
            continue
        d = np.abs(gpu.astype(np.int16) - cpu.astype(np.int16))
        mean, p99 = float(d.mean()), float(np.percentile(d, 99))
        ctx.emit({"step": f"same-plans {task}", "device": "gpu",
                  "status": "ok" if mean < 8 and not dropped else "fail",
                  "result": f"|GPU-CPU| mean {mean:.2f}, p99 {p99:.0f}; decoded "
                            f"{stats['decoded']} for {stats['delivered']} delivered"
                            + ("; GOP ranges DROPPED (whole files)" if dropped else "")
                            + f"; {t_cpu:.2f} s CPU vs {t_gpu:.2f} s GPU",
                  "goal": "mean < 8, GOP ranges kept",
                  "data": {"mean_abs": mean, "p99_abs": p99, "decode_stats": stats,
                           "gop_ranges_dropped": dropped}})


MEMORY_ARCHS = ("r21d", "r2plus1d_18", "swin", "vit_b")


def step_memory(ctx: Ctx) -> None:
    """Peak memory of one training step's forward + backward (bf16 autocast) per backbone."""
    import torch

    from models import create_backbone

    if not ctx.cuda:
        # the CPU side keeps the code path alive at a tiny size (fp32, 2 clips of 8x32²)
        t = time.perf_counter()
        net = create_backbone("r21d")
        net(torch.randn(2, 3, 8, 32, 32)).float().mean().backward()
        ctx.emit({"step": "memory", "device": "cpu", "status": "ok",
                  "result": f"r21d fwd+bwd 2x8x32² in {time.perf_counter() - t:.2f} s"})
        ctx.emit({"step": "memory", "device": "gpu", "status": SKIP_GPU})
        return
    for arch in MEMORY_ARCHS:
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            net = create_backbone(arch).cuda()
            x = torch.randn(8, 3, 16, 224, 224, device="cuda")
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = net(x)
            y.float().mean().backward()
            torch.cuda.synchronize()
            secs = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 2**30
            ctx.emit({"step": f"memory {arch}", "device": "gpu", "status": "ok",
                      "result": f"fwd+bwd 8x16x224² bf16: peak {peak:.2f} GiB, {secs:.2f} s",
                      "data": {"peak_gib": peak, "seconds": secs}})
        except Exception as exc:  # out of memory and the like: a row, the next arch goes on
            ctx.emit({"step": f"memory {arch}", "device": "gpu", "status": "error",
                      "result": f"{type(exc).__name__}: {exc}"[:160]})
        finally:
            net = x = y = None


def step_pretrain(ctx: Ctx) -> None:
    dev = "gpu" if ctx.gpu else "cpu"
    out = ctx.work / "pretrain"
    data = ctx.synth()["train"]
    if ctx.gpu:
        args = ["--task", "rspnet", "--arch", "r21d", "--max-steps", "20", "--batch-size", "8",
                "--clip-len", "16", "--size", "112", "--threads", "8", "--set", "amp=true"]
    else:
        args = ["--task", "rspnet", "--arch", "squeezenet", "--max-steps", "2",
                "--batch-size", "2", "--clip-len", "8", "--size", "32",
                "--set", "head.queue_size=16"]
    cmd = [sys.executable, "-X", "faulthandler", "-m", "dalivssl", "pretrain", *args, "--device",
           dev, "--data", str(data), "--out", str(out), "--overwrite", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5, ctx.timeout - 5))
    if res.returncode != 0:
        tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()][-3:]
        ctx.emit({"step": "pretrain", "device": dev, "status": "fail",
                  "result": " | ".join(tail)[:160]})
        return
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
        ctx.emit(row)
        return
    ctx.emit(row)
    ctx.emit({"step": "pretrain (AMP bf16)", "device": "gpu", "status": ctx.skip()})


def step_loader(ctx: Ctx) -> None:
    import importlib.util

    from benchmarks.loader_throughput import bench_dataset, ucf_like_dataset
    from dalivssl.devices import dali_threads

    videos = 2 if ctx.tiny else 24
    kw = (dict(batches=2, batch_size=2, clip_len=8, size=32, repeats=1) if ctx.tiny else
          dict(batches=8, batch_size=8, clip_len=16, size=112, repeats=1))
    ucf = ucf_like_dataset(videos)
    h264 = _h264_copy(ucf, ctx) if ctx.gpu else None
    decoders = ["pyav"] + (["torchcodec"] if importlib.util.find_spec("torchcodec") else [])
    for task in ("vcop", "rspnet"):
        def bench(name, path, device, decs):
            return bench_dataset(name, path, task, device, kw["batches"], kw["batch_size"],
                                 kw["clip_len"], kw["size"], dali_threads(device), {}, decs,
                                 lambda *a: None, kw["repeats"])

        cpu = bench("ucf-vp9", ucf, "cpu", [])
        cps_cpu = cpu["dali"]["clips_per_s"]
        ctx.emit({"step": f"loader {task}", "device": "cpu", "status": "ok",
                  "result": f"DALI CPU on VP9: {cps_cpu:.1f} clips/s", "data": {"cpu_vp9": cpu}})
        if not ctx.gpu:
            ctx.emit({"step": f"loader {task}", "device": "gpu", "status": ctx.skip()})
            continue
        gpu = bench("ucf-h264", h264, "gpu", decoders)
        cps = gpu["dali"]["clips_per_s"]
        base = ", ".join(f"{d} {gpu[d]['clips_per_s']:.1f}" for d in decoders)
        ctx.emit({"step": f"loader {task}", "device": "gpu",
                  "status": "ok" if not gpu["skipped"] else "fail",
                  "result": f"DALI GPU on H.264 {cps:.1f} clips/s ({cps / cps_cpu:.1f}x DALI "
                            f"CPU); DataLoader+{base}; skipped {gpu['skipped'] or 0}",
                  "goal": "GPU > CPU", "data": {"gpu_h264": gpu}})


def _h264_copy(src_manifest: Path, ctx: Ctx) -> Path:
    """The UCF-like videos transcoded to H.264 (size and length kept), made once per run."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.prepare import prepare

    _, failures, path = prepare(load_manifest(src_manifest), ctx.work / "ucf_h264", codec="h264",
                                short_side=None, gop=None, segment_frames=None)
    if failures:
        raise RuntimeError(f"H.264 transcode failed: {failures[0]}")
    return path


def step_sweep(ctx: Ctx) -> None:
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
        ctx.emit(row)
        return
    ctx.emit(row)
    ctx.emit({"step": "sweep 21 cells", "device": "gpu", "status": ctx.skip()})


def step_cka(ctx: Ctx) -> None:
    from benchmarks.cka_throughput import cli as cka

    out = ctx.work / "cka.json"
    args = ["--out", str(out), "--repeats", "1"]
    if ctx.tiny:
        args += ["--examples", "64", "--batch-size", "16", "--dims", "256", "--layers", "2"]
    _click(cka, args)
    res = {r["backend"].split()[0]: r for r in json.loads(out.read_text())["results"]}
    ctx.emit({"step": "cka", "device": "cpu", "status": "ok",
              "result": f"NumPy float64 {res['numpy']['examples_per_s']:.0f} examples/s"})
    if "cupy" not in res:
        ctx.emit({"step": "cka", "device": "gpu", "status": ctx.skip(cuda_only=True) or
                  "skipped: CuPy not usable"})
        return
    speed = res["cupy"]["examples_per_s"] / res["numpy"]["examples_per_s"]
    err = res["cupy"]["max_abs_err"]
    ctx.emit({"step": "cka", "device": "gpu", "status": "ok" if err < 1e-8 else "fail",
              "result": f"CuPy {speed:.0f}x NumPy, max |err| {err:.1e}",
              "goal": ">= 20x, err < 1e-8", "data": {"speedup": speed, "max_abs_err": err}})


# (side, frames asked) of the vp9-altref files this check and `dalivssl doctor` encode: the
# matrix's sizes at its 16 frames, and the verification's 160-px files of 48 frames
PREMADE_ALTREF = tuple((s, 16) for s in (64, 112, 128, 240)) + ((160, 48),)


def write_premade(folder: Path) -> list[Path]:
    """Pre-encode the vp9-altref files (R3) with this machine's ffmpeg binary into ``folder``,
    for a GPU node that has none: there ``--premade folder`` hands them to the steps
    (``decode_matrix.PREMADE_ENV``)."""
    from dalivssl.data import decode_matrix as dm

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for side, n in PREMADE_ALTREF:
        frames = dm.pattern_frames(max(n, dm.ALTREF_MIN_FRAMES), side, side)
        raw = frames.tobytes()
        path = folder / dm.premade_name(raw, *frames.shape[:3])
        if not path.is_file():
            tmp = path.with_suffix(".tmp.webm")
            dm.write_vp9_altref(tmp, frames)
            os.replace(tmp, path)
        out.append(path)
    return out


@dataclass(frozen=True)
class Step:
    """A step: its function, the most seconds it may take (its child is killed then), the least
    it needs to be worth starting, and whether it is a throughput row (run only if time is
    left once the required steps are done)."""

    fn: object
    limit_s: float
    min_s: float
    optional: bool = False


STEPS = {"preflight": Step(step_preflight, 60, 15), "verify": Step(step_verify, 60, 10),
         "matrix": Step(step_matrix, 120, 10), "pytest-gpu": Step(step_pytest_gpu, 150, 30),
         "same-plans": Step(step_same_plans, 90, 10), "memory": Step(step_memory, 60, 10),
         "pretrain": Step(step_pretrain, 120, 20),
         "loader": Step(step_loader, 180, 60, True), "sweep": Step(step_sweep, 90, 30, True),
         "cka": Step(step_cka, 60, 15, True)}
OPTIONAL = tuple(n for n, s in STEPS.items() if s.optional)


# ------------------------------------------------------------------------------------ the run
def _gpu_state() -> tuple[bool, bool, str]:
    """(CUDA usable, NVDEC usable, why not), decided in a child so this process never
    initialises CUDA (its step children start clean). Without an NVIDIA device node (Linux
    /dev/nvidiactl, WSL /dev/dxg) there is no CUDA: said at once, without the child's seconds
    of torch import, which would come out of the deadline."""
    if not any(os.path.exists(d) for d in NVIDIA_NODES):
        return False, False, "no NVIDIA device node"
    code = ("import json; from dalivssl.devices import cuda_usable, resolve_device; "
            "c = cuda_usable(); d = resolve_device('auto'); "
            "print(json.dumps([c, d.is_gpu, '' if d.is_gpu else d.reason]))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60).stdout.strip().splitlines()
        cuda, nvdec, why = json.loads(out[-1])
        return bool(cuda), bool(nvdec), why.split(": ", 1)[-1]
    except Exception as exc:  # a broken CUDA stack reads as no GPU, with the reason
        return False, False, f"probe failed: {exc}"


def run_checks(tiny: bool = False, steps=None, work: Path | None = None, log=print,
               deadline_s: float | None = None, out: Path | None = None) -> dict:
    """Run ``steps`` (default all) in children under ``deadline_s``; returns and, after every
    row, writes to ``out`` {'gpu', 'cuda', 'deadline_s', 'seconds', 'rows'}."""
    import tempfile

    t0 = time.perf_counter()
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    cuda, nvdec, why = _gpu_state()
    res = {"gpu": nvdec, "cuda": cuda, "why_no_nvdec": why, "tiny": tiny,
           "deadline_s": deadline_s, "seconds": 0.0, "rows": []}
    reason = ("NVDEC usable" if nvdec else f"CUDA without NVDEC ({why})" if cuda
              else "no CUDA device")
    res["device"] = {"reason": reason}

    def save():
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(res, indent=2, default=str))
            os.replace(tmp, out)

    def add(row: dict, secs: float | None = None) -> None:
        row.setdefault("result", "")
        row.setdefault("goal", "")
        row["t_s"] = round(time.perf_counter() - t0, 1)
        res["rows"].append(row)
        log(render_row(row))
        save()

    names = list(steps or STEPS)
    for i, name in enumerate(names):
        step = STEPS[name]
        left = (float("inf") if deadline_s is None
                else deadline_s - (time.perf_counter() - t0))
        later = sum(STEPS[n].min_s for n in names[i + 1:] if not STEPS[n].optional)
        # earlier steps matter more: the later ones' minimum is kept free unless that leaves
        # this one less than its own minimum
        budget = min(step.limit_s, left - 1,
                     max(left - (0 if step.optional else later), step.min_s))
        if budget < step.min_s or (step.optional and left - 1 < step.limit_s / 2):
            add({"step": name, "device": "-", "status": "not run (deadline)",
                 "result": f"{max(0, left):.0f} s left, needs {step.min_s:.0f} s"})
            continue
        _run_step(name, budget, tiny, work, (cuda, nvdec, why), add)
    save()
    return res


def _run_step(name: str, budget: float, tiny: bool, work: Path, state, add) -> None:
    """One step in a child (``-X faulthandler``, own session): its rows are read as it writes
    them; at ``budget`` seconds its process group is killed and that is a row too."""
    rows_file = work / f"{name}.rows.jsonl"
    rows_file.unlink(missing_ok=True)
    log = open(work / f"{name}.log", "w")
    args = json.dumps({"step": name, "tiny": tiny, "work": str(work), "state": list(state),
                       "rows": str(rows_file), "timeout": budget})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "benchmarks.gpu_check",
                             "--child", args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    seen, killed = 0, False

    def drain():
        nonlocal seen
        if not rows_file.is_file():
            return
        lines = rows_file.read_text().splitlines()
        for line in lines[seen:]:
            if line.strip():
                add(json.loads(line))
        seen = len(lines)

    while proc.poll() is None:
        drain()
        if time.perf_counter() - t > budget:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
            break
        time.sleep(0.2)
    drain()
    log.close()
    if killed or proc.returncode != 0:
        tail = [ln for ln in (work / f"{name}.log").read_text(errors="replace").splitlines()
                if ln.strip()][-3:]
        why = (f"killed at its {budget:.0f} s limit" if killed
               else f"child exit code {proc.returncode}")
        status = ("error" if not killed else "cut (optional)" if STEPS[name].optional
                  else "timeout")  # a throughput row cut short is a figure missing, no failure
        add({"step": name, "device": "-", "status": status,
             "result": f"{why}: {' | '.join(tail)}"[:200],
             "data": {"log": str(work / f"{name}.log")}})


def _child(spec: str) -> int:
    """Child side of :func:`_run_step`: run one step, rows appended to the rows file."""
    a = json.loads(spec)
    cuda, nvdec, why = a["state"]
    ctx = Ctx(a["tiny"], Path(a["work"]), cuda, nvdec, why, Path(a["rows"]), a["timeout"])
    try:
        STEPS[a["step"]].fn(ctx)
    except Exception as exc:
        import traceback

        ctx.emit({"step": a["step"], "device": "gpu" if ctx.gpu else "cpu", "status": "error",
                  "result": f"{type(exc).__name__}: {exc}"[:160],
                  "data": {"traceback": traceback.format_exc()[-2000:]}})
    return 0


def render_row(r: dict) -> str:
    return (f"{r.get('t_s', 0):6.1f}s  {r['step'][:34]:34s} {r['device']:4s} {r['status'][:24]:24s}"
            f" {r['result'][:110]}" + (f"  [goal: {r['goal']}]" if r.get("goal") else ""))


def render(res: dict) -> str:
    """One plain-text table."""
    lines = [f"gpu_check: {res['device']['reason']} ({res['seconds']:.0f} s"
             + (f" of a {res['deadline_s']:.0f} s deadline" if res["deadline_s"] else "")
             + (", tiny sizes" if res["tiny"] else "") + ")"]
    return "\n".join(lines + [render_row(r) for r in res["rows"]])


@click.command("gpu-check")
@click.option("--tiny", is_flag=True, help="CPU-test sizes (seconds, not minutes).")
@click.option("--steps", default=None, help=f"Comma list (default all): {', '.join(STEPS)}.")
@click.option("--deadline-s", type=float, default=None,
              help="Finish within this many seconds: steps that do not fit are 'not run'.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("runs/gpu_check/gpu_check.json"), show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for generated data and logs (default: a temporary folder).")
@click.option("--premade", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of pre-encoded vp9-altref files (--write-premade), for a node "
                   "without the ffmpeg binary.")
@click.option("--write-premade", "premade_out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Only write the vp9-altref files into this folder (needs ffmpeg), then exit.")
def cli(tiny, steps, deadline_s, out, work, premade, premade_out):
    """Check the GPU path in one command under a deadline: preflight, decode verification, decode
    matrix, pytest -m gpu, CPU-vs-GPU pixels, memory, AMP pretrain, then throughput if time is
    left; rows print as they finish and the JSON is rewritten after each."""
    from dalivssl.data.decode_matrix import PREMADE_ENV
    from dalivssl.errors import DalivsslError, unknown_name

    if premade_out is not None:
        files = write_premade(premade_out)
        click.echo(f"wrote {len(files)} vp9-altref files to {premade_out}")
        return 0
    names = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    for n in names or []:
        if n not in STEPS:
            raise unknown_name("step", n, STEPS)
    if premade is not None:
        if not premade.is_dir():
            raise DalivsslError(f"--premade {premade}: no such folder")
        os.environ[PREMADE_ENV] = str(premade.resolve())  # the step children inherit it
    res = run_checks(tiny, names, work, lambda m: click.echo(m, err=True), deadline_s, out)
    click.echo(render(res))
    click.echo(f"wrote {out}")
    return 1 if any(r["status"] in ("fail", "error", "timeout") for r in res["rows"]) else 0


def main(argv=None) -> int:
    """The command line: bad input is one line on stderr and exit code 2, no traceback."""
    from dalivssl.errors import DalivsslError

    try:
        return cli.main(args=argv, prog_name="gpu_check.sh", standalone_mode=False) or 0
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"gpu_check: {exc.format_message()}", err=True)
        return 2
    except DalivsslError as exc:
        click.echo(f"gpu_check: {exc}", err=True)
        return 2


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2]))
    sys.exit(main())
