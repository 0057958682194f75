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
    # gradient-centred AGOP straight from its definition, two passes: E[(J - E J)^T (J - E J)]
    cent = [np.mean([(J - jb).T @ (J - jb) for J in Jl], axis=0) for Jl, jb in zip(Js, jbar)]
    return [a / n for a in agop], [a / n for a in pgop], jbar, cent


def _two_pass(params, X, activation):
    """Per layer, from per-sample Jacobians (a Python loop of jax.jacobian), centred in two
    passes: (E[(J - E J)^T (J - E J)], the same for g = df/dp, E|g - g_1|_F^2)."""
    out = []
    for l in range(len(params)):
        Js, gs = [], []
        for x in X:
            hs, ps = mdl.forward_all(params, x, activation)
            Js.append(np.asarray(jax.jacobian(lambda h: mdl.f_from_input(params, l, h, activation))(hs[l])))
            gs.append(np.asarray(jax.jacobian(lambda p: mdl.f_from_preact(params, l, p, activation))(ps[l])))
        Js, gs = np.stack(Js), np.stack(gs)
        Jc, gc = Js - Js.mean(0), gs - gs.mean(0)
        out.append((np.einsum("nck,ncK->kK", Jc, Jc) / len(X), np.einsum("nck,ncK->kK", gc, gc) / len(X),
                    float(np.sum((gs - gs[0]) ** 2) / len(X))))
    return out


def _rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


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
            # the centred AGOP the statistics use, against its two-pass definition
            np.testing.assert_allclose(g.agop_c[l], ref_cent[l], rtol=1e-9, atol=1e-12)
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


def test_bootstrap_resamples_draw_every_sample_uniformly():
    """The resample counts against what drawing n of n with replacement means, not against
    the function itself: every row sums to n; over many resamples every index, the last
    included, is drawn, each about equally often (a chi-square at a fixed key: 4,000
    resamples of 7, 28,000 draws); a row's counts have the multinomial's mean 1 and
    variance 1 - 1/n; the same key gives the same draws, another key others."""
    n, B = 7, 4000
    key = jax.random.PRNGKey(5)
    w = gm._bootstrap_weights(key, n, B)
    assert w.shape == (B, n) and np.all(w == np.round(w)) and np.all(w >= 0)
    np.testing.assert_array_equal(w.sum(1), np.full(B, n))
    total = w.sum(0)  # draws of each index over all resamples; expected B each
    assert np.all(total > 0), total
    chi2 = float(np.sum((total - B) ** 2 / B))
    assert chi2 < 30.0, (chi2, total)  # df 6: P(chi2 > 30) < 1e-4 for a uniform draw
    np.testing.assert_allclose(w.mean(0), 1.0, atol=0.05)
    np.testing.assert_allclose(w.var(0), 1 - 1 / n, atol=0.06)
    np.testing.assert_array_equal(gm._bootstrap_weights(key, n, B), w)
    assert not np.array_equal(gm._bootstrap_weights(jax.random.PRNGKey(6), n, B), w)
    # n = 2: a resample is (2, 0), (1, 1) or (0, 2) with probabilities 1/4, 1/2, 1/4
    w2 = gm._bootstrap_weights(jax.random.PRNGKey(7), 2, 4000)
    np.testing.assert_allclose([np.mean(w2[:, 0] == k) for k in (2, 1, 0)], [0.25, 0.5, 0.25], atol=0.03)


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
    p0s = [_net(jax.random.fold_in(k, 3), [4, 6, 2], "tanh") for k in keys]
    Ts = [np.asarray(jax.random.normal(jax.random.fold_in(k, 4), (15, 2), jnp.float64)) for k in keys]
    batch = gm.compute_grams_batch(params, Xs, "tanh", method="preact", chunk=4, bootstrap=2, keys=bkeys,
                                   params0_list=p0s, T_list=Ts)
    for p, X, k, g, p0, T in zip(params, Xs, bkeys, batch, p0s, Ts):
        alone = gm.compute_grams(p, X, "tanh", method="preact", chunk=4, bootstrap=2, key=k, params0=p0, T=T)
        every = lambda g: (g.agop + g.pgop + g.jbar + g.pcov + g.pgop_boot + g.agop_c + g.pgop_c + g.gdev
                           + [a for r in g.reps for a in r])
        for a, b in zip(every(alone), every(g), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["preact", "jacfwd"])
def test_centred_grams_keep_their_content_where_the_jacobians_barely_vary(method):
    """A tanh net with small pre-activations is nearly linear: the Jacobians vary across
    samples by ~1e-5 of their size, the centred Grams are ~1e-10 of the uncentred ones.
    Accumulated about one sample's Jacobian they equal the two-pass float64 reference to
    1e-9; agop - jbar^T jbar, the difference of two nearly equal matrices, does not."""
    params = mdl.init_params(jax.random.PRNGKey(30), [5, 8, 7, 2], bias=True, init="gaussian", init_scale=1.0,
                             dtype=jnp.float64)
    X = 3e-3 * np.asarray(jax.random.normal(jax.random.PRNGKey(31), (40, 5), jnp.float64))
    g = gm.compute_grams(params, X, "tanh", method=method, chunk=16)  # 0-15, 16-31, 24-39
    plain = _loop_reference(params, X, "tanh")
    for l, (agop_c, pgop_c, gdev) in enumerate(_two_pass(params, X, "tanh")[:2]):
        assert np.linalg.norm(agop_c) < 1e-8 * np.linalg.norm(g.agop[l])  # the content is small
        assert _rel(g.agop_c[l], agop_c) < 1e-9 and _rel(g.pgop_c[l], pgop_c) < 1e-9, l
        assert float(g.gdev[l]) == pytest.approx(gdev, rel=1e-9)
        old = np.asarray(g.agop[l]) - np.asarray(g.jbar[l]).T @ np.asarray(g.jbar[l])
        assert _rel(old, agop_c) > 1e-7, l  # what the subtraction left of it
        # the uncentred Grams, derived from the centred ones, are still the plain sums
        np.testing.assert_allclose(g.agop[l], plain[0][l], rtol=1e-12)
        np.testing.assert_allclose(g.pgop[l], plain[1][l], rtol=1e-12)


@pytest.mark.parametrize("method", ["preact", "jacfwd"])
def test_a_linear_net_has_centred_grams_exactly_zero(method):
    """Identity activation: every sample has the same Jacobian, and the differences from the
    first sample's are exactly 0 whatever the chunking - no rounding is left to decide on."""
    params = _net(jax.random.PRNGKey(32), [4, 9, 6, 3], "identity")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(33), (25, 4), jnp.float64))
    for chunk in (1, 7, 25):
        g = gm.compute_grams(params, X, "identity", method=method, chunk=chunk)
        for l in range(3):
            assert not np.any(np.asarray(g.agop_c[l])) and not np.any(np.asarray(g.pgop_c[l])), (chunk, l)
            assert float(g.gdev[l]) == 0.0


def test_representation_grams_against_two_pass_centring():
    """reps[l]: the output of layer l (h_{l+1}; f for the read-out) now (A), at
    initialisation (B), and the targets T, column-centred in two passes."""
    sizes = [4, 7, 6, 3]
    params, params0 = _net(jax.random.PRNGKey(34), sizes, "silu"), _net(jax.random.PRNGKey(35), sizes, "silu")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(36), (30, 4), jnp.float64))
    T = np.asarray(jax.random.normal(jax.random.PRNGKey(37), (30, 2), jnp.float64)) + 5.0  # far from centred
    c = lambda Z: Z - Z.mean(0)
    raw = lambda p: [np.asarray(Z) for Z in mdl.forward_all(p, X, "silu")[0][1:] + [mdl.forward(p, X, "silu")]]
    A, B, Tc = [c(Z) for Z in raw(params)], [c(Z) for Z in raw(params0)], c(T)
    for method, chunk in (("preact", 8), ("jacfwd", 30)):
        g = gm.compute_grams(params, X, "silu", method=method, chunk=chunk, params0=params0, T=T)
        for l in range(3):
            r = g.reps[l]
            for got, want in ((r.AA, A[l].T @ A[l]), (r.AB, A[l].T @ B[l]), (r.BB, B[l].T @ B[l]),
                              (r.AT, A[l].T @ Tc), (r.TT, Tc.T @ Tc)):
                np.testing.assert_allclose(got, want / 30, rtol=1e-11, atol=1e-13 * np.abs(want).max())
            Z = raw(params)[l]
            assert float(r.sA) == pytest.approx(np.mean(np.sum((Z - Z[0]) ** 2, 1)), rel=1e-12)
            assert float(r.sT) == pytest.approx(np.mean(np.sum((T - T[0]) ** 2, 1)), rel=1e-12)
    assert gm.compute_grams(params, X, "silu").reps is None  # only when asked for
