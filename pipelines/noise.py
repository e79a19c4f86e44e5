"""Appearance noise as DALI graphs: gaussian, shot, impulse, speckle × severity 1..5.

The robustness study of Kumar et al. (arXiv 2306.06010, §robustness) follows Schiappa et al.
(arXiv 2207.01398), whose noise formulas are those of ImageNet-C (Hendrycks & Dietterich;
`imagecorruptions`). Two constant sets exist (Hendrycks & Dietterich 2019, ``imagecorruptions``):

- ``'imagenet-c'``: the constants of imagecorruptions / make_imagenet_c.py;
- ``'schiappa'``: what Maddy12/ActionRecognitionRobustnessEval actually uses: ImageNet-C gaussian
  and impulse, but the much milder Tiny-ImageNet-C shot and speckle constants.

Formulas on x in [0, 1] (c = severity constant), applied independently per element and per frame:
gaussian clip(x + N(0, c²)); shot clip(Poisson(c·x)/c); impulse: each element w.p. c becomes 0 or 1
(50/50); speckle clip(x + x·N(0, c²)). On uint8 frames in [0, 255] they map exactly onto DALI ops
(DALI ``fn.noise`` documentation): gaussian ``stddev=255c``; shot ``factor=255/c``; impulse
``salt_and_pepper(prob=c, salt_vs_pepper=0.5, per_channel=True)``; speckle built from
``fn.random.normal`` with ``stddev=c``.

Rounding: imagecorruptions ends with ``np.uint8(...)``, which truncates. ``rounding='floor'``
(the default) reproduces that truncation, so accuracies are comparable with the published code;
``rounding='round'`` uses the plain DALI ops (round half away from zero), ≈ +0.5 grey level above.

Where the noise goes (``NOISE_AT``): ``'model'`` on uint8 frames at model resolution, before
normalisation (ImageNet-C did likewise); ``'decoded'`` on the decoded frames before the resize to
model resolution (``NoiseRunner(out_size=…)``), the order of the paper's reference code
(Maddy12/ActionRecognitionRobustnessEval core/build_dataset.py: RandomPerturbation precedes
Resize), where the resize averages part of the noise away. DALI is imported inside the functions, so
``import pipelines.noise`` costs only numpy.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

NOISES = ("gaussian", "shot", "impulse", "speckle")
SEVERITIES = (1, 2, 3, 4, 5)
ROUNDINGS = ("floor", "round")
NOISE_AT = ("model", "decoded")
DEFAULT_ROUNDING = "floor"

# severity 1..5 constants c (Hendrycks & Dietterich 2019, ``imagecorruptions``); shot: smaller c = stronger noise
_IMAGENET_C = {
    "gaussian": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot": (60.0, 25.0, 12.0, 5.0, 3.0),
    "impulse": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle": (0.15, 0.20, 0.35, 0.45, 0.60),
}
CONSTANTS: dict[str, dict[str, tuple[float, ...]]] = {
    "imagenet-c": _IMAGENET_C,
    "schiappa": {
        "gaussian": _IMAGENET_C["gaussian"],
        "shot": (250.0, 100.0, 50.0, 30.0, 15.0),
        "impulse": _IMAGENET_C["impulse"],
        "speckle": (0.15, 0.20, 0.25, 0.30, 0.35),
    },
}


def _check(kind: str, severity: int, constants: str, rounding: str | None = None) -> None:
    if constants not in CONSTANTS:
        raise ValueError(f"unknown noise constant set {constants!r}; valid: "
                         f"{', '.join(sorted(CONSTANTS))}")
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r}; valid: {', '.join(NOISES)}")
    if isinstance(severity, bool) or int(severity) != severity or severity not in SEVERITIES:
        raise ValueError(f"noise severity must be an integer 1..5, got {severity!r}")
    if rounding is not None and rounding not in ROUNDINGS:
        raise ValueError(f"unknown noise rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")


def noise_constant(kind: str, severity: int, constants: str = "imagenet-c") -> float:
    """The formula constant c of ``kind`` at ``severity`` (1..5) in the given constant set."""
    _check(kind, severity, constants)
    return float(CONSTANTS[constants][kind][int(severity) - 1])


def dali_args(kind: str, severity: int, constants: str = "imagenet-c") -> dict:
    """DALI arguments for uint8 [0, 255] frames (DALI ``fn.noise`` documentation)."""
    c = noise_constant(kind, severity, constants)
    if kind == "gaussian":
        return {"stddev": 255.0 * c}
    if kind == "shot":
        return {"factor": 255.0 / c}
    if kind == "impulse":
        return {"prob": c, "salt_vs_pepper": 0.5, "per_channel": True}
    return {"stddev": c}  # speckle: multiplicative normal n, y = x + x·n


def cell_seed(seed: int, kind: str, severity: int) -> int:
    """Op seed of one (noise, severity) cell: a cell's noise does not depend on which other cells
    share the pipeline, so a resumed sweep redraws exactly the noise a full sweep would draw."""
    ss = np.random.SeedSequence([int(seed), NOISES.index(kind), int(severity)])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def dali_noise(frames, kind: str, severity: int, constants: str = "imagenet-c",
               rounding: str = DEFAULT_ROUNDING, seed: int | None = None):
    """Add noise to a DALI DataNode of uint8 frames (FHWC, or any layout with a 'C' or none).

    Returns a uint8 DataNode of the same shape; noise is i.i.d. per element, so every frame and
    every sample gets its own draw (as in Schiappa et al., who loop over frames). ``seed`` fixes
    the op's random stream (None = derived from the pipeline seed).
    """
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    _check(kind, severity, constants, rounding)
    args = dali_args(kind, severity, constants)
    sd = {} if seed is None else {"seed": int(seed)}
    if kind == "impulse":  # no rounding involved: values become 0 / 255 or stay
        return fn.noise.salt_and_pepper(frames, **args, **sd)
    if kind == "gaussian":
        # round(v − 0.5) = floor(v) almost surely; saturation to [0, 255] is the clip
        mean = -0.5 if rounding == "floor" else 0.0
        return fn.noise.gaussian(frames, mean=mean, **args, **sd)
    if kind == "shot" and rounding == "round":
        return fn.noise.shot(frames, **args, **sd)
    xf = fn.cast(frames, dtype=types.FLOAT)
    if kind == "shot":
        y = fn.noise.shot(xf, **args, **sd)  # float in, float out, not clipped
    else:  # speckle: DALI has no operator; the input node sets the shape of n
        n = fn.random.normal(xf, stddev=args["stddev"], **sd)
        y = xf + xf * n
    if rounding == "floor":
        y = dmath.floor(y)
    return fn.cast(dmath.clamp(y, 0.0, 255.0), dtype=types.UINT8)  # cast rounds half away


def reference_noise(x: np.ndarray, kind: str, c: float, rng: np.random.Generator,
                    rounding: str = DEFAULT_ROUNDING) -> np.ndarray:
    """NumPy reference of the imagecorruptions formulas on uint8 ``x`` (any shape) → uint8.

    Works in [0, 1] floats exactly like imagecorruptions (x/255, noise, clip, ×255) and then
    truncates (``'floor'``, = ``np.uint8``) or rounds half away from zero (``'round'``, = DALI).
    """
    if kind not in NOISES:
        raise ValueError(f"unknown noise {kind!r}; valid: {', '.join(NOISES)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown noise rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
    x = np.asarray(x)
    if kind == "impulse":
        hit = rng.random(x.shape) < c
        salt = rng.random(x.shape) < 0.5
        y = x.copy()
        y[hit & salt] = 255
        y[hit & ~salt] = 0
        return y
    xf = x.astype(np.float64) / 255.0
    if kind == "gaussian":
        y = xf + rng.normal(0.0, c, size=x.shape)
    elif kind == "shot":
        y = rng.poisson(xf * c) / float(c)
    else:
        y = xf + xf * rng.normal(0.0, c, size=x.shape)
    y = np.clip(y, 0.0, 1.0) * 255.0
    y = np.floor(y) if rounding == "floor" else np.floor(y + 0.5)
    return y.astype(np.uint8)


Cell = tuple  # (noise name, severity)


class NoiseRunner:
    """One DALI pipeline: a uint8 batch in (external source) → one noisy uint8 batch per cell.

    cells: (noise, severity) pairs, evaluated from the same input batch (decode once, corrupt many
    ways). Each cell's op is seeded with :func:`cell_seed` (seed, noise, severity). Samples are
    FHWC (F frames, e.g. K·T clip frames of one video); batches may be smaller than
    ``max_batch_size``. device: 'cpu' (``device_id=None``) or 'gpu' (noise on the GPU;
    device_id None = torch's current CUDA device, the rank's GPU under DDP).

    out_size (H, W): noise on the input frames, then each output resized to out_size (DALI
    linear, antialiased: the loader's resize); the clean input, resized the same way, comes first.
    ``outputs`` names the outputs of :meth:`run` in order: cells, or ("clean", 0) then cells.
    """

    def __init__(self, cells: Sequence[Cell], max_batch_size: int, constants: str = "imagenet-c",
                 rounding: str = DEFAULT_ROUNDING, seed: int = 0, device: str = "cpu",
                 num_threads: int = 2, device_id: int | None = None,
                 out_size: tuple[int, int] | None = None):
        from nvidia.dali import fn, pipeline_def, types

        if device not in ("cpu", "gpu"):
            raise ValueError(f"unknown device {device!r}; valid: cpu, gpu")
        cells = [(str(k), int(s)) for k, s in cells]
        if not cells and out_size is None:
            raise ValueError("no noise cells to run")
        for k, s in cells:
            _check(k, s, constants, rounding)
        self.cells = cells
        self.outputs = ([("clean", 0)] if out_size else []) + cells
        self.device = device
        self.max_batch_size = int(max_batch_size)
        if device == "gpu" and device_id is None:
            import torch

            device_id = torch.cuda.current_device()

        @pipeline_def(batch_size=self.max_batch_size, num_threads=num_threads,
                      device_id=device_id if device == "gpu" else None, seed=int(seed),
                      prefetch_queue_depth=1)
        def _pipe():
            x = fn.external_source(name="frames", dtype=types.UINT8, ndim=4, layout="FHWC",
                                   device=device)
            outs = [dali_noise(x, k, s, constants, rounding, seed=cell_seed(seed, k, s))
                    for k, s in cells]
            if out_size:
                outs = [fn.resize(y, size=list(out_size), device=device) for y in [x, *outs]]
            return tuple(outs)

        self.pipe = _pipe()
        self.pipe.build()

    def run(self, batch):
        """batch: uint8 (B, F, H, W, C) numpy array, torch tensor (CPU, or CUDA for device='gpu')
        or a list of (F, H, W, C) arrays → list of DALI TensorLists, one per ``outputs``."""
        if isinstance(batch, (list, tuple)):
            n = len(batch)
        else:
            if getattr(batch, "ndim", 0) != 5:
                raise ValueError(f"noise input must be (B,F,H,W,C), got shape "
                                 f"{tuple(getattr(batch, 'shape', ()))}")
            n = int(batch.shape[0])
            if hasattr(batch, "numpy") and not getattr(batch, "is_cuda", False):
                batch = batch.contiguous().numpy()  # CPU torch tensor: zero-copy view
        if not 0 < n <= self.max_batch_size:
            raise ValueError(f"noise batch of {n} samples, pipeline takes 1..{self.max_batch_size}")
        self.pipe.feed_input("frames", batch, layout="FHWC")
        return list(self.pipe.run())

    def run_numpy(self, batch) -> dict:
        """Like :meth:`run`, as {cell: uint8 numpy (B, F, H, W, C)}."""
        outs = self.run(batch)
        res = {}
        for cell, tl in zip(self.outputs, outs):
            if self.device == "gpu":
                tl = tl.as_cpu()
            res[cell] = np.array(tl.as_tensor())
        return res


def corrupt(frames: np.ndarray, noise: str, severity: int, constants: str = "imagenet-c",
            seed: int = 0, device: str = "cpu", rounding: str = DEFAULT_ROUNDING) -> np.ndarray:
    """Corrupt uint8 frames (F,H,W,C) or clips (N,F,H,W,C) → same shape, uint8.

    Runs the same DALI graph as the robustness sweep (external source → :func:`dali_noise`), so
    ``corrupt`` shows exactly what the sweep feeds the model. Same seed → same output.
    """
    _check(noise, severity, constants, rounding)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim not in (4, 5) or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be (F,H,W,C) or (N,F,H,W,C) with C in 1/3/4, got shape "
                         f"{frames.shape}")
    batch = np.ascontiguousarray(frames if frames.ndim == 5 else frames[None])
    if batch.size == 0:
        return frames.copy()
    runner = NoiseRunner([(noise, severity)], max_batch_size=batch.shape[0],
                         constants=constants, rounding=rounding, seed=seed, device=device)
    out = runner.run_numpy(batch)[(noise, int(severity))]
    return out.reshape(frames.shape)


def parse_severities(text: str | Iterable[int]) -> tuple[int, ...]:
    """'1-5' / '1,3,5' / [1, 3] → sorted unique severities (each 1..5)."""
    if isinstance(text, str):
        vals: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                if "-" in part:
                    a, b = (int(v) for v in part.split("-", 1))
                    vals.extend(range(a, b + 1))
                else:
                    vals.append(int(part))
            except ValueError:
                raise ValueError(f"bad severity list {text!r}; use e.g. 1-5 or 1,3,5") from None
    else:
        vals = [int(v) for v in text]
    if not vals or any(v not in SEVERITIES for v in vals):
        raise ValueError(f"severities must lie in 1..5, got {text!r}")
    return tuple(sorted(set(vals)))


def parse_noises(text: str | Iterable[str]) -> tuple[str, ...]:
    """'gaussian,shot' → ('gaussian', 'shot') in the given order, names validated."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    bad = [n for n in names if n not in NOISES]
    if bad or not names:
        raise ValueError(f"unknown noise {bad[0] if bad else text!r}; valid: {', '.join(NOISES)}")
    return tuple(dict.fromkeys(names))
