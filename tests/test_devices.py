"""resolve_device ('auto' | 'cpu' | 'gpu'), the GPU of a rank (G10), DALI threads (G5), and the
sync/autocast helpers (G8): on CPU, with torch's CUDA answers faked where a GPU is needed."""
from __future__ import annotations

import contextlib

import pytest

from dalivssl import devices
from dalivssl.data import capabilities
from dalivssl.errors import DalivsslError


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees ``n`` GPUs named 'NVIDIA H200' and libnvcuvid loads."""
    import torch

    def _fake(n=2, nvcuvid="/usr/lib/libnvcuvid.so.1", nvdecs=7):
        monkeypatch.setattr(devices, "cuda_usable", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
        monkeypatch.setattr(devices, "nvcuvid_path", lambda: nvcuvid)
        monkeypatch.setattr(devices, "nvdec_caps",
                            lambda i, c: {"supported": True, "nvdecs": nvdecs,
                                          "min_size": (48, 16), "max_size": (4096, 4096)})
        monkeypatch.setattr(capabilities, "_probe", None)  # a resolved GPU installs its probe
    return _fake


def test_cpu_is_always_cpu():
    d = devices.resolve_device("cpu")
    assert (d.name, d.torch, d.dali, d.device_id, d.reason) == ("cpu", "cpu", "cpu", None,
                                                                "cpu: requested")
    assert d.record() == {"device": "cpu", "decoder": "cpu", "torch_device": "cpu",
                          "device_id": None, "gpu": "", "requested": "cpu",
                          "reason": "cpu: requested"}


def test_auto_without_cuda_falls_back_to_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(devices, "cuda_usable", lambda: False)
    d = devices.resolve_device("auto")
    assert (d.name, d.dali, d.reason, d.requested) == ("cpu", "cpu", "auto: no CUDA device",
                                                       "auto")
    with pytest.raises(DalivsslError, match="--device gpu: no CUDA GPU is visible to torch"):
        devices.resolve_device("gpu")


def test_unknown_name():
    with pytest.raises(DalivsslError, match="unknown device 'tpu'; valid: auto, cpu, gpu"):
        devices.resolve_device("tpu")


def test_auto_with_a_gpu(fake_gpus, monkeypatch):
    fake_gpus(n=1)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    d = devices.resolve_device("auto")
    assert (d.name, d.torch, d.dali, d.device_id, d.gpu) == ("gpu", "cuda:0", "mixed", 0,
                                                             "NVIDIA H200")
    assert d.reason == "auto: GPU 0 (NVIDIA H200), NVDEC reachable"
    assert d.record()["decoder"] == "mixed"


def test_rank_gpu_is_local_rank_modulo_visible_gpus(fake_gpus):
    fake_gpus(n=2)
    assert devices.resolve_device("gpu", env={"LOCAL_RANK": "3"}).torch == "cuda:1"
    fake_gpus(n=1)  # SLURM: each task sees only its own GPU
    d = devices.resolve_device("gpu", env={"LOCAL_RANK": "3"})
    assert (d.torch, d.device_id) == ("cuda:0", 0)


def test_gpu_without_nvdec(fake_gpus):
    fake_gpus(nvcuvid=None)
    d = devices.resolve_device("auto", env={})
    assert d.name == "cpu" and d.reason.startswith(
        "auto: GPU 0 (NVIDIA H200) unusable for decoding: libnvcuvid (the driver's video decoder) "
        "cannot be loaded; in a container set NVIDIA_DRIVER_CAPABILITIES=compute,utility,video")
    with pytest.raises(DalivsslError, match="--device gpu: GPU 0 .* libnvcuvid"):
        devices.resolve_device("gpu", env={})
    fake_gpus(nvdecs=0)  # a MIG slice without media engines
    d = devices.resolve_device("auto", env={})
    assert d.name == "cpu" and "no NVDEC engine" in d.reason


def test_dali_threads_is_its_own_setting():
    assert devices.dali_threads("gpu") == 8 and devices.dali_threads("cpu") == 2
    assert devices.dali_threads("cuda:1") == 8 and devices.dali_threads("mixed") == 8
    assert devices.dali_threads("gpu", 12) == 12 and devices.dali_threads("cpu", 0) == 2
    assert devices.dali_threads(devices.resolve_device("cpu")) == 2


def test_loader_takes_the_dali_default(make_video):
    from dalivssl.data.manifest import Manifest, VideoRecord
    from pipelines.loader import PretextLoader

    v = make_video(20, size=(32, 32))
    man = Manifest(v.parent, [VideoRecord(v.name, 20, codec="vp9")], [])
    assert PretextLoader("rotnet", man, 1, clip_len=4, size=32).num_threads == 2
    assert PretextLoader("rotnet", man, 1, clip_len=4, size=32, num_threads=5).num_threads == 5


def test_sync_and_autocast_are_no_ops_on_cpu():
    devices.sync("cpu")
    assert isinstance(devices.autocast("cpu"), contextlib.nullcontext)
    assert isinstance(devices.autocast("gpu", enabled=False), contextlib.nullcontext)


def test_distributed_setup_uses_the_rank_gpu(fake_gpus, monkeypatch):
    import torch

    from dalivssl.engine import distributed

    fake_gpus(n=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = distributed.setup("gpu")
    assert chosen == [0] and info.device == "cuda:0" and info.gpu_index == 0
    assert info.local_rank == 3
    assert distributed.setup("cpu").gpu_index is None


def test_a_resolved_gpu_installs_its_decode_probe_in_the_table(fake_gpus, monkeypatch):
    """The table asks the probe of the GPU the run resolved (AV1 decodes on this fake GPU)."""
    fake_gpus(n=1)
    monkeypatch.delenv(capabilities.PROBE_ENV, raising=False)
    monkeypatch.setattr(devices, "gpu_probe", lambda: {"av1": True, "mjpeg": False})
    assert capabilities.problem("av1", 320, 240, "yuv420p", "gpu") is not None  # not measured
    devices.resolve_device("cpu")
    assert capabilities.problem("av1", 320, 240, "yuv420p", "gpu") is not None
    devices.resolve_device("gpu")
    assert capabilities.problem("av1", 320, 240, "yuv420p", "gpu") is None
    assert capabilities.problem("mjpeg", 320, 240, "yuvj420p", "gpu").startswith("codec mjpeg")


def test_gpu_probe_reads_its_child_and_runs_nothing_without_a_gpu(monkeypatch):
    import subprocess
    import sys

    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw["timeout"]))
        if answer is None:
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return subprocess.CompletedProcess(cmd, 0, answer, "")

    monkeypatch.setattr(devices.subprocess, "run", fake_run)
    answer = 'svt banner\n{"av1": true, "mjpeg": false}\n'
    monkeypatch.setattr(devices, "cuda_usable", lambda: False)
    devices.gpu_probe.cache_clear()
    assert devices.gpu_probe() == {"av1": False, "mjpeg": False} and calls == []
    monkeypatch.setattr(devices, "cuda_usable", lambda: True)
    devices.gpu_probe.cache_clear()
    assert devices.gpu_probe() == {"av1": True, "mjpeg": False}
    assert calls == [([sys.executable, "-m", "dalivssl.data.decode_matrix", "probe"],
                      devices.PROBE_TIMEOUT_S)]
    assert devices.gpu_probe() == {"av1": True, "mjpeg": False} and len(calls) == 1  # cached
    for answer in (None, "child died\n"):  # hung, or no answer line: nothing decodes
        devices.gpu_probe.cache_clear()
        assert devices.gpu_probe() == {"av1": False, "mjpeg": False}
    devices.gpu_probe.cache_clear()


def test_the_probe_child_runs_one_gpu_cell_per_probe_entry(monkeypatch):
    from dalivssl.data import decode_matrix as dm

    cells = []

    def fake_cell(case, size, backend):
        cells.append((case, size, backend))
        return {"status": "OK" if case == "mjpeg" else "FAIL"}

    monkeypatch.setattr(dm, "run_cell", fake_cell)
    assert dm.probe_cells() == {"av1": False, "mjpeg": True}
    assert cells == [("av1", 256, "gpu"), ("mjpeg", 256, "gpu")]
