"""The closed form FINDINGS compares deep-linear alpha_star with (analysis/repro.py), checked
on exactly balanced deep linear nets built in numpy: each layer's AGOP from per-sample
Jacobians taken by finite differences of the forward pass, its NFM from the weights."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.repro import balance_residuals, balanced_alpha, layer_residual
from reference_stats import psd_power


def orthonormal(rng, n: int, r: int) -> np.ndarray:
    """n x r with orthonormal columns."""
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def balanced_net(rng, dims: list[int], r: int) -> list[np.ndarray]:
    """W_i = V_i S V_{i-1}^T (out x in) with one S of rank r and V_i (dims[i] x r)
    orthonormal: W_{i+1}^T W_{i+1} = V_i S^2 V_i^T = W_i W_i^T, exactly balanced."""
    V = [orthonormal(rng, n, r) for n in dims]
    S = np.diag(rng.uniform(0.5, 2.0, r))
    return [V[i + 1] @ S @ V[i].T for i in range(len(dims) - 1)]


def forward(Ws, h, start: int):
    """f from layer `start`'s (0-based) input h: W_L ... W_{start+1} h."""
    for W in Ws[start:]:
        h = W @ h
    return h


def agop(Ws, X, start: int) -> np.ndarray:
    """E_x[J^T J], J = df/dh at h = layer `start`'s input for sample x, each column of J a
    central difference of the forward pass (exact up to rounding: f is linear in h)."""
    hs = [forward(Ws[:start], x, 0) for x in X]
    k = Ws[start].shape[1]
    total = np.zeros((k, k))
    for h in hs:
        J = np.stack([(forward(Ws, h + e, start) - forward(Ws, h - e, start)) / 2 for e in np.eye(k)], axis=1)
        total += J.T @ J
    return total / len(hs)


@pytest.mark.parametrize("dims", [[5, 5, 5], [6, 9, 4], [5, 7, 7, 5], [6, 8, 8, 8, 5]])
def test_nfm_is_agop_to_the_closed_form_power(dims):
    rng = np.random.default_rng(len(dims) * 10 + dims[1])
    r = min(dims)
    Ws = balanced_net(rng, dims, r)
    X = rng.standard_normal((7, dims[0]))
    L = len(Ws)
    assert max(balance_residuals(Ws)) < 1e-13
    for i in range(1, L + 1):
        nfm = Ws[i - 1].T @ Ws[i - 1]
        A = agop(Ws, X, i - 1)
        np.testing.assert_allclose(nfm, psd_power(A, balanced_alpha(L, i)), atol=1e-10, rtol=0)
        if i < L:  # any other exponent fails: the closed form is not the only power that passes by accident
            assert np.abs(nfm - psd_power(A, 1.0 / L if i > 1 else 1.0)).max() > 1e-3
    M = forward(Ws, np.eye(dims[0]), 0)  # the end-to-end map
    np.testing.assert_allclose(Ws[0].T @ Ws[0], psd_power(M.T @ M, 1.0 / L), atol=1e-10, rtol=0)


def test_an_unbalanced_net_breaks_the_closed_form_and_the_residual_says_so():
    rng = np.random.default_rng(3)
    Ws = balanced_net(rng, [5, 7, 5], 5)
    Ws = [Ws[0] * 2.0, Ws[1] / 2.0]  # the same end-to-end map, no longer balanced
    X = rng.standard_normal((4, 5))
    res = balance_residuals(Ws)
    # |W2^T W2 - W1 W1^T| = |V S^2 V^T| (1/4 - 4), the larger norm 4 |S^2|
    np.testing.assert_allclose(res, [(4 - 0.25) / 4], rtol=1e-12)
    assert np.abs(Ws[0].T @ Ws[0] - psd_power(agop(Ws, X, 0), balanced_alpha(2, 1))).max() > 0.1
    assert layer_residual(res, 1) == res[0]
    assert np.isnan(layer_residual(res, 2))


def test_balanced_alpha_per_layer():
    assert [balanced_alpha(4, i) for i in range(1, 5)] == [0.25, 1 / 3, 0.5, 1.0]
    assert balanced_alpha(2, 1) == 0.5
    with pytest.raises(ValueError, match="layer 3 of a net of 2 layers"):
        balanced_alpha(2, 3)


def test_layer_residual_takes_the_pairs_above():
    assert layer_residual([0.1, 0.3, 0.2], 1) == 0.3
    assert layer_residual([0.1, 0.3, 0.2], 3) == 0.2


def curve(train, test):
    import pandas as pd

    steps = [0, 10, 100, 1000, 10000][:len(train)]
    return pd.DataFrame({"step": steps, "epoch": [s / 10 for s in steps], "train_acc": train, "test_acc": test,
                         "pearson_a05": [0.9] * len(train), "pearson_a1": [0.8] * len(train)})


def test_a_late_rise_in_test_accuracy_is_called_grokking_with_its_steps():
    from analysis.repro import grok_words

    words = grok_words(curve([0.0, 0.5, 1.0, 1.0, 1.0], [0.0, 0.0, 0.1, 0.3, 0.9]))
    # train saturates at step 100 (test 0.1); half-way to 0.9 is 0.5, first reached at step 10000
    assert words.startswith("The run groks: train accuracy reaches its maximum 1.000 at step 100 (epoch 10.0)")
    assert "between the checkpoints at steps 1000 and 10000 (100.0 times the saturation step)" in words


def test_test_accuracy_rising_with_train_accuracy_is_not_grokking():
    from analysis.repro import grok_words

    words = grok_words(curve([0.0, 0.5, 1.0, 1.0], [0.0, 0.4, 0.8, 0.85]))
    assert words.startswith("The run is not shown to grok: train accuracy reaches its maximum 1.000 at step 100")
    assert "already 0.800 of its best 0.850" in words
