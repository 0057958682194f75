"""Counterfactual nets: one layer's W replaced and the gradients recomputed through the
changed net, forward and backward, on the device.

- The swap test (docs/SCIENCE.md): W_i replaced by a Gaussian matrix of its shape (scaled
  to W_i's Frobenius norm) and by a matrix with W_i's singular values and Haar singular
  vectors. Does the pre-activation gradients' isotropy belong to the trained W_i, or would
  any W_i do? (the seed note's open caveat)
- The U/V swaps: W_i O (keeps W's U and S; its right singular vectors O^T V are Haar) and
  O' W_i (keeps V and S; O' U is Haar), O and O' Haar orthogonal matrices: which of W's
  singular frames carries what the swap test finds. (No SVD sign convention enters.)
- What the published verification scripts print (verify_deep_NFA.py of
  aradha/deep_neural_feature_ansatz and aradha/agop_feature_learning), bug for bug: the
  AGOP of the net whose layer weight is W - W0 (subtracted in place from the net's own
  parameter), at the inputs their get_layer_output returns.

Both are the Grams of a sub-network that starts at layer i with a replaced weight, over
inputs Z to that layer (grams.compute_grams), and a few correlations (stats).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import baselines as bl
from . import grams
from . import model as mdl
from . import stats

PUBLISHED_KEYS = stats.names("published")  # their meanings: the registry in statnames.py
SWAP_KEYS = stats.names("swap")
SWAP_UV_KEYS = stats.names("swap_uv")
ARMS = {"swap": ("swap", "swap_spec"), "swap_uv": ("swap_keepu", "swap_keepv")}  # family -> its swapped matrices
F64 = jnp.float64


def subnet(params, i: int, W):
    """Layers i.. of the net, with W in place of W_i (its bias, if any, kept)."""
    return [{**params[i], "W": W}] + list(params[i + 1:])


@functools.partial(jax.jit, static_argnames=("activation",))
def layer_inputs(params, X, activation):
    """h_i for every layer: the inputs of W_i over the rows of X."""
    return mdl.forward_all(params, X, activation)[0]


@functools.partial(jax.jit, static_argnames=("i",))
def published_inputs(params, dW, hs, X, *, i: int):
    """The rows the published scripts' get_layer_output(net, ..., layer_idx=i) returns once
    W_i has been replaced by W_i - W0_i in place: X for i = 0; ReLU(p_1) for i = 1 (its
    Nonlinearity() is ReLU whatever the net's activation); for i >= 2, ReLU of the output
    of layer i itself (its loop stops one layer late), which passes through the replaced
    W_i: ReLU(dW_i h_i + b_i). (Their nets have no biases; a bias is kept as the net has it.)"""
    if i == 0:
        return X
    if i == 1:
        return jax.nn.relu(mdl._affine(params[0], X))
    return jax.nn.relu(mdl._affine({**params[i], "W": dW}, hs[i]))


class SwapFactors:
    """Per run and layer, drawn once from their own key (baselines.draw with one draw): a
    Gaussian R and the left singular vectors of it (its range), and for the same-spectrum
    swap a Haar Q_out and Q_in (the baselines keep only Q_in^T 1, so these are drawn anew);
    with `uv`, the U/V swaps' Haar orthogonal O_in (k_in x k_in) and O_out (k_out x k_out)."""

    def __init__(self, key, shape, uv: bool = False):
        f = bl.draw(key, shape, 1)
        self.R = f.R[0]
        self.Qo = f.Qo[0]
        self.Qi = bl.haar(jax.random.fold_in(key, 0x5A9), shape[1], min(shape))
        sv = stats._svd_host(self.R)
        self.U_R, self.r_R = sv.U, sv.r
        self.Oi = bl.haar(jax.random.fold_in(key, 0x5AA), shape[1], shape[1]) if uv else None
        self.Oo = bl.haar(jax.random.fold_in(key, 0x5AB), shape[0], shape[0]) if uv else None


def published(cfg, params, params0, X, hs, i: int, *, dtype) -> dict:
    """The four published_* keys of hidden layer i."""
    act = cfg.model.activation
    dW = jnp.asarray(params[i]["W"], F64) - jnp.asarray(params0[i]["W"], F64)
    Z = published_inputs(params, dW, hs, X, i=i)
    g = grams.compute_grams(subnet(params, i, dW), Z, act, method=cfg.metrics.jacobian, dtype=dtype,
                            chunk=cfg.metrics.chunk)
    return _float(stats.published_row(dW, g.agop[0], g.agop_c[0], g.pgop[0], g.gdev[0],
                                      max(dW.shape) * float(jnp.finfo(dtype).eps)))


def swap(cfg, params, hs, i: int, f: SwapFactors, *, dtype, family: str = "swap") -> dict:
    """The keys of one swap family of hidden layer i (swap: swap_*, swap_spec_*; swap_uv:
    swap_keepu_*, swap_keepv_*): W_i replaced, the net re-evaluated."""
    W = jnp.asarray(params[i]["W"], F64)
    if family == "swap":
        R, Rs, r = _swap_matrices(W, f.R, f.Qo, f.Qi)
        arms = ((R, f.U_R, f.r_R), (Rs, f.Qo, r))
    else:
        Mu, Mv, U, OU, r = _uv_matrices(W, f.Oo, f.Oi)
        arms = ((Mu, U, r), (Mv, OU, r))
    out = {}
    for name, (M, U, rk) in zip(ARMS[family], arms):
        p, t = swapped(cfg, params, hs, i, M, U, rk, dtype=dtype)
        out[f"{name}_pearson_a1"], out[f"{name}_tightness_range"] = p, t
    return out


def swapped(cfg, params, hs, i: int, M, U, r, *, dtype) -> tuple[float, float]:
    """pearson(M^T M, agop') and the tightness of pgop' on range(M) (U's first r columns),
    with agop' and pgop' the Grams of the net whose W_i is M, at the inputs hs[i]."""
    g = grams.compute_grams(subnet(params, i, M), hs[i], cfg.model.activation, method=cfg.metrics.jacobian,
                            dtype=dtype, chunk=cfg.metrics.chunk)
    p, t = stats.swap_row(jnp.asarray(M, F64), g.agop[0], g.pgop[0], jnp.asarray(U, F64), r)
    return float(p), float(t)


@jax.jit
def _swap_matrices(W, R, Qo, Qi):
    """R scaled to |W|_F; Q_out diag(s) Q_in^T with W's singular values; W's rank."""
    sv = stats.svd_of(W, None, None, "svd")
    R = R * (jnp.linalg.norm(W) / jnp.linalg.norm(R))
    return R, (Qo * sv.s) @ Qi.T, sv.r


@jax.jit
def _uv_matrices(W, Oo, Oi):
    """W O_in (range that of W: W's U), O_out W (range O_out U), W's U and rank."""
    sv = stats.svd_of(W, None, None, "svd")
    return W @ Oi, Oo @ W, sv.U, Oo @ sv.U, sv.r


def _float(d):
    return {k: float(v) for k, v in jax.device_get(d).items()}
