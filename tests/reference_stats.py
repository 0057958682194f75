"""The independent reference for dnfa_cli.stats: the numpy implementation of every
per-layer statistic that dnfa used before the statistics moved onto the device (one
formula at a time, the obvious way: explicit matrices, numpy LAPACK on the host). The
device path must equal it to 1e-10 in float64.

One definition differs from that old code: half_range_pearson was pearson(U_r^T G U_r,
S^2) in the SVD basis, whose value depended on the sign LAPACK gives each singular
vector; it is now the same identity in the standard basis, pearson(Pi G Pi, W W^T).
"""
from __future__ import annotations

import math

import numpy as np

MARGIN = 10.0  # decisions sit this far above the rounding scale of what they judge
EPS = np.finfo(np.float64).eps


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
    return np.where(lam > MARGIN * max(rel_tol * top, floor), lam, 0.0) if top > 0 else np.zeros_like(lam)


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


def alpha_star(pp: PowerPearson):
    """(alpha*, edge, maximum): the alpha in [0.05, 2] maximising pearson(nfm, agop^alpha)
    (a grid of step 0.005, then golden-section refinement around the best grid point);
    nan (and no maximum) where the correlation does not depend on alpha, nan with edge
    "low"/"high" where the maximum is at an end of the range."""
    lo, hi = ALPHA_RANGE
    grid = np.linspace(lo, hi, 391)
    vals = pp.many(grid)
    if not np.any(np.isfinite(vals)):
        return math.nan, None, math.nan
    tol = MARGIN * len(pp.lam) * EPS
    if np.nanmax(vals) - np.nanmin(vals) <= tol:
        return math.nan, None, math.nan  # flat in alpha (e.g. a rank-1 agop): no maximiser
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
    if not np.isfinite(fx) or vals[i] > fx + tol * max(1.0, abs(fx)):
        x, fx = float(grid[i]), float(vals[i])
    # the maximum at an end of [0.05, 2]: the best exponent lies beyond, none is reported
    if x <= lo + 1e-6:
        return math.nan, "low", float(fx)
    if x >= hi - 1e-6:
        return math.nan, "high", float(fx)
    return float(x), None, float(fx)


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
        "cond": lmax / lmin if lmin > MARGIN * rel_tol * lmax and lmin > 0 else math.nan,
    }


def traceless_pearson(A, B) -> float:
    """pearson(A - (tr A / k) I, B - (tr B / k) I)."""
    k = A.shape[0]
    return pearson(A - np.trace(A) / k * np.eye(k), B - np.trace(B) / k * np.eye(k))


def offdiag_pearson(A, B) -> float:
    """Pearson correlation of the entries A_ij, B_ij with i < j."""
    iu = np.triu_indices(A.shape[0], 1)
    return pearson(A[iu], B[iu]) if len(iu[0]) else math.nan


def group_ends(s, r: int, size: int) -> list[int]:
    """The j (1-based, j <= r) that end a group of tied singular values: s_j^2 - s_{j+1}^2
    above MARGIN size eps s_1^2, or j = r."""
    s2 = np.asarray(s, np.float64) ** 2
    return [j for j in range(1, r + 1) if j == r or s2[j - 1] - s2[j] > MARGIN * size * EPS * s2[0]]


def iso_dim90(U, G, ends, tol: float) -> int:
    """The largest end j such that tightness(U_i^T G U_i) >= 0.9 - tol for every end i <= j,
    U_i the first i columns of U, each block formed explicitly; 0 if the first fails."""
    k = 0
    for j in ends:
        t = tightness(U[:, :j].T @ G @ U[:, :j])
        if not t >= 0.9 - tol:
            break
        k = j
    return k


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
    return int(np.searchsorted(np.cumsum(e) / tot, 0.9 - MARGIN * len(e) * EPS) + 1)


def principal_cos_max_angle(A, B) -> float:
    """Cosine of the largest principal angle between span(A) and span(B) (orthonormal
    columns): the smallest singular value of A^T B."""
    sv = np.linalg.svd(A.T @ B, compute_uv=False)
    return float(np.clip(sv[-1], 0.0, 1.0))


# ============================================================================ per layer
ACT = {"relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh, "quadratic": np.square, "identity": lambda x: x,
       "silu": lambda x: x / (1.0 + np.exp(-x)), "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))}


def _erf(x):
    from scipy.special import erf

    return erf(x)


def outputs(params, X, activation: str) -> list:
    """Each layer's output representation over the rows of X, in numpy: h_{l+1} =
    s(W_l h_l + b_l) for a hidden layer, f for the read-out."""
    h = np.asarray(X, np.float64)
    out = []
    for l, p in enumerate(params):
        z = h @ np.asarray(p["W"], np.float64).T + (np.asarray(p["b"], np.float64) if "b" in p else 0.0)
        h = z if l == len(params) - 1 else ACT[activation](z)
        out.append(h)
    return out


def cka(A, B, rel_tol: float) -> float:
    """Linear CKA in its n x n kernel form, tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K =
    A A^T, L = B B^T, H = I - 11^T / n; nan where a representation is constant across the
    samples to rounding: |H K H|_F / n (= |A_c^T A_c|_F / n) within MARGIN rel_tol of
    mean_i |a_i - a_1|^2."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    n = len(A)
    H = np.eye(n) - 1.0 / n
    Kc, Lc = H @ (A @ A.T) @ H, H @ (B @ B.T) @ H
    for Z, Zc in ((A, Kc), (B, Lc)):
        if not np.linalg.norm(Zc) / n > MARGIN * rel_tol * np.mean(np.sum((Z - Z[0]) ** 2, axis=1)):
            return math.nan
    return float(np.sum(Kc * Lc) / math.sqrt(np.sum(Kc * Kc) * np.sum(Lc * Lc)))


def layer_stats(W, W0, grams, l: int, *, trivial: bool, rel_tol: float, factors, reps=None) -> tuple[dict, dict]:
    """Every per-layer statistic of docs/SCIENCE.md for layer l (0-based) -> (json row, matrices).
    W, W0 are numpy float64; `rel_tol` (k eps of the metrics dtype) sets the noise floors: an
    eigenvalue of agop counts as zero below max(rel_tol l_max(agop), rel_tol s_max(W)^2
    l_max(pgop)) (the rounding scale of W^T pgop W), and cond is undefined when l_min <=
    rel_tol l_max. `factors`: the layer's random factors, (R, Q_out, q = Q_in^T 1) for each
    draw; Q_in is rebuilt from q (columns_with_sum). `reps`: (A, B, T), the layer's output
    over the metrics rows now and at initialisation and the targets (`outputs`), for
    cka_init and kta (null without)."""
    W = np.asarray(W, np.float64)
    W0 = np.asarray(W0, np.float64)
    agop, G = (np.asarray(a, np.float64) for a in (grams.agop[l], grams.pgop[l]))
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
    row["alpha_star"], row["alpha_star_edge"], row["pearson_alpha_star"] = alpha_star(pp)

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
    ends = group_ends(s, r, max(k_out, k_in))
    rand, spec, rand_iso = [], [], []
    for R, Qo, q in factors:
        R, Qo, q = (np.asarray(a, np.float64) for a in (R, Qo, q))
        Qi = columns_with_sum(q, W.shape[1])
        rand.append(pearson(R.T @ R, R.T @ G @ R))
        Rs = random_with_spectrum(Qo, Qi, s)
        spec.append(pearson(Rs.T @ Rs, Rs.T @ G @ Rs))
        rand_iso.append(iso_dim90(np.linalg.svd(Rs, full_matrices=False)[0], G, ends, MARGIN * rel_tol))
    row["rand_pearson_a1"], row["rand_pearson_a1_sd"] = _mean_sd(rand)
    row["rand_spec_pearson_a1"], row["rand_spec_pearson_a1_sd"] = _mean_sd(spec)
    # what W itself contributes beyond any matrix of its shape at the same pgop
    row["rand_gap_a1"] = row["pearson_a1"] - row["rand_pearson_a1"]
    dW = W - W0
    row["delta_rel"] = float(np.linalg.norm(dW) / np.linalg.norm(W0)) if np.linalg.norm(W0) > 0 else math.nan
    row["centered_pearson"] = pearson(dW.T @ G @ dW, dW.T @ dW)
    row["delta_cosine_a1"] = cosine(dW.T @ dW, agop)
    row["delta_pearson_a1"] = pearson(dW.T @ dW, agop)
    row["delta_pearson_a05"] = pearson(dW.T @ dW, agop_half)
    # the gradient-centred agop as the Grams give it (tests/test_grams.py checks it against
    # its two-pass definition); its rounding scale: rel_tol s_max^2 sqrt(tr G E|g - g*|^2)
    agop_gc = np.asarray(grams.agop_c[l], np.float64)
    noise = rel_tol * float(s[0] ** 2) * math.sqrt(max(float(np.trace(G)), 0.0) * max(float(grams.gdev[l]), 0.0))
    if not trivial and np.linalg.norm(agop_gc) > MARGIN * noise:
        row["gc_pearson_a1"] = pearson(nfm, agop_gc)
        half_gc = psd_power(agop_gc, 0.5, rel_tol, noise)
        row["gc_pearson_a05"] = pearson(nfm, half_gc)
        row["delta_gc_pearson_a05"] = pearson(dW.T @ dW, half_gc)
        row["delta_gc_cosine_a1"] = cosine(dW.T @ dW, agop_gc)
    else:
        # every sample has the same Jacobian (the read-out layer always): the centred AGOP
        # is zero and what is left of the subtraction is rounding noise
        row["gc_pearson_a1"] = row["gc_pearson_a05"] = row["delta_gc_pearson_a05"] = row["delta_gc_cosine_a1"] = math.nan
    row["left_act_pearson"] = pearson(WWt, np.asarray(grams.pcov[l], np.float64))
    P = Ur @ Ur.T  # the projector on range(W)
    row["half_range_pearson"] = pearson(P @ G @ P, WWt)
    order = np.argsort(lamA)[::-1]
    rmax = min(8, r, int(np.sum(lamA_c > 0)))  # agop's eigenvectors beyond its rank are arbitrary
    for rr in range(1, 9):
        row[f"align_{rr}"] = (principal_cos_max_angle(Vt[:rr].T, VA[:, order[:rr]]) if rr <= rmax else math.nan)

    # ---- the ansatz without the identity bulk, and isotropy on a width-free scale
    for pre, N in (("", nfm), ("delta_", dW.T @ dW)):
        for name, fn in (("traceless_pearson", traceless_pearson), ("offdiag_pearson", offdiag_pearson)):
            row[f"{pre}{name}_a1"] = fn(N, agop)
            row[f"{pre}{name}_a05"] = fn(N, agop_half)
    curve = pp.many(np.linspace(0.05, 2.0, 391))
    row["alpha_curve_range"] = float(np.nanmax(curve) - np.nanmin(curve)) if np.any(np.isfinite(curve)) else math.nan
    row["iso_dim90"] = iso_dim90(U, G, ends, MARGIN * rel_tol)
    row["iso_frac90"] = row["iso_dim90"] / r if r else math.nan
    row["rand_iso_dim90"] = float(np.mean(rand_iso))

    A, B, T = reps if reps is not None else (np.zeros((2, 1)),) * 3
    row["cka_init"], row["kta"] = cka(A, B, rel_tol), cka(A, T, rel_tol)

    if grams.pgop_boot is not None:
        b_a05, b_a1, b_tr = [], [], []
        for Gb in np.asarray(grams.pgop_boot[l], np.float64):
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


def _mean_sd(vals) -> tuple[float, float]:
    v = np.asarray([x for x in vals if np.isfinite(x)], np.float64)
    if not v.size:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def random_with_spectrum(Qo, Qi, s):
    """Q_out diag(s) Q_in^T: singular values s, singular vectors those of the Haar factors."""
    m = len(s)
    return (Qo[:, :m] * s) @ Qi[:, :m].T


def columns_with_sum(q, k: int):
    """A k x r matrix Q with orthonormal columns and Q^T 1 = q (|q|^2 <= k): the first r
    columns of the Householder reflection H that maps 1/sqrt(k) to
    v = (q / sqrt(k), sqrt(1 - |q|^2 / k), 0, ...), since Q^T 1 = sqrt(k) (H u)[:r]."""
    r = len(q)
    u = np.full(k, 1.0 / np.sqrt(k))
    v = np.zeros(k)
    v[:r] = q / np.sqrt(k)
    if r < k:
        v[r] = np.sqrt(max(1.0 - q @ q / k, 0.0))
    w = u - v
    nw = w @ w
    H = np.eye(k) - (2.0 / nw) * np.outer(w, w) if nw > 1e-30 else np.eye(k)
    return H[:, :r]


def tanh_swap(Ws, bs, i: int, M, H):
    """The swap test written out for a tanh net with biases, by hand: W_i replaced by M, the
    layers above run forward over the rows of H (the inputs of layer i) and back by the
    chain rule, df/dp = (df/dp_next) W_next diag(1 - tanh(p)^2), for each sample.
    Returns pearson(M^T M, agop') and the tightness of pgop' on the range of M."""
    L = len(Ws)
    pgop = np.zeros((M.shape[0],) * 2)
    for h in H:
        ps, x = [], h
        for l in range(i, L):
            p = (M if l == i else Ws[l]) @ x + bs[l]
            ps.append(p)
            x = np.tanh(p)
        g = np.eye(Ws[-1].shape[0])  # df/dp of the read-out's pre-activation: the identity
        for l in range(L - 1, i, -1):
            g = (g @ Ws[l]) * (1.0 - np.tanh(ps[l - 1 - i]) ** 2)[None, :]
        pgop += g.T @ g
    pgop /= len(H)
    agop = M.T @ pgop @ M
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    Ur = U[:, :int(np.sum(s > max(M.shape) * np.finfo(float).eps * s[0]))]
    return pearson(M.T @ M, agop), tightness(Ur.T @ pgop @ Ur)
