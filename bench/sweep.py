"""Runs per minute of the ways to run many trainings (issue 3), side by side in one
invocation, each into a fresh runs directory:

  shell loop       `for f in runs/*.yaml; do dnfa train $f; done` (what published scripts do)
  sweep w1         dnfa sweep --workers 1 --seed-batch off
  sweep w2         dnfa sweep --workers 2 --seed-batch off
  sweep w2 batch   dnfa sweep --workers 2 --seed-batch on
  sweep (default)  dnfa sweep (workers = usable cores, --seed-batch auto)

on 16 small runs (width 128, 2 hidden layers, 2000 samples of monomial, 20 epochs,
4 checkpoints; 4 activations x 4 seeds) and 8 medium ones (width 512; 2 x 4).

    python bench/sweep.py [--only small|medium] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASE = {
    "data": {"task": "monomial", "d": 100, "n_train": 2000, "n_test": 500},
    "model": {"depth": 2, "activation": "relu"},
    "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "epochs": 20},
    "metrics": {"checkpoints": 4, "samples": 1000},
}
SETS = {
    "small": {"width": 128, "activations": ["relu", "tanh", "gelu", "silu"], "seeds": [0, 1, 2, 3]},
    "medium": {"width": 512, "activations": ["relu", "tanh"], "seeds": [0, 1, 2, 3]},
}


def write_set(d: Path, name: str) -> tuple[Path, list[Path]]:
    s = SETS[name]
    cfg = {"name": f"bench_{name}", **BASE, "model": {**BASE["model"], "width": s["width"]}}
    sweep_file = d / f"{name}.yaml"
    sweep_file.write_text(yaml.safe_dump({**cfg, "sweep": {"method": "grid", "parameters": {
        "model.activation": {"values": s["activations"]}, "seed": {"values": s["seeds"]}}}}))
    singles = []
    for a in s["activations"]:
        for seed in s["seeds"]:
            p = d / f"{name}_{a}_{seed}.yaml"
            p.write_text(yaml.safe_dump({**cfg, "seed": seed, "model": {**cfg["model"], "activation": a}}))
            singles.append(p)
    return sweep_file, singles


def dnfa(*args) -> None:
    subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(SETS))
    ap.add_argument("--json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dnfa-bench-"))
    results = {}
    try:
        print(f"cores usable: {len(os.sched_getaffinity(0))}")
        for name in ([a.only] if a.only else list(SETS)):
            sweep_file, singles = write_set(tmp, name)
            n = len(singles)
            ways = {
                "shell loop": lambda r: [dnfa("train", f, "--runs-dir", r) for f in singles],
                "sweep w1": lambda r: dnfa("sweep", sweep_file, "--workers", 1, "--seed-batch", "off", "--runs-dir", r),
                "sweep w2": lambda r: dnfa("sweep", sweep_file, "--workers", 2, "--seed-batch", "off", "--runs-dir", r),
                "sweep w2 batch": lambda r: dnfa("sweep", sweep_file, "--workers", 2, "--seed-batch", "on", "--runs-dir", r),
                "sweep (default)": lambda r: dnfa("sweep", sweep_file, "--runs-dir", r),
            }
            print(f"\n{name}: {n} runs (width {SETS[name]['width']})")
            for way, fn in ways.items():
                r = tmp / f"runs-{name}-{way.replace(' ', '_').replace('(', '').replace(')', '')}"
                secs = timed(lambda: fn(r))
                ok = sum(json.loads(p.read_text())["status"] == "ok" for p in r.glob("*/result.json"))
                assert ok == n, f"{way}: {ok} of {n} runs ok"
                results[f"{name}/{way}"] = {"seconds": secs, "runs_per_min": 60 * n / secs}
                print(f"  {way:16} {secs:7.1f} s  {60 * n / secs:6.1f} runs/min")
                shutil.rmtree(r)
            base = results[f"{name}/shell loop"]["runs_per_min"]
            print("  relative to the shell loop: " + ", ".join(
                f"{w} {results[f'{name}/{w}']['runs_per_min'] / base:.1f}x" for w in ways if w != "shell loop"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
