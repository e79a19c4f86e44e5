"""DALI augmentation graph driven by per-clip parameters computed in Python by the samplers.

Every op takes ONE parameter set per clip (a DALI sample = one FHWC clip here), so the augmentation
is clip-consistent: all T frames of a clip get the same crop, flip, rotation, colour jitter, blur
and solarisation (Kumar et al. 2306.06010 §3, per-clip consistency).

Parameters arrive as per-sample arrays with leading dimension K (``pipelines.types.PARAM_KEYS``);
``augment_clip(..., k)`` picks row ``k`` inside the graph. Only the keys a task's plans carry are
built into the graph, so a task without colour jitter pays nothing for it.

Op order (fixed, torchvision/BYOL-like): crop+resize -> flip -> rotate -> colour (brightness,
contrast, saturation, hue, grayscale fused into one affine colour map per clip, see
``colour_affine``) -> gamma -> gaussian blur -> solarise. Geometry runs first so every later op
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
    "gamma": (np.float32, 1.0),
    "blur_sigma": (np.float32, 0.0),
    "solarize": (np.int32, 0),
}
# graph order of the keys (crop is always built: it also resizes to the output size)
ORDER = tuple(IDENTITY)
# gaussian_blur refuses sigma == 0; this sigma gives a 1-tap kernel, i.e. the identity
_NO_BLUR_SIGMA = 1e-3


COLOUR_KEYS = ("brightness", "contrast", "saturation", "hue", "gray")
# RGB -> YIQ (NTSC); Y is the luma (the grey level of grayscale and of the contrast mean)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
LUMA = tuple(float(v) for v in _YIQ[0])


def colour_affine(brightness, contrast, saturation, hue, gray):
    """Per-clip colour jitter as one affine map y = M·x + t·m, with m the clip's mean luma.

    torchvision order: brightness b (x·b), contrast c around the mean (c·x + (1−c)·mean),
    saturation s and hue h as a rotation/scaling of the YIQ chroma plane (exactly what DALI's
    fn.hsv computes: ours matches it within 0.25 grey levels), then grayscale (chroma = 0). Every
    step is linear and maps grey to grey, so the composition is
    M = c·b·YIQ⁻¹·diag(1, R)·YIQ and t = (1−c)·b·[1, 1, 1]. Clamping happens once at the
    end instead of after each step (differs from torchvision only where a step saturates).
    Arrays of shape (K,) in, (K, 3, 3) and (K, 3) float32 out.
    """
    b, c, sat, h, g = (np.asarray(v, np.float64) for v in (brightness, contrast, saturation,
                                                              hue, gray))
    s = sat * (1.0 - g)
    th = np.deg2rad(h)
    k = b.shape[0]
    R = np.zeros((k, 3, 3))
    R[:, 0, 0] = 1.0
    R[:, 1, 1] = R[:, 2, 2] = s * np.cos(th)
    R[:, 1, 2] = s * np.sin(th)
    R[:, 2, 1] = -s * np.sin(th)
    M = (c * b)[:, None, None] * (_YIQ_INV[None] @ R @ _YIQ[None])
    t = np.repeat(((1.0 - c) * b)[:, None], 3, axis=1)
    return M.astype(np.float32), t.astype(np.float32)


def graph_keys(keys) -> tuple[str, ...]:
    """The parameter keys to build, in graph order (crop always: it also resizes to the output
    size); unknown keys raise ValueError."""
    unknown = set(keys) - set(IDENTITY)
    if unknown:
        raise ValueError(f"unknown augmentation parameter(s) {sorted(unknown)}; "
                         f"valid: {', '.join(ORDER)}")
    return tuple(k for k in ORDER if k in set(keys) | {"crop"})


def graph_inputs(keys) -> dict[str, tuple[str, int]]:
    """External-source inputs the graph needs for ``keys``: name -> (dtype 'float'|'int', ndim)."""
    keys = graph_keys(keys)
    out = {}
    for key in keys:
        if key in COLOUR_KEYS:
            out["colour_m"] = ("float", 3)
            if "contrast" in keys:  # the offset is only needed (and only wired) for contrast
                out["colour_t"] = ("float", 2)
        else:
            out[key] = ("float" if IDENTITY[key][0] == np.float32 else "int",
                        2 if key == "crop" else 1)
    return out


def param_arrays(params: dict, keys, num_clips: int) -> dict[str, np.ndarray]:
    """Per-sample arrays for the graph inputs of ``keys`` (see ``graph_inputs``).

    Missing keys are filled with the identity value, so plans of one task may differ in which
    keys they carry. Colour keys become the (K, 3, 3) matrix and (K, 3) offset of
    ``colour_affine``.
    """
    vals = {}
    for key in set(graph_keys(keys)) | set(COLOUR_KEYS if set(keys) & set(COLOUR_KEYS) else ()):
        dtype, ident = IDENTITY[key]
        shape = (num_clips, 4) if key == "crop" else (num_clips,)
        if key in params:
            arr = np.asarray(params[key], dtype=dtype).reshape(shape)
        else:
            arr = np.broadcast_to(np.asarray(ident, dtype=dtype), shape)
        if key == "blur_sigma":
            arr = np.maximum(arr, _NO_BLUR_SIGMA).astype(dtype)
        vals[key] = np.ascontiguousarray(arr)
    inputs = graph_inputs(keys)
    out = {k: vals[k] for k in inputs if k in vals}
    if "colour_m" in inputs:
        m, t = colour_affine(*(vals[k] for k in COLOUR_KEYS))
        out["colour_m"] = m
        if "colour_t" in inputs:
            out["colour_t"] = t
    return out


def augment_clip(clip, params: dict, k: int, out_size: tuple[int, int], device: str = "cpu",
                 contrast: bool = True, antialias: bool = True):
    """Augment one FHWC uint8 clip (a DataNode) with row ``k`` of the per-sample parameters.

    clip: uint8 (T, H0, W0, 3) per sample, on ``device`` ('cpu' or 'gpu').
    params: input name (``graph_inputs``) -> external-source DataNode holding the (K, ...) array
    of each sample (CPU). contrast: whether the plans jitter contrast (the colour offset then
    needs the clip's mean luma). antialias: ``fn.resize``'s filter when shrinking. Returns
    uint8 (T, out_h, out_w, 3).
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
                         roi_relative=True, antialias=antialias, device=device)
    else:
        clip = fn.resize(clip, size=list(out_size), antialias=antialias, device=device)
    if "flip" in params:
        clip = fn.flip(clip, horizontal=row("flip"), device=device)
    if "angle" in params:
        # keep_size: the output stays out_size; multiples of 90° on a square are exact
        clip = fn.rotate(clip, angle=row("angle"), keep_size=True, fill_value=0, device=device)
    if "colour_m" in params:
        clip = _colour(clip, row("colour_m"), row("colour_t") if contrast else None, device)
    if "gamma" in params:
        clip = _gamma(clip, on_dev(row("gamma")), device)
    if "blur_sigma" in params:
        clip = fn.gaussian_blur(clip, sigma=row("blur_sigma"), device=device)
    if "solarize" in params:
        xf = fn.cast(clip, dtype=types.FLOAT, device=device)
        s = on_dev(fn.cast(row("solarize"), dtype=types.FLOAT))
        clip = fn.cast(xf + s * (xf >= 128.0) * (255.0 - 2.0 * xf), dtype=types.UINT8,
                       device=device)
    return clip


def _colour(clip, M, t, device: str):
    """y = M·x + t·m in one pass (fn.coord_transform over the channel axis), m = mean luma."""
    from nvidia.dali import fn, types

    if t is None:
        return fn.coord_transform(clip, M=M, dtype=types.UINT8, device=device)
    means = fn.reductions.mean(clip, axes=[0, 1, 2], dtype=types.FLOAT, device=device)  # (3,)
    m = means[0] * LUMA[0] + means[1] * LUMA[1] + means[2] * LUMA[2]
    if device == "cpu":  # T must be a CPU argument
        return fn.coord_transform(clip, M=M, T=t * m, dtype=types.UINT8)
    y = fn.coord_transform(clip, M=M, dtype=types.FLOAT, device=device)
    return fn.cast(y + t.gpu() * m, dtype=types.UINT8, device=device)  # saturating, rounding


def _gamma(clip, gamma, device: str):
    """Gamma adjustment y = 255·(x/255)^γ per clip (the paper's CVRL "gamma adjustment", supp.
    C.3; torchvision ``adjust_gamma`` with gain 1), rounded to uint8."""
    from nvidia.dali import fn, math as dmath, types

    xf = fn.cast(clip, dtype=types.FLOAT, device=device) * (1.0 / 255.0)
    return fn.cast(dmath.pow(xf, gamma) * 255.0, dtype=types.UINT8, device=device)


# ------------------------------------------------------------------------------------------------
# the same augmentation in torch, for the CPU backend

# keys the torch path implements (the others, and noise, keep the DALI graph)
TORCH_KEYS = frozenset(("crop", "flip") + COLOUR_KEYS)


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A relative crop box [y0, x0, h, w] on whole pixels of a ``height`` × ``width`` frame:
    (top, left, h, w), rounded to the nearest pixel, at least one pixel, inside the frame."""
    y0, x0, h, w = (float(v) for v in box)
    top, left = int(round(y0 * height)), int(round(x0 * width))
    return (top, left, max(1, min(height - top, int(round(h * height)))),
            max(1, min(width - left, int(round(w * width)))))


def torch_covers(keys) -> bool:
    """Whether :func:`torch_augment_clip` implements every key of ``keys``."""
    return set(graph_keys(keys)) <= TORCH_KEYS


def torch_augment_clip(frames, arrays: dict, k: int, out_size: tuple[int, int],
                       contrast: bool = True, index=None, rounded: bool = True):
    """:func:`augment_clip` in torch for the CPU backend: uint8 (T, H0, W0, 3) decoded frames
    (``index``: the frames of ``frames`` that form the clip) and row ``k`` of ``param_arrays``
    -> uint8 (T, out_h, out_w, 3); ``rounded=False``: the colour map's float result clamped to
    [0, 255] without the rounding to uint8 (for a caller that normalises next).

    Geometry runs on uint8 before any float conversion (torchvision's uint8 antialiased bilinear
    resize, the filter of DALI's ``fn.resize`` with ``antialias=True``): the crop box is rounded to
    whole source pixels (DALI's roi is fractional, so edges can differ by under a pixel), then the
    flip, then the fused colour map of :func:`colour_affine` on the model-resolution clip, rounded
    and saturated to uint8 as DALI's cast does. Keys outside ``TORCH_KEYS`` raise ValueError.
    """
    import torch
    import torchvision.transforms.v2.functional as F

    extra = set(arrays) - {"crop", "flip", "colour_m", "colour_t"}
    if extra:
        raise ValueError(f"torch augmentation lacks {sorted(extra)}; use the DALI graph")
    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    top, left, hh, ww = pixel_box(arrays["crop"][k], int(x.shape[1]), int(x.shape[2]))
    if index is not None:
        index = np.asarray(index, np.int64)
        if index.size and (np.diff(index) == 1).all():  # a run of frames: a view, no copy
            x = x[int(index[0]):int(index[-1]) + 1]
        else:  # whole frames (a memcpy each), then one copy of the crop below
            x = x.index_select(0, torch.from_numpy(index))
    x = x[:, top:top + hh, left:left + ww].contiguous()
    # T 3 h w in channels-last memory: torchvision's vectorised uint8 path
    x = F.resize(x.permute(0, 3, 1, 2), list(out_size), antialias=True).permute(0, 2, 3, 1)
    if "flip" in arrays and int(arrays["flip"][k]):
        x = x.flip(2)
    if "colour_m" in arrays:
        xf = x.float()
        y = xf @ torch.from_numpy(np.asarray(arrays["colour_m"][k], np.float32)).T
        if contrast and "colour_t" in arrays:
            m = xf.mean(dim=(0, 1, 2)) @ torch.tensor(LUMA, dtype=torch.float32)
            y += torch.from_numpy(np.asarray(arrays["colour_t"][k], np.float32)) * m
        x = y.clamp_(0, 255)
        if rounded:
            x = x.round_().to(torch.uint8)
    return x
