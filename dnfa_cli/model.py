"""The MLP as pure functions over a list of {"W", "b"} (b absent when bias is off): its
parameters, forward passes, losses and the run's random keys.

W_i has shape (k_{i+1}, k_i), rows are output units (docs/SCIENCE.md). Layer indices in code
are 0-based (`l`); every output names them 1-based (`l + 1`). `forward_all` exposes the
pre-activations p_{l+1} = W_l h_l + b_l and accepts perturbations added to each of them,
so df/dp is a plain reverse-mode gradient at zero perturbation.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .baselines import haar
from .programs import stored
from .rules import layer_sizes  # noqa: F401

Params = list  # [{"W": (k_out, k_in), "b": (k_out,)?}, ...]


def activation_fn(name: str):
    return {
        "relu": jax.nn.relu,
        # PyTorch's nn.GELU() default is the exact erf form, not the tanh approximation
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "tanh": jnp.tanh,
        "silu": jax.nn.silu,
        "quadratic": jnp.square,
        "identity": lambda x: x,
    }[name]


def init_params(key, sizes: list[int], *, bias: bool, init: str, init_scale: float, dtype) -> Params:
    """`gaussian`: W ~ N(0, init_scale^2 / fan_in), b = 0. `torch`: PyTorch's nn.Linear
    default, W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)),
    times init_scale. The draws are one kept program (programs.py); the scaling is done on
    the host, where it is the very multiplication an eager jax op did (inside the program
    XLA would fold the scale into jax.random.normal's own, changing the last bit)."""
    dtype = jnp.dtype(dtype)
    params = []
    for (fan_in, fan_out), (W, b) in zip(zip(sizes[:-1], sizes[1:]),
                                         _init_draws(key, sizes=tuple(sizes), init=init, dtype=dtype.name)):
        W = np.asarray(W) * (init_scale / math.sqrt(fan_in) if init == "gaussian" else init_scale)
        b = np.zeros((fan_out,), dtype) if init == "gaussian" else np.asarray(b) * init_scale
        params.append({"W": jax.device_put(W), "b": jax.device_put(b)} if bias else {"W": jax.device_put(W)})
    return params


@stored(static=("sizes", "init", "dtype"))
def _init_draws(key, *, sizes: tuple, init: str, dtype: str):
    """Each layer's unscaled draws (W, b): N(0, 1) and None, or U(-bound, bound) twice."""
    out = []
    for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        kW, kb = jax.random.split(k)
        if init == "gaussian":
            out.append((jax.random.normal(kW, (fan_out, fan_in), dtype), None))
        else:
            bound = 1.0 / math.sqrt(fan_in)
            out.append((jax.random.uniform(kW, (fan_out, fan_in), dtype, -bound, bound),
                        jax.random.uniform(kb, (fan_out,), dtype, -bound, bound)))
    return out


def tie_hidden(params: Params) -> Params:
    """Every hidden-to-hidden layer (2..L-1, 1-based) replaced by a copy of layer 2, W and b:
    the nets of the official x1x2 code start so (model.tied_init); the layers train apart."""
    copies = [jax.tree.map(jnp.copy, params[1]) for _ in range(len(params) - 3)]
    return [params[0], params[1], *copies, params[-1]]


def transplant(params: Params, donor: Params, layers: list[int], keep: str, key) -> Params:
    """`params` with layers (1-based) taken from `donor` (another net's parameters, numpy
    or device arrays): `trained`, W as it is (and b where both nets have one); `spectrum`,
    Q_out diag(s) Q_in^T with the donor W's singular values s and Haar Q_out, Q_in drawn
    from `key` (per layer: fold_in(key, layer)), b left as `params` has it. Cast to the
    dtype of `params`."""
    out = list(params)
    for i in layers:
        mine, theirs = params[i - 1], donor[i - 1]
        dt = mine["W"].dtype
        if keep == "trained":
            new = {**mine, "W": jnp.asarray(theirs["W"], dt)}
            if "b" in mine and "b" in theirs:
                new["b"] = jnp.asarray(theirs["b"], dt)
        else:
            W = np.asarray(theirs["W"], np.float64)
            s = np.linalg.svd(W, compute_uv=False)
            ko, ki = jax.random.split(jax.random.fold_in(key, i))
            Qo, Qi = haar(ko, W.shape[0], len(s)), haar(ki, W.shape[1], len(s))
            new = {**mine, "W": ((Qo * s) @ Qi.T).astype(dt)}
        out[i - 1] = new
    return out


def _affine(layer, h):
    p = h @ layer["W"].T
    return p + layer["b"] if "b" in layer else p


def forward(params: Params, x, activation: str):
    """f(x) for x of shape (d,) or (n, d)."""
    s = activation_fn(activation)
    h = x
    for layer in params[:-1]:
        h = s(_affine(layer, h))
    return _affine(params[-1], h)


def forward_all(params: Params, x, activation: str, eps=None):
    """Inputs to every layer and every pre-activation: (hs, ps) with hs[l] = h_{l+1} the input
    of W_l, ps[l] = W_l hs[l] + b_l + eps[l]; ps[-1] is the output f."""
    s = activation_fn(activation)
    hs, ps = [], []
    h = x
    for l, layer in enumerate(params):
        hs.append(h)
        p = _affine(layer, h)
        if eps is not None:
            p = p + eps[l]
        ps.append(p)
        if l < len(params) - 1:
            h = s(p)
    return hs, ps


def f_from_input(params: Params, l: int, h, activation: str):
    """f_{l+1}: the map from h_{l+1} (input of W_l) to the output."""
    s = activation_fn(activation)
    for layer in params[l:-1]:
        h = s(_affine(layer, h))
    return _affine(params[-1], h)


def f_from_preact(params: Params, l: int, p, activation: str):
    """The map from the pre-activation p = W_l h_l + b_l to the output (identity for the
    output layer, whose 'pre-activation' is f itself)."""
    if l == len(params) - 1:
        return p
    return f_from_input(params, l + 1, activation_fn(activation)(p), activation)


def cast(params: Params, dtype) -> Params:
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


# ----------------------------------------------------------------------------- losses
def per_example_loss(f, T, y, loss: str, kind: str):
    """f (m, c) -> (m,). mse: mean over outputs of (f - T)^2 (torch's MSELoss with its
    default 'mean'); cross_entropy: softmax CE on labels, or the logistic loss
    softplus(-t f) for +-1 targets with one output."""
    if loss == "mse":
        return jnp.mean((f - T) ** 2, axis=-1)
    if kind == "binary":
        return jax.nn.softplus(-T[:, 0] * f[:, 0])
    return optax.softmax_cross_entropy_with_integer_labels(f, y)


def correct(f, T, y, kind: str):
    if kind == "binary":
        return (jnp.sign(f[:, 0]) == T[:, 0]).astype(f.dtype)
    return (jnp.argmax(f, axis=-1) == y).astype(f.dtype)


@stored(static=("activation", "loss", "kind", "chunk"))
def evaluate(params, X, T, y, *, activation, loss, kind, chunk=4096):
    """(mean loss, accuracy) over all rows of X, in chunks."""
    n = X.shape[0]
    m = min(chunk, n)
    nc = -(-n // m)
    pad = nc * m - n
    padr = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]).reshape((nc, m) + a.shape[1:])
    w = padr(jnp.ones((n,), X.dtype))

    def body(acc, inp):
        Xc, Tc, yc, wc = inp
        f = forward(params, Xc, activation)
        return (acc[0] + jnp.sum(wc * per_example_loss(f, Tc, yc, loss, kind)),
                acc[1] + jnp.sum(wc * correct(f, Tc, yc, kind))), None

    (ls, cs), _ = jax.lax.scan(body, (jnp.zeros((), X.dtype), jnp.zeros((), X.dtype)), (padr(X), padr(T), padr(y), w))
    return ls / n, cs / n


# ----------------------------------------------------------------------------- keys
def transplant_key(seed: int):
    """The key of a transplant's Haar singular vectors: from the run's init key, apart from
    the keys init_params splits off it."""
    return jax.random.fold_in(run_keys(seed)[0], 0x7A5)


def run_keys(seed: int):
    """init, shuffle and metrics keys, split once from the run seed."""
    return _run_keys(np.int64(seed))


@stored
def _run_keys(seed):
    k_init, k_shuffle, k_metrics = jax.random.split(jax.random.PRNGKey(seed), 3)
    return k_init, k_shuffle, k_metrics
