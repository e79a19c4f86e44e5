"""Augmentation graph (pipelines.augment): the fused colour map and each op against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.augment import LUMA, colour_affine, graph_inputs, param_arrays

torch = pytest.importorskip("torch")
pytest.importorskip("nvidia.dali")


def test_colour_affine_identity_gray_and_contrast_offset():
    one, zero = np.ones(2), np.zeros(2)
    M, t = colour_affine(one, one, one, zero, zero)
    np.testing.assert_allclose(M, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(t, 0, atol=1e-7)
    M, t = colour_affine(one, one, one, zero, one)  # grayscale: every row is the luma
    np.testing.assert_allclose(M, np.broadcast_to(np.array(LUMA), (2, 3, 3)), atol=2e-3)
    M, t = colour_affine(np.array([2.0]), np.array([0.5]), np.ones(1), np.zeros(1), np.zeros(1))
    np.testing.assert_allclose(M[0], np.eye(3), atol=1e-6)  # c·b = 1
    np.testing.assert_allclose(t[0], [1.0, 1.0, 1.0], atol=1e-6)  # (1 − c)·b
    # hue and saturation keep grey pixels grey (the offset then needs no chroma correction)
    M, _ = colour_affine(one, one, np.array([1.7, 0.3]), np.array([40.0, -100.0]), zero)
    np.testing.assert_allclose(M.sum(axis=2), 1.0, atol=2e-3)


def test_param_arrays_fill_identity_and_build_colour_inputs():
    arrs = param_arrays({"flip": [1, 0], "brightness": [1.5, 1.0]}, ("flip", "brightness"), 2)
    assert set(arrs) == set(graph_inputs(("flip", "brightness"))) == {
        "crop", "flip", "colour_m"}
    assert "colour_t" in graph_inputs(("contrast",))
    np.testing.assert_array_equal(arrs["crop"], [[0, 0, 1, 1]] * 2)
    np.testing.assert_allclose(arrs["colour_m"][0], 1.5 * np.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="unknown augmentation"):
        graph_inputs(("zoom",))


def _run_one(frame: np.ndarray, params: dict, size) -> np.ndarray:
    """Decode-free check: run augment_clip on a single-frame 'clip' through a tiny pipeline."""
    return _run_clip(frame[None], params, size)[0].astype(np.float64)


def test_colour_ops_match_numpy_formulas():
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(60, 200, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    x = img.astype(np.float64)
    luma = x @ np.array(LUMA)
    # brightness 1.2 and contrast 0.7 around the mean luma: b·(m + c·(x − m))
    got = _run_one(img, {"brightness": [1.2], "contrast": [0.7]}, (32, 32))
    want = np.clip(1.2 * (luma.mean() + 0.7 * (x - luma.mean())), 0, 255)
    assert np.abs(got - want).max() <= 1.0
    # saturation 0.4 = blend with the luma image
    got = _run_one(img, {"saturation": [0.4]}, (32, 32))
    want = np.clip(0.4 * x + 0.6 * luma[..., None], 0, 255)
    assert np.abs(got - want).max() <= 1.0
    # grayscale: three equal channels = the luma
    got = _run_one(img, {"gray": [1]}, (32, 32))
    assert np.abs(got - luma[..., None]).max() <= 1.0
    # solarise: v -> 255 - v above 128
    got = _run_one(img, {"solarize": [1]}, (32, 32))
    np.testing.assert_array_equal(got, np.where(x >= 128, 255 - x, x))
    # blur: a flat region stays flat, an edge gets smoothed
    big = np.kron(img[::8, ::8], np.ones((16, 16, 1), np.uint8))  # 16-px blocks, 64×64
    got = _run_one(big, {"blur_sigma": [1.5]}, (64, 64))
    xb = big.astype(np.float64)
    assert np.abs(got[6:10, 6:10] - xb[6:10, 6:10]).max() <= 1
    assert np.abs(got - xb).max() > 5
    # hue: rotates the chroma plane (keeps luma), 360° is the identity
    got = _run_one(img, {"hue": [90.0]}, (32, 32))
    assert np.abs(got @ np.array(LUMA) - luma).mean() < 2.5 and np.abs(got - x).mean() > 5
    assert np.abs(_run_one(img, {"hue": [360.0]}, (32, 32)) - x).max() <= 1.0


def test_crop_box_is_y0_x0_h_w():
    img = np.zeros((32, 48, 3), np.uint8)
    img[:16, 24:] = 255  # top-right quadrant white
    got = _run_one(img, {"crop": [[0.0, 0.5, 0.5, 0.5]]}, (16, 24))
    assert got.min() == 255
    got = _run_one(img, {"crop": [[0.5, 0.0, 0.5, 0.5]]}, (16, 24))
    assert got.max() == 0


def _smooth_frames(seed: int, n: int = 4, size=(96, 128)) -> np.ndarray:
    """Frames like decoded footage: smooth colour fields with a few edges (no per-pixel noise,
    which turns a sub-pixel shift of the crop into large per-pixel differences)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 226, (n, size[0] // 16, size[1] // 16, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2),
                                          size=size, mode="bicubic", align_corners=False)
    return big.clamp(0, 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)


def _run_clip(frames: np.ndarray, params: dict, size) -> np.ndarray:
    """augment_clip (DALI, CPU) on a whole (T, H, W, 3) clip."""
    import nvidia.dali as dali
    from nvidia.dali import fn, types

    from pipelines.augment import augment_clip

    keys = tuple(params)
    inputs = graph_inputs(keys)
    arrays = param_arrays(params, keys, 1)
    pipe = dali.Pipeline(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    with pipe:
        x = fn.external_source(name="x", dtype=types.UINT8, ndim=4, layout="FHWC")
        nodes = {n: fn.external_source(name=n, dtype=types.FLOAT if k == "float" else types.INT32,
                                       ndim=nd) for n, (k, nd) in inputs.items()}
        pipe.set_outputs(augment_clip(x, nodes, 0, size, "cpu", "contrast" in keys))
    pipe.build()
    pipe.feed_input("x", [frames])
    for n in inputs:
        pipe.feed_input(n, [arrays[n]])
    (out,) = pipe.run()
    return np.array(out[0]).astype(np.int16)


COLOUR = {"brightness": [1.3], "contrast": [0.7], "saturation": [1.4], "hue": [40.0],
          "flip": [1]}


@pytest.mark.parametrize("extra", [{}, COLOUR, {"gray": [1], "contrast": [1.3]}],
                         ids=["geometry", "colour+flip", "gray+contrast"])
def test_torch_augmentation_gives_dalis_pixels_within_rounding(extra):
    """The CPU backend's torch path (pipelines.augment.torch_augment_clip) against the DALI graph
    on the same clip and parameter row. A crop box on the pixel grid: the two resizes (both
    antialiased bilinear) and colour maps differ by rounding: the whole frame within 3 grey levels
    (mean under 0.3), a crop on the grid within 6 (mean under 0.5, 99 % of pixels within 3). A box
    between pixels: torch rounds it to the grid (DALI's roi is fractional), a shift under half a
    source pixel: within 8 grey levels on smooth frames, mean under 1."""
    from pipelines.augment import torch_augment_clip

    frames = _smooth_frames(1)
    for box, mean_max, p99_max, max_max in (([0.0, 0.0, 1.0, 1.0], 0.3, 2, 3),
                                            ([12 / 96, 16 / 128, 72 / 96, 96 / 128], 0.5, 3, 6),
                                            ([0.1037, 0.0711, 0.77, 0.81], 1.0, 4, 8)):
        params = {"crop": [box], **extra}
        want = _run_clip(frames, params, (40, 48))
        arrays = param_arrays(params, tuple(params), 1)
        got = torch_augment_clip(torch.from_numpy(frames), arrays, 0, (40, 48),
                                 "contrast" in params).numpy().astype(np.int16)
        assert got.shape == want.shape == (4, 40, 48, 3)
        d = np.abs(got - want)
        assert d.mean() <= mean_max and np.percentile(d, 99) <= p99_max and d.max() <= max_max, (
            box, d.mean(), np.percentile(d, 99), d.max())
    # the parameters matter: another hue is far from DALI's pixels for this one
    if "hue" in extra:
        other = param_arrays({**params, "hue": [-60.0]}, tuple(params), 1)
        got = torch_augment_clip(torch.from_numpy(frames), other, 0, (40, 48), True).numpy()
        assert np.abs(got.astype(np.int16) - want).mean() > 5


def test_torch_augmentation_refuses_keys_it_lacks():
    from pipelines.augment import TORCH_KEYS, torch_augment_clip, torch_covers

    assert torch_covers(("crop", "flip", "hue")) and not torch_covers(("crop", "angle"))
    assert TORCH_KEYS == {"crop", "flip", "brightness", "contrast", "saturation", "hue", "gray"}
    arrays = param_arrays({"angle": [90.0]}, ("angle",), 1)
    with pytest.raises(ValueError, match="angle"):
        torch_augment_clip(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), arrays, 0, (4, 4))


@pytest.mark.parametrize("task", ["rspnet", "vcop"])
def test_cpu_loader_backends_agree_on_the_same_plans(task, make_video):
    """PretextLoader on CPU: cpu_augment 'torch' (the default 'auto' for these keys) and 'dali'
    deliver the same plans (frames, labels) and, normalised, the same clips within the
    rounding of the tests above (ImageNet/unit scaling only divides the grey levels)."""
    from dalivssl.data.manifest import Manifest, VideoRecord
    from pipelines.loader import LoaderError, PretextLoader

    paths = [make_video(num_frames=72, size=(96, 128), seed=60 + i) for i in range(2)]
    man = Manifest(paths[0].parent, [VideoRecord(p.name, 72, width=128, height=96)
                                     for p in paths], [])
    kw = dict(batch_size=2, clip_len=8, size=48, seed=5, return_indices=True, prefetch=0)
    out = {}
    for aug in ("auto", "torch", "dali"):
        ld = PretextLoader(task, man, cpu_augment=aug, **kw)
        out[aug] = ld.batch_at(0, 0)
        assert ld._cfg.torch_augment == (aug != "dali")
    np.testing.assert_array_equal(out["auto"].clips.numpy(), out["torch"].clips.numpy())
    t, d = out["torch"], out["dali"]
    np.testing.assert_array_equal(t.frames.numpy(), d.frames.numpy())
    assert t.labels.tolist() == d.labels.tolist() and t.clips.shape == d.clips.shape
    std = 0.229 if task == "rspnet" else 1.0  # grey levels per unit of the normalised clip
    diff = np.abs(t.clips.numpy() - d.clips.numpy()) * 255 * std
    # distinct_frames are sharp-edged blocks: a sub-pixel crop shift moves whole edges
    assert diff.mean() < 4 and np.percentile(diff, 50) <= 1.5, (diff.mean(),
                                                                np.percentile(diff, 50))
    with pytest.raises(LoaderError, match="cpu_augment"):
        PretextLoader(task, man, cpu_augment="numpy", **kw)
    # rotation is not in the torch path: 'torch' is refused in one line, 'auto' keeps DALI
    with pytest.raises(LoaderError, match="cannot run keys"):
        PretextLoader("rotnet", man, cpu_augment="torch", **kw).batch_at(0, 0)
    ld = PretextLoader("rotnet", man, **kw)
    ld.batch_at(0, 0)
    assert not ld._cfg.torch_augment
