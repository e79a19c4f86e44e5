"""Video-level outputs of a model over an evaluation loader (shared by finetune, retrieval, …).

The evaluation protocol of the benchmark (Kumar et al., arXiv 2306.06010; VCOP, Xu et al. CVPR
2019, ``retrieve_clips.py``) scores a video from N evenly spaced clips: the model runs on every clip
and the N outputs (features or logits) are averaged. :func:`extract` does exactly that for any
iterable of :class:`pipelines.types.Batch` whose ``clips`` are B×K×C×T×H×W (K = N clips of one
video per sample), so it works on the DALI loader and on hand-made batches alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from dalivssl.errors import DalivsslError

#: clip settings that change what a feature means (they go into cache keys)
CLIP_KEYS = ("num_clips", "clip_len", "size", "normalize")


@dataclass
class VideoOutputs:
    """Per-video outputs, ordered by manifest position.

    video: float32 V×D, the mean over the K clips of each video.
    clips: float32 V×K×D, the per-clip outputs (None when not kept).
    targets: int64 V, manifest labels (-1 = unlabelled).
    indices: int64 V, positions in the manifest (ascending, unique).
    per_rank: videos each rank evaluated when merged from torchrun ranks (:func:`merge_outputs`,
    padded repeats included); () in one process.
    """

    video: np.ndarray
    clips: np.ndarray | None
    targets: np.ndarray
    indices: np.ndarray
    per_rank: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.video.shape[0])


def extract(fn: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device="cpu",
            keep_clips: bool = True, on_batch: Callable[[int], None] | None = None,
            gather: bool = False) -> VideoOutputs:
    """Run ``fn`` (N×C×T×H×W → N×D) on every clip of every batch and average per video.

    A video that appears twice (sharded loaders pad the last batch with repeats) is kept once.
    ``on_batch(batch_size)`` is called after each batch (progress bars). ``gather``: every rank
    of a torchrun group calls it on its shard and gets all the ranks' videos
    (:func:`gather_outputs`); a collective, so every rank must call it.
    """
    outs: dict[int, np.ndarray] = {}
    targets: dict[int, int] = {}
    from dalivssl.devices import autocast

    with torch.no_grad(), autocast(device):  # bf16 on GPU (G8); logits/features cast to fp32
        for batch in batches:
            x = batch.clips.to(device, non_blocking=True).float()
            if x.dim() != 6:
                raise DalivsslError(f"expected clips B×K×C×T×H×W, got shape {tuple(x.shape)}")
            b, k = x.shape[:2]
            y = fn(x.flatten(0, 1))
            y = y.reshape(b, k, -1).float().cpu().numpy()
            idx = _as_numpy(batch.indices).astype(np.int64).reshape(-1)
            tgt = _as_numpy(batch.targets).astype(np.int64).reshape(-1)
            for i in range(b):
                key = int(idx[i])
                if key not in outs:
                    outs[key] = y[i]
                    targets[key] = int(tgt[i])
            if on_batch is not None:
                on_batch(b)
    if not outs:
        raise DalivsslError("no videos to evaluate (empty loader: every video skipped or "
                            "the manifest split is empty)")
    order = sorted(outs)
    clips = np.stack([outs[i] for i in order]).astype(np.float32)
    out = VideoOutputs(video=clips.mean(axis=1), clips=clips if keep_clips else None,
                       targets=np.array([targets[i] for i in order], np.int64),
                       indices=np.array(order, np.int64))
    return gather_outputs(out) if gather else out


def merge_outputs(parts: Sequence[VideoOutputs]) -> VideoOutputs:
    """The ranks' outputs as one process would give them: concatenated, each video once (a
    video a padded shard repeats keeps its first rank's rows), sorted by manifest index.
    ``per_rank``: the videos of each part."""
    idx = np.concatenate([p.indices for p in parts])
    _, first = np.unique(idx, return_index=True)  # ascending unique indices, first occurrence
    cat = lambda key: np.concatenate([getattr(p, key) for p in parts])[first]  # noqa: E731
    keep_clips = all(p.clips is not None for p in parts)
    return VideoOutputs(video=cat("video"), clips=cat("clips") if keep_clips else None,
                        targets=cat("targets"), indices=idx[first],
                        per_rank=tuple(len(p) for p in parts))


def gather_outputs(out: VideoOutputs) -> VideoOutputs:
    """Under torchrun: every rank's ``out`` (its shard of the videos) merged on every rank
    (:func:`merge_outputs`); in one process ``out`` itself. A collective (``all_gather_object``
    of the numpy arrays: gloo and NCCL alike): every rank calls it."""
    from dalivssl.engine.distributed import all_gather_object

    parts = all_gather_object(out)
    return out if len(parts) == 1 else merge_outputs(parts)


def gather_skipped(loader) -> dict[str, int]:
    """{reason: videos} an evaluation loader skipped, over all torchrun ranks (a video two
    ranks skipped counted once); in one process the loader's own ``skipped``. A collective
    under torchrun: every rank calls it."""
    from dalivssl.engine.distributed import all_gather_object

    local = dict(getattr(loader, "skipped", {}) or {})
    state = getattr(loader, "state_dict", None)
    bad = dict(state().get("bad", {})) if callable(state) else {}
    parts = all_gather_object(bad)
    return local if len(parts) == 1 else merge_skipped(parts)


def merge_skipped(parts: Sequence[dict]) -> dict[str, int]:
    """[{manifest index: reason}] per rank -> {reason: distinct videos}."""
    bad: dict = {}
    for part in parts:
        bad.update({int(k): v for k, v in part.items()})
    out: dict[str, int] = {}
    for reason in bad.values():
        out[reason] = out.get(reason, 0) + 1
    return out


def shard_line(per_rank: Sequence[int], videos: int, what: str = "test videos") -> str:
    """One line on a sharded evaluation: what each rank evaluated and the distinct total."""
    return (f"evaluation sharded over {len(per_rank)} ranks: "
            f"{' + '.join(map(str, per_rank))} {what} evaluated ({videos} distinct)")


def backbone_features(backbone, batches: Iterable, device="cpu", keep_clips: bool = False,
                      on_batch=None) -> VideoOutputs:
    """Pooled backbone features (``forward_features``, B×D) averaged over each video's clips.

    The backbone runs in eval mode (BN running statistics, no dropout); its mode is restored.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        return extract(backbone.forward_features, batches, device, keep_clips, on_batch)
    finally:
        backbone.train(was_training)


def model_logits(model, batches: Iterable, device="cpu", on_batch=None,
                 gather: bool = False) -> VideoOutputs:
    """Per-clip logits of a classifier (``model(x)`` B×C) with their per-video mean.
    ``gather`` (:func:`extract`'s): every rank first takes rank 0's weights and BN statistics
    (``engine.distributed.broadcast_from_main``), so all shards are scored by one model."""
    if gather:
        from dalivssl.engine.distributed import broadcast_from_main

        broadcast_from_main(model)
    was_training = model.training
    model.eval()
    try:
        return extract(model, batches, device, True, on_batch, gather)
    finally:
        model.train(was_training)


def torch_device(device: str) -> str:
    """dalivssl device name ('cpu' | 'gpu') -> torch device ('cpu' | 'cuda'); fails in one line
    when 'gpu' is asked for and torch sees no CUDA GPU."""
    if device != "gpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise DalivsslError("--device gpu: no CUDA GPU available")
    return "cuda"


def normalized_batches(loader, mode: str, device):
    """Batches of a raw (uint8) loader, normalised with ``mode`` and moved to ``device``."""
    from pipelines.loader import normalize_clips

    for batch in loader:
        batch.clips = normalize_clips(batch.clips, mode).to(device)
        yield batch


def loader_device(device) -> str:
    """torch device ('cpu', 'cuda', 'cuda:0') -> DALI loader device ('cpu' | 'gpu')."""
    return "gpu" if str(device).startswith("cuda") or str(device) == "gpu" else "cpu"


def make_loader(task: str, manifest, where: str = "", **kw):
    """``PretextLoader(task, manifest, **kw)``; its one-line input errors become DalivsslError
    (pipelines cannot import dalivssl, so they raise ValueError subclasses)."""
    from dalivssl.data.verify import routes
    from pipelines.loader import PretextLoader

    kw["device"] = loader_device(kw.get("device", "cpu"))
    kw.setdefault("router", routes)
    try:
        return PretextLoader(task, manifest, **kw)
    except ValueError as exc:
        raise DalivsslError(f"{where or 'loader'}: {exc}") from None


def check_arch(arch: str):
    """The backbone class of ``arch`` (``models.BACKBONES``); one line with the valid names
    otherwise."""
    from models import BACKBONES

    if arch not in BACKBONES:
        from dalivssl.errors import unknown_name

        raise unknown_name("architecture", arch, BACKBONES)
    return BACKBONES[arch]


def check_input_size(backbone, clip_len: int, size: int, arch: str = "") -> None:
    """Fail early, in one line, when clips are smaller than the backbone can take."""
    t, h, w = getattr(backbone, "min_input", (1, 1, 1))
    if clip_len < t or size < max(h, w):
        raise DalivsslError(f"{arch or type(backbone).__name__} needs clips of at least {t} "
                            f"frames and {max(h, w)} px; got --clip-len {clip_len} --size {size}")
    mt, mh, mw = getattr(backbone, "input_multiple", (1, 1, 1))
    if clip_len % mt or size % mh or size % mw:
        raise DalivsslError(f"{arch or type(backbone).__name__} needs a clip length that is a "
                            f"multiple of {mt} and a size that is a multiple of {max(mh, mw)}; "
                            f"got --clip-len {clip_len} --size {size}")


def eval_loader(manifest, num_clips: int, batch_size: int, clip_len: int, size: int,
                device: str = "cpu", seed: int = 0, normalize: str | None = None,
                num_threads: int = 2, where: str = "", raw: bool = False,
                shard: tuple[int, int] = (0, 1)):
    """The evaluation loader (contracts C3/C4): N evenly spaced centre-cropped clips per video,
    no augmentation, every video once (no drop_last). ``raw``: uint8 clips before normalisation
    (noise sweeps; models that each normalise their own way). ``shard=(rank, world)``: this
    rank's ceil(V/world) videos, the last shards padded with repeats (merge the ranks' outputs
    with :func:`gather_outputs`)."""
    opts = {"num_clips": int(num_clips)}
    if normalize is not None:
        opts["normalize"] = normalize
    return make_loader("eval", manifest, where, batch_size=batch_size, device=device,
                       clip_len=clip_len, size=size, seed=seed, augment=False,
                       drop_last=False, num_threads=num_threads, raw=raw, shard=shard, **opts)


def _as_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)
