"""The Gram matrices every statistic is built from: AGOP and pgop by two exact methods
(docs/SCIENCE.md), with the mean Jacobians, the pre-activation covariances and bootstrap
resamples. Samples are accumulated in chunks under one `lax.scan` (memory flat in n), on
the device that holds the net; the Grams stay there for `stats`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import model as mdl
from .programs import ELEMENTAL, stored

CHUNK_BYTES = 64 * 2**20  # target size of the largest per-chunk Jacobian stack


# ============================================================================ Grams
class Reps(NamedTuple):
    """Feature-space Grams of one layer's output representation over the n samples, for
    linear CKA: A (n, k) the representation now (h_{l+1}, post-activation; f for the
    read-out), B the same at initialisation, T (n, c_T) the targets, each column-centred
    (_c) and divided by n: AA = A_c^T A_c / n, AB = A_c^T B_c / n, BB, AT = A_c^T T_c / n,
    TT; sA, sB, sT: the traces of the second moments about the shift sample (the rounding
    scale of AA, BB, TT)."""

    AA: jax.Array
    AB: jax.Array
    BB: jax.Array
    AT: jax.Array
    TT: jax.Array
    sA: jax.Array
    sB: jax.Array
    sT: jax.Array


class Grams(NamedTuple):
    """Per layer l (0-based), over n samples (sums divided by n), as float64 device arrays:
    agop[l]  (k_l, k_l)          E[J^T J], J = df/dh_l (c, k_l)
    pgop[l]  (k_{l+1}, k_{l+1})  E[g^T g], g = df/dp_{l+1}; for the output layer I_c
    jbar[l]  (c, k_l)            E[J]
    gbar[l]  (c, k_{l+1})        E[g]
    pcov[l]  (k_{l+1}, k_{l+1})  E[p p^T], p the pre-activation (the output f for the last)
    pgop_boot[l] (B, k, k) or None: pgop under B multinomial resamples of the n samples
    agop_c[l], pgop_c[l]         the gradient-centred E[(J - E J)^T (J - E J)] and
                                 E[(g - E g)^T (g - E g)], accumulated about one sample's
                                 Jacobian (docs/SCIENCE.md, "Centred Grams")
    gdev[l]  ()                  E|g - g*|_F^2, g* that sample's: the rounding scale of pgop_c
    reps[l]  Reps, or None       the representation Grams for CKA (compute_grams' params0, T)
    """

    agop: list
    pgop: list
    jbar: list
    gbar: list
    pcov: list
    pgop_boot: list | None
    n: int
    agop_c: list
    pgop_c: list
    gdev: list
    reps: list | None = None


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
    every pre-activation: g_l = df/dp_{l+1} of shape (c, m, k_{l+1}). Returns ({"g": the
    g_l}, hs, ps) (forward_all's)."""
    m = X.shape[0]
    eps0 = [jnp.zeros((m, layer["W"].shape[0]), X.dtype) for layer in params]

    def f_sum(eps):
        hs, ps = mdl.forward_all(params, X, activation, eps)
        # f(x_m) depends only on eps[.][m], so d(sum_m f)/d eps[l][m] = df(x_m)/dp_{l+1}
        return ps[-1].sum(0), (hs, ps)

    gs, (hs, ps) = jax.jacrev(f_sum, has_aux=True)(eps0)  # gs[l]: (c, m, k_{l+1})
    return {"g": gs}, hs, ps


def _jacfwd_chunk(params, X, activation):
    """Per layer, as written in the paper: vmap over samples of jacfwd of f_l (the map from
    h_l to the output) and of the map from p_{l+1} to the output: ({"g": the g_l, "J": the
    J_l}, hs, ps)."""
    hs, ps = mdl.forward_all(params, X, activation)
    Js, gs = [], []
    for l in range(len(params)):
        fl = lambda h, l=l: mdl.f_from_input(params, l, h, activation)
        fp = lambda p, l=l: mdl.f_from_preact(params, l, p, activation)
        Js.append(jnp.moveaxis(jax.vmap(jax.jacfwd(fl))(hs[l]), 0, 1))  # (c, m, k_l)
        gs.append(jnp.moveaxis(jax.vmap(jax.jacfwd(fp))(ps[l]), 0, 1))  # (c, m, k_{l+1})
    return {"g": gs, "J": Js}, hs, ps


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
                  chunk: int | None = None, bootstrap: int = 0, key=None, params0=None, T=None) -> Grams:
    """AGOP, pgop and their companions over the rows of X (n, d), exactly, in chunks.

    `method`: "preact" (one pass for all layers; agop = W^T pgop W), "jacfwd" (per layer
    vmap(jacfwd(f_l)), agop from the Jacobians themselves) or "auto" (fewer flops).
    `params0` (the net at initialisation) with `T` (n, c_T) (the targets): also the
    representation Grams `reps` for CKA."""
    return compute_grams_batch([params], [X], activation, method=method, dtype=dtype, chunk=chunk,
                               bootstrap=bootstrap, keys=[key], params0_list=None if params0 is None else [params0],
                               T_list=None if T is None else [T])[0]


def compute_grams_batch(params_list, X_list, activation: str, *, method: str = "auto", dtype=jnp.float64,
                        chunk: int | None = None, bootstrap: int = 0, keys=None, params0_list=None,
                        T_list=None) -> list[Grams]:
    """compute_grams for runs of one shape (a seed batch) as one vmapped program; one run
    is the unbatched case."""
    dtype = jnp.dtype(dtype)
    first = params_list[0]
    n = int(np.shape(X_list[0])[0])
    sizes = [first[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in first]
    method = choose_method(sizes, method)
    m = min(chunk or auto_chunk(sizes, method, dtype.itemsize), n)
    R = len(params_list)
    wbs = tuple(_bootstrap_weights(k, n, bootstrap) if bootstrap else np.zeros((0, n)) for k in (keys or [None] * R))
    feats = None if params0_list is None else tuple(zip(params0_list, T_list))
    outs = _grams_runs(tuple(params_list), tuple(X_list), wbs, feats, activation=activation, method=method, m=m,
                       dtype=dtype.name)
    return [Grams(**{k: v for k, v in o.items() if k != "boot"}, pgop_boot=o["boot"] if bootstrap else None, n=n)
            for o in outs]


@stored(static=("activation", "method", "m", "dtype"), options=ELEMENTAL)
def _grams_runs(params_list, X_list, wbs, feats, *, activation, method, m, dtype):
    """Every run's Grams, divided by n, in float64: the runs (a seed batch) under one
    vmap; casting and stacking happen inside this one program. `feats`: None, or each
    run's (params0, T) for the representation Grams."""
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), t)
    fn = functools.partial(_grams, activation=activation, method=method, m=m)
    runs = list(zip(params_list, X_list, wbs, feats or (None,) * len(params_list)))
    if len(runs) == 1:
        return [fn(*cast(runs[0]))]
    out = jax.vmap(fn)(*cast(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *runs)))
    return [jax.tree_util.tree_map(lambda a, r=r: a[r], out) for r in range(len(runs))]


def _grams(params, X, wb, feats, *, activation, method, m):
    """The Grams from the chunk sums (docs/SCIENCE.md, "Centred Grams"). With g* the
    Jacobian of the first sample and D = g - g*, the sums give E[D] = d and E[D^T D]: the
    centred Gram is E[D^T D] - d^T d (both of the size of the spread: nothing large
    cancels, and it is exactly 0 where every sample has g*'s Jacobian), the mean is
    g* + d, and the uncentred Gram is centred + mean^T mean, a sum of PSD matrices. In
    float64 whatever the Gram dtype (README, "Config reference")."""
    n = X.shape[0]
    anc, acc = _accumulate(params, X, wb, activation, method, m, feats)
    f64 = lambda a: a.astype(jnp.float64)
    mom = {k: list(zip(*[_moments(f64(a), f64(S2) / n, f64(S1) / n) for a, S2, S1 in zip(anc[k], *acc[k])]))
           for k in ("g", "J") if k in acc}
    pgop_c, gbar, gdev = (list(x) for x in mom["g"])
    pgop = [C + g.T @ g for C, g in zip(pgop_c, gbar)]
    if method == "preact":  # J = g W
        agop = [p["W"].T @ G @ p["W"] for p, G in zip(params, pgop)]
        agop_c = [p["W"].T @ C @ p["W"] for p, C in zip(params, pgop_c)]
        jbar = [g @ p["W"] for p, g in zip(params, gbar)]
    else:
        agop_c, jbar, _ = (list(x) for x in mom["J"])
        agop = [C + j.T @ j for C, j in zip(agop_c, jbar)]
    mean = lambda xs: [f64(x) / n for x in xs]
    reps = None if feats is None else [_reps(acc["reps"], l, n) for l in range(len(params))]
    return {"agop": agop, "pgop": pgop, "jbar": jbar, "gbar": gbar, "pcov": mean(acc["pcov"]),
            "boot": mean(acc["boot"]), "agop_c": agop_c, "pgop_c": pgop_c, "gdev": gdev, "reps": reps}


def _moments(anchor, S2, S1):
    """(centred Gram, mean, E|D|_F^2) from S2 = E[D^T D] and S1 = E[D], D = J - anchor."""
    return S2 - S1.T @ S1, anchor + S1, jnp.trace(S2)


def _reps(acc, l: int, n: int) -> Reps:
    """Layer l's representation Grams from the sums about the shift sample (A' = A - a*): a
    centred cross Gram is E[A'^T B'] - E[A']^T E[B']. The targets are shared by all layers."""
    f = lambda a: a.astype(jnp.float64) / n
    a, b, t = f(acc["sa"][l]), f(acc["sb"][l]), f(acc["st"])
    AA, AB, BB, AT = (f(acc[k][l]) for k in ("AA", "AB", "BB", "AT"))
    TT = f(acc["TT"])
    return Reps(AA - jnp.outer(a, a), AB - jnp.outer(a, b), BB - jnp.outer(b, b), AT - jnp.outer(a, t),
                TT - jnp.outer(t, t), jnp.trace(AA), jnp.trace(BB), jnp.trace(TT))


def _accumulate(params, X, wb, activation, method, m, feats):
    """Sums over the rows of X (n, d) in chunks of m rows, one lax.scan step each. The last
    chunk is clamped to end at row n; rows it shares with the previous chunk get weight 0,
    so every row counts once and X is never padded or copied. Jacobians and
    representations enter as differences from those of row 0 (the anchors, taken in the
    first chunk). Returns (anchors, sums)."""
    n = X.shape[0]
    chunk_fn = _preact_chunk if method == "preact" else _jacfwd_chunk

    def step(i, anc):
        start = jnp.minimum(i * m, n - m)
        w = (start + jnp.arange(m) >= i * m).astype(X.dtype)
        cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, m)
        wbc = jax.lax.dynamic_slice_in_dim(wb, start, m, axis=1) * w[None, :]
        jac, hs, ps = chunk_fn(params, cut(X), activation)
        rows = dict(jac)
        if feats is not None:
            hs0, ps0 = mdl.forward_all(feats[0], cut(X), activation)
            # each layer's output representation: h_{l+1} (post-activation), f for the read-out
            rows["reps"] = {"a": hs[1:] + [ps[-1]], "b": hs0[1:] + [ps0[-1]], "t": cut(feats[1])}
        here = jax.tree_util.tree_map(lambda x: x[:, 0] if x.ndim == 3 else x[0], rows)  # row 0 of the chunk
        anc = here if anc is None else jax.tree_util.tree_map(lambda h, a: jnp.where(i == 0, h, a), here, anc)
        return anc, _chunk_sums(rows, anc, ps, w, wbc)

    anc0, sums0 = jax.eval_shape(step, 0, None)
    zeros = lambda t: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), t)

    def body(carry, i):
        anc, acc = step(i, carry[0])
        return (anc, jax.tree_util.tree_map(jnp.add, carry[1], acc)), None

    (anc, acc), _ = jax.lax.scan(body, (zeros(anc0), zeros(sums0)), jnp.arange(-(-n // m)))
    return anc, acc


def _chunk_sums(rows, anc, ps, w, wbc) -> dict:
    """One chunk's weighted sums: for each Jacobian stack (c, m, k) with D = J - anchor,
    (sum D^T D, sum D); E[p p^T]; the bootstrap resamples of pgop (uncentred); and the
    representation sums about their anchors."""
    out = {k: ([_stack_grams(J - a[:, None, :], w) for J, a in zip(rows[k], anc[k])],
               [_weighted_sum(J - a[:, None, :], w) for J, a in zip(rows[k], anc[k])]) for k in ("g", "J") if k in rows}
    out["pcov"] = [(p * w[:, None]).T @ p for p in ps]
    out["boot"] = [jax.lax.map(lambda wr, G=G: _stack_grams(G, wr), wbc) if wbc.shape[0]
                   else jnp.zeros((0,) + G.shape[-1:] * 2, G.dtype) for G in rows["g"]]
    if "reps" in rows:
        r, a = rows["reps"], anc["reps"]
        A = [x - x0 for x, x0 in zip(r["a"], a["a"])]
        B = [x - x0 for x, x0 in zip(r["b"], a["b"])]
        T = r["t"] - a["t"]
        wt = lambda Z: Z * w[:, None]
        # A'^T [A' B' T'] as one GEMM: its blocks are A'^T A', A'^T B', A'^T T'
        ABT = [wt(Z).T @ jnp.concatenate([Z, Y, T], axis=1) for Z, Y in zip(A, B)]
        k = [Z.shape[1] for Z in A]
        out["reps"] = {"AA": [M[:, :kk] for M, kk in zip(ABT, k)], "AB": [M[:, kk:2 * kk] for M, kk in zip(ABT, k)],
                       "AT": [M[:, 2 * kk:] for M, kk in zip(ABT, k)], "BB": [wt(Y).T @ Y for Y in B],
                       "TT": wt(T).T @ T, "sa": [wt(Z).sum(0) for Z in A], "sb": [wt(Y).sum(0) for Y in B],
                       "st": wt(T).sum(0)}
    return out
