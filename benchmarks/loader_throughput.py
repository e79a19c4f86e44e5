"""`dalivssl bench loader`: PretextLoader (one DALI pipeline) vs a PyTorch DataLoader decoding with
torchcodec and with PyAV (benchmarks/baselines.py: what a competent user writes), on the SAME plans
and producing the SAME output tensor (float B×K×C×T×H×W), plus a decode-only ceiling row (the same
GOP ranges, FFmpeg through PyAV, no colour conversion, no resize) every loader is a fraction of.

Datasets (unless --data names a manifest):
  synth          the embedded synthetic dataset (short videos);
  ucf-like       UCF101-like long videos generated once into the cache (320×240, 150–300 frames,
                 VP9, encoder-default GOP);
  ucf-prepared   the same videos after `dalivssl data prepare`-style preparation (short side 128,
                 segments of --segment-frames frames, GOP 16).

--variants adds DALI rows that each change one loader option (``VARIANTS``: the whole file instead
of GOP ranges; 'dali-augment', the CPU graph that resizes and colours in DALI, as before torch took
that over on CPU; without DALI's antialiasing; prefetch depth 2; one DALI thread; the threads
split over two pipelines that make alternate batches), timed in the same rounds.

Every manifest gets its packet index first (what `dalivssl data index` records; written beside
the benchmark's own copy of the manifest, never into a cached dataset), so DALI decodes only the
GOPs a plan needs; the row "DALI whole file" decodes from frame 0 as before, for comparison.

Reported per loader: clips/s (median of --repeats interleaved rounds, with the spread), decoded
frames per delivered frame and per frame of the window (a sample's first to last frame; DALI:
counted by the loader from its sub-streams; PyAV: counted while decoding after a seek to the
keyframe before the first needed frame; torchcodec: not exposed), the ratios DALI / baseline on
clips/s and on CPU time per clip, every loader as a fraction of the ceiling row (on clips/s, and on
CPU time per clip, which a shared machine's load disturbs less); for DALI also the bound 1 + GOP/window of the issue
(``_gop_bound``) and the share of samples that decode at most window + GOP frames. Timings leave out start-up:
DALI's pipelines are built and the DataLoader's persistent workers have decoded a warm-up round
before any clock starts; fewer than MIN_TIMED timed batches print a warning. The machine note
says how busy the CPU was (load average) when it ran.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from benchmarks.baselines import (DECODERS, TORCHCODEC_SEEK_MODE, TORCHCODEC_THREADS, PlanDataset,
                                  peak_rss_mb, torchcodec_missing)

UCF_VERSION = "ucf_like_v1"
# extra DALI rows (--variants): name -> (JSON key, table label, PretextLoader options); each is the
# default loader with one change, timed in the same interleaved rounds as every other row
VARIANTS = {
    "whole-file": ("dali_whole_file", "whole file", {"gop_ranges": False}),
    "dali-augment": ("dali_augment", "DALI resize+colour", {"cpu_augment": "dali"}),
    "dali-augment-noaa": ("dali_augment_noaa", "DALI resize, no antialias",
                          {"cpu_augment": "dali", "antialias": False}),
    "prefetch-2": ("dali_prefetch_2", "prefetch 2", {"prefetch": 2}),
    # threads per pipeline against pipelines per worker (issue 22, item 3): the default is one
    # pipeline with --workers DALI threads; these give it one thread, or split the threads over
    # that many pipelines, each making every other batch in its own thread (PipelinePool)
    "threads-1": ("dali_threads_1", "1 pipeline × 1 thread", {"num_threads": 1}),
    "pipelines-2": ("dali_pipelines_2", "2 pipelines × DALI threads/2", {"pipelines": 2}),
}
MIN_TIMED = 10  # fewer timed batches than this: the figure is flagged as untrustworthy


# ------------------------------------------------------------------------------------------------
# data

def _ucf_frames(n: int, seed: int, size=(240, 320)):
    """A UCF101-like clip: a textured background panning with camera shake, moving blobs and
    sensor noise (so the VP9 bitrate resembles real footage rather than flat synthetic frames)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = size
    big = rng.integers(0, 256, (h // 8 + 40, w // 8 + 40, 3)).astype(np.float32)
    big = np.kron(big, np.ones((8, 8, 1), np.float32))
    k = np.ones(9, np.float32) / 9  # soften the blocks a little
    big = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 0, big)
    big = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, big)
    vy, vx = rng.uniform(-0.6, 0.6, 2)
    blobs = [(rng.uniform(0, h), rng.uniform(0, w), rng.uniform(-3, 3), rng.uniform(-3, 3),
              rng.uniform(10, 30), rng.integers(0, 256, 3)) for _ in range(3)]
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        oy = int(abs(vy * i + 2 * np.sin(i / 5.0))) % 300
        ox = int(abs(vx * i + 2 * np.cos(i / 7.0))) % 300
        f = big[oy % (big.shape[0] - h):][:h, ox % (big.shape[1] - w):][:, :w].copy()
        for (y0, x0, dy, dx, r, col) in blobs:
            cy, cx = (y0 + dy * i) % h, (x0 + dx * i) % w
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            f[m] = col
        f += rng.normal(0, 4, f.shape).astype(np.float32)
        yield np.clip(f, 0, 255).astype(np.uint8)


def ucf_like_dataset(videos: int = 24, progress=None) -> Path:
    """Generate (once, cached, atomically) the UCF101-like long-video set; returns its manifest."""
    import shutil
    import tempfile

    import numpy as np

    from dalivssl.data.manifest import Manifest, VideoRecord, save_manifest
    from dalivssl.data.synth import cache_dir
    from dalivssl.data.videoio import write_video

    final = cache_dir() / "bench" / f"{UCF_VERSION}_{videos}"
    if (final / "COMPLETE").is_file():
        return final / "manifest.jsonl"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        rng = np.random.default_rng(2306)
        recs = []
        for i in range(videos):
            n = int(rng.integers(150, 301))
            name = f"v_{i:03d}.webm"
            write_video(tmp / name, _ucf_frames(n, seed=i), fps=25, codec="vp9")
            recs.append(VideoRecord(name, n, label=i % 4, class_name=f"c{i % 4}", fps=25.0,
                                    width=320, height=240, codec="vp9", video_id=f"v_{i:03d}"))
            if progress:
                progress(i + 1, videos)
        save_manifest(Manifest(tmp, recs, [f"c{j}" for j in range(4)]), tmp / "manifest.jsonl")
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / "manifest.jsonl"


def prepared_dataset(src_manifest: Path, segment_frames: int, short_side: int) -> Path:
    """The prepared copy (short side, GOP 16, segments), made once with dalivssl.data.prepare."""
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.prepare import prepare

    out = src_manifest.parent.with_name(
        f"{src_manifest.parent.name}_prep_s{short_side}_seg{segment_frames}")
    if (out / "COMPLETE").is_file():
        return out / "manifest.jsonl"
    _, failures, path = prepare(load_manifest(src_manifest), out, codec="vp9",
                                short_side=short_side, gop=16, segment_frames=segment_frames)
    if failures:
        from dalivssl.errors import DalivsslError

        raise DalivsslError(f"preparing the benchmark videos failed: {failures[0]}")
    (out / "COMPLETE").write_text("ok\n")
    return path


def indexed_manifest(path: Path, name: str) -> Path:
    """A copy of the manifest at ``path`` with its packet index (made once, in the benchmark's own
    cache folder: cached datasets other code reads are left as they are)."""
    from dalivssl.data.index import update_packets
    from dalivssl.data.manifest import load_manifest, save_manifest
    from dalivssl.data.synth import cache_dir

    man = load_manifest(path)
    if man.packets is not None:
        return path
    import hashlib

    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    out = cache_dir() / "bench" / "indexed" / f"{name}-{key}.jsonl"
    if not out.is_file():
        indexed, _ = update_packets(man)
        save_manifest(indexed, out)
    return out


# ------------------------------------------------------------------------------------------------
# measurement

def _schedule(loader, batches: int) -> list[tuple[int, int]]:
    """(epoch, batch) pairs of the first ``batches`` batches, running over epochs as needed."""
    n = len(loader)
    return [(i // n, i % n) for i in range(batches)]


def cpu_seconds(pids=()) -> float:
    """CPU time (user + system) of this process (all its threads: DALI's included) and of the
    processes ``pids`` (DataLoader workers), so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _time(batches_iter, pids=lambda: ()) -> dict:
    """Clips/s over all batches of ``batches_iter`` (started after the warm-up: the clock covers
    filling the prefetch queue, not starting workers or building pipelines), and CPU ms per
    clip (this process + ``pids()``): a figure a busy shared machine barely moves."""
    n_clips, done, decoded = 0, 0, 0.0
    c0 = cpu_seconds(pids())
    t0 = time.perf_counter()
    for clips, dec in batches_iter:
        done += 1
        n_clips += clips.shape[0] * clips.shape[1]
        decoded += float(dec)
    dt = time.perf_counter() - t0
    cpu = cpu_seconds(pids()) - c0
    return {"seconds": dt, "clips": n_clips, "clips_per_s": n_clips / dt if dt > 0 else 0.0,
            "cpu_ms_per_clip": 1000.0 * cpu / max(1, n_clips), "timed_batches": done,
            "decoded": decoded}


class PipelinePool:
    """N PretextLoaders of one seed (so the same batches), each with its own DALI pipeline and
    num_threads/N threads; batch b is made by loader b % N in its own thread, and batches come out
    in order: "pipelines per worker" against one pipeline with all the threads."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return len(self.loaders[0])

    def __getattr__(self, name):  # sampler, normalize, batch_plans, … of the first loader
        return getattr(self.loaders[0], name)

    @property
    def decode_stats(self) -> dict:
        return {k: sum(lo.decode_stats[k] for lo in self.loaders)
                for k in self.loaders[0].decode_stats}

    def batch_at(self, epoch, b):
        for lo in self.loaders:  # warm-up: build every pipeline
            out = lo.batch_at(epoch, b)
        return out

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.loaders)
        with ThreadPoolExecutor(n) as pool:
            pending = [pool.submit(self.loaders[b % n].batch_at, self.epoch, b)
                       for b in range(min(n, len(self)))]
            for b in range(len(self)):
                batch = pending[b].result()
                if b + n < len(self):
                    pending.append(pool.submit(self.loaders[(b + n) % n].batch_at, self.epoch,
                                               b + n))
                yield batch


def _dali_batches(loader, batches: int):
    sched = _schedule(loader, batches)
    done = 0
    for epoch in sorted({e for e, _ in sched}):
        loader.set_epoch(epoch)
        for batch in loader:
            done += 1
            from dalivssl.devices import sync

            sync(batch.clips.device.type)  # the GPU work queued for this batch is done (G8)
            yield batch.clips, 0
            if done == batches:
                return


class _Indices:
    """A sampler whose index list is set between iterations (persistent workers stay warm)."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class TorchLoader:
    """DataLoader over warm-up + timed items with persistent workers: ``warm()`` starts the
    workers and runs their first samples (imports, decoder libraries), ``batches()`` then
    yields the timed items' batches."""

    def __init__(self, warm_items, items, batch_size, workers, out_size, normalize, decoder):
        import torch

        self.n_warm, self.n = len(warm_items), len(items)
        self.sampler = _Indices()
        ds = PlanDataset(list(warm_items) + list(items), out_size, normalize, decoder)
        self.dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                              sampler=self.sampler, drop_last=True,
                                              persistent_workers=workers > 0,  # never fork
                                              multiprocessing_context=(
                                                  "forkserver" if workers else None))

    def warm(self) -> None:
        self.sampler.indices = list(range(self.n_warm))
        for _ in self.dl:
            pass

    def pids(self) -> list[int]:
        """The (persistent) worker processes."""
        it = getattr(self.dl, "_iterator", None)
        return [w.pid for w in getattr(it, "_workers", [])]

    def batches(self):
        self.sampler.indices = list(range(self.n_warm, self.n_warm + self.n))
        for clips, _, dec in self.dl:
            yield clips, float(dec.sum())


def _gop_bound(man, plans) -> dict:
    """The issue's bound 1 + GOP/window (GOP: the keyframe interval holding a sample's first
    frame; window: the span of its frames; means over the samples) and the share of samples
    that decode at most window + GOP frames."""
    import numpy as np

    from pipelines.packets import choose_ranges

    gops, windows, ok = [], [], 0
    for rec, plan in plans:
        ix = man.packet_index(rec)
        f = plan.all_frames()
        window = int(f.max() - f.min() + 1)
        windows.append(window)
        if ix is None:
            continue
        kf = np.append(ix.keyframes(), ix.num_frames)
        j = int(np.searchsorted(kf, int(f.min()), side="right")) - 1
        gop = int(kf[j + 1] - kf[j])
        gops.append(gop)
        decoded = sum(e - k for k, e in choose_ranges(ix, f))
        ok += decoded <= window + gop
    if not gops:
        return {}
    return {"mean_gop": float(np.mean(gops)), "mean_window": float(np.mean(windows)),
            "bound": 1.0 + float(np.mean(gops)) / float(np.mean(windows)),
            "samples_within_window_plus_gop": ok / len(plans)}


def bench_dataset(name, manifest_path, task, device, batches, batch_size, clip_len, size, workers,
                  task_options, decoders, log, repeats: int = 3,
                  variants=("whole-file",)) -> dict:
    from dalivssl.data.manifest import load_manifest
    from dalivssl.data.verify import routes
    from pipelines.loader import PretextLoader

    man = load_manifest(manifest_path)

    def make(opts):
        opts = {"num_threads": workers, **opts}
        n = opts.pop("pipelines", 1)
        if n > 1:  # DALI's threads split; torch augments on one shared pool of them all
            opts["augment_threads"] = opts["num_threads"]
            opts["num_threads"] = max(1, opts["num_threads"] // n)
        made = [PretextLoader(task, man, batch_size=batch_size, device=device,
                              clip_len=clip_len, size=size, seed=0, router=routes, **opts,
                              **task_options) for _ in range(n)]
        return made[0] if n == 1 else PipelinePool(made)

    loaders = {key: make(opts) for key, opts in (("dali", {}), *((VARIANTS[v][0], VARIANTS[v][2])
                                                                 for v in variants))}
    loader = loaders["dali"]
    # warm-up outside the timing: pipeline build + one batch of an epoch the timing never uses
    t0 = time.perf_counter()
    for lo in loaders.values():
        lo.batch_at(10_000, 0)
    build_s = time.perf_counter() - t0
    items, plans, delivered, window = [], [], 0, 0
    for epoch, b in _schedule(loader, batches):
        for i, plan in loader.batch_plans(epoch, b):
            items.append((str(man.abspath(man.records[i])), plan,
                          man.packet_index(man.records[i])))
            plans.append((man.records[i], plan))
            f = plan.all_frames()
            delivered += f.size
            window += int(f.max() - f.min() + 1)
    if batches < MIN_TIMED:
        log(f"[{name}] WARNING: only {batches} timed batches per loader (< {MIN_TIMED}): too "
            f"small a sample to trust; raise --batches")
    out_size = tuple(loader.sampler.out_size)
    warm_items = [(str(man.abspath(man.records[i])), plan) for b in range(max(1, workers))
                  for i, plan in loader.batch_plans(10_000, b % len(loader))]
    torch_loaders = {dec: TorchLoader(warm_items, items, batch_size, workers, out_size,
                                      loader.normalize, dec) for dec in decoders}
    for dec, tl in torch_loaders.items():
        log(f"[{name}] starting the DataLoader + {dec} workers (not timed) …")
        tl.warm()
    res = {"dataset": name, "manifest": str(manifest_path), "videos": len(man.records),
           "batches": batches, "delivered_frames": delivered, "warmup_s": build_s,
           "packet_index": man.packets is not None, **_gop_bound(man, plans)}
    # interleave the loaders and keep the median of ``repeats`` rounds: the machine is shared,
    # so load drifts during a run; alternating exposes every loader to the same drift
    runs: dict[str, list] = {key: [] for key in (*loaders, *decoders)}
    for rnd in range(repeats):
        for key, lo in loaders.items():
            log(f"[{name}] round {rnd + 1}/{repeats}: {key} ({device}) …")
            before = dict(lo.decode_stats)
            r = _time(_dali_batches(lo, batches))
            after = lo.decode_stats
            dec = after["decoded"] - before["decoded"]
            r["decoded_per_delivered"] = dec / max(1, after["delivered"] - before["delivered"])
            r["decoded_per_window"] = dec / max(1, after["window"] - before["window"])
            r["peak_rss_mb"] = peak_rss_mb()  # this process: every DALI loader so far (a high-water mark)
            runs[key].append(r)
        for dec in decoders:
            log(f"[{name}] round {rnd + 1}/{repeats}: DataLoader + {dec} ({workers} workers) …")
            r = _time(torch_loaders[dec].batches(), torch_loaders[dec].pids)
            known = r["decoded"] >= 0
            r["decoded_per_delivered"] = r["decoded"] / delivered if known else None
            r["decoded_per_window"] = r["decoded"] / window if known else None
            r["peak_rss_mb"] = peak_rss_mb(torch_loaders[dec].pids())
            runs[dec].append(r)
    for key, rs in runs.items():
        speeds = sorted(r["clips_per_s"] for r in rs)
        med = dict(sorted(rs, key=lambda r: r["clips_per_s"])[len(rs) // 2])
        med.pop("decoded")
        med["rounds_clips_per_s"] = [r["clips_per_s"] for r in rs]
        med["spread"] = (speeds[-1] - speeds[0]) / speeds[len(speeds) // 2] if speeds[0] else 0.0
        res[key] = med
    for dec in decoders:
        res[f"ratio_vs_{dec}"] = res["dali"]["clips_per_s"] / res[dec]["clips_per_s"]
        res[f"cpu_ratio_vs_{dec}"] = res[dec]["cpu_ms_per_clip"] / res["dali"]["cpu_ms_per_clip"]
    if "ceiling" in res:  # every loader as a fraction of the decode-only ceiling
        for key in runs:
            res[key]["of_ceiling"] = res[key]["clips_per_s"] / res["ceiling"]["clips_per_s"]
            # the same on CPU time per clip: steadier than clips/s on a shared, busy machine
            res[key]["of_ceiling_cpu"] = (res["ceiling"]["cpu_ms_per_clip"]
                                          / res[key]["cpu_ms_per_clip"])
    res["skipped"] = loader.skipped
    res["variants"] = {VARIANTS[v][0]: VARIANTS[v][1] for v in variants}
    return res


def _print_table(console, task, device, batch_size, clip_len, size, workers, decoders,
                 results) -> None:
    from rich.table import Table

    table = Table(title=f"loader throughput: task {task}, device {device}, batch {batch_size}, "
                        f"clip {clip_len}, size {size}, {workers} workers/threads")
    for col in ("dataset", "loader", "clips/s", "spread", "CPU ms/clip", "decoded/delivered",
                "decoded/window", "DALI × (clips/s)", "DALI × (CPU/clip)", "of ceiling",
                "of ceiling (CPU/clip)", "peak RSS MiB (main / workers)"):
        table.add_column(col, justify="right" if col not in ("dataset", "loader") else "left")

    def ratio(v):
        return "n/a" if v is None else f"{v:.2f}"

    for r in results:
        bound = (f" (≤ {r['bound']:.2f}: 1 + GOP {r['mean_gop']:.0f} / window "
                 f"{r['mean_window']:.0f})" if "bound" in r else "")
        dali = r["dali"]
        rows = [(r["dataset"], f"DALI ({device}) GOP ranges", dali, bound)]
        rows += [("", f"DALI ({device}) {label}", r[key], "")
                 for key, label in r.get("variants", {}).items()]
        rows += [("", f"DataLoader+{dec}" if dec != "ceiling" else "ceiling: PyAV decode only, "
                  "GOP ranges", r[dec], "") for dec in decoders]
        for i, (dataset, name, m, extra) in enumerate(rows):
            times = "" if i == 0 else ratio(dali["clips_per_s"] / m["clips_per_s"])
            cpu = "" if i == 0 else ratio(m["cpu_ms_per_clip"] / dali["cpu_ms_per_clip"])
            table.add_row(dataset, name, f"{m['clips_per_s']:.1f}", f"{m['spread']:.0%}",
                          f"{m['cpu_ms_per_clip']:.0f}", ratio(m["decoded_per_delivered"]),
                          ratio(m["decoded_per_window"]) + extra, times, cpu,
                          ratio(m.get("of_ceiling")), ratio(m.get("of_ceiling_cpu")),
                          _rss(m.get("peak_rss_mb")))
    console.print(table)


def _rss(m) -> str:
    if not m:
        return "n/a"
    w = m["workers"]
    return f"{m['main']:.0f}" + (f" / {max(w):.0f} max of {len(w)}" if w else "")


def make_console(file=None):
    """The benchmark's console: logged lines without rich's ``file.py:NNN`` suffix (it named
    this script's lines, not the user's); off a terminal (logs, pipes) a width that fits the table
    without wrapping its cells."""
    from rich.console import Console

    console = Console(file=file, log_path=False)
    return console if console.is_terminal else Console(file=file, log_path=False, width=160)


@click.command()
@click.option("--task", default="vcop", show_default=True,
              help="pretext task (SAMPLERS key), or a comma list: one table per task")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="manifest to use instead of the built-in datasets")
@click.option("--batches", default=16, show_default=True,
              help="batches per loader (running over epochs when a dataset is smaller); the "
                   "first (workers, or DALI's prefetch) are not timed")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--clip-len", default=16, show_default=True)
@click.option("--size", default=112, show_default=True)
@click.option("--workers", type=int, default=None, help="DataLoader workers and DALI threads "
              "[default: CPU cores]")
@click.option("--videos", default=24, show_default=True, help="UCF101-like videos to generate")
@click.option("--segment-frames", default=96, show_default=True,
              help="segment length of the prepared copy")
@click.option("--short-side", default=128, show_default=True)
@click.option("--datasets", default="synth,ucf-like,ucf-prepared", show_default=True,
              help="comma list of built-in datasets (ignored with --data)")
@click.option("--repeats", default=3, show_default=True,
              help="interleaved rounds per loader; the median is reported")
@click.option("--variants", default="whole-file", show_default=True,
              help="extra DALI rows, a comma list of: " + ", ".join(VARIANTS) + " (each is the "
                   "default loader with one change; '' for none)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def cli(task, device, data, batches, batch_size, clip_len, size, workers, videos, segment_frames,
        short_side, datasets, repeats, variants, json_out):
    """Clips/s of the DALI PretextLoader vs DataLoader + torchcodec / PyAV on the same plans."""
    console = make_console()
    workers = workers or os.cpu_count() or 1
    variants = tuple(v.strip() for v in variants.split(",") if v.strip())
    if set(variants) - set(VARIANTS):
        from dalivssl.errors import DalivsslError

        raise DalivsslError(f"unknown variant(s) {sorted(set(variants) - set(VARIANTS))}; "
                            f"valid: {', '.join(VARIANTS)}")
    missing = torchcodec_missing()
    decoders = ([] if missing else ["torchcodec"]) + ["pyav", "ceiling"]
    if missing:
        console.print(f"[yellow]{missing}: its row is skipped[/]")
    sets = []
    if data:
        sets.append(("data", Path(data)))
    else:
        names = [d.strip() for d in datasets.split(",") if d.strip()]
        unknown = set(names) - {"synth", "ucf-like", "ucf-prepared"}
        if unknown:
            from dalivssl.errors import DalivsslError

            raise DalivsslError(f"unknown dataset(s) {sorted(unknown)}; valid: synth, ucf-like, "
                                f"ucf-prepared")
        if "synth" in names:
            from dalivssl.data.synth import ensure_default_dataset

            with console.status("synthetic dataset …"):
                sets.append(("synth", ensure_default_dataset()["train"]))
        if "ucf-like" in names or "ucf-prepared" in names:
            with console.status("UCF101-like videos (generated once, cached) …") as st:
                ucf = ucf_like_dataset(videos, lambda i, n: st.update(f"UCF101-like video {i}/{n}"))
            if "ucf-like" in names:
                sets.append(("ucf-like", ucf))
            if "ucf-prepared" in names:
                with console.status("preparing (short side, segments; once, cached) …"):
                    sets.append(("ucf-prepared", prepared_dataset(ucf, segment_frames,
                                                                  short_side)))
    with console.status("packet indexes (once, cached) …"):
        sets = [(name, indexed_manifest(Path(path), name)) for name, path in sets]
    load0 = os.getloadavg()[0]
    tasks = [t.strip() for t in task.split(",") if t.strip()]
    all_results, cross = {}, {}
    for task in tasks:
        results = []
        for name, path in sets:
            results.append(bench_dataset(name, path, task, device, batches, batch_size, clip_len,
                                         size, workers, {}, decoders, console.log, repeats,
                                         variants))
        all_results[task] = results
        _print_table(console, task, device, batch_size, clip_len, size, workers, decoders,
                     results)
        by = {r["dataset"]: r for r in results}
        if "ucf-like" in by and "ucf-prepared" in by:
            for dec in decoders:  # what a user of the original videos would otherwise run
                key = f"{task}: dali_prepared_vs_{dec}_original"
                cross[key] = (by["ucf-prepared"]["dali"]["clips_per_s"]
                              / by["ucf-like"][dec]["clips_per_s"])
                console.print(f"{key}: {cross[key]:.2f}×")
    load1 = os.getloadavg()[0]
    note = (f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores "
            f"(a busy machine inflates every figure; compare ratios)")
    console.print(note)
    if "torchcodec" in decoders:
        console.print(f"torchcodec: seek_mode={TORCHCODEC_SEEK_MODE!r}, num_ffmpeg_threads="
                      f"{TORCHCODEC_THREADS}, one get_frames_at per plan")
    out = {"benchmark": "loader", "tasks": tasks, "device": device, "batch_size": batch_size,
           "clip_len": clip_len, "size": size, "workers": workers, "results": all_results,
           "cross": cross, "machine": note, "torchcodec": missing or "used",
           "torchcodec_settings": {"seek_mode": TORCHCODEC_SEEK_MODE,
                                   "num_ffmpeg_threads": TORCHCODEC_THREADS,
                                   "calls": "one VideoDecoder per video, one get_frames_at per plan"},
           "variants": list(variants)}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(out, indent=2, default=float, allow_nan=False))
        console.print(f"wrote {json_out}")
