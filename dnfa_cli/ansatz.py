"""The math of docs/SCIENCE.md: AGOP and pgop (two exact methods), NFM, the two correlation
conventions, matrix powers, alpha*, the isotropy (tight-frame) statistics and baselines.

Gram accumulation runs in JAX (chunks of samples under one `lax.scan`, so memory is flat
in n); the statistics of the resulting k x k matrices run in numpy float64 on the host.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import model as mdl

CHUNK_BYTES = 64 * 2**20  # target size of the largest per-chunk Jacobian stack


# ============================================================================ Grams
class Grams(NamedTuple):
    """Per layer l (0-based), over n samples (sums divided by n):
    agop[l]  (k_l, k_l)          E[J^T J], J = df/dh_l (c, k_l)
    pgop[l]  (k_{l+1}, k_{l+1})  E[g^T g], g = df/dp_{l+1}; for the output layer I_c
    jbar[l]  (c, k_l)            E[J]
    gbar[l]  (c, k_{l+1})        E[g]
    pcov[l]  (k_{l+1}, k_{l+1})  E[p p^T], p the pre-activation (the output f for the last)
    pgop_boot[l] (B, k, k) or None: pgop under B multinomial resamples of the n samples
    """

    agop: list
    pgop: list
    jbar: list
    gbar: list
    pcov: list
    pgop_boot: list | None
    n: int


def _stack_grams(G_cmk, w_m):
    """sum_m w_m G[:, m]^T G[:, m] as one GEMM over the (c*m) rows."""
    sw = jnp.sqrt(w_m)[None, :, None]
    Gw = (G_cmk * sw).reshape(-1, G_cmk.shape[-1])
    return Gw.T @ Gw


def _weighted_sum(G_cmk, w_m):
    """sum_m w_m G[:, m]; written as multiply-and-reduce because XLA:CPU lowers the
    equivalent einsum('cmk,m->ck') to a slow matrix-vector product (12x here)."""
    return (G_cmk * w_m[None, :, None]).sum(1)


def _preact_chunk(params, X, activation):
    """All layers from one forward pass and c reverse passes w.r.t. zero perturbations of
    every pre-activation: g_l = df/dp_{l+1} of shape (c, m, k_{l+1})."""
    m = X.shape[0]
    eps0 = [jnp.zeros((m, layer["W"].shape[0]), X.dtype) for layer in params]

    def f_sum(eps):
        hs, ps = mdl.forward_all(params, X, activation, eps)
        # f(x_m) depends only on eps[.][m], so d(sum_m f)/d eps[l][m] = df(x_m)/dp_{l+1}
        return ps[-1].sum(0), ps

    gs, ps = jax.jacrev(f_sum, has_aux=True)(eps0)  # gs[l]: (c, m, k_{l+1})
    return gs, ps


def _jacfwd_chunk(params, X, activation):
    """Per layer, as written in the paper: vmap over samples of jacfwd of f_l (the map from
    h_l to the output) and of the map from p_{l+1} to the output."""
    hs, ps = mdl.forward_all(params, X, activation)
    Js, gs = [], []
    for l in range(len(params)):
        fl = lambda h, l=l: mdl.f_from_input(params, l, h, activation)
        fp = lambda p, l=l: mdl.f_from_preact(params, l, p, activation)
        Js.append(jnp.moveaxis(jax.vmap(jax.jacfwd(fl))(hs[l]), 0, 1))  # (c, m, k_l)
        gs.append(jnp.moveaxis(jax.vmap(jax.jacfwd(fp))(ps[l]), 0, 1))  # (c, m, k_{l+1})
    return Js, gs, ps


def flops_estimate(sizes: list[int], method: str) -> float:
    """Multiply-adds per sample of each method (forward, Jacobians, Gram sums), to pick one."""
    L, c = len(sizes) - 1, sizes[-1]
    fwd = sum(sizes[l] * sizes[l + 1] for l in range(L))
    if method == "preact":
        back = c * sum(sizes[l] * sizes[l + 1] for l in range(1, L))
        gram = c * sum(sizes[l + 1] ** 2 for l in range(L))
        return fwd + back + gram
    total = fwd
    for l in range(L):
        tail = sum(sizes[j] * sizes[j + 1] for j in range(l, L))
        tail_p = sum(sizes[j] * sizes[j + 1] for j in range(l + 1, L))
        total += sizes[l] * tail + sizes[l + 1] * tail_p + c * (sizes[l] ** 2 + sizes[l + 1] ** 2)
    return total


def choose_method(sizes: list[int], method: str) -> str:
    if method != "auto":
        return method
    return "preact" if flops_estimate(sizes, "preact") <= flops_estimate(sizes, "jacfwd") else "jacfwd"


def auto_chunk(sizes: list[int], method: str, itemsize: int) -> int:
    c = sizes[-1]
    if method == "preact":
        per_sample = c * sum(sizes[1:]) + 2 * sum(sizes)
    else:  # jacfwd pushes k_l tangents through the layers above l
        per_sample = max(sizes[l] * max(sizes[l:]) for l in range(len(sizes) - 1)) + c * max(sizes)
    return int(max(1, min(4096, CHUNK_BYTES // (itemsize * per_sample))))


def _bootstrap_weights(key, n: int, B: int) -> np.ndarray:
    """(B, n) multinomial resample counts: resample b draws n samples with replacement."""
    idx = np.asarray(jax.random.randint(key, (B, n), 0, n))
    w = np.zeros((B, n))
    for b in range(B):
        w[b] = np.bincount(idx[b], minlength=n)
    return w


def compute_grams(params, X, activation: str, *, method: str = "auto", dtype=jnp.float64,
                  chunk: int | None = None, bootstrap: int = 0, key=None) -> Grams:
    """AGOP, pgop and their companions over the rows of X (n, d), exactly, in chunks.

    `method`: "preact" (one pass for all layers; agop = W^T pgop W), "jacfwd" (per layer
    vmap(jacfwd(f_l)), agop from the Jacobians themselves) or "auto" (fewer flops)."""
    dtype = jnp.dtype(dtype)
    params = mdl.cast(params, dtype)
    X = jnp.asarray(X, dtype)
    n = X.shape[0]
    sizes = [params[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in params]
    method = choose_method(sizes, method)
    m = chunk or auto_chunk(sizes, method, dtype.itemsize)
    m = min(m, n)
    if bootstrap:
        wb = jnp.asarray(_bootstrap_weights(key, n, bootstrap), dtype)  # (B, n)
    else:
        wb = jnp.zeros((0, n), dtype)
    # no padded copy of X: chunks are sliced out of it in place (memory flat in n beyond X)
    sums = _accumulate(params, X, wb, activation, method, m)
    agop_s, pgop_s, jbar_s, gbar_s, pcov_s, boot_s = sums
    if method == "preact":
        agop_s = [p["W"].T @ G @ p["W"] for p, G in zip(params, pgop_s)]
        jbar_s = [g @ p["W"] for p, g in zip(params, gbar_s)]
    to_np = lambda xs: [np.asarray(x, np.float64) / n for x in xs]
    return Grams(
        agop=to_np(agop_s), pgop=to_np(pgop_s), jbar=to_np(jbar_s), gbar=to_np(gbar_s),
        pcov=to_np(pcov_s), pgop_boot=to_np(boot_s) if bootstrap else None, n=n,
    )


@functools.partial(jax.jit, static_argnames=("activation", "method", "m"))
def _accumulate(params, X, wb, activation, method, m):
    """Gram sums over the rows of X (n, d) in chunks of m rows, one lax.scan step each. The
    last chunk is clamped to end at row n; rows it shares with the previous chunk get
    weight 0, so every row counts once and X is never padded or copied."""
    kin = [p["W"].shape[1] for p in params]
    kout = [p["W"].shape[0] for p in params]
    c = kout[-1]
    n = X.shape[0]
    dt = X.dtype
    B = wb.shape[0]
    n_chunks = -(-n // m)
    zeros = lambda shape: jnp.zeros(shape, dt)
    init = (
        [zeros((k, k)) for k in kin] if method == "jacfwd" else [],
        [zeros((k, k)) for k in kout],
        [zeros((c, k)) for k in kin] if method == "jacfwd" else [],
        [zeros((c, k)) for k in kout],
        [zeros((k, k)) for k in kout],
        [zeros((B, k, k)) for k in kout],
    )

    def slices(i):
        start = jnp.minimum(i * m, n - m)
        w = (start + jnp.arange(m) >= i * m).astype(dt)
        Xc = jax.lax.dynamic_slice_in_dim(X, start, m)
        wbc = jax.lax.dynamic_slice_in_dim(wb, start, m, axis=1) * w[None, :]
        return Xc, w, wbc

    def body(carry, i):
        X, w, wb = slices(i)
        agop, pgop, jbar, gbar, pcov, boot = carry
        if method == "preact":
            gs, ps = _preact_chunk(params, X, activation)
        else:
            Js, gs, ps = _jacfwd_chunk(params, X, activation)
            agop = [a + _stack_grams(J, w) for a, J in zip(agop, Js)]
            jbar = [a + _weighted_sum(J, w) for a, J in zip(jbar, Js)]
        pgop = [a + _stack_grams(G, w) for a, G in zip(pgop, gs)]
        gbar = [a + _weighted_sum(G, w) for a, G in zip(gbar, gs)]
        pcov = [a + (p * w[:, None]).T @ p for a, p in zip(pcov, ps)]
        if B:
            boot = [a + jax.lax.map(lambda wr, G=G: _stack_grams(G, wr), wb) for a, G in zip(boot, gs)]
        return (agop, pgop, jbar, gbar, pcov, boot), None

    out, _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    return out


# ============================================================================ statistics
def _sym(A):
    return 0.5 * (A + A.T)


def clip_spectrum(lam, rel_tol: float | None = None, floor: float = 0.0):
    """Eigenvalues of a PSD matrix with the numerically zero ones set to 0: negative ones,
    those below rel_tol * l_max (default k eps) and those below `floor` (the rounding
    scale of the computation that formed the matrix). Raised to a small power alpha, a
    rounding-level 1e-17 would become 1e-17^0.05 = 0.14, so 'zero' must mean zero."""
    lam = np.asarray(lam, np.float64)
    if rel_tol is None:
        rel_tol = lam.size * np.finfo(np.float64).eps
    top = lam.max() if lam.size else 0.0
    return np.where(lam > max(rel_tol * top, floor), lam, 0.0) if top > 0 else np.zeros_like(lam)


def psd_power(A, alpha: float, rel_tol: float | None = None, floor: float = 0.0):
    """A^alpha for symmetric PSD A via eigh; negative and numerically zero eigenvalues
    (see clip_spectrum) are set to 0 first."""
    lam, V = np.linalg.eigh(_sym(np.asarray(A, np.float64)))
    lam = clip_spectrum(lam, rel_tol, floor)
    return (V * lam**alpha) @ V.T


def pearson(A, B) -> float:
    """Pearson correlation of the flattened entries (Science-era convention); nan if either
    matrix is constant."""
    a = np.asarray(A, np.float64).ravel()
    b = np.asarray(B, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else math.nan


def cosine(A, B) -> float:
    """<A, B>_F / (|A|_F |B|_F), no centring (arXiv-era convention); nan if either is 0."""
    a = np.asarray(A, np.float64).ravel()
    b = np.asarray(B, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else math.nan


class PowerPearson:
    """pearson(N, A^alpha) for many alpha after one eigh of A: with A = V diag(l) V^T and
    d = l^alpha, <N, A^a>_F = sum_j d_j (V^T N V)_jj, sum(A^a) = sum_j d_j (V^T 1)_j^2 and
    |A^a|_F^2 = sum_j d_j^2, so each alpha costs O(k) instead of O(k^3)."""

    def __init__(self, N, A=None, eig=None, rel_tol: float | None = None, floor: float = 0.0):
        N = np.asarray(N, np.float64)
        lam, V = eig if eig is not None else np.linalg.eigh(_sym(np.asarray(A, np.float64)))
        # Pearson is invariant to positive scaling: normalise so l^alpha and its squares
        # stay in range however large the matrices grew
        lam = clip_spectrum(lam, rel_tol, floor)
        self.lam = lam / lam.max() if lam.size and lam.max() > 0 else lam
        nmax = np.abs(N).max() if N.size else 0.0
        N = N / nmax if nmax > 0 else N
        self.nd = np.sum(V * (N @ V), axis=0)  # diag(V^T N V) with one GEMM
        self.u2 = V.sum(0) ** 2
        self.K = N.size
        self.meanN = N.mean()
        self.varN = (N**2).mean() - self.meanN**2

    def __call__(self, alpha: float) -> float:
        return float(self.many(np.array([alpha]))[0])

    def many(self, alphas) -> np.ndarray:
        """pearson(N, A^alpha) for each alpha in the 1-D array `alphas`."""
        pos = self.lam > 0
        d = np.zeros((len(alphas), self.lam.size))
        d[:, pos] = self.lam[pos][None, :] ** np.asarray(alphas, np.float64)[:, None]
        meanM = (d @ self.u2) / self.K
        varM = np.einsum("aj,aj->a", d, d) / self.K - meanM**2
        cov = (d @ self.nd) / self.K - self.meanN * meanM
        den = np.sqrt(np.clip(self.varN, 0.0, None) * np.clip(varM, 0.0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, cov / np.where(den > 0, den, 1.0), np.nan)


ALPHA_RANGE = (0.05, 2.0)


def alpha_star(pp: PowerPearson) -> float:
    """The alpha in [0.05, 2] maximising pearson(nfm, agop^alpha): a grid of step 0.005,
    then golden-section refinement on the bracket around the best grid point. nan where
    the correlation does not depend on alpha."""
    lo, hi = ALPHA_RANGE
    grid = np.linspace(lo, hi, 391)
    vals = pp.many(grid)
    if not np.any(np.isfinite(vals)):
        return math.nan
    if np.nanmax(vals) - np.nanmin(vals) <= 1e-12:
        return math.nan  # flat in alpha (e.g. a rank-1 NFM): no maximiser to report
    i = int(np.nanargmax(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = pp(x1), pp(x2)
    for _ in range(40):
        if f1 >= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - g * (b - a)
            f1 = pp(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + g * (b - a)
            f2 = pp(x2)
    fx, x = (f1, x1) if f1 >= f2 else (f2, x2)
    # keep the refined point unless the grid point is better by more than rounding: on a
    # nearly flat curve a bare max() would flip between the two on 1e-16 noise
    if not np.isfinite(fx) or vals[i] > fx + 1e-12 * abs(fx):
        return float(grid[i])
    return float(x)


def tightness(G) -> float:
    """(tr G)^2 / (k tr G^2), the frame-potential ratio: 1 exactly when G = cI."""
    G = np.asarray(G, np.float64)
    tr, tr2 = float(np.trace(G)), float(np.sum(G * G))  # tr(G^2) = |G|_F^2 for symmetric G
    return tr * tr / (G.shape[0] * tr2) if tr > 0 and tr2 > 0 else math.nan


def isotropy(G, rel_tol: float = 0.0, eigvals=None) -> dict:
    """tightness, iso_dev, eff_rank and cond of a PSD matrix G (k x k); each is 1.0 / 0.0
    / k / 1.0 exactly when G = cI. cond is nan when G is numerically singular
    (l_min <= rel_tol * l_max). `eigvals`: G's ascending eigenvalues, if already known."""
    G = _sym(np.asarray(G, np.float64))
    k = G.shape[0]
    t = tightness(G)
    if math.isnan(t):
        return {"tightness": math.nan, "iso_dev": math.nan, "eff_rank": math.nan, "cond": math.nan}
    tr = float(np.trace(G))
    lam = np.linalg.eigvalsh(G) if eigvals is None else eigvals
    lmax, lmin = float(lam[-1]), float(lam[0])
    return {
        "tightness": t,
        "iso_dev": float(np.linalg.norm(G / (tr / k) - np.eye(k)) / math.sqrt(k)),
        "eff_rank": k * t,  # (tr G)^2 / tr G^2
        "cond": lmax / lmin if lmin > rel_tol * lmax and lmin > 0 else math.nan,
    }


def svd_range(W):
    """Thin SVD of W (k_out, k_in) and its numerical rank r (s_j > max(shape) eps s_max)."""
    U, s, Vt = np.linalg.svd(np.asarray(W, np.float64), full_matrices=False)
    tol = max(W.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    r = int(np.sum(s > tol))
    return U, s, Vt, r


def rank90(s) -> int:
    """Fewest top singular directions carrying 90% of sum s_j^2."""
    e = np.asarray(s, np.float64) ** 2
    tot = e.sum()
    if tot <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(e) / tot, 0.9 - 1e-12) + 1)


def principal_cos_max_angle(A, B) -> float:
    """Cosine of the largest principal angle between span(A) and span(B) (orthonormal
    columns): the smallest singular value of A^T B."""
    sv = np.linalg.svd(A.T @ B, compute_uv=False)
    return float(np.clip(sv[-1], 0.0, 1.0))


# ============================================================================ per layer
def layer_stats(W, W0, grams: Grams, l: int, *, trivial: bool, rel_tol: float, key=None,
                baselines: "RandomBaselines | None" = None) -> tuple[dict, dict]:
    """Every per-layer statistic of docs/SCIENCE.md for layer l (0-based) -> (json row, matrices).
    W, W0 are numpy float64; `rel_tol` (k eps of the metrics dtype) sets the noise floors: an
    eigenvalue of agop counts as zero below max(rel_tol l_max(agop), rel_tol s_max(W)^2
    l_max(pgop)) (the rounding scale of W^T pgop W), and cond is undefined when l_min <=
    rel_tol l_max. `baselines`: the layer's RandomBaselines; only when it is None are new
    ones drawn from `key`."""
    W = np.asarray(W, np.float64)
    W0 = np.asarray(W0, np.float64)
    agop, G = grams.agop[l], grams.pgop[l]
    k_out, k_in = W.shape
    nfm = W.T @ W
    U, s, Vt, r = svd_range(W)
    lamG = np.linalg.eigvalsh(_sym(G))
    # agop = W^T G W: its rounding scale is eps |W|^2 l_max(G), which can dwarf l_max(agop)
    # itself when W^T G W cancels (a net whose end-to-end map shrinks to ~0)
    floor = rel_tol * float(s[0] ** 2 if s.size else 0.0) * max(float(lamG[-1]), 0.0)
    lamA, VA = np.linalg.eigh(_sym(agop))
    lamA_c = clip_spectrum(lamA, rel_tol, floor)
    agop_half = (VA * np.sqrt(lamA_c)) @ VA.T
    pp = PowerPearson(nfm, eig=(lamA, VA), rel_tol=rel_tol, floor=floor)

    row = {"layer": l + 1, "shape": [k_out, k_in], "trivial": trivial, "w_rank": r}
    row["pearson_a1"] = pearson(nfm, agop)
    row["pearson_a05"] = pearson(nfm, agop_half)
    row["cosine_a1"] = cosine(nfm, agop)
    row["cosine_a05"] = cosine(nfm, agop_half)
    row["alpha_star"] = alpha_star(pp)
    row["pearson_alpha_star"] = pp(row["alpha_star"]) if np.isfinite(row["alpha_star"]) else math.nan

    iso = isotropy(G, rel_tol=rel_tol, eigvals=lamG)
    row.update(iso)
    Ur = U[:, :r]
    Gr = Ur.T @ G @ Ur
    iso_r = isotropy(Gr, rel_tol=rel_tol)
    row.update({f"{k}_range": v for k, v in iso_r.items()})
    r90 = rank90(s)
    row["w_rank90"] = r90
    row["tightness_top"] = tightness(U[:, :r90].T @ G @ U[:, :r90]) if r90 else math.nan
    WWt = (U * s**2) @ U.T
    row["left_pearson"] = pearson(WWt, G)

    # ---- baselines (docs/SCIENCE.md, "Baselines")
    rb = baselines if baselines is not None else draw_random_baselines(
        key if key is not None else jax.random.PRNGKey(l), W.shape)
    rand, spec = [], []
    for R, Qo, Qi in rb.factors():
        rand.append(pearson(R.T @ R, R.T @ G @ R))
        Rs = random_with_spectrum(Qo, Qi, s)
        spec.append(pearson(Rs.T @ Rs, Rs.T @ G @ Rs))
    row["rand_pearson_a1"], row["rand_pearson_a1_sd"] = _mean_sd(rand)
    row["rand_spec_pearson_a1"], row["rand_spec_pearson_a1_sd"] = _mean_sd(spec)
    # what W itself contributes beyond any matrix of its shape at the same pgop
    row["rand_gap_a1"] = row["pearson_a1"] - row["rand_pearson_a1"]
    dW = W - W0
    row["centered_pearson"] = pearson(dW.T @ G @ dW, dW.T @ dW)
    row["delta_cosine_a1"] = cosine(dW.T @ dW, agop)
    row["delta_pearson_a1"] = pearson(dW.T @ dW, agop)
    jbar = grams.jbar[l]
    agop_gc = agop - jbar.T @ jbar
    if np.linalg.norm(agop_gc) > max(1e-12 * np.linalg.norm(agop), k_in * floor):
        row["gc_pearson_a1"] = pearson(nfm, agop_gc)
        row["gc_pearson_a05"] = pearson(nfm, psd_power(agop_gc, 0.5, rel_tol, floor))
    else:
        # every sample has the same Jacobian (the read-out layer always): the centred AGOP
        # is zero and what is left of the subtraction is rounding noise
        row["gc_pearson_a1"] = row["gc_pearson_a05"] = math.nan
    row["left_act_pearson"] = pearson(WWt, grams.pcov[l])
    row["half_range_pearson"] = pearson(Gr, np.diag(s[:r] ** 2))
    order = np.argsort(lamA)[::-1]
    rmax = min(8, r)
    for rr in range(1, 9):
        row[f"align_{rr}"] = (principal_cos_max_angle(Vt[:rr].T, VA[:, order[:rr]]) if rr <= rmax else math.nan)

    if grams.pgop_boot is not None:
        b_a05, b_a1, b_tr = [], [], []
        for Gb in grams.pgop_boot[l]:
            Ab = W.T @ Gb @ W
            b_a1.append(pearson(nfm, Ab))
            b_a05.append(pearson(nfm, psd_power(Ab, 0.5, rel_tol, floor)))
            b_tr.append(tightness(Ur.T @ Gb @ Ur))
        for name, vals in (("pearson_a05", b_a05), ("pearson_a1", b_a1), ("tightness_range", b_tr)):
            v = np.asarray(vals)
            v = v[np.isfinite(v)]
            row[f"{name}_lo"] = float(np.quantile(v, 0.025)) if v.size else math.nan
            row[f"{name}_hi"] = float(np.quantile(v, 0.975)) if v.size else math.nan

    mats = {"nfm": nfm, "agop": agop, "agop_half": agop_half, "pgop": G}
    return row, mats


N_DRAWS = 4  # random matrices per baseline; the mean is reported, the spread as *_sd


class RandomBaselines:
    """The random factors of the random-W baselines of one layer, from keys fixed once per
    run: Gaussian R (k_out, k_in), and Haar Q_out (k_out, r), Q_in (k_in, r), r = min(shape),
    for R_s = Q_out diag(s) Q_in^T. The Gaussian baseline's change over training is then
    pgop's alone; R_s also follows W's current singular values. Factors are kept in memory
    when small (<= 64 MB per layer) and otherwise redrawn, identically, from their keys."""

    CACHE_BYTES = 64 * 2**20

    def __init__(self, key, shape, n: int = N_DRAWS):
        self.keys = list(jax.random.split(key, n))
        self.shape = tuple(shape)
        r = min(shape)
        self._cache = [] if n * 8 * (shape[0] * shape[1] + (shape[0] + shape[1]) * r) <= self.CACHE_BYTES else None
        if self._cache is not None:
            self._cache = [self._draw(k) for k in self.keys]

    def _draw(self, k):
        k1, k2, k3 = jax.random.split(k, 3)
        r = min(self.shape)
        return (np.asarray(jax.random.normal(k1, self.shape, jnp.float64)),
                _haar(k2, self.shape[0], r), _haar(k3, self.shape[1], r))

    def factors(self):
        """(R, Q_out, Q_in) for each draw."""
        return self._cache if self._cache is not None else (self._draw(k) for k in self.keys)


def draw_random_baselines(key, shape, n: int = N_DRAWS) -> RandomBaselines:
    return RandomBaselines(key, shape, n)


def random_with_spectrum(Qo, Qi, s):
    """Q_out diag(s) Q_in^T: singular values s, singular vectors those of the Haar factors."""
    m = len(s)
    return (Qo[:, :m] * s) @ Qi[:, :m].T


def _mean_sd(vals) -> tuple[float, float]:
    v = np.asarray([x for x in vals if np.isfinite(x)], np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def _haar(key, k: int, r: int):
    """k x r matrix with orthonormal columns, Haar-distributed: the polar factor
    A (A^T A)^(-1/2) of a Gaussian A (the distribution of A is invariant under rotations, and
    so is its polar factor). One r x r eigh; OpenBLAS's QR took 75 ms at 1024 x 122."""
    A = np.asarray(jax.random.normal(key, (k, r), jnp.float64))
    lam, V = np.linalg.eigh(A.T @ A)
    return A @ ((V / np.sqrt(lam)) @ V.T)
