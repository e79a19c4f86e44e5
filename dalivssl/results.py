"""HDF5 results files: the only code that knows their layout.

One file per run. Layout: ``/<group>/<name>`` datasets (numpy arrays or strings) with attributes;
run-level metadata in the root attributes (``config`` as YAML text, ``versions`` as JSON text).
Writes are flushed per call so a killed run keeps everything written so far; ``has()`` lets long
analyses resume per cell.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


class ResultsFile:
    """Append-friendly HDF5 results file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike, mode: str = "a"):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(self.path, mode)

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None

    def set_meta(self, **attrs: Any) -> None:
        """Root attributes; dicts/lists are stored as JSON text."""
        for k, v in attrs.items():
            self._f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
        self._f.flush()

    def meta(self) -> dict:
        return {k: _decode_attr(v) for k, v in self._f.attrs.items()}

    def has(self, group: str, name: str) -> bool:
        return f"{group}/{name}" in self._f

    def write(self, group: str, name: str, value: Any, **attrs: Any) -> None:
        """Create or replace ``/group/name``; strings and lists of strings become UTF-8 arrays."""
        import h5py

        key = f"{group}/{name}"
        if key in self._f:
            del self._f[key]
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and value
                                      and all(isinstance(v, str) for v in value)):
            ds = self._f.create_dataset(key, data=value, dtype=h5py.string_dtype())
        else:
            ds = self._f.create_dataset(key, data=np.asarray(value))
        for k, v in attrs.items():
            ds.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
        self._f.flush()

    def read(self, group: str, name: str) -> Any:
        ds = self._f[f"{group}/{name}"]
        if ds.dtype.kind == "O" or ds.dtype.kind == "S":
            val = ds.asstr()[()] if ds.shape else ds.asstr()[()]
            return list(val) if ds.shape else val
        return ds[()]

    def attrs(self, group: str, name: str | None = None) -> dict:
        node = self._f[group if name is None else f"{group}/{name}"]
        return {k: _decode_attr(v) for k, v in node.attrs.items()}

    def names(self, group: str) -> list[str]:
        return sorted(self._f[group].keys()) if group in self._f else []


def _decode_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v.item() if isinstance(v, np.generic) else v
