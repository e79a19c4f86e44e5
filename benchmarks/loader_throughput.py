"""`dalivssl bench loader`: PretextLoader (one DALI pipeline) vs a PyTorch DataLoader decoding with
PyAV (+ torchcodec when importable), on the SAME plans and producing the SAME output tensor
(float B×K×C×T×H×W, the task's normalisation and augmentation).

Datasets (unless --data names a manifest):
  synth          the embedded synthetic dataset (short videos);
  ucf-like       UCF101-like long videos generated once into the cache (320×240, 150–300 frames,
                 VP9, encoder-default GOP);
  ucf-prepared   the same videos after `dalivssl data prepare`-style preparation (short side 128,
                 segments of --segment-frames frames, GOP 16).

Reported per loader: clips/s (median of --repeats interleaved rounds, with the spread), decoded
frames per delivered frame (DALI CPU: the decoder decodes from frame 0 to the highest requested
index, spec/dali.md §7, so it is max+1 per sample; PyAV: counted while decoding after a seek to
the keyframe before the first needed frame) and the ratio DALI / baseline. The machine note says
how busy the CPU was (load average) when it ran.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

UCF_VERSION = "ucf_like_v1"


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


# ------------------------------------------------------------------------------------------------
# baseline: torch DataLoader + PyAV (seek to the keyframe before the first needed frame)

def pyav_decode(path: str, indices) -> tuple:
    """uint8 (N,H,W,3) frames at ``indices`` and the number of frames decoded to get them."""
    import av
    import numpy as np

    want = np.asarray(indices, np.int64)
    needed = set(want.tolist())
    lo, hi = int(want.min()), int(want.max())
    got, decoded = {}, 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1  # one process per core already
        fps, tb = s.average_rate, s.time_base
        t0 = s.start_time or 0
        if lo > 0:
            c.seek(int(t0 + lo / (fps * tb)), stream=s, backward=True, any_frame=False)
        for frame in c.decode(s):
            idx = int(round((frame.pts - t0) * tb * fps))
            decoded += 1
            if idx in needed:
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= hi:
                break
    return np.stack([got[int(i)] for i in want]), decoded


def torch_augment(frames, params: dict, k: int, out_size, normalize: str):
    """The loader's augmentation of clip ``k`` in torch: uint8 (T,H,W,3) -> float (C,T,H,W)."""
    import math

    import torch
    import torchvision.transforms.v2.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T C H W uint8
    H0, W0 = x.shape[-2:]
    y0, x0, h, w = (float(v) for v in params.get("crop", [[0, 0, 1, 1]] * (k + 1))[k])
    x = F.resized_crop(x, int(round(y0 * H0)), int(round(x0 * W0)), max(1, int(round(h * H0))),
                       max(1, int(round(w * W0))), list(out_size), antialias=True)

    def p(key, default):
        return float(params[key][k]) if key in params else default

    if p("flip", 0):
        x = F.horizontal_flip(x)
    if p("angle", 0.0):
        x = F.rotate(x, p("angle", 0.0))
    if "brightness" in params:
        x = F.adjust_brightness(x, p("brightness", 1.0))
    if "contrast" in params:
        x = F.adjust_contrast(x, p("contrast", 1.0))
    if p("gray", 0):
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    elif "saturation" in params:
        x = F.adjust_saturation(x, p("saturation", 1.0))
    if p("hue", 0.0):
        x = F.adjust_hue(x, max(-0.5, min(0.5, p("hue", 0.0) / 360.0)))
    if p("blur_sigma", 0.0) > 0:
        s = p("blur_sigma", 0.0)
        ks = 2 * math.ceil(3 * s) + 1
        x = F.gaussian_blur(x, [ks, ks], [s, s])
    if p("solarize", 0):
        x = F.solarize(x, 128)
    x = x.permute(1, 0, 2, 3).float().div_(255.0)  # C T H W
    if normalize == "imagenet":
        from pipelines.types import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
        x = (x - mean) / std
    return x


class PlanDataset:
    """torch Dataset over fixed (path, plan) items: decode with ``decoder`` then augment."""

    def __init__(self, items, out_size, normalize, decoder="pyav"):
        self.items, self.out_size = items, out_size
        self.normalize, self.decoder = normalize, decoder

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch

        path, plan = self.items[i]
        idx = plan.all_frames()
        frames, decoded = (pyav_decode if self.decoder == "pyav" else torchcodec_decode)(path, idx)
        K, T = plan.frames.shape
        clips = torch.stack([torch_augment(frames[k * T:(k + 1) * T], plan.params, k,
                                           self.out_size, self.normalize) for k in range(K)])
        return clips, torch.tensor(plan.label), torch.tensor(decoded)


def torchcodec_decode(path: str, indices):
    import numpy as np
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(path, seek_mode="approximate")
    batch = dec.get_frames_at(indices=[int(i) for i in indices])
    return batch.data.permute(0, 2, 3, 1).numpy(), np.nan  # decoded count is not exposed


# ------------------------------------------------------------------------------------------------
# measurement

def _schedule(loader, batches: int) -> list[tuple[int, int]]:
    """(epoch, batch) pairs of the first ``batches`` batches, running over epochs as needed."""
    n = len(loader)
    return [(i // n, i % n) for i in range(batches)]


def _time_dali(loader, batches: int) -> dict:
    from dalivssl.devices import sync

    sched = _schedule(loader, batches)
    n_clips, done = 0, 0
    t0 = t_last = time.perf_counter()
    for epoch in sorted({e for e, _ in sched}):
        loader.set_epoch(epoch)
        for batch in loader:
            n_clips += batch.clips.shape[0] * batch.clips.shape[1]
            done += 1
            sync(batch.clips.device.type)  # GPU work queued for this batch is done (G8)
            t_last = time.perf_counter()  # not counting the prefetched batch nobody asked for
            if done == batches:
                break
    dt = t_last - t0
    return {"seconds": dt, "clips": n_clips, "clips_per_s": n_clips / dt}


def _time_torch(items, batch_size, workers, out_size, normalize, decoder) -> dict:
    import torch

    ds = PlanDataset(items, out_size, normalize, decoder)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                     shuffle=False, drop_last=True)
    n_clips, decoded = 0, 0.0
    t0 = time.perf_counter()
    for clips, _, dec in dl:
        n_clips += clips.shape[0] * clips.shape[1]
        decoded += float(dec.sum())
    dt = time.perf_counter() - t0
    return {"seconds": dt, "clips": n_clips, "clips_per_s": n_clips / dt, "decoded": decoded}


def bench_dataset(name, manifest_path, task, device, batches, batch_size, clip_len, size, workers,
                  task_options, decoders, log, repeats: int = 3) -> dict:
    from dalivssl.data.manifest import load_manifest
    from pipelines.loader import PretextLoader

    man = load_manifest(manifest_path)
    loader = PretextLoader(task, man, batch_size=batch_size, device=device, clip_len=clip_len,
                           size=size, seed=0, num_threads=workers, **task_options)
    # warm-up outside the timing: pipeline build + one batch of an epoch the timing never uses
    t0 = time.perf_counter()
    loader.batch_at(10_000, 0)
    build_s = time.perf_counter() - t0
    items, delivered, dali_decoded = [], 0, 0
    for epoch, b in _schedule(loader, batches):
        for i, plan in loader.batch_plans(epoch, b):
            items.append((str(man.abspath(man.records[i])), plan))
            f = plan.all_frames()
            delivered += f.size
            dali_decoded += int(f.max()) + 1  # decodes from frame 0 (spec/dali.md §7)
    out_size = tuple(loader.sampler.out_size)
    res = {"dataset": name, "manifest": str(manifest_path), "videos": len(man.records),
           "batches": batches, "delivered_frames": delivered, "warmup_s": build_s}
    # interleave the loaders and keep the median of ``repeats`` rounds: the machine is shared,
    # so load drifts during a run; alternating exposes every loader to the same drift
    runs: dict[str, list] = {"dali": [], **{dec: [] for dec in decoders}}
    for rnd in range(repeats):
        log(f"[{name}] round {rnd + 1}/{repeats}: DALI ({device}) …")
        runs["dali"].append(_time_dali(loader, batches))
        for dec in decoders:
            log(f"[{name}] round {rnd + 1}/{repeats}: DataLoader + {dec} ({workers} workers) …")
            runs[dec].append(_time_torch(items, batch_size, workers, out_size, loader.normalize,
                                         dec))
    for key, rs in runs.items():
        speeds = sorted(r["clips_per_s"] for r in rs)
        med = dict(sorted(rs, key=lambda r: r["clips_per_s"])[len(rs) // 2])
        med["rounds_clips_per_s"] = [r["clips_per_s"] for r in rs]
        med["spread"] = (speeds[-1] - speeds[0]) / speeds[len(speeds) // 2]
        if key == "dali":
            med["decoded_per_delivered"] = dali_decoded / delivered
        else:
            med["decoded_per_delivered"] = med.pop("decoded") / delivered
        res[key] = med
    for dec in decoders:
        res[f"ratio_vs_{dec}"] = res["dali"]["clips_per_s"] / res[dec]["clips_per_s"]
    res["skipped"] = loader.skipped
    return res


@click.command()
@click.option("--task", default="vcop", show_default=True, help="pretext task (SAMPLERS key)")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="manifest to use instead of the built-in datasets")
@click.option("--batches", default=10, show_default=True,
              help="timed batches per loader (running over epochs when a dataset is smaller)")
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
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def cli(task, device, data, batches, batch_size, clip_len, size, workers, videos, segment_frames,
        short_side, datasets, repeats, json_out):
    """Clips/s of the DALI PretextLoader vs DataLoader + PyAV on the same plans."""
    import importlib.util

    from rich.console import Console
    from rich.table import Table

    console = Console()
    workers = workers or os.cpu_count() or 1
    decoders = ["pyav"] + (["torchcodec"] if importlib.util.find_spec("torchcodec") else [])
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
    load0 = os.getloadavg()[0]
    results = []
    for name, path in sets:
        results.append(bench_dataset(name, path, task, device, batches, batch_size, clip_len, size,
                                     workers, {}, decoders, console.log, repeats))
    load1 = os.getloadavg()[0]

    table = Table(title=f"loader throughput: task {task}, device {device}, batch {batch_size}, "
                        f"clip {clip_len}, size {size}, {workers} workers/threads")
    for col in ("dataset", "loader", "clips/s", "spread", "decoded/delivered", "DALI ×"):
        table.add_column(col, justify="right" if col not in ("dataset", "loader") else "left")
    for r in results:
        table.add_row(r["dataset"], f"DALI ({device})", f"{r['dali']['clips_per_s']:.1f}",
                      f"{r['dali']['spread']:.0%}", f"{r['dali']['decoded_per_delivered']:.2f}", "")
        for dec in decoders:
            table.add_row("", f"DataLoader+{dec}", f"{r[dec]['clips_per_s']:.1f}",
                          f"{r[dec]['spread']:.0%}", f"{r[dec]['decoded_per_delivered']:.2f}",
                          f"{r[f'ratio_vs_{dec}']:.2f}")
    by = {r["dataset"]: r for r in results}
    cross = {}
    if "ucf-like" in by and "ucf-prepared" in by:
        for dec in decoders:  # what a user of the original videos would otherwise run
            cross[f"dali_prepared_vs_{dec}_original"] = (
                by["ucf-prepared"]["dali"]["clips_per_s"] / by["ucf-like"][dec]["clips_per_s"])
    console.print(table)
    for k, v in cross.items():
        console.print(f"{k}: {v:.2f}×")
    note = (f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores "
            f"(a busy machine inflates every figure; compare ratios)")
    console.print(note)
    out = {"task": task, "device": device, "batch_size": batch_size, "clip_len": clip_len,
           "size": size, "workers": workers, "results": results, "cross": cross, "machine": note}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(out, indent=2, default=float))
        console.print(f"wrote {json_out}")
