"""The study's regime measure (analysis/regime.py) against the obvious n x n computation."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dnfa_cli import config, engine
from dnfa_cli.data import make_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))
import regime  # noqa: E402


def _kernel_alignment(H, T):
    n = len(H)
    C = np.eye(n) - np.ones((n, n)) / n
    K, Y = C @ H @ H.T @ C, C @ T @ T.T @ C
    return np.sum(K * Y) / (np.linalg.norm(K) * np.linalg.norm(Y))


def test_alignment_is_the_centred_kernel_target_alignment():
    rng = np.random.default_rng(0)
    H, T = rng.normal(size=(40, 7)) + 3.0, rng.normal(size=(40, 3))
    assert abs(regime.alignment(H, T) - _kernel_alignment(H, T)) < 1e-12
    G = T @ rng.normal(size=(3, 5))  # a representation that is a linear map of the targets
    assert abs(regime.alignment(G, T) - _kernel_alignment(G, T)) < 1e-12


def test_kta_gain_reads_the_test_inputs_at_the_saved_ends(tmp_path):
    raw = {"name": "rg", "seed": 1, "data": {"task": "monomial", "d": 6, "n_train": 64, "n_test": 32, "seed": 0},
           "model": {"depth": 2, "width": 9, "activation": "relu", "bias": False, "init": "torch"},
           "train": {"epochs": 4, "batch_size": 16, "lr": 0.05, "dtype": "float64"},
           "metrics": {"checkpoints": 2, "samples": 32}}
    cfg = config.validate(raw)
    assert engine.execute([cfg], tmp_path)[0]["status"] == "ok"
    ds = make_dataset(cfg)
    ck = sorted((tmp_path / cfg.run_id / "checkpoints").glob("step_*.npz"))
    def h(f):  # the last hidden layer by hand: relu(W2 relu(W1 x))
        with np.load(f) as z:
            return np.maximum(np.maximum(ds.X_test @ z["W1"].T, 0) @ z["W2"].T, 0)
    want = _kernel_alignment(h(ck[-1]), ds.T_test) - _kernel_alignment(h(ck[0]), ds.T_test)
    got = regime.kta_gain(tmp_path, [cfg.run_id])
    assert abs(got[cfg.run_id] - want) < 1e-10 and want != 0


def test_regime_cut_points():
    r = regime.regime(pd.Series([-0.1, 0.0199, 0.02, 0.0999, 0.1, 0.8]))
    assert list(r) == ["lazy", "lazy", "between", "between", "rich", "rich"]
