"""The Gram matrices against independent references: a Python loop of jax.jacobian, closed
forms and finite differences."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import grams as gm
from dnfa_cli import model as mdl


def _net(key, sizes, activation="tanh", bias=True):
    return mdl.init_params(key, sizes, bias=bias, init="torch" if bias else "gaussian", init_scale=1.3,
                           dtype=jnp.float64)


def _loop_reference(params, X, activation):
    """The slowest obvious implementation: a Python loop of jax.jacobian per example."""
    L = len(params)
    agop = [np.zeros((p["W"].shape[1],) * 2) for p in params]
    pgop = [np.zeros((p["W"].shape[0],) * 2) for p in params]
    Js = [[] for _ in params]
    for x in X:
        hs, ps = mdl.forward_all(params, x, activation)
        for l in range(L):
            J = np.asarray(jax.jacobian(lambda h: mdl.f_from_input(params, l, h, activation))(hs[l]))
            g = np.asarray(jax.jacobian(lambda p: mdl.f_from_preact(params, l, p, activation))(ps[l]))
            agop[l] += J.T @ J
            pgop[l] += g.T @ g
            Js[l].append(J)
    n = len(X)
    jbar = [np.mean(J, axis=0) for J in Js]
    # gradient-centred AGOP straight from its definition: E[(J - E J)^T (J - E J)]
    cent = [np.mean([(J - jb).T @ (J - jb) for J in Jl], axis=0) for Jl, jb in zip(Js, jbar)]
    return [a / n for a in agop], [a / n for a in pgop], jbar, cent


@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu", "quadratic", "silu"])
def test_agop_two_methods_and_loop_agree(activation):
    key = jax.random.PRNGKey(1)
    sizes = [5, 7, 6, 3]
    params = _net(key, sizes, activation)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (9, 5), jnp.float64))
    ref_agop, ref_pgop, ref_jbar, ref_cent = _loop_reference(params, X, activation)
    for method in ("preact", "jacfwd"):
        g = gm.compute_grams(params, X, activation, method=method, chunk=4)  # 9 rows: 0-3, 4-7, 5-8 (5-7 weight 0)
        for l in range(3):
            np.testing.assert_allclose(g.agop[l], ref_agop[l], rtol=1e-11, atol=1e-13)
            np.testing.assert_allclose(g.pgop[l], ref_pgop[l], rtol=1e-11, atol=1e-13)
            np.testing.assert_allclose(g.jbar[l], ref_jbar[l], rtol=1e-11, atol=1e-13)
            # what layer_stats centres with: agop - jbar^T jbar
            np.testing.assert_allclose(g.agop[l] - g.jbar[l].T @ g.jbar[l], ref_cent[l], rtol=1e-9, atol=1e-12)
    # the read-out layer's pgop is I_c, computed, not assumed
    np.testing.assert_allclose(g.pgop[-1], np.eye(3), atol=1e-15)


def test_chain_rule_identity_on_the_jacfwd_path():
    """agop_i = W_i^T pgop_{i+1} W_i: on the jacfwd path both sides are computed independently."""
    params = _net(jax.random.PRNGKey(3), [6, 8, 8, 2], "gelu")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (20, 6), jnp.float64))
    g = gm.compute_grams(params, X, "gelu", method="jacfwd", chunk=7)
    for l, p in enumerate(params):
        W = np.asarray(p["W"])
        np.testing.assert_allclose(g.agop[l], W.T @ g.pgop[l] @ W, rtol=1e-10, atol=1e-12)


def test_deep_linear_closed_form():
    """Identity activation, no bias: J_i(x) = W_L ... W_{i+1} for every x."""
    sizes = [4, 6, 5, 3]
    params = _net(jax.random.PRNGKey(5), sizes, bias=False)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (11, 4), jnp.float64))
    Ws = [np.asarray(p["W"]) for p in params]
    for method in ("preact", "jacfwd"):
        g = gm.compute_grams(params, X, "identity", method=method)
        for l in range(3):
            J = np.eye(3)
            for W in reversed(Ws[l + 1:]):
                J = J @ W
            # J (c, k_{l+1}) is df/dp_{l+1}; df/dh_l = J W_l
            np.testing.assert_allclose(g.pgop[l], J.T @ J, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(g.agop[l], (J @ Ws[l]).T @ (J @ Ws[l]), rtol=1e-12, atol=1e-14)


def test_finite_differences():
    params = _net(jax.random.PRNGKey(7), [4, 5, 5, 2], "tanh")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(8), (6, 4), jnp.float64))
    g = gm.compute_grams(params, X, "tanh", method="preact")
    h = 1e-5
    for l in range(3):
        agop = 0
        for x in X:
            hs, _ = mdl.forward_all(params, x, "tanh")
            h0 = np.asarray(hs[l])
            cols = []
            for j in range(len(h0)):
                e = np.zeros_like(h0)
                e[j] = h
                fp = np.asarray(mdl.f_from_input(params, l, h0 + e, "tanh"))
                fm = np.asarray(mdl.f_from_input(params, l, h0 - e, "tanh"))
                cols.append((fp - fm) / (2 * h))
            J = np.stack(cols, 1)
            agop = agop + J.T @ J
        np.testing.assert_allclose(g.agop[l], agop / len(X), rtol=1e-7, atol=1e-9)


def test_chunking_and_float32():
    params = _net(jax.random.PRNGKey(9), [5, 16, 16, 4], "relu", bias=True)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(10), (50, 5), jnp.float64))
    full = gm.compute_grams(params, X, "relu", method="preact", chunk=50)
    for chunk in (1, 7, 64):
        part = gm.compute_grams(params, X, "relu", method="preact", chunk=chunk)
        for a, b in zip(full.agop + full.pgop + full.pcov, part.agop + part.pgop + part.pcov):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    f32 = gm.compute_grams(params, X, "relu", method="preact", dtype=jnp.float32)
    for a, b in zip(full.agop, f32.agop):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * np.abs(a).max())


def test_pcov_and_bootstrap_against_loops():
    params = _net(jax.random.PRNGKey(11), [3, 5, 2], "tanh")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(12), (13, 3), jnp.float64))
    key = jax.random.PRNGKey(13)
    g = gm.compute_grams(params, X, "tanh", method="preact", chunk=4, bootstrap=3, key=key)
    _, ps = mdl.forward_all(params, X, "tanh")
    for l in range(2):
        P = np.asarray(ps[l])
        np.testing.assert_allclose(g.pcov[l], P.T @ P / len(X), rtol=1e-12)
    # bootstrap: resample b is the plain pgop of the resampled rows
    w = gm._bootstrap_weights(key, 13, 3)
    np.testing.assert_array_equal(w.sum(1), [13, 13, 13])
    for b in range(3):
        rows = np.repeat(np.arange(13), w[b].astype(int))
        ref = gm.compute_grams(params, X[rows], "tanh", method="preact")
        for l in range(2):
            np.testing.assert_allclose(g.pgop_boot[l][b], ref.pgop[l], rtol=1e-11, atol=1e-14)


def test_auto_picks_the_cheaper_method():
    assert gm.choose_method([784, 1024, 1024, 1024, 10], "auto") == "preact"
    # one output, tiny input: both are cheap, preact still needs fewer flops
    assert gm.flops_estimate([2, 3, 1], "preact") <= gm.flops_estimate([2, 3, 1], "jacfwd")
    # many outputs through a narrow bottleneck into a 1-wide input: forward mode wins
    assert gm.choose_method([1, 2, 500], "auto") == "jacfwd"
    assert gm.choose_method([1, 2, 500], "preact") == "preact"


def test_runs_of_a_seed_batch_equal_each_run_alone():
    """compute_grams_batch vmaps runs of one shape: each equals its own compute_grams."""
    keys = [jax.random.PRNGKey(i) for i in (20, 21, 22)]
    params = [_net(k, [4, 6, 2], "tanh") for k in keys]
    Xs = [np.asarray(jax.random.normal(jax.random.fold_in(k, 1), (15, 4), jnp.float64)) for k in keys]
    bkeys = [jax.random.fold_in(k, 2) for k in keys]
    batch = gm.compute_grams_batch(params, Xs, "tanh", method="preact", chunk=4, bootstrap=2, keys=bkeys)
    for p, X, k, g in zip(params, Xs, bkeys, batch):
        alone = gm.compute_grams(p, X, "tanh", method="preact", chunk=4, bootstrap=2, key=k)
        for a, b in zip(alone.agop + alone.pgop + alone.jbar + alone.pcov + alone.pgop_boot,
                        g.agop + g.pgop + g.jbar + g.pcov + g.pgop_boot):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
