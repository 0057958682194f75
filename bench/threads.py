"""XLA:CPU's threads and `dnfa train` (issue 22), two measurements, run by hand; numbers go
into the README and the closing note, not into tests.

What one thread costs a run: warm `dnfa train CONFIG --force` with `--threads 1` and with
every core, interleaved (each in a cache of its own, compiled by a first, untimed run), for
each `--set` variant given. Prints the median and the fastest wall seconds, and the median
seconds of training and of measuring from result.json (rules.train_threads is set from
these):

    python bench/threads.py cost configs/quickstart.yaml --rounds 3 --variant "" \
        --variant "model.width=192" --variant "model.width=512"

A sweep, then `dnfa train CONFIG --force` of its base run, for several checkouts, each in a
fresh cache and runs folder, interleaved: how long the train took, whether it added
programs to the store (compiled), and whether its numbers are the sweep's run's bit for bit
(bench/compare_runs.py):

    python bench/threads.py after-sweep configs/quickstart.yaml --code /path/to/old --code . --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from compare_runs import compare_run  # noqa: E402
from interleave import timed  # noqa: E402

DNFA = [sys.executable, "-m", "dnfa_cli.cli"]


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cost(a) -> None:
    code = str(Path(a.code[0] if a.code else ".").resolve())
    modes = {"1 thread": ["--threads", "1"], f"{cores()} threads": ["--threads", str(cores())]}
    with tempfile.TemporaryDirectory() as tmp:
        for v, variant in enumerate(a.variant):
            sets = [x for kv in variant.split() for x in ("--set", kv)]
            rows: dict[str, list] = {m: [] for m in modes}
            for r in range(a.rounds + 1):  # the first round compiles: not counted
                for m, flag in modes.items():
                    env = {"DNFA_CACHE_DIR": str(Path(tmp) / f"cache{v}-{m}")}
                    runs = Path(tmp) / f"runs{v}-{m}"
                    wall, _ = timed([*DNFA, "train", a.config, "--force", "--runs-dir", str(runs), *sets, *flag], code, env)
                    res = json.loads(max(runs.glob("*/result.json"), key=lambda p: p.stat().st_mtime).read_text())
                    if r:
                        rows[m].append((wall, res["seconds"]["train"], res["seconds"]["metrics"]))
            print(f"{a.config} {variant or '(as it is)'}: {a.rounds} warm rounds, median [fastest] wall; "
                  "median train / metrics seconds", flush=True)
            for m, rs in rows.items():
                w, t, k = zip(*rs)
                print(f"  {m:>10}: {statistics.median(w):6.2f} [{min(w):6.2f}] s   train {statistics.median(t):6.2f}"
                      f"   metrics {statistics.median(k):6.2f}", flush=True)


def after_sweep(a) -> None:
    codes = [str(Path(c).resolve()) for c in a.code]
    rows: dict[str, list] = {c: [] for c in codes}
    for r in range(a.rounds):
        for code in codes:
            with tempfile.TemporaryDirectory() as tmp:
                env = {"DNFA_CACHE_DIR": str(Path(tmp) / "cache")}
                sweep_wall, _ = timed([*DNFA, "sweep", a.config, "--runs-dir", str(Path(tmp) / "swept")], code, env)
                store = Path(tmp) / "cache" / "programs"
                before = {f.name for f in store.glob("*.xla")}
                wall, _ = timed([*DNFA, "train", a.config, "--force", "--runs-dir", str(Path(tmp) / "trained")], code, env)
                added = len({f.name for f in store.glob("*.xla")} - before)
                (rid,) = [p.name for p in (Path(tmp) / "trained").iterdir() if (p / "result.json").exists()]
                diffs, _ = compare_run(Path(tmp) / "swept" / rid, Path(tmp) / "trained" / rid)
                rows[code].append((wall, added, len(diffs)))
                print(f"round {r + 1} {code}: sweep {sweep_wall:.2f} s, then train {wall:.2f} s, "
                      f"{added} programs added, {len(diffs)} numbers unlike the sweep's run", flush=True)
    print(f"{a.rounds} rounds: `dnfa train {a.config} --force` after `dnfa sweep {a.config}`, median [fastest]")
    for code, rs in rows.items():
        w, added, diffs = zip(*rs)
        print(f"  {code}: {statistics.median(w):6.2f} [{min(w):6.2f}] s, programs added {sorted(set(added))}, "
              f"numbers unlike the sweep's {sorted(set(diffs))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["cost", "after-sweep"])
    ap.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    ap.add_argument("--code", action="append", default=[], help="a checkout (repeatable; cost: the first)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], metavar="'KEY=VALUE ...'",
                    help="cost: one set of overrides (repeatable; \"\" for the config as it is)")
    a = ap.parse_args()
    if a.what == "cost":
        a.variant = a.variant or [""]
        cost(a)
    else:
        a.code = a.code or ["."]
        after_sweep(a)


if __name__ == "__main__":
    main()
