"""The DALI pipeline that executes clip plans: encoded bytes + frame lists in, uint8 clips out.

One DALI sample = one video. Per iteration the loader feeds, through ``fn.external_source``:
  ``encoded``  uint8 (bytes,)     the file, or the GOP-range sub-stream covering the plan
                                  (``pipelines.packets``),
  ``frames``   int32 (U,)         the sorted unique frames of ``ClipPlan.all_frames()``, as
                                  indices into ``encoded``,
  ``order``    int32 (F,)         positions in ``frames`` that give back all_frames (K·T clip
                                  frames, then the extras): see ``decode_order``,
  ``p_<name>`` (K, ...)           per-clip augmentation inputs (``augment.graph_inputs``: the
                                  geometric parameters, and colour jitter as a (K,3,3) matrix).
The graph decodes all F frames of a sample in ONE ``fn.decoders.video`` call (CPU decoder, or
'mixed' NVDEC for device='gpu'); on CPU the call decodes from frame 0 to max(frames) once, so the
extra clips of a sample are almost free (DALI ``fn.decoders.video`` documentation); the loader therefore hands it only the
packets from the keyframe before the plan's first frame on. It then slices the K clips (fixed K and
T per task: K graph branches), augments each with its own parameter row, treats every extra-frame
group like clip 0 (same geometry and colour, so PRP's reconstruction target aligns with its
input), optionally adds noise, and concatenates everything back into one sequence:

  raw:         uint8 (K·T + ΣN, out_h, out_w, 3) per sample (FHWC), on the pipeline's device;
  normalised:  float (K, C, T, out_h, out_w) per sample, plus one float (C, N, out_h, out_w)
               output per extra-frame group (fn.crop_mirror_normalize: ImageNet mean/std or
               [0, 1], fused with the FHWC -> CFHW transpose).

On the CPU backend (``GraphConfig.torch_augment``) the graph stops at the decoder: ``run`` hands
each sample's unique decoded frames to ``torch_outputs``, which slices, augments
(``augment.torch_augment_clip``) and normalises them into the same outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.augment import (augment_clip, graph_inputs, graph_keys, torch_augment_clip,
                               torch_covers)
from pipelines.types import norm_stats

ENCODED, FRAMES, ORDER, PARAM_PREFIX = "encoded", "frames", "order", "p_"
CPU_AUGMENT = ("auto", "dali", "torch")


@dataclass(frozen=True)
class GraphConfig:
    """Static shape of the graph (DALI graphs are fixed; a task's plans all share it).

    num_clips K, clip_len T, extra: ((name, N), ...) extra-frame groups in plan order,
    out_size (H, W), keys: augmentation parameter keys built into the graph, device 'cpu'|'gpu',
    noise: (kind, severity, constants) or None, normalize: 'imagenet' | 'unit' | None (raw).
    cpu_augment: where a CPU pipeline augments: 'auto' (torch when ``augment.torch_covers`` the
    keys and there is no noise, else DALI), 'dali' or 'torch'. antialias: DALI's resize filter
    (``fn.resize(antialias=...)``). The GPU graph always augments in DALI.
    """

    num_clips: int
    clip_len: int
    extra: tuple[tuple[str, int], ...]
    out_size: tuple[int, int]
    keys: tuple[str, ...]
    device: str = "cpu"
    noise: tuple | None = None
    normalize: str | None = None
    cpu_augment: str = "auto"
    antialias: bool = True

    @property
    def torch_augment(self) -> bool:
        """Whether the graph only decodes and torch augments (CPU backend only): DALI's CPU
        resize and colour kernels cost several times torchvision's uint8 ones."""
        if self.device != "cpu" or self.cpu_augment == "dali":
            return False
        ok = torch_covers(self.keys) and self.noise is None
        if self.cpu_augment == "torch" and not ok:
            raise ValueError(f"cpu_augment='torch' cannot run keys {self.keys} / noise "
                             f"{self.noise}; use 'auto' or 'dali'")
        return ok

    @property
    def total_frames(self) -> int:
        return self.num_clips * self.clip_len + sum(n for _, n in self.extra)


def build_pipeline(cfg: GraphConfig, batch_size: int, num_threads: int = 2,
                   device_id: int | None = None, seed: int = 0):
    """Build the DALI pipeline for ``cfg`` (see module docstring for inputs and output)."""
    import nvidia.dali as dali
    from nvidia.dali import fn, types

    if cfg.device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', not {cfg.device!r}")
    if cfg.cpu_augment not in CPU_AUGMENT:
        raise ValueError(f"cpu_augment must be one of {', '.join(CPU_AUGMENT)}, not "
                         f"{cfg.cpu_augment!r}")
    dev = cfg.device
    if dev == "gpu" and device_id is None:  # the caller's GPU (DDP rank), not GPU 0 (G10)
        import torch

        device_id = torch.cuda.current_device()
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads,
                         device_id=device_id if dev == "gpu" else None, seed=seed,
                         prefetch_queue_depth=1, exec_dynamic=True)
    keys = graph_keys(cfg.keys)
    K, T = cfg.num_clips, cfg.clip_len
    with pipe:
        encoded = fn.external_source(name=ENCODED, dtype=types.UINT8, ndim=1, no_copy=False)
        frames = fn.external_source(name=FRAMES, dtype=types.INT32, ndim=1)
        order = fn.external_source(name=ORDER, dtype=types.INT32, ndim=1)
        params = {name: fn.external_source(name=PARAM_PREFIX + name,
                                           dtype=types.FLOAT if kind == "float" else types.INT32,
                                           ndim=ndim)
                  for name, (kind, ndim) in graph_inputs(keys).items()}
        # pad_mode 'none': a frame past the decodable end raises (the loader skips the video)
        # instead of arriving black (the default 'constant')
        video = fn.decoders.video(encoded, frames=frames, pad_mode="none",
                                  device="mixed" if dev == "gpu" else "cpu")
        if cfg.torch_augment:  # the unique frames, as decoded: torch does the rest (``run``)
            pipe.set_outputs(video)
            pipe.build()
            return pipe
        video = fn.sequence_rearrange(video, new_order=order, device=dev)
        contrast = "contrast" in keys
        parts = [augment_clip(video[k * T:(k + 1) * T], params, k, cfg.out_size, dev, contrast,
                              cfg.antialias)
                 for k in range(K)]
        start = K * T
        for _, n in cfg.extra:
            parts.append(augment_clip(video[start:start + n], params, 0, cfg.out_size, dev,
                                      contrast, cfg.antialias))
            start += n
        if cfg.noise is not None:
            from pipelines.noise import dali_noise

            kind, severity, *rest = cfg.noise
            parts = [dali_noise(p, kind, severity, *(rest[:1] or ["imagenet-c"])) for p in parts]
        if cfg.normalize is None:
            outs = [parts[0] if len(parts) == 1 else fn.cat(*parts, axis=0, device=dev)]
        else:
            # normalise + FHWC -> CFHW in one op on the DALI threads (or the GPU)
            mean, std = map(list, norm_stats(cfg.normalize, 255.0))
            normed = [fn.crop_mirror_normalize(p, dtype=types.FLOAT, output_layout="CFHW",
                                               mean=mean, std=std, device=dev) for p in parts]
            outs = [fn.stack(*normed[:K], axis=0, device=dev)] + normed[K:]
        pipe.set_outputs(*outs)
    pipe.build()
    return pipe


def decode_order(all_frames) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique frames to decode, new_order) with ``unique[new_order] == all_frames``.

    The decoder is fed ascending unique indices because ``fn.decoders.video`` (CPU, 2.4) rewinds
    and decodes again from the start whenever a requested index is lower than the previous one:
    two overlapping clips requested in plan order (RSPNet, CVRL, TDL) cost ~7x more than the
    same frames sorted (measured: 1.93 s vs 0.26 s per batch of 8). ``fn.sequence_rearrange``
    then restores plan order (and duplicates) in the graph.
    """
    uniq, inverse = np.unique(np.asarray(all_frames, dtype=np.int64), return_inverse=True)
    return uniq.astype(np.int32), inverse.reshape(-1).astype(np.int32)


def feed(pipe, cfg: GraphConfig, encoded: list[np.ndarray], frames: list[np.ndarray],
         params: list[dict[str, np.ndarray]]) -> None:
    """Feed one batch (lists of per-sample arrays; params from ``augment.param_arrays``)."""
    orders = [decode_order(f) for f in frames]
    pipe.feed_input(ENCODED, encoded)
    pipe.feed_input(FRAMES, [u for u, _ in orders])
    if cfg.torch_augment:  # the graph holds the decoder only
        return orders
    pipe.feed_input(ORDER, [o for _, o in orders])
    for name in graph_inputs(cfg.keys):
        pipe.feed_input(PARAM_PREFIX + name, [p[name] for p in params])
    return orders


def run(pipe, cfg: GraphConfig, encoded, frames, params, threads: int | None = None) -> list:
    """Feed one batch and run it; returns torch tensors on the pipeline's device (zero-copy
    through DLPack): raw (normalize None): [uint8 (B, F, H, W, 3)]; normalised: [float
    (B, K, C, T, H, W)] + one float (B, C, N, H, W) per extra-frame group. ``threads``: the torch
    augmentation's (``cfg.torch_augment``; None = the pipeline's)."""
    import torch

    orders = feed(pipe, cfg, encoded, frames, params)
    if cfg.torch_augment:
        (decoded,) = pipe.run()
        return torch_outputs(cfg, [np.asarray(decoded[j]) for j in range(len(orders))],
                             [o for _, o in orders], params, threads or pipe.num_threads)
    return [torch.from_dlpack(o.as_tensor()) for o in pipe.run()]


def torch_outputs(cfg: GraphConfig, decoded: list, orders: list, params: list,
                  threads: int = 1) -> list:
    """The outputs of ``run`` from each sample's decoded unique frames (uint8 (U, H, W, 3)) and
    decode order, augmented by ``augment.torch_augment_clip`` with the same parameter rows as
    the DALI graph (clip k: row k; every extra-frame group: row 0), then normalised
    (``pipelines.types.norm_stats``) into (C, T, H, W) as ``fn.crop_mirror_normalize`` does.
    Samples are spread over ``threads`` threads of one torch thread each (torch releases the
    GIL; one intra-op thread per sample avoids oversubscribing the cores DALI also uses)."""
    import torch

    K, T = cfg.num_clips, cfg.clip_len
    B, (H, W) = len(decoded), cfg.out_size
    bounds = [(k * T, (k + 1) * T, k) for k in range(K)]
    start = K * T
    for _, n in cfg.extra:
        bounds.append((start, start + n, 0))
        start += n
    contrast = "contrast" in cfg.keys
    if cfg.normalize is None:
        outs = [torch.empty((B, cfg.total_frames, H, W, 3), dtype=torch.uint8)]
    else:
        outs = [torch.empty((B, K, 3, T, H, W))] + [torch.empty((B, 3, n, H, W))
                                                   for _, n in cfg.extra]
        mean, std = norm_stats(cfg.normalize, 255.0)
        mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        scale = 1.0 / torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)

    def dest(j, g):
        if cfg.normalize is None:
            a, b, _ = bounds[g]
            return outs[0][j, a:b]
        return outs[0][j, g] if g < K else outs[g - K + 1][j]

    def one(j):
        x = torch.from_numpy(decoded[j])
        for g, (a, b, k) in enumerate(bounds):
            clip = torch_augment_clip(x, params[j], k, cfg.out_size, contrast, orders[j][a:b],
                                      rounded=cfg.normalize is None)
            if cfg.normalize is None:
                dest(j, g).copy_(clip)
            else:  # FHWC -> CFHW into the batch tensor, then (x - mean) / std in place
                dest(j, g).copy_(clip.permute(3, 0, 1, 2)).sub_(mean).mul_(scale)

    list(_torch_pool(threads).map(one, range(B)))
    return outs


_POOLS: dict = {}


def _torch_pool(threads: int):
    """A process-wide pool of ``threads`` threads, each running torch with one intra-op thread
    (under OpenMP the count is per thread; torch also keeps it as the default of threads that
    start later, so the caller's count is set back once every pool thread has started)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    threads = max(1, int(threads))
    if threads not in _POOLS:
        import torch

        before = torch.get_num_threads()
        started = threading.Barrier(threads)
        # get_num_threads first: a thread's first torch call adopts the default, which would
        # undo a set_num_threads made before it
        pool = ThreadPoolExecutor(threads, "torch-augment", initializer=lambda: (
            torch.get_num_threads(), torch.set_num_threads(1)))
        list(pool.map(lambda _: started.wait(), range(threads)))  # start them all now
        torch.set_num_threads(before)
        _POOLS[threads] = pool
    return _POOLS[threads]
