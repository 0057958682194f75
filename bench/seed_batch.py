"""When does training seeds together under jax.vmap pay? Training time only (no metrics)
of R seeds vmapped against the same R one after another, over a range of MLP sizes, on
the cores this process may use. The cut-off in dnfa_cli/sweep.py (multiply-adds per step)
comes from this.

    python bench/seed_batch.py [--seeds 8] [--epochs 20]
    taskset -c 0 python bench/seed_batch.py     # one core, as each of 2 sweep workers has
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import dnfa_cli  # noqa: F401
from dnfa_cli import config, data, train
from dnfa_cli import model as mdl

SHAPES = [(40, [64, 64], 10), (100, [64, 64], 1), (100, [128, 128], 1), (100, [256, 256], 1), (100, [512, 512], 1)]


def cfg_for(d, hidden, c, seed, epochs):
    if c == 10:
        dcfg = {"task": "mnist1d", "n_train": 2000, "n_test": 200}
    else:
        dcfg = {"task": "monomial", "d": d, "n_train": 2000, "n_test": 200}
    return config.validate({"seed": seed, "data": dcfg, "model": {"widths": hidden},
                            "train": {"epochs": epochs, "batch_size": 128, "lr": 0.01}, "metrics": {"checkpoints": 0}})


def time_training(cfgs, dss, batched: bool) -> float:
    """Seconds to train (epochs only, metrics excluded) the runs, vmapped or one by one."""
    import functools

    c0, ds0 = cfgs[0], dss[0]
    static = dict(activation="relu", loss="mse", kind=ds0.kind, optimizer="sgd", batch_size=128)
    spe = train.steps_per_epoch(len(ds0.X_train), 128)
    epochs = c0.train.epochs
    arrays = [(jnp.asarray(d.X_train, jnp.float32), jnp.asarray(d.T_train, jnp.float32), jnp.asarray(d.y_train)) for d in dss]
    states = [train.init_state(c, d) for c, d in zip(cfgs, dss)]
    keys = [mdl.run_keys(c.seed)[1] for c in cfgs]
    if batched:
        fn = jax.vmap(functools.partial(train.epoch_fn, **static), in_axes=(0, 0, 0, 0, 0, None, None))
        st = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
        X, T, y = (jnp.stack([a[j] for a in arrays]) for j in range(3))
        K = jnp.stack(keys)
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        jax.block_until_ready(fn(st, X, T, y, fold(K, 0), 0, spe))  # compile
        t = time.perf_counter()
        for e in range(epochs):
            st, L = fn(st, X, T, y, fold(K, e), 0, spe)
            np.asarray(L)  # the loop syncs once per epoch, as dnfa's does
        return time.perf_counter() - t
    fn = functools.partial(train.epoch_fn, **static)
    jax.block_until_ready(fn(states[0], *arrays[0], keys[0], 0, spe))
    t = time.perf_counter()
    for st, arr, k in zip(states, arrays, keys):
        for e in range(epochs):
            st, L = fn(st, *arr, jax.random.fold_in(k, e), 0, spe)
            np.asarray(L)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    a = ap.parse_args()
    print(f"{a.seeds} seeds, {a.epochs} epochs of 16 steps, batch 128; cores: {len(__import__('os').sched_getaffinity(0))}")
    print(f"{'sizes':>20} {'MACs/step':>10} {'sequential':>11} {'vmapped':>9} {'speed-up':>9}")
    for d, hidden, c in SHAPES:
        cfgs = [cfg_for(d, hidden, c, s, a.epochs) for s in range(a.seeds)]
        dss = [data.make_dataset(x) for x in cfgs]
        sizes = [dss[0].d, *hidden, dss[0].c]
        macs = 128 * 3 * sum(x * y for x, y in zip(sizes[:-1], sizes[1:]))
        seq = time_training(cfgs, dss, batched=False)
        vm = time_training(cfgs, dss, batched=True)
        print(f"{'-'.join(map(str, sizes)):>20} {macs:10.2e} {seq:10.2f}s {vm:8.2f}s {seq / vm:8.2f}x")


if __name__ == "__main__":
    main()
