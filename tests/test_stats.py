"""The statistics on the device against independent references: the numpy implementation
they replaced (tests/reference_stats.py, one formula at a time with explicit matrices),
closed forms, scipy, and matrices built so the answer is known."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_stats as ref

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import baselines as bl
from dnfa_cli import grams as gm
from dnfa_cli import model as mdl
from dnfa_cli import stats

EPS = np.finfo(np.float64).eps


def _rand_psd(key, k, rank=None):
    A = np.asarray(jax.random.normal(jax.random.PRNGKey(key), (k, rank or k), jnp.float64))
    return A @ A.T


def _W(key, k_out, k_in):
    return np.asarray(jax.random.normal(jax.random.PRNGKey(key), (k_out, k_in), jnp.float64))


def _grams_for(W, G, jbar=None, pcov=None, boot=None):
    """Grams of a layer W with pgop G, built by hand: the centred agop from a given mean
    Jacobian (zero by default), the gradients' spread about one sample of the size of G."""
    c = 2
    jbar = np.zeros((c, W.shape[1])) if jbar is None else jbar
    agop = W.T @ G @ W
    return gm.Grams(agop=[agop], pgop=[G], jbar=[jbar], gbar=[np.zeros((c, W.shape[0]))],
                    pcov=[np.eye(W.shape[0]) if pcov is None else pcov], pgop_boot=boot, n=10,
                    agop_c=[agop - jbar.T @ jbar], pgop_c=[G], gdev=[np.trace(G)])


def _stats(W, W0, grams, l=0, *, trivial=False, rel_tol=1e-12, key=0, terms=None):
    terms = terms if terms is not None else bl.draw_terms(jax.random.PRNGKey(key), np.shape(W))
    return stats.layer_stats(W, W0, grams, l, trivial=trivial, rel_tol=rel_tol, terms=terms)[0]


# ----------------------------------------------------------------------------- the reference
def _factors(key, shape):
    f = bl.draw(jax.random.PRNGKey(key), shape)
    return f, [tuple(np.asarray(a[d]) for a in f) for d in range(bl.N_DRAWS)]


def _tolerance(key, want):
    """1e-10, except where float64 itself cannot do better: alpha_star is an argmax, fixed
    by any implementation only to ~sqrt(eps) (the curve is flat to rounding within 1e-8 of
    it; pearson_alpha_star, the maximum, is held to 1e-10), and cond = l_max / l_min
    carries l_min's rounding, eps * cond relative."""
    if key == "alpha_star":
        return 1e-6
    if key.startswith("cond"):
        return 1e-10 + 10 * EPS * abs(want)
    return 1e-10


def assert_matches_reference(W, W0, g, l, *, trivial, rel_tol, key=7, reps=None):
    f, facs = _factors(key, W.shape)
    row, mats = stats.layer_stats(W, W0, g, l, trivial=trivial, rel_tol=rel_tol, terms=bl.terms(f))
    want, want_mats = ref.layer_stats(np.asarray(W, np.float64), np.asarray(W0, np.float64), g, l,
                                      trivial=trivial, rel_tol=rel_tol, factors=facs, reps=reps)
    assert set(row) == set(want)
    for k, v in want.items():
        got = row[k]
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(got), (k, got)
        elif isinstance(v, float):
            tol = _tolerance(k, v)
            assert abs(got - v) <= tol * max(1.0, abs(v)), (k, got, v)
        else:
            assert got == v, (k, got, v)
    for k, v in want_mats.items():  # written as float32
        np.testing.assert_allclose(np.asarray(mats[k], np.float64), v, rtol=2e-6, atol=2e-6 * np.abs(v).max())
    return row


def _net(key, sizes, activation, bias, scale=1.3):
    return mdl.init_params(jax.random.PRNGKey(key), sizes, bias=bias, init="torch" if bias else "gaussian",
                           init_scale=scale, dtype=jnp.float64)


NETS = [  # activation, sizes (c = 1 and c = 10), bias
    ("relu", [6, 24, 24, 1], False),
    ("relu", [6, 24, 16, 10], True),
    ("tanh", [5, 20, 20, 10], True),
    ("tanh", [30, 12, 20, 1], False),  # a narrowing, then a widening layer
    ("quadratic", [6, 16, 16, 1], False),
    ("identity", [8, 20, 20, 10], False),
]


@pytest.mark.parametrize("activation,sizes,bias", NETS)
def test_every_statistic_equals_the_numpy_reference(activation, sizes, bias):
    params = _net(len(sizes) + sizes[1], sizes, activation, bias)
    # the net at "initialisation": close to today's, as after training
    params0 = [{k: v * 0.8 + 0.05 * _W(l, *v.shape) if k == "W" else v for k, v in p.items()}
               for l, p in enumerate(params)]
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (200, sizes[0]), jnp.float64))
    T = np.array(jax.random.normal(jax.random.PRNGKey(5), (200, 3), jnp.float64))
    T[:, 2] = np.tanh(X[:, 0] * X[:, 1])  # one target the nets can represent
    g = gm.compute_grams(params, X, activation, bootstrap=6, key=jax.random.PRNGKey(4), params0=params0, T=T)
    now, init = ref.outputs(params, X, activation), ref.outputs(params0, X, activation)
    for l, p in enumerate(params):
        W, W0 = np.asarray(p["W"]), np.asarray(params0[l]["W"])
        row = assert_matches_reference(W, W0, g, l, trivial=l == len(params) - 1, rel_tol=max(W.shape) * EPS,
                                       reps=(now[l], init[l], T))
        assert 0.0 < row["cka_init"] < 1.0 and 0.0 < row["kta"] < 1.0


def test_rank_deficient_layers_equal_the_reference_through_the_svd():
    """Repeated rows make W_1 rank 5 of 6 possible, and W_2 uses 3 of its 10 inputs: the
    Gram route cannot certify those ranks, so the SVD route computes the layers (and must
    still match)."""
    params = _net(11, [6, 10, 10, 2], "tanh", False)
    W1 = np.array(params[0]["W"])
    W1[5:] = W1[:5]  # rows repeat: rank 5 of 10
    params[0]["W"] = jnp.asarray(W1)
    W2 = np.array(params[1]["W"])
    W2[:, 3:] = 0.0  # only 3 of its 10 inputs used: rank 3
    params[1]["W"] = jnp.asarray(W2)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(12), (150, 6), jnp.float64))
    g = gm.compute_grams(params, X, "tanh")
    rows = [assert_matches_reference(np.asarray(p["W"]), 0.5 * np.asarray(p["W"]), g, l, trivial=l == 2,
                                     rel_tol=10 * EPS) for l, p in enumerate(params)]
    assert rows[0]["w_rank"] == 5 and rows[1]["w_rank"] == 3


def test_the_three_svd_routes_agree_on_a_well_conditioned_layer():
    W = _W(13, 7, 9)
    G = _rand_psd(14, 7)
    terms = bl.draw_terms(jax.random.PRNGKey(0), W.shape)
    x = stats.layer_input(W, 0.5 * W, _grams_for(W, G), 0, 1e-12, terms)
    a = stats.layers_batch((x,), route="left", trivial=False)[0]
    b = stats.layers_batch((x,), route="svd", trivial=False)[0]
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    Wt = W.T.copy()  # tall: the right route against the SVD
    xt = stats.layer_input(Wt, 0.5 * Wt, _grams_for(Wt, _rand_psd(15, 9)), 0, 1e-12,
                           bl.draw_terms(jax.random.PRNGKey(0), Wt.shape))
    np.testing.assert_allclose(stats.layers_batch((xt,), route="right", trivial=False)[0],
                               stats.layers_batch((xt,), route="svd", trivial=False)[0], rtol=1e-11, atol=1e-12)


def test_the_readout_agop_from_its_small_problem_equals_the_full_eigh():
    W = _W(16, 3, 40)  # c = 3 outputs, k_in = 40: the read-out's low-rank route
    g = _grams_for(W, np.eye(3), jbar=W, pcov=np.eye(3))  # the read-out: J = W for every sample
    assert_matches_reference(W, 0.5 * W, g, 0, trivial=True, rel_tol=40 * EPS)


def test_layers_of_one_shape_together_equal_each_alone():
    """The batched call (what GPU/TPU use) against one call per layer (what CPU uses)."""
    G = _rand_psd(17, 6)
    xs = []
    for key in (18, 19, 20):
        W = _W(key, 6, 8)
        xs.append(stats.layer_input(W, 0.3 * W, _grams_for(W, G), 0, 1e-12, bl.draw_terms(jax.random.PRNGKey(key), W.shape)))
    together = stats.layers_batch(tuple(xs), route="left", trivial=False)[0]
    for j, x in enumerate(xs):
        np.testing.assert_allclose(together[j], stats.layers_batch((x,), route="left", trivial=False)[0][0],
                                   rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- helpers
def test_isotropy_of_scaled_identity_and_known_spectra():
    def iso(G, rel_tol=0.0):
        lam = np.linalg.eigvalsh(G)
        return {k: float(v) for k, v in stats.isotropy(jnp.asarray(G), G.shape[0], lam[0], lam[-1], rel_tol).items()}

    i = iso(3.7 * np.eye(6))
    assert i["tightness"] == pytest.approx(1.0, abs=1e-15)
    assert i["iso_dev"] == pytest.approx(0.0, abs=1e-15)
    assert i["eff_rank"] == pytest.approx(6.0, abs=1e-13)
    assert i["cond"] == pytest.approx(1.0, abs=1e-13)
    # G = diag(1, 1, 0, 0): tr^2 / (k tr G^2) = 4 / (4 * 2) = 1/2, eff_rank 2, singular
    i = iso(np.diag([1.0, 1.0, 0.0, 0.0]), rel_tol=1e-12)
    assert i["tightness"] == pytest.approx(0.5)
    assert i["eff_rank"] == pytest.approx(2.0)
    assert math.isnan(i["cond"])
    # iso_dev of diag(2, 0) = |diag(2,0)/1 - I|_F / sqrt(2) = |(1, -1)| / sqrt 2 = 1
    assert iso(np.diag([2.0, 0.0]))["iso_dev"] == pytest.approx(1.0)
    assert iso(np.diag([4.0, 1.0]))["cond"] == pytest.approx(4.0)
    assert math.isnan(iso(np.zeros((3, 3)))["tightness"])


def test_pearson_cosine_and_spectral_pearson():
    A = _rand_psd(1, 7)
    B = _rand_psd(2, 7)
    assert float(stats.pearson(A, 2 * A + 3)) == pytest.approx(1.0, abs=1e-14)
    assert float(stats.pearson(A, -A)) == pytest.approx(-1.0, abs=1e-14)
    assert float(stats.cosine(A, 5 * A)) == pytest.approx(1.0, abs=1e-14)
    assert float(stats.cosine(A, A + 10)) < 0.999  # cosine is not shift invariant, pearson is
    assert float(stats.pearson(A, B)) == pytest.approx(np.corrcoef(A.ravel(), B.ravel())[0, 1], abs=1e-14)
    assert math.isnan(float(stats.pearson(np.ones((3, 3)), A[:3, :3])))
    lam, V = np.linalg.eigh(A)
    pp = stats.PowerPearson.make(jnp.asarray(B), jnp.asarray(lam), jnp.asarray(V), 1e-13)
    for alpha in (0.05, 0.3, 0.5, 1.0, 1.7, 2.0):
        Aa = (V * lam**alpha) @ V.T
        assert float(pp(alpha)) == pytest.approx(np.corrcoef(B.ravel(), Aa.ravel())[0, 1], abs=1e-12)
        assert float(pp.cosine(alpha)) == pytest.approx(ref.cosine(B, Aa), abs=1e-12)
    for a0 in (0.37, 0.5, 1.0, 1.62):  # N = A^a0: the maximiser is a0
        N = (V * lam**a0) @ V.T
        ppn = stats.PowerPearson.make(jnp.asarray(N), jnp.asarray(lam), jnp.asarray(V), 1e-13)
        assert float(stats.alpha_star(ppn)[0]) == pytest.approx(a0, abs=1e-6)


def test_an_exponent_beyond_the_search_range_is_an_edge_not_a_best_exponent():
    A = _rand_psd(6, 9)
    lam, V = np.linalg.eigh(A)
    for a0, edge in ((3.0, 1), (0.01, -1), (0.8, 0)):
        N = (V * lam**a0) @ V.T
        pp = stats.PowerPearson.make(jnp.asarray(N), jnp.asarray(lam), jnp.asarray(V), 1e-13)
        a, e, top = (float(v) for v in stats.alpha_star(pp))
        assert int(e) == edge
        assert math.isnan(a) if edge else a == pytest.approx(a0, abs=1e-6)
        want = max(float(pp(x)) for x in np.linspace(0.05, 2.0, 391))  # the curve's best on the range
        assert top == pytest.approx(want, abs=1e-9) and (top <= want + 1e-12 if edge else True)


def test_rank90_and_alignment_against_scipy():
    from scipy.linalg import subspace_angles

    assert int(stats.rank90(jnp.array([10.0, 1.0, 1.0]))) == 1  # 100 / 102 >= 0.9
    assert int(stats.rank90(jnp.array([1.0, 1.0, 1.0, 1.0]))) == 4
    assert int(stats.rank90(jnp.array([3.0, 1.0, 1.0]))) == 2  # 9/11 < 0.9 <= 10/11
    A = np.linalg.qr(_W(3, 9, 5))[0]
    B = np.linalg.qr(_W(4, 9, 5))[0]
    got = np.asarray(stats.align(jnp.asarray(A), jnp.asarray(B)))
    for r in range(1, 6):
        assert got[r - 1] == pytest.approx(np.cos(subspace_angles(A[:, :r], B[:, :r]).max()), abs=1e-12)


# ----------------------------------------------------------------------------- known answers
def test_tight_frame_equivalences():
    """docs/SCIENCE.md: alpha = 1 holds exactly iff U^T G U = cI; alpha = 1/2 iff U^T G U ~ S^2."""
    W = _W(20, 5, 8)  # narrowing: full row rank, range(W) is everything
    row = _stats(W, W, _grams_for(W, 2.5 * np.eye(5)))
    assert row["pearson_a1"] == pytest.approx(1.0, abs=1e-12)
    assert row["tightness_range"] == pytest.approx(1.0, abs=1e-12)
    assert row["rand_pearson_a1"] == pytest.approx(1.0, abs=1e-12)  # G = cI: any R satisfies it
    assert row["rand_spec_pearson_a1"] == pytest.approx(1.0, abs=1e-12)
    assert row["rand_pearson_a1_sd"] == pytest.approx(0.0, abs=1e-12)  # every draw gives 1
    assert math.isnan(row["centered_pearson"])  # dW = 0
    G = 0.3 * W @ W.T
    row = _stats(W, W * 0.9, _grams_for(W, G))
    assert row["pearson_a05"] == pytest.approx(1.0, abs=1e-10)
    assert row["half_range_pearson"] == pytest.approx(1.0, abs=1e-12)
    assert row["left_pearson"] == pytest.approx(1.0, abs=1e-12)
    assert row["pearson_a1"] < 0.999
    assert row["alpha_star"] == pytest.approx(0.5, abs=1e-6)


def test_range_statistics_ignore_G_off_the_range_of_a_widening_layer():
    W = _W(21, 9, 4)  # widening: range(W) is a 4-dim subspace of R^9
    U = np.linalg.svd(W, full_matrices=True)[0]
    Ur, Uo = U[:, :4], U[:, 4:]
    G = 1.7 * Ur @ Ur.T + Uo @ _rand_psd(22, 5) @ Uo.T
    row = _stats(W, W, _grams_for(W, G))
    assert row["w_rank"] == 4
    assert row["tightness_range"] == pytest.approx(1.0, abs=1e-12)
    assert row["iso_dev_range"] == pytest.approx(0.0, abs=1e-7)
    assert row["pearson_a1"] == pytest.approx(1.0, abs=1e-12)  # agop = 1.7 W^T W
    assert row["tightness"] < 0.9  # the full G is far from isotropic
    # the alpha = 1/2 identity on range(W) sees Pi G Pi = 1.7 Pi, not W W^T: not 1
    G2 = W @ W.T + Uo @ _rand_psd(23, 5) @ Uo.T
    assert _stats(W, W, _grams_for(W, G2))["half_range_pearson"] == pytest.approx(1.0, abs=1e-12)


def test_half_range_pearson_does_not_depend_on_singular_vector_signs():
    """The SVD-basis version it replaced changed with the sign LAPACK gave each u_j."""
    W = _W(24, 6, 6)
    G = _rand_psd(25, 6)
    U, s, Vt = np.linalg.svd(W)
    flips = np.array([1, -1, 1, -1, -1, 1.0])
    old = [ref.pearson(Ux.T @ G @ Ux, np.diag(s**2)) for Ux in (U, U * flips)]
    assert abs(old[0] - old[1]) > 1e-3  # the old definition: two answers for one W
    W2 = (U * flips * s) @ (Vt * flips[:, None])  # the same W, factored the other way
    np.testing.assert_allclose(W2, W, atol=1e-13)
    a, b = (_stats(w, w, _grams_for(w, G))["half_range_pearson"] for w in (W, W2))
    assert a == pytest.approx(b, abs=1e-13)
    assert a == pytest.approx(ref.pearson(G, W @ W.T), abs=1e-12)  # full rank: Pi = I


def test_tightness_top_and_cond_range_with_several_top_directions():
    U = np.linalg.qr(_W(83, 5, 5))[0]
    V = np.linalg.qr(_W(84, 3, 3))[0]
    W = (U[:, :3] * np.array([3.0, 2.5, 0.1])) @ V.T  # 5 x 3, rank 3
    G = U @ np.diag([1.0, 4.0, 7.0, 50.0, 60.0]) @ U.T  # off range(W): 50, 60
    row = _stats(W, W, _grams_for(W, G))
    assert row["w_rank90"] == 2  # 9 / 15.26 < 0.9 <= 15.25 / 15.26
    assert row["tightness_top"] == pytest.approx(25 / (2 * 17), abs=1e-12)  # diag(1, 4)
    assert row["tightness_range"] == pytest.approx(144 / (3 * 66), abs=1e-12)  # diag(1, 4, 7)
    assert row["cond_range"] == pytest.approx(7.0, rel=1e-10)
    assert row["cond"] == pytest.approx(60.0, rel=1e-10)
    s = np.array([10.0, 1.0, 0.5])
    U = np.linalg.qr(_W(23, 3, 3))[0]
    W = (U * s) @ np.linalg.qr(_W(24, 3, 3))[0].T
    row = _stats(W, W, _grams_for(W, U @ np.diag([2.0, 5.0, 9.0]) @ U.T))
    assert row["w_rank90"] == 1
    assert row["tightness_top"] == pytest.approx(1.0, abs=1e-12)  # one direction: isotropic


def test_alignment_and_centred_baselines():
    u = np.array([1.0, 2.0, 0.0, -1.0])
    v = np.array([0.0, 1.0, 1.0, 0.0, 3.0])
    W = np.outer(u, v)  # rank 1, right singular vector along v
    row = _stats(W, np.zeros_like(W), _grams_for(W, np.eye(4)))
    assert row["w_rank"] == 1
    assert row["align_1"] == pytest.approx(1.0, abs=1e-12)  # agop = |u|^2 v v^T shares v
    assert math.isnan(row["align_2"])  # beyond rank
    assert row["delta_cosine_a1"] == pytest.approx(row["cosine_a1"], abs=1e-14)  # W0 = 0
    W = _W(25, 6, 5)
    G = _rand_psd(26, 6)
    jbar = _W(27, 2, 5) * 0.1
    row = _stats(W, W, _grams_for(W, G, jbar=jbar, pcov=W @ W.T))
    # gradient-centred: removing the mean Jacobian changes agop exactly by jbar^T jbar
    assert row["gc_pearson_a1"] == pytest.approx(ref.pearson(W.T @ W, W.T @ G @ W - jbar.T @ jbar), abs=1e-14)
    assert row["left_act_pearson"] == pytest.approx(1.0, abs=1e-12)


def test_more_baselines_known_by_construction():
    W = _W(50, 6, 4)
    W0 = _W(51, 6, 4)
    row = _stats(W, W0, _grams_for(W, 3.0 * np.eye(6)))
    assert row["centered_pearson"] == pytest.approx(1.0, abs=1e-12)  # G = cI: dW^T G dW = c dW^T dW
    assert row["rand_gap_a1"] == pytest.approx(0.0, abs=1e-12)  # every matrix satisfies it
    G = _rand_psd(52, 6)
    row = _stats(W, W0, _grams_for(W, G))
    assert row["gc_pearson_a1"] == pytest.approx(row["pearson_a1"], abs=1e-14)  # mean Jacobian 0
    dW = W - W0
    assert row["delta_pearson_a1"] == pytest.approx(ref.pearson(dW.T @ dW, W.T @ G @ W), abs=1e-14)


def test_bootstrap_interval_collapses_when_every_resample_is_the_same():
    W = _W(30, 5, 6)
    G = _rand_psd(31, 5)
    row = _stats(W, W, _grams_for(W, G, boot=[np.stack([G] * 20)]))
    for name in ("pearson_a05", "pearson_a1", "tightness_range"):
        assert row[f"{name}_lo"] == pytest.approx(row[name], abs=1e-12)
        assert row[f"{name}_hi"] == pytest.approx(row[name], abs=1e-12)


def test_bootstrap_on_real_gradients_brackets_a_stable_estimate():
    params = _net(60, [6, 12, 3], "tanh", True)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(61), (400, 6), jnp.float64))
    g = gm.compute_grams(params, X, "tanh", method="preact", bootstrap=40, key=jax.random.PRNGKey(62))
    W = np.asarray(params[0]["W"])
    row = _stats(W, W, g)
    for k in ("pearson_a05", "pearson_a1", "tightness_range"):
        assert row[f"{k}_lo"] <= row[f"{k}_hi"]
        assert row[f"{k}_lo"] - 0.02 <= row[k] <= row[f"{k}_hi"] + 0.02
        assert row[f"{k}_hi"] - row[f"{k}_lo"] < 0.2  # 400 samples pin these down


def test_gradient_centred_agop_of_a_constant_jacobian_is_null():
    W = _W(40, 3, 4)
    E = np.eye(3)[:2]
    g = gm.Grams(agop=[W.T @ E.T @ E @ W], pgop=[np.eye(3)], jbar=[E @ W], gbar=[E], pcov=[np.eye(3)],
                 pgop_boot=None, n=5, agop_c=[np.zeros((4, 4))], pgop_c=[np.zeros((3, 3))], gdev=[0.0])
    for trivial in (True, False):  # the read-out skips it outright; elsewhere the size test does
        row = _stats(W, W, g, trivial=trivial, rel_tol=1e-13)
        assert math.isnan(row["gc_pearson_a1"]) and math.isnan(row["gc_pearson_a05"])


def test_rounding_level_eigenvalues_do_not_leak_into_small_powers():
    v = np.array([1.0, 2.0, -1.0, 0.5])
    v /= np.linalg.norm(v)
    A = np.outer(v, v) + 1e-17 * _rand_psd(41, 4)  # rank 1 up to rounding
    lam, V = np.linalg.eigh(A)
    # pearson(v v^T, A^alpha) is the same for every alpha: no alpha_star to report
    pp = stats.PowerPearson.make(jnp.asarray(np.outer(v, v)), jnp.asarray(lam), jnp.asarray(V), 4 * EPS)
    assert all(math.isnan(float(v)) for v in (stats.alpha_star(pp)[0], stats.alpha_star(pp)[2]))
    clipped = np.asarray(stats.clip_spectrum(jnp.asarray(lam), 4 * EPS))
    np.testing.assert_allclose((V * clipped**0.05) @ V.T, np.outer(v, v), atol=1e-12)
    # with the clipping turned off the noise floor shows: 1e-17^0.05 is not small
    assert np.abs((V * np.clip(lam, 0, None) ** 0.05) @ V.T - np.outer(v, v)).max() > 0.01


def test_agop_that_cancels_to_rank_one_has_no_alpha_star():
    """A net whose end-to-end map shrinks to ~0: agop = W^T g g^T W is rank 1 but tiny next
    to |W|^2 |g|^2, so its rounding noise sits far above eps * l_max(agop). Raised to
    alpha = 0.05 that noise would decide alpha*."""
    W = _W(90, 12, 4)
    U = np.linalg.svd(W)[0]
    g = U[:, 6] + 1e-5 * U[:, 0]  # almost entirely off range(W)
    assert math.isnan(_stats(W, W, _grams_for(W, np.outer(g, g)), rel_tol=4 * EPS)["alpha_star"])
    assert math.isnan(_stats(W, W, _grams_for(W, np.outer(U[:, 0], U[:, 0])), rel_tol=1e-14)["alpha_star"])


def _balanced_deep_linear(L, d=8, c=5, k=6, seed=0):
    """W_L ... W_1 = E = U diag(s) V^T with every W_i carrying s^(1/L): exactly balanced."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(c, c)))[0]
    V = np.linalg.qr(rng.normal(size=(d, c)))[0]
    s = np.array([3.0, 2.0, 1.5, 1.0, 0.5])
    R = [np.linalg.qr(rng.normal(size=(k, c)))[0] for _ in range(L - 1)]
    S = np.diag(s ** (1 / L))
    return [R[0] @ S @ V.T] + [R[i] @ S @ R[i - 1].T for i in range(1, L - 1)] + [U @ S @ R[-1].T]


@pytest.mark.parametrize("L", [2, 3, 4])
def test_balanced_deep_linear_network_has_alpha_1_over_remaining_depth(L):
    """Closed form: with balanced weights NFM_i = AGOP_i^(1/(L-i+1)), so alpha* = 1/L for the
    first layer (the theory's 1/2 for two layers) and 1 for the read-out."""
    Ws = _balanced_deep_linear(L)
    X = np.random.default_rng(1).normal(size=(40, Ws[0].shape[1]))
    g = gm.compute_grams([{"W": jnp.asarray(W)} for W in Ws], X, "identity", method="preact")
    for l, W in enumerate(Ws):
        row = _stats(W, np.zeros_like(W), g, l, trivial=l == L - 1)
        assert row["alpha_star"] == pytest.approx(1 / (L - l), abs=1e-6)
        assert row["pearson_alpha_star"] == pytest.approx(1.0, abs=1e-12)
        if L == 2 and l == 0:
            assert row["pearson_a05"] == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- baselines
def test_haar_factors_are_orthonormal_and_isotropic():
    Q = np.asarray(bl.haar(jax.random.PRNGKey(70), 50, 7))
    np.testing.assert_allclose(Q.T @ Q, np.eye(7), atol=1e-12)
    keys = jax.random.split(jax.random.PRNGKey(71), 4000)
    Qs = np.asarray(jax.vmap(lambda k: bl.haar(k, 6, 2))(keys))
    # Haar: E[Q Q^T] = (r / k) I, and the first column is uniform on the sphere: E[q1_1^4] = 3 / (k (k + 2))
    np.testing.assert_allclose(np.einsum("nij,nkj->ik", Qs, Qs) / len(Qs), np.eye(6) * 2 / 6, atol=0.02)
    assert np.mean(Qs[:, 0, 0] ** 4) == pytest.approx(3 / 48, rel=0.1)
    # the sign correction matters: without it Q's diagonal leans positive
    assert abs(np.mean(Qs[:, 0, 0])) < 0.02


def test_haar_sum_has_the_distribution_of_Q_transposed_ones():
    """q = Q^T 1 for a Haar k x r Q: |q|^2 <= k, E[q q^T] = I_r, and q's first coordinate
    has the law of sqrt(k) times a uniform unit vector's: E[q_1^4] = 3 k / (k + 2)."""
    k, r = 7, 3
    keys = jax.random.split(jax.random.PRNGKey(72), 20000)
    q = np.asarray(jax.vmap(lambda key: bl.haar_sum(key, k, r))(keys))
    assert np.all((q**2).sum(1) <= k + 1e-12)
    np.testing.assert_allclose(q.T @ q / len(q), np.eye(r), atol=0.04)
    assert np.mean(q[:, 0] ** 4) == pytest.approx(3 * k / (k + 2), rel=0.05)
    Q = np.asarray(jax.vmap(lambda key: bl.haar(key, k, r))(keys[:5000]))
    qq = Q.sum(1)  # Q^T 1 of real Haar factors: the same moments
    assert np.mean(qq[:, 0] ** 4) == pytest.approx(3 * k / (k + 2), rel=0.08)


def test_columns_with_sum_builds_what_the_reference_needs():
    q = np.array([0.3, -1.2, 0.8])
    Q = ref.columns_with_sum(q, 6)
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-14)
    np.testing.assert_allclose(Q.T @ np.ones(6), q, atol=1e-14)


def test_random_baselines_average_their_draws():
    W = _W(91, 6, 5)
    G = _rand_psd(92, 6)
    f, facs = _factors(93, W.shape)
    row = _stats(W, W, _grams_for(W, G), terms=bl.terms(f))
    each = [ref.pearson(np.asarray(R).T @ R, np.asarray(R).T @ G @ R) for R, _, _ in facs]
    assert row["rand_pearson_a1"] == pytest.approx(np.mean(each), abs=1e-14)
    assert row["rand_pearson_a1_sd"] == pytest.approx(np.std(each, ddof=1), abs=1e-14)
    assert row["rand_gap_a1"] == pytest.approx(row["pearson_a1"] - np.mean(each), abs=1e-14)
    s = np.linalg.svd(W, compute_uv=False)
    spec = []
    for _, Qo, q in facs:
        Rs = (Qo * s) @ ref.columns_with_sum(q, 5).T
        np.testing.assert_allclose(np.linalg.svd(Rs, compute_uv=False), s, rtol=1e-12)  # W's spectrum
        spec.append(ref.pearson(Rs.T @ Rs, Rs.T @ G @ Rs))
    assert row["rand_spec_pearson_a1"] == pytest.approx(np.mean(spec), abs=1e-13)


def test_both_gaussian_routes_and_the_same_key_give_the_same_terms():
    """P = R R^T (square and narrowing layers) and R itself (tall ones) are two ways to one
    number; the same key draws the same factors."""
    G = _rand_psd(94, 9)
    for shape in ((9, 9), (9, 2)):
        f = bl.draw(jax.random.PRNGKey(95), shape)
        t = bl.terms(f)
        assert bl.p_route(shape) == (shape == (9, 9))
        m = min(shape)
        got = np.asarray(stats._baselines(jnp.asarray(G), jnp.ones(m), t, shape[1], jnp.ones(m, bool), 0.0)[0])
        want = [ref.pearson(np.asarray(R).T @ R, np.asarray(R).T @ G @ R) for R in np.asarray(f.R)]
        np.testing.assert_allclose(got, want, atol=1e-13)
        again = bl.draw(jax.random.PRNGKey(95), shape)
        np.testing.assert_array_equal(np.asarray(again.R), np.asarray(f.R))


# ----------------------------------------------------------------------------- issue 16: what the text claims
def test_cosine_a1_is_the_spectrum_weighted_tightness():
    """docs/SCIENCE.md: with W = U S V^T and M = U^T G U, cosine(W^T W, W^T G W) =
    sum s^4 M_jj / (sqrt(sum s^4) sqrt(sum s_j^2 s_k^2 M_jk^2)); with S = I, sqrt(tightness_range)."""
    for key, (k_out, k_in) in enumerate(((7, 9), (9, 4), (6, 6), (12, 5))):
        W = _W(100 + key, k_out, k_in)
        G = _rand_psd(110 + key, k_out, rank=3 if key == 3 else None)
        row = _stats(W, W, _grams_for(W, G))
        U, s, _ = np.linalg.svd(W, full_matrices=False)
        M, s2 = U.T @ G @ U, s**2
        want = np.sum(s2**2 * np.diag(M)) / (np.sqrt(np.sum(s2**2)) * np.sqrt(np.sum(np.outer(s2, s2) * M**2)))
        assert abs(row["cosine_a1"] - want) <= 1e-12, (k_out, k_in)
        Q = np.linalg.svd(W, full_matrices=False)
        Wi = Q[0] @ Q[2]  # the same singular vectors, S = I
        row = _stats(Wi, Wi, _grams_for(Wi, G))
        assert row["cosine_a1"] == pytest.approx(math.sqrt(row["tightness_range"]), abs=1e-12)


def test_without_the_identity_bulk_known_answers():
    """A = c I + E, B = c' I + 2E (E symmetric, zero diagonal): entry-wise Pearson is near 1
    by the diagonal alone only when E is small; traceless and off-diagonal Pearson see E
    alone, which the two share exactly, so they are 1 whatever E's size."""
    E = _rand_psd(120, 6)
    E = E - np.diag(np.diag(E))
    A, B = 5.0 * np.eye(6) + 0.01 * E, 9.0 * np.eye(6) - 0.02 * E
    assert float(stats.traceless_pearson(A, B)) == pytest.approx(-1.0, abs=1e-13)
    assert float(stats.offdiag_pearson(A, B)) == pytest.approx(-1.0, abs=1e-13)
    assert float(stats.pearson(A, B)) > 0.99  # the diagonal decides the entry-wise value
    D = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # a diagonal shared, nothing off it
    assert float(stats.traceless_pearson(D, 3 * D + np.eye(6))) == pytest.approx(1.0, abs=1e-13)
    assert math.isnan(float(stats.offdiag_pearson(D, 3 * D)))  # constant (zero) off-diagonals
    assert math.isnan(float(stats.offdiag_pearson(np.eye(1), np.eye(1))))
    F = _rand_psd(121, 5)
    iu = np.triu_indices(5, 1)
    assert float(stats.offdiag_pearson(F, F @ F)) == pytest.approx(np.corrcoef(F[iu], (F @ F)[iu])[0, 1], abs=1e-13)


def test_alpha_curve_range_against_explicit_powers_and_a_flat_curve():
    A = _rand_psd(122, 7)
    lam, V = np.linalg.eigh(A)
    N = (V * lam**0.7) @ V.T
    pp = stats.PowerPearson.make(jnp.asarray(N), jnp.asarray(lam), jnp.asarray(V), 1e-13)
    curve = [np.corrcoef(N.ravel(), ((V * lam**a) @ V.T).ravel())[0, 1] for a in np.linspace(0.05, 2.0, 391)]
    assert float(stats.curve_range(pp)) == pytest.approx(max(curve) - min(curve), abs=1e-12)
    assert max(curve) == pytest.approx(1.0, abs=1e-12)  # N = A^0.7: 0.7 is on the grid
    v = np.array([1.0, 2.0, -1.0, 0.5, 0.0, 3.0, 1.0])
    P = np.outer(v, v)  # rank 1: every power is proportional to P, the curve is flat
    lp, Vp = np.linalg.eigh(P)
    flat = stats.PowerPearson.make(jnp.asarray(A), jnp.asarray(lp), jnp.asarray(Vp), 7 * EPS)
    assert 0.0 <= float(stats.curve_range(flat)) <= 10 * 7 * EPS


def _layer_with(U, s, V, g):
    """W = U diag(s) V^T and G = U diag(g) U^T (U square): G's tightness on each top block is
    known from g."""
    W = (U[:, :len(s)] * s) @ V.T
    return W, U @ np.diag(g) @ U.T


def test_iso_dim90_known_answers_ties_and_the_rounding_scale():
    U = np.linalg.qr(_W(130, 5, 5))[0]
    V = np.linalg.qr(_W(131, 7, 5))[0]
    g = [1.0, 1.45, 0.55, 1.0, 1.0]  # top-j tightness: 1, .967, .881, .908, .925
    W, G = _layer_with(U, np.array([3.0, 2.5, 2.0, 1.5, 1.0]), V, g)
    row = _stats(W, W, _grams_for(W, G))
    assert row["iso_dim90"] == 2 and row["iso_frac90"] == pytest.approx(2 / 5, abs=1e-15)
    # s_2 = s_3 = s_4 tie: only j = 1, 4, 5 are looked at, and all pass (j = 3 alone would not)
    W, G = _layer_with(U, np.array([3.0, 2.0 * (1 + 1e-15), 2.0, 2.0, 1.0]), V, g)
    row = _stats(W, W, _grams_for(W, G))
    assert row["iso_dim90"] == 5 and row["iso_frac90"] == 1.0
    # not monotone: j = 4 fails at 0.862, j = 20 passes at 0.943; iso_dim90 stops at 3
    U20 = np.linalg.qr(_W(132, 20, 20))[0]
    W, G = _layer_with(U20, np.linspace(3.0, 1.0, 20), np.linalg.qr(_W(133, 30, 20))[0], [1.0] * 3 + [2.2] + [1.0] * 16)
    row = _stats(W, W, _grams_for(W, G))
    assert row["iso_dim90"] == 3 and ref.tightness(G) > 0.9
    # exactly 0.9 (j = 2: 3^2 / (2 * 5)) passes whatever the rounding; G = cI: all of range(W)
    W, G = _layer_with(U, np.array([3.0, 2.5, 2.0, 1.5, 1.0]), V, [1.0, 2.0, 40.0, 1.0, 1.0])
    assert _stats(W, W, _grams_for(W, G))["iso_dim90"] == 2
    row = _stats(W, W, _grams_for(W, 3.0 * np.eye(5)))
    assert row["iso_dim90"] == 5 and row["rand_iso_dim90"] == 5.0
    assert _stats(W, W, _grams_for(W, np.zeros((5, 5))))["iso_dim90"] == 0  # no trace: no tightness


def test_rand_iso_dim90_is_the_mean_over_the_same_spectrum_draws():
    W = _W(134, 8, 6)
    G = _rand_psd(135, 8) + 4.0 * np.eye(8)
    f, facs = _factors(136, W.shape)
    row = _stats(W, W, _grams_for(W, G), terms=bl.terms(f))
    U, s, _, r = ref.svd_range(W)
    ends = ref.group_ends(s, r, 8)
    each = [ref.iso_dim90(np.asarray(Qo), G, ends, 10 * 1e-12) for _, Qo, _ in facs]
    assert row["rand_iso_dim90"] == pytest.approx(np.mean(each), abs=1e-15)
    assert len(set(each)) > 1  # the draws differ: a mean, not one draw


def test_gradient_centred_keys_of_a_nearly_linear_net_equal_those_of_the_two_pass_centring():
    """The case `agop - jbar^T jbar` lost (issue 16.4): a tanh net with small pre-activations,
    whose Jacobians vary by ~1e-5 of their size. Its gc_* and delta_gc_* keys are not null
    and equal the reference's on the centred agop formed in two passes in float64
    (tests/test_grams.py's _two_pass); the reference on the old subtraction is far off."""
    from test_grams import _two_pass

    params = mdl.init_params(jax.random.PRNGKey(30), [5, 8, 7, 2], bias=True, init="gaussian", init_scale=1.0,
                             dtype=jnp.float64)
    params0 = [{k: 0.9 * v if k == "W" else v for k, v in p.items()} for p in params]
    X = 3e-3 * np.asarray(jax.random.normal(jax.random.PRNGKey(31), (40, 5), jnp.float64))
    g = gm.compute_grams(params, X, "tanh", chunk=16)
    two = _two_pass(params, X, "tanh")
    exact = g._replace(agop_c=[t[0] for t in two], pgop_c=[t[1] for t in two], gdev=[t[2] for t in two])
    old = g._replace(agop_c=[np.asarray(a) - np.asarray(j).T @ np.asarray(j) for a, j in zip(g.agop, g.jbar)])
    keys = ("gc_pearson_a1", "gc_pearson_a05", "delta_gc_pearson_a05", "delta_gc_cosine_a1")
    for l in range(2):
        W, W0 = np.asarray(params[l]["W"]), np.asarray(params0[l]["W"])
        rel_tol = max(W.shape) * EPS
        f, facs = _factors(7, W.shape)
        row = _stats(W, W0, g, l, rel_tol=rel_tol, terms=bl.terms(f))
        want = ref.layer_stats(W, W0, exact, l, trivial=False, rel_tol=rel_tol, factors=facs)[0]
        lost = ref.layer_stats(W, W0, old, l, trivial=False, rel_tol=rel_tol, factors=facs)[0]
        for k in keys:
            assert not math.isnan(want[k]) and abs(row[k] - want[k]) <= 1e-10, (l, k, row[k], want[k])
        # the subtraction: 1.6e-8 to 1.6e-6 off here (the one pass: 3e-13)
        assert max(abs(lost[k] - want[k]) for k in keys) > 1e-8, l
