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

CHUNK_BYTES = 64 * 2**20  # target size of the largest per-chunk Jacobian stack


# ============================================================================ Grams
class Grams(NamedTuple):
    """Per layer l (0-based), over n samples (sums divided by n), as float64 device arrays:
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
    return compute_grams_batch([params], [X], activation, method=method, dtype=dtype, chunk=chunk,
                               bootstrap=bootstrap, keys=[key])[0]


def compute_grams_batch(params_list, X_list, activation: str, *, method: str = "auto", dtype=jnp.float64,
                        chunk: int | None = None, bootstrap: int = 0, keys=None) -> list[Grams]:
    """compute_grams for runs of one shape (a seed batch) as one vmapped program; one run
    is the unbatched case."""
    dtype = jnp.dtype(dtype)
    params0 = params_list[0]
    n = int(np.shape(X_list[0])[0])
    sizes = [params0[0]["W"].shape[1]] + [layer["W"].shape[0] for layer in params0]
    method = choose_method(sizes, method)
    m = min(chunk or auto_chunk(sizes, method, dtype.itemsize), n)
    R = len(params_list)
    wbs = tuple(_bootstrap_weights(k, n, bootstrap) if bootstrap else np.zeros((0, n)) for k in (keys or [None] * R))
    outs = _grams_runs(tuple(params_list), tuple(X_list), wbs, activation=activation, method=method, m=m,
                       dtype=dtype.name)
    return [Grams(*o[:5], pgop_boot=o[5] if bootstrap else None, n=n) for o in outs]


@functools.partial(jax.jit, static_argnames=("activation", "method", "m", "dtype"))
def _grams_runs(params_list, X_list, wbs, *, activation, method, m, dtype):
    """Every run's Gram sums, divided by n, in float64: the runs (a seed batch) under one
    vmap; casting and stacking happen inside this one program."""
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), t)
    fn = functools.partial(_grams, activation=activation, method=method, m=m)
    if len(params_list) == 1:
        return [fn(cast(params_list[0]), cast(X_list[0]), cast(wbs[0]))]
    stack = lambda xs: cast(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs))
    out = jax.vmap(fn)(stack(params_list), stack(X_list), stack(wbs))
    return [jax.tree_util.tree_map(lambda a, r=r: a[r], out) for r in range(len(params_list))]


def _grams(params, X, wb, *, activation, method, m):
    n = X.shape[0]
    agop_s, pgop_s, jbar_s, gbar_s, pcov_s, boot_s = _accumulate(params, X, wb, activation, method, m)
    if method == "preact":
        agop_s = [p["W"].T @ G @ p["W"] for p, G in zip(params, pgop_s)]
        jbar_s = [g @ p["W"] for p, g in zip(params, gbar_s)]
    # the statistics run in float64 whatever the Gram dtype (README, "Config reference")
    mean = lambda xs: [x.astype(jnp.float64) / n for x in xs]
    return mean(agop_s), mean(pgop_s), mean(jbar_s), mean(gbar_s), mean(pcov_s), mean(boot_s)


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


