"""The centred keys of the same runs made by two checkouts (before and after a change to the
centred Grams), as a markdown table: key, layer, step, before, after, for the first and
the last checkpoint of every run found in both run directories (values null in both are
counted, not listed); then, for every other statistic both have and the losses, how many
values differ at all and the largest difference.

    python bench/centred_rerun.py OLD_RUNS_DIR NEW_RUNS_DIR > table.md

Used for docs/centred_rerun.md (issue 16.4). Run by hand.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

CENTRED = ("gc_pearson_a1", "gc_pearson_a05", "delta_gc_pearson_a05", "delta_gc_cosine_a1",
           "published_gc_pearson_a05", "published_gc_cosine_a1", "centered_pearson")


def _fmt(v) -> str:
    return "null" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.10g}"


def _same(a, b) -> bool:
    return a == b or (a is None and b is None)


def _results(root: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/result.json"))}


def main(old_dir: str, new_dir: str) -> None:
    old, new = _results(Path(old_dir)), _results(Path(new_dir))
    print("| run | key | layer | step | before | after | moved |")
    print("|---|---|---|---|---|---|---|")
    others: dict = {}
    nulls: dict = {}  # run -> centred values null before and after (left out of the table)
    for rid in sorted(set(old) & set(new)):
        cks_o, cks_n = old[rid]["checkpoints"], new[rid]["checkpoints"]
        assert [c["step"] for c in cks_o] == [c["step"] for c in cks_n], rid
        for co, cn in ((cks_o[0], cks_n[0]), (cks_o[-1], cks_n[-1])):
            for Lo, Ln in zip(co["layers"], cn["layers"]):
                for k in CENTRED:
                    if k in Lo or k in Ln:
                        a, b = Lo.get(k), Ln.get(k)
                        if a is None and b is None:
                            nulls[rid] = nulls.get(rid, 0) + 1
                            continue
                        moved = "" if _same(a, b) else ("yes" if a is None or b is None else f"{abs(b - a):.2g}")
                        print(f"| {rid} | `{k}` | {Lo['layer']} | {co['step']} | {_fmt(a)} | {_fmt(b)} | {moved} |")
                for k in set(Lo) & set(Ln) - set(CENTRED) - {"layer", "shape", "trivial"}:
                    a, b = Lo[k], Ln[k]
                    n, d, worst = others.get(k, (0, 0, 0.0))
                    diff = not _same(a, b)
                    num = diff and isinstance(a, (int, float)) and isinstance(b, (int, float))
                    gap = abs(b - a) if num else 0.0
                    others[k] = (n + 1, d + diff, max(worst, gap))
            for k in ("train_loss", "test_loss", "train_acc", "test_acc"):
                n, d, worst = others.get(k, (0, 0, 0.0))
                others[k] = (n + 1, d + (not _same(co.get(k), cn.get(k))), worst)
    print("\nNull before and after, left out above: " + ", ".join(f"{r}: {n}" for r, n in nulls.items()) + ".")
    moved = {k: v for k, v in others.items() if v[1]}
    print(f"\nEvery other key both runs have ({len(others)} keys, {sum(v[0] for v in others.values())} values at "
          f"these checkpoints): " + ("none moved" if not moved else "moved (values that differ, largest "
          "difference): " + ", ".join(f"{k} ({v[1]} of {v[0]}, {v[2]:.1g})" for k, v in sorted(moved.items()))) + ".")


if __name__ == "__main__":
    main(*sys.argv[1:3])
