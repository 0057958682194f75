"""Build FINDINGS.md and its figures from the runs of the tight-frame study.

    dnfa sweep configs/tightframe_parity.yaml configs/tightframe_mnist1d.yaml && python analysis/findings.py

Reads only result.json files (through dnfa's report module); every number in FINDINGS.md is
computed here from them, so rerunning this after the sweep regenerates the document.
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
STUDY = [ROOT / "configs" / "tightframe_parity.yaml", ROOT / "configs" / "tightframe_mnist1d.yaml"]
TASK_NAME = {"sparse_parity": "parity", "mnist1d": "mnist1d"}


# ----------------------------------------------------------------------------- loading
def load_layers(root: Path) -> tuple[list[dict], dict]:
    """One record per (run, non-trivial layer) with the run's settings and the layer's
    statistics at initialisation (`*_0`) and at the end; plus run-level counts."""
    rows, counts = [], {"runs": 0, "ok": 0, "diverged": 0, "failed": 0, "missing": 0}
    per_task_acc: dict[str, list] = {}
    for f in STUDY:
        for cfg in load_config(f).expand():
            counts["runs"] += 1
            res = runs.load_result(root, cfg.run_id) if (root / cfg.run_id).exists() else None
            if res is None:
                counts["missing"] += 1
                continue
            counts[res["status"]] += 1
            if res["status"] != "ok":
                continue
            task = TASK_NAME[cfg.data.task]
            first, last = res["checkpoints"][0], res["checkpoints"][-1]
            per_task_acc.setdefault(task, []).append(last["test_acc"])
            L = len(last["layers"])
            for a, b in zip(first["layers"], last["layers"]):
                if b["trivial"]:
                    continue
                k_out, k_in = b["shape"]
                rec = {
                    "task": task, "activation": cfg.model.activation, "loss": cfg.train.loss,
                    "depth": len(cfg.model.hidden()), "width": max(cfg.model.hidden()), "init_scale": cfg.model.init_scale,
                    "seed": cfg.seed, "run_id": cfg.run_id, "test_acc": last["test_acc"],
                    "layer": b["layer"], "position": "first" if b["layer"] == 1 else "hidden",
                    "kind": "widening" if k_out > k_in else ("narrowing" if k_out < k_in else "square"),
                    "n_layers": L,
                }
                for k, v in b.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
                        rec[k] = v
                for k in ("pearson_a1", "pearson_a05", "tightness", "tightness_range", "rand_pearson_a1",
                          "rand_gap_a1", "alpha_star", "half_range_pearson", "left_pearson"):
                    rec[f"{k}_0"] = a.get(k)
                rows.append(rec)
    counts["acc"] = {t: (float(np.median(v)), float(np.mean(np.array(v) >= 0.9))) for t, v in per_task_acc.items()}
    return rows, counts


# ----------------------------------------------------------------------------- statistics
def vals(rows, key):
    return np.array([r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])], dtype=float)


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
    sel = [r for r in rows if pred(r) is not None]
    return float(np.mean([bool(pred(r)) for r in sel])) if sel else math.nan


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        return math.nan
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def pair(rows, kx, ky):
    sel = [r for r in rows if r.get(kx) is not None and r.get(ky) is not None]
    return [r[kx] for r in sel], [r[ky] for r in sel]


def where(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def f2(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


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


COLORS = {"relu": "C0", "tanh": "C1", "gelu": "C2", "quadratic": "C3", "identity": "C4"}


def fig_init_vs_end(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    for i, task in enumerate(("parity", "mnist1d")):
        for j, key in enumerate(("pearson_a1", "pearson_a05")):
            ax = axes[i][j]
            for act, c in COLORS.items():
                x, y = pair(where(rows, task=task, activation=act), f"{key}_0", key)
                ax.scatter(x, y, s=5, alpha=0.5, color=c, label=act)
            ax.plot([-1, 1], [-1, 1], "k--", lw=0.8)
            ax.set_xlim(-0.2, 1.02)
            ax.set_ylim(-0.2, 1.02)
            ax.set_xlabel(f"{key} at initialisation")
            ax.set_ylabel(f"{key} at the end")
            ax.set_title(f"{task}: {key}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, markerscale=3)
    fig.suptitle("Figure 1. The ansatz at initialisation and after training (one point per run and layer)")
    fig.tight_layout()
    return _save(fig, out / "fig1_init_vs_end.png")


def fig_a1_vs_tightness(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, key in zip(axes, ("tightness", "tightness_range")):
        for kind, c in (("narrowing", "C0"), ("square", "C2"), ("widening", "C3")):
            x, y = pair(where(rows, kind=kind), key, "pearson_a1")
            ax.scatter(x, y, s=5, alpha=0.4, color=c, label=f"{kind} layers (rho = {spearman(x, y):.2f})")
        ax.set_xscale("log")
        ax.set_xlabel(f"{key} of pgop (log)")
        ax.set_ylabel("pearson_a1 (NFM vs AGOP)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, markerscale=3)
    fig.suptitle("Figure 2. The ansatz (alpha = 1) against the tightness of pgop at the end, both tasks pooled\n"
                 "(streaks at 1/k: rank-1 pgops of linear nets)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "fig2_a1_vs_tightness.png")


def fig_rand_gap(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(-0.6, 1.0, 49)
    for ax, task in zip(axes, ("parity", "mnist1d")):
        sel = where(rows, task=task)
        ax.hist(vals(sel, "rand_gap_a1_0"), bins=bins, alpha=0.6, label="initialisation")
        ax.hist(vals(sel, "rand_gap_a1"), bins=bins, alpha=0.6, label="end")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("rand_gap_a1 = pearson_a1 - rand_pearson_a1")
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 3. What W adds over a random matrix at the same pre-activation gradients")
    fig.tight_layout()
    return _save(fig, out / "fig3_rand_gap.png")


def fig_alpha_star(rows, out: Path) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, task in zip(axes, ("parity", "mnist1d")):
        data = [vals(where(rows, task=task, activation=a), "alpha_star") for a in COLORS]
        ax.boxplot(data, tick_labels=list(COLORS), showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i) + np.random.default_rng(i).uniform(-0.15, 0.15, d.size), d, s=3, alpha=0.3)
        ax.axhline(0.5, color="C1", ls="--", lw=1, label="alpha = 1/2")
        ax.axhline(1.0, color="C2", ls="--", lw=1, label="alpha = 1")
        ax.set_ylabel("alpha_star at the end")
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Figure 4. The exponent that fits best, by activation (non-trivial layers)")
    fig.tight_layout()
    return _save(fig, out / "fig4_alpha_star.png")


def fig_half_vs_tight(rows, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for act, c in COLORS.items():
        x, y = pair(where(rows, activation=act), "tightness_range", "half_range_pearson")
        ax.scatter(x, y, s=5, alpha=0.4, color=c, label=act)
    ax.set_xscale("log")
    ax.set_xlabel("tightness_range (alpha = 1's isotropy on range(W))")
    ax.set_ylabel("half_range_pearson (alpha = 1/2's identity: U^T G U vs S^2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=3)
    ax.set_title("Figure 5. The two identities on range(W), at the end", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "fig5_half_vs_tightness.png")


# ----------------------------------------------------------------------------- tables
TASKS = ("parity", "mnist1d")
TIE = 1e-9  # |pearson_a05 - pearson_a1| below this is a tie (a rank-1 agop makes every power equal)


def t_training(counts) -> str:
    body = []
    for task in TASKS:
        m, f90 = counts["acc"].get(task, (math.nan, math.nan))
        body.append([task, f2(m), pct(f90)])
    return table(["task", "median test accuracy", "runs with test accuracy >= 0.9"], body)


def t_q1(rows) -> str:
    body = []
    for task in TASKS:
        for pos in ("first", "hidden"):
            sel = where(rows, task=task, position=pos)
            body.append([task, pos, len(sel), iqr(sel, "pearson_a1_0"), iqr(sel, "pearson_a1"),
                         pct(frac(sel, lambda r: None if r["pearson_a1"] is None or r["pearson_a1_0"] is None
                                  else r["pearson_a1"] > r["pearson_a1_0"])),
                         iqr(sel, "pearson_a05_0"), iqr(sel, "pearson_a05"),
                         pct(frac(sel, lambda r: None if r["pearson_a05"] is None or r["pearson_a05_0"] is None
                                  else r["pearson_a05"] > r["pearson_a05_0"]))])
    return table(["task", "layer", "n", "pearson_a1 init", "pearson_a1 end", "a1 rose",
                  "pearson_a05 init", "pearson_a05 end", "a05 rose"], body)


def t_q2(rows) -> str:
    body = []
    for task in TASKS:
        for kind in ("narrowing", "square", "widening"):
            sel = where(rows, task=task, kind=kind)
            if not sel:
                continue
            body.append([task, kind, len(sel), iqr(sel, "pearson_a1"), iqr(sel, "tightness"), iqr(sel, "tightness_range"),
                         f2(spearman(*pair(sel, "tightness", "pearson_a1"))),
                         f2(spearman(*pair(sel, "tightness_range", "pearson_a1"))),
                         pct(frac(sel, lambda r: None if r["pearson_a1"] is None else r["pearson_a1"] > 0.9)),
                         pct(frac(sel, lambda r: None if r["tightness_range"] is None else r["tightness_range"] > 0.9))])
    return table(["task", "layer kind", "n", "pearson_a1", "tightness", "tightness_range",
                  "rho(tightness, a1)", "rho(tightness_range, a1)", "a1 > 0.9", "tightness_range > 0.9"], body)


def t_q3(rows) -> str:
    body = []
    for task in TASKS:
        for pos in ("first", "hidden"):
            sel = where(rows, task=task, position=pos)
            spec_gap = [dict(g=r["pearson_a1"] - r["rand_spec_pearson_a1"]) for r in sel
                        if r.get("pearson_a1") is not None and r.get("rand_spec_pearson_a1") is not None]
            body.append([task, pos, iqr(sel, "rand_pearson_a1"), iqr(sel, "rand_gap_a1_0"), iqr(sel, "rand_gap_a1"),
                         iqr(spec_gap, "g"),
                         pct(frac(sel, lambda r: None if r["rand_gap_a1"] is None else r["rand_gap_a1"] > 0.05))])
    return table(["task", "layer", "rand_pearson_a1 end", "gap init", "gap end",
                  "gap to same-spectrum R, end", "gap > 0.05 at end"], body)


def t_q4(rows) -> str:
    body = []
    for task in TASKS:
        for act in COLORS:
            sel = where(rows, task=task, activation=act)
            body.append([task, act, iqr(sel, "alpha_star"),
                         pct(frac(sel, lambda r: None if r["pearson_a05"] is None or r["pearson_a1"] is None
                                  else r["pearson_a05"] > r["pearson_a1"] + TIE)),
                         pct(frac(sel, lambda r: None if r["pearson_a05"] is None or r["pearson_a1"] is None
                                  else abs(r["pearson_a05"] - r["pearson_a1"]) <= TIE)),
                         iqr(sel, "half_range_pearson"), iqr(sel, "tightness_range")])
    return table(["task", "activation", "alpha_star end", "a05 beats a1", "tie (rank-1 agop)", "half_range_pearson",
                  "tightness_range"], body)


def t_q4b(rows) -> str:
    body = []
    for task in TASKS:
        for lab, pred in (("tightness_range < 0.3", lambda r: r["tightness_range"] < 0.3),
                          ("tightness_range >= 0.3", lambda r: r["tightness_range"] >= 0.3)):
            sel = [r for r in where(rows, task=task) if r.get("tightness_range") is not None and pred(r)]
            body.append([task, lab, len(sel), iqr(sel, "half_range_pearson"), iqr(sel, "pearson_a05"), iqr(sel, "pearson_a1")])
    return table(["task", "layers where", "n", "half_range_pearson", "pearson_a05", "pearson_a1"], body)


def t_q5(rows, key: str) -> str:
    body = []
    levels = ("mse", "cross_entropy") if key == "loss" else tuple(COLORS)
    for task in TASKS:
        for lv in levels:
            sel = where(rows, task=task, **{key: lv})
            runs_ = {r["run_id"]: r["test_acc"] for r in sel}
            body.append([task, lv, f2(float(np.median(list(runs_.values())))) if runs_ else "-",
                         iqr(sel, "pearson_a1"), iqr(sel, "pearson_a05"), iqr(sel, "tightness_range"),
                         iqr(sel, "rand_gap_a1"), iqr(sel, "alpha_star")])
    return table(["task", key, "test acc", "pearson_a1", "pearson_a05", "tightness_range", "rand_gap_a1",
                  "alpha_star"], body)


# ----------------------------------------------------------------------------- numbers
def key_numbers(rows) -> dict:
    """Every number the text of FINDINGS.md cites, computed from the layer records."""
    n = {}
    for task in TASKS:
        t = where(rows, task=task)
        for pos in ("first", "hidden"):
            sel = where(t, position=pos)
            for k in ("pearson_a1", "pearson_a05", "tightness_range", "tightness", "rand_gap_a1", "rand_pearson_a1",
                      "alpha_star", "half_range_pearson"):
                n[f"{task}.{pos}.{k}"] = med(sel, k)
                n[f"{task}.{pos}.{k}_0"] = med(sel, f"{k}_0") if f"{k}_0" in (sel[0] if sel else {}) else math.nan
        n[f"{task}.rho_tr_a1"] = spearman(*pair(t, "tightness_range", "pearson_a1"))
        n[f"{task}.rho_t_a1"] = spearman(*pair(t, "tightness", "pearson_a1"))
        n[f"{task}.frac_a1_gt_09"] = frac(t, lambda r: None if r["pearson_a1"] is None else r["pearson_a1"] > 0.9)
        n[f"{task}.frac_tr_gt_09"] = frac(t, lambda r: None if r["tightness_range"] is None else r["tightness_range"] > 0.9)
        n[f"{task}.frac_gap_gt_005"] = frac(t, lambda r: None if r["rand_gap_a1"] is None else r["rand_gap_a1"] > 0.05)
        n[f"{task}.frac_gap0_gt_005"] = frac(t, lambda r: None if r["rand_gap_a1_0"] is None else r["rand_gap_a1_0"] > 0.05)
        n[f"{task}.frac_a05_beats_a1"] = frac(t, lambda r: None if r["pearson_a05"] is None or r["pearson_a1"] is None
                                              else r["pearson_a05"] > r["pearson_a1"] + TIE)
        n[f"{task}.frac_a05_ties_a1"] = frac(t, lambda r: None if r["pearson_a05"] is None or r["pearson_a1"] is None
                                             else abs(r["pearson_a05"] - r["pearson_a1"]) <= TIE)
        n[f"{task}.frac_a1_rose"] = frac(t, lambda r: None if r["pearson_a1"] is None or r["pearson_a1_0"] is None
                                         else r["pearson_a1"] > r["pearson_a1_0"])
        n[f"{task}.frac_a05_rose"] = frac(t, lambda r: None if r["pearson_a05"] is None or r["pearson_a05_0"] is None
                                          else r["pearson_a05"] > r["pearson_a05_0"])
        n[f"{task}.alpha_star"] = med(t, "alpha_star")
        n[f"{task}.rand_sd"] = med(t, "rand_pearson_a1_sd")
        n[f"{task}.n_layers"] = len(t)
        for lv in ("mse", "cross_entropy"):
            sel = where(t, loss=lv)
            for k in ("pearson_a1", "pearson_a05", "tightness_range", "rand_gap_a1", "alpha_star"):
                n[f"{task}.{lv}.{k}"] = med(sel, k)
        for act in COLORS:
            sel = where(t, activation=act)
            for k in ("pearson_a1", "pearson_a05", "tightness_range", "rand_gap_a1", "alpha_star", "half_range_pearson"):
                n[f"{task}.{act}.{k}"] = med(sel, k)
        for kind in ("narrowing", "square", "widening"):
            sel = where(t, kind=kind)
            n[f"{task}.{kind}.rho_t_a1"] = spearman(*pair(sel, "tightness", "pearson_a1"))
            n[f"{task}.{kind}.rho_tr_a1"] = spearman(*pair(sel, "tightness_range", "pearson_a1"))
        for pos in ("first", "hidden"):
            sel = [dict(g=r["pearson_a1"] - r["rand_spec_pearson_a1"]) for r in where(t, position=pos)
                   if r.get("pearson_a1") is not None and r.get("rand_spec_pearson_a1") is not None]
            n[f"{task}.{pos}.spec_gap"] = med(sel, "g")
            gap = n[f"{task}.{pos}.rand_gap_a1"]
            n[f"{task}.{pos}.spec_closes"] = 1 - n[f"{task}.{pos}.spec_gap"] / gap if gap > 0 else math.nan
        gaps = {a: n[f"{task}.{a}.rand_gap_a1"] for a in COLORS if math.isfinite(n[f"{task}.{a}.rand_gap_a1"])}
        n[f"{task}.min_gap_act"] = min(gaps, key=gaps.get)
        a1s = {a: n[f"{task}.{a}.pearson_a1"] for a in COLORS if math.isfinite(n[f"{task}.{a}.pearson_a1"])}
        n[f"{task}.min_a1_act"] = min(a1s, key=a1s.get)
        n[f"{task}.spec_sd"] = med(t, "rand_spec_pearson_a1_sd")
        low = [r for r in t if r.get("tightness_range") is not None and r["tightness_range"] < 0.3]
        high = [r for r in t if r.get("tightness_range") is not None and r["tightness_range"] >= 0.3]
        for lab, sel in (("low_tr", low), ("high_tr", high)):
            n[f"{task}.{lab}.n"] = len(sel)
            for k in ("half_range_pearson", "pearson_a05", "pearson_a1"):
                n[f"{task}.{lab}.{k}"] = med(sel, k)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=None, help="default: $DNFA_RUNS_DIR or runs/")
    ap.add_argument("--out", default=str(ROOT / "FINDINGS.md"))
    ap.add_argument("--numbers", help="also write every cited number as JSON here")
    a = ap.parse_args()
    root = runs.runs_root(a.runs_dir)
    rows, counts = load_layers(root)
    if counts["missing"]:
        raise SystemExit(f"{counts['missing']} of {counts['runs']} study runs have no result.json in {root}: "
                         "run `dnfa sweep configs/tightframe_parity.yaml configs/tightframe_mnist1d.yaml` first")
    out = Path(a.out)
    figdir = out.parent / "findings"
    figs = [fig_init_vs_end(rows, figdir), fig_a1_vs_tightness(rows, figdir), fig_rand_gap(rows, figdir),
            fig_alpha_star(rows, figdir), fig_half_vs_tight(rows, figdir)]
    nums = key_numbers(rows)
    if a.numbers:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in nums.items()}
        Path(a.numbers).write_text(json.dumps({"counts": counts, "numbers": clean}, indent=1, allow_nan=False))
    tables = {"training": t_training(counts), "q1": t_q1(rows), "q2": t_q2(rows), "q3": t_q3(rows),
              "q4": t_q4(rows), "q4b": t_q4b(rows), "q5_loss": t_q5(rows, "loss"), "q5_act": t_q5(rows, "activation")}
    out.write_text(render(counts, nums, tables, figs))
    print(f"wrote {out} and {len(figs)} figures in {figdir}/ from {counts['ok']} runs ({len(rows)} layers)")



def _dir(a, b, up="rises", down="falls") -> str:
    return up if b > a else down


def _strength(rho) -> str:
    r = abs(rho)
    return "negligible" if r < 0.2 else ("weak" if r < 0.4 else ("moderate" if r < 0.6 else "strong"))


KEYS_Q1 = [f"{t}.{pos}.{k}" for t in TASKS for pos in ("first", "hidden") for k in ("pearson_a1", "pearson_a05")]


def _q1_lead(n) -> str:
    rose = [n[k] > n[k + "_0"] for k in KEYS_Q1]
    if all(rose):
        return ("Both versions hold better after training than at initialisation, in every row below, "
                "but initialisation is not a low baseline.")
    return (f"Training raises the median correlation in {sum(rose)} of the {len(rose)} cases below and lowers it "
            "in the rest; initialisation is not a low baseline.")


def _q3_lead(n) -> str:
    init = [abs(n[f"{t}.{pos}.rand_gap_a1_0"]) for t in TASKS for pos in ("first", "hidden")]
    end = [n[f"{t}.{pos}.rand_gap_a1"] for t in TASKS for pos in ("first", "hidden")]
    lead = "At initialisation, no:" if max(init) < 0.05 else "At initialisation, barely:"
    return lead + ("" if min(end) > 0.05 else " (and after training only in part)")


def _share(f) -> str:
    return "almost everywhere" if f >= 0.8 else ("in most layers" if f >= 0.5 else "only in a minority of layers")


def _loss_lead(n) -> str:
    d = max(abs(n[f"{t}.mse.pearson_a1"] - n[f"{t}.cross_entropy.pearson_a1"]) for t in TASKS)
    return "matters little for the correlations" if d < 0.1 else "changes the correlations"


def _range_effect(n, task) -> str:
    full, rng = n[f"{task}.widening.rho_t_a1"], n[f"{task}.widening.rho_tr_a1"]
    if rng > full and abs(rng) >= 0.2:
        return (f"on {task}, isotropy on range(W) relates to the ansatz more than full isotropy does "
                f"({f2(rng)} against {f2(full)}; a {_strength(rng)} link), as the exact equivalence suggests")
    return (f"on {task} the link is {_strength(full)} in full ({f2(full)}) and {_strength(rng)} on range(W) "
            f"({f2(rng)})")


def _spec_share(n) -> str:
    rows = [(t, pos, n[f"{t}.{pos}.spec_closes"]) for t in TASKS for pos in ("first", "hidden")]
    ok = [r for r in rows if math.isfinite(r[2])]
    big = [f"{t} {pos} layers" for t, pos, v in ok if v > 0.5]
    small = [f"{t} {pos} layers" for t, pos, v in ok if v <= 0.5]
    if not small:
        return "more than half of what W contributes is its spectrum, less its singular vectors"
    if not big:
        return "W's singular vectors, not only its spectrum, account for most of what it contributes"
    return (f"W's spectrum accounts for more than half of its contribution in {', '.join(big)}; its singular "
            f"vectors account for most of it in {', '.join(small)}")


def _half_vs_isotropy(n) -> str:
    lower = all(n[f"{t}.low_tr.half_range_pearson"] < n[f"{t}.high_tr.half_range_pearson"] for t in TASKS)
    higher = all(n[f"{t}.low_tr.half_range_pearson"] > n[f"{t}.high_tr.half_range_pearson"] for t in TASKS)
    best = max(n[f"{t}.low_tr.half_range_pearson"] for t in TASKS)
    level = "moderate at best" if best < 0.75 else "fairly strong"
    if lower:
        return ("lower than", f"So the left identity is {level} and weakest exactly where isotropy fails: neither "
                "exact identity on range(W) explains why the alpha = 1/2 correlation stays high.")
    if higher:
        return ("higher than", f"So the left identity ({level}) does hold better where isotropy fails.")
    return ("against", f"The left identity is {level}, with no consistent relation to isotropy across the tasks.")


def render(counts, n, tables, figs) -> str:
    """FINDINGS.md: every number below comes from `n` (key_numbers) or the tables."""
    g = lambda k: f2(n[k])  # noqa: E731
    p = lambda k: pct(n[k])  # noqa: E731
    fig = dict(zip(("init", "tight", "gap", "alpha", "half"), figs))
    return f"""# FINDINGS: does the Deep Neural Feature Ansatz hold, and is it a tight frame?

Every table, figure and number in this file is computed from the study's runs by

    dnfa sweep configs/tightframe_parity.yaml configs/tightframe_mnist1d.yaml && python analysis/findings.py

(the sweep skips runs that are done; `analysis/findings.py` rewrites this file and
`findings/*.png`). Medians are given with their interquartile range as `median [q1, q3]`.

## The study

{counts['runs']} runs: {counts['ok']} finished ok, {counts['diverged']} diverged, {counts['failed']} failed.
Two tasks, each a full grid of activation {{relu, tanh, gelu, quadratic, identity}} x loss
{{mse, cross_entropy}} x depth {{1, 2, 3}} hidden layers x width {{12, 48, 192}} x init_scale
{{0.1, 1.0}} x 3 seeds:

- **parity**: y = x_1 x_2 on x uniform in {{-1, 1}}^20 (the Boolean version of the paper's
  synthetic task), 2000 training samples, 150 epochs;
- **mnist1d**: 10 classes, 40 inputs, 4000 training samples, 100 epochs.

Bias-free MLPs, N(0, init_scale^2 / fan_in) init, Adam lr 1e-3, batch 128. At
initialisation and 4 log-spaced checkpoints, AGOP and pgop over 1000 training samples in
float64. Width 12 makes layer 1 *narrowing* (k_2 < k_1), 48 and 192 make it *widening*;
hidden-to-hidden layers are *square*. The read-out layer, where agop = nfm by
construction, is left out of every statistic below: {n['parity.n_layers']} parity and {n['mnist1d.n_layers']} mnist1d layers remain.
"End" is the last checkpoint.

{tables['training']}

Two things to keep in mind. Without biases a tanh or identity network is an odd function
of its input and cannot fit the even target x_1 x_2: on parity those runs sit at chance
and act as a built-in "cannot learn" control. And these are small MLPs on a 1-D signal
task; on mnist1d they reach modest accuracy.

## 1. How well do alpha = 1 and alpha = 1/2 hold, per layer, versus initialisation?

{_q1_lead(n)} On parity the median `pearson_a1` of the first layer
{_dir(n['parity.first.pearson_a1_0'], n['parity.first.pearson_a1'])} from {g('parity.first.pearson_a1_0')} to {g('parity.first.pearson_a1')}, and of hidden layers
from {g('parity.hidden.pearson_a1_0')} to {g('parity.hidden.pearson_a1')}; `pearson_a05` goes from {g('parity.first.pearson_a05_0')} to {g('parity.first.pearson_a05')} (first) and
{g('parity.hidden.pearson_a05_0')} to {g('parity.hidden.pearson_a05')} (hidden). On mnist1d the same medians are {g('mnist1d.first.pearson_a1_0')} -> {g('mnist1d.first.pearson_a1')}
and {g('mnist1d.hidden.pearson_a1_0')} -> {g('mnist1d.hidden.pearson_a1')} for alpha = 1, {g('mnist1d.first.pearson_a05_0')} -> {g('mnist1d.first.pearson_a05')} and {g('mnist1d.hidden.pearson_a05_0')} -> {g('mnist1d.hidden.pearson_a05')} for
alpha = 1/2. Training raised `pearson_a1` in {p('parity.frac_a1_rose')} of parity layers and {p('mnist1d.frac_a1_rose')} of mnist1d layers.
The spread is wide (see the quartiles): a single run's correlation says little.

{tables['q1']}

![Figure 1]({'findings/' + fig['init']})

## 2. Does the tight-frame version hold equally well, in full and on range(W)?

No. The two statements are equivalent only when they hold *exactly*; approximately, they
come apart. The pre-activation gradients are far from a tight frame: median
`tightness_range` at the end is {g('parity.first.tightness_range')} (first layers) and {g('parity.hidden.tightness_range')} (hidden) on parity,
{g('mnist1d.first.tightness_range')} and {g('mnist1d.hidden.tightness_range')} on mnist1d, where 1 is a tight frame. Only {p('parity.frac_tr_gt_09')} (parity) and
{p('mnist1d.frac_tr_gt_09')} (mnist1d) of layers have `tightness_range` > 0.9, while {p('parity.frac_a1_gt_09')} and {p('mnist1d.frac_a1_gt_09')}
have `pearson_a1` > 0.9. Across all layers the rank correlation between `tightness_range`
and `pearson_a1` is {g('parity.rho_tr_a1')} on parity and {g('mnist1d.rho_tr_a1')} on mnist1d (full `tightness`:
{g('parity.rho_t_a1')} and {g('mnist1d.rho_t_a1')}): the link is {_strength(n['parity.rho_tr_a1'])} on parity and {_strength(n['mnist1d.rho_tr_a1'])} on
mnist1d, and a layer can score high on the ansatz while its gradients are far from a tight
frame. Restricting to range(W) changes anything only for widening layers (for narrowing
and square ones range(W) is everything). Among widening layers, {_range_effect(n, 'mnist1d')};
{_range_effect(n, 'parity')}. Even on range(W), tight frames (> 0.9) are rare.

How can pearson_a1 be high while pgop is far from isotropic? `agop = W^T G W` and
`nfm = W^T W` share the factor W: when W's spectrum is spread out, both matrices are
dominated by W's top right-singular directions whatever G does on them, and the entrywise
correlation is high. Question 3's same-spectrum baseline is the test of that explanation.

{tables['q2']}

![Figure 2]({'findings/' + fig['tight']})

## 3. Does the trained W beat a random W at the same pre-activation gradients?

{_q3_lead(n)} the median gap `pearson_a1 - rand_pearson_a1` is
{g('parity.first.rand_gap_a1_0')} / {g('parity.hidden.rand_gap_a1_0')} (parity first / hidden) and {g('mnist1d.first.rand_gap_a1_0')} / {g('mnist1d.hidden.rand_gap_a1_0')} (mnist1d): the
ansatz's initial correlation is what *any* Gaussian matrix would show with that G. After
training the gap is {g('parity.first.rand_gap_a1')} / {g('parity.hidden.rand_gap_a1')} on parity and {g('mnist1d.first.rand_gap_a1')} / {g('mnist1d.hidden.rand_gap_a1')} on mnist1d, and
exceeds 0.05 in {p('parity.frac_gap_gt_005')} (parity) and {p('mnist1d.frac_gap_gt_005')} (mnist1d) of layers (against
{p('parity.frac_gap0_gt_005')} and {p('mnist1d.frac_gap0_gt_005')} at initialisation). So the trained ansatz is not only a property of G:
it pins W down to a degree. A random matrix with *W's own singular values* and random
singular vectors closes {pct(n['parity.first.spec_closes'])} / {pct(n['parity.hidden.spec_closes'])} (parity first / hidden) and
{pct(n['mnist1d.first.spec_closes'])} / {pct(n['mnist1d.hidden.spec_closes'])} (mnist1d) of the median gap (column "gap to same-spectrum R": {g('parity.first.spec_gap')} /
{g('parity.hidden.spec_gap')} on parity, {g('mnist1d.first.spec_gap')} / {g('mnist1d.hidden.spec_gap')} on mnist1d): {_spec_share(n)}.

{tables['q3']}

![Figure 3]({'findings/' + fig['gap']})

## 4. Which exponent fits better, and where?

alpha = 1/2 does {_share(min(n['parity.frac_a05_beats_a1'], n['mnist1d.frac_a05_beats_a1']))}: `pearson_a05` exceeds `pearson_a1` in
{p('parity.frac_a05_beats_a1')} of parity layers and {p('mnist1d.frac_a05_beats_a1')} of mnist1d layers (ties, where the agop has rank 1 and
every power gives the same correlation: {p('parity.frac_a05_ties_a1')} and {p('mnist1d.frac_a05_ties_a1')}). The best exponent `alpha_star` is lower
still: median {g('parity.alpha_star')} on parity and {g('mnist1d.alpha_star')} on mnist1d, varying with the activation
(table below). Deep linear networks, where theory gives alpha = 1/L for the first layer,
follow it to within 0.015 in `configs/deep_linear.yaml` (README); here, on nonlinear nets
from a standard init, no single exponent is universal.

The alpha = 1/2 identity has a left-singular-vector form: on range(W), pgop proportional to
S^2 (`half_range_pearson`). Does it hold where alpha = 1's isotropy does not?
Where `tightness_range` < 0.3 (far from isotropic) its median is {g('parity.low_tr.half_range_pearson')} on parity and
{g('mnist1d.low_tr.half_range_pearson')} on mnist1d, {_half_vs_isotropy(n)[0]} the {g('parity.high_tr.half_range_pearson')} and {g('mnist1d.high_tr.half_range_pearson')} where `tightness_range`
>= 0.3, while `pearson_a05` stays at {g('parity.low_tr.pearson_a05')} and {g('mnist1d.low_tr.pearson_a05')} in those far-from-isotropic layers.
{_half_vs_isotropy(n)[1]} Question 3 points to the factor W that nfm and agop share.

{tables['q4']}

{tables['q4b']}

![Figure 4]({'findings/' + fig['alpha']})

![Figure 5]({'findings/' + fig['half']})

## 5. Does the loss function matter? Does the activation?

The loss {_loss_lead(n)}: median `pearson_a1` is {g('parity.mse.pearson_a1')} (mse) and
{g('parity.cross_entropy.pearson_a1')} (cross-entropy) on parity, {g('mnist1d.mse.pearson_a1')} and {g('mnist1d.cross_entropy.pearson_a1')} on mnist1d. It
matters more for what W adds: the random-W gap is {g('parity.mse.rand_gap_a1')} vs {g('parity.cross_entropy.rand_gap_a1')} (parity) and
{g('mnist1d.mse.rand_gap_a1')} vs {g('mnist1d.cross_entropy.rand_gap_a1')} (mnist1d), mse vs cross-entropy.

The activation matters more. The smallest random-W gap belongs to {n['parity.min_gap_act']} networks on parity
({g('parity.' + n['parity.min_gap_act'] + '.rand_gap_a1')}) and to {n['mnist1d.min_gap_act']} networks on mnist1d ({g('mnist1d.' + n['mnist1d.min_gap_act'] + '.rand_gap_a1')}): there the ansatz is
mostly G's doing. The identity nets, which
cannot fit parity, have {'the lowest' if n['parity.min_a1_act'] == 'identity' else 'a'} `pearson_a1` on parity ({g('parity.identity.pearson_a1')}) and, being linear with
one output, a rank-1 AGOP there. tanh, unable to fit parity either, still shows a high
`pearson_a1` ({g('parity.tanh.pearson_a1')}) and a large gap ({g('parity.tanh.rand_gap_a1')}): a high correlation, even one well above
the random-W baseline, is no evidence that the network learned the task.

{tables['q5_loss']}

{tables['q5_act']}

## Caveats

- Small MLPs (width <= 192), two tasks, one optimizer (Adam; the paper used SGD), one
  learning rate, bias-free. The numbers are medians over a grid, not over a distribution of
  "typical" networks.
- AGOP and pgop are measured on 1000 training samples. The random-W baselines are the
  mean over 4 random matrices per run and layer (fixed across checkpoints). Their spread
  across draws (median `rand_pearson_a1_sd` {g('parity.rand_sd')} on parity, {g('mnist1d.rand_sd')} on mnist1d;
  `rand_spec_pearson_a1_sd` {g('parity.spec_sd')} and {g('mnist1d.spec_sd')}) puts the standard error of one layer's
  4-draw mean at about half that: small next to the random-W gaps, but for a single layer as
  large as the smallest gaps to the same-spectrum matrix (mnist1d hidden: {g('mnist1d.hidden.spec_gap')}). The medians
  over hundreds of layers quoted here are much more precise than any one layer's value.
- "Holds" is judged by correlations, as in the literature; Pearson correlations of PSD
  matrices are inflated by their shared diagonal structure, which is why every comparison
  here is against a baseline.
- The deep-linear theory check and the reproductions of published settings are in the
  README ("Reproductions"), not in this study.
"""


if __name__ == "__main__":
    main()
