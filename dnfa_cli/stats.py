"""Every per-layer statistic of docs/SCIENCE.md, jit-compiled JAX on the device that holds
the Grams. A layer's numbers come from three decompositions - eigh(agop), eigvalsh(pgop)
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

F64 = jnp.float64
ALPHA_RANGE = (0.05, 2.0)
ALPHA_GRID = 391  # step 0.005
EDGE = 1e-6  # a maximiser this close to an end of ALPHA_RANGE is at that end
GOLDEN_STEPS = 40
N_ALIGN = 8
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
    jbar: jax.Array
    pcov: jax.Array
    boot: jax.Array
    lamG: jax.Array  # ascending eigenvalues of pgop (eigvalsh_pgop)
    rel_tol: jax.Array
    base: bl.Terms


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


def alpha_star(pp: PowerPearson):
    """The alpha in [0.05, 2] maximising pearson(nfm, agop^alpha): a grid of step 0.005,
    then golden-section refinement on the bracket around the best grid point. Returns
    (alpha_star, edge, maximum): alpha_star is nan where the correlation does not depend on
    alpha (then the maximum is nan too) and where the maximum sits at an end of the range,
    which edge says (-1 low, +1 high, 0 otherwise)."""
    lo, hi = ALPHA_RANGE
    grid = jnp.linspace(lo, hi, ALPHA_GRID, dtype=F64)
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


# ============================================================================ per layer
def _baselines(G, s, base: bl.Terms, k_in: int):
    """rand_pearson_a1 (Gaussian R) and rand_spec_pearson_a1 (R_s = Q_out diag(s) Q_in^T)
    for each draw, from the run's fixed terms (see baselines.py). One draw at a time
    (lax.map), so only one draw's k x k products are alive at once."""
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
        Ms = (Qo.T @ (G @ Qo)) * s[:, None] * s[None, :]  # S M S, M = Q_out^T G Q_out
        spec = pearson_from_sums(K, jnp.sum(s2 * q * q), q @ Ms @ q, jnp.sum(s2 * s2), jnp.sum(Ms * Ms),
                                 jnp.sum(s2 * jnp.diagonal(Ms)))
        return rand, spec

    return jax.lax.map(one, tuple(base))


def _layer(x: LayerIn, *, route: str, trivial: bool):
    """Every statistic of one layer -> (dict of scalars, dict of matrices)."""
    W, W0, agop, G = x.W, x.W0, x.agop, x.pgop  # eigh symmetrises its input itself
    rel_tol = x.rel_tol
    k_out, k_in = W.shape
    nfm = W.T @ W
    WWt = W @ W.T
    sv = svd_of(W, nfm, WWt, route)
    s, r = sv.s, sv.r
    lamG = x.lamG
    # agop = W^T G W: its rounding scale is eps |W|^2 l_max(G), which can dwarf l_max(agop)
    # itself when W^T G W cancels (a net whose end-to-end map shrinks to ~0)
    floor = rel_tol * s[0] ** 2 * jnp.maximum(lamG[-1], 0.0)
    if trivial and 4 * k_out <= k_in:
        lamA, VA = readout_agop_eigh(W, G)
    else:
        lamA, VA = jnp.linalg.eigh(agop)
    lamA_c = clip_spectrum(lamA, rel_tol, floor)
    pp = PowerPearson.make(nfm, lamA, VA, rel_tol, floor)

    o = {"w_rank": r}
    o["pearson_a1"] = pearson(nfm, agop)
    o["pearson_a05"] = pp(0.5)
    o["cosine_a1"] = cosine(nfm, agop)
    o["cosine_a05"] = pp.cosine(0.5)
    o["alpha_star"], o["alpha_star_edge"], o["pearson_alpha_star"] = alpha_star(pp)

    o.update(isotropy(_sym(G), k_out, lamG[0], lamG[-1], rel_tol))
    # G on range(W): U_r^T G U_r, the leading r x r block of U^T G U
    inside = jnp.arange(s.shape[0]) < r
    Ur = sv.U * inside[None, :]
    Gr = Ur.T @ (G @ Ur)
    if route == "svd":  # the block padded with its own mean eigenvalue keeps its extremes
        mean = jnp.trace(Gr) / jnp.where(r > 0, r, 1)
        lamR = jnp.linalg.eigvalsh(_sym(Gr) + jnp.diag(jnp.where(inside, 0.0, mean)))
        lo_r, hi_r = lamR[0], lamR[-1]
    else:  # r = min(shape) certified; for k_out <= k_in, U is square: U^T G U has G's spectrum
        lamR = lamG if route == "left" else jnp.linalg.eigvalsh(_sym(Gr))
        lo_r, hi_r = lamR[0], lamR[-1]
    o.update({f"{k}_range": v for k, v in isotropy(_sym(Gr), r, lo_r, hi_r, rel_tol).items()})
    r90 = rank90(s)
    o["w_rank90"] = r90
    top = jnp.arange(s.shape[0]) < r90
    Gt = Gr * (top[:, None] & top[None, :])
    o["tightness_top"] = jnp.where(r90 > 0, tightness(Gt, r90), jnp.nan)
    o["left_pearson"] = pearson(WWt, G)

    # ---- baselines (docs/SCIENCE.md, "Baselines")
    rand, spec = _baselines(G, s, x.base, k_in)
    o["rand_pearson_a1"], o["rand_pearson_a1_sd"] = mean_sd(rand)
    o["rand_spec_pearson_a1"], o["rand_spec_pearson_a1_sd"] = mean_sd(spec)
    # what W itself contributes beyond any matrix of its shape at the same pgop
    o["rand_gap_a1"] = o["pearson_a1"] - o["rand_pearson_a1"]
    dW = W - W0
    dN = dW.T @ dW
    # how far training moved W: small in the lazy (kernel) regime, order one in the rich one
    n0 = jnp.linalg.norm(W0)
    o["delta_rel"] = jnp.where(n0 > 0, jnp.linalg.norm(dW) / jnp.where(n0 > 0, n0, 1.0), jnp.nan)
    o["centered_pearson"] = pearson(dW.T @ (G @ dW), dN)
    o["delta_cosine_a1"] = cosine(dN, agop)
    o["delta_pearson_a1"] = pearson(dN, agop)
    # what the published scripts mean to print (W in place, not W - W0): the NFM of W - W0
    # against AGOP^(1/2) (Science era) and against the gradient-centred AGOP
    o["delta_pearson_a05"] = PowerPearson.make(dN, lamA, VA, rel_tol, floor)(0.5)
    agop_gc = agop - x.jbar.T @ x.jbar
    # every sample with the same Jacobian (the read-out layer always): the centred AGOP is
    # zero and what is left of the subtraction is rounding noise
    real = jnp.linalg.norm(agop_gc) > jnp.maximum(MARGIN * rel_tol * jnp.linalg.norm(agop), k_in * floor)
    if trivial:  # f is linear in h_L: J = W_L for every sample, exactly
        o["gc_pearson_a1"] = o["gc_pearson_a05"] = o["delta_gc_pearson_a05"] = o["delta_gc_cosine_a1"] = _nan()
    else:
        lam_gc, V_gc = jnp.linalg.eigh(agop_gc)
        o["gc_pearson_a1"] = jnp.where(real, pearson(nfm, agop_gc), jnp.nan)
        o["gc_pearson_a05"] = jnp.where(real, PowerPearson.make(nfm, lam_gc, V_gc, rel_tol, floor)(0.5), jnp.nan)
        o["delta_gc_pearson_a05"] = jnp.where(real, PowerPearson.make(dN, lam_gc, V_gc, rel_tol, floor)(0.5), jnp.nan)
        o["delta_gc_cosine_a1"] = jnp.where(real, cosine(dN, agop_gc), jnp.nan)
    o["left_act_pearson"] = pearson(WWt, x.pcov)
    # the alpha = 1/2 identity on range(W): Pi G Pi against W W^T, Pi = U_r U_r^T, from
    # <Pi G Pi, W W^T> = <G, W W^T>, sum(Pi G Pi) = (Pi 1)^T G (Pi 1), |Pi G Pi|_F = |G_r|_F
    p1 = Ur @ (Ur.T @ jnp.ones(k_out, F64))
    o["half_range_pearson"] = pearson_from_sums(k_out * k_out, p1 @ G @ p1, WWt.sum(), jnp.sum(Gr * Gr),
                                                jnp.sum(WWt * WWt), jnp.sum(G * WWt))
    VA_top = VA[:, ::-1][:, :N_ALIGN]  # eigh's eigenvalues ascend
    cos = align(sv.Vtop, VA_top[:, :sv.Vtop.shape[1]])
    for rr in range(1, N_ALIGN + 1):
        # the top rr eigenvectors of agop are determined only up to its rank: beyond, null
        o[f"align_{rr}"] = jnp.where((rr <= jnp.minimum(sv.Vtop.shape[1], r)) & (rr <= jnp.sum(lamA_c > 0)),
                                     cos[min(rr, cos.shape[0]) - 1], jnp.nan)

    if x.boot.shape[0]:
        def one(Gb):
            Ab = W.T @ Gb @ W
            lb, Vb = jnp.linalg.eigh(Ab)
            Gbr = Ur.T @ Gb @ Ur
            return (PowerPearson.make(nfm, lb, Vb, rel_tol, floor)(0.5), pearson(nfm, Ab),
                    tightness(Gbr, r))

        b_a05, b_a1, b_tr = jax.lax.map(one, x.boot)
        for name, v in (("pearson_a05", b_a05), ("pearson_a1", b_a1), ("tightness_range", b_tr)):
            v = jnp.where(jnp.isfinite(v), v, jnp.nan)
            o[f"{name}_lo"] = jnp.nanquantile(v, 0.025)
            o[f"{name}_hi"] = jnp.nanquantile(v, 0.975)

    agop_half = (VA * jnp.sqrt(lamA_c)) @ VA.T
    mats = {"nfm": nfm, "agop": x.agop, "agop_half": agop_half, "pgop": x.pgop}
    return o, mats, sv.ok


def batch_layers() -> bool:
    """Whether layers of one shape (and the runs of a seed batch) share one vmapped call:
    on GPU/TPU, where one program for many layers is the point. Not on CPU, where vmap
    gains nothing, costs the stacked copies of every input (450 MB more at width 1024),
    and its batched LAPACK calls (eigh, svd) running side by side wedge XLA's CPU thread
    pool on 2 cores (5 hangs in 5 tries here with jax 0.10.2; jax-ml/jax#39292 and
    PyAutoFit#1528 are its cousins)."""
    return jax.default_backend() != "cpu"


@functools.partial(jax.jit, static_argnames=("route", "trivial"))
def layers_batch(xs: tuple, *, route: str, trivial: bool):
    """_layer for layers of one shape (a tuple of LayerIn): a (layers, keys) array of the
    scalars in the order ROW_ORDER + _boot_keys(B), with the route's verdict as its last column, and
    the matrices (float32). Stacking and casting happen inside this one compiled program,
    not as eager ops (each would be compiled on its own); the scalars come back as one
    array (one transfer, not one per key)."""
    fn = functools.partial(_layer, route=route, trivial=trivial)

    keys = ROW_ORDER + _boot_keys(xs[0].boot.shape[0])  # explicit: vmap returns dict keys sorted

    def flat(o, ok):
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
def published_row(dW, agop, jbar, rel_tol):
    """What the published scripts print for one layer: dNFM = dW^T dW / k against the AGOP'
    of the net whose W is dW, and against its gradient-centred version; Pearson with
    AGOP'^(1/2) (Science era), cosine with AGOP' (arXiv era). The centred ones are null
    where agop' - jbar'^T jbar' is rounding noise (every sample with the same Jacobian: a
    linear net), as gc_pearson_a1 is: the scripts would print a correlation with noise."""
    M = dW.T @ dW / dW.shape[0]
    gc = agop - jbar.T @ jbar
    real = jnp.linalg.norm(gc) > MARGIN * rel_tol * jnp.linalg.norm(agop)
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
ROW_ORDER = (
    "w_rank", "pearson_a1", "pearson_a05", "cosine_a1", "cosine_a05", "alpha_star", "alpha_star_edge",
    "pearson_alpha_star",
    "tightness", "iso_dev", "eff_rank", "cond", "tightness_range", "iso_dev_range", "eff_rank_range", "cond_range",
    "w_rank90", "tightness_top", "left_pearson", "rand_pearson_a1", "rand_pearson_a1_sd", "rand_spec_pearson_a1",
    "rand_spec_pearson_a1_sd", "rand_gap_a1", "delta_rel", "centered_pearson", "delta_cosine_a1", "delta_pearson_a1",
    "delta_pearson_a05", "gc_pearson_a1", "gc_pearson_a05", "delta_gc_pearson_a05", "delta_gc_cosine_a1", "left_act_pearson", "half_range_pearson",
    *(f"align_{i}" for i in range(1, N_ALIGN + 1)),
)
INT_KEYS = ("w_rank", "w_rank90")
EDGES = {-1: "low", 0: None, 1: "high"}  # alpha_star_edge


def _boot_keys(B: int) -> tuple:
    return tuple(f"{n}_{e}" for n in ("pearson_a05", "pearson_a1", "tightness_range") for e in ("lo", "hi")) if B else ()


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
            row = {k: (int(v) if k in INT_KEYS else EDGES[int(v)] if k == "alpha_star_edge" else float(v))
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
    return LayerIn(W, W0, grams.agop[l], grams.pgop[l], grams.jbar[l], grams.pcov[l], boot,
                   eigvalsh_pgop(grams.pgop[l]), np.float64(rel_tol), terms)


def svd_range(W):
    """Thin SVD of W and its numerical rank r (s_j > max(shape) eps s_max), for plotting."""
    sv = _svd_host(jnp.asarray(W, F64))
    return np.asarray(sv.U), np.asarray(sv.s), int(sv.r)


@jax.jit
def _svd_host(W):
    return svd_of(W, None, None, "svd")
