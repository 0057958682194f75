"""What a `dnfa train` costs beyond its training (issue 22): for each config, fresh
processes of `dnfa train CONFIG --force`, cold (an empty compilation cache and program
store) and warm (the cache the cold run left), and `python -c "import jax"` for the floor.
Per process: wall and CPU seconds (user + sys of the child, from wait4), peak RSS; from
result.json: training, measuring, the first checkpoint, the median of the others, the last
(which does the first's work where a counterfactual runs at the ends, as paper_x1x2's
published: ends: first / last is then what is once per run) and dispatching the random-W
draws. Warm figures are the minimum over --reps processes (the machine is shared: the
minimum is the least disturbed); the load average is printed before and after.

    nice -n 10 python bench/startup.py                                  # quickstart, paper_x1x2
    nice -n 10 python bench/startup.py configs/paper_x1x2.yaml --set train.epochs=10 --reps 2
    nice -n 10 python bench/startup.py --code /other/checkout ...       # the same for other code

Run by hand; numbers go into the README and the closing note, not into tests.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from interleave import byte_compiled  # noqa: E402


def child(cmd: list[str], env: dict) -> dict:
    """Run cmd in the code's checkout; its wall and CPU seconds and peak RSS (MB)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=env["PYTHONPATH"])
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        sys.exit(f"{' '.join(cmd)} exited with {status}:\n{err[-2000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss / 1024}


def train(cfg: str, sets: list[str], runs: Path, env: dict) -> dict:
    import json

    args = [a for kv in sets for a in ("--set", kv)]
    got = child([sys.executable, "-m", "dnfa_cli.cli", "train", cfg, "--force", "--runs-dir", str(runs), *args], env)
    res = max(runs.glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    s = json.loads(res.read_text())["seconds"]
    per = s["metrics_per_checkpoint"]
    return {**got, "train": s["train"], "metrics": s["metrics"], "first": per[0],
            "others": statistics.median(per[1:]) if len(per) > 1 else float("nan"), "last": per[-1],
            "draws": s["baseline_draws"]}


def best(rows: list[dict]) -> dict:
    return {k: min(r[k] for r in rows) for k in rows[0]}


def line(label: str, r: dict) -> str:
    return (f"{label:34} {r['wall']:7.2f} {r['cpu']:7.2f} {r.get('train', float('nan')):7.2f} "
            f"{r.get('metrics', float('nan')):7.2f} {r.get('first', float('nan')):7.2f} {r.get('others', float('nan')):7.3f} "
            f"{r.get('first', float('nan')) / r.get('others', float('nan')):6.2f} {r.get('last', float('nan')):7.2f} "
            f"{r.get('first', float('nan')) / r.get('last', float('nan')):6.2f} {r.get('draws', float('nan')):6.2f} "
            f"{r['rss']:7.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", default=["configs/quickstart.yaml", "configs/paper_x1x2.yaml"])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to every dnfa train (e.g. train.epochs=10 for a shorter run)")
    ap.add_argument("--reps", type=int, default=3, help="warm processes per config (the minimum is shown)")
    ap.add_argument("--no-cold", action="store_true", help="warm runs only, in the usual cache")
    ap.add_argument("--code", type=Path, default=ROOT, help="the dnfa checkout to run (default: this one)")
    a = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores; code: {a.code}")
    byte_compiled(str(a.code.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(a.code.resolve())}
        if not a.no_cold:
            env["DNFA_CACHE_DIR"] = str(Path(tmp) / "cache")
        jax_import = best([child([sys.executable, "-c", "import jax; jax.devices()"], env) for _ in range(a.reps)])
        print(f"{'':34} {'wall':>7} {'cpu':>7} {'train':>7} {'metrics':>7} {'first':>7} {'others':>7} {'1st/ot':>6} "
              f"{'last':>7} {'1st/la':>6} {'draws':>6} {'RSS MB':>7}")
        print(line("python -c 'import jax' (min)", jax_import))
        for cfg in a.configs:
            runs = Path(tmp) / Path(cfg).stem
            if not a.no_cold:
                print(line(f"{Path(cfg).stem} cold", train(cfg, a.sets, runs, env)), flush=True)
            warm = [train(cfg, a.sets, runs, env) for _ in range(a.reps)]
            w = best(warm)
            print(line(f"{Path(cfg).stem} warm (min of {a.reps})", w), flush=True)
            print(f"{'':34} warm wall - (import jax + train) = {w['wall'] - jax_import['wall'] - w['train']:.2f} s; "
                  f"cpu - import cpu = {w['cpu'] - jax_import['cpu']:.2f} s")
    print(f"load average {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
