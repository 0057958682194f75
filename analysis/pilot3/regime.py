"""Pilot for study 3: regime measures from saved weights, plus the training curve.

Regime measures (width-free: both are normalised correlations of n x n kernels, O(1) at any
width, and 0 / 1 in the lazy limit whatever the width):
- cka_change = 1 - linear CKA(H_0, H_T) of the last hidden layer's representation on the
  test inputs (H_0 at init, H_T at the end): how much the representation itself changed.
- kta_gain  = KTA(H_T) - KTA(H_0), centred kernel-target alignment <Kc, Yc> / (|Kc| |Yc|),
  K = H H^T, Y = T T^T (targets): how much the representation moved toward the task.
Both via the small feature-space Grams (|Hc^T Tc|_F^2 etc.), never the n x n kernel.
"""
import json
import sys
from pathlib import Path

import numpy as np

from dnfa_cli import model as mdl
from dnfa_cli.config import validate
from dnfa_cli.data import make_dataset


def centred(A):
    return A - A.mean(0, keepdims=True)


def cka(A, B):
    A, B = centred(A), centred(B)
    return np.linalg.norm(A.T @ B) ** 2 / (np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B))


def hidden(params, X, act):
    hs, _ = mdl.forward_all(params, X, act)
    return np.asarray(hs[-1])


def load(d: Path, step: int):
    z = np.load(d / "checkpoints" / f"step_{step:07d}.npz")
    L = len([k for k in z.files if k.startswith("W")])
    return [{"W": z[f"W{i}"]} | ({"b": z[f"b{i}"]} if f"b{i}" in z.files else {}) for i in range(1, L + 1)]


def main(root):
    rows = []
    cache = {}
    for d in sorted(Path(root).iterdir()):
        if not (d / "result.json").exists():
            continue
        r = json.loads((d / "result.json").read_text())
        cfg = validate(r["config"])
        key = json.dumps(r["config"]["data"], sort_keys=True)
        if key not in cache:
            cache[key] = make_dataset(cfg)
        ds = cache[key]
        c0, cT = r["checkpoints"][0], r["checkpoints"][-1]
        row = dict(id=r["run_id"], status=r["status"], opt=cfg.train.optimizer, lr=cfg.train.lr,
                   scale=cfg.model.init_scale, steps=cT["step"], loss=cT["train_loss"],
                   loss_mid=[c["train_loss"] for c in r["checkpoints"] if c["step"] == 2400][:1],
                   test_loss=cT["test_loss"], test_acc=cT["test_acc"])
        if r["status"] == "ok":
            X = ds.X_test
            p0, pT = load(d, 0), load(d, cT["step"])
            H0, HT = hidden(p0, X, cfg.model.activation), hidden(pT, X, cfg.model.activation)
            row["cka_change"] = 1 - cka(H0, HT)
            row["kta_gain"] = cka(HT, ds.T_test) - cka(H0, ds.T_test)
            row["delta_rel2"] = cT["layers"][1].get("delta_rel")
        rows.append(row)
    for r in sorted(rows, key=lambda r: (r["id"].split("-")[0], r["lr"], r["scale"])):
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main(sys.argv[1])
