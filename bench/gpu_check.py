"""The GPU check, for a machine with a GPU (jax[cuda12] installed): train configs on the GPU
and on the CPU, compare every statistic of every checkpoint, and print the speed of each.

    python bench/gpu_check.py                       # quickstart.yaml and paper_x1x2.yaml
    python bench/gpu_check.py --highest             # GPU float32 products at full precision (no TF32)
    python bench/gpu_check.py configs/x.yaml --out /tmp/gpu_check

Each config is trained twice with `dnfa train --force` in fresh processes: JAX_PLATFORMS=cuda
and JAX_PLATFORMS=cpu, into OUT/gpu and OUT/cpu (the same run id). A statistic differs when
|gpu - cpu| > tol * max(1, |cpu|), tol by the run's train.dtype: 1e-3 for float32 (XLA's
GPU products round differently and, by default, multiply float32 in TF32 on recent GPUs;
`--highest` asks for full float32), 1e-8 for float64; integers (ranks) must be equal. The
first checkpoint (step 0: the same initial weights, drawn by JAX's counter-based generator
on either device) shows the statistics' own agreement; later ones add the training's.
With more than one GPU it also runs `dnfa sweep configs/quickstart.yaml --workers N` and
prints the device each run's env.json names (one worker per GPU).

Prints per config: steps/s, seconds of the first checkpoint and the median of the others
on each device, how many numbers were compared and the worst differences. Exit 1 if any
statistic differs beyond its tolerance, 2 if JAX sees no GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOL = {"float32": 1e-3, "float64": 1e-8}
PLATFORM = {"gpu": "cuda", "cpu": "cpu"}


def gpu_count() -> int:
    """How many GPUs JAX sees in a fresh process (0 if none or no CUDA plugin)."""
    code = "import jax\ntry:\n    print(len(jax.devices('gpu')))\nexcept RuntimeError:\n    print(0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": ""})
    return int(r.stdout.strip() or 0) if r.returncode == 0 else 0


def dnfa(args: list[str], device: str, highest: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "JAX_PLATFORMS": PLATFORM[device], "PYTHONPATH": str(ROOT)}
    if highest and device == "gpu":
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    return r, time.perf_counter() - t


def train(cfg: str, out: Path, device: str, highest: bool) -> dict:
    """Train cfg on `device` into out/device; its result.json, with the wall seconds."""
    r, wall = dnfa(["train", cfg, "--force", "--runs-dir", str(out / device)], device, highest)
    if r.returncode != 0:
        sys.exit(f"dnfa train {cfg} on {device} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    res = max((out / device).glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    got = json.loads(res.read_text())
    got["wall"] = wall
    got["env"] = json.loads((res.parent / "env.json").read_text())
    return got


def speed(res: dict) -> str:
    s = res["seconds"]
    ck = s["metrics_per_checkpoint"]
    steps = res["info"]["total_steps"]
    rest = statistics.median(ck[1:]) if len(ck) > 1 else float("nan")
    return (f"{steps / s['train']:9.0f} steps/s  first checkpoint {ck[0]:7.3f} s  others (median) {rest:7.3f} s  "
            f"wall {res['wall']:6.1f} s  on {res['env'].get('jax_device')}")


def differences(gpu: dict, cpu: dict, tol: float) -> tuple[int, list[tuple[float, str, object, object]]]:
    """(numbers compared, [(excess, where, gpu, cpu)] beyond tolerance, worst first)."""
    n, bad = 0, []
    for ck_g, ck_c in zip(gpu["checkpoints"], cpu["checkpoints"]):
        rows = [("", ck_g, ck_c)] + [(f"layer {Lg['layer']} ", Lg, Lc) for Lg, Lc in zip(ck_g["layers"], ck_c["layers"])]
        for where, a, b in rows:
            for k, vb in b.items():
                va = a.get(k)
                if k == "layers" or isinstance(vb, (list, bool)) or vb is None and va is None:
                    continue
                n += 1
                label = f"step {ck_c['step']} {where}{k}"
                if va is None or vb is None:
                    bad.append((math.inf, label, va, vb))
                elif isinstance(vb, (int, str)) and isinstance(va, (int, str)):  # ranks, alpha_star_edge
                    if va != vb:
                        bad.append((math.inf, label, va, vb))
                else:
                    err = abs(va - vb) / max(1.0, abs(vb))
                    if not err <= tol:
                        bad.append((err / tol if tol else math.inf, label, va, vb))
    if len(gpu["checkpoints"]) != len(cpu["checkpoints"]):
        bad.append((math.inf, "checkpoints", len(gpu["checkpoints"]), len(cpu["checkpoints"])))
    return n, sorted(bad, key=lambda x: -x[0])


def sweep_devices(out: Path, n: int) -> None:
    """A quickstart sweep over n GPU workers: the device each run names."""
    r, wall = dnfa(["sweep", "configs/quickstart.yaml", "--workers", str(n), "--runs-dir", str(out / "sweep")], "gpu")
    print(f"\ndnfa sweep configs/quickstart.yaml --workers {n}: exit {r.returncode}, {wall:.1f} s")
    for env in sorted((out / "sweep").glob("*/env.json")):
        e = json.loads(env.read_text())
        print(f"  {env.parent.name}: {e.get('jax_device')} CUDA_VISIBLE_DEVICES={e.get('cuda_visible_devices')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=["configs/quickstart.yaml", "configs/paper_x1x2.yaml"])
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a new temporary directory)")
    ap.add_argument("--highest", action="store_true", help="JAX_DEFAULT_MATMUL_PRECISION=highest on the GPU")
    a = ap.parse_args(argv)
    gpus = gpu_count()
    if not gpus:
        print("no GPU visible to JAX (pip install -U 'jax[cuda12]'); nothing to check", file=sys.stderr)
        return 2
    out = a.out or Path(tempfile.mkdtemp(prefix="dnfa-gpu-check-"))
    print(f"{gpus} GPU(s); runs under {out}")
    failed = 0
    for cfg in a.configs:
        cout = out / Path(cfg).stem
        res = {d: train(cfg, cout, d, a.highest) for d in ("gpu", "cpu")}
        dtype = res["cpu"]["config"]["train"]["dtype"]
        n, bad = differences(res["gpu"], res["cpu"], TOL[dtype])
        print(f"\n{cfg} (train.dtype {dtype}, tolerance {TOL[dtype]:g}):")
        for d in ("gpu", "cpu"):
            print(f"  {d}: {speed(res[d])}")
        print(f"  {n} numbers compared, {len(bad)} beyond tolerance")
        for excess, where, g, c in bad[:15]:
            print(f"    {where}: gpu {g!r} cpu {c!r} ({excess:.3g} x tolerance)")
        failed += bool(bad)
    if gpus > 1:
        sweep_devices(out, min(gpus, 4))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
