"""Array-module selection: CuPy on a GPU, NumPy otherwise, same formulas on both.

cupy-cuda13x imports on a machine without a GPU and fails only at the first device call, so
"importable" is not "usable": :func:`cupy_usable` asks the CUDA runtime for a device (and runs one
tiny kernel) inside try/except, once per process.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from dalivssl.errors import DalivsslError

GPU_NAMES = ("gpu", "cuda")


@functools.lru_cache(maxsize=1)
def cupy_usable() -> bool:
    """True when cupy imports *and* a CUDA device answers (cached)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        int(cupy.arange(2).sum())  # first real device call: fails without a driver
        return True
    except Exception as exc:  # keep why (NVRTC, kernel cache, driver): not only "no GPU" (G11)
        first = str(exc).splitlines()[0] if str(exc) else ""
        _CUPY_ERROR[:] = [f"{type(exc).__name__}: {first}"[:200]]
        import logging

        logging.getLogger(__name__).info("CuPy unusable: %s", _CUPY_ERROR[0])
        return False


_CUPY_ERROR: list[str] = []  # why cupy_usable() said False


def cupy_error() -> str:
    """Why CuPy is unusable here ('' when it is usable or was not asked yet)."""
    return _CUPY_ERROR[0] if _CUPY_ERROR else ""


def is_gpu_device(device: Any) -> bool:
    """'gpu', 'cuda', 'cuda:1' or a torch cuda device."""
    return str(device).split(":")[0].lower() in GPU_NAMES


def get_xp(device: Any = "cpu"):
    """Array module for ``device``: numpy for 'cpu'; cupy for 'gpu'/'cuda[:i]'.

    A GPU device with no usable CuPy raises :class:`DalivsslError` (one line, says why).
    """
    if not is_gpu_device(device):
        return np
    if not cupy_usable():
        raise DalivsslError(f"device {device!r}: CuPy cannot reach a CUDA GPU on this machine "
                            f"({cupy_error() or 'no error recorded'}); "
                            "use --device cpu")
    import cupy

    return cupy


def array_module(*arrays):
    """The module (numpy or cupy) that owns ``arrays`` (cupy.get_array_module when usable)."""
    if cupy_usable():
        import cupy

        return cupy.get_array_module(*arrays)
    return np


def to_numpy(a) -> np.ndarray:
    """Host copy of a numpy/cupy array (or torch tensor)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    return np.asarray(a)


def from_torch(t, xp):
    """torch tensor -> array of module ``xp`` without a copy where possible (DLPack on GPU)."""
    t = t.detach()
    if xp is np:
        return t.cpu().numpy()
    if t.device.type != "cuda":
        t = t.cuda()
    return xp.from_dlpack(t.contiguous())
