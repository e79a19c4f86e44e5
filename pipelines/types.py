"""Plain data types shared by samplers, the DALI pipeline and the loader (numpy only).

A sampler turns (record, rng) into a :class:`ClipPlan`; the pipeline executes plans; the loader
yields :class:`Batch` objects. The rng of sample ``i`` in epoch ``e`` is ``sample_rng(seed, e, i)``,
so any sample of any epoch can be regenerated exactly (reproducible, resumable mid-epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

# ImageNet per-channel RGB statistics on the [0,1] scale ('imagenet' normalisation of the tasks)
NORMALIZE_MODES = ("imagenet", "unit")  # input normalisations (loader.normalize_clips)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_stats(mode: str, scale: float = 1.0) -> tuple[tuple, tuple]:
    """(mean, std) per RGB channel of normalisation ``mode`` for pixels on [0, ``scale``]: the one
    table behind DALI's crop_mirror_normalize, ``loader.normalize_clips`` and CKA's input hook.
    'imagenet': the ImageNet statistics (RotNet/CtP, TDL, RSPNet); 'unit': x / scale (VCOP, PRP,
    CVRL)."""
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"unknown normalisation {mode!r}; valid: {', '.join(NORMALIZE_MODES)}")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if mode == "imagenet" else ((0.0,) * 3, (1.0,) * 3)
    return tuple(m * scale for m in mean), tuple(d * scale for d in std)

# Augmentation parameter keys a plan may carry in ``ClipPlan.params``. Every array has leading
# dimension K (one value set per clip: clip-consistent augmentation). A missing key = identity.
PARAM_KEYS = {
    "crop": "float32 (K,4): crop box [y0, x0, h, w] relative to the frame (0..1), then resized "
            "to the output size",
    "flip": "int32 (K,): horizontal flip 0/1",
    "angle": "float32 (K,): rotation in degrees about the centre, after the crop (RotNet 0/90/"
             "180/270; TDL ±10)",
    "brightness": "float32 (K,): multiplicative brightness factor (1 = identity)",
    "contrast": "float32 (K,): contrast factor around the mean (1 = identity)",
    "saturation": "float32 (K,): saturation factor (1 = identity)",
    "hue": "float32 (K,): hue shift in degrees (0 = identity)",
    "gray": "int32 (K,): convert to grayscale (replicated to 3 channels) 0/1",
    "gamma": "float32 (K,): gamma γ, y = 255·(x/255)^γ (1 = identity; CVRL under the paper)",
    "blur_sigma": "float32 (K,): gaussian blur sigma in output pixels (0 = no blur)",
    "solarize": "int32 (K,): solarise (v -> 255 - v for v >= 128) 0/1",
}


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The rng of sample ``index`` in ``epoch`` for run ``seed`` (independent streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


class RecordLike(Protocol):
    """What samplers need of a manifest record (dalivssl.data.VideoRecord satisfies it)."""

    path: str
    num_frames: int
    label: int
    start_frame: int
    end_frame: int


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to produce one training sample.

    frames: int64 (K, T) frame indices into the file (absolute, already offset by the record's
        start_frame). All K clips are decoded in one decoder call.
    label: the pretext label (int; e.g. VCOP permutation index, rotation class, rate class).
    params: per-clip augmentation parameters, keys from PARAM_KEYS, leading dim K.
    extra_frames: name -> int64 (N,) additional frame indices decoded in the same call and
        returned as extra clips (e.g. PRP's 32-frame reconstruction target).
    extras: name -> numpy array of per-sample values returned with the batch (e.g. PRP recon
        flags, RSPNet speeds). Shapes must be equal across samples of a task.
    """

    frames: np.ndarray
    label: int = 0
    params: dict[str, np.ndarray] = field(default_factory=dict)
    extra_frames: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_clips(self) -> int:
        return int(self.frames.shape[0])

    @property
    def clip_len(self) -> int:
        return int(self.frames.shape[1])

    def all_frames(self) -> np.ndarray:
        """Every frame index the decoder must produce, in output order (clips then extras)."""
        parts = [self.frames.reshape(-1)] + [np.asarray(v).reshape(-1)
                                             for v in self.extra_frames.values()]
        return np.concatenate(parts).astype(np.int64)


@dataclass
class Batch:
    """One batch as torch tensors on the pipeline's device.

    clips: float (B, K, C, T, H, W), normalised per the task.
    labels: int64 (B,) pretext labels. targets: int64 (B,) class labels from the manifest (-1 if
    none). indices: int64 (B,) positions of the samples in the manifest.
    frames: int64 (B, K, T) decoded frame indices when the loader has return_indices=True.
    extra_clips: name -> float (B, C, N, H, W) extra decoded frames (plan.extra_frames).
    extras: name -> tensor (B, ...) from plan.extras.
    """

    clips: Any
    labels: Any
    targets: Any
    indices: Any
    frames: Any = None
    extra_clips: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clips.shape[0])

    def to(self, device) -> "Batch":
        """Move every tensor to ``device`` (no-op for tensors already there)."""
        mv = lambda t: t.to(device, non_blocking=True) if hasattr(t, "to") else t  # noqa: E731
        return Batch(mv(self.clips), mv(self.labels), mv(self.targets), mv(self.indices),
                     mv(self.frames), {k: mv(v) for k, v in self.extra_clips.items()},
                     {k: mv(v) for k, v in self.extras.items()})
