"""What verify_deep_NFA.py (aradha/deep_neural_feature_ansatz, arXiv era; and
aradha/agop_feature_learning, Science era) prints for one layer, transcribed step by step
with numpy and a per-sample jax.jacobian instead of torch: the independent reference for
dnfa's published_* keys. Their Net is bias-free: first = Linear, middle[j] = (act, Linear),
last = (act, Linear); parameter idx is layer idx.

    load_nn:            M = W_idx (the *same* array as the net's parameter); M -= M0;
                        returns dNFM = M^T M / len(M)  - the net now holds W_idx - W0_idx
    get_layer_output:   idx 0: X; idx 1: Nonlinearity()(first(X)) (ReLU, the default name);
                        idx >= 2: o = first(X), o = middle[j](o) ... stopping after
                        middle[idx-1], which holds the modified W_idx, then ReLU
    build_subnetwork:   a Net of depth - idx sharing the parameters idx, idx+1, ...
    egop:               E[J^T J] of the subnet over those rows, J = d subnet / d input;
                        centering=True subtracts the mean Jacobian first
    correlate:          Science era: Pearson (M -= M.mean()); arXiv era: cosine
    sqrt (Science era): U diag(s^(1/2)) V^T from torch.linalg.svd
"""
import jax
import jax.numpy as jnp
import numpy as np

ACT = {"relu": jax.nn.relu, "tanh": jnp.tanh, "identity": lambda x: x}


def _net_fn(Ws, act):
    """The scripts' Net: first Linear, then (act, Linear) for every later weight."""
    s = ACT[act]

    def f(x):
        o = Ws[0] @ x
        for W in Ws[1:]:
            o = W @ s(o)
        return o

    return f


def published(Ws, W0s, X, idx, act):
    """{published_pearson_a05, published_gc_pearson_a05, published_cosine_a1,
    published_gc_cosine_a1} of layer idx (0-based), as the scripts print them."""
    Ws = [np.array(W, np.float64) for W in Ws]  # the loaded net's parameters
    M = Ws[idx]  # p.data.numpy(): a view of the parameter
    M -= np.asarray(W0s[idx], np.float64)  # in place: the net's own W_idx is now W - W0
    M = M.T @ M * 1 / len(M)
    relu = ACT["relu"]
    s = ACT[act]
    rows = []
    for x in np.asarray(X, np.float64):
        if idx == 0:
            out = x
        elif idx == 1:
            out = relu(Ws[0] @ x)
        else:
            o = Ws[0] @ x
            for j in range(len(Ws) - 2):  # net.middle
                o = Ws[j + 1] @ s(o)
                if j + 1 == idx:
                    out = relu(o)
                    break
        rows.append(np.asarray(out))
    sub = _net_fn(Ws[idx:], act)
    Js = np.stack([np.asarray(jax.jacobian(sub)(jnp.asarray(z))) for z in rows])  # (n, c, k)
    G2 = np.einsum("ncd,ncD->dD", Js, Js) / len(Js)
    Jc = Js - Js.mean(0, keepdims=True)
    G = np.einsum("ncd,ncD->dD", Jc, Jc) / len(Jc)

    def svd_sqrt(A):
        U, sv, Vt = np.linalg.svd(A)
        return U @ np.diag(sv**0.5) @ Vt

    def pearson(A, B):
        a, b = A - A.mean(), B - B.mean()
        return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))

    def cosine(A, B):
        return float(np.dot(A.ravel(), B.ravel()) / (np.linalg.norm(A) * np.linalg.norm(B)))

    return {"published_pearson_a05": pearson(M, svd_sqrt(G2)), "published_gc_pearson_a05": pearson(M, svd_sqrt(G)),
            "published_cosine_a1": cosine(M, G2), "published_gc_cosine_a1": cosine(M, G)}
