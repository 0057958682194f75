"""Every per-layer statistic of docs/SCIENCE.md (declared in statnames.py), jit-compiled
JAX on the device that holds the Grams. A layer's numbers come from three decompositions - eigh(agop), eigvalsh(pgop)
and the SVD of W - plus eigh of the gradient-centred AGOP, and from GEMMs; each is done
once and reused by every statistic that needs it. Layers of one shape (and the runs of a
seed batch) are computed together under `jax.vmap`.

The SVD of W is had from eigh of the smaller Gram matrix, W W^T (computed anyway) or
W^T W: exact unless W is numerically rank-deficient, which the eigenvalues tell; those
layers are computed again with a true SVD (`route="svd"`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import baselines as bl
from .grams import Reps
from .programs import ELEMENTAL, stored
from .statnames import (ALIGN_KEYS, GRADIENT_CENTRED_KEYS, ISO_KEYS, ISO_RANGE_KEYS, N_ALIGN, NO_BULK_KEYS,
                        RANDOM_KEYS, REGISTRY, names, shown)

F64 = jnp.float64
ALPHA_RANGE = (0.05, 2.0)
ALPHA_GRID = 391  # step 0.005
EDGE = 1e-6  # a maximiser this close to an end of ALPHA_RANGE is at that end
GOLDEN_STEPS = 40
# Gram-route reliability: eigh(W W^T) gives every singular value above sqrt(TAU_LEFT) s_max
# to full relative accuracy, so the rank is certain; U = W V / s (the route for tall W)
# stays orthonormal to ~eps / TAU_RIGHT.
TAU_LEFT = 1e-12
TAU_RIGHT = 1e-4
MATRICES = ("nfm", "agop", "agop_half", "pgop")
# Decisions (is this eigenvalue zero, is this curve flat, is G singular) are taken at the
# rounding scale of what they judge, with this margin above it, so that a rounding
# difference between machines or thread counts cannot flip them (docs/SCIENCE.md).
MARGIN = 10.0
EPS64 = float(np.finfo(np.float64).eps)


class LayerIn(NamedTuple):
    """One layer's inputs (float64 on the device); stacked along a leading axis for a batch
    of layers of one shape. `boot` is (B, k_out, k_out), B = 0 without bootstrap."""

    W: jax.Array
    W0: jax.Array
    agop: jax.Array
    pgop: jax.Array
    agop_c: jax.Array  # the gradient-centred agop
    gdev: jax.Array  # E|g - g*|_F^2: the rounding scale of the centred Grams (grams.Grams)
    pcov: jax.Array
    boot: jax.Array
    lamG: jax.Array  # ascending eigenvalues of pgop (eigvalsh_pgop)
    rel_tol: jax.Array
    base: bl.Terms
    reps: Reps  # the representation Grams for CKA (zeros where none were computed)


# ============================================================================ helpers
def _sym(A):
    return 0.5 * (A + A.T)


def _nan():
    return jnp.asarray(jnp.nan, F64)


def pearson(A, B):
    """Pearson correlation of the flattened entries (Science-era convention); nan if either
    matrix is constant."""
    a = A.ravel() - A.mean()
    b = B.ravel() - B.mean()
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(den > 0, (a @ b) / jnp.where(den > 0, den, 1.0), jnp.nan)


def cosine(A, B):
    """<A, B>_F / (|A|_F |B|_F), no centring (arXiv-era convention); nan if either is 0."""
    a, b = A.ravel(), B.ravel()
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(den > 0, (a @ b) / jnp.where(den > 0, den, 1.0), jnp.nan)


def traceless_pearson(A, B):
    """pearson(A - (tr A / k) I, B - (tr B / k) I): the correlation once each matrix's mean
    diagonal (an identity bulk, present at initialisation) is taken out."""
    k = A.shape[0]
    eye = jnp.eye(k, dtype=A.dtype)
    return pearson(A - jnp.trace(A) / k * eye, B - jnp.trace(B) / k * eye)


def offdiag_pearson(A, B):
    """Pearson correlation over the k (k - 1) / 2 strict upper-triangle entries (i < j)
    alone; nan for k = 1 or a constant off-diagonal."""
    k = A.shape[0]
    up = jnp.triu(jnp.ones((k, k), bool), 1)
    K = max(k * (k - 1) // 2, 1)
    a = jnp.where(up, A - jnp.sum(jnp.where(up, A, 0.0)) / K, 0.0)
    b = jnp.where(up, B - jnp.sum(jnp.where(up, B, 0.0)) / K, 0.0)
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return jnp.where(den > 0, jnp.sum(a * b) / jnp.where(den > 0, den, 1.0), jnp.nan)


def centred_noise(s2, G, gdev, rel_tol):
    """The rounding scale (Frobenius) of a gradient-centred agop = W^T C W, C the centred
    pgop accumulated about one sample's gradients g* (grams.py): C's entries carry errors
    of eps |g| |g - g*|, hence rel_tol sqrt(tr G E|g - g*|^2), and W^T C W multiplies
    them by at most s_max(W)^2 = `s2`."""
    return rel_tol * s2 * jnp.sqrt(jnp.clip(jnp.trace(G), 0.0) * jnp.clip(gdev, 0.0))


def cka(AB, AA, BB, sA, sB, rel_tol):
    """Linear CKA |A_c^T B_c|_F^2 / (|A_c^T A_c|_F |B_c^T B_c|_F) from the centred Grams;
    nan where either representation is constant across the samples to rounding (its
    centred Gram within MARGIN rel_tol of the trace of its second moment, sA or sB)."""
    nA, nB = jnp.linalg.norm(AA), jnp.linalg.norm(BB)
    ok = (nA > MARGIN * rel_tol * sA) & (nB > MARGIN * rel_tol * sB)
    return jnp.where(ok, jnp.sum(AB * AB) / jnp.where(ok, nA * nB, 1.0), jnp.nan)


def pearson_from_sums(K, sA, sB, sAA, sBB, sAB):
    """Pearson of two K-entry matrices from the sums of their entries, squares and products."""
    mA, mB = sA / K, sB / K
    cov = sAB / K - mA * mB
    den = jnp.sqrt(jnp.clip(sAA / K - mA * mA, 0.0) * jnp.clip(sBB / K - mB * mB, 0.0))
    return jnp.where(den > 0, cov / jnp.where(den > 0, den, 1.0), jnp.nan)


def clip_spectrum(lam, rel_tol, floor=0.0):
    """Eigenvalues of a PSD matrix with the numerically zero ones set to 0: negative ones and
    those within MARGIN of the rounding scale, max(rel_tol * l_max, floor) (`floor`: that of
    the computation that formed the matrix). Raised to a small power alpha, a rounding-level
    1e-17 would become 1e-17^0.05 = 0.14, so 'zero' must mean zero."""
    top = lam.max()
    keep = lam > MARGIN * jnp.maximum(rel_tol * top, floor)
    return jnp.where((top > 0) & keep, lam, 0.0)


class PowerPearson(NamedTuple):
    """pearson(N, A^alpha) for many alpha after one eigh of A: with A = V diag(l) V^T and
    d = l^alpha, <N, A^a>_F = sum_j d_j (V^T N V)_jj, sum(A^a) = sum_j d_j (V^T 1)_j^2 and
    |A^a|_F^2 = sum_j d_j^2, so each alpha costs O(k) instead of O(k^3). N and the
    spectrum are scaled to max 1 (Pearson and cosine are scale invariant)."""

    lam: jax.Array
    nd: jax.Array
    u2: jax.Array
    K: int
    sumN: jax.Array
    sqN: jax.Array

    @classmethod
    def make(cls, N, lam, V, rel_tol, floor=0.0):
        lam = clip_spectrum(lam, rel_tol, floor)
        top = lam.max()
        lam = jnp.where(top > 0, lam / jnp.where(top > 0, top, 1.0), lam)
        nmax = jnp.abs(N).max()
        N = jnp.where(nmax > 0, N / jnp.where(nmax > 0, nmax, 1.0), N)
        nd = jnp.sum(V * (N @ V), axis=0)  # diag(V^T N V) with one GEMM
        return cls(lam, nd, V.sum(0) ** 2, N.size, N.sum(), jnp.sum(N * N))

    def _d(self, alphas):
        pos = self.lam > 0
        loglam = jnp.log(jnp.where(pos, self.lam, 1.0))  # l^a = exp(a log l): one log per eigenvalue
        return jnp.where(pos[None, :], jnp.exp(alphas[:, None] * loglam[None, :]), 0.0)

    def many(self, alphas):
        """pearson(N, A^alpha) for each alpha of the 1-D array `alphas`."""
        d = self._d(alphas)
        return pearson_from_sums(self.K, self.sumN, d @ self.u2, self.sqN, jnp.sum(d * d, 1), d @ self.nd)

    def cosine(self, alpha):
        d = self._d(jnp.asarray([alpha], F64))[0]
        den = jnp.sqrt(self.sqN * jnp.sum(d * d))
        return jnp.where(den > 0, (d @ self.nd) / jnp.where(den > 0, den, 1.0), jnp.nan)

    def __call__(self, alpha):
        return self.many(jnp.reshape(alpha, (1,)).astype(F64))[0]


def alpha_grid():
    """The alphas of ALPHA_RANGE in steps of 0.005 (391 points)."""
    return jnp.linspace(*ALPHA_RANGE, ALPHA_GRID, dtype=F64)


def curve_range(pp: PowerPearson):
    """max - min of pearson(N, A^alpha) over alpha_grid(); nan where it is nowhere defined."""
    vals = pp.many(alpha_grid())
    return jnp.where(jnp.any(jnp.isfinite(vals)), jnp.nanmax(vals) - jnp.nanmin(vals), jnp.nan)


def alpha_star(pp: PowerPearson):
    """The alpha in [0.05, 2] maximising pearson(nfm, agop^alpha): a grid of step 0.005,
    then golden-section refinement on the bracket around the best grid point. Returns
    (alpha_star, edge, maximum): alpha_star is nan where the correlation does not depend on
    alpha (then the maximum is nan too) and where the maximum sits at an end of the range,
    which edge says (-1 low, +1 high, 0 otherwise)."""
    lo, hi = ALPHA_RANGE
    grid = alpha_grid()
    vals = pp.many(grid)
    fin = jnp.isfinite(vals)
    # the curve's values are float64 sums over the k eigenvalues: flat within that rounding
    # (e.g. a rank-1 agop, whose powers are all proportional) has no maximiser
    tol = MARGIN * pp.lam.shape[0] * EPS64
    flat = jnp.nanmax(vals) - jnp.nanmin(vals) <= tol
    i = jnp.nanargmax(jnp.where(fin, vals, -jnp.inf))
    a, b = grid[jnp.maximum(i - 1, 0)], grid[jnp.minimum(i + 1, ALPHA_GRID - 1)]
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = b - g * (b - a), a + g * (b - a)

    def step(_, c):
        a, b, x1, x2, f1, f2 = c
        left = f1 >= f2
        a2 = jnp.where(left, a, x1)
        b2 = jnp.where(left, x2, b)
        nx1 = jnp.where(left, b2 - g * (b2 - a2), x2)
        nx2 = jnp.where(left, x1, a2 + g * (b2 - a2))
        fnew = pp(jnp.where(left, nx1, nx2))
        return (a2, b2, nx1, nx2, jnp.where(left, fnew, f2), jnp.where(left, f1, fnew))

    _, _, x1, x2, f1, f2 = jax.lax.fori_loop(0, GOLDEN_STEPS, step, (a, b, x1, x2, pp(x1), pp(x2)))
    fx, x = jnp.where(f1 >= f2, f1, f2), jnp.where(f1 >= f2, x1, x2)
    # keep the refined point unless the grid point is better by more than rounding: on a
    # nearly flat curve a bare max() would flip between the two on 1e-16 noise
    best = jnp.where(~jnp.isfinite(fx) | (vals[i] > fx + tol * jnp.maximum(1.0, jnp.abs(fx))), grid[i], x)
    # a maximum at an end of the range is no best exponent: the best lies beyond it
    edge = jnp.where(best <= lo + EDGE, -1, jnp.where(best >= hi - EDGE, 1, 0))
    ok = jnp.any(fin) & ~flat
    at_best = jnp.where(best == grid[i], vals[i], fx)
    return jnp.where(ok & (edge == 0), best, jnp.nan), jnp.where(ok, edge, 0), jnp.where(ok, at_best, jnp.nan)


def tightness_of(tr, tr2, k):
    """(tr G)^2 / (k tr G^2) from the trace and |G|_F^2: 1 exactly when G = cI."""
    ok = (tr > 0) & (tr2 > 0)
    return jnp.where(ok, tr * tr / (k * jnp.where(ok, tr2, 1.0)), jnp.nan)


def tightness(G, k=None):
    """tightness_of G; `k`: the size of its nonzero leading block (default: all of G)."""
    return tightness_of(jnp.trace(G), jnp.sum(G * G), G.shape[0] if k is None else k)


def isotropy(G, r, lmin, lmax, rel_tol):
    """tightness, iso_dev, eff_rank and cond of the leading r x r block of G (the rest is
    zero), whose extreme eigenvalues are lmin, lmax; each is 1.0 / 0.0 / r / 1.0 exactly
    when the block is cI. cond is nan when it is numerically singular (l_min <= rel_tol
    l_max)."""
    k = G.shape[0]
    inside = jnp.arange(k) < r
    tr = jnp.trace(G)
    t = tightness_of(tr, jnp.sum(G * G), r)
    mean = tr / jnp.where(r > 0, r, 1)
    dev = jnp.where(inside[:, None] & inside[None, :], G / jnp.where(mean != 0, mean, 1.0) - jnp.eye(k), 0.0)
    ok = jnp.isfinite(t)
    cond = jnp.where((lmin > MARGIN * rel_tol * lmax) & (lmin > 0), lmax / jnp.where(lmin > 0, lmin, 1.0), jnp.nan)
    return {
        "tightness": t,
        "iso_dev": jnp.where(ok, jnp.linalg.norm(dev) / jnp.sqrt(jnp.where(r > 0, r, 1)), jnp.nan),
        "eff_rank": r * t,  # (tr G)^2 / tr G^2
        "cond": jnp.where(ok, cond, jnp.nan),
    }


ISO_LEVEL = 0.9  # iso_dim90: the tightness every leading block must reach


def group_ends(s, r, size: int):
    """Where iso_dim90 looks (bool, per index j = 0..m-1 of the descending singular values
    s of a matrix whose larger side is `size`): the ends of groups of tied singular values
    within the rank r. s_j and s_{j+1} tie when s_j^2 - s_{j+1}^2 is within MARGIN of the
    rounding of the float64 Gram they come from, size eps s_max^2 (the scale at which
    w_rank is decided); inside a group the top-j singular vectors are not determined, the
    group's span is."""
    m = s.shape[0]
    s2 = s * s
    nxt = jnp.concatenate([s2[1:], jnp.zeros((1,), s.dtype)])
    idx = jnp.arange(m)
    return (idx < r) & ((idx == r - 1) | (s2 - nxt > MARGIN * size * EPS64 * s2[0]))


def iso_dim(M, ends, tol):
    """The largest j among `ends` such that the leading j x j block of M (M = U^T G U in
    the order of the singular values) has tightness >= ISO_LEVEL - tol at every end up to
    j; 0 when the first end fails. A block's tightness comes from running sums: its trace,
    and |block_j|_F^2 = |block_{j-1}|_F^2 plus row j and column j of M up to j."""
    m = M.shape[0]
    d = jnp.diagonal(M)
    S = M * M
    shell = jnp.sum(jnp.triu(S), axis=0) + jnp.sum(jnp.tril(S, -1), axis=1)
    j = jnp.arange(1, m + 1)
    t = tightness_of(jnp.cumsum(d), jnp.cumsum(shell), j)
    fail = ends & ~(t >= ISO_LEVEL - tol)  # a nan tightness (no trace) fails
    first = jnp.min(jnp.where(fail, j, m + 1))
    return jnp.max(jnp.where(ends & (j < first), j, 0))


def eigvalsh_pgop(G):
    """Ascending eigenvalues of pgop, before the statistics run. On CPU with numpy's LAPACK,
    which skips the eigenvectors that XLA's CPU eigvalsh computes regardless (0.04 s against
    0.11 s at 1024); there the device is the host, so nothing travels. (Not a pure_callback
    inside the statistics: a program with a host callback is never kept in the persistent
    compilation cache.)"""
    if jax.default_backend() == "cpu":
        G = np.asarray(G)
        return np.linalg.eigvalsh(0.5 * (G + G.T))
    return _eigvalsh_sym(G)


@jax.jit
def _eigvalsh_sym(G):
    return jnp.linalg.eigvalsh(_sym(G))


def mean_sd(vals):
    """Mean and sample standard deviation of the finite entries (sd nan below two)."""
    fin = jnp.isfinite(vals)
    n = fin.sum()
    v = jnp.where(fin, vals, 0.0)
    mean = v.sum() / jnp.where(n > 0, n, 1)
    var = jnp.sum(jnp.where(fin, (vals - mean) ** 2, 0.0)) / jnp.where(n > 1, n - 1, 1)
    return jnp.where(n > 0, mean, jnp.nan), jnp.where(n > 1, jnp.sqrt(var), jnp.nan)


# ============================================================================ the SVD of W
class Svd(NamedTuple):
    U: jax.Array  # (k_out, m), m = min(shape); columns beyond r are not used
    s: jax.Array  # (m,) descending
    Vtop: jax.Array  # (k_in, min(N_ALIGN, m)) top right singular vectors
    r: jax.Array  # numerical rank: s_j > max(shape) eps s_max
    ok: jax.Array  # False: the Gram route cannot certify r; redo with route "svd"


def route_of(shape) -> str:
    return "left" if shape[0] <= shape[1] else "right"


def svd_of(W, nfm, WWt, route: str) -> Svd:
    k_out, k_in = W.shape
    m = min(k_out, k_in)
    na = min(N_ALIGN, m)
    eps = jnp.finfo(F64).eps
    if route == "svd":
        U, s, Vt = jnp.linalg.svd(W, full_matrices=False)
        r = jnp.sum(s > max(k_out, k_in) * eps * s[0])
        return Svd(U, s, Vt[:na].T, r, jnp.asarray(True))
    if route == "left":  # k_out <= k_in: W W^T = U S^2 U^T
        lam, U = jnp.linalg.eigh(_sym(WWt))
        lam, U = lam[::-1], U[:, ::-1]
        s = jnp.sqrt(jnp.clip(lam, 0.0))
        Vtop = (W.T @ U[:, :na]) / jnp.where(s[:na] > 0, s[:na], 1.0)
        ok = lam[-1] >= TAU_LEFT * lam[0]
    else:  # k_out > k_in: W^T W = V S^2 V^T, U = W V / s
        lam, V = jnp.linalg.eigh(_sym(nfm))
        lam, V = lam[::-1], V[:, ::-1]
        s = jnp.sqrt(jnp.clip(lam, 0.0))
        U = (W @ V) / jnp.where(s > 0, s, 1.0)
        Vtop = V[:, :na]
        ok = lam[-1] >= TAU_RIGHT * lam[0]
    ok = ok & (lam[0] > 0)
    return Svd(U, s, Vtop, jnp.asarray(m), ok)


def readout_agop_eigh(W, G):
    """The nonzero eigenpairs of agop = W^T G W for the read-out layer (c x k_in, c small),
    from a c x c problem instead of a k_in x k_in one: with C = G^(1/2) W, agop = C^T C
    shares its nonzero eigenvalues mu with C C^T = Z diag(mu) Z^T, and its eigenvectors are
    C^T Z / sqrt(mu). The other k_in - c eigenvalues are zero, which is what the clipping
    makes of them anyway. (The read-out's pgop is I_c: every sample has df/dp = I.)"""
    lg, QG = jnp.linalg.eigh(G)
    C = (QG * jnp.sqrt(jnp.clip(lg, 0.0))) @ QG.T @ W
    mu, Z = jnp.linalg.eigh(C @ C.T)
    V = (C.T @ Z) / jnp.where(mu > 0, jnp.sqrt(jnp.where(mu > 0, mu, 1.0)), jnp.inf)
    return mu, V


def rank90(s):
    """Fewest top singular directions carrying 90% of sum s_j^2."""
    e = s * s
    tot = e.sum()
    frac = jnp.cumsum(e) / jnp.where(tot > 0, tot, 1.0)
    return jnp.where(tot > 0, jnp.searchsorted(frac, 0.9 - MARGIN * s.shape[0] * EPS64) + 1, 0)


def align(A, B):
    """For rr = 1..p (A, B: p orthonormal columns each), the cosine of the largest principal
    angle between the spans of their first rr columns: the smallest singular value of
    C_rr = A[:, :rr]^T B[:, :rr]. Each C_rr is padded to p x p with an identity block,
    which leaves that value alone (it is <= 1), so one small SVD serves every rr."""
    p = A.shape[1]
    C = A.T @ B
    idx = jnp.arange(p)

    def one(rr):
        inside = idx < rr
        Cr = jnp.where(inside[:, None] & inside[None, :], C, jnp.where(idx[:, None] == idx[None, :], 1.0, 0.0))
        return jnp.linalg.svd(Cr, compute_uv=False)[-1]

    return jnp.clip(jax.lax.map(one, jnp.arange(1, p + 1)), 0.0, 1.0)


# ============================================================================ the registry
# The entries (key, meaning, kind, displays) are declared in statnames.py, without jax; here
# each per-layer key gets the one function of the layer context that computes it.
_LAYER_FNS: list = []  # (names, function of the layer context), in the order of the registry
_BOOT_FNS: dict = {}  # name -> function of (layer context, Resample), for the ci statistics


def statistic(*keys: str, boot=None):
    """Decorator: the function of the layer context that computes these registered per-layer
    statistics (one value, or a tuple in the keys' order); `boot(c, resample)`: its
    bootstrap, for a key shown in "ci". A key not registered, or computed twice, is an
    error when this module loads."""
    def deco(fn):
        for k in keys:
            if k not in REGISTRY or REGISTRY[k].family != "layer":
                raise ValueError(f"{fn.__name__} computes {k!r}, which is not a per-layer statistic of the "
                                 "registry (dnfa_cli/statnames.py)")
            if any(k in ks for ks, _ in _LAYER_FNS):
                raise ValueError(f"{fn.__name__} computes {k!r}, which another function computes already")
        _LAYER_FNS.append((tuple(keys), fn))
        if boot is not None:
            _BOOT_FNS[keys[0]] = boot
        return fn
    return deco


# ============================================================================ per layer
def _baselines(G, s, base: bl.Terms, k_in: int, ends, tol):
    """rand_pearson_a1 (Gaussian R), rand_spec_pearson_a1 (R_s = Q_out diag(s) Q_in^T) and
    iso_dim of R_s (its left singular vectors are Q_out's columns; `ends`, `tol` as for
    iso_dim) for each draw, from the run's fixed terms (see baselines.py). One draw at a
    time (lax.map), so only one draw's k x k products are alive at once."""
    K = k_in * k_in
    s2 = s * s
    p_route = bl.p_route((G.shape[0], k_in))

    def one(t):
        P, A, v, sumA, sqA, Qo, q = t
        sB = v @ G @ v
        if p_route:  # P = R R^T
            GP = G @ P
            sAB = jnp.sum(GP * P)  # tr(G P P)
            sBB = jnp.sum(GP * GP.T)  # tr(G P G P)
        else:  # R itself: B = R^T G R
            B = P.T @ (G @ P)
            sAB, sBB = jnp.sum(A * B), jnp.sum(B * B)
        rand = pearson_from_sums(K, sumA, sB, sqA, sBB, sAB)
        M = Qo.T @ (G @ Qo)
        Ms = M * s[:, None] * s[None, :]  # S M S
        spec = pearson_from_sums(K, jnp.sum(s2 * q * q), q @ Ms @ q, jnp.sum(s2 * s2), jnp.sum(Ms * Ms),
                                 jnp.sum(s2 * jnp.diagonal(Ms)))
        return rand, spec, iso_dim(M, ends, tol)

    return jax.lax.map(one, tuple(base))


class Layer:
    """The per-layer context: one layer's inputs and the decompositions its statistics
    share (the SVD of W, eigh of agop, the alpha curve `pp`, ...), each computed once, the
    later ones when first asked for. `o` holds the statistics computed so far."""

    def __init__(self, x: LayerIn, route: str, trivial: bool):
        self.x, self.route, self.trivial = x, route, trivial
        W, G = x.W, x.pgop  # eigh symmetrises its input itself
        self.W, self.W0, self.agop, self.G, self.rel_tol = W, x.W0, x.agop, G, x.rel_tol
        self.k_out, self.k_in = W.shape
        self.nfm = W.T @ W
        self.WWt = W @ W.T
        self.sv = svd_of(W, self.nfm, self.WWt, route)
        self.s, self.r, self.lamG = self.sv.s, self.sv.r, x.lamG
        # agop = W^T G W: its rounding scale is eps |W|^2 l_max(G), which can dwarf l_max(agop)
        # itself when W^T G W cancels (a net whose end-to-end map shrinks to ~0)
        self.floor = self.rel_tol * self.s[0] ** 2 * jnp.maximum(self.lamG[-1], 0.0)
        if trivial and 4 * self.k_out <= self.k_in:
            self.lamA, self.VA = readout_agop_eigh(W, G)
        else:
            self.lamA, self.VA = jnp.linalg.eigh(x.agop)
        self.lamA_c = clip_spectrum(self.lamA, self.rel_tol, self.floor)
        self.pp = self.power(self.nfm, self.lamA, self.VA)
        self.o: dict = {}

    def power(self, N, lam, V) -> PowerPearson:
        """pearson(N, A^alpha) for any alpha, A = V diag(lam) V^T, at this layer's floors."""
        return PowerPearson.make(N, lam, V, self.rel_tol, self.floor)

    @functools.cached_property
    def inside(self):  # the columns of U that span range(W)
        return jnp.arange(self.s.shape[0]) < self.r

    @functools.cached_property
    def Ur(self):
        return self.sv.U * self.inside[None, :]

    @functools.cached_property
    def Gr(self):  # G on range(W): U_r^T G U_r, the leading r x r block of U^T G U
        return self.Ur.T @ (self.G @ self.Ur)

    @functools.cached_property
    def r90(self):
        return rank90(self.s)

    @functools.cached_property
    def agop_half(self):  # agop^(1/2), the PSD power (numerically zero eigenvalues clipped)
        return (self.VA * jnp.sqrt(self.lamA_c)) @ self.VA.T

    @functools.cached_property
    def ends(self):  # where iso_dim90 looks: the ends of groups of tied singular values
        return group_ends(self.s, self.r, max(self.k_out, self.k_in))

    @functools.cached_property
    def draws(self):  # the random-W baselines, each draw: (rand, spec, iso_dim of R_s)
        return _baselines(self.G, self.s, self.x.base, self.k_in, self.ends, MARGIN * self.rel_tol)

    @functools.cached_property
    def dW(self):
        return self.W - self.W0

    @functools.cached_property
    def dN(self):
        return self.dW.T @ self.dW


class Resample:
    """One bootstrap resample's pgop Gb and what its statistics share."""

    def __init__(self, c: Layer, Gb):
        self.agop = c.W.T @ Gb @ c.W
        self.lam, self.V = jnp.linalg.eigh(self.agop)
        self.Gr = c.Ur.T @ Gb @ c.Ur


def _layer(x: LayerIn, *, route: str, trivial: bool):
    """Every statistic of one layer -> (dict of scalars, dict of matrices, the SVD route's
    verdict): each registered function of the layer context in turn."""
    c = Layer(x, route, trivial)
    for keys, fn in _LAYER_FNS:
        out = fn(c)
        out = out if isinstance(out, tuple) else (out,)
        if len(out) != len(keys):
            raise ValueError(f"{fn.__name__} returned {len(out)} values for its {len(keys)} statistics {keys}")
        c.o.update(zip(keys, out))
    if x.boot.shape[0]:
        c.o.update(_bootstrap(c, x.boot))
    mats = {"nfm": c.nfm, "agop": x.agop, "agop_half": c.agop_half, "pgop": x.pgop}
    return c.o, mats, c.sv.ok


def _bootstrap(c: Layer, boot) -> dict:
    """The 2.5% and 97.5% quantiles over the resamples of each bootstrapped statistic."""
    names = shown("ci")

    def one(Gb):
        b = Resample(c, Gb)
        return tuple(_BOOT_FNS[n](c, b) for n in names)

    vals = jax.lax.map(one, boot)
    o = {}
    for name, v in zip(names, vals):
        v = jnp.where(jnp.isfinite(v), v, jnp.nan)
        o[f"{name}_lo"] = jnp.nanquantile(v, 0.025)
        o[f"{name}_hi"] = jnp.nanquantile(v, 0.975)
    return o


# ============================================================================ the statistics
# Each is one function of the layer context (class Layer), attached to its keys of the
# registry (statnames.py, where their meanings are); their order here is the registry's,
# the order of result.json's layer rows. docs/SCIENCE.md defines them.
@statistic("w_rank")
def _w_rank(c: Layer):
    return c.r


@statistic("pearson_a1", boot=lambda c, b: pearson(c.nfm, b.agop))
def _pearson_a1(c: Layer):
    return pearson(c.nfm, c.agop)


@statistic("pearson_a05", boot=lambda c, b: c.power(c.nfm, b.lam, b.V)(0.5))
def _pearson_a05(c: Layer):
    return c.pp(0.5)


@statistic("cosine_a1")
def _cosine_a1(c: Layer):
    return cosine(c.nfm, c.agop)


@statistic("cosine_a05")
def _cosine_a05(c: Layer):
    return c.pp.cosine(0.5)


@statistic("alpha_star", "alpha_star_edge", "pearson_alpha_star")
def _alpha_star(c: Layer):
    return alpha_star(c.pp)


@statistic(*ISO_KEYS)
def _isotropy(c: Layer):
    return tuple(isotropy(_sym(c.G), c.k_out, c.lamG[0], c.lamG[-1], c.rel_tol).values())


@statistic(*ISO_RANGE_KEYS, boot=lambda c, b: tightness(b.Gr, c.r))
def _isotropy_range(c: Layer):
    if c.route == "svd":  # the block padded with its own mean eigenvalue keeps its extremes
        mean = jnp.trace(c.Gr) / jnp.where(c.r > 0, c.r, 1)
        lamR = jnp.linalg.eigvalsh(_sym(c.Gr) + jnp.diag(jnp.where(c.inside, 0.0, mean)))
    else:  # r = min(shape) certified; for k_out <= k_in, U is square: U^T G U has G's spectrum
        lamR = c.lamG if c.route == "left" else jnp.linalg.eigvalsh(_sym(c.Gr))
    return tuple(isotropy(_sym(c.Gr), c.r, lamR[0], lamR[-1], c.rel_tol).values())


@statistic("w_rank90")
def _w_rank90(c: Layer):
    return c.r90


@statistic("tightness_top")
def _tightness_top(c: Layer):
    top = jnp.arange(c.s.shape[0]) < c.r90
    Gt = c.Gr * (top[:, None] & top[None, :])
    return jnp.where(c.r90 > 0, tightness(Gt, c.r90), jnp.nan)


@statistic("left_pearson")
def _left_pearson(c: Layer):
    return pearson(c.WWt, c.G)


@statistic(*RANDOM_KEYS)
def _random_baselines(c: Layer):
    rand, spec, _ = c.draws
    return (*mean_sd(rand), *mean_sd(spec))


@statistic("rand_gap_a1")
def _rand_gap(c: Layer):
    return c.o["pearson_a1"] - c.o["rand_pearson_a1"]


@statistic("delta_rel")
def _delta_rel(c: Layer):
    dW, n0 = c.dW, jnp.linalg.norm(c.W0)
    return jnp.where(n0 > 0, jnp.linalg.norm(dW) / jnp.where(n0 > 0, n0, 1.0), jnp.nan)


@statistic("centered_pearson")
def _centered(c: Layer):
    return pearson(c.dW.T @ (c.G @ c.dW), c.dN)


@statistic("delta_cosine_a1")
def _delta_cosine_a1(c: Layer):
    return cosine(c.dN, c.agop)


@statistic("delta_pearson_a1")
def _delta_pearson_a1(c: Layer):
    return pearson(c.dN, c.agop)


@statistic("delta_pearson_a05")
def _delta_pearson_a05(c: Layer):
    return c.power(c.dN, c.lamA, c.VA)(0.5)


@statistic(*GRADIENT_CENTRED_KEYS)
def _gradient_centred(c: Layer):
    if c.trivial:  # f is linear in h_L: J = W_L for every sample, exactly
        return (_nan(),) * 4
    agop_gc = c.x.agop_c
    noise = centred_noise(c.s[0] ** 2, c.G, c.x.gdev, c.rel_tol)
    # every sample with the same Jacobian: the centred AGOP is zero (exactly, when they are
    # bitwise equal) or rounding noise
    real = jnp.linalg.norm(agop_gc) > MARGIN * noise
    lam_gc, V_gc = jnp.linalg.eigh(agop_gc)
    half = lambda N: PowerPearson.make(N, lam_gc, V_gc, c.rel_tol, noise)(0.5)
    return (jnp.where(real, pearson(c.nfm, agop_gc), jnp.nan),
            jnp.where(real, half(c.nfm), jnp.nan),
            jnp.where(real, half(c.dN), jnp.nan),
            jnp.where(real, cosine(c.dN, agop_gc), jnp.nan))


@statistic("left_act_pearson")
def _left_act_pearson(c: Layer):
    return pearson(c.WWt, c.x.pcov)


@statistic("half_range_pearson")
def _half_range_pearson(c: Layer):
    # <Pi G Pi, W W^T> = <G, W W^T>, sum(Pi G Pi) = (Pi 1)^T G (Pi 1), |Pi G Pi|_F = |G_r|_F
    p1 = c.Ur @ (c.Ur.T @ jnp.ones(c.k_out, F64))
    return pearson_from_sums(c.k_out * c.k_out, p1 @ c.G @ p1, c.WWt.sum(), jnp.sum(c.Gr * c.Gr),
                             jnp.sum(c.WWt * c.WWt), jnp.sum(c.G * c.WWt))


@statistic(*ALIGN_KEYS)
def _align(c: Layer):
    VA_top = c.VA[:, ::-1][:, :N_ALIGN]  # eigh's eigenvalues ascend
    na = c.sv.Vtop.shape[1]
    cos = align(c.sv.Vtop, VA_top[:, :na])
    # the top rr eigenvectors of agop are determined only up to its rank: beyond, null
    return tuple(jnp.where((rr <= jnp.minimum(na, c.r)) & (rr <= jnp.sum(c.lamA_c > 0)),
                           cos[min(rr, cos.shape[0]) - 1], jnp.nan) for rr in range(1, N_ALIGN + 1))


_NO_BULK = {"traceless": traceless_pearson, "offdiag": offdiag_pearson}  # statnames.NO_BULK


@statistic(*NO_BULK_KEYS)
def _without_the_bulk(c: Layer):
    return tuple(fn(N, B) for N in (c.nfm, c.dN) for fn in _NO_BULK.values() for B in (c.agop, c.agop_half))


@statistic("alpha_curve_range")
def _alpha_curve_range(c: Layer):
    return curve_range(c.pp)


@statistic("iso_dim90", "iso_frac90", "rand_iso_dim90")
def _iso_dim90(c: Layer):
    k = iso_dim(c.Gr, c.ends, MARGIN * c.rel_tol)
    return k, jnp.where(c.r > 0, k / jnp.where(c.r > 0, c.r, 1), jnp.nan), jnp.mean(c.draws[2].astype(F64))


@statistic("cka_init", "kta")
def _cka(c: Layer):
    r = c.x.reps
    return cka(r.AB, r.AA, r.BB, r.sA, r.sB, c.rel_tol), cka(r.AT, r.AA, r.TT, r.sA, r.sT, c.rel_tol)


def batch_layers() -> bool:
    """Whether layers of one shape (and the runs of a seed batch) share one vmapped call:
    on GPU/TPU, where one program for many layers is the point. Not on CPU, where vmap
    gains nothing, costs the stacked copies of every input (450 MB more at width 1024),
    and its batched LAPACK calls (eigh, svd) running side by side wedge XLA's CPU thread
    pool on 2 cores (5 hangs in 5 tries here with jax 0.10.2; jax-ml/jax#39292 and
    PyAutoFit#1528 are its cousins)."""
    return jax.default_backend() != "cpu"


@stored(static=("route", "trivial"), options=ELEMENTAL)
def layers_batch(xs: tuple, *, route: str, trivial: bool):
    """_layer for layers of one shape (a tuple of LayerIn): a (layers, keys) array of the
    scalars in the order ROW_ORDER + _boot_keys(B), with the route's verdict as its last column, and
    the matrices (float32). Stacking and casting happen inside this one compiled program,
    not as eager ops (each would be compiled on its own); the scalars come back as one
    array (one transfer, not one per key)."""
    fn = functools.partial(_layer, route=route, trivial=trivial)

    keys = ROW_ORDER + _boot_keys(xs[0].boot.shape[0])  # explicit: vmap returns dict keys sorted

    def flat(o, ok):
        if set(o) != set(keys):  # nothing computed goes unregistered, nothing registered goes missing
            raise KeyError(f"computed but not registered: {sorted(set(o) - set(keys))}; "
                           f"registered but not computed: {sorted(set(keys) - set(o))}")
        return jnp.stack([jnp.asarray(o[k], F64) for k in keys] + [ok.astype(F64)], axis=-1)

    if len(xs) == 1:
        o, mats, ok = fn(jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(F64), xs[0]))
        return flat(o, ok)[None], [{k: v.astype(jnp.float32) for k, v in mats.items()}]
    x = jax.tree_util.tree_map(lambda *a: jnp.stack(a).astype(F64), *xs)
    o, mats, ok = jax.vmap(fn)(x)
    return flat(o, ok), [{k: v[j].astype(jnp.float32) for k, v in mats.items()} for j in range(len(xs))]


# ============================================================================ counterfactuals
def signed_sqrt(A):
    """A^(1/2) as the published scripts take it, U diag(s^(1/2)) V^T from the SVD: for a
    symmetric A, sum_j sign(l_j) |l_j|^(1/2) v_j v_j^T (a rounding-level negative eigenvalue
    keeps its sign instead of being clipped)."""
    lam, V = jnp.linalg.eigh(A)
    return (V * (jnp.sign(lam) * jnp.sqrt(jnp.abs(lam)))) @ V.T


@jax.jit
def published_row(dW, agop, gc, pgop, gdev, rel_tol):
    """What the published scripts print for one layer: dNFM = dW^T dW / k against the AGOP'
    of the net whose W is dW, and against its gradient-centred version gc (pgop', gdev:
    that net's, for gc's rounding scale); Pearson with AGOP'^(1/2) (Science era), cosine
    with AGOP' (arXiv era). The centred ones are null where gc is rounding noise (every
    sample with the same Jacobian: a linear net), as gc_pearson_a1 is: the scripts would
    print a correlation with noise."""
    M = dW.T @ dW / dW.shape[0]
    real = jnp.linalg.norm(gc) > MARGIN * centred_noise(jnp.linalg.norm(dW, 2) ** 2, pgop, gdev, rel_tol)
    return {"published_pearson_a05": pearson(M, signed_sqrt(agop)),
            "published_gc_pearson_a05": jnp.where(real, pearson(M, signed_sqrt(gc)), jnp.nan),
            "published_cosine_a1": cosine(M, agop),
            "published_gc_cosine_a1": jnp.where(real, cosine(M, gc), jnp.nan)}


@jax.jit
def swap_row(R, agop, pgop, U, r):
    """The ansatz at alpha = 1 of a swapped-in R, pearson(R^T R, agop') with its own
    gradients, and the tightness of its pgop' on range(R) = span of U's first r columns."""
    inside = jnp.arange(U.shape[1]) < r
    Ur = U * inside[None, :]
    Gr = Ur.T @ (pgop @ Ur)
    return pearson(R.T @ R, agop), tightness(Gr, r)


# ============================================================================ driving
ROW_ORDER = names("layer")
INT_KEYS = tuple(n for n, e in REGISTRY.items() if e.kind == "int")
EDGE_KEYS = tuple(n for n, e in REGISTRY.items() if e.kind == "edge")
EDGES = {-1: "low", 0: None, 1: "high"}  # alpha_star_edge


def _boot_keys(B: int) -> tuple:
    return tuple(f"{n}_{e}" for n in shown("ci") for e in ("lo", "hi")) if B else ()


def compute(items: list[tuple[LayerIn, bool]]) -> list[tuple[dict, dict]]:
    """Statistics of many layers (any runs, any shapes): `items` are (inputs, trivial).
    Layers of one shape and triviality go through one vmapped call where that pays
    (batch_layers), one call each otherwise; layers whose Gram
    route cannot certify the rank are redone with the SVD. Returns, per item, the row of
    python scalars and the matrices (float32, on the device)."""
    groups: dict[tuple, list[int]] = {}
    for i, (x, triv) in enumerate(items):
        key = (tuple(x.W.shape), tuple(x.boot.shape), triv) if batch_layers() else (tuple(x.W.shape), i, triv)
        groups.setdefault(key, []).append(i)
    outs: list = [None] * len(items)
    layers_batch.ahead(((tuple(items[i][0] for i in idx),), {"route": route_of(shape), "trivial": triv})
                       for (shape, _, triv), idx in groups.items())
    for (shape, _, triv), idx in groups.items():
        xs = tuple(items[i][0] for i in idx)
        keys = ROW_ORDER + _boot_keys(xs[0].boot.shape[0])
        vals, mats = layers_batch(xs, route=route_of(shape), trivial=triv)
        vals = np.array(vals)  # writable: rows the SVD route redoes are replaced
        redo = [j for j in range(len(idx)) if not vals[j, -1]]
        if redo:
            v2, m2 = layers_batch(tuple(xs[j] for j in redo), route="svd", trivial=triv)
            vals[redo] = np.asarray(v2)
            for jj, j in enumerate(redo):
                mats[j] = m2[jj]
        for j, i in enumerate(idx):
            row = {k: (int(v) if k in INT_KEYS else EDGES[int(v)] if k in EDGE_KEYS else float(v))
                   for k, v in zip(keys, vals[j, :-1])}
            outs[i] = (row, mats[j])
    return outs


def layer_stats(W, W0, grams, l: int, *, trivial: bool, rel_tol: float, terms: bl.Terms) -> tuple[dict, dict]:
    """Every per-layer statistic of docs/SCIENCE.md for layer l (0-based) of one run ->
    (row, float64 matrices). `terms`: the layer's random-baseline terms (baselines.terms)."""
    x = layer_input(W, W0, grams, l, rel_tol, terms)
    row, mats = compute([(x, trivial)])[0]
    return {"layer": l + 1, "shape": list(np.shape(W)), "trivial": trivial, **row}, mats


def layer_input(W, W0, grams, l: int, rel_tol: float, terms: bl.Terms) -> LayerIn:
    """The inputs of layer l (W and W0 in any float dtype: layers_batch casts them)."""
    boot = grams.pgop_boot[l] if grams.pgop_boot is not None else np.zeros((0,) + grams.pgop[l].shape)
    k = np.shape(W)[0]
    reps = grams.reps[l] if grams.reps is not None else Reps(*(np.zeros(s) for s in ((k, k),) * 3 + ((k, 1), (1, 1))),
                                                             *(np.float64(0.0),) * 3)
    return LayerIn(W, W0, grams.agop[l], grams.pgop[l], grams.agop_c[l], grams.gdev[l], grams.pcov[l], boot,
                   eigvalsh_pgop(grams.pgop[l]), np.float64(rel_tol), terms, reps)


def svd_range(W):
    """Thin SVD of W and its numerical rank r (s_j > max(shape) eps s_max), for plotting."""
    sv = _svd_host(jnp.asarray(W, F64))
    return np.asarray(sv.U), np.asarray(sv.s), int(sv.r)


@jax.jit
def _svd_host(W):
    return svd_of(W, None, None, "svd")
