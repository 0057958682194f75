"""How long `load_runs` takes on a study the size of study 2 (issue 19: under 2 s on 2 cores,
all checkpoints and layers), and how much memory it holds.

Synthesises a runs directory the way dnfa writes one: 150 runs (optimizer 2 x activation 3
x lr 5 x seed 5) of depth 3 (4 layers), 50 checkpoints each, every layer with 80
statistics, every file of the run-directory contract (config.yaml, env.json, metrics.jsonl,
result.json, a parameter .npz per checkpoint, matrices at the ends; the .npz files hold
small arrays, since load_runs never opens them for their contents). Then times
load_runs(root) in this process: the first call, and the best of --repeat (wall clock, and
the CPU time, which on a shared machine says more).

    python bench/load_runs.py [--runs 150] [--checkpoints 50] [--keys 80] [--keep DIR]
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from dnfa_cli import config, runs

# result.json's per-layer keys as dnfa writes them (bootstrap, published and swap on),
# padded with align_k to the asked count
STATS = ["w_rank", "pearson_a1", "pearson_a05", "cosine_a1", "cosine_a05", "alpha_star", "alpha_star_edge",
         "pearson_alpha_star", "tightness", "iso_dev", "eff_rank", "cond", "tightness_range", "iso_dev_range",
         "eff_rank_range", "cond_range", "w_rank90", "tightness_top", "left_pearson", "rand_pearson_a1",
         "rand_pearson_a1_sd", "rand_spec_pearson_a1", "rand_spec_pearson_a1_sd", "rand_gap_a1", "delta_rel",
         "centered_pearson", "delta_cosine_a1", "delta_pearson_a1", "delta_pearson_a05", "gc_pearson_a1",
         "gc_pearson_a05", "delta_gc_pearson_a05", "delta_gc_cosine_a1", "left_act_pearson", "half_range_pearson",
         *(f"{n}_{e}" for n in ("pearson_a05", "pearson_a1", "tightness_range") for e in ("lo", "hi")),
         "published_pearson_a05", "published_gc_pearson_a05", "published_cosine_a1", "published_gc_cosine_a1",
         "swap_pearson_a1", "swap_tightness_range", "swap_spec_pearson_a1", "swap_spec_tightness_range"]


def layer_record(rng, i: int, shape, trivial: bool, n_keys: int) -> dict:
    names = STATS + [f"align_{k}" for k in range(1, max(1, n_keys - 3 - len(STATS)) + 1)]
    vals = rng.random(len(names))
    rec = {"layer": i, "shape": list(shape), "trivial": trivial}
    for name, x in zip(names, vals):
        rec[name] = int(x * 100) if name in ("w_rank", "w_rank90") else (None if x < 0.03 else float(x))
    return rec


def write_run(root: Path, cfg: config.Config, rng, n_ck: int, n_keys: int) -> None:
    d = root / cfg.run_id
    (d / "checkpoints").mkdir(parents=True)
    c = cfg.to_dict()
    widths = [c["data"]["d"]] + [c["model"]["width"]] * c["model"]["depth"] + [1]
    steps = sorted({0, *np.unique(np.geomspace(1, 5000, n_ck - 1).astype(int)).tolist()})
    steps = (steps + list(range(5001, 5001 + n_ck)))[:n_ck]
    cks = []
    for s in steps:
        layers = [layer_record(rng, i + 1, (widths[i + 1], widths[i]), i == len(widths) - 2, n_keys)
                  for i in range(len(widths) - 1)]
        cks.append({"step": s, "epoch": s / 50, "train_loss": float(rng.random()), "test_loss": float(rng.random()),
                    "train_acc": float(rng.random()), "test_acc": float(rng.random()), "layers": layers})
    (d / "config.yaml").write_text(config.config_to_yaml(cfg))
    (d / "env.json").write_text(json.dumps({"time": "2026-12-01T00:00:00+00:00", "host": "bench"}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(ck) + "\n" for ck in cks))
    small = {f"{w}{i}": np.zeros((4, 4), np.float32) for i in range(1, len(widths)) for w in "Wb"}
    for s in steps:
        np.savez(d / "checkpoints" / f"step_{s:07d}.npz", **small)
    for s in (steps[0], steps[-1]):
        np.savez(d / "checkpoints" / f"matrices_{s:07d}.npz", nfm_1=np.zeros((4, 4), np.float32))
    result = {"schema": config.SCHEMA, "run_id": cfg.run_id, "status": "ok", "error": None, "config": c,
              "created": "2026-12-01T00:00:00+00:00", "finished": "2026-12-01T00:01:00+00:00",
              "seconds": {"total": 60.0, "train": 20.0, "metrics": 40.0}, "info": {"checkpoint_steps": steps},
              "checkpoints": cks, "files": runs.manifest(d)}
    (d / "result.json").write_text(json.dumps(result, indent=1))


def synthesise(root: Path, n_runs: int, n_ck: int, n_keys: int) -> None:
    base = {"name": "bench", "data": {"task": "monomial", "d": 100, "n_train": 2000, "n_test": 1000},
            "model": {"depth": 3, "width": 256}, "train": {"epochs": 100}, "metrics": {"checkpoints": n_ck - 1}}
    grid = itertools.product(("sgd", "adam"), ("relu", "tanh", "gelu"), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), range(5))
    rng = np.random.default_rng(0)
    for opt, act, lr, seed in itertools.islice(grid, n_runs):
        cfg = config.validate({**base, "seed": seed, "model": {**base["model"], "activation": act},
                               "train": {**base["train"], "optimizer": opt, "lr": lr}})
        write_run(root, cfg, rng, n_ck, n_keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=150)
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--keys", type=int, default=80, help="result.json keys per layer")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the runs here and keep them (default: a temp dir, removed)")
    a = ap.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="dnfa-bench-load-runs-"))
    try:
        if not (root.exists() and any(root.iterdir())):
            t = time.perf_counter()
            synthesise(root, a.runs, a.checkpoints, a.keys)
            print(f"synthesised {a.runs} runs x {a.checkpoints} checkpoints x 4 layers x {a.keys} keys in "
                  f"{time.perf_counter() - t:.1f} s: {sum(f.stat().st_size for f in root.rglob('result.json')) / 1e6:.0f} MB "
                  f"of result.json in {root}")
        t = time.perf_counter()
        import pandas  # noqa: F401 - its import is paid once per process, timed apart

        print(f"import pandas: {time.perf_counter() - t:.2f} s")
        from dnfa_cli import load_runs

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times, cpu = [], []
        for _ in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            df = load_runs(root)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"load_runs: {df.shape[0]} rows x {df.shape[1]} columns; first {times[0]:.2f} s, best of {a.repeat} "
              f"{min(times):.2f} s (CPU {min(cpu):.2f} s); the frame {df.memory_usage(deep=True).sum() / 1e6:.0f} MB, "
              f"peak RSS grew {(rss - rss0) / 1e3:.0f} MB")
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
