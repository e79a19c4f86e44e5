"""DALI augmentation graph driven by per-clip parameters computed in Python by the samplers.

Every op takes ONE parameter set per clip (a DALI sample = one FHWC clip here), so the augmentation
is clip-consistent: all T frames of a clip get the same crop, flip, rotation, colour jitter, blur
and solarisation (Kumar et al. 2306.06010 §3; spec/pretext_tasks.md "Per-clip consistency").

Parameters arrive as per-sample arrays with leading dimension K (``pipelines.types.PARAM_KEYS``);
``augment_clip(..., k)`` picks row ``k`` inside the graph. Only the keys a task's plans carry are
built into the graph, so a task without colour jitter pays nothing for it.

Op order (fixed, torchvision/BYOL-like): crop+resize -> flip -> rotate -> brightness/contrast ->
saturation/hue/grayscale -> gaussian blur -> solarise. Geometry runs first so every later op
works at the (small) model resolution.
"""
from __future__ import annotations

import numpy as np

# identity value and dtype of every parameter (a plan may omit any key = identity)
IDENTITY: dict[str, tuple] = {
    "crop": (np.float32, (0.0, 0.0, 1.0, 1.0)),
    "flip": (np.int32, 0),
    "angle": (np.float32, 0.0),
    "brightness": (np.float32, 1.0),
    "contrast": (np.float32, 1.0),
    "saturation": (np.float32, 1.0),
    "hue": (np.float32, 0.0),
    "gray": (np.int32, 0),
    "blur_sigma": (np.float32, 0.0),
    "solarize": (np.int32, 0),
}
# graph order of the keys (crop is always built: it also resizes to the output size)
ORDER = tuple(IDENTITY)
# gaussian_blur refuses sigma == 0; this sigma gives a 1-tap kernel, i.e. the identity
_NO_BLUR_SIGMA = 1e-3


def param_arrays(params: dict, keys, num_clips: int) -> dict[str, np.ndarray]:
    """Per-sample parameter arrays for ``keys``: (K,4) float32 for crop, (K,) otherwise.

    Missing keys are filled with the identity value, so plans of one task may differ in which
    keys they carry (e.g. a flip drawn only sometimes).
    """
    out = {}
    for key in keys:
        dtype, ident = IDENTITY[key]
        shape = (num_clips, 4) if key == "crop" else (num_clips,)
        if key in params:
            arr = np.asarray(params[key], dtype=dtype).reshape(shape)
        else:
            arr = np.broadcast_to(np.asarray(ident, dtype=dtype), shape)
        if key == "blur_sigma":
            arr = np.maximum(arr, _NO_BLUR_SIGMA).astype(dtype)
        out[key] = np.ascontiguousarray(arr)
    return out


def graph_keys(keys) -> tuple[str, ...]:
    """The keys to build, in graph order; unknown keys raise ValueError."""
    unknown = set(keys) - set(IDENTITY)
    if unknown:
        raise ValueError(f"unknown augmentation parameter(s) {sorted(unknown)}; "
                         f"valid: {', '.join(ORDER)}")
    return tuple(k for k in ORDER if k in set(keys) | {"crop"})


def augment_clip(clip, params: dict, k: int, out_size: tuple[int, int], device: str = "cpu"):
    """Augment one FHWC uint8 clip (a DataNode) with row ``k`` of the per-sample parameters.

    clip: uint8 (T, H0, W0, 3) per sample, on ``device`` ('cpu' or 'gpu').
    params: key -> external-source DataNode holding the (K, ...) array of each sample (CPU).
    Returns uint8 (T, out_h, out_w, 3).
    """
    from nvidia.dali import fn, types

    def row(key):
        return params[key][k]

    def on_dev(node):  # arithmetic operands must live where the data lives
        return node.gpu() if device == "gpu" else node

    crop = row("crop") if "crop" in params else None
    if crop is not None:
        start = crop[0:2]  # [y0, x0]: roi follows the spatial order of the layout (H, W)
        clip = fn.resize(clip, size=list(out_size), roi_start=start, roi_end=start + crop[2:4],
                         roi_relative=True, device=device)
    else:
        clip = fn.resize(clip, size=list(out_size), device=device)
    if "flip" in params:
        clip = fn.flip(clip, horizontal=row("flip"), device=device)
    if "angle" in params:
        # keep_size: the output stays out_size; multiples of 90° on a square are exact
        clip = fn.rotate(clip, angle=row("angle"), keep_size=True, fill_value=0, device=device)
    if "brightness" in params or "contrast" in params:
        # contrast around the clip mean (torchvision adjust_contrast uses the image mean); one
        # mean per clip keeps it clip-consistent. y = b * (m + c * (x - m)).
        xf = fn.cast(clip, dtype=types.FLOAT, device=device)
        y = xf
        if "contrast" in params:
            m = fn.reductions.mean(xf, device=device)
            y = m + on_dev(row("contrast")) * (xf - m)
        if "brightness" in params:
            y = y * on_dev(row("brightness"))
        clip = fn.cast(y, dtype=types.UINT8, device=device)  # saturating, rounding
    if "saturation" in params or "hue" in params or "gray" in params:
        sat = row("saturation") if "saturation" in params else 1.0
        if "gray" in params:
            # saturation 0 = grayscale (R, G, B equal within one grey level), replicated channels
            sat = sat * (1 - fn.cast(row("gray"), dtype=types.FLOAT))
        hue = row("hue") if "hue" in params else 0.0
        clip = fn.hsv(clip, hue=hue, saturation=sat, device=device)
    if "blur_sigma" in params:
        clip = fn.gaussian_blur(clip, sigma=row("blur_sigma"), device=device)
    if "solarize" in params:
        xf = fn.cast(clip, dtype=types.FLOAT, device=device)
        s = on_dev(fn.cast(row("solarize"), dtype=types.FLOAT))
        clip = fn.cast(xf + s * (xf >= 128.0) * (255.0 - 2.0 * xf), dtype=types.UINT8,
                       device=device)
    return clip
