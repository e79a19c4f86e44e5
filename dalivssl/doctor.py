"""What this machine offers the toolkit (``dalivssl doctor``, benchmarks/gpu_check.py).

Versions (Python, torch + CUDA, DALI, CuPy, PyAV + its FFmpeg, the ffmpeg binary, torchcodec),
GPUs (name, memory, MIG mode, driver), whether NVDEC is reachable (libnvcuvid) and what it says of
each codec (``cuvidGetDecoderCaps``), what ``--device auto`` picks, the capability table, and a
decode matrix made on the spot (``dalivssl.data.decode_matrix``: every codec case x size, decoded
by every backend here in child processes and compared with PyAV), and the decode verdicts this
machine has verified on users' files (``dalivssl.data.verify``'s cache).
"""
from __future__ import annotations

import platform
import shutil
import subprocess


def _version(module: str, attr: str = "__version__") -> str | None:
    """The version an import reports (None when the import fails: what doctor must show)."""
    import importlib

    try:
        return str(getattr(importlib.import_module(module), attr))
    except Exception:
        return None


def _dist_version(*dists: str) -> str | None:
    """An installed distribution's version from its metadata, without importing it."""
    from importlib import metadata

    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """{package: version or None}: the run record's versions (``record.versions``) plus what
    the GPU path imports (each imported, so a broken install reads None), PyAV's libavcodec,
    the ffmpeg binary and torchcodec (metadata only: importing it loads torch's compiler
    stack, about 2 s, and it is a benchmark peer, not a dependency of the loader)."""
    from dalivssl.record import versions as record_versions

    out = {"python": platform.python_version(), **record_versions(),
           "torch": _version("torch"), "torch_cuda": _version("torch.version", "cuda"),
           "dali": _version("nvidia.dali"), "cupy": _version("cupy"), "pyav": _version("av"),
           "torchcodec": _dist_version("torchcodec")}
    try:
        import av

        lib = av.library_versions.get("libavcodec")
        out["pyav_libavcodec"] = ".".join(map(str, lib)) if lib else None
    except Exception:
        out["pyav_libavcodec"] = None
    ff = shutil.which("ffmpeg")
    first = _run([ff, "-hide_banner", "-version"]).split("\n")[0] if ff else ""
    out["ffmpeg"] = " ".join(first.split()[2:3]) or None  # 'ffmpeg version 5.1.9 Copyright …'
    return out


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


def gpus() -> list[dict]:
    """One dict per visible GPU: name, memory, compute capability, and from nvidia-smi the
    driver and MIG mode."""
    from dalivssl.devices import cuda_usable

    if not cuda_usable():
        return []
    import torch

    smi = {}
    if shutil.which("nvidia-smi"):
        q = "index,driver_version,mig.mode.current,uuid"
        for line in _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"]).splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4:
                smi[parts[0]] = {"driver": parts[1], "mig": parts[2]}
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    **smi.get(str(i), {"driver": None, "mig": None})})
    return out


def nvdec(device_id: int) -> dict:
    """libnvcuvid's path and NVDEC's own answer per table codec (8-bit 4:2:0)."""
    from dalivssl.data.capabilities import DECODERS
    from dalivssl.devices import nvcuvid_path, nvdec_caps

    path = nvcuvid_path()
    caps = {c: nvdec_caps(device_id, c) for c in DECODERS["gpu"]} if path else {}
    return {"libnvcuvid": path, "caps": caps}


def report(matrix: bool = True, cases=None, sizes=None, progress=None) -> dict:
    """Everything doctor knows, as one JSON-able dict."""
    from dalivssl.engine.arrays import cupy_error, cupy_usable
    from dalivssl.data.capabilities import table_rows
    from dalivssl.devices import resolve_device

    dev = resolve_device("auto")
    out = {"versions": versions(), "gpus": gpus(), "device_auto": dev.record(),
           "nvdec": nvdec(dev.device_id or 0) if dev.is_gpu or gpus() else
           {"libnvcuvid": None, "caps": {}},
           "cupy": {"usable": cupy_usable(), "error": cupy_error()},
           "table": table_rows(), "verdicts": verdict_rows()}
    if matrix:
        from dalivssl.data import decode_matrix as dm

        kw = {"sizes": tuple(sizes)} if sizes else {}
        out["matrix"] = dm.run_matrix(cases, progress=progress, **kw)
    return out


def verdict_rows() -> list[dict]:
    """This machine's cached decode verdicts (``dalivssl.data.verify.Cache``), one per backend x
    GPU x driver x DALI x decoder x class."""
    from dalivssl.data.verify import Cache

    return Cache().rows()


def render_verdicts(rows: list[dict]) -> list[str]:
    from dalivssl.data.verify import cache_path

    lines = [f"decode verdicts on users' files ({cache_path()}; `dalivssl data check MANIFEST "
             "--verify N` adds them):"]
    if not rows:
        return lines + ["  none yet"]
    for r in rows:
        where = r["backend"] + (f" {r['gpu']} driver {r['driver']}" if r["gpu"] else "")
        hook = "" if r["decoder"] == "dali" else f" [decoder {r['decoder']}]"
        lines.append(f"  {where}, DALI {r['dali']}{hook}: {r['class']}: {r['verdict']} "
                     f"({r['clips']} clips, {r['when']})")
    return lines


def render(rep: dict) -> str:
    """The report as plain-text tables."""
    lines = ["versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()
                                       if v is not None)]
    missing = [k for k, v in rep["versions"].items() if v is None]
    if missing:
        lines.append("not installed: " + ", ".join(missing))
    if rep["gpus"]:
        for g in rep["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, "
                         f"sm {g['capability']}, driver {g['driver']}, MIG {g['mig']}")
    else:
        lines.append("GPUs: none visible to torch")
    nv = rep["nvdec"]
    lib = nv["libnvcuvid"]
    lines.append(f"NVDEC: libnvcuvid {f'found ({lib})' if lib else 'not found'}")
    for codec, c in nv["caps"].items():
        lines.append(f"  {codec:6s} " + ("no answer" if not c else
                     f"supported {c['supported']}, {c['nvdecs']} NVDEC(s), min "
                     f"{c['min_size'][0]}x{c['min_size'][1]}, max {c['max_size'][0]}x"
                     f"{c['max_size'][1]}"))
    d = rep["device_auto"]
    lines.append(f"--device auto -> {d['device']} (decoder {d['decoder']}): {d['reason']}")
    cp = rep["cupy"]
    lines.append("CuPy: usable" if cp["usable"] else f"CuPy: not usable ({cp['error']})")
    lines.append("")
    lines.append("capability table (dalivssl.data.capabilities):")
    lines.append(f"  {'device':6s} {'codec':6s} {'min size':9s} {'chroma':6s} {'bits':4s} status")
    for r in rep["table"]:
        lines.append(f"  {r['device']:6s} {r['codec']:6s} {r['min_size']:9s} {r['chroma']:6s} "
                     f"{r['bits']:4s} {r['status']}")
    lines += [""] + render_verdicts(rep.get("verdicts", []))
    if "matrix" in rep:
        lines += [""] + render_matrix(rep["matrix"])
    return "\n".join(lines)


def fail_reasons(m: dict) -> list[str]:
    """Why the FAIL (and 'GPU only') cells failed: one line per backend and reason, naming its
    cases and sizes. A codec the backend's decoder lacks says so (the capability table); any other
    failure quotes DALI's message."""
    from dalivssl.data.capabilities import DECODERS

    groups: dict = {}
    for r in m["cells"]:
        for d in m["backends"]:
            if r[d]["status"] != "FAIL":
                continue
            codec = r.get("codec")
            if codec not in DECODERS.get(d, {}):
                why = f"DALI's {d.upper()} decoder has no {codec} (it reads " \
                      f"{', '.join(DECODERS.get(d, {})) or 'nothing here'})"
            else:
                why = " ".join((r[d].get("detail") or "no reason reported").split())[:140]
            groups.setdefault((d, why), {}).setdefault(r["case"], []).append(str(r["size"]))
    out = []
    for (d, why), cases in groups.items():
        where = ", ".join(f"{c} ({'/'.join(sizes)})" for c, sizes in cases.items())
        out.append(f"  FAIL on {d}: {where}: {why}")
    return out


def render_matrix(m: dict) -> list[str]:
    from dalivssl.data.decode_matrix import agrees, verdict

    devs = list(m["backends"])
    lines = ["decode matrix (made now; DALI vs PyAV frame by frame; table = what the capability "
             "table expects):"]
    head = f"  {'case':13s} {'size':>4s}  " + "  ".join(f"{d:9s}" for d in devs) + \
        "  table (" + "/".join(devs) + ")  mean|d|"
    lines.append(head)
    mismatches = 0
    for r in m["cells"]:
        cells = []
        for d in devs:
            v = verdict(r, d)
            ok = agrees(r, d)
            if ok is False:
                mismatches += 1
                v += " !"
            cells.append(f"{v:9s}")
        exp = "/".join(r["expected"][d] for d in devs)
        mean = [str(r[d].get("mean_abs")) for d in devs if r[d].get("mean_abs") is not None]
        lines.append(f"  {r['case']:13s} {r['size']:>4}  " + "  ".join(cells) +
                     f"  {exp:14s} {','.join(mean)}")
    for d, why in m["backends"].items():
        if why:
            lines.append(f"  {d}: SKIP ({why})")
    lines += fail_reasons(m)
    lines.append(f"  {mismatches} cell(s) disagree with the table (marked !)" if mismatches
                 else "  every measured cell agrees with the table")
    # the reasons worth reading: disagreements with the table, aborts, hangs, wrong frames
    notes = {(r["case"], r["size"], d, r[d].get("detail", "")) for r in m["cells"] for d in devs
             if r[d].get("detail") and (agrees(r, d) is False
                                        or r[d]["status"] in ("ABORT", "HANG", "BAD", "ENC"))}
    for case, size, d, detail in sorted(notes)[:16]:
        lines.append(f"  {case} {size} on {d}: {detail[:140]}")
    return lines


