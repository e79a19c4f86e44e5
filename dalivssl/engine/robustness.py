"""Noise-robustness sweep: clean and perturbed video accuracy per (noise, severity), and R_s.

Kumar et al. (arXiv 2306.06010) measure robustness as the relative drop
``R_s = (A_c − A_p) / A_c`` (lower is better; = 1 − γʳ of Schiappa et al., arXiv 2207.01398) for
gaussian, shot, impulse and speckle noise at severities 1..5 (Kumar et al. 2306.06010, robustness analysis). A_p is computed
per (noise, severity) cell and then averaged without weights: pooling all noisy videos would weight
the cells by their video counts.

Cost model: each test clip is decoded ONCE per group of models that share (clip_len, size); every
noise cell is drawn from that uint8 batch by one DALI pipeline (:class:`pipelines.noise.NoiseRunner`,
one output per cell, noise at model resolution before normalisation, or with ``noise_at
'decoded'`` on the decoded centre crop before the resize, in the same graph); the cells are then
stacked into large forward batches. All models of a group see the same noisy pixels. With
``videos_per_cell`` every video is still forwarded in every cell; a cell's accuracy is taken over
its subset (``subsets/<cell>``).

HDF5 layout (one group per model, ``robustness/<model>``):
  ``indices`` int64 V, ``targets`` int64 V          the test videos (manifest positions, labels)
  ``cells/<cell>`` int64 V                          video-level predictions of a cell; attrs
                                                    accuracy, correct, videos. <cell> is
                                                    ``clean`` or ``<noise>_<severity>``.
  ``accuracy`` float (n_noise, n_sev)               A_p; attrs noises, severities
  ``rs`` float (n_noise, n_sev)                     R_s
  ``clean_acc``, ``mean_acc``, ``mean_rs``          scalars (means unweighted over the cells)
  ``rs_by_noise`` (n_noise), ``rs_by_severity`` (n_sev)
  ``noises`` str list, ``severities`` int (n_sev), ``settings`` JSON text (constants, rounding,
  seed, clips, decoder, noise_at, decoded_size, videos_per_cell, checkpoint): a resumed sweep
  must use the same settings.
  ``subsets/<cell>`` int8 V                         the cell's videos (with videos_per_cell)
Cells already present are skipped (resumable per cell).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from dalivssl.devices import autocast, sync
from dalivssl.errors import DalivsslError

CLEAN = ("clean", 0)
GROUP = "robustness"


def cell_name(cell) -> str:
    return "clean" if cell[1] == 0 else f"{cell[0]}_{int(cell[1])}"


def sweep_cells(noises: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    """The clean cell (severity 0) followed by every (noise, severity)."""
    return [CLEAN] + [(n, int(s)) for n in noises for s in severities]


@dataclass(frozen=True)
class SweepSettings:
    """What a cell's numbers depend on besides the model (checked when resuming)."""

    noises: tuple[str, ...] = ("gaussian", "shot", "impulse", "speckle")
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    constants: str = "imagenet-c"
    rounding: str = "floor"
    clips_per_video: int = 5
    seed: int = 0
    decoder: str = "dali"
    data_hash: str = ""   # content hash of the test manifest (dalivssl.record.manifest_hash)
    device: str = "cpu"   # decoding + forward device: GPU and CPU pixels differ slightly
    # 'model': noise at model resolution; 'decoded': on the decoded frames (the centre crop at
    # the source's resolution, ``decoded_size`` px) before the resize, as the paper's reference
    # code (pipelines.noise.NOISE_AT)
    noise_at: str = "model"
    decoded_size: int = 0  # side of the decoded crop (decoded_side); 0 with noise_at 'model'
    # videos per noise cell: 0 = every test video; N = a seeded class-balanced subset of N per
    # cell; 'paper' = the paper's offline sets (gaussian: all; others 400 at severity 1, 550
    # above); the clean cell always uses every video
    videos_per_cell: int | str = 0

    def key(self) -> dict:
        """The settings a stored cell must share (the cell lists may grow between runs)."""
        d = asdict(self)
        d.pop("noises"), d.pop("severities")
        return d

    def check(self) -> "SweepSettings":
        from pipelines.noise import NOISE_AT

        if self.noise_at not in NOISE_AT:
            raise DalivsslError(f"noise_at must be one of {', '.join(NOISE_AT)}, got "
                                f"{self.noise_at!r}")
        if self.noise_at == "decoded" and self.decoded_size < 1:
            raise DalivsslError("noise_at 'decoded' needs decoded_size >= 1 (decoded_side)")
        v = self.videos_per_cell
        if not (v == "paper" or (isinstance(v, int) and v >= 0)):
            raise DalivsslError(f"videos_per_cell must be 'paper' or an integer >= 0, got {v!r}")
        return self


# the paper's offline noisy sets (Kumar et al. supp.: "Gaussian on all 3,783 videos, the others
# on about 400 at severity 1 and about 550 at the other severities")
PAPER_CELL_VIDEOS = {1: 400, "other": 550}
# settings added after sweeps were first stored: their value in an older file
_OLD_DEFAULTS = {"noise_at": "model", "decoded_size": 0, "videos_per_cell": 0}


def decoded_side(manifest, crop: float = 112.0 / 128.0) -> int:
    """Side in source pixels of the evaluation centre crop (the short side resized to
    size·128/112, then size × size: ``crop`` = 112/128 of the short side) of the manifest's most
    common frame size; noise_at 'decoded' decodes clips at this size (no resize)."""
    from collections import Counter

    sides = [min(int(getattr(r, "width", 0) or 0), int(getattr(r, "height", 0) or 0))
             for r in manifest.records]
    shorts = Counter(v for v in sides if v > 0)
    if not shorts:
        raise DalivsslError("noise_at 'decoded': the manifest records no frame sizes "
                            "(width/height)")
    return max(1, int(round(shorts.most_common(1)[0][0] * crop)))


def cell_videos(cell, videos_per_cell) -> int:
    """Videos of ``cell`` under ``videos_per_cell`` (0 = all)."""
    if cell == CLEAN or not videos_per_cell:
        return 0
    if videos_per_cell == "paper":
        return 0 if cell[0] == "gaussian" else PAPER_CELL_VIDEOS.get(int(cell[1]),
                                                                     PAPER_CELL_VIDEOS["other"])
    return int(videos_per_cell)


def cell_subset(targets: np.ndarray, n: int, seed: int, cell) -> np.ndarray:
    """Bool mask (V,) of a seeded, class-balanced subset of ``n`` of the videos with ``targets``
    (per class ⌊n/C⌋ or one more, the extras to the classes first in a seeded order; all videos
    when n ≥ V). The seed is the cell's (pipelines.noise.cell_seed): each cell its own subset."""
    from pipelines.noise import cell_seed

    v = len(targets)
    if n <= 0 or n >= v:
        return np.ones(v, bool)
    rng = np.random.default_rng(cell_seed(seed, cell[0], cell[1]))
    classes = np.unique(targets)
    order = {c: rng.permutation(np.flatnonzero(targets == c)) for c in classes}
    want = {c: 0 for c in classes}
    left, pool = n, list(rng.permutation(classes))
    while left > 0:  # round-robin over classes that still have videos
        pool = [c for c in pool if want[c] < len(order[c])]
        for c in pool[:left]:
            want[c] += 1
        left -= min(left, len(pool))
    mask = np.zeros(v, bool)
    for c in classes:
        mask[order[c][:want[c]]] = True
    return mask


@dataclass
class SweepModel:
    """A classifier under test. model: B×C×T×H×W float → B×num_classes logits."""

    name: str
    model: torch.nn.Module
    normalize: str
    clip_len: int
    size: int
    num_classes: int
    source: str = ""
    checkpoint_hash: str = ""
    record: object = None


@dataclass
class CellTiming:
    """Seconds spent per stage (the sweep-cost benchmark reads these)."""

    decode: float = 0.0
    noise: float = 0.0
    forward: float = 0.0
    batches: int = 0
    clips: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.decode + self.noise + self.forward


# ----------------------------------------------------------------------------------- sources
def dali_source(manifest, clips_per_video: int, clip_len: int, size: int, batch_size: int,
                device: str = "cpu", seed: int = 0, num_threads: int = 2):
    """The DALI evaluation loader in raw mode: Batch.clips uint8 B×K×T×H×W×C (contract C4)."""
    from dalivssl.engine.features import eval_loader

    return eval_loader(manifest, clips_per_video, batch_size, clip_len, size, device=device,
                       seed=seed, num_threads=num_threads, raw=True)


class PyAVSource:
    """Reference decode path (PyAV: any codec PyAV knows, e.g. H.264 on a CPU-only machine).

    Clips and crop boxes come from the same ``eval`` sampler as the DALI loader (N evenly spaced
    clips, centre crop); frames are decoded with PyAV, cropped and resized (bilinear, antialias)
    in torch. Yields ``pipelines.types.Batch`` with uint8 clips B×K×T×H×W×C like the raw DALI
    loader. Pixel values differ from DALI's decoder and resize (DALI decoder documentation), so do not mix
    the two paths within one study. Unusable videos are skipped and counted in ``skipped``.
    """

    def __init__(self, manifest, clips_per_video: int, clip_len: int, size: int, batch_size: int,
                 seed: int = 0):
        from pipelines.samplers import SAMPLERS

        self.manifest, self.size, self.batch_size = manifest, int(size), int(batch_size)
        self.sampler = SAMPLERS["eval"](clip_len=clip_len, size=size, augment=False,
                                        num_clips=int(clips_per_video))
        self.records = list(manifest.records)
        self.seed = int(seed)
        self.skipped: dict[str, int] = {}

    def __len__(self) -> int:
        return -(-len(self.records) // self.batch_size)

    def _clip(self, i: int, rec) -> np.ndarray:
        from dalivssl.data.videoio import decode_frames
        from pipelines.types import sample_rng

        plan = self.sampler.plan(rec, sample_rng(self.seed, 0, i))
        K, T = plan.frames.shape
        frames = torch.from_numpy(decode_frames(self.manifest.abspath(rec), plan.frames.reshape(-1)))
        h, w = frames.shape[1:3]
        x = frames.reshape(K, T, h, w, -1)
        out = []
        for k in range(K):
            y0, x0, bh, bw = np.asarray(plan.params["crop"][k], np.float64)
            r0, c0 = int(round(y0 * h)), int(round(x0 * w))
            r1, c1 = max(r0 + 1, int(round((y0 + bh) * h))), max(c0 + 1, int(round((x0 + bw) * w)))
            clip = x[k, :, r0:r1, c0:c1].permute(0, 3, 1, 2).float()
            clip = torch.nn.functional.interpolate(clip, size=(self.size, self.size),
                                                   mode="bilinear", align_corners=False,
                                                   antialias=True)
            out.append(clip.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
        return torch.stack(out).numpy()

    def __iter__(self):
        from pipelines.types import Batch

        for lo in range(0, len(self.records), self.batch_size):
            clips, tg, ix = [], [], []
            for i in range(lo, min(lo + self.batch_size, len(self.records))):
                rec = self.records[i]
                try:
                    clips.append(self._clip(i, rec))
                except Exception as exc:  # unusable video: counted, like the DALI loader does
                    reason = type(exc).__name__
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
                    continue
                tg.append(rec.label)
                ix.append(i)
            if not clips:
                continue
            yield Batch(clips=torch.from_numpy(np.stack(clips)), labels=torch.tensor(tg),
                        targets=torch.tensor(tg), indices=torch.tensor(ix))


# ----------------------------------------------------------------------------------- the sweep
def _pending(results, model: SweepModel, cells) -> list:
    if results is None:
        return list(cells)
    group = f"{GROUP}/{model.name}"
    return [c for c in cells if not results.has(group, f"cells/{cell_name(c)}")]


def _check_settings(results, model: SweepModel, settings: SweepSettings) -> None:
    group = f"{GROUP}/{model.name}"
    # keyed on content: the checkpoint's bytes and the data's records, not their paths
    want = {**settings.key(), "checkpoint_hash": model.checkpoint_hash}
    if results.has(group, "settings"):
        have = {**_OLD_DEFAULTS, **json.loads(results.read(group, "settings"))}
        diff = sorted(k for k in want if have.get(k) != want[k])
        if diff:
            raise DalivsslError(
                f"{results.path}: model {model.name!r} was swept with other settings or data "
                f"({'; '.join(f'{k}: {have.get(k)!r} → {want[k]!r}' for k in diff)}); use "
                "another --out, --overwrite, or the same checkpoint, data and settings to resume")
    else:
        results.write(group, "settings", json.dumps(want))


def evaluate_cells(models: Sequence[SweepModel], batches: Iterable, cells_per_model: dict,
                   settings: SweepSettings, device: str = "cpu", forward_clips: int | None = None,
                   noise_device: str | None = None, on_batch: Callable[[int], None] | None = None,
                   timing: CellTiming | None = None) -> dict:
    """One pass over ``batches`` (uint8 B×K×T×H×W×C clips): every model × its pending cells.

    Returns {model name: {cell: (indices V, targets V, predictions V)}} at video level: the logits
    of a video's K clips are averaged (VCOP / Kumar et al. protocol). Videos repeated by a padded
    loader count once. ``forward_clips``: clips per forward call (cells are stacked to fill it);
    None: 64 on a GPU, one cell per call on a CPU (see :func:`cells_per_call`).
    """
    from pipelines.loader import normalize_clips
    from pipelines.noise import NoiseRunner

    timing = timing if timing is not None else CellTiming()
    tdev = torch.device("cuda" if device == "gpu" else "cpu")
    noise_device = noise_device or device
    noise_cells = sorted({c for cs in cells_per_model.values() for c in cs if c != CLEAN},
                         key=lambda c: (c[0], c[1]))
    decoded = settings.noise_at == "decoded"
    if decoded and len({(m.clip_len, m.size) for m in models}) > 1:
        raise DalivsslError("noise_at 'decoded': models of one pass must share clip_len and size")
    out_size = (models[0].size, models[0].size) if decoded else None
    runner = None
    logits = {m.name: {c: {} for c in cells_per_model[m.name]} for m in models}
    targets: dict[int, int] = {}
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        raw = batch.clips
        if raw.dtype != torch.uint8 or raw.dim() != 6:
            raise DalivsslError(f"robustness needs raw uint8 clips B×K×T×H×W×C, got "
                                f"{raw.dtype} {tuple(raw.shape)}")
        B, K, T, H, W, C = raw.shape
        idx = batch.indices.cpu().numpy().astype(np.int64)
        for i, t in zip(idx, batch.targets.cpu().numpy()):
            targets.setdefault(int(i), int(t))
        sync(tdev)  # GPU work is asynchronous: time it only once it is done (G8)
        t1 = time.perf_counter()
        timing.decode += t1 - t0
        # every cell of this batch as uint8 B×K×T×H×W×C
        views = {CLEAN: raw}
        if noise_cells or decoded:
            if runner is None or runner.max_batch_size < B:
                runner = NoiseRunner(noise_cells, max(B, getattr(batches, "batch_size", B)),
                                     settings.constants, settings.rounding, settings.seed,
                                     device=noise_device, out_size=out_size)
            flat = raw.reshape(B, K * T, H, W, C)
            flat = flat if noise_device == "gpu" else flat.cpu()
            oh, ow = out_size or (H, W)
            for cell, tl in zip(runner.outputs, runner.run(flat)):
                views[cell] = _to_torch(tl, noise_device).reshape(B, K, T, oh, ow, C)
        sync(tdev)
        t2 = time.perf_counter()
        timing.noise += t2 - t1
        for m in models:
            cells = cells_per_model[m.name]
            per = cells_per_call(forward_clips, B * K, device)
            for j in range(0, len(cells), per):
                chunk = cells[j:j + per]
                x = torch.cat([views[c].to(tdev, non_blocking=True) for c in chunk])
                x = normalize_clips(x, m.normalize).flatten(0, 1)  # (n·B·K, C, T, H, W)
                with torch.inference_mode(), autocast(tdev):  # bf16 on GPU (G8)
                    y = m.model(x).float().reshape(len(chunk), B, K, -1).mean(2).cpu().numpy()
                for c, yc in zip(chunk, y):
                    store = logits[m.name][c]
                    for i, row in zip(idx, yc):
                        store.setdefault(int(i), row)
        timing.forward += time.perf_counter() - t2
        timing.batches += 1
        timing.clips += B * K
        if on_batch is not None:
            on_batch(B)
    if not targets:
        raise DalivsslError("no test videos could be evaluated (empty manifest or every video "
                            "skipped)")
    order = np.array(sorted(targets), np.int64)
    tg = np.array([targets[int(i)] for i in order], np.int64)
    out = {}
    for m in models:
        out[m.name] = {}
        for c, store in logits[m.name].items():
            pred = np.array([int(np.argmax(store[int(i)])) for i in order], np.int64)
            out[m.name][c] = (order, tg, pred)
    return out


def cells_per_call(forward_clips: int | None, clips: int, device: str) -> int:
    """Noise cells stacked into one forward call of ``clips`` clips each. None picks per device:
    fill 64 clips on a GPU; one cell on a CPU, where bigger batches cost more per clip (measured,
    SqueezeNet 16×112² on 2 cores: 83–89 ms/clip at 60 clips vs 76–84 at 20)."""
    if forward_clips is None:
        return 1 if device != "gpu" else max(1, 64 // clips)
    return max(1, int(forward_clips) // clips)


def _to_torch(tl, device: str):
    """A DALI TensorList (uniform shape) → torch tensor, zero-copy through DLPack."""
    t = tl.as_tensor()
    return torch.from_dlpack(t) if device == "gpu" else torch.from_numpy(np.array(t))


def write_cells(results, model: SweepModel, cells_out: dict,
                settings: SweepSettings | None = None) -> None:
    """Store each cell's predictions (every video); its accuracy is over the cell's subset
    (``settings.videos_per_cell``, mask stored as ``subsets/<cell>``)."""
    group = f"{GROUP}/{model.name}"
    for cell, (idx, tg, pred) in cells_out.items():
        if results.has(group, "indices"):
            old = np.asarray(results.read(group, "indices"))
            if not np.array_equal(old, idx):
                raise DalivsslError(f"{results.path}: model {model.name!r}: the test videos "
                                    f"differ from the stored ones; use another --out")
        else:
            results.write(group, "indices", idx)
            results.write(group, "targets", tg)
        n = cell_videos(cell, settings.videos_per_cell) if settings is not None else 0
        mask = cell_subset(tg, n, settings.seed if settings is not None else 0, cell)
        if n:
            results.write(group, f"subsets/{cell_name(cell)}", mask.astype(np.int8))
        correct = int((pred == tg)[mask].sum())
        results.write(group, f"cells/{cell_name(cell)}", pred, accuracy=correct / int(mask.sum()),
                      correct=correct, videos=int(mask.sum()), noise=cell[0],
                      severity=int(cell[1]))


def summarize(results, model: SweepModel, settings: SweepSettings) -> dict:
    """From the stored cells: A_c, A_p[noise, sev], R_s[noise, sev] and the unweighted means."""
    group = f"{GROUP}/{model.name}"
    acc_of = lambda c: float(results.attrs(group, f"cells/{cell_name(c)}")["accuracy"])  # noqa
    clean = acc_of(CLEAN)
    noises, sevs = list(settings.noises), list(settings.severities)
    acc = np.array([[acc_of((n, s)) for s in sevs] for n in noises], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = (clean - acc) / clean if clean > 0 else np.full_like(acc, np.nan)
    summary = {"model": model.name, "clean_acc": clean, "accuracy": acc, "rs": rs,
               "mean_acc": float(acc.mean()), "mean_rs": float(rs.mean()),
               "rs_by_noise": rs.mean(axis=1), "rs_by_severity": rs.mean(axis=0),
               "noises": noises, "severities": sevs}
    attrs = {"noises": noises, "severities": sevs, "constants": settings.constants}
    results.write(group, "accuracy", acc, **attrs)
    results.write(group, "rs", rs, **attrs)
    results.write(group, "clean_acc", clean)
    results.write(group, "mean_acc", summary["mean_acc"])
    results.write(group, "mean_rs", summary["mean_rs"])
    results.write(group, "rs_by_noise", summary["rs_by_noise"], noises=noises)
    results.write(group, "rs_by_severity", summary["rs_by_severity"], severities=sevs)
    results.write(group, "noises", noises)
    results.write(group, "severities", np.array(sevs, np.int64))
    return summary


def run_sweep(models: Sequence[SweepModel], make_source: Callable[[int, int], Iterable],
              results, settings: SweepSettings, device: str = "cpu",
              forward_clips: int | None = None,
              progress: Callable | None = None, timing: CellTiming | None = None) -> list[dict]:
    """Sweep every model; returns one summary dict per model (see :func:`summarize`).

    make_source(clip_len, size) → an iterable of raw batches (one decode pass). Models sharing
    (clip_len, size) share the pass. Cells already in ``results`` are skipped.
    progress(total_videos_or_None, description) → callable(n) advancing a bar, or None.
    """
    cells = sweep_cells(settings.noises, settings.severities)
    settings.check()
    for m in models:
        _check_settings(results, m, settings)
    groups: dict[tuple[int, int], list[SweepModel]] = {}
    for m in models:
        groups.setdefault((m.clip_len, m.size), []).append(m)
    for (clip_len, size), ms in groups.items():
        pending = {m.name: _pending(results, m, cells) for m in ms}
        todo = [m for m in ms if pending[m.name]]
        if not todo:
            continue
        # noise_at 'decoded': clips at the decoded crop's own size, resized after the noise
        source = make_source(clip_len, settings.decoded_size if settings.noise_at == "decoded"
                             else size)
        n_cells = len({c for m in todo for c in pending[m.name]})
        on_batch = None
        if progress is not None:
            on_batch = progress(len(getattr(source, "records", [])) or None,
                                f"{', '.join(m.name for m in todo)}: {n_cells} cells, "
                                f"T={clip_len} {size}px")
        out = evaluate_cells(todo, source, {m.name: pending[m.name] for m in todo}, settings,
                             device=device, forward_clips=forward_clips, on_batch=on_batch,
                             timing=timing)
        for m in todo:
            write_cells(results, m, out[m.name], settings)
    return [summarize(results, m, settings) for m in models]
