"""Tasks compute what they say; the MLP's init and activations match their definitions."""
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnfa_cli import config, data
from dnfa_cli import model as mdl


def _ds(**d):
    return data.make_dataset(config.validate({"data": d, "train": {"batch_size": 4}}))


def test_monomial_and_multi_index_targets():
    ds = _ds(task="monomial", d=7, coords=[2, 5, 6], n_train=50, n_test=30)
    np.testing.assert_allclose(ds.T_train[:, 0], ds.X_train[:, 2] * ds.X_train[:, 5] * ds.X_train[:, 6])
    assert ds.X_train.shape == (50, 7) and ds.X_test.shape == (30, 7) and ds.kind == "regression"
    # the default is the paper's task: x_1 x_2 (0-based coords 0, 1) on N(0, I_100)
    ds = _ds(task="monomial", n_train=4000, n_test=10)
    np.testing.assert_allclose(ds.T_train[:, 0], ds.X_train[:, 0] * ds.X_train[:, 1])
    assert ds.d == 100
    assert abs(ds.X_train.mean()) < 0.01 and abs(ds.X_train.std() - 1) < 0.01
    ds = _ds(task="multi_index", n_train=200, n_test=10)
    X = ds.X_train
    np.testing.assert_allclose(ds.T_train[:, 0], X[:, 0] * X[:, 1] * (X[:, 5] > 0))
    noisy = _ds(task="multi_index", n_train=200, n_test=10, noise=0.5)
    np.testing.assert_array_equal(noisy.X_train, X)  # noise draws do not move the inputs
    assert 0.3 < np.std(noisy.T_train - ds.T_train) < 0.7


def test_sparse_parity():
    ds = _ds(task="sparse_parity", d=10, k=4, n_train=300, n_test=50)
    assert set(np.unique(ds.X_train)) == {-1.0, 1.0}
    np.testing.assert_array_equal(ds.T_train[:, 0], np.prod(ds.X_train[:, :4], 1))
    assert ds.kind == "binary"
    flipped = _ds(task="sparse_parity", d=10, k=4, n_train=2000, n_test=50, noise=0.2)
    frac = np.mean(flipped.T_train[:, 0] != np.prod(flipped.X_train[:, :4], 1))
    assert 0.17 < frac < 0.23


@pytest.mark.parametrize("op,fn", [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b)])
def test_modular(op, fn):
    p = 7
    ds = _ds(task="modular", p=p, op=op, train_frac=0.4)
    X = np.concatenate([ds.X_train, ds.X_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert X.shape == (49, 14) and ds.c == 7
    a, b = X[:, :p].argmax(1), X[:, p:].argmax(1)
    np.testing.assert_array_equal(y, fn(a, b) % p)
    assert len({(i, j) for i, j in zip(a, b)}) == 49  # every pair once, train and test disjoint
    assert len(ds.y_train) == round(0.4 * 49)
    np.testing.assert_array_equal(ds.T_train, np.eye(p)[ds.y_train])


def test_mnist1d_offline_and_global_rng_untouched():
    np.random.seed(123)
    random.seed(123)
    before = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    ds = _ds(task="mnist1d", n_train=95, n_test=25)
    after = np.random.random(), random.random()
    assert before == after
    assert ds.X_train.shape == (95, 40) and ds.X_test.shape == (25, 40) and ds.c == 10
    assert set(np.unique(ds.y_train)) <= set(range(10))
    # the seed moves the data; the same seed reproduces it
    again = _ds(task="mnist1d", n_train=95, n_test=25)
    np.testing.assert_array_equal(ds.X_train, again.X_train)
    other = data.make_dataset(config.validate({"seed": 1, "data": {"task": "mnist1d", "n_train": 95, "n_test": 25}, "train": {"batch_size": 4}}))
    assert not np.array_equal(ds.X_train, other.X_train)


def test_seed_and_data_seed():
    a = data.make_dataset(config.validate({"seed": 0, "data": {"n_train": 20, "n_test": 5, "d": 3}, "train": {"batch_size": 4}}))
    b = data.make_dataset(config.validate({"seed": 1, "data": {"n_train": 20, "n_test": 5, "d": 3}, "train": {"batch_size": 4}}))
    assert not np.array_equal(a.X_train, b.X_train)
    c = data.make_dataset(config.validate({"seed": 0, "data": {"n_train": 20, "n_test": 5, "d": 3, "seed": 9}, "train": {"batch_size": 4}}))
    e = data.make_dataset(config.validate({"seed": 5, "data": {"n_train": 20, "n_test": 5, "d": 3, "seed": 9}, "train": {"batch_size": 4}}))
    np.testing.assert_array_equal(c.X_train, e.X_train)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, X_train=rng.normal(size=(10, 3)), y_train=rng.normal(size=10),
             X_test=rng.normal(size=(4, 3)), y_test=rng.normal(size=4))
    ds = _ds(task="npz", path=str(p))
    assert ds.c == 1 and ds.kind == "regression" and ds.T_train.shape == (10, 1)
    q = tmp_path / "c.npz"
    np.savez(q, X_train=rng.normal(size=(10, 3)), y_train=np.arange(10) % 3,
             X_test=rng.normal(size=(4, 3)), y_test=np.array([0, 1, 2, 4]))
    ds = _ds(task="npz", path=str(q), kind="classification")
    assert ds.c == 5 and ds.kind == "classification"
    bad = tmp_path / "bad.npz"
    np.savez(bad, X_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(config.DnfaInputError, match="missing arrays X_test, y_test"):
        _ds(task="npz", path=str(bad))


def test_gaussian_and_torch_init():
    key = jax.random.PRNGKey(0)
    ps = mdl.init_params(key, [400, 300, 2], bias=False, init="gaussian", init_scale=2.0, dtype=jnp.float64)
    W = np.asarray(ps[0]["W"])
    assert W.shape == (300, 400) and "b" not in ps[0]
    assert np.var(W) == pytest.approx(4.0 / 400, rel=0.02)
    ps = mdl.init_params(key, [400, 300, 2], bias=True, init="torch", init_scale=1.0, dtype=jnp.float32)
    W, b = np.asarray(ps[0]["W"]), np.asarray(ps[0]["b"])
    bound = 1 / math.sqrt(400)
    assert W.dtype == np.float32 and np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
    assert np.var(W) == pytest.approx(bound**2 / 3, rel=0.02)  # U(-a, a) has variance a^2 / 3
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound


def test_activations_and_forward():
    x = np.linspace(-3, 3, 13)
    np.testing.assert_allclose(np.asarray(mdl.activation_fn("gelu")(x)), x * 0.5 * (1 + np.vectorize(math.erf)(x / np.sqrt(2))), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(mdl.activation_fn("quadratic")(x)), x**2)
    np.testing.assert_allclose(np.asarray(mdl.activation_fn("silu")(x)), x / (1 + np.exp(-x)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(mdl.activation_fn("relu")(x)), np.maximum(x, 0))
    ps = mdl.init_params(jax.random.PRNGKey(1), [3, 4, 2], bias=True, init="torch", init_scale=1.0, dtype=jnp.float64)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, 3), jnp.float64))
    W1, b1, W2, b2 = (np.asarray(a) for a in (ps[0]["W"], ps[0]["b"], ps[1]["W"], ps[1]["b"]))
    ref = np.tanh(X @ W1.T + b1) @ W2.T + b2
    np.testing.assert_allclose(np.asarray(mdl.forward(ps, X, "tanh")), ref, rtol=1e-13)
    hs, pre = mdl.forward_all(ps, X, "tanh")
    np.testing.assert_allclose(np.asarray(pre[0]), X @ W1.T + b1, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(pre[-1]), ref, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(mdl.f_from_preact(ps, 0, pre[0], "tanh")), ref, rtol=1e-13)


def test_linear_teacher():
    ds = _ds(task="linear", d=6, outputs=3, n_train=40, n_test=10)
    A, *_ = np.linalg.lstsq(ds.X_train, ds.T_train, rcond=None)  # exact: no noise
    np.testing.assert_allclose(ds.X_test @ A, ds.T_test, atol=1e-10)
    assert ds.c == 3 and ds.kind == "regression" and np.linalg.matrix_rank(A) == 3


SMALL = {  # a small instance of every task (npz: written by the test)
    "monomial": {"d": 5, "n_train": 12, "n_test": 7},
    "multi_index": {"d": 8, "n_train": 12, "n_test": 7},
    "linear": {"d": 6, "outputs": 3, "n_train": 12, "n_test": 7},
    "sparse_parity": {"d": 6, "k": 2, "n_train": 12, "n_test": 7},
    "modular": {"p": 5, "train_frac": 0.3},
    "mnist1d": {"n_train": 20, "n_test": 10},
    "mnist": {"n_train": 12, "n_test": 7},
    "npz": {"kind": "classification"},
}


def _subclasses(cls):
    return [s for c in cls.__subclasses__() for s in [c, *_subclasses(c)]]


def test_every_task_says_its_kind_dims_and_sizes_as_its_data_has_them(tmp_path):
    """Each task class describes itself (config.py) and draws data that matches; a class that
    leaves any of the four out raises NotImplementedError here instead of a silent c = 1."""
    np.savez(tmp_path / "t.npz", X_train=np.ones((9, 4)), y_train=np.arange(9) % 3,
             X_test=np.ones((5, 4)), y_test=np.arange(5) % 3)
    public = {c for c in _subclasses(config._DataBase) if not c.__name__.startswith("_")}
    assert public == set(config.TASK_CLASSES) == set(data._MAKERS)  # each one usable and made
    assert set(SMALL) == set(config.TASKS)
    for task, fields in SMALL.items():
        fields = {**fields, **({"path": str(tmp_path / "t.npz")} if task == "npz" else {})}
        cfg = config.validate({"data": {"task": task, **fields}, "train": {"batch_size": 1}})
        dc, ds = cfg.data, data.make_dataset(cfg)
        assert dc.task_kind() == ds.kind == data.task_kind(cfg), task
        assert dc.dims() in (None, (ds.d, ds.c)) and data.dims_of(cfg) == dc.dims(), task
        assert dc.train_size() == len(ds.X_train) == data.n_train_of(cfg), task
        assert dc.total_size() in (None, len(ds.X_train) + len(ds.X_test)), task
    assert (config.Npz(path=str(tmp_path / "t.npz")).dims(), config.Npz(path="missing.npz").train_size()) == (None, 0)


def test_a_task_that_does_not_describe_itself_is_an_error():
    class Bare(config._DataBase):
        task: str = "bare"

    for method in ("task_kind", "dims", "train_size", "total_size"):
        with pytest.raises(NotImplementedError, match="Bare does not say"):
            getattr(Bare(), method)()
