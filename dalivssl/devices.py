"""Which device a run uses, said once: ``resolve_device('auto'|'cpu'|'gpu')``.

'auto' takes the GPU when one is usable (torch sees CUDA and the driver's NVDEC library
``libnvcuvid`` loads, and the GPU has decode engines) and the CPU otherwise, with the reason in
words. The GPU of a process is ``LOCAL_RANK % visible GPUs`` (G10: under SLURM each task may see
one GPU only, so LOCAL_RANK itself can be out of range). Also here: DALI's own thread count
(:func:`dali_threads`, G5) and the two helpers GPU timings and evaluations need (:func:`sync`,
:func:`autocast`, G8).

The GPU measurements that fill the decoder table ``dalivssl.data.capabilities`` (a leaf this
module reads, never the reverse) live here too: NVDEC's own limits (:func:`nvdec_caps`) and the
decode probe of the table's 'probe' entries (:func:`gpu_probe`, run in a child process).

Base layer: stdlib at import time; torch is imported inside the functions (pipelines/ imports
this module lazily).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

DEVICE_NAMES = ("auto", "cpu", "gpu")
# DALI threads per pipeline (G5): on GPU the mixed decoder runs one NVDEC session per thread
# (``num_threads`` workers in video_decoder_base.h), and an H100-class part has 7 NVDEC engines
DALI_THREADS = {"cpu": 2, "gpu": 8}
NVCUVID = ("libnvcuvid.so.1", "libnvcuvid.so")
PROBE_TIMEOUT_S = 300.0  # the decode probe's child: writes and decodes two tiny clips


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
        caps = nvdec_caps(idx, "h264")
        if caps and caps.get("nvdecs") == 0:
            why_not = "the GPU has no NVDEC engine (a MIG slice without media engines?)"
    if why_not:
        if name == "gpu":
            raise _error(f"--device gpu: GPU {idx} ({gpu}): {why_not}; use --device cpu")
        return cpu(f"auto: GPU {idx} ({gpu}) unusable for decoding: {why_not}", gpu=gpu)
    use_gpu_probe()
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


# ------------------------------------------------------------------------ GPU decode probe
@functools.lru_cache(maxsize=1)
def gpu_probe() -> dict[str, bool]:
    """{codec: decoded} for the capability table's 'probe' entries (AV1, MJPEG) on this
    process's GPU (``LOCAL_RANK``). Each is decoded once from a tiny generated clip at 256 px by
    ``python -m dalivssl.data.decode_matrix probe`` (one cell of the decode matrix per codec), in
    a child process: PyAV and DALI stay out of this one, and an abort or hang there is a False
    here. Without a usable GPU every entry is False and nothing runs."""
    from dalivssl.data.capabilities import PROBE_CODECS

    none = dict.fromkeys(PROBE_CODECS, False)
    if not cuda_usable():
        return none
    try:
        out = subprocess.run([sys.executable, "-m", "dalivssl.data.decode_matrix", "probe"],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return none
    answer = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), "{}")
    got = json.loads(answer)
    return {c: bool(got.get(c)) for c in PROBE_CODECS}


def use_gpu_probe() -> None:
    """Let :func:`gpu_probe` decide the table's 'probe' entries (run on first need): called when
    a GPU is resolved and by the GPU checks of ``dalivssl.data``."""
    from dalivssl.data.capabilities import use_probe

    use_probe(gpu_probe)


# ------------------------------------------------------------------ NVDEC's own limits (ctypes)
# cudaVideoCodec and cudaVideoChromaFormat enums of nvcuvid's cuviddec.h
_CUVID_CODEC = {"mpeg4": 2, "h264": 4, "mjpeg": 5, "hevc": 8, "vp8": 9, "vp9": 10, "av1": 11}
_CUVID_CHROMA = {"4:0:0": 0, "4:2:0": 1, "4:2:2": 2, "4:4:4": 3}


class _DecodeCaps(ctypes.Structure):
    """CUVIDDECODECAPS (cuviddec.h, Video Codec SDK 11+), 88 bytes, plus slack."""

    _fields_ = [("eCodecType", ctypes.c_int), ("eChromaFormat", ctypes.c_int),
                ("nBitDepthMinus8", ctypes.c_uint), ("reserved1", ctypes.c_uint * 3),
                ("bIsSupported", ctypes.c_ubyte), ("nNumNVDECs", ctypes.c_ubyte),
                ("nOutputFormatMask", ctypes.c_ushort), ("nMaxWidth", ctypes.c_uint),
                ("nMaxHeight", ctypes.c_uint), ("nMaxMBCount", ctypes.c_uint),
                ("nMinWidth", ctypes.c_ushort), ("nMinHeight", ctypes.c_ushort),
                ("bIsHistogramSupported", ctypes.c_ubyte), ("nCounterBitDepth", ctypes.c_ubyte),
                ("nMaxHistogramBins", ctypes.c_ushort), ("reserved3", ctypes.c_uint * 10),
                ("_slack", ctypes.c_ubyte * 64)]


def nvdec_caps(device_id: int = 0, codec: str = "h264", chroma: str = "4:2:0",
               bits: int = 8) -> dict | None:
    """NVDEC's answer for one configuration (``cuvidGetDecoderCaps``): {supported, nvdecs,
    min_size, max_size} or None where the driver libraries or a GPU are missing. Uses the GPU's
    primary context, which torch shares."""
    from dalivssl.data.capabilities import canonical

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        cuvid = ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        return None
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    if (cuda.cuInit(0) or cuda.cuDeviceGet(ctypes.byref(dev), int(device_id))
            or cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)):
        return None
    try:
        if cuda.cuCtxPushCurrent_v2(ctx):
            return None
        caps = _DecodeCaps()
        caps.eCodecType = _CUVID_CODEC[canonical(codec)]
        caps.eChromaFormat = _CUVID_CHROMA[chroma]
        caps.nBitDepthMinus8 = int(bits) - 8
        rc = cuvid.cuvidGetDecoderCaps(ctypes.byref(caps))
        cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    finally:
        cuda.cuDevicePrimaryCtxRelease_v2(dev)
    if rc:
        return None
    return {"supported": bool(caps.bIsSupported), "nvdecs": int(caps.nNumNVDECs),
            "min_size": (int(caps.nMinWidth), int(caps.nMinHeight)),
            "max_size": (int(caps.nMaxWidth), int(caps.nMaxHeight))}
