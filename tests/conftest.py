"""Shared fixtures: tiny VP9 videos whose frames differ from each other (so frame-exact tests can
tell any two frames apart), and the small synthetic dataset."""
from __future__ import annotations

import numpy as np
import pytest


def distinct_frames(num_frames: int, size: tuple[int, int] = (64, 80), seed: int = 0) -> np.ndarray:
    """uint8 (F,H,W,3): frame i has a bright bar at a position that depends on i, a per-frame
    grey level, and low-frequency texture, so every frame is distinguishable after VP9 coding."""
    h, w = size
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    base = np.kron(base, np.ones((8, 8, 1), np.float32))[:h, :w]
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for i in range(num_frames):
        f = base.copy()
        f *= 0.5 + 0.5 * ((i * 37) % 97) / 97.0
        x = (i * 7) % max(1, w - 8)
        y = (i * 3) % max(1, h - 8)
        f[:, x:x + 8] = 255.0
        f[y:y + 8, :, 1] = 0.0
        frames[i] = np.clip(f, 0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="session")
def make_video(tmp_path_factory):
    """Factory: make_video(num_frames=48, size=(64,80), codec='vp9', name=None, gop=None) -> Path."""
    from dalivssl.data.videoio import CODECS, write_video

    root = tmp_path_factory.mktemp("videos")
    counter = {"n": 0}

    def _make(num_frames=48, size=(64, 80), codec="vp9", name=None, gop=None, fps=25, seed=0):
        counter["n"] += 1
        suffix = CODECS[codec][0]
        path = root / (name or f"v{counter['n']}_{num_frames}{suffix}")
        return write_video(path, distinct_frames(num_frames, size, seed), fps=fps, codec=codec,
                           gop=gop)

    return _make


def _gpu_state() -> tuple[bool, bool]:
    """(a CUDA GPU is usable, NVDEC is usable too): what ``--device auto`` resolves (G9: CUDA
    without NVDEC is a GPU for the CUDA-only tests, not for the decoding ones)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, False
        from dalivssl.devices import resolve_device

        return True, bool(resolve_device("auto").is_gpu)
    except Exception:  # pragma: no cover
        return False, False


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n 2``) each worker owns one core: torch and OpenMP
    get one thread there and in the commands a test starts, instead of two workers spinning two
    threads each on two cores."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """GPU-marked tests run only where a CUDA GPU exists; those that decode on the GPU need
    NVDEC as well, unless they are also marked ``cuda_only`` (CuPy, GPU noise, backbones)."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    cuda, nvdec = _gpu_state()
    for item in gpu:
        if not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        elif not nvdec and "cuda_only" not in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs NVDEC (CUDA without NVDEC here)"))


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """A tiny synthetic dataset (train/test manifests) shared by the whole test session."""
    from dalivssl.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    return generate(out, videos=12, classes=3, frames=40, size=64, seed=0)


@pytest.fixture(scope="session")
def gpu_synth(tmp_path_factory):
    """A tiny synthetic dataset at 128 px: NVDEC's VP9 minimum, so both decoders read it (the
    64-px ``tiny_synth`` is CPU-only: dalivssl.data.capabilities)."""
    from dalivssl.data.synth import GPU_MIN_SIZE, generate

    out = tmp_path_factory.mktemp("synth128")
    return generate(out, videos=8, classes=2, frames=150, size=GPU_MIN_SIZE, seed=0)


def run_cli(*args) -> "subprocess.CompletedProcess":
    """``python -m dalivssl ARGS`` in this process (no second interpreter, torch and DALI import):
    its exit code, stdout and stderr as a ``CompletedProcess``. An exception that would have
    escaped ``main`` prints its traceback on stderr and gives exit code 1, as the interpreter
    does. Tests about signals, kills, locks held by another process or torchrun keep a real
    subprocess."""
    import contextlib
    import io
    import subprocess
    import traceback

    from dalivssl.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - what the interpreter prints for an uncaught error
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["dalivssl", *argv], code, out.getvalue(), err.getvalue())


def run_torchrun(port: int, *args, timeout: float = 600) -> "subprocess.CompletedProcess":
    """``torchrun --nproc_per_node=2 -m dalivssl ARGS`` on the CPU (gloo, one thread per rank,
    this checkout on the path): two real processes, as DDP needs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={port}", "-m", "dalivssl", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
