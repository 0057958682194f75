"""What a checkpoint's measuring costs against its floor (issue: measuring at the cost of
its decompositions), in one invocation:

1. For widths 128, 512, 1024 (depth 3, d 100, n 2000, c 1 and 10; ReLU, torch init, the
   paper_x1x2 net), each in a fresh process: the Grams a checkpoint computes (with the
   representation Grams for CKA: "+reps"), the statistics on the device, and the floor
   measured right there - the Grams alone plus three symmetric eigendecompositions
   (jnp.linalg.eigh, float64) of each non-trivial layer's size, max(k_out, k_in) - with
   the process's peak RSS; and today's numpy path on the same Grams (the reference
   implementation under tests/, given the random factors, so it pays no redraws: a lower
   bound on the path it replaced).
2. `dnfa train` of configs/quickstart.yaml and configs/paper_x1x2.yaml in fresh processes:
   seconds of training against measuring, the first and last checkpoints against the
   median of the others, peak RSS. Once with an empty compilation cache (a new machine),
   once with the cache it left (every later run).

    python bench/measure.py                  # everything (about 6 minutes on 2 cores)
    python bench/measure.py --skip-train     # part 1 only

Run by hand; numbers go into the README and the closing note, not into tests.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PART1 = r"""
import json, sys, time, resource
sys.path.insert(0, {tests!r})
import numpy as np, jax, jax.numpy as jnp
import dnfa_cli
from dnfa_cli import grams as gm, stats, baselines as bl, model as mdl
import reference_stats as ref

width, c, reps, do_ref = {width}, {c}, {reps}, {ref}
sizes = [100, width, width, width, c]
params = mdl.init_params(jax.random.PRNGKey(0), sizes, bias=False, init="torch", init_scale=1.0, dtype=jnp.float32)
X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2000, 100), jnp.float64))
W0 = [jax.tree_util.tree_map(lambda a: a * 0.9, p) for p in params]
L = len(params)
t = time.perf_counter()
terms = jax.block_until_ready([bl.draw_terms(jax.random.PRNGKey(l), p["W"].shape) for l, p in enumerate(params)])
t_draw = time.perf_counter() - t

T = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (2000, c), jnp.float64))

def grams():  # the floor's Grams: what every checkpoint needed before the statistics
    g = gm.compute_grams(params, X, "relu", dtype=jnp.float64)
    return jax.block_until_ready(g)

def grams_full():  # what a checkpoint computes: also the representation Grams (cka_init, kta)
    g = gm.compute_grams(params, X, "relu", dtype=jnp.float64, params0=W0, T=T)
    return jax.block_until_ready(g)

def measure(g):
    items = [(stats.layer_input(p["W"], p0["W"], g, l, max(p["W"].shape) * 2.2e-16, terms[l]), l == L - 1)
             for l, (p, p0) in enumerate(zip(params, W0))]
    return stats.compute(items)

def best(f, *a):
    f(*a)
    out = []
    for _ in range(reps):
        t = time.perf_counter(); f(*a); out.append(time.perf_counter() - t)
    return min(out)

g = grams_full()
t_grams = best(grams)
t_full = best(grams_full)
t_stats = best(measure, g)
eig = jax.jit(jnp.linalg.eigh)
t_eigh = {{}}
for k in sorted({{max(p["W"].shape) for p in params[:-1]}}):
    A = jax.random.normal(jax.random.PRNGKey(k), (k, k), jnp.float64)
    S = jax.block_until_ready(A @ A.T)
    t_eigh[k] = best(lambda S: jax.block_until_ready(eig(S)), S)
floor = t_grams + sum(3 * t_eigh[max(p["W"].shape)] for p in params[:-1])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the device path's peak, before numpy's
t_ref = None
if do_ref:
    facs = [bl.draw(jax.random.PRNGKey(l), p["W"].shape) for l, p in enumerate(params)]
    facs = [[tuple(np.asarray(a[d]) for a in f) for d in range(bl.N_DRAWS)] for f in facs]
    def numpy_path():
        for l, (p, p0) in enumerate(zip(params, W0)):
            ref.layer_stats(np.asarray(p["W"], np.float64), np.asarray(p0["W"], np.float64), g, l,
                            trivial=l == L - 1, rel_tol=max(p["W"].shape) * 2.2e-16, factors=facs[l])
    t_ref = best(numpy_path)
print(json.dumps({{"width": width, "c": c, "grams": t_grams, "grams_full": t_full, "stats": t_stats, "eigh": t_eigh,
                  "floor": floor, "ratio": (t_full + t_stats) / floor, "numpy_stats": t_ref, "draw_once": t_draw,
                  "peak_rss_mb": rss}}))
"""


def child_rss(cmd, env=None) -> tuple[str, float]:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited with {status}")
    return out, ru.ru_maxrss / 1024


def part1(reps: int, numpy_ref: bool, widths=(128, 512, 1024)):
    print("== statistics per checkpoint against the floor (Grams + 3 eigh per non-trivial layer)")
    print(f"{'width':>5} {'c':>3} {'grams':>7} {'+reps':>7} {'stats':>7} {'floor':>7} {'ratio':>6} {'numpy':>7} {'draws':>6} {'eigh(k)':>8} {'RSS MB':>7}")
    rows = []
    for width in widths:
        for c in (1, 10):
            code = PART1.format(tests=str(ROOT / "tests"), width=width, c=c, reps=reps, ref=numpy_ref)
            out, _ = child_rss([sys.executable, "-c", code])
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(r)
            ek = r["eigh"][str(max(width, 100))]
            npy = f"{r['numpy_stats']:7.3f}" if r["numpy_stats"] is not None else "      -"
            print(f"{width:5d} {c:3d} {r['grams']:7.3f} {r['grams_full']:7.3f} {r['stats']:7.3f} {r['floor']:7.3f} {r['ratio']:6.2f} {npy} "
                  f"{r['draw_once']:6.2f} {ek:8.3f} {r['peak_rss_mb']:7.0f}", flush=True)
    return rows


def part2():
    print("== dnfa train: seconds training against measuring")
    print(f"{'config':24} {'cache':5} {'train':>6} {'metrics':>8} {'ratio':>6} {'first':>6} {'last':>6} {'others':>6} {'draws':>6} {'RSS MB':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for cfg in ("configs/quickstart.yaml", "configs/paper_x1x2.yaml"):
            for label in ("cold", "warm"):
                if label == "cold":
                    subprocess.run(["rm", "-rf", str(cache)], check=True)
                runs = Path(tmp) / f"runs-{label}"
                env = {**os.environ, "DNFA_CACHE_DIR": str(cache)}
                _, rss = child_rss([sys.executable, "-m", "dnfa_cli.cli", "train", cfg, "--runs-dir", str(runs), "--force"],
                                   env=env)
                res = json.loads(next(runs.glob("*/result.json")).read_text())
                s = res["seconds"]
                per = s["metrics_per_checkpoint"]
                others = statistics.median(per[1:-1]) if len(per) > 2 else float("nan")
                rows.append({"config": cfg, "cache": label, **s, "peak_rss_mb": rss})
                print(f"{cfg:24} {label:5} {s['train']:6.2f} {s['metrics']:8.2f} {s['metrics'] / s['train']:6.2f} "
                      f"{per[0]:6.2f} {per[-1]:6.2f} {others:6.2f} {s['baseline_draws']:6.2f} {rss:7.0f}", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (the best is kept)")
    ap.add_argument("--skip-train", action="store_true", help="part 1 only")
    ap.add_argument("--no-numpy", action="store_true", help="skip timing the numpy reference path")
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024], help="hidden widths of part 1")
    ap.add_argument("--json", type=Path, help="also write every number here")
    a = ap.parse_args()
    t = time.perf_counter()
    out = {"env": {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"), "cpus": len(os.sched_getaffinity(0))}}
    out["checkpoint"] = part1(a.reps, not a.no_numpy, a.widths)
    if not a.skip_train:
        out["train"] = part2()
    print(f"({time.perf_counter() - t:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
