"""Stopping a run (issue 21.6): training in bounded calls changes no number, and Ctrl-C
ends `dnfa train` promptly, inside a long epoch and inside a compile."""
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnfa_cli import config, data, runs, train
from dnfa_cli import measure as ms
from dnfa_cli import model as mdl


# ----------------------------------------------------------------------------- the reference
@functools.partial(jax.jit, static_argnames=("activation", "loss", "kind", "optimizer", "batch_size", "trains"))
def main_epoch_fn(state, X, T, y, key, start, stop, *, activation, loss, kind, optimizer, batch_size, trains=None):
    """dnfa's epoch function before bounded calls (main at 4e2a41e), verbatim: one program
    over every slot of the epoch. The study in progress was trained with it."""
    n = X.shape[0]
    spe = -(-n // batch_size)
    pad = spe * batch_size - n
    perm = jax.random.permutation(key, n)
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(spe, batch_size)
    wts = jnp.concatenate([jnp.ones((n,), X.dtype), jnp.zeros((pad,), X.dtype)]).reshape(spe, batch_size)
    opt = train.make_optimizer(optimizer, str(X.dtype), trains)

    def loss_fn(params, i):
        b = idx[i]
        f = mdl.forward(params, X[b], activation)
        w = wts[i]
        return jnp.sum(w * mdl.per_example_loss(f, T[b], y[b], loss, kind)) / jnp.sum(w)

    def step(st, i):
        lval, g = jax.value_and_grad(loss_fn)(st.params, i)
        upd, opt_state = opt.update(g, st.opt_state, st.params)
        new = optax.apply_updates(st.params, upd)
        if trains is not None:
            new = [n if t else old for n, old, t in zip(new, st.params, trains)]
        return train.TrainState(new, opt_state), lval

    def body(st, i):
        active = (i >= start) & (i < stop)
        return jax.lax.cond(active, step, lambda s, i: (s, jnp.zeros((), X.dtype)), st, i)

    return jax.lax.scan(body, state, jnp.arange(spe))


def main_params_at_checkpoints(cfgs, dss) -> list[dict]:
    """Each run's parameters at each checkpoint as main's loop made them: one whole-epoch
    call per segment (epochs cut at the checkpoints), several seeds under jax.vmap."""
    cfg, ds = cfgs[0], dss[0]
    tc = cfg.train
    dt = jnp.dtype(tc.dtype)
    states = [train.init_state(c, d) for c, d in zip(cfgs, dss)]
    arrays = [(jnp.asarray(d.X_train, dt), jnp.asarray(d.T_train, dt), jnp.asarray(d.y_train)) for d in dss]
    keys = [mdl.run_keys(c.seed)[1] for c in cfgs]
    fn = functools.partial(main_epoch_fn, activation=cfg.model.activation, loss=tc.loss, kind=ds.kind,
                           optimizer=tc.optimizer, batch_size=tc.batch_size, trains=train.trains_of(cfg, len(states[0].params)))
    R = len(cfgs)
    if R > 1:
        fn = jax.vmap(fn, in_axes=(0, 0, 0, 0, 0, None, None))
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        state, keys = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states), jnp.stack(keys)
        arrays = [tuple(jnp.stack([a[j] for a in arrays]) for j in range(3))]
    else:
        fold, state, keys = jax.random.fold_in, states[0], keys[0]
    spe = train.steps_per_epoch(len(ds.X_train), tc.batch_size)
    total = train.total_steps(cfg, len(ds.X_train))
    cks = train.checkpoint_steps(cfg, total)
    take = lambda st: [st.params if R == 1 else jax.tree_util.tree_map(lambda a: a[r], st.params) for r in range(R)]
    out = [{0: p} for p in take(state)]
    step = 0
    for target in cks[1:]:
        while step < target:
            e, i0 = divmod(step, spe)
            i1 = min(spe, i0 + target - step)
            state, _ = fn(state, *arrays[0], fold(keys, e), i0, i1)
            step += i1 - i0
        for r, p in enumerate(take(state)):
            out[r][target] = p
    return out


def _cfg(**over):
    raw = {
        "name": "t", "seed": 3,
        "data": {"task": "monomial", "d": 4, "n_train": 23, "n_test": 7, "noise": 0.1},
        "model": {"depth": 2, "width": 6, "activation": "tanh", "bias": True, "init": "torch"},
        "train": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.01, "batch_size": 4, "epochs": 4,
                  "dtype": "float32"},
        "metrics": {"checkpoints": [3, 8, 14, 19], "samples": 23},
    }
    for k, v in over.items():
        config._set_dotted(raw, k, v)
    return config.validate(raw)


def _record_params(monkeypatch) -> list[dict]:
    """Checkpoints that only keep each run's parameters ({step: params} per run), instead of
    measuring them: what this file tests is the training."""
    got = [{}, {}]

    def checkpoint(self, params, step):
        for r, p in params.items():
            got[r][step] = p
        return {r: {"step": step} for r in params}, {}

    monkeypatch.setattr(ms.Meter, "checkpoint", checkpoint)
    return got


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


# 23 samples in batches of 4: 6 slots an epoch (the last of 3), 24 steps, checkpoints inside
# epochs; calls of 4 and 5 slots do not divide the epoch, 1 does (a call of the whole epoch
# is epoch_fn's program itself)
@pytest.mark.parametrize("chunk", [1, 4, 5])
@pytest.mark.parametrize("over", [
    {},
    {"train.optimizer": "sgd", "train.momentum": 0.9, "train.lr": 0.05, "train.dtype": "float64"},
])
def test_bounded_calls_give_mains_numbers_bit_for_bit(monkeypatch, chunk, over):
    cfg = _cfg(**over)
    ds = data.make_dataset(cfg)
    want = main_params_at_checkpoints([cfg], [ds])[0]
    monkeypatch.setattr(train, "chunk_steps", lambda *a, **k: chunk)
    got, calls, real = _record_params(monkeypatch)[0], [], train.steps_fn

    def steps_fn(state, X, T, y, idx, wts, first, start, stop, **k):
        calls.append((k["steps"], stop - start))
        return real(state, X, T, y, idx, wts, first, start, stop, **k)

    monkeypatch.setattr(train, "steps_fn", steps_fn)
    train.train(cfg, ds)
    assert sorted(got) == sorted(want) == [0, 3, 8, 14, 19, 24]
    for s in want:
        assert _same(got[s], want[s]), f"parameters differ at step {s}"
    assert {k for k, _ in calls} == {chunk} and max(n for _, n in calls) <= chunk  # calls of that many slots
    assert sum(n for _, n in calls) == 24 and len(calls) >= 24 / chunk
    assert not _same(got[24], got[19])  # it trained


@pytest.mark.parametrize("chunk", [2, 4])
def test_a_seed_batch_in_bounded_calls_gives_mains_numbers_bit_for_bit(monkeypatch, chunk):
    cfgs = [_cfg(seed=s, **{"train.freeze": [2]}) for s in (3, 11)]
    dss = [data.make_dataset(c) for c in cfgs]
    want = main_params_at_checkpoints(cfgs, dss)
    monkeypatch.setattr(train, "chunk_steps", lambda *a, **k: chunk)
    got = _record_params(monkeypatch)
    train.train_batched(cfgs, dss)
    for r in (0, 1):
        assert sorted(got[r]) == sorted(want[r])
        for s in want[r]:
            assert _same(got[r][s], want[r][s]), f"run {r}: parameters differ at step {s}"
    assert not _same(got[0][24], got[1][24])


def test_call_lengths_bound_the_estimated_seconds_and_split_epochs_evenly():
    # a tiny net: the whole epoch if it is short, else equal calls of at most CALL_SECONDS
    assert train.chunk_steps([2, 4, 1], 1, 100, "cpu") == 100
    fixed, rate = train._STEP_COST["cpu"]
    most = int(train.CALL_SECONDS / (fixed + 3 * 12 / rate))
    k = train.chunk_steps([2, 4, 1], 1, 10 * most + 1, "cpu")  # 11 calls
    assert k == -(-(10 * most + 1) // 11) and k <= most
    # a large step: one slot a call, never none
    assert train.chunk_steps([4096, 4096, 4096], 4096, 50, "cpu") == 1


# ----------------------------------------------------------------------------- Ctrl-C
# two million samples in batches of 1: one epoch is a minute of steps or more, one compiled
# call before bounded calls
LONG_EPOCH = """name: long
data: {task: monomial, d: 1, coords: [0], n_train: 2000000, n_test: 16}
model: {depth: 2, width: 128}
train: {epochs: 1, batch_size: 1}
metrics: {checkpoints: 0, samples: 16, split: test}
"""
TINY = """name: tiny
data: {task: monomial, d: 4, n_train: 64, n_test: 16}
model: {depth: 1, width: 8}
train: {epochs: 3, batch_size: 16}
metrics: {checkpoints: 1, samples: 64}
"""
# SIGINT as in a terminal's foreground (a background job of a script is started ignoring it)
FOREGROUND = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
# `dnfa train` with the watchdog off (a grace of 10^6 s)
NO_WATCHDOG = FOREGROUND + """
import sys
from dnfa_cli import cli, engine
engine.INTERRUPT_GRACE = 1e6
sys.argv[0] = "dnfa"
cli.main()
"""
# `dnfa train` whose first training call is preceded by one XLA call that runs for hours
# (a loop of 10^12 steps): Python cannot raise KeyboardInterrupt until it returns. (A
# compile can be: JAX's compile raises it at once.)
ENDLESS_CALL = FOREGROUND + """
import sys
import jax, jax.numpy as jnp, numpy as np
from dnfa_cli import cli, train
real = train._Batch.epoch
def epoch(self, *a):
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, 10**12, lambda i, x: jnp.sin(x) + 1.0, x)).lower(jnp.ones(8)).compile()
    print("endless call starts", file=sys.stderr, flush=True)
    np.asarray(loop(jnp.ones(8)))
    return real(self, *a)
train._Batch.epoch = epoch
sys.argv[0] = "dnfa"
cli.main()
"""


def _wait_for(path: Path, pattern: str, proc, timeout=300.0) -> bool:
    """Wait until `pattern` (a regex) matches in the file `path`; False if `timeout` passed
    or the process ended first."""
    import re

    t = time.monotonic()
    while time.monotonic() - t < timeout and proc.poll() is None:
        if re.search(pattern, path.read_text()):
            return True
        time.sleep(0.1)
    return False


def _interrupt(tmp_path, argv, ready: str, signals=1, ready_timeout=300.0, env=None):
    """Start `argv` in tmp_path, wait for `ready` on its stderr, send SIGINT `signals` times
    (0.5 s apart); (exit code, seconds from the first SIGINT to the exit, stderr)."""
    err = tmp_path / "err.txt"
    with open(err, "w") as fe:
        p = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fe, env={**os.environ, **(env or {})})
        try:
            assert _wait_for(err, ready, p, ready_timeout), f"{ready!r} never appeared: {err.read_text()}"
            t0 = time.monotonic()
            for k in range(signals):
                if k:
                    time.sleep(0.5)
                p.send_signal(signal.SIGINT)
            try:
                rc = p.wait(timeout=20)  # generous, for a loaded machine; the promise is 5 s
            except subprocess.TimeoutExpired:
                rc = None
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rc, took, err.read_text()


def _interrupted(root: Path, text: str) -> None:
    """The run's directory is there, without result.json, its lock free: `dnfa ls` says
    interrupted, and a rerun trains it again."""
    from dnfa_cli import report

    rid = config.load_config(io_cfg := next(root.parent.glob("*.yaml"))).base.run_id
    assert report.load_run(root, rid).status == "interrupted", (io_cfg, text)


def test_ctrl_c_inside_a_long_epoch_stops_training_between_calls(tmp_path):
    """The watchdog is off here (a grace of 10^6 s): only a return to Python between two
    calls can end the run. The progress ticker names a step inside the epoch once a call
    has returned; with whole-epoch calls none ever does (the step is 0, then 2000000)."""
    (tmp_path / "long.yaml").write_text(LONG_EPOCH)
    rc, took, text = _interrupt(tmp_path, [sys.executable, "-c", NO_WATCHDOG, "train", "long.yaml", "--runs-dir", "runs"],
                                r"training step (?!2000000/)[1-9]\d*/2000000", ready_timeout=300)
    assert rc == 130, (rc, took, text)
    assert "ended at once" not in text  # a KeyboardInterrupt between two calls
    _interrupted(tmp_path / "runs", text)


@pytest.mark.parametrize("signals,why", [(1, "still busy 5 s after Ctrl-C"), (2, "second Ctrl-C")])
def test_ctrl_c_inside_one_endless_call_ends_the_process_after_5_s_or_at_a_second_one(tmp_path, signals, why):
    (tmp_path / "tiny.yaml").write_text(TINY)
    rc, took, text = _interrupt(tmp_path, [sys.executable, "-c", ENDLESS_CALL, "train", "tiny.yaml", "--runs-dir", "runs"],
                                "endless call starts", signals=signals)
    assert rc == 130, (rc, took, text)
    assert f"interrupted: {why}; ended at once" in text
    _interrupted(tmp_path / "runs", text)
