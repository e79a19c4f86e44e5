"""CKA: the properties of spec/cka.md 2.6, numerics of 2.5, maps over models, and the CLI."""
from __future__ import annotations

import warnings

from pathlib import Path

import numpy as np
import pytest

from dalivssl.engine import cka as C
from dalivssl.errors import DalivsslError


def _xy(n=256, p=48, q=32, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, q)) + noise * rng.standard_normal((n, q))
    return X, Y


def _orth(p, seed=3):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return q


def _batches(A, bs):
    return [A[i:i + bs] for i in range(0, len(A), bs)]


VARIANTS = {
    "linear": lambda a, b: C.linear_cka(a, b),
    "linear_unbiased": lambda a, b: C.linear_cka(a, b, unbiased=True),
    "rbf": lambda a, b: C.rbf_cka(a, b),
    "rbf_unbiased": lambda a, b: C.rbf_cka(a, b, unbiased=True),
    "rbf_0.4": lambda a, b: C.rbf_cka(a, b, sigma_frac=0.4),
    "minibatch": lambda a, b: C.minibatch_cka(_batches(a, 32), _batches(b, 32)),
}


# ------------------------------------------------------------------------------- 2.6 (1)-(3)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_self_similarity_is_one(name):
    X, _ = _xy(128)
    assert VARIANTS[name](X, X) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_invariant_to_orthogonal_scale_translation(name):
    X, Y = _xy(128)
    Z = 3.7 * X @ _orth(X.shape[1]) + np.random.default_rng(9).normal(0, 50, X.shape[1])
    assert VARIANTS[name](X, Z) == pytest.approx(1.0, abs=1e-9)
    assert VARIANTS[name](Z, Y) == pytest.approx(VARIANTS[name](X, Y), abs=1e-9)


def test_minibatch_invariant_to_per_batch_translation():
    # HSIC_1 ignores the batch mean: shifting each minibatch by its own vector changes nothing
    X, Y = _xy(128)
    rng = np.random.default_rng(4)
    shifted = [b + rng.normal(0, 100, X.shape[1]) for b in _batches(X, 32)]
    ref = C.minibatch_cka(_batches(X, 32), _batches(Y, 32))
    assert C.minibatch_cka(shifted, _batches(Y, 32)) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_symmetry(name):
    X, Y = _xy(128)
    assert VARIANTS[name](X, Y) == pytest.approx(VARIANTS[name](Y, X), abs=1e-12)


def test_biased_in_unit_interval_and_unbiased_near_zero_for_independent():
    rng = np.random.default_rng(5)
    vals_b, vals_u = [], []
    for _ in range(10):
        A, B = rng.standard_normal((40, 30)), rng.standard_normal((40, 50))
        vals_b += [C.linear_cka(A, B), C.rbf_cka(A, B)]
        vals_u.append(C.linear_cka(A, B, unbiased=True))
    assert all(0.0 <= v <= 1.0 for v in vals_b)
    assert abs(np.mean(vals_u)) < 0.03
    assert min(vals_u) < 0.0  # unbiased may be negative
    assert all(-1.0 <= v <= 1.0 for v in vals_u)


def test_biased_inflation_example():
    # spec 2.5: n=64, d=4096 independent Gaussians, default_rng(1), A drawn then B
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((64, 4096)), rng.standard_normal((64, 4096))
    assert C.linear_cka(A, B) == pytest.approx(0.9844, abs=1e-4)
    assert C.linear_cka(A, B, unbiased=True) == pytest.approx(-0.0179, abs=1e-4)


# ------------------------------------------------------------------------------------ HSIC
def test_hsic1_formula_equals_u_centring_form():
    X, Y = _xy(50, 7, 5, seed=2)
    K, L = C.gram_linear(X), C.gram_linear(Y)
    assert C.hsic1(K, L) == pytest.approx(C.hsic1_centered(K, L), rel=1e-12)
    Kr, Lr = C.gram_rbf(X), C.gram_rbf(Y)
    assert C.hsic1(Kr, Lr) == pytest.approx(C.hsic1_centered(Kr, Lr), rel=1e-12)


def test_hsic0_is_trace_form_and_linear_cka_matches_feature_form():
    X, Y = _xy(30, 6, 4, seed=6)
    K, L = X @ X.T, Y @ Y.T
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    assert C.hsic0(K, L) == pytest.approx(np.trace(K @ H @ L @ H) / (n - 1) ** 2, rel=1e-10)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feat = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert C.linear_cka(X, Y) == pytest.approx(feat, rel=1e-10)


def test_hsic1_translation_invariant_on_raw_gram():
    X, Y = _xy(40, 6, 4, seed=7)
    b = np.random.default_rng(1).normal(0, 3, 6)
    raw = lambda A: A @ A.T  # noqa: E731  (no centring: HSIC_1 itself must absorb the shift)
    assert C.hsic1(raw(X + b), raw(Y)) == pytest.approx(C.hsic1(raw(X), raw(Y)), rel=1e-8)


def test_unbiased_needs_four_examples():
    X = np.random.default_rng(0).standard_normal((3, 5))
    with pytest.raises(DalivsslError, match="at least 4"):
        C.linear_cka(X, X, unbiased=True)
    with pytest.raises(DalivsslError, match="at least 4"):
        C.hsic1(X @ X.T, X @ X.T)


def test_mismatched_examples_error():
    with pytest.raises(DalivsslError, match="same examples"):
        C.linear_cka(np.zeros((5, 3)), np.zeros((6, 3)))


# ------------------------------------------------------------------------------- minibatch
def test_minibatch_single_batch_equals_full_unbiased():
    X, Y = _xy(200)
    assert C.minibatch_cka([X], [Y]) == pytest.approx(C.linear_cka(X, Y, unbiased=True),
                                                      abs=1e-12)


def test_minibatch_converges_with_batch_size():
    X, Y = _xy(512, seed=0)
    full = C.linear_cka(X, Y, unbiased=True)
    err = {}
    perms = [np.random.default_rng(s).permutation(len(X)) for s in range(16)]
    for bs in (8, 64, 256, 512):
        e = [C.minibatch_cka(_batches(X[p], bs), _batches(Y[p], bs)) - full for p in perms]
        err[bs] = np.sqrt(np.mean(np.square(e)))  # RMS over random batchings
    assert err[8] > err[64] > err[256] > err[512]
    assert err[256] < 0.005 and err[512] < 1e-12


def test_minibatch_is_ratio_of_sums_not_mean_of_ratios():
    X, Y = _xy(40, seed=8)
    bs = [X[:16], X[16:32], X[32:]], [Y[:16], Y[16:32], Y[32:]]
    S = [(C.hsic1_centered(C.gram_linear(a), C.gram_linear(b)),
          C.hsic1_centered(C.gram_linear(a), C.gram_linear(a)),
          C.hsic1_centered(C.gram_linear(b), C.gram_linear(b))) for a, b in zip(*bs)]
    ratio_of_sums = sum(s[0] for s in S) / np.sqrt(sum(s[1] for s in S) * sum(s[2] for s in S))
    mean_of_ratios = np.mean([s[0] / np.sqrt(s[1] * s[2]) for s in S])
    got = C.minibatch_cka(*bs)
    assert got == pytest.approx(ratio_of_sums, abs=1e-12)
    assert abs(got - mean_of_ratios) > 1e-4  # ckatorch's last-batch / averaging bug would pass


@pytest.mark.parametrize("offset", [100.0, 1e4])
def test_large_offset_float32_unchanged(offset):
    # values on a 1/64 grid so X + offset is exact in float32: any change is the algorithm's
    X, Y = _xy(256, seed=1)
    X32 = (np.round(X * 64) / 64).astype(np.float32)
    Y32 = (np.round(np.maximum(Y, 0) * 64) / 64).astype(np.float32)  # post-ReLU-like
    c = np.float32(offset)
    ref_mb = C.minibatch_cka(_batches(X32, 64), _batches(Y32, 64))
    got_mb = C.minibatch_cka(_batches(X32 + c, 64), _batches(Y32 + c, 64))
    assert abs(got_mb - ref_mb) < 1e-6
    for f in (C.linear_cka, C.rbf_cka, lambda a, b: C.linear_cka(a, b, unbiased=True)):
        assert abs(f(X32 + c, Y32 + c) - f(X32, Y32)) < 1e-6
    acc = C.MinibatchCKA(2, 2)
    for xb, yb in zip(_batches(X32 + c, 64), _batches(Y32 + c, 64)):
        acc.update([xb, yb], [yb, xb])
    assert np.all(np.isfinite(acc.result()))


def test_minibatch_accumulator_map_and_self_diagonal():
    rng = np.random.default_rng(11)
    layers = [rng.standard_normal((96, 20)), None, None]
    layers[1] = np.maximum(layers[0] @ rng.standard_normal((20, 30)), 0)
    layers[2] = rng.standard_normal((96, 2, 3, 4))  # trailing dims are flattened
    acc = C.MinibatchCKA(3)
    for i in range(0, 96, 24):
        acc.update([f[i:i + 24] for f in layers])
    M = acc.result()
    assert M.shape == (3, 3)
    assert np.all(np.diag(M) == 1.0)  # exactly
    np.testing.assert_allclose(M, M.T, atol=1e-14)
    assert M[0, 1] > 0.3 and abs(M[0, 2]) < 0.15
    assert M[0, 1] == pytest.approx(
        C.minibatch_cka(_batches(layers[0], 24), _batches(layers[1], 24)), abs=1e-12)
    # two-sided accumulator agrees with the self-map
    acc2 = C.MinibatchCKA(3, 2)
    for i in range(0, 96, 24):
        acc2.update([f[i:i + 24] for f in layers], [f[i:i + 24] for f in layers[:2]])
    np.testing.assert_allclose(acc2.result(), M[:, :2], atol=1e-12)


def test_minibatch_skips_tiny_batches_with_warning():
    X, Y = _xy(67)
    acc = C.MinibatchCKA(1, 1)
    for xb, yb in zip(_batches(X, 32), _batches(Y, 32)):  # 32, 32, 3
        if len(xb) < 4:
            with pytest.warns(RuntimeWarning, match="skipping a batch of 3"):
                acc.update([xb], [yb])
        else:
            acc.update([xb], [yb])
    assert (acc.n_batches, acc.skipped_batches, acc.n_examples) == (2, 1, 64)
    assert acc.result()[0, 0] == pytest.approx(
        C.minibatch_cka(_batches(X[:64], 32), _batches(Y[:64], 32)), abs=1e-14)
    with pytest.raises(DalivsslError, match="no batch"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            empty = C.MinibatchCKA(1)
            empty.update([X[:2]])
            empty.result()


def test_minibatch_rejects_mismatched_batches():
    acc = C.MinibatchCKA(1, 1)
    with pytest.raises(DalivsslError, match="same examples"):
        acc.update([np.zeros((8, 3))], [np.zeros((6, 3))])
    with pytest.raises(DalivsslError, match="layers"):
        acc.update([np.zeros((8, 3))] * 2, [np.zeros((8, 3))])
    with pytest.raises(DalivsslError, match="differ in length"):
        C.minibatch_cka([np.zeros((8, 3))], [])


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.cuda_only
def test_cupy_matches_numpy():
    import cupy as cp

    from dalivssl.engine.arrays import cupy_usable, get_xp

    assert cupy_usable() and get_xp("gpu") is cp
    X, Y = _xy(256, seed=3)
    X[:, 0] += 1e4
    for f in (C.linear_cka, C.rbf_cka, lambda a, b: C.linear_cka(a, b, unbiased=True),
              lambda a, b: C.rbf_cka(a, b, unbiased=True)):
        assert abs(f(cp.asarray(X), cp.asarray(Y)) - f(X, Y)) < 1e-10
    K, L = C.gram_linear(X), C.gram_linear(Y)
    assert abs(C.hsic1(cp.asarray(K), cp.asarray(L)) - C.hsic1(K, L)) < 1e-10 * abs(C.hsic1(K, L))
    acc_np, acc_cp = C.MinibatchCKA(2, 2), C.MinibatchCKA(2, 2)
    for xb, yb in zip(_batches(X, 64), _batches(Y, 64)):
        acc_np.update([xb, yb], [yb, xb])
        acc_cp.update([cp.asarray(xb), cp.asarray(yb)], [cp.asarray(yb), cp.asarray(xb)])
    np.testing.assert_allclose(acc_cp.result(), acc_np.result(), atol=1e-10)
    for name in VARIANTS:
        assert abs(VARIANTS[name](cp.asarray(X), cp.asarray(X)) - 1.0) < 1e-10


def test_get_xp_cpu_and_gpu_without_device():
    from dalivssl.engine.arrays import cupy_usable, get_xp

    assert get_xp("cpu") is np
    if not cupy_usable():
        with pytest.raises(DalivsslError, match="CuPy"):
            get_xp("gpu")


# ------------------------------------------------------------------------------ model maps
def _tiny_models():
    """Two small models with cka_layers: the real squeezenet when models has landed, plus a
    stand-in whose layer 'c2' is an orthogonal-free copy path (so A vs B has structure)."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, seed):
            super().__init__()
            torch.manual_seed(seed)
            self.c1 = nn.Conv3d(3, 4, 3, padding=1)
            self.r1 = nn.ReLU()
            self.c2 = nn.Conv3d(4, 6, 3, stride=2, padding=1)
            self.r2 = nn.ReLU()
            self.cka_layers = ["c1", "r1", "c2", "r2"]

        def forward(self, x):
            return self.r2(self.c2(self.r1(self.c1(x)))).mean((2, 3, 4))

    return Tiny(0), Tiny(1)


def _clip_iter(n_batches=3, bs=6, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, 4, 16, 16, generator=g) for _ in range(n_batches)]


def test_cka_map_self_and_pair():
    import torch

    a, b = _tiny_models()
    clips = _clip_iter()
    res = C.cka_map(a, None, clips)
    assert res.map.shape == (4, 4) and res.layers_a == a.cka_layers
    assert np.all(np.diag(res.map) == 1.0)
    assert (res.n_examples, res.n_batches) == (18, 3)
    assert res.feature_dims_a == [4 * 4 * 16 * 16, 4 * 4 * 16 * 16, 6 * 2 * 8 * 8, 6 * 2 * 8 * 8]
    # the map equals minibatch_cka over the hooked activations computed by hand
    with torch.no_grad():
        h1 = [a.c1(x) for x in clips]
        h2 = [a.c2(a.r1(y)) for y in h1]
    want = C.minibatch_cka([h.numpy() for h in h1], [h.numpy() for h in h2])
    assert res.map[0, 2] == pytest.approx(want, abs=1e-10)
    # pair: Batch-like objects with K=1 and a `batches` limit; the training flag is restored
    from pipelines.types import Batch

    b.train()
    batches = [Batch(clips=x[:, None], labels=None, targets=None, indices=None) for x in clips]
    res2 = C.cka_map(a, b, batches + batches, layers_a=["c1", "c2"], layers_b=["r2"], batches=3)
    assert res2.map.shape == (2, 1) and res2.n_batches == 3 and b.training
    assert np.all(np.isfinite(res2.map)) and np.all(np.abs(res2.map) <= 1 + 1e-12)


def test_cka_map_with_real_backbone():
    models = pytest.importorskip("models")
    import torch

    torch.manual_seed(0)
    m = models.create_backbone("squeezenet")
    clips = [torch.randn(4, 3, 8, 32, 32, generator=torch.Generator().manual_seed(i))
             for i in range(2)]
    res = C.cka_map(m, m, clips, layers_a=m.cka_layers[:3])
    assert res.map.shape == (3, 3) and np.all(np.diag(res.map) == 1.0)


def test_cka_map_bad_layers():
    import torch
    from torch import nn

    a, _ = _tiny_models()
    with pytest.raises(DalivsslError, match="no layer named 'nope'"):
        C.cka_map(a, None, _clip_iter(1), layers_a=["nope"])

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 3, 1)
            self.relu = nn.ReLU()  # shared: runs twice per forward

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    with pytest.raises(DalivsslError, match="more than once"):
        C.cka_map(Twice(), None, _clip_iter(1), layers_a=["relu"])
    with pytest.raises(DalivsslError, match="cka_layers"):
        C.cka_map(Twice(), None, _clip_iter(1))
    with pytest.raises(DalivsslError, match="B x C x T x H x W"):
        C.cka_map(a, None, [torch.zeros(4, 3, 8)])


# ---------------------------------------------------------------------------------- CLI
def _pretrain_ckpt(path, seed):
    models = pytest.importorskip("models")
    import torch

    from dalivssl.engine.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    b = models.create_backbone("squeezenet")
    save_checkpoint(path, kind="pretrain", arch="squeezenet", backbone=b.state_dict(), head={},
                    config={}, versions={}, step=0, epoch=0)
    return path


@pytest.mark.slow
def test_cka_cli_end_to_end(tmp_path, tiny_synth):
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.results import ResultsFile

    a, b = _pretrain_ckpt(tmp_path / "a.pt", 0), _pretrain_ckpt(tmp_path / "b.pt", 1)
    common = ["--data", str(tiny_synth["train"]), "--batch-size", "4", "--clip-len", "8",
              "--size", "64"]
    with pytest.warns(RuntimeWarning, match="skipping a batch of 1"):
        r = CliRunner().invoke(cli, ["cka", "--checkpoint", str(a), *common, "--out",
                                     str(tmp_path / "self"), "--layers",
                                     "features.2,features.5,features.8"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    with ResultsFile(tmp_path / "self" / "cka.h5", "r") as rf:
        M = rf.read("cka", "map")
        assert M.shape == (3, 3) and np.all(np.diag(M) == 1.0)
        assert rf.read("cka", "layers_a") == ["features.2", "features.5", "features.8"]
        at = rf.attrs("cka", "map")
        # 9 training videos in batches of 4: 4 + 4 used, the last batch of 1 skipped
        assert (at["n_examples"], at["n_batches"], at["skipped_batches"]) == (8, 2, 1)
        assert at["features"] == "flatten" and at["self_map"]
    assert (tmp_path / "self" / "cka.png").stat().st_size > 1000

    r = CliRunner().invoke(cli, ["cka", "--checkpoint", str(a), "--checkpoint", str(b), *common,
                                 "--batches", "1", "--out", str(tmp_path / "pair")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    with ResultsFile(tmp_path / "pair" / "cka.h5", "r") as rf:
        M = rf.read("cka", "map")
        la, lb = rf.read("cka", "layers_a"), rf.read("cka", "layers_b")
        assert M.shape == (len(la), len(lb)) and la == lb and len(la) > 3
        fin = M[np.isfinite(M)]
        assert fin.size > 0 and np.all((fin >= -1) & (fin <= 1 + 1e-9))
        assert rf.attrs("cka", "map")["n_examples"] == 4
        assert rf.read("cka", "checkpoints") == [str(a.resolve()), str(b.resolve())]
    assert (tmp_path / "pair" / "cka.png").exists()
    assert (tmp_path / "pair" / "cka.csv").read_text().startswith("layer_a,features.2")

    r = CliRunner().invoke(cli, ["cka", "--checkpoint", str(a), *common, "--layers", "nope",
                                 "--out", str(tmp_path / "bad")])
    assert isinstance(r.exception, DalivsslError) and "no layer named 'nope'" in str(r.exception)


@pytest.mark.gpu
@pytest.mark.cuda_only
def test_cka_map_gpu_matches_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # default True for convs
    a, b = _tiny_models()
    clips = _clip_iter(3, 8)
    cpu = C.cka_map(a, b, clips, device="cpu")
    gpu = C.cka_map(a, b, [x.cuda() for x in clips], device="gpu")
    # CPU and cuDNN convolutions round differently, so the maps agree only to float32 accuracy;
    # the CKA arithmetic itself is compared to 1e-10 in test_cupy_matches_numpy
    np.testing.assert_allclose(gpu.map, cpu.map, atol=1e-5)
    self_gpu = C.cka_map(a, None, [x.cuda() for x in clips], device="gpu")
    assert np.all(np.diag(self_gpu.map) == 1.0)


@pytest.mark.slow
def test_cka_uses_each_checkpoints_record_and_is_symmetric(tmp_path, tiny_synth):
    """A VCOP pretrain checkpoint (8×64², [0,1] input) against an ImageNet-normalised one: with no
    flag, each model is fed as its record says, and swapping A and B transposes the map."""
    import torch
    from click.testing import CliRunner

    from dalivssl.cli import cli
    from dalivssl.record import ClipSettings, RunRecord
    from dalivssl.results import ResultsFile

    models = pytest.importorskip("models")
    from dalivssl.engine.checkpoint import save_checkpoint

    paths = []
    for i, (task, norm) in enumerate([("vcop", "unit"), ("rotnet", "imagenet")]):
        torch.manual_seed(i)
        b = models.create_backbone("squeezenet")
        r = RunRecord(kind="pretrain", name=f"{task}_sq", arch="squeezenet", task=task,
                      clip=ClipSettings(8, 64, norm), status="complete")
        p = tmp_path / f"{task}.pt"
        save_checkpoint(p, kind="pretrain", arch="squeezenet", task=task, record=r.to_dict(),
                        backbone=b.state_dict(), head={}, config={}, versions={}, step=0,
                        epoch=0)
        paths.append(p)
    common = ["--data", str(tiny_synth["train"]), "--batch-size", "4", "--batches", "2",
              "--layers", "features.2,features.5,features.8"]
    maps = []
    for order, out in ((paths, "ab"), (paths[::-1], "ba")):
        r = CliRunner().invoke(cli, ["cka", "--checkpoint", str(order[0]), "--checkpoint",
                                     str(order[1]), *common, "--out", str(tmp_path / out)])
        assert r.exit_code == 0, r.output + repr(r.exception)
        with ResultsFile(tmp_path / out / "cka.h5", "r") as rf:
            maps.append(rf.read("cka", "map"))
            meta = rf.meta()
            assert meta["record"]["clip"]["clip_len"] == 8 and meta["record"]["clip"]["size"] == 64
            assert rf.read("cka", "names") == [Path(order[0]).stem + "_sq",
                                               Path(order[1]).stem + "_sq"]
    np.testing.assert_allclose(maps[0], maps[1].T, atol=1e-9)
    assert meta["config"]["normalize"] == ["imagenet", "unit"]  # B→A order: rotnet first
    # the same dir again: refused, not silently replaced
    r = CliRunner().invoke(cli, ["cka", "--checkpoint", str(paths[0]), *common, "--out",
                                 str(tmp_path / "ab")])
    assert isinstance(r.exception, DalivsslError) and "pass --resume" in str(r.exception)
