"""The README's quickstart command (`dnfa sweep configs/quickstart.yaml`, then `dnfa report
sweep-quickstart --html`) from an empty cache and again warm, for several checkouts timed
interleaved (issue 22): each round runs every checkout in turn, each in a fresh temporary
cache and runs folder, so a drift of the machine's speed falls on all of them alike. Prints,
per checkout, the median and the fastest wall seconds of the sweep, the report and both,
cold and warm, and the median CPU seconds (user + sys of the children, from wait4).

    python bench/readme_cold.py --code /path/to/old --code . --rounds 3

Run by hand on a quiet machine; numbers go into the README and the closing note, not into
tests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from interleave import timed  # noqa: E402


def once(code: str, tmp: Path) -> dict[str, tuple[float, float]]:
    """{"cold sweep": (wall, cpu), "cold report": ..., "warm sweep": ..., "warm report": ...}."""
    env = {"DNFA_CACHE_DIR": str(tmp / "cache")}
    out = {}
    for phase in ("cold", "warm"):
        runs = tmp / f"runs-{phase}"
        out[f"{phase} sweep"] = timed([sys.executable, "-m", "dnfa_cli.cli", "sweep", "configs/quickstart.yaml",
                                       "--runs-dir", str(runs)], code, env)
        out[f"{phase} report"] = timed([sys.executable, "-m", "dnfa_cli.cli", "report", "sweep-quickstart", "--html",
                                        "--runs-dir", str(runs)], code, env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", action="append", required=True, help="a checkout (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    codes = [str(Path(c).resolve()) for c in a.code]
    rows: dict[str, list[dict]] = {c: [] for c in codes}
    for r in range(a.rounds):
        for code in codes:
            with tempfile.TemporaryDirectory() as tmp:
                got = once(code, Path(tmp))
            rows[code].append(got)
            print(f"round {r + 1} {code}: " + ", ".join(f"{k} {w:.2f} s" for k, (w, _) in got.items()), flush=True)
    print(f"{a.rounds} rounds, median [fastest] wall seconds (median CPU)")
    for code, rs in rows.items():
        print(code)
        for phase in ("cold", "warm"):
            parts = []
            for what in ("sweep", "report"):
                w = [x[f"{phase} {what}"][0] for x in rs]
                c = [x[f"{phase} {what}"][1] for x in rs]
                parts.append(f"{what} {statistics.median(w):6.2f} [{min(w):5.2f}] ({statistics.median(c):5.2f})")
            both = [x[f"{phase} sweep"][0] + x[f"{phase} report"][0] for x in rs]
            print(f"  {phase}: " + "  ".join(parts) + f"  both {statistics.median(both):6.2f} [{min(both):5.2f}]")


if __name__ == "__main__":
    main()
