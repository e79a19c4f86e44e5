"""The GPU path where the static review found no test (reviews/gpu_path_static.md, section C):
GPU augmentation, noise on CUDA tensors, HEVC/MPEG-4/VP9 and B-frame H.264 on the mixed decoder,
GPU-vs-CPU pixel agreement, the precheck in front of NVDEC, NVDEC's own limits against the
capability table, and 2-GPU DDP. All skipped without a CUDA GPU (conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.samplers import SAMPLERS

pytestmark = pytest.mark.gpu
GPU_EXCLUDE: set[str] = set()  # samplers whose GPU augmentation is not compared with CPU


def _first_batch(task, manifest, device, **kw):
    from dalivssl.data.verify import routes
    from pipelines.loader import PretextLoader

    ld = PretextLoader(task, manifest, 2, device=device, clip_len=8, size=64, seed=3, raw=True,
                       prefetch=0, return_indices=True, router=routes, **kw)
    return ld.batch_at(0, 0), ld


@pytest.mark.parametrize("task", sorted(set(SAMPLERS) - GPU_EXCLUDE))
def test_gpu_augmentation_matches_cpu(task, gpu_synth):
    """Same plans (decode + colour/contrast/solarise/blur/rotate/crop/flip) on CPU and GPU: the
    frames agree up to decoder and resize rounding, and the plans are identical."""
    from dalivssl.data.manifest import load_manifest

    man = load_manifest(gpu_synth["train"])
    cpu, _ = _first_batch(task, man, "cpu")
    gpu, ld = _first_batch(task, man, "gpu")
    assert gpu.clips.is_cuda and gpu.labels.is_cuda and not ld.skipped
    assert np.array_equal(cpu.frames.numpy(), gpu.frames.cpu().numpy())
    d = np.abs(gpu.clips.cpu().numpy().astype(np.int16) - cpu.clips.numpy().astype(np.int16))
    assert d.mean() < 6 and np.percentile(d, 99) < 60, (d.mean(), np.percentile(d, 99))


def test_raw_decode_gpu_vs_cpu_pixels(gpu_synth):
    """No augmentation (eval sampler, centre crop): NVDEC vs the CPU decoder, pixel by pixel."""
    from dalivssl.data.manifest import load_manifest

    man = load_manifest(gpu_synth["test"])
    cpu, _ = _first_batch("eval", man, "cpu", augment=False)
    gpu, _ = _first_batch("eval", man, "gpu", augment=False)
    d = np.abs(gpu.clips.cpu().numpy().astype(np.int16) - cpu.clips.numpy().astype(np.int16))
    assert d.mean() < 3 and np.percentile(d, 99) < 20, (d.mean(), np.percentile(d, 99))


def test_noise_on_cuda_tensors_stays_on_the_gpu():
    import torch

    from pipelines.noise import NoiseRunner

    x = torch.full((2, 4, 32, 32, 3), 128, dtype=torch.uint8, device="cuda")
    runner = NoiseRunner([("impulse", 5), ("gaussian", 3)], 2, device="gpu", seed=1)
    outs = runner.run(x)
    imp = torch.from_dlpack(outs[0].as_tensor())
    assert imp.is_cuda and imp.shape == x.shape
    changed = imp != 128
    assert 0.2 < changed.float().mean().item() < 0.35  # impulse severity 5: c = 0.27
    assert torch.isin(imp[changed], torch.tensor([0, 255], device="cuda")).all()
    gau = torch.from_dlpack(outs[1].as_tensor()).float()
    assert abs(gau.std().item() - 255 * 0.18) < 5  # gaussian severity 3: c = 0.18


def test_mixed_decoder_codecs_and_bframes():
    """HEVC, MPEG-4 (B-frames, AVI), VP9 at 128 px and B-frame H.264 on NVDEC: every frame at its
    own index, close to PyAV (decode matrix cells, each in a child process)."""
    from dalivssl.data import decode_matrix as dm

    m = dm.run_matrix(["hevc", "mpeg4-avi", "vp9", "h264-bframes", "h264", "vp8"], (240,),
                      ("gpu",))
    got = {r["case"]: r["gpu"] for r in m["cells"]}
    assert {k: v["status"] for k, v in got.items()} == dict.fromkeys(got, "OK"), got
    small = dm.run_matrix(["vp9"], (128,), ("gpu",))["cells"][0]["gpu"]
    assert small["status"] == "OK", small


def test_table_minimums_are_not_below_nvdec(gpu_synth):
    """NVDEC's own minimum coded size per codec (cuvidGetDecoderCaps) never exceeds the table's:
    the precheck lets nothing through that NVDEC rejects."""
    from dalivssl.data.capabilities import DECODERS
    from dalivssl.devices import nvdec_caps

    for codec, lim in DECODERS["gpu"].items():
        caps = nvdec_caps(0, codec)
        assert caps is not None, codec
        if caps["supported"] and lim.status == "yes":
            assert caps["min_size"][0] <= lim.min_size[0] and \
                caps["min_size"][1] <= lim.min_size[1], (codec, caps, lim)


def test_the_decode_probe_of_a_resolved_gpu_decides_the_probe_entries(monkeypatch):
    """resolve_device('gpu') installs the GPU's decode probe (a child process running one matrix
    cell per 'probe' entry) and the capability table answers with what it measured."""
    from dalivssl import devices
    from dalivssl.data import capabilities as cap

    monkeypatch.delenv(cap.PROBE_ENV, raising=False)
    monkeypatch.setattr(cap, "_probe", None)
    devices.gpu_probe.cache_clear()
    assert devices.resolve_device("gpu").is_gpu
    got = devices.gpu_probe()
    assert set(got) == set(cap.PROBE_CODECS) == {"av1", "mjpeg"}
    for codec, decoded in got.items():
        why = cap.problem(codec, 320, 240, "yuvj420p" if codec == "mjpeg" else "yuv420p", "gpu")
        assert (why is None) == decoded, (codec, why)
    devices.gpu_probe.cache_clear()


def test_precheck_keeps_small_vp9_away_from_nvdec(make_video):
    """A 112-px VP9 next to a 128-px one: the GPU loader skips it with the table's reason and
    the fix, and the run goes on (no abort inside NVDEC)."""
    from dalivssl.data.manifest import Manifest, VideoRecord

    small = make_video(20, size=(112, 112), seed=4)
    ok = make_video(20, size=(128, 128), seed=5)
    man = Manifest(ok.parent, [VideoRecord(small.name, 20, codec="vp9", width=112, height=112),
                               VideoRecord(ok.name, 20, codec="vp9", width=128, height=128)], [])
    batch, ld = _first_batch("eval", man, "gpu", augment=False)
    assert batch.indices.tolist() == [1, 1]
    (reason,) = ld.skipped
    assert reason.startswith("112x112 below the GPU decoder's vp9 minimum of 128x128")


def test_two_gpu_ddp(gpu_synth, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29541", "-m", "dalivssl", "pretrain", "--task", "vcop", "--arch",
           "r21d", "--clip-len", "8", "--size", "32", "--batch-size", "2", "--device", "gpu",
           "--data", str(gpu_synth["train"]), "--max-steps", "2", "--out", str(out),
           "--no-progress", "--set", "tensorboard=false"]
    p = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    a, b = summary["rank_checksums"]
    assert a == b
