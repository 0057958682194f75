"""Counterfactual nets against independent references: a step-by-step transcription of the
published verification scripts, closed forms of linear nets, and the plain statistics."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_published
import reference_stats as ref

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import baselines as bl
from dnfa_cli import config, data, engine, stats, train
from dnfa_cli import counterfactual as cf
from dnfa_cli import grams as gm
from dnfa_cli import model as mdl


def _cfg(act="tanh", **metrics):
    return config.validate({"model": {"activation": act}, "metrics": {"jacobian": "preact", **metrics}})


def _net(key, sizes, act, scale=1.2):
    return mdl.init_params(jax.random.PRNGKey(key), sizes, bias=False, init="gaussian", init_scale=scale,
                           dtype=jnp.float64)


def _net_and_grams(key, sizes, act, xkey, n):
    """A net, n Gaussian samples, its Grams and each layer's input."""
    params = _net(key, sizes, act)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(xkey), (n, sizes[0]), jnp.float64))
    return params, gm.compute_grams(params, X, act), cf.layer_inputs(params, jnp.asarray(X), act)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_published_keys_equal_the_transcribed_scripts(act):
    """Layers 0, 1, 2 of a 4-weight net: the in-place W - W0, the ReLU of get_layer_output
    and its late stop at layer 2 all show in what the scripts print."""
    sizes = [5, 8, 8, 8, 2]
    params, params0 = _net(1, sizes, act), _net(2, sizes, act, 0.6)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (120, 5), jnp.float64))
    hs = cf.layer_inputs(params, jnp.asarray(X), act)
    Ws, W0s = [p["W"] for p in params], [p["W"] for p in params0]
    for i in range(3):
        got = cf.published(_cfg(act), params, params0, jnp.asarray(X), hs, i, dtype=jnp.float64)
        want = reference_published.published(Ws, W0s, X, i, act)
        for k, v in want.items():
            # a square root turns rounding-level eigenvalues (exact zeros from dead ReLU units,
            # agop' - jbar'^T jbar' against centred Jacobians) into ~1e-8 |A|^(1/2): there two
            # exact routes agree to ~sqrt(eps), not eps (the scripts themselves run float32)
            assert got[k] == pytest.approx(v, abs=1e-6 if k.endswith("a05") else 1e-10), (i, k)
    # the quirks matter: at layer 2 the scripts' rows are not the layer's inputs
    dW = Ws[2] - W0s[2]
    honest = gm.compute_grams(cf.subnet(params, 2, dW), hs[2], act)
    M = np.asarray(dW.T @ dW)
    assert abs(ref.cosine(M, np.asarray(honest.agop[0])) - got["published_cosine_a1"]) > 1e-3


def test_a_small_W_minus_W0_keeps_its_centred_published_keys():
    """issue 16: on a tanh net a small step from its initialisation, the net whose W is
    W - W0 is nearly linear (its first pre-activations are ~1e-3), its Jacobians barely
    vary, and agop' - jbar'^T jbar' was rounding noise (null) where the scripts print a
    number. Accumulated about one sample's Jacobian, the centred AGOP' keeps that content:
    the keys equal the two-pass transcription of the scripts."""
    sizes = [5, 8, 8, 2]
    params0 = _net(21, sizes, "tanh")
    step = _net(22, sizes, "tanh")
    params = [{"W": p["W"] + 1e-3 * q["W"]} for p, q in zip(params0, step)]
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(23), (80, 5), jnp.float64))
    hs = cf.layer_inputs(params, jnp.asarray(X), "tanh")
    Ws, W0s = [p["W"] for p in params], [p["W"] for p in params0]
    for i in range(2):
        got = cf.published(_cfg(), params, params0, jnp.asarray(X), hs, i, dtype=jnp.float64)
        want = reference_published.published(Ws, W0s, X, i, "tanh")
        for k in ("published_gc_cosine_a1", "published_gc_pearson_a05"):
            assert got[k] == pytest.approx(want[k], abs=1e-9), (i, k)


def test_with_W0_zero_the_first_layers_published_keys_are_the_plain_ones():
    """W0 = 0 removes the in-place subtraction; at layer 0 the rows are the inputs and the
    sub-network the net itself, so the scripts print the plain (intended) statistics."""
    sizes = [4, 6, 6, 2]
    params = _net(4, sizes, "tanh")
    zeros = [{"W": jnp.zeros_like(p["W"])} for p in params]
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (200, 4), jnp.float64))
    g = gm.compute_grams(params, X, "tanh")
    W = np.asarray(params[0]["W"])
    nfm, agop = W.T @ W, np.asarray(g.agop[0])
    gc = agop - np.asarray(g.jbar[0]).T @ np.asarray(g.jbar[0])
    got = cf.published(_cfg(), params, zeros, jnp.asarray(X), cf.layer_inputs(params, jnp.asarray(X), "tanh"), 0,
                       dtype=jnp.float64)
    assert got["published_pearson_a05"] == pytest.approx(ref.pearson(nfm, ref.psd_power(agop, 0.5)), abs=1e-10)
    assert got["published_gc_pearson_a05"] == pytest.approx(ref.pearson(nfm, ref.psd_power(gc, 0.5)), abs=1e-10)
    assert got["published_cosine_a1"] == pytest.approx(ref.cosine(nfm, agop), abs=1e-12)
    assert got["published_gc_cosine_a1"] == pytest.approx(ref.cosine(nfm, gc), abs=1e-12)


def test_swapping_in_W_itself_gives_the_plain_statistics():
    params, g, hs = _net_and_grams(6, [4, 7, 7, 2], "tanh", 7, 80)
    for i in range(2):
        W = np.asarray(params[i]["W"])
        U, s, _ = np.linalg.svd(W, full_matrices=False)
        p, t = cf.swapped(_cfg(), params, hs, i, W, U, len(s), dtype=jnp.float64)
        G = np.asarray(g.pgop[i])
        assert p == pytest.approx(ref.pearson(W.T @ W, W.T @ G @ W), abs=1e-10)
        assert t == pytest.approx(ref.tightness(U.T @ G @ U), abs=1e-10)


def test_in_a_linear_net_a_swap_leaves_the_gradients_alone():
    """Closed form: with identity activations df/dp_{i+1} = W_L ... W_{i+1} whatever W_i is,
    so the swapped layer's pgop is the original one and the swap test is the random-W
    baseline of the same matrix: pearson(R^T R, R^T G R), tightness of G on range(R)."""
    params, g, hs = _net_and_grams(8, [5, 9, 6, 3], "identity", 9, 60)
    for i in range(2):
        W = np.asarray(params[i]["W"])
        f = cf.SwapFactors(jax.random.PRNGKey(10 + i), W.shape)
        got = cf.swap(_cfg("identity"), params, hs, i, f, dtype=jnp.float64)
        G = np.asarray(g.pgop[i])
        R = np.asarray(f.R)
        UR = np.linalg.svd(R, full_matrices=False)[0]
        assert got["swap_pearson_a1"] == pytest.approx(ref.pearson(R.T @ R, R.T @ G @ R), abs=1e-10)
        assert got["swap_tightness_range"] == pytest.approx(ref.tightness(UR.T @ G @ UR), abs=1e-10)
        s = np.linalg.svd(W, compute_uv=False)
        Qo, Qi = np.asarray(f.Qo), np.asarray(f.Qi)
        Rs = (Qo * s) @ Qi.T
        np.testing.assert_allclose(np.linalg.svd(Rs, compute_uv=False), s, rtol=1e-12)  # W's spectrum
        assert got["swap_spec_pearson_a1"] == pytest.approx(ref.pearson(Rs.T @ Rs, Rs.T @ G @ Rs), abs=1e-10)
        assert got["swap_spec_tightness_range"] == pytest.approx(ref.tightness(Qo.T @ G @ Qo), abs=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_in_a_tanh_net_the_swaps_equal_the_nets_written_out_by_hand(bias):
    """The Gaussian swap matrix is R rescaled to |W_i|_F, checked where the scale matters:
    in a tanh net the swapped layer's pgop depends on the size of M (in a linear net it
    does not, and pearson and tightness are scale-free, so a missing rescale passes there).
    The references: the swapped nets in numpy (reference_stats.tanh_swap), with R scaled
    here by numpy norms."""
    sizes = [5, 9, 6, 3]
    params = mdl.init_params(jax.random.PRNGKey(31), sizes, bias=bias, init="torch", init_scale=1.5, dtype=jnp.float64)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(32), (70, 5), jnp.float64))
    hs = cf.layer_inputs(params, jnp.asarray(X), "tanh")
    Ws = [np.asarray(p["W"]) for p in params]
    bs = [np.asarray(p.get("b", np.zeros(p["W"].shape[0]))) for p in params]
    for i in range(2):
        f = cf.SwapFactors(jax.random.PRNGKey(40 + i), Ws[i].shape)
        R = np.asarray(f.R) * (np.sqrt(np.sum(Ws[i] ** 2)) / np.sqrt(np.sum(np.asarray(f.R) ** 2)))
        M = np.asarray(cf._swap_matrices(jnp.asarray(Ws[i]), f.R, f.Qo, f.Qi)[0])
        np.testing.assert_allclose(np.sqrt(np.sum(M ** 2)), np.sqrt(np.sum(Ws[i] ** 2)), rtol=1e-12)  # |M|_F = |W|_F
        Rs = (np.asarray(f.Qo) * np.linalg.svd(Ws[i], compute_uv=False)) @ np.asarray(f.Qi).T
        got = cf.swap(_cfg("tanh"), params, hs, i, f, dtype=jnp.float64)
        H = np.asarray(hs[i])
        for arm, Mref in (("swap", R), ("swap_spec", Rs)):
            p, t = ref.tanh_swap(Ws, bs, i, Mref, H)
            assert got[f"{arm}_pearson_a1"] == pytest.approx(p, abs=1e-10), (bias, i, arm)
            assert got[f"{arm}_tightness_range"] == pytest.approx(t, abs=1e-10), (bias, i, arm)
        # the scale is not idle here: R at a tenth of |W|_F gives other statistics
        assert abs(ref.tanh_swap(Ws, bs, i, R / 10, H)[0] - got["swap_pearson_a1"]) > 1e-4


def _uv_factors(W, key):
    return cf.SwapFactors(jax.random.PRNGKey(key), W.shape, uv=True)


def test_the_uv_swaps_keep_the_frame_they_say_and_draw_the_other():
    """W O keeps W's singular values and left singular subspace, O' W its singular values and
    right singular subspace; the drawn side is not W's (a wide, a tall and a square W)."""
    for shape, key in (((5, 9), 1), ((9, 5), 2), ((6, 6), 3)):
        W = np.asarray(jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float64))
        f = _uv_factors(W, 10 + key)
        Mu, Mv = W @ np.asarray(f.Oi), np.asarray(f.Oo) @ W
        U, s, Vt = np.linalg.svd(W, full_matrices=False)
        for M in (Mu, Mv):
            np.testing.assert_allclose(np.linalg.svd(M, compute_uv=False), s, rtol=1e-12)
        Uu, _, Vut = np.linalg.svd(Mu, full_matrices=False)
        Uv, _, Vvt = np.linalg.svd(Mv, full_matrices=False)
        assert ref.principal_cos_max_angle(Uu, U) == pytest.approx(1.0, abs=1e-10)  # W's U
        assert ref.principal_cos_max_angle(Vvt.T, Vt.T) == pytest.approx(1.0, abs=1e-10)  # W's V
        # the drawn side: a Haar frame is nowhere near W's (cosines of matched singular vectors)
        assert np.max(np.abs(np.sum(Vut.T * Vt.T, axis=0))) < 0.99
        assert np.max(np.abs(np.sum(Uv * U, axis=0))) < 0.99


@pytest.mark.parametrize("act", ["tanh", "identity"])
def test_uv_swap_keys_equal_the_reference_by_hand(act):
    """tanh with biases: the swapped nets written out in numpy (reference_stats.tanh_swap).
    identity: the closed form, pgop does not depend on W_i, so keeping U keeps the plain
    tightness_range of W exactly, and keeping V keeps nfm = W^T W."""
    sizes = [5, 9, 6, 3]
    params = mdl.init_params(jax.random.PRNGKey(14), sizes, bias=act == "tanh", init="torch", init_scale=1.5,
                             dtype=jnp.float64)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(15), (70, 5), jnp.float64))
    hs = cf.layer_inputs(params, jnp.asarray(X), act)
    g = gm.compute_grams(params, X, act)
    Ws = [np.asarray(p["W"]) for p in params]
    bs = [np.asarray(p.get("b", np.zeros(p["W"].shape[0]))) for p in params]
    for i in range(2):
        f = _uv_factors(Ws[i], 20 + i)
        got = cf.swap(_cfg(act), params, hs, i, f, dtype=jnp.float64, family="swap_uv")
        assert set(got) == set(cf.SWAP_UV_KEYS)
        Mu, Mv = Ws[i] @ np.asarray(f.Oi), np.asarray(f.Oo) @ Ws[i]
        if act == "tanh":
            H = np.asarray(hs[i])
            want = {"swap_keepu": ref.tanh_swap(Ws, bs, i, Mu, H), "swap_keepv": ref.tanh_swap(Ws, bs, i, Mv, H)}
        else:
            G = np.asarray(g.pgop[i])
            U = np.linalg.svd(Ws[i], full_matrices=False)[0]
            OU = np.asarray(f.Oo) @ U
            want = {"swap_keepu": (ref.pearson(Mu.T @ Mu, Mu.T @ G @ Mu), ref.tightness(U.T @ G @ U)),
                    "swap_keepv": (ref.pearson(Ws[i].T @ Ws[i], Mv.T @ G @ Mv), ref.tightness(OU.T @ G @ OU))}
            plain = stats.layer_stats(Ws[i], Ws[i], g, i, trivial=False, rel_tol=1e-12,
                                      terms=bl.draw_terms(jax.random.PRNGKey(0), Ws[i].shape))[0]
            assert got["swap_keepu_tightness_range"] == pytest.approx(plain["tightness_range"], abs=1e-12)
        for arm, (p, t) in want.items():
            assert got[f"{arm}_pearson_a1"] == pytest.approx(p, abs=1e-10), (act, i, arm)
            assert got[f"{arm}_tightness_range"] == pytest.approx(t, abs=1e-10), (act, i, arm)


def test_a_run_writes_the_counterfactual_keys_where_it_was_asked(tmp_path):
    cfg = config.validate({
        "name": "cf", "data": {"task": "monomial", "d": 4, "n_train": 40, "n_test": 10},
        "model": {"depth": 2, "width": 6, "activation": "tanh"},
        "train": {"epochs": 3, "batch_size": 10, "lr": 0.05, "dtype": "float64"},
        "metrics": {"checkpoints": [2], "published": "all", "swap": "ends", "swap_uv": "all"}})
    res = engine.execute([cfg], tmp_path)[0]
    assert [c["step"] for c in res["checkpoints"]] == [0, 2, 12]
    for c in res["checkpoints"]:
        for L in c["layers"]:
            trivial = L["trivial"]
            pub = [L[k] for k in cf.PUBLISHED_KEYS]
            sw = [L[k] for k in cf.SWAP_KEYS]
            assert all(v is None for v in pub) if (trivial or c["step"] == 0) else all(v is not None for v in pub)
            assert all(v is None for v in sw) if (trivial or c["step"] == 2) else all(v is not None for v in sw)
            uv = [L[k] for k in cf.SWAP_UV_KEYS]
            assert all(v is None for v in uv) if trivial else all(v is not None for v in uv)
    # and the same config without them has neither the keys nor another id than before
    plain = config.validate({**cfg.to_dict(), "metrics": {**cfg.to_dict()["metrics"], "published": "none", "swap": "none",
                                                          "swap_uv": "none"}})
    assert plain.run_id != cfg.run_id
    out = train.train(plain, data.make_dataset(plain))
    assert not any(k in out.checkpoints[-1]["layers"][0] for k in cf.PUBLISHED_KEYS + cf.SWAP_KEYS + cf.SWAP_UV_KEYS)


def test_mnist_is_real_digits_loaded_offline():
    cfg = config.validate({"seed": 3, "data": {"task": "mnist", "n_train": 300, "n_test": 100}})
    ds = data.make_dataset(cfg)
    assert ds.X_train.shape == (300, 784) and ds.X_test.shape == (100, 784) and ds.c == 10
    assert ds.kind == "classification" and 0.0 <= ds.X_train.min() and ds.X_train.max() <= 1.0
    X, y = data.mnist_subset()
    assert X.shape == (5000, 784) and np.array_equal(np.bincount(y), [500] * 10)  # 500 per class
    # a digit is strokes on a blank page: most pixels are 0, the centre is inked on average
    assert (X == 0).mean() > 0.7 and X.reshape(-1, 28, 28)[:, 10:18, 10:18].mean() > 3 * X.mean() / 2
    # train and test are disjoint draws of the 5000, fixed by the data seed
    rows = {r.tobytes() for r in ds.X_train}
    assert not any(r.tobytes() in rows for r in ds.X_test)
    again = data.make_dataset(cfg)
    np.testing.assert_array_equal(again.X_train, ds.X_train)
    with pytest.raises(config.ConfigError, match="exceeds the 5000 images"):
        config.validate({"data": {"task": "mnist", "n_train": 4500, "n_test": 1000}})


def test_mnist_without_its_package_is_one_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config.DnfaInputError, match=r"pip install 'dnfa\[mnist\]'"):
        data.check(config.validate({"data": {"task": "mnist"}}))


def test_swap_and_published_row_helpers_handle_a_zero_difference():
    """At initialisation W - W0 = 0: the published statistics are undefined (null), not 0."""
    dW = jnp.zeros((3, 4))
    zero = jnp.zeros((4, 4))
    row = {k: float(v) for k, v in stats.published_row(dW, zero, zero, jnp.eye(3), 0.0, 4e-16).items()}
    assert all(math.isnan(v) for v in row.values())


def test_in_a_linear_net_the_centred_published_keys_are_null_not_noise():
    """Closed form: with identity activations every sample has the same Jacobian, so the
    gradient-centred AGOP' is exactly zero and only rounding is left of the subtraction; a
    correlation with it would change sign from machine to machine. The uncentred keys stay."""
    sizes = [5, 9, 6, 3]
    params, params0 = _net(11, sizes, "identity"), _net(12, sizes, "identity")
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(13), (60, 5), jnp.float64))
    hs = cf.layer_inputs(params, jnp.asarray(X), "identity")
    for i in range(2):
        got = cf.published(_cfg("identity"), params, params0, jnp.asarray(X), hs, i, dtype=jnp.float64)
        assert math.isnan(got["published_gc_pearson_a05"]) and math.isnan(got["published_gc_cosine_a1"]), i
        # the uncentred ones are the closed form: AGOP' = dW^T B^T B dW with B = W_L ... W_{i+1}
        dW = np.asarray(params[i]["W"]) - np.asarray(params0[i]["W"])
        B = np.eye(sizes[i + 1])
        for p in params[i + 1:]:
            B = np.asarray(p["W"]) @ B
        agop = dW.T @ B.T @ B @ dW / B.shape[0]
        assert got["published_cosine_a1"] == pytest.approx(ref.cosine(dW.T @ dW, agop), abs=1e-12)
