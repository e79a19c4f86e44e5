"""What each DALI backend decodes: the one table used by `data check`, the loader's precheck,
`dalivssl doctor` and the README.

``DECODERS[device][codec]`` gives the limits of ``fn.decoders.video`` on ``device`` ('cpu' or
'gpu' = the 'mixed' NVDEC backend) for ``codec`` (the names PyAV/FFmpeg use; ``probe`` maps
decoder names onto them). Sources (DALI's ``fn.decoders.video`` documentation, NVIDIA's NVDEC support matrix):

- CPU: DALI 2.4 ships its own FFmpeg with VP8, VP9 and MJPEG only (PR #6352); frames go through
  swscale, so any pixel format and size decodes.
- GPU: ``FramesDecoderGpu::SelectVideoStream`` accepts H.264, HEVC, VP8, VP9, AV1 and MPEG-4 part 2
  (MJPEG is commented out). NVDEC enforces a minimum *coded* size per codec ("Video is too small
  in at least one dimension": VP9 128x128, HEVC 144x144, H.264/MPEG-4/VP8 48x16) and decodes
  only what ``cuvidGetDecoderCaps`` allows; Hopper (H100/H200) has no AV1, no H.264 High10/4:2:2
  and no HEVC 4:2:2. DALI creates every decoder with an NV12 (8-bit 4:2:0) output surface, so only
  8-bit 4:2:0 is accepted here; AV1 and MJPEG count on GPU only when a decode probe on this
  machine succeeded (``status == 'probe'``: :func:`probed`).

Such files must never reach NVDEC: DALI raises the size/caps errors inside libnvcuvid's parser
callback, where an exception can terminate the process (DALI #4620, G3).

A leaf table: it imports nothing of this repository (stdlib at import time, PyAV only inside
:func:`stream_info`), so every layer reads it (pipelines/loader.py lazily). The measuring code
reads it, never the reverse: ``dalivssl.devices`` asks NVDEC (``nvdec_caps``) and installs the
GPU's decode probe (:func:`use_probe`), ``dalivssl.data.decode_matrix`` decodes the cases and
``dalivssl.data.check`` the files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class Limits:
    """What one backend accepts for one codec.

    min_size: (width, height) minimum *coded* size; align: the codec's coding block (a display
    width w is coded as ceil(w / align) * align); chroma: accepted chroma subsamplings (None =
    any); bits: accepted bit depths (None = any); status: 'yes', or 'probe' = only where the
    GPU's decode probe (:func:`probed`) decoded a sample on this machine.
    """

    min_size: tuple[int, int] = (1, 1)
    align: int = 1
    chroma: frozenset | None = None
    bits: frozenset | None = None
    status: str = "yes"


_NV12 = dict(chroma=frozenset({"4:2:0"}), bits=frozenset({8}))
DECODERS: dict[str, dict[str, Limits]] = {
    "cpu": {"vp8": Limits(), "vp9": Limits(), "mjpeg": Limits()},
    "gpu": {
        "h264": Limits((48, 16), 16, **_NV12),
        "hevc": Limits((144, 144), 8, **_NV12),
        "mpeg4": Limits((48, 16), 16, **_NV12),
        "vp8": Limits((48, 16), 16, **_NV12),
        # VP9 frames are not padded to a block: the frame size itself must reach 128
        "vp9": Limits((128, 128), 1, **_NV12),
        "av1": Limits((128, 128), 1, **_NV12, status="probe"),
        "mjpeg": Limits((16, 16), 16, status="probe"),
    },
}
# what `data prepare --codec …` writes for each device: decodable there at any size >= 48x16
FIX_CODEC = {"cpu": "vp9", "gpu": "h264"}
# other spellings of the codec names above (container tags, encoder names)
ALIASES = {"avc": "h264", "avc1": "h264", "h265": "hevc", "hvc1": "hevc", "xvid": "mpeg4",
           "divx": "mpeg4", "fmp4": "mpeg4", "vp09": "vp9", "vp08": "vp8", "av01": "av1",
           "mjpg": "mjpeg", "libdav1d": "av1", "libaom-av1": "av1", "libvpx-vp9": "vp9",
           "libvpx": "vp8", "h264_cuvid": "h264", "hevc_cuvid": "hevc"}


def canonical(codec: str) -> str:
    """Lower-case codec name in the table's spelling ('avc1' -> 'h264')."""
    c = str(codec or "").strip().lower()
    return ALIASES.get(c, c)


def pix_fmt_info(pix_fmt: str) -> tuple[str | None, int | None]:
    """(chroma subsampling, bit depth) of an FFmpeg pixel format name, e.g. 'yuv420p10le' ->
    ('4:2:0', 10), 'nv12' -> ('4:2:0', 8), 'gray' -> ('4:0:0', 8); (None, None) if unknown."""
    p = str(pix_fmt or "").lower()
    if not p:
        return None, None
    if p in ("nv12", "nv21"):
        return "4:2:0", 8
    if re.fullmatch(r"p01[026](le|be)", p):
        return "4:2:0", int(p[2:4])
    m = re.search(r"(\d{1,2})(le|be)$", p)
    bits = int(m.group(1)) if m else 8
    if p.startswith(("rgb", "bgr")) and bits > 16:  # rgb48le: 48 bits per pixel
        bits //= 3
    if p.startswith("gray"):
        return "4:0:0", bits
    m = re.match(r"yuva?j?(4\d\d)", p)
    if m:
        c = m.group(1)
        return f"{c[0]}:{c[1]}:{c[2]}", bits
    if p.startswith(("rgb", "bgr", "gbr")):
        return "4:4:4", bits
    return None, None


def limits(codec: str, device: str, static: bool = False) -> Limits | None:
    """The table's entry, or None when ``device`` does not decode ``codec`` (probe entries on GPU
    count only when :func:`probed` says they decode; ``static``: without asking the probe)."""
    lim = DECODERS[device].get(canonical(codec))
    if (lim is not None and lim.status == "probe" and not static
            and not probed().get(canonical(codec))):
        return None
    return lim


def fix(device: str, more: str = "") -> str:
    """The command that makes any video decodable on ``device``."""
    more = f" {more}" if more else ""
    return f"transcode with `dalivssl data prepare MANIFEST OUT --codec {FIX_CODEC[device]}{more}`"


def problem(codec: str, width: int = 0, height: int = 0, pix_fmt: str = "",
            device: str = "cpu", static: bool = False) -> str | None:
    """Why DALI cannot decode such a video on ``device`` (one line with the fix), or None.

    Unknown values (width 0, pix_fmt '') are not held against the video. ``static``: 'probe'
    entries count as decodable (the table alone, for comparing with a measurement).
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    c = canonical(codec)
    lim = limits(c, device, static)
    if lim is None:
        if device == "cpu" and c in DECODERS["gpu"]:
            return (f"codec {c} not decodable by DALI's CPU decoder (VP8/VP9/MJPEG only); "
                    f"{fix('cpu')} or decode it on the GPU (--device gpu)")
        if device == "gpu" and c in DECODERS["gpu"]:
            return (f"codec {c} not decodable by NVDEC on this GPU (no successful decode probe); "
                    f"{fix('gpu')}")
        if device == "gpu" and c in DECODERS["cpu"]:
            return (f"codec {c} not decodable by DALI's GPU decoder; {fix('gpu')} or use "
                    f"--device cpu")
        return f"codec {c or '?'} not decodable by DALI on {device}; {fix(device)}"
    w, h = int(width or 0), int(height or 0)
    mw, mh = lim.min_size
    cw, ch = (-(-w // lim.align) * lim.align, -(-h // lim.align) * lim.align)
    if w and h and (cw < mw or ch < mh):
        return (f"{w}x{h} below the {device.upper()} decoder's {c} minimum of {mw}x{mh}; "
                f"{fix(device, '--short-side 128')}")
    chroma, bits = pix_fmt_info(pix_fmt)
    if chroma is not None and lim.chroma is not None and chroma not in lim.chroma:
        return (f"pixel format {pix_fmt} ({chroma}) not decodable by DALI's GPU decoder for {c} "
                f"(8-bit 4:2:0 only); {fix(device)}")
    if bits is not None and lim.bits is not None and bits not in lim.bits:
        return (f"pixel format {pix_fmt} ({bits}-bit) not decodable by DALI's GPU decoder for {c} "
                f"(8-bit 4:2:0 only); {fix(device)}")
    return None


def stream_info(path) -> dict:
    """{codec, width, height, pix_fmt} of the first video stream from the container header
    (PyAV, no decoding); {} when the file cannot be opened."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return {}
            ctx = c.streams.video[0].codec_context
            return {"codec": canonical(ctx.name), "width": int(ctx.width or 0),
                    "height": int(ctx.height or 0), "pix_fmt": str(ctx.pix_fmt or "")}
    except Exception:  # unreadable files are the loader's and check's own reasons
        return {}


def record_problem(rec, path, device: str) -> str | None:
    """:func:`problem` for a manifest record; on GPU, fields the record lacks (old manifests have
    no pix_fmt) are read from the file's header first, so nothing unchecked reaches NVDEC."""
    info = {"codec": getattr(rec, "codec", "") or "", "width": getattr(rec, "width", 0) or 0,
            "height": getattr(rec, "height", 0) or 0,
            "pix_fmt": (getattr(rec, "extra", None) or {}).get("pix_fmt", "")}
    if device == "gpu" and not (info["codec"] and info["width"] and info["pix_fmt"]):
        info.update({k: v for k, v in stream_info(path).items() if v})
    if not info["codec"]:
        return None  # probing failed: the loader's own file checks and the decode report it
    return problem(info["codec"], info["width"], info["height"], info["pix_fmt"], device)


def table_rows() -> list[dict]:
    """The table as rows (device, codec, min_size, chroma, bits, status) for doctor and docs."""
    rows = []
    for dev, codecs in DECODERS.items():
        for codec, lim in codecs.items():
            rows.append({"device": dev, "codec": codec,
                         "min_size": f"{lim.min_size[0]}x{lim.min_size[1]}",
                         "chroma": "any" if lim.chroma is None else "/".join(sorted(lim.chroma)),
                         "bits": ("any" if lim.bits is None
                                  else "/".join(map(str, sorted(lim.bits)))),
                         "status": lim.status})
    return rows


# ---------------------------------------------------------------------------- GPU decode probe
PROBE_ENV = "DALIVSSL_GPU_PROBE"  # 'av1,mjpeg' = treat as decodable, '' = none (skip the probe)
PROBE_CODECS = tuple(c for c, lim in DECODERS["gpu"].items() if lim.status == "probe")
_probe = None  # () -> {codec: decoded}: the GPU's decode probe, installed by dalivssl.devices


def use_probe(measure) -> None:
    """Let ``measure() -> {codec: decoded}`` decide the 'probe' entries, asked on first need (it
    caches its own answer). ``dalivssl.devices`` installs its GPU decode probe when a GPU is
    resolved and before a GPU check; this table imports none of the measuring code. None: no
    probe (every probe entry undecodable)."""
    global _probe
    _probe = measure


def probed() -> dict[str, bool]:
    """{codec: decoded on this machine's GPU} for the 'probe' entries: ``$DALIVSSL_GPU_PROBE``
    (comma list) when set, else the installed probe's answer, else all False (nothing measured in
    this process: such files never reach NVDEC)."""
    if PROBE_ENV in os.environ:
        ok = {canonical(c) for c in os.environ[PROBE_ENV].split(",") if c.strip()}
        return {c: c in ok for c in PROBE_CODECS}
    got = _probe() if _probe is not None else {}
    return {c: bool(got.get(c)) for c in PROBE_CODECS}
