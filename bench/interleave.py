"""Warm `dnfa train CONFIG --force` of several checkouts, timed interleaved (issue 22): each
round runs one process of each checkout in turn, then `python -c "import jax"`, so a drift
of the machine's speed (a third within minutes on a shared machine) falls on all of them
alike. Prints, per checkout, the median and the fastest wall and CPU seconds (user + sys of
the child, from wait4), the median training seconds from its result.json, and issue 22's
figure: the wall beyond JAX's import (the same round's `import jax`) and the run's training,
per round, as median [least, most] (a run's training as result.json gives it: with the
loader threads beside it on two cores, it takes longer than undisturbed).

    python bench/interleave.py --code /path/to/old --code . --rounds 8
    python bench/interleave.py --code . configs/paper_x1x2.yaml --set train.epochs=1

Each checkout's programs must already be in the cache (run it once first); run by hand,
numbers go into the README and the closing note, not into tests.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], cwd: str, env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of a child process of checkout `cwd`; exits on its failure."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": cwd, **(env or {})})
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} in {cwd} exited with {status}:\n{err[-2000:]}")
    return time.perf_counter() - t, ru.ru_utime + ru.ru_stime


def byte_compiled(code: str) -> None:
    """dnfa's modules of a checkout compiled to bytecode, as a user's first run leaves them
    (where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, every process
    would compile them from source, a cost no user's second run has)."""
    compileall.compile_dir(str(Path(code) / "dnfa_cli"), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    ap.add_argument("--code", action="append", required=True, help="a checkout (repeatable)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    a = ap.parse_args()
    codes = [str(Path(c).resolve()) for c in a.code]
    for code in codes:
        byte_compiled(code)
    sets = [x for kv in a.sets for x in ("--set", kv)]
    rows: dict[str, list] = {c: [] for c in codes + ["import jax"]}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for i, code in enumerate(codes):
                runs = Path(tmp) / str(i)
                wall, cpu = timed([sys.executable, "-m", "dnfa_cli.cli", "train", a.config, "--force", "--runs-dir",
                                   str(runs), *sets], code)
                res = max(runs.glob("*/result.json"), key=lambda p: p.stat().st_mtime)
                rows[code].append((wall, cpu, json.loads(res.read_text())["seconds"]["train"]))
            wall, cpu = timed([sys.executable, "-c", "import jax"], codes[0])
            rows["import jax"].append((wall, cpu, 0.0))
    print(f"{a.rounds} rounds, {a.config} {' '.join(a.sets)}; median [fastest]")
    for name, r in rows.items():
        w, c, t = zip(*r)
        print(f"{name:40s} wall {statistics.median(w):6.2f} [{min(w):5.2f}] s   cpu {statistics.median(c):6.2f} "
              f"[{min(c):5.2f}] s   train {statistics.median(t):5.2f} s")
    jax_w = [r[0] for r in rows["import jax"]]
    for code in codes:
        beyond = [w - j - t for (w, _, t), j in zip(rows[code], jax_w)]
        print(f"{code:40s} beyond import jax + training: {statistics.median(beyond):5.2f} s "
              f"[{min(beyond):5.2f}, {max(beyond):5.2f}]")


if __name__ == "__main__":
    main()
