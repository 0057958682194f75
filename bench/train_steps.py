"""Training speed, steps per second, of whole-epoch calls (train.epoch_fn: one compiled
call per epoch, as dnfa trained before issue 21.6) against the bounded calls the training
loop makes now (train._Batch.epoch: train.chunk_steps slots a call, the epoch shuffled
once; an epoch that fits in one call is epoch_fn's call, so the quickstart's two columns
run one program and differ by the machine's noise only), on the quickstart config and on
batch-1 configs with many samples. Training only
(no checkpoints), compiling excluded (one call of each first); each is timed `--repeats`
times, alternating, and the best kept. Also prints each config's call length as
estimated (train.chunk_steps) and as measured, to check train._STEP_COST.

    nice -n 10 python bench/train_steps.py [--epochs-quick 50] [--n-large 200000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import dnfa_cli  # noqa: F401
from dnfa_cli import config, data, train
from dnfa_cli import model as mdl


def configs(a) -> dict:
    quick = config.load_config("configs/quickstart.yaml", [f"train.epochs={a.epochs_quick}"]).base
    large = {"name": "large", "data": {"task": "monomial", "d": 20, "coords": [0, 1], "n_train": a.n_large, "n_test": 100},
             "model": {"depth": 2, "width": 128, "activation": "relu", "bias": False},
             "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 1, "epochs": 1}, "metrics": {"checkpoints": 0}}
    tiny = {**large, "model": {"depth": 2, "width": 16, "activation": "tanh"}}
    return {"quickstart": quick, "batch-1, width 128": config.validate(large), "batch-1, width 16": config.validate(tiny)}


def whole(cfg, ds, epochs: int) -> float:
    """Seconds for `epochs` epochs of epoch_fn calls, as the loop made them before."""
    tc, mc = cfg.train, cfg.model
    st = train.init_state(cfg, ds)
    arrays = tuple(jax.numpy.asarray(a, tc.dtype if a is not ds.y_train else None) for a in (ds.X_train, ds.T_train, ds.y_train))
    spe = train.steps_per_epoch(len(ds.X_train), tc.batch_size)
    key = mdl.run_keys(cfg.seed)[1]
    fn = lambda st, e: train.epoch_fn(st, *arrays, jax.random.fold_in(key, e), 0, spe, activation=mc.activation,
                                      loss=tc.loss, kind=ds.kind, optimizer=tc.optimizer, batch_size=tc.batch_size)
    st, L = fn(st, 0)
    np.asarray(L)  # compiled
    t = time.perf_counter()
    for e in range(epochs):
        st, L = fn(st, e)
        np.asarray(L)  # the loop synced once per call
    return time.perf_counter() - t


def chunked(cfg, ds, epochs: int) -> tuple[float, int, int]:
    """Seconds for `epochs` epochs as the loop runs them now; the call length; the calls."""
    spe = train.steps_per_epoch(len(ds.X_train), cfg.train.batch_size)
    chunk = train.chunk_steps(train.sizes_for(cfg, ds), cfg.train.batch_size, spe)
    b = train._Batch([cfg], [ds], [None], chunk)
    b.epoch(0, 0, min(chunk, spe))  # compiled
    calls, t = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        i = 0
        while i < spe:
            i1 = min(spe, i + chunk)
            b.epoch(e, i, i1)
            i, calls = i1, calls + 1
    return time.perf_counter() - t, chunk, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs-quick", type=int, default=50)
    ap.add_argument("--n-large", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"backend {jax.default_backend()}, CALL_SECONDS {train.CALL_SECONDS}; best of {a.repeats}")
    print(f"{'config':>20} {'steps':>8} {'chunk':>7} {'calls':>6} {'whole steps/s':>14} {'chunked steps/s':>16} "
          f"{'ratio':>6} {'s/call':>7}")
    for name, cfg in configs(a).items():
        ds = data.make_dataset(cfg)
        epochs = cfg.train.epochs
        steps = epochs * train.steps_per_epoch(len(ds.X_train), cfg.train.batch_size)
        tw, tc = [], []
        for _ in range(a.repeats):
            tw.append(whole(cfg, ds, epochs))
            t, chunk, calls = chunked(cfg, ds, epochs)
            tc.append(t)
        w, c = steps / min(tw), steps / min(tc)
        print(f"{name:>20} {steps:8d} {chunk:7d} {calls:6d} {w:14.0f} {c:16.0f} {c / w:6.3f} {min(tc) / calls:7.3f}")


if __name__ == "__main__":
    main()
