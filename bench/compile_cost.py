"""Where a cold `dnfa train` spends XLA's compile (issue 22): `dnfa train CONFIG --force` in
an empty cache and program store, on one core (as a sweep's worker), with XLA:CPU's compile
timers logged (`TF_CPP_VMODULE=cpu_compiler=1,ir_compiler=1`). Prints, per compiled program,
XLA's compile seconds, the seconds LLVM took for its kernels and how many kernels it has
(XLA:CPU compiles each fusion as a kernel of its own), and the totals. With `--xla-flag`,
each flag is timed the same way, added to XLA_FLAGS, and its run compared with the first,
number for number (bench/compare_runs.py): a flag that compiles faster is of use only if
the numbers stay.

    python bench/compile_cost.py configs/quickstart.yaml
    python bench/compile_cost.py configs/quickstart.yaml --xla-flag=--xla_cpu_use_fusion_emitters=false

(The second line compiles every program with XLA:CPU's elemental emitters, as dnfa compiles
its statistics programs, programs.ELEMENTAL: a compile option, which wins over XLA_FLAGS.)

Run by hand on a quiet machine; a single run per flag, so a difference of a few percent is
noise (interleave several calls for more).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PROGRAM = re.compile(r"Compiling \[([^\]]+)\] for CPU using JIT time: ([0-9.]+) (s|ms|us)\b")
_KERNEL = re.compile(r"Compiled LLVM module: .* time: ([0-9.]+) (s|ms|us)\b")
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse(log: str) -> list[tuple[str, float, float, int]]:
    """[(program, compile seconds, LLVM seconds of its kernels, kernels)] from XLA's log: a
    program's kernels are logged before the line that ends its compile."""
    out, llvm, kernels = [], 0.0, 0
    for line in log.splitlines():
        if m := _KERNEL.search(line):
            llvm += float(m.group(1)) * _UNIT[m.group(2)]
            kernels += 1
        elif m := _PROGRAM.search(line):
            out.append((m.group(1).removeprefix("jit_"), float(m.group(2)) * _UNIT[m.group(3)], llvm, kernels))
            llvm, kernels = 0.0, 0
    return out


def cold_train(config: str, out: Path, flag: str, sets: list[str]) -> tuple[float, list]:
    """(wall seconds, parse(log)) of a cold `dnfa train` on core 0 into out/runs."""
    env = {**os.environ, "DNFA_CACHE_DIR": str(out / "cache"), "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "cpu_compiler=1,ir_compiler=1",
           "XLA_FLAGS": " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flag) if f)}
    cmd = [sys.executable, "-m", "dnfa_cli.cli", "train", config, "--force", "--runs-dir", str(out / "runs")]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"dnfa train {config} with XLA_FLAGS={env['XLA_FLAGS']!r} failed (exit {r.returncode}):\n"
                 f"{r.stderr[-2000:]}")
    return wall, parse(r.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    ap.add_argument("--xla-flag", action="append", default=[], help="an XLA flag to time against none (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as dnfa train --set")
    ap.add_argument("--programs", action="store_true", help="print every program, not only the totals by name")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        for i, flag in enumerate([""] + a.xla_flag):
            out = Path(tmp) / str(i)
            wall, rows = cold_train(a.config, out, flag, a.set)
            print(f"{flag or 'no flag'}: {wall:.2f} s wall; {len(rows)} programs compiled in "
                  f"{sum(r[1] for r in rows):.2f} s, LLVM {sum(r[2] for r in rows):.2f} s for "
                  f"{sum(r[3] for r in rows)} kernels")
            by: dict[str, list] = {}
            for name, sec, llvm, k in rows:
                if a.programs:
                    print(f"  {name:32s} {sec:6.2f} s  LLVM {llvm:6.2f} s  {k:4d} kernels")
                t = by.setdefault(name, [0, 0.0, 0.0, 0])
                t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + sec, t[2] + llvm, t[3] + k
            if not a.programs:
                for name, (n, sec, llvm, k) in sorted(by.items(), key=lambda kv: -kv[1][1]):
                    print(f"  {name:32s} x{n}  {sec:6.2f} s  LLVM {llvm:6.2f} s  {k:4d} kernels")
            if ref is None:
                ref = out / "runs"
                continue
            cmp = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_runs.py"), str(ref), str(out / "runs")],
                                 capture_output=True, text=True)
            print(f"  numbers against no flag: {(cmp.stdout.strip().splitlines() or [cmp.stderr.strip()])[-1]}")


if __name__ == "__main__":
    main()
