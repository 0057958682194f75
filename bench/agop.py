"""AGOP for every layer at d = 784, width 1024, 3 hidden layers, 10 outputs (issue 2),
by each method, against this machine's float32 matrix-multiply rate measured in the same
invocation; then peak memory of the default path as n grows.

    python bench/agop.py                      # n = 10,000, both methods, memory sweep
    python bench/agop.py --jacfwd-n 1000      # time jacfwd on fewer samples (it is ~50x slower)

Run by hand; numbers go into the closing note, not into tests.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

SIZES = [784, 1024, 1024, 1024, 10]


def useful_flops(sizes, n, method):
    """Flops the method must do (2 per multiply-add): forward, Jacobians, Gram sums."""
    from dnfa_cli.grams import flops_estimate

    return 2 * n * flops_estimate(sizes, method)


def matmul_rate(m, k, reps=20):
    """float32 GFLOP/s of the two GEMM shapes the pre-activation path is made of:
    (m, k) @ (k, k) (backprop) and (m, k)^T (m, k) (Gram), m = c * chunk."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(1), (k, k), jnp.float32)
    f = jax.jit(lambda a, w: (a @ w, a.T @ a))
    jax.block_until_ready(f(a, w))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a, w)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * (2 * m * k * k) / best / 1e9


def numpy_backprop(params, X, chunk):
    """Hand-written numpy pre-activation backprop (ReLU, no bias), float32: the baseline the
    issue quotes at 0.99 of the matmul limit."""
    Ws = [p for p in params]
    c = Ws[-1].shape[0]
    pg = [np.zeros((W.shape[0], W.shape[0]), np.float32) for W in Ws]
    for s in range(0, len(X), chunk):
        h = X[s:s + chunk]
        masks = []
        for W in Ws[:-1]:
            p = h @ W.T
            masks.append(p > 0)
            h = np.maximum(p, 0)
        m = len(h)
        g = np.broadcast_to(np.eye(c, dtype=np.float32)[:, None, :], (c, m, c)).reshape(c * m, c)
        pg[-1] += g.T @ g
        for l in range(len(Ws) - 2, -1, -1):
            g = (g @ Ws[l + 1]) * np.tile(masks[l], (c, 1))
            pg[l] += g.T @ g
    return pg


def run(n, methods, jacfwd_n, chunk):
    import jax
    import jax.numpy as jnp

    import dnfa_cli  # noqa: F401
    from dnfa_cli import grams as ansatz
    from dnfa_cli import model as mdl

    params = mdl.init_params(jax.random.PRNGKey(0), SIZES, bias=False, init="gaussian", init_scale=1.0, dtype=jnp.float32)
    X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (n, SIZES[0]), jnp.float32))
    c = SIZES[-1]
    m = chunk or ansatz.auto_chunk(SIZES, "preact", 4)
    limit = matmul_rate(c * m, 1024)
    print(f"machine: float32 matmul at shapes ({c * m}, 1024) @ (1024, 1024) and its Gram: {limit:.1f} GFLOP/s")
    print(f"auto picks: {ansatz.choose_method(SIZES, 'auto')}; chunk {m} samples")
    rows = []
    for method in methods:
        nn = jacfwd_n if method == "jacfwd" and jacfwd_n else n
        Xm = X[:nn]
        # the scan length is part of the compiled shape: warm up on the same n, as every
        # checkpoint after a run's first does
        t = time.perf_counter()
        ansatz.compute_grams(params, Xm, "relu", method=method, dtype=jnp.float32, chunk=chunk)
        first = time.perf_counter() - t
        t = time.perf_counter()
        ansatz.compute_grams(params, Xm, "relu", method=method, dtype=jnp.float32, chunk=chunk)
        secs = time.perf_counter() - t
        print(f"{method:>7}: first call (with compilation) {first:.2f} s")
        rate = useful_flops(SIZES, nn, method) / secs / 1e9
        rows.append({"method": method, "n": nn, "seconds": secs, "first_call": first, "gflops": rate, "share": rate / limit,
                     "seconds_at_n": secs * n / nn})
        print(f"{method:>7}: n = {nn:>6}  {secs:8.2f} s  {rate:7.1f} GFLOP/s  {rate / limit:5.2f} of limit"
              + (f"  (~{secs * n / nn:.0f} s at n = {n})" if nn != n else ""))
    Ws = [np.asarray(p["W"]) for p in params]
    numpy_backprop(Ws, X[:m], m)
    t = time.perf_counter()
    numpy_backprop(Ws, X, m)
    secs = time.perf_counter() - t
    rate = useful_flops(SIZES, n, "preact") / secs / 1e9
    print(f"  numpy: n = {n:>6}  {secs:8.2f} s  {rate:7.1f} GFLOP/s  {rate / limit:5.2f} of limit  (hand-written backprop)")
    rows.append({"method": "numpy", "n": n, "seconds": secs, "gflops": rate, "share": rate / limit})
    return rows, limit


def peak_rss(n, chunk):
    """(peak RSS before computing, peak RSS after) in MB, in a fresh process; X is made
    with numpy so that no second copy of it exists before the call."""
    code = (
        "import resource, numpy as np, jax, jax.numpy as jnp\n"
        "import dnfa_cli\nfrom dnfa_cli import grams as ansatz, model as mdl\n"
        f"p = mdl.init_params(jax.random.PRNGKey(0), {SIZES}, bias=False, init='gaussian', init_scale=1.0, dtype=jnp.float32)\n"
        f"X = np.random.default_rng(1).standard_normal(({n}, {SIZES[0]}), dtype=np.float32)\n"
        "ansatz.compute_grams(p, X[:64], 'relu', method='preact', dtype=jnp.float32)  # runtime up\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"ansatz.compute_grams(p, X, 'relu', method='preact', dtype=jnp.float32, chunk={chunk or 'None'})\n"
        "print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]) / 1024, int(out[1]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--methods", default="preact,jacfwd")
    ap.add_argument("--jacfwd-n", type=int, default=0, help="samples for the (slow) jacfwd timing; 0: --n")
    ap.add_argument("--chunk", type=int, default=0, help="samples per chunk; 0: auto")
    ap.add_argument("--memory", default="2500,10000,60000", help="n values for the peak-memory sweep ('' to skip)")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()
    rows, limit = run(a.n, a.methods.split(","), a.jacfwd_n, a.chunk or None)
    mem = []
    for n in [int(x) for x in a.memory.split(",") if x]:
        base, peak = peak_rss(n, a.chunk or None)
        x_mb = n * SIZES[0] * 4 / 2**20
        mem.append({"n": n, "rss_before_mb": base, "peak_rss_mb": peak, "X_mb": x_mb})
        print(f"n = {n:>6}: peak RSS {base:6.0f} MB with X loaded ({x_mb:.0f} MB), {peak:6.0f} MB after AGOP:"
              f" +{peak - base:.0f} MB for the computation")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"limit_gflops": limit, "rows": rows, "memory": mem}, f, indent=1)


if __name__ == "__main__":
    main()
