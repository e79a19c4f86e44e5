"""Which device a run uses, said once: ``resolve_device('auto'|'cpu'|'gpu')``.

'auto' takes the GPU when one is usable (torch sees CUDA and the driver's NVDEC library
``libnvcuvid`` loads, and the GPU has decode engines) and the CPU otherwise, with the reason in
words. The GPU of a process is ``LOCAL_RANK % visible GPUs`` (G10: under SLURM each task may see
one GPU only, so LOCAL_RANK itself can be out of range). Also here: DALI's own thread count
(:func:`dali_threads`, G5) and the two helpers GPU timings and evaluations need (:func:`sync`,
:func:`autocast`, G8).

Leaf module: torch and ctypes are imported inside the functions (pipelines/ imports it lazily).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass, field

DEVICE_NAMES = ("auto", "cpu", "gpu")
# DALI threads per pipeline (G5): on GPU the mixed decoder runs one NVDEC session per thread
# (``num_threads`` workers in video_decoder_base.h), and an H100-class part has 7 NVDEC engines
DALI_THREADS = {"cpu": 2, "gpu": 8}
NVCUVID = ("libnvcuvid.so.1", "libnvcuvid.so")


@dataclass(frozen=True)
class Device:
    """The resolved device of a run.

    name 'cpu'|'gpu' (what --device, the loader and DALI code take), torch 'cpu'|'cuda:<i>',
    dali 'cpu'|'mixed' (the decoder backend), device_id the CUDA ordinal (None on CPU),
    reason one line for the screen, gpu the GPU's name ('' on CPU).
    """

    name: str
    torch: str
    dali: str
    device_id: int | None
    reason: str
    requested: str = "auto"
    gpu: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def record(self) -> dict:
        """What a run record, sweep key and checkpoint store (G7): the decoder decides pixels."""
        return {"device": self.name, "decoder": self.dali, "torch_device": self.torch,
                "device_id": self.device_id, "gpu": self.gpu, "requested": self.requested,
                "reason": self.reason}


def _error(msg: str):
    from dalivssl.errors import DalivsslError

    return DalivsslError(msg)


def cuda_usable() -> bool:
    """True when torch sees at least one CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # a broken CUDA install reads as "no GPU", never as a crash
        return False


def local_device_id(env=None) -> int:
    """``LOCAL_RANK % number of visible GPUs`` (0 without torchrun)."""
    import torch

    env = os.environ if env is None else env
    n = max(1, torch.cuda.device_count())
    return int(env.get("LOCAL_RANK", "0") or 0) % n


@functools.lru_cache(maxsize=1)
def nvcuvid_path() -> str | None:
    """The driver's NVDEC library when it loads (containers need NVIDIA_DRIVER_CAPABILITIES to
    include 'video'), else None."""
    for name in NVCUVID:
        try:
            ctypes.CDLL(name)
            return ctypes.util.find_library("nvcuvid") or name
        except OSError:
            continue
    return None


def resolve_device(name: str = "auto", env=None) -> Device:
    """'auto' | 'cpu' | 'gpu' -> :class:`Device`. 'gpu' without a usable GPU is a one-line
    :class:`DalivsslError` that says why; 'auto' then falls back to the CPU and says why."""
    name = str(name or "auto").lower()
    if name not in DEVICE_NAMES:
        raise _error(f"unknown device {name!r}; valid: {', '.join(DEVICE_NAMES)}")
    cpu = functools.partial(Device, "cpu", "cpu", "cpu", None, requested=name)
    if name == "cpu":
        return cpu("cpu: requested")
    if not cuda_usable():
        if name == "gpu":
            raise _error("--device gpu: no CUDA GPU is visible to torch; use --device cpu")
        return cpu("auto: no CUDA device")
    import torch

    idx = local_device_id(env)
    gpu = torch.cuda.get_device_name(idx)
    why_not = None
    if nvcuvid_path() is None:
        why_not = ("libnvcuvid (the driver's video decoder) cannot be loaded; in a container set "
                   "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video")
    else:
        from dalivssl.data.capabilities import nvdec_caps

        caps = nvdec_caps(idx, "h264")
        if caps and caps.get("nvdecs") == 0:
            why_not = "the GPU has no NVDEC engine (a MIG slice without media engines?)"
    if why_not:
        if name == "gpu":
            raise _error(f"--device gpu: GPU {idx} ({gpu}): {why_not}; use --device cpu")
        return cpu(f"auto: GPU {idx} ({gpu}) unusable for decoding: {why_not}", gpu=gpu)
    return Device("gpu", f"cuda:{idx}", "mixed", idx,
                  f"{name}: GPU {idx} ({gpu}), NVDEC reachable", requested=name, gpu=gpu)


def announce(name: str | None = "auto") -> Device:
    """:func:`resolve_device` for a command: the choice and its reason go to stderr once."""
    from dalivssl.console import stderr_console

    dev = resolve_device(name or "auto")
    stderr_console().print(f"device: {dev.reason}", highlight=False)
    return dev


def dali_threads(device, requested: int | None = None) -> int:
    """DALI's thread count (its own setting, apart from torch's): ``requested`` when given, else
    8 on GPU (parallel NVDEC sessions) and 2 on CPU."""
    if requested:
        return max(1, int(requested))
    return DALI_THREADS["gpu" if _is_gpu(device) else "cpu"]


def _is_gpu(device) -> bool:
    if isinstance(device, Device):
        return device.is_gpu
    return str(device).split(":")[0].lower() in ("gpu", "cuda", "mixed")


def sync(device) -> None:
    """Wait for the GPU's queued work (call before reading a timer around GPU work); no-op on
    CPU."""
    if _is_gpu(device):
        import torch

        torch.cuda.synchronize()


def autocast(device, enabled: bool = True):
    """bf16 autocast on GPU (no GradScaler needed), a no-op context on CPU: wrap the forward of
    evaluations and sweeps."""
    if not (enabled and _is_gpu(device)):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16)
