"""Checkpoints (contract C7): one ``.pt`` file per save, written atomically.

Fields, always: ``kind`` ('pretrain' | 'finetune'), ``arch``, ``backbone`` (state dict), ``head``
(state dict), ``config`` (plain dict), ``versions``, ``step``, ``epoch``.
Pretrain also: ``task``, ``optimizer``, ``scheduler``, ``rng``, ``loader``.
Finetune also: ``num_classes``, ``classes``, ``clip_len``, ``size``, ``normalize``; ``head`` is then
the state dict of ``torch.nn.Linear(feature_dim, num_classes)``.
Optional: ``backbone_kwargs`` (dict passed to ``models.create_backbone``).

Everything stored is a tensor or a plain Python value, so files load with
``torch.load(weights_only=True)``: a checkpoint cannot run code when opened.
"""
from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from dalivssl.errors import DalivsslError

CKPT_NAME = "checkpoint.pt"  # the rolling "last" checkpoint inside a run dir
REQUIRED = ("kind", "arch", "backbone", "head", "config", "versions", "step", "epoch")


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors / plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, **fields) -> Path:
    """Write ``fields`` to ``path`` atomically (temp file in the same dir, fsync, os.replace).

    A reader never sees a half-written file: after a crash either the old or the new one exists.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DalivsslError(f"{path}: cannot write checkpoint ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(fields, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in words: empty, truncated zip, refused content or not PyTorch."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
    if head == b"PK\x03\x04":  # torch.save writes a zip archive
        if not zipfile.is_zipfile(path):
            return "a PyTorch zip archive that is truncated or damaged; save or copy it again"
        return f"a PyTorch file a weights-only load refuses: {first}"
    if head[:1] == b"\x80":  # pickle: torch's legacy format
        return f"a legacy PyTorch file that cannot be read: {first}"
    return f"not a PyTorch checkpoint file; it starts with {head!r}"


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a dalivssl checkpoint; DalivsslError if missing, unreadable or not ours."""
    path = Path(path)
    if not path.is_file():
        raise DalivsslError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DalivsslError(f"{path}: not a readable dalivssl checkpoint "
                            f"({_unreadable_reason(path, exc)})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise DalivsslError(f"{path}: not a dalivssl checkpoint (missing {', '.join(missing)})")
    return ckpt


def build_backbone_from(ckpt: dict, device="cpu"):
    """Instantiate ``ckpt['arch']`` and load its backbone weights."""
    from models import create_backbone

    backbone = create_backbone(ckpt["arch"], **dict(ckpt.get("backbone_kwargs") or {}))
    backbone.load_state_dict(ckpt["backbone"])
    return backbone.to(device)


def load_backbone(path, arch: str | None = None, device="cpu"):
    """-> (backbone in eval mode, ckpt). DalivsslError if ``arch`` is given and differs."""
    ckpt = load_checkpoint(path)
    if arch is not None and ckpt["arch"] != arch:
        raise DalivsslError(f"{path}: checkpoint is for arch {ckpt['arch']!r}, not {arch!r}")
    try:
        backbone = build_backbone_from(ckpt, device)
    except RuntimeError as exc:  # state dict mismatch: file edited or produced by other code
        raise DalivsslError(f"{path}: backbone weights do not fit {ckpt['arch']!r} "
                            f"({str(exc).splitlines()[0][:120]})") from None
    return backbone.eval(), ckpt

