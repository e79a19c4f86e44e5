"""Centred kernel alignment (CKA) and layer x layer minibatch CKA maps.

Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019 (CKA);
Song et al., JMLR 13 (2012) (unbiased HSIC_1); Nguyen, Raghu & Kornblith, "Do Wide and Deep Networks
Learn the Same Things?", ICLR 2021 (minibatch CKA as a ratio of accumulated HSIC_1 sums).

Every function takes NumPy or CuPy arrays and runs the same code on both (the array module comes
from the input). Features are X: n x p (any trailing shape is flattened per example), Gram matrices
K: n x n. Numerics (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"): features are cast to float64 and column-centred per batch
*before* X X^T, and all sums are float64, so a large constant offset on float32 post-ReLU features
cannot cancel catastrophically (torch-cka's NaNs).

Maps flatten each hooked activation to one vector per example (B, C*T*H*W); they do not pool.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from dalivssl.engine.arrays import array_module, from_torch, get_xp, to_numpy
from dalivssl.errors import DalivsslError

# float64 elements per column chunk when building a Gram matrix (bounds the float64 copy).
_CHUNK_ELEMS = 1 << 24


# ----------------------------------------------------------------------------------- kernels
def flatten(X):
    """(n, ...) -> (n, p) view/copy; flatten order is irrelevant (a permutation is orthogonal)."""
    return X.reshape(X.shape[0], -1)


def gram_linear(X, chunk_elems: int = _CHUNK_ELEMS):
    """Linear Gram K = X_c X_c^T (n x n, float64) of column-centred features.

    Columns are processed in chunks: centring is per column, so chunking is exact and the float64
    copy never exceeds ``chunk_elems`` elements (R3D conv2 is ~3.2M dims per clip).
    """
    xp = array_module(X)
    X = flatten(X)
    n, p = X.shape
    G = xp.zeros((n, n), dtype=xp.float64)
    step = max(1, chunk_elems // max(n, 1))
    for s in range(0, p, step):
        c = X[:, s:s + step].astype(xp.float64)
        c -= c.mean(axis=0, keepdims=True)
        G += c @ c.T
    return (G + G.T) * 0.5


def gram_rbf(X, sigma_frac: float = 0.8):
    """RBF Gram exp(-d_ij^2 / (2 sigma^2)), sigma^2 = sigma_frac^2 * median(d^2) over the full
    n x n squared-distance matrix, zero diagonal included (Google's gram_rbf, ckatorch rbf_kernel).
    The median-relative bandwidth makes RBF CKA invariant to isotropic scaling."""
    xp = array_module(X)
    G = gram_linear(X)  # distances are translation invariant: centring is exact and stabler
    d = xp.diag(G)
    sq = xp.maximum(d[:, None] + d[None, :] - 2.0 * G, 0.0)
    med = float(xp.median(sq))
    if med <= 0.0:
        raise DalivsslError("rbf_cka: median squared distance is 0 (all examples identical)")
    return xp.exp(-sq / (2.0 * sigma_frac ** 2 * med))


def center_gram(K, unbiased: bool = False):
    """Centre a Gram matrix (float64 copy).

    Biased: H K H with H = I - 11^T/n. Unbiased (Song et al. 2012; Google center_gram): zero the
    diagonal, let m = column sums/(n-2) and m' = m - sum(m)/(2(n-1)), subtract m'_i + m'_j (so
    sum(m)/(n-1) in total, not /(2(n-1)): that misreading breaks the equality), zero the diagonal
    again, giving U(K) with HSIC_1(K, L) = <U(K), U(L)>_F / (n(n-3)). Needs n >= 4 when unbiased.
    """
    xp = array_module(K)
    K = xp.array(K, dtype=xp.float64, copy=True)
    n = K.shape[0]
    if K.ndim != 2 or K.shape[1] != n:
        raise DalivsslError(f"Gram matrix must be square n x n, got shape {tuple(K.shape)}")
    if unbiased:
        _need4(n)
        idx = xp.arange(n)
        K[idx, idx] = 0.0
        m = K.sum(axis=0) / (n - 2)
        m -= m.sum() / (2.0 * (n - 1))  # applied to both m_i and m_j: sum(m)/(n-1) in total
        K -= m[:, None] + m[None, :]
        K[idx, idx] = 0.0
        return K
    K -= K.mean(axis=0, keepdims=True)
    K -= K.mean(axis=1, keepdims=True)
    return K


def _need4(n: int) -> None:
    if n < 4:
        raise DalivsslError(f"unbiased HSIC needs at least 4 examples, got n={n}")


def _check_pair(K, L) -> int:
    if K.shape != L.shape or K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise DalivsslError(f"Gram matrices must be n x n of equal size, got {tuple(K.shape)} "
                            f"and {tuple(L.shape)}")
    return int(K.shape[0])


def hsic0(K, L) -> float:
    """Biased HSIC_0 = tr(K H L H) / (n-1)^2 (Gretton et al. 2005)."""
    n = _check_pair(K, L)
    xp = array_module(K, L)
    return float(xp.sum(center_gram(K) * center_gram(L))) / (n - 1) ** 2


def hsic1(K, L) -> float:
    """Unbiased HSIC_1 (Song et al. 2012, eq. 5), n >= 4:
    [tr(K~L~) + 1'K~1 1'L~1/((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~ = K with zero diagonal.
    """
    n = _check_pair(K, L)
    _need4(n)
    xp = array_module(K, L)
    idx = xp.arange(n)
    Kt = xp.array(K, dtype=xp.float64, copy=True)
    Lt = xp.array(L, dtype=xp.float64, copy=True)
    Kt[idx, idx] = 0.0
    Lt[idx, idx] = 0.0
    tr = xp.sum(Kt * Lt.T)
    sums = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (Kt.sum(axis=0) @ Lt.sum(axis=1))
    return float(tr + sums - cross) / (n * (n - 3))


def hsic1_centered(K, L) -> float:
    """HSIC_1 via the U-centring form: <U(K), U(L)>_F / (n(n-3)); equals :func:`hsic1`."""
    n = _check_pair(K, L)
    xp = array_module(K, L)
    return float(xp.sum(center_gram(K, True) * center_gram(L, True))) / (n * (n - 3))


def cka_from_grams(K, L, unbiased: bool = False) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)); normalising constants cancel.
    NaN (with a warning) when a representation is constant."""
    _check_pair(K, L)
    xp = array_module(K, L)
    Kc, Lc = center_gram(K, unbiased), center_gram(L, unbiased)
    kl, kk, ll = (float(xp.sum(a * b)) for a, b in ((Kc, Lc), (Kc, Kc), (Lc, Lc)))
    return _ratio(kl, kk, ll)


def _ratio(kl: float, kk: float, ll: float) -> float:
    den = math.sqrt(kk * ll) if kk * ll > 0 else 0.0
    if den == 0.0:
        warnings.warn("CKA undefined: a representation has zero HSIC with itself (constant "
                      "features); returning NaN", RuntimeWarning, stacklevel=3)
        return float("nan")
    return kl / den


def _check_n(X, Y) -> None:
    if X.shape[0] != Y.shape[0]:
        raise DalivsslError(f"CKA needs the same examples in X and Y, got n={X.shape[0]} and "
                            f"n={Y.shape[0]}")


def linear_cka(X, Y, unbiased: bool = False) -> float:
    """Linear CKA of X (n x p1) and Y (n x p2), Gram form (p >> n for conv layers).
    unbiased=True uses HSIC_1 (needs n >= 4; near 0 for independent data, may be negative)."""
    _check_n(X, Y)
    return cka_from_grams(gram_linear(X), gram_linear(Y), unbiased)


def rbf_cka(X, Y, sigma_frac: float = 0.8, unbiased: bool = False) -> float:
    """RBF-kernel CKA with sigma^2 = sigma_frac^2 * median squared distance (spec 2.1)."""
    _check_n(X, Y)
    return cka_from_grams(gram_rbf(X, sigma_frac), gram_rbf(Y, sigma_frac), unbiased)


# ------------------------------------------------------------------------- minibatch CKA
class MinibatchCKA:
    """Accumulates a layer x layer minibatch CKA map (Nguyen et al. ICLR 2021).

    Per batch of n >= 4 examples: K_a = Gram of layer a (centred float64 features), U_a = U(K_a),
    S_AB[a,b] += HSIC_1(K_a, L_b), S_A[a] += HSIC_1(K_a, K_a), S_B[b] += HSIC_1(L_b, L_b).
    :meth:`result` = S_AB / sqrt(S_A S_B^T): a ratio of sums, not a mean of per-batch CKAs.
    Batches with n < 4 are skipped with a warning (HSIC_1's denominator n(n-3) vanishes).

    ``update(feats_a)`` without ``feats_b`` (or with the same list) is a self-map: one set of
    Gram matrices serves both sides, so its diagonal is exactly 1.
    """

    def __init__(self, n_layers_a: int, n_layers_b: int | None = None, xp: Any = None):
        self.n_layers_a = int(n_layers_a)
        self.n_layers_b = int(n_layers_a if n_layers_b is None else n_layers_b)
        self.xp = xp
        self.s_ab = self.s_a = self.s_b = None
        self.n_examples = 0
        self.n_batches = 0
        self.skipped_batches = 0

    def _centred_grams(self, feats) -> Any:
        xp = self.xp
        return xp.stack([center_gram(gram_linear(f), unbiased=True).reshape(-1) for f in feats])

    def update(self, feats_a: Sequence, feats_b: Sequence | None = None) -> None:
        """feats_a: list of L_a arrays (n, ...); feats_b: list of L_b arrays (n, ...) or None."""
        same = feats_b is None or feats_b is feats_a
        feats_b = feats_a if same else feats_b
        if len(feats_a) != self.n_layers_a or len(feats_b) != self.n_layers_b:
            raise DalivsslError(f"MinibatchCKA expects {self.n_layers_a} x {self.n_layers_b} "
                                f"layers, got {len(feats_a)} x {len(feats_b)}")
        ns = {int(f.shape[0]) for f in list(feats_a) + list(feats_b)}
        if len(ns) != 1:
            raise DalivsslError(f"all layers must see the same examples, got batch sizes "
                                f"{sorted(ns)}")
        n = ns.pop()
        if n < 4:
            warnings.warn(f"MinibatchCKA: skipping a batch of {n} < 4 examples (HSIC_1 needs "
                          "n >= 4)", RuntimeWarning, stacklevel=2)
            self.skipped_batches += 1
            return
        if self.xp is None:
            self.xp = array_module(feats_a[0])
        xp = self.xp
        if self.s_ab is None:
            self.s_ab = xp.zeros((self.n_layers_a, self.n_layers_b), xp.float64)
            self.s_a = xp.zeros(self.n_layers_a, xp.float64)
            self.s_b = xp.zeros(self.n_layers_b, xp.float64)
        scale = 1.0 / (n * (n - 3))  # per batch: batches may differ in size
        ua = self._centred_grams(feats_a)
        if same:
            g = (ua @ ua.T) * scale
            self.s_ab += g
            self.s_a += xp.diag(g)
            self.s_b += xp.diag(g)
        else:
            la = self.n_layers_a
            u = xp.concatenate([ua, self._centred_grams(feats_b)])
            g = (u @ u.T) * scale
            self.s_ab += g[:la, la:]
            self.s_a += xp.diag(g)[:la]
            self.s_b += xp.diag(g)[la:]
        self.n_examples += n
        self.n_batches += 1

    def result(self) -> np.ndarray:
        """float64 L_a x L_b map (NumPy). NaN where a layer's self-HSIC sum is not positive."""
        if self.s_ab is None:
            raise DalivsslError("MinibatchCKA: no batch of >= 4 examples was accumulated")
        s_ab, s_a, s_b = to_numpy(self.s_ab), to_numpy(self.s_a), to_numpy(self.s_b)
        den = np.sqrt(np.clip(s_a[:, None] * s_b[None, :], 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(den > 0, s_ab / np.where(den > 0, den, 1.0), np.nan)
        return out


def minibatch_cka(batches_X: Iterable, batches_Y: Iterable) -> float:
    """Minibatch linear CKA of one pair of representations over paired batches (n_i, ...)."""
    acc = MinibatchCKA(1, 1)
    for x, y in _zip_strict(batches_X, batches_Y):
        acc.update([x], [y])
    return float(acc.result()[0, 0])


def _zip_strict(a: Iterable, b: Iterable):
    sentinel = object()
    ia, ib = iter(a), iter(b)
    while True:
        x, y = next(ia, sentinel), next(ib, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise DalivsslError("minibatch_cka: the two batch sequences differ in length")
        yield x, y


# ----------------------------------------------------------------------------- model maps
@dataclass
class CKAMap:
    """A layer x layer CKA map: ``map[a, b]`` = CKA(layer_a of A, layer_b of B)."""

    map: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    n_examples: int
    n_batches: int
    skipped_batches: int = 0
    feature_dims_a: list[int] = field(default_factory=list)
    feature_dims_b: list[int] = field(default_factory=list)


class _Hooks:
    """Forward hooks that keep each named layer's output of the current forward pass."""

    def __init__(self, model, names: Sequence[str], which: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            valid = [n for n in modules if n]
            raise DalivsslError(f"model {which}: no layer named {', '.join(map(repr, missing))}; "
                                f"valid: {', '.join(valid[:40])}{' ...' if len(valid) > 40 else ''}")
        self.names = list(names)
        self.out: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name):
        def fn(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.out[name] = output.detach()
            self.calls[name] = self.calls.get(name, 0) + 1
        return fn

    def collect(self, which: str) -> list:
        twice = [n for n in self.names if self.calls.get(n, 0) > 1]
        if twice:
            # a hook keeps only the last call: a module reused within a forward (shared inplace
            # ReLU) would silently give the wrong activation
            raise DalivsslError(f"model {which}: layer(s) {', '.join(twice)} run more than once "
                                "per forward; choose modules that run once")
        silent = [n for n in self.names if n not in self.out]
        if silent:
            raise DalivsslError(f"model {which}: layer(s) {', '.join(silent)} never ran in forward")
        feats = [self.out[n] for n in self.names]
        self.out, self.calls = {}, {}
        return feats

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _clips_of(item):
    """Batch-like (``.clips`` B x K x C x T x H x W), (x, *rest) tuples, or a tensor B x C x T x H x W
    (or B x K x C x T x H x W) -> B' x C x T x H x W, K clips folded into the batch."""
    x = getattr(item, "clips", None)
    if x is None:
        x = item[0] if isinstance(item, (tuple, list)) else item
    if x.ndim == 6:
        x = x.reshape(-1, *x.shape[2:])
    if x.ndim != 5:
        raise DalivsslError(f"cka_map expects clips B x C x T x H x W, got shape {tuple(x.shape)}")
    return x


def cka_map(model_a, model_b, loader: Iterable, layers_a: Sequence[str] | None = None,
            layers_b: Sequence[str] | None = None, batches: int | None = None,
            device: str = "cpu", progress: Any = None) -> CKAMap:
    """Minibatch linear CKA map between the named layers of two models on the same clips.

    model_b=None (or the same object) compares ``model_a`` with itself: one forward per batch, and
    the diagonal is exactly 1. Layers default to each model's ``cka_layers`` (contract C5). Both
    models run in eval mode under no_grad on identical clips in identical order; each activation is
    flattened (not pooled) and reduced to its Gram matrix at once. ``device`` 'gpu'/'cuda:<i>' runs
    the models and the CKA arithmetic (CuPy) on that GPU. ``progress``: optional
    callable(batches_done).
    """
    import contextlib

    import torch

    xp = get_xp(device)
    # the GPU the run was given ('cuda:1' stays GPU 1); 'gpu'/'cuda': the current one
    tdev = torch.device("cpu" if xp is np else device if str(device).startswith("cuda:")
                        else f"cuda:{torch.cuda.current_device()}")
    same_model = model_b is None or model_b is model_a
    model_b = model_a if same_model else model_b
    layers_a = list(layers_a or _default_layers(model_a, "A"))
    layers_b = list(layers_b or (layers_a if same_model else _default_layers(model_b, "B")))
    self_map = same_model and layers_a == layers_b
    models = [model_a] if same_model else [model_a, model_b]
    modes = [m.training for m in models]
    if same_model:  # one forward serves both sides; hook the union of the layer lists once
        hooks_a = _Hooks(model_a, list(dict.fromkeys(layers_a + layers_b)), "A")
        hooks_b = None
    else:
        hooks_a = _Hooks(model_a, layers_a, "A")
        hooks_b = _Hooks(model_b, layers_b, "B")
    acc = MinibatchCKA(len(layers_a), len(layers_b), xp=xp)
    dims_a: list[int] = []
    dims_b: list[int] = []
    conv = lambda fs: [from_torch(f, xp) for f in fs]  # noqa: E731
    on_gpu = xp.cuda.Device(tdev.index) if xp is not np else contextlib.nullcontext()
    try:
        for m in models:
            m.eval().to(tdev)
        with torch.no_grad(), on_gpu:
            for i, item in enumerate(loader):
                if batches is not None and i >= batches:
                    break
                x = _clips_of(item).to(tdev, dtype=torch.float32)
                model_a(x)
                if same_model:
                    by_name = dict(zip(hooks_a.names, hooks_a.collect("A")))
                    fa = [by_name[n] for n in layers_a]
                    fb = fa if self_map else [by_name[n] for n in layers_b]
                else:
                    fa = hooks_a.collect("A")
                    model_b(x)
                    fb = hooks_b.collect("B")
                if self_map:
                    acc.update(conv(fa))
                else:
                    acc.update(conv(fa), conv(fb))
                if not dims_a:
                    dims_a = [int(np.prod(f.shape[1:])) for f in fa]
                    dims_b = [int(np.prod(f.shape[1:])) for f in fb]
                if progress is not None:
                    progress(i + 1)
    finally:
        hooks_a.remove()
        if hooks_b is not None:
            hooks_b.remove()
        for m, was_training in zip(models, modes):
            m.train(was_training)
    return CKAMap(acc.result(), layers_a, layers_b, acc.n_examples, acc.n_batches,
                  acc.skipped_batches, dims_a, dims_b)


def _default_layers(model, which: str) -> list[str]:
    layers = getattr(model, "cka_layers", None)
    if not layers:
        raise DalivsslError(f"model {which} ({type(model).__name__}) has no cka_layers; pass "
                            "layer names explicitly")
    return list(layers)


def feed_normalized(model, mode: str):
    """Make ``model`` take [0,1] clips (B×C×T×H×W) and see them normalised its own way: a forward
    pre-hook converts to ImageNet statistics when ``mode`` is 'imagenet' ('unit': unchanged).
    Layer names stay as they are, so CKA taps the same modules. Returns the hook handle."""
    import torch

    from pipelines.types import norm_stats

    if mode == "unit":
        return None
    stats = norm_stats(mode)

    def pre(_module, args):
        x = args[0]
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
                     for v in stats)
        return ((x - mean) / std,) + tuple(args[1:])

    return model.register_forward_pre_hook(pre)
