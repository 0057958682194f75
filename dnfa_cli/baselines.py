"""The random-W baselines of docs/SCIENCE.md: their random factors, drawn once per run and
layer on the device, and what of them the statistics need at every checkpoint.

For each of N_DRAWS draws: a Gaussian R (k_out, k_in), and Haar Q_out (k_out, r),
Q_in (k_in, r), r = min(shape), for R_s = Q_out diag(s) Q_in^T with W's current singular
values s. The statistics only ever need pearson(R^T R, R^T G R) (and the same for R_s),
whose five sums reduce to products with G of matrices fixed for the whole run:

    Gaussian, with P = R R^T:  <R^T R, R^T G R> = tr(G P P),  |R^T G R|_F^2 = tr(G P G P),
                               sum(R^T G R) = (R 1)^T G (R 1)      one GEMM (G P) a draw
    same spectrum, M = Q_out^T G Q_out, q = Q_in^T 1, A = R_s^T R_s, B = R_s^T G R_s:
                               <A, B> = sum_j s_j^4 M_jj,  |B|_F^2 = |S M S|_F^2,
                               sum(B) = (S q)^T M (S q),  sum(A) = sum_j s_j^2 q_j^2

so a checkpoint costs 1 + 2 GEMMs a draw instead of 7. Q_in enters through q alone, and
for a Haar Q_in, q / sqrt(k_in) is distributed as the first r coordinates of a uniform
unit vector in R^k_in: that is how q is drawn (O(k), where Q_in itself would cost a
decomposition). Q_out is the sign-corrected Q of a Gaussian's QR, which is Haar
(Mezzadri 2007, "How to generate random matrices from the classical compact groups").
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .programs import ELEMENTAL, stored

N_DRAWS = 4  # random matrices per baseline; the mean is reported, the spread as *_sd


class Factors(NamedTuple):
    """The draws themselves, (D, ...) on the device: R (D, k_out, k_in), Q_out (D, k_out, r),
    q = Q_in^T 1 (D, r)."""

    R: jax.Array
    Qo: jax.Array
    q: jax.Array


class Terms(NamedTuple):
    """What every checkpoint needs of the factors (D draws), precomputed once per run.
    `P` is R R^T (D, k_out, k_out) when that is cheaper per checkpoint than R^T G R itself
    (k_out^3 <= k_out^2 k_in + k_out k_in^2), else R (D, k_out, k_in) with `A` = R^T R."""

    P: jax.Array  # (D, k_out, k_out) or R (D, k_out, k_in)
    A: jax.Array  # R^T R (D, k_in, k_in), or (D, 0, 0) on the P route
    v: jax.Array  # R 1 (D, k_out)
    sumA: jax.Array  # (D,) sum of the entries of R^T R
    sqA: jax.Array  # (D,) |R^T R|_F^2
    Qo: jax.Array  # (D, k_out, r)
    q: jax.Array  # Q_in^T 1 (D, r)


def p_route(shape) -> bool:
    k_out, k_in = shape
    return k_out**3 <= k_out**2 * k_in + k_out * k_in**2


def haar(key, k: int, r: int):
    """k x r matrix with orthonormal columns, Haar-distributed: Q of the QR of a Gaussian,
    each column's sign set by the diagonal of R (without it Q is not Haar)."""
    Q, Rr = jnp.linalg.qr(jax.random.normal(key, (k, r), jnp.float64))
    return Q * jnp.where(jnp.diagonal(Rr) < 0, -1.0, 1.0)


def haar_sum(key, k: int, r: int):
    """Q^T 1 of a Haar k x r Q without Q: sqrt(k) times the first r coordinates of a
    uniform unit vector in R^k."""
    g = jax.random.normal(key, (k,), jnp.float64)
    return jnp.sqrt(k) * g[:r] / jnp.linalg.norm(g)


def _draw_one(key, shape):
    k1, k2, k3 = jax.random.split(key, 3)
    r = min(shape)
    return jax.random.normal(k1, shape, jnp.float64), haar(k2, shape[0], r), haar_sum(k3, shape[1], r)


def draw(key, shape, n: int = N_DRAWS) -> Factors:
    """n draws for a layer of `shape` from `key`: the same key gives the same factors."""
    return _draw(key, tuple(int(x) for x in shape), n)


@functools.partial(jax.jit, static_argnames=("shape", "n"))
def _draw(key, shape, n):
    # lax.map, not vmap: batched LAPACK calls running side by side can wedge XLA's CPU
    # thread pool (see stats.batch_layers)
    return Factors(*jax.lax.map(lambda k: _draw_one(k, shape), jax.random.split(key, n)))


def draw_terms(key, shape, n: int = N_DRAWS) -> Terms:
    """terms(draw(key, shape, n)) as one program."""
    return _draw_terms(key, shape=tuple(int(x) for x in shape), n=n)


def draw_terms_each(keys, shapes, n: int = N_DRAWS) -> list[Terms]:
    """[draw_terms(k, s, n) for k, s in zip(keys, shapes)], its programs put up as wanted
    at once (programs.Stored.ahead)."""
    calls = [((k,), {"shape": tuple(int(x) for x in s), "n": n}) for k, s in zip(keys, shapes)]
    _draw_terms.ahead(calls)
    return [_draw_terms(*a, **kw) for a, kw in calls]


def draws_ahead(shapes, n: int = N_DRAWS) -> None:
    """Put up the programs of draw_terms_each for layers of these shapes as wanted, from
    the shapes alone (a key as jax.random.PRNGKey makes them: uint32[2] under the default
    threefry): said at a sweep's run start, before its data and its parameters exist, so a
    worker that waits for another's first programs (the data, the initial draws) makes them
    meanwhile."""
    key = jax.eval_shape(jax.random.PRNGKey, 0)
    _draw_terms.ahead([((key,), {"shape": tuple(int(x) for x in s), "n": n}) for s in shapes], first=True)


@stored(static=("shape", "n"), options=ELEMENTAL)
def _draw_terms(key, *, shape, n):
    return terms(_draw(key, shape, n))


@jax.jit
def terms(f: Factors) -> Terms:
    R = f.R
    D, k_out, k_in = R.shape
    v = R.sum(2)
    if p_route((k_out, k_in)):
        P = R @ jnp.swapaxes(R, 1, 2)
        A = jnp.zeros((D, 0, 0), R.dtype)
        sqA = jnp.sum(P * P, axis=(1, 2))  # |R^T R|_F = |R R^T|_F
    else:
        P = R
        A = jnp.swapaxes(R, 1, 2) @ R
        sqA = jnp.sum(A * A, axis=(1, 2))
    return Terms(P=P, A=A, v=v, sumA=jnp.sum(v * v, axis=1), sqA=sqA, Qo=f.Qo, q=f.q)
