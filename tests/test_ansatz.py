"""The math against independent references: a Python loop of jax.jacobian, closed forms,
finite differences, numpy, and matrices built so the answer is known."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import ansatz
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
        g = ansatz.compute_grams(params, X, activation, method=method, chunk=4)  # 9 rows: 0-3, 4-7, 5-8 (5-7 weight 0)
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
    g = ansatz.compute_grams(params, X, "gelu", method="jacfwd", chunk=7)
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
        g = ansatz.compute_grams(params, X, "identity", method=method)
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
    g = ansatz.compute_grams(params, X, "tanh", method="preact")
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
    full = ansatz.compute_grams(params, X, "relu", method="preact", chunk=50)
    for chunk in (1, 7, 64):
        part = ansatz.compute_grams(params, X, "relu", method="preact", chunk=chunk)
        for a, b in zip(full.agop + full.pgop + full.pcov, part.agop + part.pgop + part.pcov):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    f32 = ansatz.compute_grams(params, X, "relu", method="preact", dtype=jnp.float32)
    for a, b in zip(full.agop, f32.agop):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6 * np.abs(a).max())


def test_pcov_and_bootstrap_against_loops():
    params = _net(jax.random.PRNGKey(11), [3, 5, 2], "tanh")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(12), (13, 3), jnp.float64))
    key = jax.random.PRNGKey(13)
    g = ansatz.compute_grams(params, X, "tanh", method="preact", chunk=4, bootstrap=3, key=key)
    _, ps = mdl.forward_all(params, X, "tanh")
    for l in range(2):
        P = np.asarray(ps[l])
        np.testing.assert_allclose(g.pcov[l], P.T @ P / len(X), rtol=1e-12)
    # bootstrap: resample b is the plain pgop of the resampled rows
    w = ansatz._bootstrap_weights(key, 13, 3)
    np.testing.assert_array_equal(w.sum(1), [13, 13, 13])
    for b in range(3):
        rows = np.repeat(np.arange(13), w[b].astype(int))
        ref = ansatz.compute_grams(params, X[rows], "tanh", method="preact")
        for l in range(2):
            np.testing.assert_allclose(g.pgop_boot[l][b], ref.pgop[l], rtol=1e-11, atol=1e-14)


def test_auto_picks_the_cheaper_method():
    assert ansatz.choose_method([784, 1024, 1024, 1024, 10], "auto") == "preact"
    # one output, tiny input: both are cheap, preact still needs fewer flops
    assert ansatz.flops_estimate([2, 3, 1], "preact") <= ansatz.flops_estimate([2, 3, 1], "jacfwd")
    # many outputs through a narrow bottleneck into a 1-wide input: forward mode wins
    assert ansatz.choose_method([1, 2, 500], "auto") == "jacfwd"
    assert ansatz.choose_method([1, 2, 500], "preact") == "preact"


# ----------------------------------------------------------------------------- statistics
def _rand_psd(key, k, rank=None):
    A = np.asarray(jax.random.normal(jax.random.PRNGKey(key), (k, rank or k), jnp.float64))
    return A @ A.T


def test_isotropy_of_scaled_identity_and_known_spectra():
    iso = ansatz.isotropy(3.7 * np.eye(6))
    assert iso["tightness"] == pytest.approx(1.0, abs=1e-15)
    assert iso["iso_dev"] == pytest.approx(0.0, abs=1e-15)
    assert iso["eff_rank"] == pytest.approx(6.0, abs=1e-13)
    assert iso["cond"] == pytest.approx(1.0, abs=1e-13)
    # G = diag(1, 1, 0, 0): tr^2 / (k tr G^2) = 4 / (4 * 2) = 1/2, eff_rank 2, singular
    iso = ansatz.isotropy(np.diag([1.0, 1.0, 0.0, 0.0]), rel_tol=1e-12)
    assert iso["tightness"] == pytest.approx(0.5)
    assert iso["eff_rank"] == pytest.approx(2.0)
    assert math.isnan(iso["cond"])
    # iso_dev of diag(2, 0) = |diag(2,0)/1 - I|_F / sqrt(2) = |(1, -1)| / sqrt 2 = 1
    assert ansatz.isotropy(np.diag([2.0, 0.0]))["iso_dev"] == pytest.approx(1.0)
    assert ansatz.isotropy(np.diag([4.0, 1.0]))["cond"] == pytest.approx(4.0)
    assert math.isnan(ansatz.isotropy(np.zeros((3, 3)))["tightness"])


def test_pearson_cosine_power():
    A = _rand_psd(1, 7)
    assert ansatz.pearson(A, 2 * A + 3) == pytest.approx(1.0, abs=1e-14)
    assert ansatz.pearson(A, -A) == pytest.approx(-1.0, abs=1e-14)
    assert ansatz.cosine(A, 5 * A) == pytest.approx(1.0, abs=1e-14)
    # cosine is not shift invariant, pearson is
    assert ansatz.cosine(A, A + 10) < 0.999
    B = _rand_psd(2, 7)
    a, b = A.ravel(), B.ravel()
    assert ansatz.pearson(A, B) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-14)
    assert math.isnan(ansatz.pearson(np.ones((3, 3)), A[:3, :3]))
    R = ansatz.psd_power(A, 0.5)
    np.testing.assert_allclose(R @ R, A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ansatz.psd_power(A, 1.0), A, rtol=1e-11, atol=1e-11)
    # negative eigenvalues from rounding are clipped, never nan
    C = _rand_psd(3, 6, rank=2) - 1e-14 * np.eye(6)
    assert np.all(np.isfinite(ansatz.psd_power(C, 0.5)))


def test_spectral_pearson_equals_direct_and_alpha_star_recovers_exponent():
    A = _rand_psd(4, 9)
    N = _rand_psd(5, 9)
    pp = ansatz.PowerPearson(N, A)
    for alpha in (0.05, 0.3, 0.5, 1.0, 1.7, 2.0):
        assert pp(alpha) == pytest.approx(ansatz.pearson(N, ansatz.psd_power(A, alpha)), abs=1e-10)
    for a0 in (0.37, 0.5, 1.0, 1.62):
        N = ansatz.psd_power(A, a0)
        assert ansatz.alpha_star(ansatz.PowerPearson(N, A)) == pytest.approx(a0, abs=1e-6)


def _grams_for(W, G, jbar=None, pcov=None, boot=None):
    c = 2
    return ansatz.Grams(agop=[W.T @ G @ W], pgop=[G], jbar=[np.zeros((c, W.shape[1])) if jbar is None else jbar],
                        gbar=[np.zeros((c, W.shape[0]))], pcov=[np.eye(W.shape[0]) if pcov is None else pcov],
                        pgop_boot=boot, n=10)


def _W(key, k_out, k_in):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(key), (k_out, k_in), jnp.float64))


def test_tight_frame_equivalences():
    """docs/SCIENCE.md: alpha = 1 holds exactly iff U^T G U = cI; alpha = 1/2 iff U^T G U ~ S^2."""
    W = _W(20, 5, 8)  # narrowing: full row rank, range(W) is everything
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, 2.5 * np.eye(5)), 0, trivial=False, rel_tol=1e-12)
    assert row["pearson_a1"] == pytest.approx(1.0, abs=1e-12)
    assert row["tightness_range"] == pytest.approx(1.0, abs=1e-12)
    assert row["rand_pearson_a1"] == pytest.approx(1.0, abs=1e-12)  # G = cI: any R satisfies it
    assert row["rand_spec_pearson_a1"] == pytest.approx(1.0, abs=1e-12)
    assert row["rand_pearson_a1_sd"] == pytest.approx(0.0, abs=1e-12)  # every draw gives 1
    assert row["centered_pearson"] is not None and math.isnan(row["centered_pearson"])  # dW = 0
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    G = 0.3 * (U * s**2) @ U.T  # = 0.3 W W^T
    row, _ = ansatz.layer_stats(W, W * 0.9, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["pearson_a05"] == pytest.approx(1.0, abs=1e-10)
    assert row["half_range_pearson"] == pytest.approx(1.0, abs=1e-12)
    assert row["left_pearson"] == pytest.approx(1.0, abs=1e-12)
    assert row["pearson_a1"] < 0.999
    assert row["alpha_star"] == pytest.approx(0.5, abs=1e-6)


def test_tightness_range_ignores_G_off_range_of_a_widening_layer():
    W = _W(21, 9, 4)  # widening: range(W) is a 4-dim subspace of R^9
    U, s, Vt = np.linalg.svd(W, full_matrices=True)
    Ur, Uo = U[:, :4], U[:, 4:]
    junk = _rand_psd(22, 5)
    G = 1.7 * Ur @ Ur.T + Uo @ junk @ Uo.T
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["w_rank"] == 4
    assert row["tightness_range"] == pytest.approx(1.0, abs=1e-12)
    assert row["iso_dev_range"] == pytest.approx(0.0, abs=1e-7)
    assert row["pearson_a1"] == pytest.approx(1.0, abs=1e-12)  # agop = 1.7 W^T W
    assert row["tightness"] < 0.9  # the full G is far from isotropic


def test_tightness_top_and_rank90():
    assert ansatz.rank90([10.0, 1.0, 1.0]) == 1  # 100 / 102 >= 0.9
    assert ansatz.rank90([1.0, 1.0, 1.0, 1.0]) == 4
    assert ansatz.rank90([3.0, 1.0, 1.0]) == 2  # 9/11 < 0.9 <= 10/11
    s = np.array([10.0, 1.0, 0.5])
    U = np.linalg.qr(_W(23, 3, 3))[0]
    V = np.linalg.qr(_W(24, 3, 3))[0]
    W = (U * s) @ V.T
    G = U @ np.diag([2.0, 5.0, 9.0]) @ U.T  # on the top direction alone G is isotropic (1-dim)
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["w_rank90"] == 1
    assert row["tightness_top"] == pytest.approx(1.0, abs=1e-12)


def test_alignment_and_centred_baselines():
    u = np.array([1.0, 2.0, 0.0, -1.0])
    v = np.array([0.0, 1.0, 1.0, 0.0, 3.0])
    W = np.outer(u, v)  # rank 1, right singular vector along v
    G = np.eye(4)
    row, _ = ansatz.layer_stats(W, np.zeros_like(W), _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["w_rank"] == 1
    assert row["align_1"] == pytest.approx(1.0, abs=1e-12)  # agop = |u|^2 v v^T shares v
    assert row["align_2"] is not None and math.isnan(row["align_2"])  # beyond rank
    # W0 = 0: the delta NFM is the NFM itself
    assert row["delta_cosine_a1"] == pytest.approx(row["cosine_a1"], abs=1e-14)
    # gradient-centred: removing the mean Jacobian changes agop exactly by jbar^T jbar
    W = _W(25, 6, 5)
    G = _rand_psd(26, 6)
    jbar = _W(27, 2, 5) * 0.1
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G, jbar=jbar, pcov=W @ W.T), 0, trivial=False, rel_tol=1e-12)
    assert row["gc_pearson_a1"] == pytest.approx(ansatz.pearson(W.T @ W, W.T @ G @ W - jbar.T @ jbar), abs=1e-14)
    assert row["left_act_pearson"] == pytest.approx(1.0, abs=1e-12)


def test_bootstrap_interval_brackets_and_collapses():
    W = _W(30, 5, 6)
    G = _rand_psd(31, 5)
    same = np.stack([G] * 20)  # every resample identical: the interval is a point
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G, boot=[same]), 0, trivial=False, rel_tol=1e-12)
    for name in ("pearson_a05", "pearson_a1", "tightness_range"):
        assert row[f"{name}_lo"] == pytest.approx(row[name], abs=1e-12)
        assert row[f"{name}_hi"] == pytest.approx(row[name], abs=1e-12)


def test_gradient_centred_agop_of_a_constant_jacobian_is_null():
    W = _W(40, 3, 4)
    G = np.eye(3)
    jbar = W[:2] * 0 + np.eye(3)[:2] @ W  # the read-out case: J = W for every sample
    g = ansatz.Grams(agop=[W.T @ np.eye(3)[:2].T @ np.eye(3)[:2] @ W], pgop=[G], jbar=[jbar],
                     gbar=[np.eye(3)[:2]], pcov=[G], pgop_boot=None, n=5)
    row, _ = ansatz.layer_stats(W, W, g, 0, trivial=True, rel_tol=1e-13)
    assert math.isnan(row["gc_pearson_a1"]) and math.isnan(row["gc_pearson_a05"])


def test_rounding_level_eigenvalues_do_not_leak_into_small_powers():
    v = np.array([1.0, 2.0, -1.0, 0.5])
    v /= np.linalg.norm(v)
    A = np.outer(v, v) + 1e-17 * _rand_psd(41, 4)  # rank 1 up to rounding
    np.testing.assert_allclose(ansatz.psd_power(A, 0.05), np.outer(v, v), atol=1e-12)
    # pearson(v v^T, A^alpha) is the same for every alpha: no alpha_star to report
    assert math.isnan(ansatz.alpha_star(ansatz.PowerPearson(np.outer(v, v), A)))
    # with the clipping turned off the noise floor shows: 1e-17^0.05 is not small
    assert np.abs(ansatz.psd_power(A, 0.05, rel_tol=0.0) - np.outer(v, v)).max() > 0.01


def _balanced_deep_linear(L, d=8, c=5, k=6, seed=0):
    """W_L ... W_1 = E = U diag(s) V^T with every W_i carrying s^(1/L): exactly balanced."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(c, c)))[0]
    V = np.linalg.qr(rng.normal(size=(d, c)))[0]
    s = np.array([3.0, 2.0, 1.5, 1.0, 0.5])
    R = [np.linalg.qr(rng.normal(size=(k, c)))[0] for _ in range(L - 1)]
    S = np.diag(s ** (1 / L))
    if L == 1:
        return [U @ np.diag(s) @ V.T]
    return [R[0] @ S @ V.T] + [R[i] @ S @ R[i - 1].T for i in range(1, L - 1)] + [U @ S @ R[-1].T]


@pytest.mark.parametrize("L", [2, 3, 4])
def test_balanced_deep_linear_network_has_alpha_1_over_remaining_depth(L):
    """Closed form: with balanced weights NFM_i = AGOP_i^(1/(L-i+1)), so alpha* = 1/L for the
    first layer (the theory's 1/2 for two layers) and 1 for the read-out."""
    Ws = _balanced_deep_linear(L)
    X = np.random.default_rng(1).normal(size=(40, Ws[0].shape[1]))
    g = ansatz.compute_grams([{"W": jnp.asarray(W)} for W in Ws], X, "identity", method="preact")
    for l, W in enumerate(Ws):
        row, _ = ansatz.layer_stats(W, np.zeros_like(W), g, l, trivial=l == L - 1, rel_tol=1e-12)
        assert row["alpha_star"] == pytest.approx(1 / (L - l), abs=1e-6)
        assert row["pearson_alpha_star"] == pytest.approx(1.0, abs=1e-12)
    row, _ = ansatz.layer_stats(Ws[0], np.zeros_like(Ws[0]), g, 0, trivial=False, rel_tol=1e-12)
    if L == 2:
        assert row["pearson_a05"] == pytest.approx(1.0, abs=1e-12)


def test_more_baselines_known_by_construction():
    W = _W(50, 6, 4)
    W0 = _W(51, 6, 4)
    row, _ = ansatz.layer_stats(W, W0, _grams_for(W, 3.0 * np.eye(6)), 0, trivial=False, rel_tol=1e-12)
    assert row["centered_pearson"] == pytest.approx(1.0, abs=1e-12)  # G = cI: dW^T G dW = c dW^T dW
    assert row["rand_gap_a1"] == pytest.approx(0.0, abs=1e-12)  # every matrix satisfies it: W adds nothing
    G = _rand_psd(52, 6)
    row, _ = ansatz.layer_stats(W, W0, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["gc_pearson_a1"] == pytest.approx(row["pearson_a1"], abs=1e-14)  # mean Jacobian 0
    dW = W - W0
    assert row["delta_pearson_a1"] == pytest.approx(ansatz.pearson(dW.T @ dW, W.T @ G @ W), abs=1e-14)


def test_bootstrap_on_real_gradients_brackets_a_stable_estimate():
    params = _net(jax.random.PRNGKey(60), [6, 12, 3], "tanh")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(61), (400, 6), jnp.float64))
    g = ansatz.compute_grams(params, X, "tanh", method="preact", bootstrap=40, key=jax.random.PRNGKey(62))
    W = np.asarray(params[0]["W"])
    row, _ = ansatz.layer_stats(W, W, g, 0, trivial=False, rel_tol=1e-12)
    for k in ("pearson_a05", "pearson_a1", "tightness_range"):
        assert row[f"{k}_lo"] <= row[f"{k}_hi"]
        assert row[f"{k}_lo"] - 0.02 <= row[k] <= row[f"{k}_hi"] + 0.02
        assert row[f"{k}_hi"] - row[f"{k}_lo"] < 0.2  # 400 samples pin these down


def test_haar_columns_are_orthonormal_and_isotropic():
    Q = ansatz._haar(jax.random.PRNGKey(70), 50, 7)
    np.testing.assert_allclose(Q.T @ Q, np.eye(7), atol=1e-12)
    # Haar: E[Q Q^T] = (r / k) I; average many draws
    P = np.mean([(lambda q: q @ q.T)(ansatz._haar(jax.random.PRNGKey(i), 6, 2)) for i in range(2000)], axis=0)
    np.testing.assert_allclose(P, np.eye(6) * 2 / 6, atol=0.03)


def test_random_with_spectrum_has_that_spectrum():
    s = np.array([5.0, 2.0, 0.5])
    rb = ansatz.draw_random_baselines(jax.random.PRNGKey(80), (7, 4), n=2)
    f = list(rb.factors())
    assert len(f) == 2 and f[0][0].shape == (7, 4) and f[0][1].shape == (7, 4) and f[0][2].shape == (4, 4)
    Rs = ansatz.random_with_spectrum(f[1][1], f[1][2], s)
    np.testing.assert_allclose(np.linalg.svd(Rs, compute_uv=False)[:3], s, rtol=1e-12)
    assert Rs.shape == (7, 4) and np.linalg.matrix_rank(Rs) == 3


def test_alignment_against_scipy_principal_angles():
    from scipy.linalg import subspace_angles

    W = _W(81, 9, 7)
    G = _rand_psd(82, 9)
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    _, _, Vt = np.linalg.svd(W)
    lam, V = np.linalg.eigh(W.T @ G @ W)
    for r in range(1, 8):
        want = np.cos(subspace_angles(Vt[:r].T, V[:, ::-1][:, :r]).max())
        assert row[f"align_{r}"] == pytest.approx(want, abs=1e-10)
    assert math.isnan(row["align_8"])  # W has rank 7


def test_tightness_top_cond_range_with_several_top_directions():
    U = np.linalg.qr(_W(83, 5, 5))[0]
    V = np.linalg.qr(_W(84, 3, 3))[0]
    W = (U[:, :3] * np.array([3.0, 2.5, 0.1])) @ V.T  # 5 x 3, rank 3
    G = U @ np.diag([1.0, 4.0, 7.0, 50.0, 60.0]) @ U.T  # off range(W): 50, 60
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12)
    assert row["w_rank90"] == 2  # 9 / 15.26 < 0.9 <= 15.25 / 15.26
    assert row["tightness_top"] == pytest.approx(25 / (2 * 17), abs=1e-12)  # diag(1, 4)
    assert row["tightness_range"] == pytest.approx(144 / (3 * 66), abs=1e-12)  # diag(1, 4, 7)
    assert row["cond_range"] == pytest.approx(7.0, rel=1e-10)
    assert row["cond"] == pytest.approx(60.0, rel=1e-10)


def test_agop_that_cancels_to_rank_one_has_no_alpha_star():
    """A net whose end-to-end map shrinks to ~0 (a linear net on an even target): agop =
    W^T g g^T W is rank 1 but tiny next to |W|^2 |g|^2, so its rounding noise sits far
    above eps * l_max(agop). Raised to alpha = 0.05 that noise would decide alpha*."""
    W = _W(90, 12, 4)  # widening: range(W) is 4-dim in R^12
    U = np.linalg.svd(W)[0]
    g = U[:, 6] + 1e-5 * U[:, 0]  # almost entirely off range(W)
    G = np.outer(g, g)
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=4 * np.finfo(float).eps)
    assert row["alpha_star"] is not None and math.isnan(row["alpha_star"])
    # the same geometry without the cancellation is a proper rank-1 agop: also flat
    assert math.isnan(ansatz.layer_stats(W, W, _grams_for(W, np.outer(U[:, 0], U[:, 0])), 0, trivial=False,
                                         rel_tol=1e-14)[0]["alpha_star"])


def test_random_baselines_average_their_draws():
    W = _W(91, 6, 5)
    G = _rand_psd(92, 6)
    rb = ansatz.draw_random_baselines(jax.random.PRNGKey(93), W.shape, n=3)
    row, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12, baselines=rb)
    each = [ansatz.pearson(R.T @ R, R.T @ G @ R) for R, _, _ in rb.factors()]
    # too large to keep: redrawn from the same keys, identically
    big = ansatz.RandomBaselines(jax.random.PRNGKey(93), W.shape, n=3)
    big._cache = None
    row2, _ = ansatz.layer_stats(W, W, _grams_for(W, G), 0, trivial=False, rel_tol=1e-12, baselines=big)
    assert row2["rand_pearson_a1"] == row["rand_pearson_a1"] and row2["rand_spec_pearson_a1"] == row["rand_spec_pearson_a1"]
    assert row["rand_pearson_a1"] == pytest.approx(np.mean(each), abs=1e-14)
    assert row["rand_pearson_a1_sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-14)
    assert row["rand_gap_a1"] == pytest.approx(row["pearson_a1"] - np.mean(each), abs=1e-14)
