"""Compare the runs of two run directories number for number: every key of result.json
(every checkpoint, every layer, the config, status, error, info) must be equal, bit for
bit, except the wall-clock `seconds`, `created` and `finished`; every array of the runs' .npz files (parameter
checkpoints and saved matrices) too. For checking that a refactor changed no number.

    python bench/compare_runs.py REF_DIR NEW_DIR [RUN_ID ...]   # default: the runs in both

Prints one line per difference and a summary; exit 1 if anything differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

IGNORED = {"seconds", "created", "finished"}  # wall-clock times, not results


def diff(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ; floats compared exactly (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'ref' if k in a else 'new'}" for k in sorted((set(a) ^ set(b)) - IGNORED)]
        for k in sorted(set(a) & set(b) - IGNORED):
            out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return [] if same and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def diff_npz(fa: Path, fb: Path) -> list[str]:
    with np.load(fa) as za, np.load(fb) as zb:
        if sorted(za.files) != sorted(zb.files):
            return [f"{fa.name}: arrays {sorted(za.files)} != {sorted(zb.files)}"]
        return [f"{fa.name}:{k}: arrays differ" for k in za.files
                if za[k].dtype != zb[k].dtype or not np.array_equal(za[k], zb[k], equal_nan=True)]


def compare_run(ref: Path, new: Path) -> tuple[list[str], int]:
    """The differences of one run, and how many numbers were compared."""
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (ref, new))
    out = diff(ra, rb)
    n = len(json.dumps([c for c in ra.get("checkpoints", [])]).split(","))
    fa = {f.relative_to(ref) for f in ref.rglob("*.npz")}
    fb = {f.relative_to(new) for f in new.rglob("*.npz")}
    out += [f"{f}: only in {'ref' if f in fa else 'new'}" for f in sorted(fa ^ fb)]
    for f in sorted(fa & fb):
        out += diff_npz(ref / f, new / f)
    return out, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("run_ids", nargs="*")
    a = ap.parse_args(argv)
    ids = a.run_ids or sorted(p.parent.name for p in a.new.glob("*/result.json") if (a.ref / p.parent.name).is_dir())
    if not ids:
        print("no run found in both directories", file=sys.stderr)
        return 2
    bad = 0
    for rid in ids:
        out, n = compare_run(a.ref / rid, a.new / rid)
        print(f"{rid}: {'identical' if not out else f'{len(out)} differences'} (~{n} JSON fields of checkpoints, "
              f"{len(list((a.new / rid).rglob('*.npz')))} npz files)")
        for line in out[:20]:
            print("   ", line)
        bad += bool(out)
    print(f"{len(ids) - bad} of {len(ids)} runs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
