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

from . import baselines as bl
from . import counterfactual as cf
from . import grams, stats
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


def random_baselines(cfg: Config, params) -> list[bl.Terms]:
    """Each layer's random-W terms (baselines.py), drawn once per run from the metrics key
    and kept on the device."""
    _, _, k_metrics = run_keys(cfg.seed)
    k = jax.random.fold_in(k_metrics, 2)
    return [bl.draw_terms(jax.random.fold_in(k, l), layer["W"].shape) for l, layer in enumerate(params)]


def loss_record(cfg: Config, ds: Dataset, params, step: int, spe: int, arrays=None) -> dict:
    """The checkpoint record's step and losses (accuracies for classification)."""
    tc, mc = cfg.train, cfg.model
    kw = dict(activation=mc.activation, loss=tc.loss, kind=ds.kind)
    dt = jnp.dtype(tc.dtype)
    Xtr, Ttr, ytr = arrays or (jnp.asarray(ds.X_train, dt), jnp.asarray(ds.T_train, dt), jnp.asarray(ds.y_train))
    tr_loss, tr_acc = evaluate(params, Xtr, Ttr, ytr, **kw)
    te_loss, te_acc = evaluate(params, jnp.asarray(ds.X_test, dt), jnp.asarray(ds.T_test, dt), jnp.asarray(ds.y_test), **kw)
    cls = ds.kind != "regression"
    return {
        "step": int(step),
        "epoch": step / spe,
        "train_loss": _num(tr_loss),
        "test_loss": _num(te_loss),
        "train_acc": _num(tr_acc) if cls else None,
        "test_acc": _num(te_acc) if cls else None,
    }


def swap_factors(cfg: Config, params) -> list:
    """Each hidden layer's swap-test factors, drawn once per run from the metrics key."""
    _, _, k_metrics = run_keys(cfg.seed)
    k = jax.random.fold_in(k_metrics, 3)
    return [cf.SwapFactors(jax.random.fold_in(k, l), layer["W"].shape) for l, layer in enumerate(params[:-1])]


def counterfactuals(cfg: Config, params, params0, X, what: set, swaps) -> list[dict]:
    """published_* and swap_* keys of every hidden layer (the read-out's are null)."""
    mdt = jnp.dtype(cfg.metrics.dtype)
    Xd = jnp.asarray(X, mdt)  # to the device once, not once per layer
    hs = cf.layer_inputs(params, Xd, cfg.model.activation)
    L = len(params)
    rows = []
    for i in range(L):
        row = {}
        if "published" in what:
            row.update(cf.published(cfg, params, params0, Xd, hs, i, dtype=mdt)
                       if i < L - 1 else dict.fromkeys(cf.PUBLISHED_KEYS))
        if "swap" in what:
            row.update(cf.swap(cfg, params, hs, i, swaps[i], dtype=mdt) if i < L - 1 else dict.fromkeys(cf.SWAP_KEYS))
        rows.append(row)
    return rows


def measure(cfgs: list[Config], dss: list[Dataset], params_list, params0_list, subsets, step: int, spe: int, *,
            method: str, terms: list, arrays=None, what: set = frozenset(), swaps=None) -> list[tuple[dict, dict]]:
    """For runs of one seed batch (one run is the usual case) at `step`: each run's
    checkpoint record (losses and every per-layer statistic) and its layer matrices
    nfm/agop/agop_half/pgop keyed `<name>_<layer>` (float32 device arrays). The Grams and
    the statistics are computed on the device, runs and layers of one shape together.
    `terms`: each run's random_baselines(), drawn once per run. `what`: the counterfactuals
    ("published", "swap") this checkpoint computes (swap needs `swaps`, each run's
    swap_factors()); a run that asks for one elsewhere gets its keys as null."""
    cfg0 = cfgs[0]
    mc, mt = cfg0.model, cfg0.metrics
    recs = [loss_record(c, d, p, step, spe, a) for c, d, p, a in zip(cfgs, dss, params_list, arrays or [None] * len(cfgs))]
    Xs = [(d.X_train if mt.split == "train" else d.X_test)[s] for d, s in zip(dss, subsets)]
    mdt = jnp.dtype(mt.dtype)
    # bootstrap resamples are drawn afresh per checkpoint; the random-W baselines use the
    # same random factors for the whole run
    keys = [jax.random.fold_in(jax.random.fold_in(run_keys(c.seed)[2], 1), step) for c in cfgs]
    gs = grams.compute_grams_batch(params_list, Xs, mc.activation, method=method, dtype=mdt, chunk=mt.chunk,
                                   bootstrap=mt.bootstrap, keys=keys)
    L = len(params_list[0])
    eps = float(jnp.finfo(mdt).eps)
    items = [(stats.layer_input(p[l]["W"], p0[l]["W"], g, l, max(p[l]["W"].shape) * eps, t[l]), l == L - 1)
             for p, p0, g, t in zip(params_list, params0_list, gs, terms) for l in range(L)]
    outs = stats.compute(items)
    asked = {k for k in ("published", "swap") if getattr(mt, k) != "none"}
    res = []
    for r, rec in enumerate(recs):
        layers, mats = [], {}
        extra = (counterfactuals(cfgs[r], params_list[r], params0_list[r], Xs[r], what & asked, (swaps or [None] * len(cfgs))[r])
                 if what & asked else [{} for _ in range(L)])
        for l in range(L):
            row, m = outs[r * L + l]
            for k, keys in (("published", cf.PUBLISHED_KEYS), ("swap", cf.SWAP_KEYS)):
                if k in asked:  # null at the checkpoints that do not compute them
                    row.update({key: extra[l].get(key) for key in keys})
            W = params_list[r][l]["W"]
            layers.append({"layer": l + 1, "shape": [int(W.shape[0]), int(W.shape[1])], "trivial": l == L - 1,
                           **{k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}})
            mats.update({f"{name}_{l + 1}": a for name, a in m.items()})
        res.append(({**rec, "layers": layers}, mats))
    return res


@jax.jit
def all_finite(params):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(params)]))


# ----------------------------------------------------------------------------- progress
def call_sizes(cks: list[int], spe: int) -> list[int]:
    """The steps of each epoch-function call a run makes: epochs cut at the checkpoints."""
    out, step = [], 0
    for target in cks[1:]:
        while step < target:
            n = min(spe - step % spe, target - step)
            out.append(n)
            step += n
    return out


@dataclass
class Progress:
    """Where a run stands, for progress displays: `phase` is "training" or "measuring"
    (checkpoint `checkpoint` of `checkpoints`, 1-based), with the seconds each call of the
    epoch function and each checkpoint took so far, and the steps of every call to come."""

    step: int
    total: int
    checkpoints: int
    calls: list  # steps of every epoch-function call of the run (call_sizes)
    phase: str = "training"
    checkpoint: int = 0
    train_calls: list = field(default_factory=list)  # (steps, seconds) of the calls made
    checkpoint_seconds: list = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return sum(t for _, t in self.train_calls) + sum(self.checkpoint_seconds)

    def eta(self) -> float | None:
        """Seconds left: the calls to come at a cost a + b * steps fitted to the calls made,
        plus the checkpoints to come at the median cost of those measured. The first call
        and the first checkpoint carry one-time costs (compiling, drawing the random
        factors), so each estimate leaves its first out: None until a second call and a
        second checkpoint were seen (or no more are to come)."""
        left = self.calls[len(self.train_calls):]
        cks_left = max(0, self.checkpoints - len(self.checkpoint_seconds))
        if (left and len(self.train_calls) < 2) or (cks_left and len(self.checkpoint_seconds) < 2):
            return None  # only first (compiling) costs seen where more are to come
        calls = self.train_calls[1:] if len(self.train_calls) > 1 else self.train_calls
        n = np.array([c for c, _ in calls], float)
        t = np.array([s for _, s in calls], float)
        if not calls:
            a = b = 0.0
        elif len(set(n)) > 1:  # a per-call overhead and a per-step cost
            b, a = np.polyfit(n, t, 1)
            a, b = max(a, 0.0), max(b, 0.0)
        elif not left or n[0] >= np.median(left):  # calls this long: their cost scales down
            a, b = 0.0, t.sum() / n.sum()
        else:  # only shorter calls seen: all overhead and all compute bound the truth; take
            # their geometric mean
            per = t.mean()
            lo, hi = len(left) * per, sum(left) * per / n[0]
            a, b = 0.0, float(np.sqrt(lo * hi)) / max(sum(left), 1)
        cks = self.checkpoint_seconds[1:] if len(self.checkpoint_seconds) > 1 else self.checkpoint_seconds
        per_ck = float(np.median(cks)) if cks else 0.0
        return len(left) * a + b * sum(left) + cks_left * per_ck


# ----------------------------------------------------------------------------- one run
@dataclass
class Outcome:
    status: str  # ok | diverged | failed
    checkpoints: list = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    seconds: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def train(cfg: Config, ds: Dataset, *, on_checkpoint: Callable[[dict, Any], None] | None = None,
          on_matrices: Callable[[int, dict], None] | None = None,
          on_progress: Callable[[Progress], None] | None = None) -> Outcome:
    """Train one run, measuring at every checkpoint. `on_checkpoint(record, params)` is
    called as each is measured, `on_matrices(step, mats)` with the layer matrices of the
    checkpoints that metrics.save_matrices keeps, `on_progress(Progress)` after each epoch
    segment and before and after each checkpoint's measuring."""
    return train_batched([cfg], [ds], on_checkpoint=[on_checkpoint], on_matrices=[on_matrices],
                         on_progress=on_progress)[0]


def seed_free(cfg: Config) -> Config:
    """The config with its seeds (and name) blanked: equal for runs that differ only in seed."""
    return cfg.model_copy(update={"seed": 0, "name": "x", "data": cfg.data.model_copy(update={"seed": None})})


def batch_compatible(cfgs: list[Config]) -> bool:
    """Runs can share one vmapped program if they differ only in their seeds."""
    first = seed_free(cfgs[0])
    return all(seed_free(c) == first for c in cfgs[1:])


def train_batched(cfgs: list[Config], dss: list[Dataset], *, on_checkpoint=None, on_matrices=None,
                  on_progress=None) -> list[Outcome]:
    """Train runs that differ only in seed as one `jax.vmap`ped program (a single run is
    the unbatched case), and measure them together at each checkpoint. Each run keeps its
    own keys, data and divergence status."""
    if not batch_compatible(cfgs):
        raise ValueError("train_batched: runs in one batch must differ only in seed")
    R = len(cfgs)
    cfg0, ds0 = cfgs[0], dss[0]
    on_checkpoint = on_checkpoint or [None] * R
    on_matrices = on_matrices or [None] * R
    tc, mc = cfg0.train, cfg0.model
    mt0 = cfg0.metrics
    save = mt0.save_matrices
    dt = jnp.dtype(tc.dtype)
    n = len(ds0.X_train)
    spe = steps_per_epoch(n, tc.batch_size)
    total = total_steps(cfg0, n)
    cks = checkpoint_steps(cfg0, total)
    sizes = sizes_for(cfg0, ds0)
    method = grams.choose_method(sizes, cfg0.metrics.jacobian)
    t_start = time.perf_counter()

    states = [init_state(c, d) for c, d in zip(cfgs, dss)]
    params0 = [s.params for s in states]
    rand_terms = [None] * R  # drawn at each run's first checkpoint
    swaps = [None] * R  # the swap test's factors, drawn when first needed
    # save_matrices: ends keeps the params (not the 50 MB of matrices at width 1024) of a
    # run's latest checkpoint: should the run end before its last step, that checkpoint's
    # matrices are measured again from them
    held = [None] * R
    subsets = [metrics_subset(c, d) for c, d in zip(cfgs, dss)]
    shuffle_keys = [run_keys(c.seed)[1] for c in cfgs]
    arrays = [(jnp.asarray(d.X_train, dt), jnp.asarray(d.T_train, dt), jnp.asarray(d.y_train)) for d in dss]
    static = dict(activation=mc.activation, loss=tc.loss, kind=ds0.kind, optimizer=tc.optimizer, batch_size=tc.batch_size)
    outs = [Outcome("ok", info={"total_steps": total, "steps_per_epoch": spe, "jacobian": method,
                                "n_samples": int(len(s)), "sizes": sizes, "checkpoint_steps": cks})
            for s in subsets]
    alive = list(range(R))
    t_base = 0.0
    t_ck: list[float] = []  # measuring seconds of each checkpoint (the whole batch's)
    prog = Progress(step=0, total=total, checkpoints=len(cks), calls=call_sizes(cks, spe), checkpoint_seconds=t_ck)

    def report(phase: str, step: int):
        prog.phase, prog.step = phase, step
        prog.checkpoint = len(t_ck) + (phase == "measuring")
        if on_progress:
            on_progress(prog)

    def fail(r, step, e):
        outs[r].status, outs[r].error = "failed", f"{type(e).__name__} at step {step}: {e}".splitlines()[0]
        outs[r].traceback = traceback.format_exc()

    def write_held(r):
        if held[r] is not None and on_matrices[r]:
            step, params = held[r]
            try:
                mats = measure([cfgs[r]], [dss[r]], [params], [params0[r]], [subsets[r]], step, spe, method=method,
                               terms=[rand_terms[r]])[0][1]
            except Exception:  # noqa: BLE001 - the run's status already says why it ended
                mats = None
            if mats is not None:
                on_matrices[r](step, mats)
        held[r] = None

    def due(mode: str, step: int) -> bool:
        """Whether a checkpoint-set key (all / ends / none) includes this step."""
        return mode == "all" or (mode == "ends" and step in (0, total))

    def measure_runs(params: dict, step) -> dict:
        """{run: (record, matrices)} for the runs of `params` ({run: its parameters}),
        measured together; if that raises, each alone, so one run's failure does not take
        its batch down."""
        rs = list(params)
        what = {k for k in ("published", "swap") if due(getattr(mt0, k), step)}

        def run(idx):
            nonlocal t_base
            for r in idx:
                if rand_terms[r] is None:
                    t0 = time.perf_counter()
                    rand_terms[r] = jax.block_until_ready(random_baselines(cfgs[r], params0[r]))
                    t_base += time.perf_counter() - t0
                if "swap" in what and swaps[r] is None:
                    swaps[r] = swap_factors(cfgs[r], params0[r])
            return dict(zip(idx, measure([cfgs[r] for r in idx], [dss[r] for r in idx], [params[r] for r in idx],
                                         [params0[r] for r in idx], [subsets[r] for r in idx], step, spe,
                                         method=method, terms=[rand_terms[r] for r in idx],
                                         arrays=[arrays_of(r) for r in idx], what=what,
                                         swaps=[swaps[r] for r in idx])))

        if len(rs) > 1:
            try:
                return run(rs)
            except Exception:  # noqa: BLE001 - find the run that raised
                pass
        got = {}
        for r in rs:
            try:
                got.update(run([r]))
            except Exception as e:  # noqa: BLE001
                fail(r, step, e)
        return got

    def checkpoint(rs, st, step) -> list[int]:
        """Measure the runs rs at `step`; returns those that go on (the others have their
        status set)."""
        report("measuring", step)
        t0 = time.perf_counter()
        go = []
        try:
            ps = {r: take(st, r).params for r in rs}  # each run's slice of the batch, once
            finite = {}
            for r in rs:
                # the minibatch losses are taken before each update: the last update of a
                # segment can still overflow the weights
                if bool(all_finite(ps[r])):
                    finite[r] = ps[r]
                else:
                    outs[r].status, outs[r].error = "diverged", f"parameters became non-finite by step {step}"
            for r, (rec, mats) in (measure_runs(finite, step) if finite else {}).items():
                if rec["train_loss"] is None:
                    outs[r].status, outs[r].error = "diverged", f"training loss is not finite at step {step}"
                    continue
                outs[r].checkpoints.append(rec)
                if on_checkpoint[r]:
                    on_checkpoint[r](rec, ps[r])
                if due(save, step):
                    held[r] = None  # written now: nothing to measure again at the run's end
                    if on_matrices[r]:
                        on_matrices[r](step, mats)
                elif save == "ends":
                    held[r] = (step, ps[r])
                go.append(r)
            for r in rs:
                if r not in go:
                    write_held(r)  # the run ends here: keep its latest matrices
        finally:
            t_ck.append(time.perf_counter() - t0)
        return go

    if R == 1:
        run_epoch = functools.partial(epoch_fn, **static)
        state, (Xs, Ts, ys) = states[0], arrays[0]
        fold = jax.random.fold_in
        skeys = shuffle_keys[0]
        take = lambda st, r: st
        arrays_of = lambda r: (Xs, Ts, ys)
    else:
        run_epoch = jax.vmap(functools.partial(epoch_fn, **static), in_axes=(0, 0, 0, 0, 0, None, None))
        state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
        Xs, Ts, ys = (jnp.stack([a[j] for a in arrays]) for j in range(3))
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        skeys = jnp.stack(shuffle_keys)
        take = lambda st, r: jax.tree_util.tree_map(lambda a: a[r], st)
        arrays_of = lambda r: (Xs[r], Ts[r], ys[r])
    del states, arrays

    alive = checkpoint(alive, state, 0)
    report("training", 0)
    step = 0
    for target in cks[1:]:
        while step < target and alive:
            e, i0 = divmod(step, spe)
            i1 = min(spe, i0 + (target - step))
            t0 = time.perf_counter()
            # runs that diverged keep computing (harmless NaNs) so the batch keeps its shape
            state, losses = run_epoch(state, Xs, Ts, ys, fold(skeys, e), i0, i1)
            losses = np.asarray(losses).reshape(R, spe)
            prog.train_calls.append((i1 - i0, time.perf_counter() - t0))
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
            for r in alive:
                if r not in still:
                    write_held(r)
            alive = still
            report("training", step)
        if alive:
            alive = checkpoint(alive, state, target)
            report("training", step)
    wall = time.perf_counter() - t_start
    for o in outs:
        # metrics: every checkpoint's measuring (its Grams, statistics and files), the
        # random-W draws (once per run, inside the first) included
        o.seconds = {"total": wall, "train": sum(s for _, s in prog.train_calls), "metrics": sum(t_ck),
                     "baseline_draws": t_base,
                     "metrics_per_checkpoint": t_ck}
    return outs
