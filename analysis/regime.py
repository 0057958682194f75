"""The regime of a run, as fixed before study 3's pilot (analysis/pilot3/PILOT.md):
kta_gain = KTA(H_T) - KTA(H_0), the rise of the centred kernel-target alignment of the last
hidden layer's representation H on the run's TEST inputs, from the weights saved at step 0
and at the last checkpoint. Width-free (a normalised correlation of n x n kernels) and 0 in
the lazy limit. On the measured training samples (dnfa's per-checkpoint `kta`) a net that
fits its training set without learning the task also aligns with the training targets, so
the regime is read on held-out inputs.

rich: kta_gain >= RICH; lazy: kta_gain < LAZY; between: reported as such.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

RICH, LAZY = 0.1, 0.02


def alignment(H, T) -> float:
    """Linear CKA of H (n, k) and T (n, c): <Kc, Tc>_F / (|Kc|_F |Tc|_F) with K = H H^T and
    T T^T centred, through the small Grams (never the n x n kernels)."""
    H = H - H.mean(0, keepdims=True)
    T = T - T.mean(0, keepdims=True)
    num = np.linalg.norm(H.T @ T) ** 2
    return float(num / (np.linalg.norm(H.T @ H) * np.linalg.norm(T.T @ T)))


def _params(run_dir: Path, step: int) -> list[dict]:
    with np.load(run_dir / "checkpoints" / f"step_{step:07d}.npz") as z:
        n = len([k for k in z.files if k.startswith("W")])
        return [{"W": z[f"W{i}"], **({"b": z[f"b{i}"]} if f"b{i}" in z.files else {})} for i in range(1, n + 1)]


def last_hidden(params: list[dict], X, activation: str) -> np.ndarray:
    from dnfa_cli import model as mdl

    hs, _ = mdl.forward_all([{k: np.asarray(v, np.float64) for k, v in p.items()} for p in params],
                            np.asarray(X, np.float64), activation)
    return np.asarray(hs[-1])


def kta_gain(runs_dir: str | Path, run_ids) -> pd.Series:
    """run id -> kta_gain on the test inputs (NaN for a run without both saved ends)."""
    from dnfa_cli.config import validate
    from dnfa_cli.data import make_dataset

    root, data, out = Path(runs_dir), {}, {}
    for rid in run_ids:
        d = root / rid
        r = json.loads((d / "result.json").read_text())
        steps = [c["step"] for c in r.get("checkpoints", [])]
        if not steps or steps[0] != 0 or not (d / "checkpoints" / f"step_{steps[-1]:07d}.npz").exists():
            out[rid] = np.nan
            continue
        cfg = validate(r["config"])
        key = json.dumps(r["config"]["data"], sort_keys=True)
        ds = data.get(key) or data.setdefault(key, make_dataset(cfg))
        H0, HT = (last_hidden(_params(d, s), ds.X_test, cfg.model.activation) for s in (0, steps[-1]))
        out[rid] = alignment(HT, ds.T_test) - alignment(H0, ds.T_test)
    return pd.Series(out, name="kta_gain", dtype=float)


def regime(gain: pd.Series) -> pd.Series:
    return pd.cut(gain, [-np.inf, LAZY, RICH, np.inf], right=False, labels=["lazy", "between", "rich"])
