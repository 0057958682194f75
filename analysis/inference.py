"""Intervals over runs for FINDINGS: every comparison a paired difference, one value per run.

The unit of inference is the run. A stratum is task x width x layer (and whatever else a
caller groups by); layers and widths are never pooled, so `summarize` and `paired` refuse a
grouping that leaves either mixed. Within a stratum, a 95% interval for the mean of the
per-run values is

- a Student t-interval, mean +- t_{n-1, 0.975} sd / sqrt(n), for fewer than 10 runs (a
  percentile bootstrap over 3-5 runs covers only 76-84%);
- a run-level BCa bootstrap (scipy.stats.bootstrap, 9,999 resamples, a fixed seed) for 10
  or more.

    >>> interval([0.1, 0.2, 0.3])["method"]
    't'
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

CONF = 0.95
BOOT_FROM = 10  # runs: from here on a run-level bootstrap, below it a t-interval
N_BOOT = 9999
SEED = 20261201  # the bootstrap's fixed seed: a regeneration gives the same intervals
NEVER_POOLED = ("layer", "width")  # columns a stratum must hold fixed where a frame varies them
COLUMNS = ["mean", "lo", "hi", "n", "method"]


def t_interval(x: Sequence[float], conf: float = CONF) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student t-interval of the mean; NaN bounds for a single value."""
    x = np.asarray(x, float)
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(st.t.ppf(0.5 + conf / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def boot_interval(x: Sequence[float], conf: float = CONF, seed: int = SEED, method: str = "BCa"
                  ) -> tuple[float, float, float]:
    """(mean, lo, hi): a bootstrap interval of the mean over the values (runs), resampled
    N_BOOT times from a fixed seed. All values equal: the interval is that value."""
    x = np.asarray(x, float)
    m = float(x.mean())
    if np.ptp(x) == 0:
        return m, m, m
    r = st.bootstrap((x,), np.mean, confidence_level=conf, n_resamples=N_BOOT, method=method,
                     random_state=np.random.default_rng(seed))
    lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa undefined (a degenerate resample set)
        return boot_interval(x, conf, seed, "percentile")
    return m, lo, hi


def interval(x: Iterable[float], conf: float = CONF) -> pd.Series:
    """The 95% interval of the mean of per-run values (NaNs dropped): t below BOOT_FROM
    runs, bootstrap from it. A Series: mean, lo, hi, n, method ('t', 'bootstrap', '-')."""
    x = np.asarray([v for v in x if v is not None and np.isfinite(v)], float)
    if x.size == 0:
        return pd.Series([math.nan, math.nan, math.nan, 0, "-"], index=COLUMNS, dtype=object)
    m, lo, hi = t_interval(x, conf) if x.size < BOOT_FROM else boot_interval(x, conf)
    return pd.Series([m, lo, hi, int(x.size), "t" if x.size < BOOT_FROM else "bootstrap"], index=COLUMNS, dtype=object)


def check_strata(df: pd.DataFrame, by: Sequence[str]) -> None:
    """Refuse a grouping that would pool layers or widths: each of NEVER_POOLED that the
    frame varies must be one of `by`."""
    for col in NEVER_POOLED:
        if col in df.columns and col not in by and df[col].nunique(dropna=True) > 1:
            raise ValueError(f"grouping by {list(by)} would pool {df[col].nunique()} values of {col!r}; "
                             f"a stratum holds {col} fixed")


def summarize(df: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """One interval of the mean of `value` per stratum `by` (a row per run of `df` is one
    value): a frame indexed by the strata with the COLUMNS."""
    by = list(by)
    check_strata(df, by)
    if df.empty:
        return pd.DataFrame(columns=by + COLUMNS).set_index(by)
    return df.groupby(by, dropna=False, sort=True)[value].apply(interval).unstack()


def paired(df: pd.DataFrame, value: str, arm: str, a, b, by: Sequence[str], pair_on: Sequence[str] = ("seed",)
           ) -> pd.DataFrame:
    """The interval of the mean paired difference value(arm = a) - value(arm = b) per
    stratum `by`, the pairs matched on `pair_on` (one row per stratum x pair x arm). A pair
    with either side missing is left out (and so counted in no n)."""
    by, pair_on = list(by), list(pair_on)
    check_strata(df, by + [arm])  # the arm may be a width: compared, not pooled
    sub = df[df[arm].isin([a, b])]
    dup = sub.duplicated(by + pair_on + [arm])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} rows repeat a stratum x pair x arm: pair on more than {pair_on}")
    wide = sub.pivot_table(index=by + pair_on, columns=arm, values=value, aggfunc="first", dropna=False)
    if a not in wide.columns or b not in wide.columns:
        return pd.DataFrame(columns=by + COLUMNS).set_index(by)
    d = (wide[a] - wide[b]).dropna().rename("diff").reset_index()
    if d.empty:
        return pd.DataFrame(columns=by + COLUMNS).set_index(by)
    return d.groupby(by, sort=True)["diff"].apply(interval).unstack()


def excludes_zero(lo: float, hi: float) -> int:
    """+1 when the interval lies above 0, -1 below, 0 when it holds 0 or is undefined."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0
    return 1 if lo > 0 else (-1 if hi < 0 else 0)


def fmt(row, digits: int = 2, signed: bool = False) -> str:
    """`mean [lo, hi]`, or `-` where there is no value; `mean (n = 1)` without an interval."""
    if row is None or not row["n"] or not np.isfinite(row["mean"]):
        return "-"
    m = f"{row['mean']:+.{digits}f}" if signed else f"{row['mean']:.{digits}f}"
    if not (np.isfinite(row["lo"]) and np.isfinite(row["hi"])):
        return f"{m} (n = {row['n']})"
    return f"{m} [{row['lo']:.{digits}f}, {row['hi']:.{digits}f}]"
