"""PretextLoader: sampler plans -> one DALI pipeline -> ``pipelines.types.Batch`` (contract C4).

Order and reproducibility:
  * epoch ``e`` visits a permutation of all videos drawn from (seed, e); rank ``r`` of ``w`` takes
    positions r, r+w, r+2w, … of it, so shards are disjoint and every rank gets the same number of
    samples (drop_last: the tail beyond a multiple of w is dropped; otherwise the permutation is
    wrapped around to pad);
  * the sample at global position g of epoch e is planned with ``sample_rng(seed, e, g)``, so any
    batch can be regenerated: same seed -> identical batches, and resuming from
    ``state_dict()`` yields exactly the remaining batches of the uninterrupted run;
  * a video that cannot be used (too short for the task, missing/empty/unreadable file, a codec,
    size or pixel format the device's decoder lacks, a DALI decode error) is skipped, counted in
    ``loader.skipped`` and replaced by the next usable video of the shard's order, so batch sizes
    stay fixed. What each decoder takes is checked before DALI sees the file
    (``dalivssl.data.capabilities``): NVDEC can abort the process on a file it cannot decode.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from pipelines.augment import graph_keys, param_arrays
from pipelines.types import NORMALIZE_MODES, Batch, ClipPlan, norm_stats, sample_rng

log = logging.getLogger(__name__)

_PERM_TAG = 0x5EED  # spawn key of the epoch permutation stream (distinct from sample streams)


class LoaderError(ValueError):
    """A loader input the user must fix (bad task options, no usable video). One-line message."""


def normalize_clips(raw, mode: str = "imagenet"):
    """uint8 (B, K, T, H, W, C) -> float32 (B, K, C, T, H, W).

    mode 'imagenet': (x/255 - mean) / std with the ImageNet statistics (RotNet/CtP, TDL, RSPNet);
    'unit': x/255 in [0, 1] (VCOP, PRP, CVRL). Works for any number of leading dims before
    (T, H, W, C); runs on the tensor's device.
    """
    import torch

    if mode not in NORMALIZE_MODES:
        raise LoaderError(f"unknown normalisation {mode!r}; valid: {', '.join(NORMALIZE_MODES)}")
    x = torch.as_tensor(raw)
    nd = x.dim()
    if nd < 4:
        raise LoaderError(f"normalize_clips expects (..., T, H, W, C) uint8, got {tuple(x.shape)}")
    perm = list(range(nd - 4)) + [nd - 1, nd - 4, nd - 3, nd - 2]
    x = x.to(torch.float32)  # contiguous, channel-last: the arithmetic runs on dense memory
    if mode == "unit":
        x = x.mul_(1.0 / 255.0)
    else:
        mean, std = norm_stats(mode, 255.0)
        x = x.sub_(torch.tensor(mean, dtype=torch.float32, device=x.device)).mul_(
            1.0 / torch.tensor(std, dtype=torch.float32, device=x.device))
    return x.permute(*perm).contiguous()


def _is_too_short(exc: BaseException) -> bool:
    """A sampler's TooShort (pipelines.samplers.base.TooShort, or any custom sampler's ValueError
    subclass of that name): matched by name, which covers both."""
    return isinstance(exc, ValueError) and any(c.__name__ == "TooShort" for c in type(exc).__mro__)


def _make_sampler(task, clip_len: int, size: int, augment: bool, options: dict):
    if not isinstance(task, str):
        return task
    from pipelines.samplers import SAMPLERS

    if task not in SAMPLERS:
        raise LoaderError(f"unknown task {task!r}; valid: {', '.join(sorted(SAMPLERS))}")
    try:
        return SAMPLERS[task](clip_len=clip_len, size=size, augment=augment, **options)
    except (TypeError, ValueError) as exc:
        raise LoaderError(f"task {task!r}: {exc}") from None


class PretextLoader:
    """Iterate ``Batch`` objects of a pretext task over a manifest (contract C4).

    task: a key of ``pipelines.samplers.SAMPLERS`` or a sampler instance (anything with
    ``plan(record, rng) -> ClipPlan``, ``num_clips``, ``clip_len``, ``normalize``, ``out_size``).
    manifest: anything with ``.records`` and ``.abspath(record)``.
    device 'cpu' (CPU decoder, CPU tensors) or 'gpu' (mixed NVDEC decoder, CUDA tensors).
    raw: yield uint8 clips (B, K, T, H, W, C) before normalisation instead of float
    (B, K, C, T, H, W). noise: (kind, severity[, constants]) applied in DALI at model resolution
    before normalisation (``pipelines.noise.dali_noise``). prefetch: batches prepared ahead by
    a worker thread (0 = synchronous). num_threads: DALI's threads (None = 8 on GPU, one NVDEC
    session each; 2 on CPU: ``dalivssl.devices.dali_threads``). gop_ranges: decode only the
    packets a plan needs when the manifest has a packet index (``pipelines.packets``), for the
    codecs of ``packets.DEFAULT_RANGE_CODECS`` (True), every codec a sub-stream can be built for
    ('all'), or never (False: whole files). A sub-stream DALI rejects is retried as the whole
    file, and that codec is then decoded whole. verify: route each decode class by its verdict
    on this machine (``dalivssl.data.verify``: unverified classes are verified once, at the
    first batch; a class bad on the GPU is decoded on the CPU where DALI's CPU decoder reads
    it, otherwise the run stops with one line); 'auto' = on GPU runs only (DALI's CPU decoder
    decodes bit-identically to FFmpeg), True, or False. router: the verification itself,
    ``(manifest, records, device) -> (routes by class, class of each record)``; the caller passes
    ``dalivssl.data.verify.routes`` (pipelines cannot import dalivssl), and a loader that must
    verify without one stops rather than deliver unverified frames. cpu_augment: where a CPU
    run augments: 'auto' (torch on DALI's decoded frames when it implements the plan's keys and
    no noise is asked for: ``pipelines.augment.TORCH_KEYS``; else DALI), 'dali', or 'torch'
    (``video.GraphConfig``), on ``augment_threads`` threads of one torch thread each (None = as
    many as DALI's); a GPU run augments in DALI. antialias: DALI's resize filter.

    Counts: ``skipped`` {reason: videos} (never used), ``short`` (videos used whose clips repeat
    frames: shorter than the plan's window, looped or padded by the sampler), ``counts()`` (both
    with the number of videos), ``decode_stats`` (frames decoded vs delivered so far).
    """

    def __init__(self, task, manifest, batch_size: int, device: str = "cpu", clip_len: int = 16,
                 size: int = 112, seed: int = 0, augment: bool = True,
                 return_indices: bool = False, shard: tuple[int, int] = (0, 1),
                 num_threads: int | None = None, drop_last: bool = True, raw: bool = False,
                 noise: tuple | None = None, prefetch: int = 1, gop_ranges: bool | str = True,
                 verify: bool | str = "auto", router=None, cpu_augment: str = "auto",
                 antialias: bool = True, augment_threads: int | None = None, **task_options):
        if device not in ("cpu", "gpu"):
            raise LoaderError(f"device must be 'cpu' or 'gpu', not {device!r}")
        rank, world = (int(shard[0]), int(shard[1]))
        if not 0 <= rank < world:
            raise LoaderError(f"bad shard {shard!r}: need 0 <= rank < world")
        if batch_size < 1:
            raise LoaderError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = _make_sampler(task, clip_len, size, augment, task_options)
        self.task = task if isinstance(task, str) else type(task).__name__
        self.manifest = manifest
        self.records = list(manifest.records)
        if not self.records:
            raise LoaderError("the manifest holds no videos")
        check = getattr(self.sampler, "check_lengths", None)  # samplers are duck-typed
        try:  # a dataset that cannot serve the task's draws: one line now, not an empty shard
            if check is not None:
                check(self.records)
        except ValueError as exc:
            raise LoaderError(str(exc)) from None
        self.batch_size = int(batch_size)
        self.device = device
        self.seed = int(seed)
        self.return_indices = bool(return_indices)
        self.rank, self.world = rank, world
        from dalivssl.devices import dali_threads  # a leaf module, like dalivssl.errors

        self.num_threads = dali_threads(device, num_threads)
        self.augment_threads = int(augment_threads or self.num_threads)
        self.drop_last = bool(drop_last)
        self.raw = bool(raw)
        self.noise = tuple(noise) if noise is not None else None
        self.prefetch = int(prefetch)
        from pipelines.video import CPU_AUGMENT

        if cpu_augment not in CPU_AUGMENT:
            raise LoaderError(f"cpu_augment must be one of {', '.join(CPU_AUGMENT)}, not "
                              f"{cpu_augment!r}")
        self.cpu_augment, self.antialias = cpu_augment, bool(antialias)
        self.normalize = getattr(self.sampler, "normalize", "imagenet")
        if self.normalize not in NORMALIZE_MODES:
            raise LoaderError(f"sampler {self.task}: unknown normalisation {self.normalize!r}; "
                              f"valid: {', '.join(NORMALIZE_MODES)}")
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded
        self._bad: dict[int, str] = {}  # manifest index -> reason
        self._checked: set[int] = set()  # indices that passed _precheck
        self._short: set[int] = set()  # manifest indices of used videos with repeated frames
        if gop_ranges not in (True, False, "all"):
            raise LoaderError(f"gop_ranges must be True, False or 'all', not {gop_ranges!r}")
        from pipelines.packets import DEFAULT_RANGE_CODECS, RANGE_CODECS

        self.gop_ranges = gop_ranges
        if verify not in (True, False, "auto"):
            raise LoaderError(f"verify must be True, False or 'auto', not {verify!r}")
        self.verify = device == "gpu" if verify == "auto" else bool(verify)
        self._router = router
        self._routes = None  # (routes by class, class of each record) once verified
        self._cpu = None  # (GraphConfig, pipeline) for classes routed to the CPU decoder
        self._range_codecs = set(() if gop_ranges is False else
                                 RANGE_CODECS if gop_ranges == "all" else
                                 DEFAULT_RANGE_CODECS[device])
        # frames delivered (plan frames), window (last - first + 1 per sample), decoded
        self.decode_stats = {"samples": 0, "delivered": 0, "window": 0, "decoded": 0}
        self._logged: set[str] = set()
        self._pipe = None
        self._cfg = None
        self._device_id = None
        if device == "gpu":
            # resolved here, in the caller's thread: torch's current device is thread-local and
            # the pipeline is built in the prefetch thread (DDP: torch.cuda.set_device(rank))
            import torch

            self._device_id = torch.cuda.current_device()
        n = len(self.records)
        self.per_rank = n // world if drop_last else -(-n // world)
        if self.per_rank == 0:
            raise LoaderError(f"{n} videos cannot fill {world} shards")
        nb = self.per_rank // self.batch_size if drop_last else -(-self.per_rank // self.batch_size)
        if nb == 0:
            raise LoaderError(f"{self.per_rank} videos per shard cannot fill one batch of "
                              f"{self.batch_size} with drop_last=True")
        self._num_batches = nb

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return self._num_batches

    @property
    def skipped(self) -> dict[str, int]:
        """{reason: number of distinct videos skipped for it}."""
        out: dict[str, int] = {}
        for reason in self._bad.values():
            out[reason] = out.get(reason, 0) + 1
        return out

    @property
    def short(self) -> int:
        """Videos used so far whose clips repeat frames (shorter than the plan's window)."""
        return len(self._short)

    def counts(self) -> dict:
        """{videos, skipped, short, skipped_by_reason} so far: what an evaluation reports (the
        videos it used = those that reached the model; ``skipped`` never did)."""
        return {"videos": len(self.records), "skipped": len(self._bad), "short": self.short,
                "skipped_by_reason": self.skipped}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch (new permutation drawn from the seed)."""
        self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        """Where the loader stands: resume with ``load_state_dict`` to get the remaining batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shard": [self.rank, self.world], "bad": {str(k): v for k, v in self._bad.items()},
                "short": sorted(self._short)}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise LoaderError(f"loader state is for seed {state['seed']}, this loader has seed "
                              f"{self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._bad.update({int(k): v for k, v in state.get("bad", {}).items()})
        self._short.update(int(i) for i in state.get("short", []))

    def _skip(self, index: int, reason: str, detail: str = "") -> None:
        self._bad[index] = reason
        if reason not in self._logged:
            self._logged.add(reason)
            path = self.records[index].path
            log.warning("skipping %s: %s%s (further videos skipped for this reason are only "
                        "counted in loader.skipped)", path, reason,
                        f" ({detail})" if detail else "")

    # ------------------------------------------------------------------ order
    def shard_order(self, epoch: int) -> np.ndarray:
        """Manifest indices this rank visits in ``epoch`` (length ``per_rank``)."""
        n = len(self.records)
        ss = np.random.SeedSequence([self.seed, int(epoch)], spawn_key=(_PERM_TAG,))
        perm = np.random.default_rng(ss).permutation(n)
        total = self.per_rank * self.world
        ext = perm[:total] if total <= n else np.resize(perm, total)
        return ext[self.rank::self.world]

    def _plan_one(self, order: np.ndarray, pos: int, epoch: int):
        """(manifest index, ClipPlan, Encoded) for shard position ``pos``, replacing an unusable
        video by the next usable one in the shard's order."""
        g = pos * self.world + self.rank  # global position in the epoch: the rng stream
        for j in range(len(order)):
            idx = int(order[(pos + j) % len(order)])
            if idx in self._bad:
                continue
            rec = self.records[idx]
            reason = self._precheck(idx, rec)
            if reason:
                self._skip(idx, *reason)
                continue
            try:
                plan = self.sampler.plan(rec, sample_rng(self.seed, epoch, g))
            except ValueError as exc:
                if _is_too_short(exc):
                    if getattr(exc, "permanent", True):  # else: too short for this draw only
                        self._skip(idx, "too short for the task", str(exc))
                    continue
                raise
            frames = plan.all_frames()
            if frames.size == 0 or frames.min() < 0 or frames.max() >= int(rec.num_frames):
                raise LoaderError(f"{rec.path}: the {self.task} plan names frames "
                                  f"{int(frames.min(initial=0))}..{int(frames.max(initial=0))} "
                                  f"but the record has {rec.num_frames} frames")
            try:
                enc = self._encode(idx, rec, frames)
            except OSError as exc:
                self._skip(idx, "unreadable file", exc.strerror or str(exc))
                continue
            if isinstance(enc, tuple):  # (reason, detail): not decodable as planned
                self._skip(idx, *enc)
                continue
            return idx, plan, enc
        raise LoaderError(f"no usable video left in shard {self.rank}/{self.world}; skipped: "
                          f"{self.skipped}")

    def _packet_index(self, rec):
        get = getattr(self.manifest, "packet_index", None)
        return get(rec) if get is not None else None

    def _encode(self, idx: int, rec, frames: np.ndarray):
        """What the decoder gets for ``frames``: :func:`encode_sample` with this loader's
        sub-stream codecs (and, on GPU, the classes whose sub-streams are verified)."""
        route = self._route(idx)
        codecs = self._range_codecs
        if route is not None and self.gop_ranges is True:  # sub-streams as verified
            codecs = codecs | {rec.codec} if route.substream else codecs - {rec.codec}
        enc = encode_sample(self.manifest.abspath(rec), self._packet_index(rec), frames, codecs,
                            self._note, rec.path)
        if route is not None and isinstance(enc, Encoded):
            enc.backend = route.backend
        return enc

    def _route(self, idx: int):
        """The verified route of record ``idx`` (None without verification): the routing hook
        where the backend is chosen per decode class; a class that can be decoded nowhere stops
        the run here, at its first batch."""
        if not self.verify:
            return None
        if self._routes is None:
            if self._router is None:
                raise LoaderError("this loader must verify its decode classes (verify=True, or "
                                  "a GPU run) but was given no router "
                                  "(dalivssl.data.verify.routes)")
            by_class, of = self._router(self.manifest, self.records, self.device)
            stops = sorted({r.stop for c, r in by_class.items() if r.stop})
            if stops:
                raise LoaderError(stops[0])
            moved = sorted(c for c, r in by_class.items() if r.backend != self.device)
            if moved:
                log.warning("decode classes %s verified bad on the GPU: decoded on the CPU",
                            ", ".join(moved))
            self._routes = (by_class, of)
        by_class, of = self._routes
        return by_class.get(of[idx])

    def _note(self, what: str, path: str) -> None:
        if what not in self._logged:
            self._logged.add(what)
            log.warning("%s: %s (further videos only counted)", path, what)

    def _precheck(self, idx: int, rec) -> tuple[str, str] | None:
        """(reason, detail) when the file is unusable on this device, before DALI sees it: the
        capability table's codec, size and pixel-format limits (the header is read when a GPU
        run's record lacks them), then emptiness. Files that pass are not checked again."""
        if idx in self._checked:
            return None
        from dalivssl.data.capabilities import record_problem

        path = self.manifest.abspath(rec)
        why = record_problem(rec, path, self.device)
        if why:
            return (why, "")
        try:
            if os.path.getsize(path) == 0:
                return ("empty file", "")
        except OSError as exc:
            return ("unreadable file", exc.strerror or str(exc))
        self._checked.add(idx)
        return None

    # ------------------------------------------------------------------ DALI
    def _config_for(self, plan: ClipPlan):
        from pipelines.video import GraphConfig

        out_size = tuple(int(s) for s in getattr(self.sampler, "out_size", None) or
                         (getattr(self.sampler, "size", 112),) * 2)
        extra = tuple((k, int(np.asarray(v).size)) for k, v in plan.extra_frames.items())
        cfg = GraphConfig(plan.num_clips, plan.clip_len, extra, out_size,
                          graph_keys(plan.params), self.device, self.noise,
                          None if self.raw else self.normalize, self.cpu_augment, self.antialias)
        try:
            cfg.torch_augment  # noqa: B018  (cpu_augment='torch' on keys torch lacks)
        except ValueError as exc:
            raise LoaderError(f"task {self.task}: {exc}") from None
        return cfg

    def _ensure_pipe(self, cfg):
        from pipelines.video import build_pipeline

        if self._pipe is not None and self._cfg == cfg:
            return self._pipe
        if self._pipe is not None and self._cfg is not None:
            # a later plan may carry more augmentation keys: rebuild with the union
            keys = graph_keys(set(cfg.keys) | set(self._cfg.keys))
            if (cfg.num_clips, cfg.clip_len, cfg.extra) != (
                    self._cfg.num_clips, self._cfg.clip_len, self._cfg.extra):
                raise LoaderError(f"sampler {self.task}: plans differ in shape "
                                  f"({self._cfg.num_clips}x{self._cfg.clip_len} {self._cfg.extra}"
                                  f" vs {cfg.num_clips}x{cfg.clip_len} {cfg.extra})")
            cfg = type(cfg)(**{**cfg.__dict__, "keys": keys})
            if cfg == self._cfg:
                return self._pipe
        self._pipe = build_pipeline(cfg, self.batch_size, self.num_threads, self._device_id,
                                    seed=self.seed + 7919 * self.rank)
        self._cfg = cfg
        return self._pipe

    def _decode(self, items):
        """Run the pipeline on [(idx, plan, bytes)]; returns its outputs or raises. In a GPU run,
        items routed to the CPU decoder go through a CPU pipeline of the same graph and their
        outputs are copied into place on the GPU."""
        from pipelines.video import run

        cfg = self._cfg
        params = [param_arrays(p.params, cfg.keys, cfg.num_clips) for _, p, _ in items]
        cpu = [j for j, (_, _, e) in enumerate(items)
               if self.device == "gpu" and e.backend == "cpu"]
        if not cpu:
            return run(self._pipe, cfg, [e.data for _, _, e in items],
                       [e.frames for _, _, e in items], params, self.augment_threads)
        parts = []
        for pipe, js in ((self._pipe, [j for j in range(len(items)) if j not in cpu]),
                         (None, cpu)):
            if not js:
                continue
            if pipe is None:
                pipe = self._cpu_pipe(cfg)
            try:
                parts.append((js, run(pipe, cfg if pipe is self._pipe else self._cpu[0],
                                      [items[j][2].data for j in js],
                                      [items[j][2].frames for j in js], [params[j] for j in js],
                                      self.augment_threads)))
            except RuntimeError:
                if pipe is not self._pipe:
                    self._cpu = None
                raise
        return _merge(parts, len(items), self._pipe_device())

    def _cpu_pipe(self, cfg):
        """The CPU-decoder twin of the GPU pipeline (same graph and seed) for routed classes."""
        from pipelines.video import build_pipeline

        # DALI augments here too: the routed samples look like the GPU-decoded ones beside them
        ccfg = type(cfg)(**{**cfg.__dict__, "device": "cpu", "cpu_augment": "dali"})
        if self._cpu is None or self._cpu[0] != ccfg:
            self._cpu = (ccfg, build_pipeline(ccfg, self.batch_size, self.num_threads, None,
                                              seed=self.seed + 7919 * self.rank))
        return self._cpu[1]

    def _pipe_device(self):
        import torch

        return torch.device("cuda", self._device_id) if self.device == "gpu" else \
            torch.device("cpu")

    def _decode_batch(self, items, order, positions, epoch):
        """Decode a batch; on a DALI error find the bad sample(s) one by one, mark them, replace
        them and retry (a failed DALI pipeline is invalid, so it is rebuilt)."""
        while True:
            cfg = self._config_for(items[0][1])
            for _, p, _ in items[1:]:
                other = self._config_for(p)
                cfg = type(cfg)(**{**cfg.__dict__, "keys": graph_keys(set(cfg.keys)
                                                                      | set(other.keys))})
                if other.extra != cfg.extra or (other.num_clips, other.clip_len) != (
                        cfg.num_clips, cfg.clip_len):
                    raise LoaderError(f"sampler {self.task}: plans of one batch differ in shape")
            self._ensure_pipe(cfg)
            try:
                return items, self._decode(items)
            except RuntimeError as exc:
                before = list(items)
                bad = self._find_bad(items)
                if not bad:
                    if all(a is b for a, b in zip(before, items)):
                        raise
                    continue  # sub-streams replaced by whole files: decode again
                for i in bad:
                    self._skip(items[i][0], "decode error", _first_line(exc))
                for i in bad:
                    items[i] = self._plan_one(order, positions[i], epoch)

    def _find_bad(self, items) -> list[int]:
        """Indices of the items DALI cannot decode, found by bisecting the failed batch (G4): a
        half that decodes is cleared at once and only a failure rebuilds the pipeline, so one bad
        file in a batch of B costs about log2(B) rebuilds instead of B. An item whose sub-stream
        fails but whose whole file decodes is replaced in ``items`` by the whole file."""
        bad: list[int] = []
        self._pipe = None  # a pipeline that raised is no longer valid

        def search(idx: list[int], known_bad: bool) -> bool:
            """Find the bad items of ``idx``; True if there was one. A half known to hold one
            (its sibling decoded) is split without decoding it whole; a single item is always
            decoded, so an error that no file reproduces finds nothing and is raised."""
            if not known_bad or len(idx) == 1:
                self._ensure_pipe(self._cfg)
                try:
                    self._decode([items[i] for i in idx])
                    return False
                except RuntimeError:
                    self._pipe = None
            if len(idx) == 1:
                bad.append(idx[0])
                return True
            half = len(idx) // 2
            found = search(idx[:half], False)
            return search(idx[half:], not found) or found

        search(list(range(len(items))), True)
        # a GOP-range sub-stream DALI rejects may still decode as the whole file: then that
        # codec is decoded whole from now on (pipelines.packets)
        out = []
        for i in sorted(bad):
            idx, plan, enc = items[i]
            if getattr(enc, "codec", ""):
                whole = _whole_file(self.manifest.abspath(self.records[idx]),
                                   plan.all_frames())
                if isinstance(whole, Encoded) and self._decodes((idx, plan, whole)):
                    self._range_codecs.discard(enc.codec)
                    log.warning("%s: DALI rejected its GOP-range sub-stream; %s videos are "
                                "decoded whole from now on", self.records[idx].path, enc.codec)
                    items[i] = (idx, plan, whole)
                    continue
            out.append(i)
        return out

    def _decodes(self, item) -> bool:
        self._ensure_pipe(self._cfg)
        try:
            self._decode([item])
            return True
        except RuntimeError:
            self._pipe = None
            return False

    # ------------------------------------------------------------------ iteration
    def batch_plans(self, epoch: int, b: int) -> list[tuple[int, ClipPlan]]:
        """[(manifest index, plan)] of batch ``b`` of ``epoch``: what the pipeline will decode
        (unusable videos already replaced; benchmarks feed the same plans to other loaders)."""
        order = self.shard_order(epoch)
        return [(i, p) for i, p, _ in (self._plan_one(order, pos, epoch)
                                       for pos in self._positions(b))]

    def _positions(self, b: int) -> list[int]:
        return list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.per_rank)))

    def batch_at(self, epoch: int, b: int) -> Batch:
        """Batch ``b`` of ``epoch`` (pure function of seed/epoch/b, given the known-bad videos)."""
        order = self.shard_order(epoch)
        positions = self._positions(b)
        items = [self._plan_one(order, p, epoch) for p in positions]
        items, outs = self._decode_batch(items, order, positions, epoch)
        for i, p, e in items:
            if i not in self._short and _repeats_frames(p):
                self._short.add(i)
            f = p.all_frames()
            self.decode_stats["samples"] += 1
            self.decode_stats["delivered"] += int(f.size)
            self.decode_stats["window"] += int(f.max() - f.min() + 1)
            self.decode_stats["decoded"] += e.decoded
        cfg = self._cfg
        if self.raw:
            out = outs[0]
            B, K, T = len(items), cfg.num_clips, cfg.clip_len
            x = out[:, :K * T].reshape(B, K, T, *out.shape[2:])
            extra_clips, start = {}, K * T
            for name, n in cfg.extra:
                extra_clips[name] = out[:, start:start + n]
                start += n
        else:
            x = outs[0]
            extra_clips = {name: t for (name, _), t in zip(cfg.extra, outs[1:])}
        plans = [p for _, p, _ in items]
        idx = [i for i, _, _ in items]
        small = _small_tensors(x.device)
        batch = Batch(
            clips=x,
            labels=small(np.array([int(p.label) for p in plans], np.int64)),
            targets=small(np.array([int(getattr(self.records[i], "label", -1)) for i in idx],
                                   np.int64)),
            indices=small(np.array(idx, np.int64)),
            frames=(small(np.stack([np.asarray(p.frames, np.int64) for p in plans]))
                    if self.return_indices else None),
            extra_clips=extra_clips,
            extras={k: small(np.stack([np.asarray(p.extras[k]) for p in plans]))
                    for k in plans[0].extras},
        )
        return batch

    def __iter__(self):
        epoch, start = self.epoch, self.position
        if self.prefetch <= 0:
            for b in range(start, self._num_batches):
                batch = self.batch_at(epoch, b)
                self.position = b + 1
                yield batch
        else:
            yield from self._iter_prefetch(epoch, start)
        # epoch finished: the next iteration starts the next epoch
        self.epoch, self.position = epoch + 1, 0

    def _iter_prefetch(self, epoch: int, start: int):
        """Batches made by a worker thread ``prefetch`` batches ahead: DALI decoding and the torch
        normalisation release the GIL, so they overlap with the consumer's training step."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                if self.device == "gpu":
                    import torch

                    torch.cuda.set_device(self._device_id)
                for b in range(start, self._num_batches):
                    if stop.is_set() or not put((b, self.batch_at(epoch, b), None)):
                        return
                put((None, None, None))
            except BaseException as exc:  # handed to the consumer, raised there
                put((None, None, exc))

        worker = threading.Thread(target=work, name="PretextLoader", daemon=True)
        worker.start()
        try:
            while True:
                b, batch, err = q.get()
                if err is not None:
                    raise err
                if b is None:
                    return
                self.position = b + 1
                yield batch
        finally:
            stop.set()
            worker.join()


def _merge(parts, n: int, device):
    """Outputs of sub-batches [(positions, [tensor per output])] as full-batch tensors on
    ``device`` (sample j of a part goes to row positions[j])."""
    import torch

    outs = []
    for k in range(len(parts[0][1])):
        first = parts[0][1][k]
        full = torch.empty((n,) + tuple(first.shape[1:]), dtype=first.dtype, device=device)
        for js, tensors in parts:
            full[torch.as_tensor(js, device=device)] = tensors[k].to(device)
        outs.append(full)
    return outs


def encode_sample(path, index, frames: np.ndarray, range_codecs, note=None, name: str = ""):
    """What the decoder gets for ``frames`` of the video at ``path``: an :class:`Encoded`, or
    (reason, detail) when the file cannot give these frames. With a packet index: the GOP-range
    sub-stream when ``index.codec`` is in ``range_codecs``, and a truncated file is caught here,
    before decoding; without one: the whole file (a frame past the decodable end then fails in
    DALI, pad_mode='none', and is skipped there). The decode verification
    (``dalivssl.data.verify``) encodes its clips with this very function."""
    from pipelines.packets import substream

    if index is not None:
        size = os.path.getsize(path)
        if size < index.file_size:
            n = index.decodable_frames(size)
            return ("truncated file (fewer bytes than when indexed)",
                    f"{n} of {index.num_frames} frames decodable")
        if size > index.file_size:
            if note is not None:
                note("file changed since it was indexed: decoded from frame 0 "
                     "(`dalivssl data index --update`)", name or str(path))
            index = None
        elif int(frames.max()) >= index.num_frames:
            return ("plan past the decodable end",
                    f"frame {int(frames.max())} of {index.num_frames}")
    if index is not None and index.supported and index.codec in range_codecs:
        sub = substream(path, index, frames)
        return Encoded(sub.data, sub.frames, sub.decoded, index.codec)
    return _whole_file(path, frames)


def _whole_file(path, frames: np.ndarray):
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        return ("empty file", "")
    return Encoded(data, frames, int(frames.max()) + 1)


def _small_tensors(device):
    """numpy -> torch on ``device`` for the small per-batch arrays (labels, indices, extras).

    On CUDA (G6) the array goes into pinned host memory and is copied with non_blocking=True: the
    copy is queued on the stream and the prefetch thread does not wait for the training step
    queued before it, as a pageable copy would (torch's pinned allocator keeps the buffer alive
    until the copy is done)."""
    import torch

    if device.type != "cuda":
        return torch.as_tensor
    return lambda a: torch.from_numpy(np.ascontiguousarray(a)).pin_memory().to(device,
                                                                                 non_blocking=True)


class Encoded:
    """What one sample feeds the decoder: data uint8 (bytes,) (the file or a GOP-range
    sub-stream), frames int64 (F,) the plan's frames as indices into ``data``, decoded: frames
    the decoder decodes for them (max(frames) + 1: it starts at the first packet), codec: the
    codec of a sub-stream ('' for a whole file), backend: the DALI backend that decodes it
    ('' = the loader's device; 'cpu' in a GPU run = a class routed to the CPU decoder)."""

    __slots__ = ("data", "frames", "decoded", "codec", "backend")

    def __init__(self, data: np.ndarray, frames: np.ndarray, decoded: int, codec: str = "",
                 backend: str = ""):
        self.data, self.frames, self.decoded, self.codec = data, frames, int(decoded), codec
        self.backend = backend


def _repeats_frames(plan: ClipPlan) -> bool:
    """Whether a clip of ``plan`` shows a frame twice (a short video looped or padded)."""
    f = np.sort(np.asarray(plan.frames).reshape(plan.num_clips, -1), axis=1)
    return bool((f[:, 1:] == f[:, :-1]).any())


def _first_line(exc: BaseException) -> str:
    """The informative line of a DALI error (the one after 'encountered:'), shortened."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        line = lines[lines.index("encountered:") + 1]
        line = line.split("failed: ", 1)[-1]
    else:
        line = (lines or [type(exc).__name__])[0]
    return line[:200]
