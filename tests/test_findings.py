"""analysis/inference.py and the run-level pieces of analysis/findings.py against independent
references: hand formulas, known means on synthetic data, hand-built frames."""
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "analysis"))
import findings  # noqa: E402
import inference as inf  # noqa: E402


def test_t_interval_is_the_hand_formula():
    x = np.array([0.31, 0.52, 0.47, 0.29, 0.61])
    n, m = len(x), sum(x) / len(x)
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))
    half = st.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    got = inf.interval(x)
    assert got["method"] == "t" and got["n"] == 5
    assert got["mean"] == pytest.approx(m, abs=1e-15)
    assert got["lo"] == pytest.approx(m - half, abs=1e-12) and got["hi"] == pytest.approx(m + half, abs=1e-12)


def test_ten_runs_and_more_are_bootstrapped_below_ten_are_not():
    rng = np.random.default_rng(0)
    assert inf.interval(rng.normal(size=9))["method"] == "t"
    b = inf.interval(rng.normal(size=10))
    assert b["method"] == "bootstrap"
    x = rng.normal(size=40)
    r = st.bootstrap((x,), np.mean, n_resamples=inf.N_BOOT, method="BCa", random_state=np.random.default_rng(inf.SEED))
    got = inf.interval(x)
    assert (got["lo"], got["hi"]) == pytest.approx((r.confidence_interval.low, r.confidence_interval.high))


def test_the_t_interval_covers_a_known_mean_95_percent_of_the_time_at_five_runs():
    # a z-interval (1.96 sd / sqrt n) at n = 5 covers ~88%: this bound tells the two apart
    rng = np.random.default_rng(1)
    hits = [(lambda r: r["lo"] <= 3.0 <= r["hi"])(inf.interval(rng.normal(3.0, 2.0, 5))) for _ in range(4000)]
    assert 0.935 <= np.mean(hits) <= 0.965


def test_the_bootstrap_covers_a_known_mean_near_95_percent_at_twenty_runs():
    rng = np.random.default_rng(2)
    hits = [(lambda r: r["lo"] <= 1.0 <= r["hi"])(inf.interval(rng.exponential(1.0, 20))) for _ in range(300)]
    assert 0.88 <= np.mean(hits) <= 0.98


def _strata_frame():
    rows = []
    for width, layer, base in ((256, 1, 0.9), (256, 2, 0.1), (1024, 2, 0.5)):
        for seed in range(5):
            rows.append({"task": "x1x2", "width": width, "layer": layer, "seed": seed, "v": base + 0.01 * seed})
    return pd.DataFrame(rows)


def test_a_stratum_never_mixes_layers_or_widths():
    df = _strata_frame()
    s = inf.summarize(df, "v", ["task", "width", "layer"])
    assert len(s) == 3
    assert s.loc[("x1x2", 256, 1), "mean"] == pytest.approx(0.92)
    assert s.loc[("x1x2", 256, 2), "mean"] == pytest.approx(0.12)
    assert s.loc[("x1x2", 1024, 2), "n"] == 5
    with pytest.raises(ValueError, match="layer"):
        inf.summarize(df, "v", ["task", "width"])
    with pytest.raises(ValueError, match="width"):
        inf.summarize(df, "v", ["task", "layer"])


def test_paired_difference_matches_by_seed_and_is_the_t_interval_of_the_differences():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 5, 6)  # large between-seed spread, which pairing removes
    rows = [{"task": "t", "layer": 2, "seed": s, "arm": arm, "v": seed_effect[s] + (0.3 if arm == "b" else 0.0)
             + rng.normal(0, 0.01)} for s in range(6) for arm in ("a", "b")]
    df = pd.DataFrame(rows).sample(frac=1, random_state=0)  # order must not matter
    got = inf.paired(df, "v", "arm", "b", "a", ["task", "layer"]).loc[("t", 2)]
    w = df.pivot_table(index="seed", columns="arm", values="v")
    m, lo, hi = inf.t_interval((w["b"] - w["a"]).to_numpy())
    assert (got["mean"], got["lo"], got["hi"]) == pytest.approx((m, lo, hi))
    assert 0.25 < got["lo"] < got["hi"] < 0.35  # unpaired, the interval would be ~ +-5 wide
    # a seed present in one arm only is no pair
    got = inf.paired(df[~((df.seed == 0) & (df.arm == "a"))], "v", "arm", "b", "a", ["task", "layer"])
    assert got.loc[("t", 2), "n"] == 5


def test_paired_refuses_pooling_layers_but_compares_widths():
    df = _strata_frame().assign(task="x1x2")
    with pytest.raises(ValueError, match="layer"):
        inf.paired(df, "v", "width", 1024, 256, ["task"])
    got = inf.paired(df, "v", "width", 1024, 256, ["task", "layer"])
    assert list(got.index) == [("x1x2", 2)]
    assert got.loc[("x1x2", 2), "mean"] == pytest.approx(0.4)


def _frame(gains):
    """A load_runs-like frame: each run has 3 checkpoints x (2 hidden layers + a trivial
    read-out), kta rising by `gain` at the last hidden layer, a fixed amount elsewhere."""
    rows = []
    for rid, (gain, status) in gains.items():
        for step in (0, 50, 100):
            for layer, trivial in ((1, False), (2, False), (3, True)):
                k = 0.2 + (gain * step / 100 if layer == 2 else 0.5 * step / 100)
                rows.append({"run_id": rid, "status": status, "name": "s3", "step": step, "layer": layer,
                             "trivial": trivial, "kta": k, "test_loss": 1.0 - step / 200, "test_acc": None,
                             "train_loss": 0.1})
    return pd.DataFrame(rows)


def test_kta_gain_train_is_the_last_hidden_layers_end_minus_step_0():
    fr = _frame({"r1": (0.3, "ok"), "r2": (0.05, "ok"), "r3": (0.01, "ok"), "r4": (0.5, "diverged")})
    g = findings.kta_gain_train(fr)
    assert set(g.index) == {"r1", "r2", "r3"}  # the diverged run has none
    assert g["r1"] == pytest.approx(0.3) and g["r3"] == pytest.approx(0.01)


def test_run_table_counts_diverged_and_absent_runs_and_reads_the_regime_from_the_given_gains():
    fr = _frame({"r1": (0.3, "ok"), "r2": (0.3, "ok"), "r3": (0.3, "ok"), "r4": (0.5, "diverged")})
    plan = pd.DataFrame({"run_id": ["r1", "r2", "r3", "r4", "r9"], "part": "main", "arm": findings.TRAINED,
                         "task": "x1x2", "optimizer": "sgd", "init_scale": 0.5, "lr": 0.1, "width": 256,
                         "seed": [0, 1, 2, 3, 4], "cell": "sgd scale 0.5"})
    gains = pd.Series({"r1": 0.5, "r2": 0.05, "r3": findings.LAZY - 1e-9})  # test-input gains, not the frame's kta
    rt = findings.run_table(fr, plan, gains)
    assert list(rt.status) == ["ok", "ok", "ok", "diverged", "not run"]
    assert list(rt.regime.iloc[:3]) == ["rich", "between", "lazy"] and rt.regime.iloc[3:].isna().all()
    assert rt.kta_gain_train.iloc[0] == pytest.approx(0.3)
    c = findings.status_counts(rt, ["task"]).loc["x1x2"]
    assert (c.planned, c.ok, c.diverged, c["not run"]) == (5, 3, 1, 1)
    lt = findings.layer_table(fr, rt)
    assert sorted(set(lt.layer)) == [1, 2] and set(lt.run_id) == {"r1", "r2", "r3"}  # no read-out, no diverged run
    assert lt.loc[(lt.layer == 2) & (lt.run_id == "r1"), "kta_0"].item() == pytest.approx(0.2)


def test_step90_locates_the_first_checkpoint_past_90_percent_and_refuses_noise():
    steps = np.arange(0, 5000, 100)
    v = np.minimum(steps / 1000.0, 1.0)  # reaches 0.9 at step 900, flat from 1000
    assert findings.step90(steps, v) == 900
    assert findings.step90(steps, 1 - v) == 900  # a drop as well as a rise
    rng = np.random.default_rng(0)
    noisy = 0.5 + 0.01 * rng.normal(size=steps.size)  # no change beyond its own noise
    assert math.isnan(findings.step90(steps, noisy))
