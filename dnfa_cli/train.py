"""The Optax training loop: epochs, steps, optimizer state, seed batching; at each
checkpoint it hands the parameters to measure.Meter.

An epoch is shuffled once (epoch_order) and stepped in calls of one jit-compiled function
(steps_fn): a `lax.scan` over a fixed number of the epoch's minibatch slots (chunk_steps:
the whole epoch, or as much of it as takes about CALL_SECONDS, so Ctrl-C, honoured between
calls, is prompt), each step gated by `lax.cond` on [start, stop) so a checkpoint can fall
inside a call without a second compilation; an epoch of one call is epoch_fn, the same
scan with the shuffle drawn inside it. The calls do epoch_fn's arithmetic step for
step (tests/test_stopping.py). Optimizer hyperparameters live in the optimizer state
(`optax.inject_hyperparams`), so runs that differ in lr / momentum / weight decay share
one compiled program, and the same function is `jax.vmap`ped over seeds (seed batching).

While the loader threads are still reading the programs a run will call
(programs.loading: a warm run's first seconds), its checkpoints are held and it trains on
(_Loop.checkpoint); they are measured, in order, once the loaders are done.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import grams
from . import measure as ms
from . import model as mdl
from .config import Config
from .data import Dataset, device_arrays
from .programs import loading, stored
from .progress import Progress, call_sizes
from .rules import batch_compatible, checkpoint_steps, seed_free, steps_per_epoch, total_steps  # noqa: F401


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


def _masked(opt: optax.GradientTransformation, trains: tuple | None) -> optax.GradientTransformation:
    """`opt` over the layers that train (`trains[l]` False: layer l is frozen, train.freeze):
    the frozen layers have no optimizer state and their gradients pass through untouched,
    for epoch_fn to discard. None: every layer trains (no wrapper, the program of a run
    without train.freeze)."""
    return opt if trains is None else optax.masked(opt, list(trains))


@functools.lru_cache(maxsize=None)
def make_optimizer(name: str, dtype: str, trains: tuple | None = None) -> optax.GradientTransformation:
    """The transformation for `name`; its numbers are placeholders, real ones come from
    `init_opt_state` (inject_hyperparams reads them from the state at every update)."""
    return _masked(_injected(name, dtype, _hyperparams(name, 0.0, 0.0, 0.0)), trains)


def trains_of(cfg: Config, n_layers: int) -> tuple | None:
    """Which layers train: None if all do, else a bool per layer (train.freeze is 1-based)."""
    frozen = set(cfg.train.freeze)
    return tuple(l + 1 not in frozen for l in range(n_layers)) if frozen else None


def init_opt_state(cfg: Config, params):
    tc = cfg.train
    hp = _hyperparams(tc.optimizer, tc.lr, tc.momentum, tc.weight_decay)
    dt = jnp.dtype(tc.dtype)
    return _opt_init(params, {k: np.asarray(v, dt) for k, v in hp.items()}, name=tc.optimizer, dtype=tc.dtype,
                     trains=trains_of(cfg, len(params)))


@stored(static=("name", "dtype", "trains"))
def _opt_init(params, hp, *, name, dtype, trains):
    """optax's init as one kept program (its zeros and casts were a dozen eager ops)."""
    return _masked(_injected(name, dtype, hp), trains).init(params)


# ----------------------------------------------------------------------------- epoch
def epoch_order(key, n: int, batch_size: int):
    """The epoch's minibatches as (slots, batch_size) sample indices, from the shuffle
    drawn from `key`; the last slot holds the n mod batch_size leftover samples (as torch's
    DataLoader), padded with index 0."""
    spe = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    return jnp.concatenate([perm, jnp.zeros((spe * batch_size - n,), perm.dtype)]).reshape(spe, batch_size)


def epoch_weights(n: int, batch_size: int, dtype):
    """(slots, batch_size): 1 for the samples of epoch_order's slots, 0 for its padding."""
    spe = -(-n // batch_size)
    return jax.device_put(np.concatenate([np.ones((n,), dtype), np.zeros((spe * batch_size - n,), dtype)]).reshape(spe, batch_size))


def _gated_steps(state: TrainState, X, T, y, idx, wts, slots, start, stop, *, activation, loss, kind, optimizer,
                 trains):
    """A `lax.scan` over the epoch `slots` (indices into idx / wts), each step gated by
    `lax.cond` on [start, stop); returns the new state and the slots' minibatch losses (0
    outside [start, stop)). `trains` (trains_of): the frozen layers keep the very arrays
    they came with, bit for bit, whatever the optimizer would have done to them."""
    opt = make_optimizer(optimizer, str(X.dtype), trains)

    def loss_fn(params, i):
        b = idx[i]
        f = mdl.forward(params, X[b], activation)
        w = wts[i]
        return jnp.sum(w * mdl.per_example_loss(f, T[b], y[b], loss, kind)) / jnp.sum(w)

    def step(st: TrainState, i):
        lval, g = jax.value_and_grad(loss_fn)(st.params, i)
        upd, opt_state = opt.update(g, st.opt_state, st.params)
        new = optax.apply_updates(st.params, upd)
        if trains is not None:
            new = [n if t else old for n, old, t in zip(new, st.params, trains)]
        return TrainState(new, opt_state), lval

    def body(st, i):
        active = (i >= start) & (i < stop)
        return jax.lax.cond(active, step, lambda s, i: (s, jnp.zeros((), X.dtype)), st, i)

    return jax.lax.scan(body, state, slots)


@stored(static=("activation", "loss", "kind", "optimizer", "batch_size", "trains"))
def epoch_fn(state: TrainState, X, T, y, key, start, stop, *, activation, loss, kind, optimizer, batch_size,
             trains=None):
    """Steps [start, stop) of the epoch whose shuffle is drawn from `key`, as one program
    over every slot of the epoch; returns the new state and the epoch's minibatch losses
    (0 for slots outside [start, stop)). The training loop runs the same steps in bounded
    calls of steps_fn."""
    n = X.shape[0]
    idx, wts = epoch_order(key, n, batch_size), epoch_weights(n, batch_size, X.dtype)
    return _gated_steps(state, X, T, y, idx, wts, jnp.arange(idx.shape[0]), start, stop, activation=activation,
                        loss=loss, kind=kind, optimizer=optimizer, trains=trains)


@stored(static=("activation", "loss", "kind", "optimizer", "steps", "trains"))
def steps_fn(state: TrainState, X, T, y, idx, wts, first, start, stop, *, activation, loss, kind, optimizer, steps,
             trains=None):
    """Slots [first, first + steps) of the epoch whose minibatches are `idx` (epoch_order)
    and `wts` (epoch_weights), each stepped if in [start, stop): epoch_fn's arithmetic,
    step for step, in a call whose length is bounded by `steps` rather than the epoch's
    (one compiled program per `steps`). Returns the new state and the slots' losses."""
    return _gated_steps(state, X, T, y, idx, wts, first + jnp.arange(steps), start, stop, activation=activation,
                        loss=loss, kind=kind, optimizer=optimizer, trains=trains)


# What one steps_fn call should take: short enough that Ctrl-C, honoured between calls, is
# prompt; long enough that the per-call cost (dispatch, syncing the losses) is lost in it.
CALL_SECONDS = 0.5
# a step's cost, estimated: a fixed part in seconds (the scan and cond around it, the small
# ops) and the multiply-adds of the forward and backward passes at a rate per second
# (CPU: as bench/train_steps.py measured on 2 cores; other devices: a guess, faster)
_STEP_COST = {"cpu": (1e-5, 2e9)}
_STEP_COST_ACCEL = (1e-5, 2e11)


def chunk_steps(sizes: list[int], batch_size: int, spe: int, backend: str | None = None) -> int:
    """The slots of each training call: the epoch's `spe` split evenly into as few calls as
    keep each under CALL_SECONDS by the cost estimate (the whole epoch when it does)."""
    fixed, rate = _STEP_COST.get(backend or jax.default_backend(), _STEP_COST_ACCEL)
    macs = batch_size * sum(a * b for a, b in zip(sizes, sizes[1:]))
    most = max(1, int(CALL_SECONDS / (fixed + 3 * macs / rate)))
    calls = -(-spe // most)
    return -(-spe // calls)


# ----------------------------------------------------------------------------- state
def sizes_for(cfg: Config, ds: Dataset) -> list[int]:
    return mdl.layer_sizes(ds.d, cfg.model.hidden(), ds.c)


def init_state(cfg: Config, ds: Dataset, donor=None) -> TrainState:
    """The run's initial parameters and optimizer state; with model.init_from, its layers
    transplanted from `donor`, the source run's final parameters (engine.donor)."""
    k_init, _, _ = mdl.run_keys(cfg.seed)
    mc = cfg.model
    params = mdl.init_params(k_init, sizes_for(cfg, ds), bias=mc.bias, init=mc.init,
                             init_scale=mc.init_scale, dtype=jnp.dtype(cfg.train.dtype))
    if mc.tied_init:
        params = mdl.tie_hidden(params)
    if mc.init_from is not None:
        if donor is None:
            raise ValueError("model.init_from: the source run's parameters were not given")
        params = mdl.transplant(params, donor, mc.init_from.layers, mc.init_from.keep, mdl.transplant_key(cfg.seed))
    return TrainState(params, init_opt_state(cfg, params))


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
          on_progress: Callable[[Progress], None] | None = None, donor=None) -> Outcome:
    """Train one run, measuring at every checkpoint. `on_checkpoint(record, params)` is
    called as each is measured, `on_matrices(step, mats)` with the layer matrices of the
    checkpoints that metrics.save_matrices keeps, `on_progress(Progress)` after each epoch
    segment and before and after each checkpoint's measuring. `donor`: the parameters a
    transplant takes its layers from (init_state)."""
    return train_batched([cfg], [ds], on_checkpoint=[on_checkpoint], on_matrices=[on_matrices],
                         on_progress=on_progress, donors=[donor])[0]


def train_batched(cfgs: list[Config], dss: list[Dataset], *, on_checkpoint=None, on_matrices=None,
                  on_progress=None, donors=None) -> list[Outcome]:
    """Train runs that differ only in seed as one `jax.vmap`ped program (a single run is
    the unbatched case), and measure them together at each checkpoint. Each run keeps its
    own keys, data, divergence status and transplant donor (`donors`, init_state)."""
    if not batch_compatible(cfgs):
        raise ValueError("train_batched: runs in one batch must differ only in seed")
    return _Loop(cfgs, dss, on_checkpoint, on_matrices, on_progress, donors or [None] * len(cfgs)).run()


@stored
def _fold_in(key, e):
    """jax.random.fold_in as a kept program (the epoch's shuffle key)."""
    return jax.random.fold_in(key, e)


class _Batch:
    """A seed batch's training state and data: one run's as they are, several stacked along
    a leading axis and stepped by the vmapped steps function, `chunk` epoch slots a call."""

    def __init__(self, cfgs: list[Config], dss: list[Dataset], donors: list, chunk: int):
        tc, mc = cfgs[0].train, cfgs[0].model
        dt = jnp.dtype(tc.dtype)
        states = [init_state(c, d, donor) for c, d, donor in zip(cfgs, dss, donors)]
        self.params0 = [s.params for s in states]
        arrays = [device_arrays(d.X_train, d.T_train, d.y_train, dtype=dt) for d in dss]
        keys = [mdl.run_keys(c.seed)[1] for c in cfgs]
        n, bs = len(dss[0].X_train), tc.batch_size
        self.spe, self.chunk, self.wts = steps_per_epoch(n, bs), chunk, epoch_weights(n, bs, dt)
        order = functools.partial(epoch_order, n=n, batch_size=bs)
        kw = dict(activation=mc.activation, loss=tc.loss, kind=dss[0].kind, optimizer=tc.optimizer,
                  trains=trains_of(cfgs[0], len(states[0].params)))
        step = functools.partial(steps_fn, steps=chunk, **kw)  # vmapped: jitted as before (programs.Stored)
        whole = functools.partial(epoch_fn, batch_size=bs, **kw)
        self.R, self._e, self._idx = len(cfgs), None, None
        if self.R == 1:
            self._steps, self._order, self._fold, self.skeys = step, jax.jit(order), _fold_in, keys[0]
            self._whole = whole
            self.state, self.data = states[0], arrays[0]
        else:
            self._steps = jax.vmap(step, in_axes=(0, 0, 0, 0, 0, None, None, None, None))
            self._whole = jax.vmap(whole, in_axes=(0, 0, 0, 0, 0, None, None))
            self._order = jax.jit(jax.vmap(order))
            self._fold, self.skeys = jax.vmap(jax.random.fold_in, in_axes=(0, None)), jnp.stack(keys)
            self.state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
            self.data = tuple(jnp.stack([a[j] for a in arrays]) for j in range(3))

    def epoch(self, e: int, i0: int, i1: int) -> np.ndarray:
        """Steps [i0, i1) of epoch e for every run, i1 - i0 <= chunk, in one call; their
        minibatch losses, (runs, i1 - i0). The epoch's shuffle is drawn once, at its first call;
        an epoch of one call is epoch_fn's program, the shuffle drawn inside it (one dispatch
        the less: bench/train_steps.py)."""
        if self.chunk == self.spe:
            self.state, losses = self._whole(self.state, *self.data, self._fold(self.skeys, np.uint32(e)), i0, i1)
            return np.asarray(losses).reshape(self.R, -1)[:, i0:i1]
        if self._e != e:
            self._e, self._idx = e, None  # the previous epoch's order goes before the next is made
            self._idx = self._order(self._fold(self.skeys, np.uint32(e)))
        first = min(i0, self.spe - self.chunk)  # the call's slots stay inside the epoch
        self.state, losses = self._steps(self.state, *self.data, self._idx, self.wts, first, i0, i1)
        return np.asarray(losses).reshape(self.R, -1)[:, i0 - first:i1 - first]

    def params(self, r: int):
        """Run r's slice of the batch's parameters."""
        return self.state.params if self.R == 1 else jax.tree_util.tree_map(lambda a: a[r], self.state.params)

    def arrays_of(self, r: int) -> tuple:
        return self.data if self.R == 1 else tuple(a[r] for a in self.data)


HOLD_BYTES = 64 * 2**20  # parameters the held checkpoints may keep alive in all (_Loop.checkpoint)


class _Loop:
    """train_batched's state: the batch, the runs still alive, their outcomes, the progress,
    the checkpoints held for measuring."""

    def __init__(self, cfgs, dss, on_checkpoint, on_matrices, on_progress, donors):
        cfg0, ds0 = cfgs[0], dss[0]
        n = len(ds0.X_train)
        self.spe = steps_per_epoch(n, cfg0.train.batch_size)
        total = total_steps(cfg0, n)
        self.cks = checkpoint_steps(cfg0, total)
        sizes = sizes_for(cfg0, ds0)
        method = grams.choose_method(sizes, cfg0.metrics.jacobian)
        self.t_start = time.perf_counter()
        self.chunk = chunk_steps(sizes, cfg0.train.batch_size, self.spe)
        self.batch = _Batch(cfgs, dss, donors, self.chunk)
        self.meter = ms.Meter(cfgs, dss, self.batch.params0, spe=self.spe, total=total, method=method,
                              arrays_of=self.batch.arrays_of, on_checkpoint=on_checkpoint, on_matrices=on_matrices)
        self.outs = [Outcome("ok", info={"total_steps": total, "steps_per_epoch": self.spe, "jacobian": method,
                                         "n_samples": int(len(s)), "sizes": sizes, "checkpoint_steps": self.cks})
                     for s in self.meter.subsets]
        self.alive = list(range(len(cfgs)))
        self.held: list = []  # (step, {run: its parameters}) of the checkpoints not yet measured
        self.held_bytes = 0
        self.measuring = False  # inside measure_held
        self.t_ck: list[float] = []  # measuring seconds of each checkpoint (the whole batch's)
        self.prog = Progress(step=0, total=total, checkpoints=len(self.cks), calls=call_sizes(self.cks, self.spe, self.chunk),
                             checkpoint_seconds=self.t_ck)
        self.on_progress = on_progress

    def run(self) -> list[Outcome]:
        try:
            self.checkpoint(0)
            self.report("training", 0)
            step = 0
            for target in self.cks[1:]:
                while step < target and self.alive:
                    step = self.segment(step, target)
                    self.report("training", step)
                if self.alive:
                    self.checkpoint(target)
                    self.report("training", step)
        except Exception:
            # measuring at once, the held checkpoints came first: they are measured now (an
            # error of theirs, a full disk say, is the one raised, as it was then), and where
            # they ended every run, the run would have stopped there, before this
            if self.measuring or not self.held:
                raise
            self.measure_held()
            if self.alive:
                raise
        return self.finish()

    def report(self, phase: str, step: int) -> None:
        p = self.prog
        p.phase, p.step = phase, step
        p.checkpoint = len(self.t_ck) + (phase == "measuring")
        if self.on_progress:
            self.on_progress(p)

    def segment(self, step: int, target: int) -> int:
        """One call of the steps function from `step` towards `target` (cut at the epoch's
        end and at the call's length); runs whose loss went non-finite are diverged.
        Returns the step reached."""
        e, i0 = divmod(step, self.spe)
        i1 = min(self.spe, i0 + (target - step), i0 + self.chunk)
        t0 = time.perf_counter()
        # runs that diverged keep computing (harmless NaNs) so the batch keeps its shape
        losses = self.batch.epoch(e, i0, i1)
        self.prog.train_calls.append((i1 - i0, time.perf_counter() - t0))
        if self.held and (not loading() or not np.all(np.isfinite(losses))):
            self.measure_held()  # a diverged run's checkpoints before it, as if measured then
        still = []
        for r in self.alive:
            lv = losses[r]
            if np.all(np.isfinite(lv)):
                still.append(r)
                continue
            bad = int(np.argmin(np.isfinite(lv)))
            self.outs[r].status = "diverged"
            self.outs[r].error = f"loss became {lv[bad]} at step {step + bad + 1} (epoch {e + 1})"
        for r in self.alive:
            if r not in still:
                self.meter.end(r)
        self.alive = still
        return step + i1 - i0

    def checkpoint(self, step: int) -> None:
        """Checkpoint `step` of the runs alive: measured now, or held while the loader threads
        are still reading the run's programs (programs.loading; HOLD_BYTES of parameters at
        most), and the run trains on. A held checkpoint keeps the parameters of its step:
        device arrays no later step writes to (nothing is donated), so nothing is copied.
        Held checkpoints are measured in order once the loaders are done (at the next call's
        end), before a diverged loss is acted on, before an error of the loop is raised
        (run), and at the run's end: each record, status, error and file is the one
        measuring at once gives (tests/test_train.py); only when it is written moves. A run
        that a held checkpoint ends has trained on meanwhile, which is not recorded."""
        params = {r: self.batch.params(r) for r in self.alive}
        self.held.append((step, params))
        self.held_bytes += sum(a.nbytes for a in jax.tree_util.tree_leaves(params))
        if not loading() or self.held_bytes > HOLD_BYTES:
            self.measure_held()

    def measure_held(self) -> None:
        """Measure the held checkpoints, in order, each of the runs alive at it."""
        self.measuring = True
        try:
            while self.held:
                step, params = self.held.pop(0)
                self._measure(step, {r: p for r, p in params.items() if r in self.alive})
        finally:
            self.measuring = False
        self.held_bytes = 0

    def _measure(self, step: int, params: dict) -> None:
        """Measure `params` ({run: its parameters}) at `step`; runs that stop here get their
        status."""
        if not params:
            return
        self.report("measuring", step)
        t0 = time.perf_counter()
        try:
            go, ended = self.meter.checkpoint(params, step)
        finally:
            self.t_ck.append(time.perf_counter() - t0)
            self.prog.measured = step
        for r, rec in go.items():
            self.outs[r].checkpoints.append(rec)
        for r, why in ended.items():
            self.outs[r].status, self.outs[r].error, self.outs[r].traceback = why
        self.alive = [r for r in self.alive if r not in ended]

    def finish(self) -> list[Outcome]:
        if self.held:
            step = self.prog.step
            self.measure_held()
            self.report("training", step)  # the progress line of the last measured
        wall = time.perf_counter() - self.t_start
        for o in self.outs:
            # metrics: every checkpoint's measuring (its Grams, statistics and files), the
            # random-W draws (once per run, inside the first) included
            o.seconds = {"total": wall, "train": sum(s for _, s in self.prog.train_calls), "metrics": sum(self.t_ck),
                         "baseline_draws": self.meter.baseline_seconds, "metrics_per_checkpoint": self.t_ck}
        return self.outs
