"""The Optax training loop and the measurements at checkpoints.

One jit-compiled function per epoch: a `lax.scan` over every minibatch slot of a shuffled
epoch, each step gated by `lax.cond` on [start, stop) so a checkpoint can fall inside an
epoch without a second compilation. Optimizer hyperparameters live in the optimizer state
(`optax.inject_hyperparams`), so runs that differ in lr / momentum / weight decay share
one compiled program, and the same function is `jax.vmap`ped over seeds (seed batching).
"""
from __future__ import annotations

import functools
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import ansatz
from . import model as mdl
from .config import Config, DnfaInputError
from .data import Dataset


class TrainState(NamedTuple):
    params: list
    opt_state: Any


# ----------------------------------------------------------------------------- optimizer
def _opt_factory(name: str):
    # torch semantics: SGD and Adam weight_decay is L2 added to the gradient (coupled),
    # AdamW's is decoupled (Loshchilov & Hutter 2019). Every hyperparameter is always
    # present (momentum 0 and weight_decay 0 are exact no-ops) so the program's structure
    # depends on the optimizer's name only.
    if name == "sgd":
        return lambda learning_rate, momentum, weight_decay: optax.chain(
            optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))
    if name == "adam":
        return lambda learning_rate, weight_decay: optax.chain(
            optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))
    return lambda learning_rate, weight_decay: optax.adamw(learning_rate, weight_decay=weight_decay)


def _hyperparams(name: str, lr: float, momentum: float, weight_decay: float) -> dict:
    hp = {"learning_rate": lr, "weight_decay": weight_decay}
    if name == "sgd":
        hp["momentum"] = momentum
    return hp


def _injected(name: str, dtype: str, hp: dict) -> optax.GradientTransformation:
    return optax.inject_hyperparams(_opt_factory(name), hyperparam_dtype=jnp.dtype(dtype))(**hp)


@functools.lru_cache(maxsize=None)
def make_optimizer(name: str, dtype: str) -> optax.GradientTransformation:
    """The transformation for `name`; its numbers are placeholders, real ones come from
    `init_opt_state` (inject_hyperparams reads them from the state at every update)."""
    return _injected(name, dtype, _hyperparams(name, 0.0, 0.0, 0.0))


def init_opt_state(cfg: Config, params):
    tc = cfg.train
    hp = _hyperparams(tc.optimizer, tc.lr, tc.momentum, tc.weight_decay)
    dt = jnp.dtype(tc.dtype)
    return _injected(tc.optimizer, tc.dtype, {k: jnp.asarray(v, dt) for k, v in hp.items()}).init(params)


# ----------------------------------------------------------------------------- losses
def per_example_loss(f, T, y, loss: str, kind: str):
    """f (m, c) -> (m,). mse: mean over outputs of (f - T)^2 (torch's MSELoss with its
    default 'mean'); cross_entropy: softmax CE on labels, or the logistic loss
    softplus(-t f) for +-1 targets with one output."""
    if loss == "mse":
        return jnp.mean((f - T) ** 2, axis=-1)
    if kind == "binary":
        return jax.nn.softplus(-T[:, 0] * f[:, 0])
    return optax.softmax_cross_entropy_with_integer_labels(f, y)


def correct(f, T, y, kind: str):
    if kind == "binary":
        return (jnp.sign(f[:, 0]) == T[:, 0]).astype(f.dtype)
    return (jnp.argmax(f, axis=-1) == y).astype(f.dtype)


# ----------------------------------------------------------------------------- epoch
@functools.partial(jax.jit, static_argnames=("activation", "loss", "kind", "optimizer", "batch_size"))
def epoch_fn(state: TrainState, X, T, y, key, start, stop, *, activation, loss, kind, optimizer, batch_size):
    """Steps [start, stop) of the epoch whose shuffle is drawn from `key`; returns the new
    state and the minibatch losses (0 for slots outside [start, stop)). The last minibatch
    of an epoch holds the n mod batch_size leftover samples (as torch's DataLoader)."""
    n = X.shape[0]
    spe = -(-n // batch_size)
    pad = spe * batch_size - n
    perm = jax.random.permutation(key, n)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(spe, batch_size)
    wts = jnp.concatenate([jnp.ones((n,), X.dtype), jnp.zeros((pad,), X.dtype)]).reshape(spe, batch_size)
    opt = make_optimizer(optimizer, str(X.dtype))

    def loss_fn(params, i):
        b = idx[i]
        f = mdl.forward(params, X[b], activation)
        w = wts[i]
        return jnp.sum(w * per_example_loss(f, T[b], y[b], loss, kind)) / jnp.sum(w)

    def step(st: TrainState, i):
        lval, g = jax.value_and_grad(loss_fn)(st.params, i)
        upd, opt_state = opt.update(g, st.opt_state, st.params)
        return TrainState(optax.apply_updates(st.params, upd), opt_state), lval

    def body(st, i):
        active = (i >= start) & (i < stop)
        return jax.lax.cond(active, step, lambda s, i: (s, jnp.zeros((), X.dtype)), st, i)

    return jax.lax.scan(body, state, jnp.arange(spe))


@functools.partial(jax.jit, static_argnames=("activation", "loss", "kind", "chunk"))
def evaluate(params, X, T, y, *, activation, loss, kind, chunk=4096):
    """(mean loss, accuracy) over all rows of X, in chunks."""
    n = X.shape[0]
    m = min(chunk, n)
    nc = -(-n // m)
    pad = nc * m - n
    padr = lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]).reshape((nc, m) + a.shape[1:])
    w = padr(jnp.ones((n,), X.dtype))

    def body(acc, inp):
        Xc, Tc, yc, wc = inp
        f = mdl.forward(params, Xc, activation)
        return (acc[0] + jnp.sum(wc * per_example_loss(f, Tc, yc, loss, kind)),
                acc[1] + jnp.sum(wc * correct(f, Tc, yc, kind))), None

    (ls, cs), _ = jax.lax.scan(body, (jnp.zeros((), X.dtype), jnp.zeros((), X.dtype)), (padr(X), padr(T), padr(y), w))
    return ls / n, cs / n


# ----------------------------------------------------------------------------- schedule
def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def total_steps(cfg: Config, n_train: int) -> int:
    spe = steps_per_epoch(n_train, cfg.train.batch_size)
    return cfg.train.steps if cfg.train.steps is not None else cfg.train.epochs * spe


def checkpoint_steps(cfg: Config, total: int) -> list[int]:
    """Step 0 and the final step always; `checkpoints: N` adds N log-spaced steps in
    [1, total] (fewer where they coincide), a list adds those steps."""
    ck = cfg.metrics.checkpoints
    if isinstance(ck, list):
        late = [s for s in ck if s > total]
        if late:
            raise DnfaInputError(f"metrics.checkpoints: step {late[0]} is beyond the run's last step {total}")
        pts = set(ck)
    else:
        pts = set(int(round(v)) for v in np.geomspace(1, total, ck)) if ck > 0 else set()
    return sorted(pts | {0, total})


# ----------------------------------------------------------------------------- keys
def run_keys(seed: int):
    """init, shuffle and metrics keys, split once from the run seed."""
    k_init, k_shuffle, k_metrics = jax.random.split(jax.random.PRNGKey(seed), 3)
    return k_init, k_shuffle, k_metrics


def sizes_for(cfg: Config, ds: Dataset) -> list[int]:
    return mdl.layer_sizes(ds.d, cfg.model.hidden(), ds.c)


def init_state(cfg: Config, ds: Dataset) -> TrainState:
    k_init, _, _ = run_keys(cfg.seed)
    mc = cfg.model
    params = mdl.init_params(k_init, sizes_for(cfg, ds), bias=mc.bias, init=mc.init,
                             init_scale=mc.init_scale, dtype=jnp.dtype(cfg.train.dtype))
    return TrainState(params, init_opt_state(cfg, params))


def metrics_subset(cfg: Config, ds: Dataset) -> np.ndarray:
    """Row indices of the AGOP subset: fixed once per run, from the metrics key."""
    X = ds.X_train if cfg.metrics.split == "train" else ds.X_test
    n = min(cfg.metrics.samples, len(X))
    _, _, k_metrics = run_keys(cfg.seed)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_metrics, 0), len(X)))
    return np.sort(perm[:n])


# ----------------------------------------------------------------------------- measuring
def _num(x):
    """JSON-safe float: nan / inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def random_baselines(cfg: Config, params) -> list:
    """Each layer's random-W factors, drawn once per run from the metrics key."""
    _, _, k_metrics = run_keys(cfg.seed)
    k = jax.random.fold_in(k_metrics, 2)
    return [ansatz.draw_random_baselines(jax.random.fold_in(k, l), layer["W"].shape) for l, layer in enumerate(params)]


def measure(cfg: Config, ds: Dataset, params, params0, subset, step: int, spe: int, *, method: str,
            baselines: list | None = None) -> tuple[dict, dict]:
    """The checkpoint record (losses and every per-layer statistic) and the layer matrices
    nfm/agop/agop_half/pgop keyed `<name>_<layer>`. `baselines`: random_baselines(), drawn
    once per run and passed to every checkpoint."""
    tc, mc = cfg.train, cfg.model
    kw = dict(activation=mc.activation, loss=tc.loss, kind=ds.kind)
    dt = jnp.dtype(tc.dtype)
    tr_loss, tr_acc = evaluate(params, jnp.asarray(ds.X_train, dt), jnp.asarray(ds.T_train, dt), jnp.asarray(ds.y_train), **kw)
    te_loss, te_acc = evaluate(params, jnp.asarray(ds.X_test, dt), jnp.asarray(ds.T_test, dt), jnp.asarray(ds.y_test), **kw)
    cls = ds.kind != "regression"
    rec = {
        "step": int(step),
        "epoch": step / spe,
        "train_loss": _num(tr_loss),
        "test_loss": _num(te_loss),
        "train_acc": _num(tr_acc) if cls else None,
        "test_acc": _num(te_acc) if cls else None,
    }
    X = (ds.X_train if cfg.metrics.split == "train" else ds.X_test)[subset]
    _, _, k_metrics = run_keys(cfg.seed)
    mdt = jnp.dtype(cfg.metrics.dtype)
    baselines = baselines or random_baselines(cfg, params)
    # bootstrap resamples are drawn afresh per checkpoint; the random-W baselines use the
    # same random factors for the whole run
    grams = ansatz.compute_grams(params, X, mc.activation, method=method, dtype=mdt,
                                 chunk=cfg.metrics.chunk, bootstrap=cfg.metrics.bootstrap,
                                 key=jax.random.fold_in(jax.random.fold_in(k_metrics, 1), step))
    layers, mats = [], {}
    L = len(params)
    for l in range(L):
        W = np.asarray(params[l]["W"], np.float64)
        W0 = np.asarray(params0[l]["W"], np.float64)
        k = max(W.shape)
        row, m = ansatz.layer_stats(W, W0, grams, l, trivial=(l == L - 1),
                                    rel_tol=k * float(jnp.finfo(mdt).eps), baselines=baselines[l])
        layers.append({k_: (_num(v) if isinstance(v, float) else v) for k_, v in row.items()})
        for name, a in m.items():
            mats[f"{name}_{l + 1}"] = a
    rec["layers"] = layers
    return rec, mats


# ----------------------------------------------------------------------------- one run
@dataclass
class Outcome:
    status: str  # ok | diverged | failed
    checkpoints: list = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    seconds: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def train(cfg: Config, ds: Dataset, *, on_checkpoint: Callable[[dict, Any, dict], None] | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Train one run, measuring at every checkpoint. `on_checkpoint(record, params, mats)`
    is called as each is measured; `on_progress(step, total)` after each epoch segment."""
    return train_batched([cfg], [ds], on_checkpoint=[on_checkpoint], on_progress=on_progress)[0]


def seed_free(cfg: Config) -> Config:
    """The config with its seeds (and name) blanked: equal for runs that differ only in seed."""
    return cfg.model_copy(update={"seed": 0, "name": "x", "data": cfg.data.model_copy(update={"seed": None})})


def batch_compatible(cfgs: list[Config]) -> bool:
    """Runs can share one vmapped program if they differ only in their seeds."""
    first = seed_free(cfgs[0])
    return all(seed_free(c) == first for c in cfgs[1:])


def train_batched(cfgs: list[Config], dss: list[Dataset], *, on_checkpoint=None, on_progress=None) -> list[Outcome]:
    """Train runs that differ only in seed as one `jax.vmap`ped program (a single run is
    the unbatched case). Each run keeps its own keys, data and divergence status."""
    if not batch_compatible(cfgs):
        raise ValueError("train_batched: runs in one batch must differ only in seed")
    R = len(cfgs)
    cfg0, ds0 = cfgs[0], dss[0]
    on_checkpoint = on_checkpoint or [None] * R
    tc, mc = cfg0.train, cfg0.model
    dt = jnp.dtype(tc.dtype)
    n = len(ds0.X_train)
    spe = steps_per_epoch(n, tc.batch_size)
    total = total_steps(cfg0, n)
    cks = checkpoint_steps(cfg0, total)
    sizes = sizes_for(cfg0, ds0)
    method = ansatz.choose_method(sizes, cfg0.metrics.jacobian)
    t_start = time.perf_counter()

    states = [init_state(c, d) for c, d in zip(cfgs, dss)]
    params0 = [s.params for s in states]
    rand_draws = [None] * R  # drawn at each run's first checkpoint
    subsets = [metrics_subset(c, d) for c, d in zip(cfgs, dss)]
    shuffle_keys = [run_keys(c.seed)[1] for c in cfgs]
    arrays = [(jnp.asarray(d.X_train, dt), jnp.asarray(d.T_train, dt), jnp.asarray(d.y_train)) for d in dss]
    static = dict(activation=mc.activation, loss=tc.loss, kind=ds0.kind, optimizer=tc.optimizer, batch_size=tc.batch_size)
    outs = [Outcome("ok", info={"total_steps": total, "steps_per_epoch": spe, "jacobian": method,
                                "n_samples": int(len(s)), "sizes": sizes, "checkpoint_steps": cks})
            for s in subsets]
    alive = list(range(R))
    t_train = t_metrics = 0.0

    def checkpoint(r, st, step) -> bool:
        """Measure run r at `step`; False (and the run's status set) if it cannot go on."""
        nonlocal t_metrics
        t0 = time.perf_counter()
        try:
            # the minibatch losses are taken before each update: the last update of a
            # segment can still overflow the weights
            if not all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(st.params)):
                outs[r].status, outs[r].error = "diverged", f"parameters became non-finite by step {step}"
                return False
            if rand_draws[r] is None:
                rand_draws[r] = random_baselines(cfgs[r], params0[r])
            rec, mats = measure(cfgs[r], dss[r], st.params, params0[r], subsets[r], step, spe, method=method,
                                baselines=rand_draws[r])
            if rec["train_loss"] is None:
                outs[r].status, outs[r].error = "diverged", f"training loss is not finite at step {step}"
                return False
            outs[r].checkpoints.append(rec)
            if on_checkpoint[r]:
                on_checkpoint[r](rec, st.params, mats)
            return True
        except Exception as e:  # noqa: BLE001 - one run's failure must not take its batch down
            outs[r].status, outs[r].error = "failed", f"{type(e).__name__} at step {step}: {e}".splitlines()[0]
            outs[r].traceback = traceback.format_exc()
            return False
        finally:
            t_metrics += time.perf_counter() - t0

    if R == 1:
        run_epoch = functools.partial(epoch_fn, **static)
        state, (Xs, Ts, ys) = states[0], arrays[0]
        fold = jax.random.fold_in
        skeys = shuffle_keys[0]
        take = lambda st, r: st
    else:
        run_epoch = jax.vmap(functools.partial(epoch_fn, **static), in_axes=(0, 0, 0, 0, 0, None, None))
        state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
        Xs, Ts, ys = (jnp.stack([a[j] for a in arrays]) for j in range(3))
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        skeys = jnp.stack(shuffle_keys)
        take = lambda st, r: jax.tree_util.tree_map(lambda a: a[r], st)
    del states, arrays

    alive = [r for r in alive if checkpoint(r, take(state, r), 0)]
    step = 0
    for target in cks[1:]:
        while step < target and alive:
            e, i0 = divmod(step, spe)
            i1 = min(spe, i0 + (target - step))
            t0 = time.perf_counter()
            # runs that diverged keep computing (harmless NaNs) so the batch keeps its shape
            state, losses = run_epoch(state, Xs, Ts, ys, fold(skeys, e), i0, i1)
            losses = np.asarray(losses).reshape(R, spe)
            t_train += time.perf_counter() - t0
            step += i1 - i0
            still = []
            for r in alive:
                lv = losses[r, i0:i1]
                if np.all(np.isfinite(lv)):
                    still.append(r)
                    continue
                bad = int(np.argmin(np.isfinite(lv)))
                outs[r].status = "diverged"
                outs[r].error = f"loss became {lv[bad]} at step {step - (i1 - i0) + bad + 1} (epoch {e + 1})"
            alive = still
            if on_progress:
                on_progress(step, total)
        alive = [r for r in alive if checkpoint(r, take(state, r), target)]
    wall = time.perf_counter() - t_start
    for o in outs:
        o.seconds = {"total": wall, "train": t_train, "metrics": t_metrics}
    return outs
