"""FINDINGS: "Closed forms and reproductions" (issue 18, item 6), from the runs of the
reproduction configs: each reproduction's test accuracy or loss beside its statistics at
initialisation and at the end and what the published scripts print (`published_*`); the
paper's x1x2 experiment in the setting of its text and in that of its code; deep-linear
`alpha_star` per layer against the balanced-init closed form; the grokking run's curves.

    from analysis import repro
    text, figures = repro.section(Path("runs"))

Reads result.json through `dnfa_cli.load_runs` and the saved weights through
`load_matrices`; every number and every verdict in the text is computed here.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dnfa_cli.frame import load_matrices, load_runs

ROOT = Path(__file__).resolve().parent.parent
# config name -> how the section calls it; the order of the tables
REPRODUCTIONS = {"paper_x1x2": "x1x2 as the paper's text gives it",
                 "paper_x1x2_code": "x1x2 as the official code trains it",
                 "paper_x1x2_linear": "x1x2 as the text, evenly spaced checkpoints",
                 "mnist1d_mlp": "mnist1d, the paper's MLP recipe",
                 "grokking_modular": "modular addition (grokking)",
                 "deep_linear": "deep linear",
                 "deep_linear_depth": "deep linear, smaller init"}
DEEP_LINEAR = ("deep_linear", "deep_linear_depth")
OWN = ("pearson_a05", "pearson_a1")
PUBLISHED = ("published_pearson_a05", "published_gc_pearson_a05", "published_cosine_a1", "published_gc_cosine_a1")


# ----------------------------------------------------------------------------- closed form
def balanced_alpha(L: int, i: int) -> float:
    """The exponent with NFM_i = AGOP_i^alpha in an L-layer linear net f = W_L ... W_1 x
    whose layers are balanced (W_{j+1}^T W_{j+1} = W_j W_j^T): the Jacobian of f in layer
    i's input is P = W_L ... W_i, so AGOP_i = P^T P; balance turns W_{j+1}^T W_{j+1}
    inside P^T P into W_j W_j^T, one layer at a time from the top, and
    P^T P = (W_i^T W_i)^(L - i + 1): alpha = 1 / (L - i + 1), 1/L at the first layer
    (Tansley, Massart & Cartis, arXiv 2510.15563), 1 at the read-out."""
    if not 1 <= i <= L:
        raise ValueError(f"layer {i} of a net of {L} layers: must be in 1..{L}")
    return 1.0 / (L - i + 1)


def imbalances(Ws: list[np.ndarray]) -> list[tuple[float, float]]:
    """For each pair of adjacent layers (j, j + 1), j = 1 .. L-1, of weights W_j (out, in):
    (|W_{j+1}^T W_{j+1} - W_j W_j^T|_F, max(|W_{j+1}^T W_{j+1}|_F, |W_j W_j^T|_F))."""
    out = []
    for lo, hi in zip(Ws, Ws[1:]):
        A, B = hi.T @ hi, lo @ lo.T
        out.append((float(np.linalg.norm(A - B)), float(max(np.linalg.norm(A), np.linalg.norm(B)))))
    return out


def balance_residuals(Ws: list[np.ndarray]) -> list[float]:
    """Per pair of adjacent layers, the imbalance relative to the larger Gram: 0 for
    exactly balanced layers, at most 2."""
    return [d / n if n > 0 else math.nan for d, n in imbalances(Ws)]


def layer_residual(res: list[float], i: int) -> float:
    """The balance the closed form of layer i rests on: the largest residual of the pairs
    (j, j + 1) with j >= i (every pair inside W_L ... W_i); nan for the read-out, whose
    AGOP is W_L^T W_L whatever the balance."""
    above = res[i - 1:]
    return max(above) if above else math.nan


# ----------------------------------------------------------------------------- loading
def load(runs_dir: Path, frame=None):
    """The reproductions' rows (one per run x checkpoint x layer) of load_runs (or of
    `frame`, load_runs(runs_dir, checkpoints="all") read by the caller), with the runs of
    other configs left out; None where no reproduction has run."""
    df = load_runs(runs_dir, checkpoints="all") if frame is None else frame
    if df.empty or "name" not in df:
        return None
    df = df[df["name"].isin(list(REPRODUCTIONS))]
    return df if not df.empty else None


def left_out(df) -> str:
    """The reproductions' runs that did not end ok (diverged, failed, still running), named."""
    bad = df[df["status"] != "ok"].drop_duplicates("run_id")
    return "" if bad.empty else "Left out, not ended ok: " + ", ".join(
        f"`{r['run_id']}` ({r['status']})" for _, r in bad.iterrows()) + "."


def ends(df):
    """Per run x layer: the first and the last checkpoint's rows, as (init, end) frames
    indexed by (run_id, layer)."""
    ok = df[df["step"].notna()].sort_values("step", kind="stable")
    # whole rows (groupby.first would take each column's first non-null value: a key null at
    # initialisation, published_*, would come from a later checkpoint)
    pick = [ok.drop_duplicates(["run_id", "layer"], keep=k).set_index(["run_id", "layer"]).sort_index()
            for k in ("first", "last")]
    return pick[0], pick[1]


def r_squared(run_id: str, runs_dir: Path, test_loss: float) -> float:
    """Test R^2 = 1 - test MSE / the test targets' variance (averaged over outputs, as the
    MSE is), the targets drawn again from the run's config."""
    from dnfa_cli.config import Config
    from dnfa_cli.data import make_dataset
    from dnfa_cli.report import load_run

    cfg = Config.model_validate(load_run(Path(runs_dir), run_id, files=False).config)
    T = make_dataset(cfg).T_test
    return float(1.0 - test_loss / T.var(axis=0).mean())


# ----------------------------------------------------------------------------- formatting
def f2(x) -> str:
    return f"{x:.2f}" if finite(x) else "-"


def f3(x) -> str:
    return f"{x:.3f}" if finite(x) else "-"


def g3(x) -> str:
    return f"{x:.3g}" if finite(x) else "-"


def span(vals, fmt) -> str:
    """min-max of the finite values in `fmt`, one value where they agree in it."""
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}-{hi}"


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def setting(r) -> str:
    """What a reproduction's row varies in: training samples, epochs, init, a tied start."""
    n = r.get("data.n_train")
    parts = [f"{int(n):,} samples" if finite(n) else None, f"{int(r['train.epochs'])} epochs",
             f"{r['model.init']} init x {r['model.init_scale']:g}",
             "tied start" if r.get("model.tied_init") in (True, np.True_) else None]
    return ", ".join(p for p in parts if p)


def label(row) -> str:
    """A run as the tables name it: its config, and its depth (L layers) for a deep linear one."""
    name = row["name"]
    return f"`{name}` (L = {int(row['model.depth']) + 1})" if name in DEEP_LINEAR else f"`{name}`"


def order(frame):
    """Rows in REPRODUCTIONS' order, then by depth and layer."""
    rank = {n: k for k, n in enumerate(REPRODUCTIONS)}
    keys = frame.assign(_r=frame["name"].map(rank)).sort_values(["_r", "model.depth", "layer"])
    return keys.drop(columns="_r")


# ----------------------------------------------------------------------------- reproductions
def t_runs(end, runs_dir: Path) -> str:
    """One row per run: its setting, steps, and test accuracy (classification) or test
    loss and R^2 (regression)."""
    runs_ = order(end.reset_index().drop_duplicates("run_id"))
    body = []
    for _, r in runs_.iterrows():
        reg = not finite(r["test_acc"])
        r2 = r_squared(r["run_id"], runs_dir, r["test_loss"]) if reg else math.nan
        body.append([label(r), REPRODUCTIONS[r["name"]], setting(r), str(int(r["step"])), f2(r["test_acc"]),
                     g3(r["test_loss"]) if reg else f2(r["test_loss"]), f3(r2)])
    return table(["run", "what", "setting", "steps", "test accuracy", "test loss", "test R^2"], body)


def t_layers(init, end) -> str:
    """Per layer: dnfa's own pearson_a05 and pearson_a1 at initialisation and at the end,
    beside what the published scripts print at the end (at initialisation W - W0 = 0 and
    they print nothing)."""
    rows = order(end.reset_index())
    rows = rows[~rows["name"].isin(DEEP_LINEAR[1:])]
    body = []
    for _, r in rows.iterrows():
        a = init.loc[(r["run_id"], r["layer"])]
        own = [f"{f2(a[k])} -> {f2(r[k])}" for k in OWN]
        body.append([label(r), str(int(r["layer"])), *own, *[f2(r.get(k)) for k in PUBLISHED]])
    return table(["run", "layer", "pearson_a05 init -> end", "pearson_a1 init -> end",
                  "Science printed", "Science printed, centred", "arXiv printed", "arXiv printed, centred"], body)


def x1x2_settings(init, end, runs_dir: Path) -> str:
    """The paper's x1x2 experiment in its two settings, one run each: test loss, R^2 and
    layer 1's printed numbers, and which setting the published numbers come from."""
    one = {}
    for name in ("paper_x1x2", "paper_x1x2_code"):
        rows = end.reset_index()
        rows = rows[(rows["name"] == name) & (rows["layer"] == 1)]
        if len(rows):
            one[name] = rows.iloc[0]
    if len(one) < 2:
        return (f"The two x1x2 settings cannot be compared yet: {', '.join(sorted(one)) or 'neither'} "
                "of `paper_x1x2` and `paper_x1x2_code` has a finished run.")
    t, c = one["paper_x1x2"], one["paper_x1x2_code"]
    r2 = {k: r_squared(v["run_id"], runs_dir, v["test_loss"]) for k, v in one.items()}
    flat = end.reset_index()
    nseed = {k: flat.loc[flat["name"] == k, "run_id"].nunique() for k in one}
    seeds = "one seed each" if set(nseed.values()) == {1} else \
        ", ".join(f"{v} runs of `{k}`" for k, v in nseed.items())
    sci = ", ".join(f"{lab} {f3(c[k])} against {f3(t[k])}" for k, lab in
                    (("published_pearson_a05", "Science era"), ("published_cosine_a1", "arXiv era")))
    return (
        "**The paper's x1x2 run in its two settings.** The paper's figures were made by its official code, "
        "so the published numbers come from the code's setting (`paper_x1x2_code`: "
        f"{setting(c)}), not from the one its text describes (`paper_x1x2`: {setting(t)}). "
        f"Here ({seeds}) the code's setting ends at test loss {f3(c['test_loss'])} (R^2 {f3(r2['paper_x1x2_code'])}) "
        f"against {f3(t['test_loss'])} (R^2 {f3(r2['paper_x1x2'])}) for the text's, and layer 1's printed "
        f"numbers are {sci} (code against text). With one run per setting these differences carry no "
        "interval and may be seed noise; issue 18's five-seed comparison of the official code (not rerun "
        "here) put the shift between the two settings at 2.6-5.6 standard errors (test loss 0.37 against "
        "0.24, layer 1's Science-era number 0.970 against 0.982)." + same_net(end))


def same_net(end) -> str:
    """Whether paper_x1x2_linear, paper_x1x2 with other checkpoints, ends where it does."""
    flat = end.reset_index()
    a, b = (flat[(flat["name"] == n) & (flat["layer"] == 1)] for n in ("paper_x1x2", "paper_x1x2_linear"))
    if a.empty or b.empty:
        return ""
    keys = ["test_loss", "train_loss", "pearson_a05"]
    same = all(a[k].iloc[0] == b[k].iloc[0] for k in keys)
    return (" `paper_x1x2_linear` trains " + ("the same net: its end's losses and layer 1's pearson_a05 are those "
            "of `paper_x1x2` to the last digit; only its checkpoints differ." if same else
            "the text's setting with other checkpoints, and ends at test loss "
            f"{f3(b['test_loss'].iloc[0])} against `paper_x1x2`'s {f3(a['test_loss'].iloc[0])}."))


# ----------------------------------------------------------------------------- deep linear
DERIVATION = """\
**Deep linear nets: alpha_star against the balanced-init closed form.** For f(x) = W_L ... W_1 x
the Jacobian of f in layer i's input is the constant P_i = W_L ... W_i, so AGOP_i = P_i^T P_i,
while NFM_i = W_i^T W_i. If the layers are balanced, W_{j+1}^T W_{j+1} = W_j W_j^T (gradient
flow conserves the difference, so a small init keeps it small), the innermost factor
W_L^T W_L of P_i^T P_i becomes W_{L-1} W_{L-1}^T, then W_{L-1}^T W_{L-1} W_{L-1}^T W_{L-1}
= (W_{L-1}^T W_{L-1})^2, and so on down to layer i: AGOP_i = (W_i^T W_i)^(L-i+1), i.e.
NFM_i = AGOP_i^alpha with alpha = 1/(L-i+1): 1/L at the first layer (W_1^T W_1 = (M^T M)^(1/L)
for the end-to-end map M; Tansley, Massart & Cartis, arXiv 2510.15563), 1 at the read-out,
whose AGOP is W_L^T W_L whatever the balance. tests/test_findings_repro.py checks this on
exactly balanced nets to 1e-10. The balance residual of layer i is the largest
|W_{j+1}^T W_{j+1} - W_j W_j^T|_F / max(|W_{j+1}^T W_{j+1}|_F, |W_j W_j^T|_F) over the pairs
j >= i that P_i contains, from the saved weights at initialisation and at the end."""


def shortfall(m: dict, i: int, alpha_star: float, alpha: float) -> float:
    """pearson(NFM_i, AGOP_i^alpha_star) - pearson(NFM_i, AGOP_i^alpha) from the matrices
    saved at a checkpoint (float32 as saved), by dnfa's own PowerPearson at their rounding
    scale: how much of the correlation the closed form gives up against the best exponent."""
    import jax.numpy as jnp

    from dnfa_cli import stats

    if not finite(alpha_star) or f"agop_{i}" not in m:
        return math.nan
    N, A = (np.asarray(m[f"{k}_{i}"], np.float64) for k in ("nfm", "agop"))
    lam, V = np.linalg.eigh(0.5 * (A + A.T))
    rel_tol = A.shape[0] * np.finfo(m[f"agop_{i}"].dtype).eps
    pp = stats.PowerPearson.make(jnp.asarray(N), jnp.asarray(lam), jnp.asarray(V), rel_tol)
    return float(pp(alpha_star) - pp(alpha))


def deep_linear_rows(init, end, runs_dir: Path) -> list[dict]:
    """Per deep linear run x layer: measured alpha_star (and its edge), the closed form, the
    balance residual at the end and at initialisation."""
    out = []
    flat = end.reset_index()
    for rid, g in order(flat[flat["name"].isin(DEEP_LINEAR)]).groupby("run_id", sort=False):
        steps = (int(init.loc[rid]["step"].iloc[0]), int(g["step"].iloc[0]))
        mats = [load_matrices(rid, s, runs_dir) for s in steps]
        imb = [imbalances([m[f"W{i}"].astype(np.float64) for i in range(1, len(g) + 1)]) for m in mats]
        res = [[d / n for d, n in x] for x in imb]
        drift = [e[0] / i[0] for i, e in zip(*imb)]  # the absolute imbalance, end over init
        r2 = r_squared(rid, runs_dir, g["test_loss"].iloc[0])
        for _, r in g.iterrows():
            i, L = int(r["layer"]), len(g)
            out.append({"run": label(r), "name": r["name"], "scale": r["model.init_scale"], "layer": i, "L": L, "r2": r2,
                        "alpha_star": r["alpha_star"], "edge": r.get("alpha_star_edge"),
                        "short": shortfall(mats[1], i, r["alpha_star"], balanced_alpha(L, i)) if i < L else math.nan,
                        "pearson": r["pearson_alpha_star"], "closed": balanced_alpha(L, i),
                        "res_end": layer_residual(res[1], i), "res_init": layer_residual(res[0], i),
                        "drift": drift})
    return out


def t_deep_linear(rows: list[dict]) -> str:
    body = [[r["run"], f"{r['scale']:g}", f3(r["r2"]), str(r["layer"]), f3(r["alpha_star"]) if finite(r["alpha_star"])
             else f"none ({r['edge']})", f3(r["closed"]), f"{r['alpha_star'] - r['closed']:+.4f}"
             if finite(r["alpha_star"]) else "-", f"{r['pearson']:.5f}" if finite(r["pearson"]) else "-",
             f"{r['short']:.1e}" if finite(r["short"]) else "-",
             g3(r["res_end"]), g3(r["res_init"])] for r in rows]
    return table(["run", "init scale", "test R^2", "layer", "alpha_star", "closed form 1/(L-i+1)", "alpha_star - closed form",
                  "pearson at alpha_star", "pearson given up at the closed form", "balance residual, end",
                  "at init"], body)


def deep_linear_words(rows: list[dict]) -> str:
    """How far alpha_star is from the closed form, per init scale, and whether the gap
    follows the balance residual."""
    inner = [r for r in rows if r["layer"] < r["L"]]
    if not inner:
        return "No deep linear run has finished."
    parts = []
    for scale in sorted({r["scale"] for r in inner}, reverse=True):
        sel = [r for r in inner if r["scale"] == scale]
        gap = [abs(r["alpha_star"] - r["closed"]) for r in sel if finite(r["alpha_star"])]
        none = len(sel) - len(gap)
        parts.append(f"at init scale {scale:g}, over the {len(sel)} layers below the read-out, the largest "
                     f"|alpha_star - 1/(L-i+1)| is {max(gap):.4f}" if gap else f"at init scale {scale:g} no layer "
                     "has an alpha_star")
        parts[-1] += (f" ({none} without an alpha_star)" if none and gap else "") + \
            f", with balance residuals {span([r['res_end'] for r in sel], g3)} and test R^2 " + \
            span([r["r2"] for r in sel], f3)
    readout = [r["alpha_star"] for r in rows if r["layer"] == r["L"]]
    ro = (f" At the read-out alpha_star is {', '.join(sorted({f3(a) for a in readout}))}, as it must be."
          if readout else "")
    r0 = [r["res_init"] for r in inner]
    short = [r["short"] for r in inner if finite(r["short"])]
    per_run = {r["run"] + str(r["scale"]): r["drift"] for r in rows}
    drift = [x for d in per_run.values() for x in d]
    top = all(int(np.argmax(d)) == len(d) - 1 for d in per_run.values())
    start = (f" At initialisation the residuals are {span(r0, g3)}: random layers are far from "
             "balanced relative to their own small size. Gradient flow would keep the absolute imbalance "
             f"|W_(j+1)^T W_(j+1) - W_j W_j^T|_F fixed while the layers grow; SGD ends with {span(drift, f2)} "
             "times its initial value over the pairs of these nets"
             + (", the most at the pair with the read-out in every net." if top else ".")
             + (f" Near its maximum the correlation hardly depends on alpha: the closed form gives up at most "
                f"{max(short):.1e} of pearson against alpha_star." if short else ""))
    return "Measured against the closed form: " + "; ".join(parts) + "." + ro + start + trend(inner)


def trend(inner: list[dict]) -> str:
    """Whether the runs nearer balance sit nearer the closed form: a rank correlation over
    runs (a run's layers share its balance, so they are not independent) of each run's
    largest |alpha_star - closed form| and largest end residual below the read-out."""
    from scipy.stats import spearmanr

    runs_: dict = {}
    for r in inner:
        if finite(r["alpha_star"]) and finite(r["res_end"]):
            gap, res = runs_.get((r["run"], r["scale"]), (0.0, 0.0))
            runs_[(r["run"], r["scale"])] = (max(gap, abs(r["alpha_star"] - r["closed"])), max(res, r["res_end"]))
    pts = list(runs_.values())
    if len(pts) < 3 or len({p[1] for p in pts}) < 2:
        return ""
    res = spearmanr([p[1] for p in pts], [p[0] for p in pts])
    how = "runs nearer balance sit nearer the closed form" if res.statistic > 0 and res.pvalue < 0.05 else \
        "no clear relation at this number of runs"
    by_scale: dict = {}
    for r in sorted(inner, key=lambda r: r["L"]):
        d = by_scale.setdefault(r["scale"], {})
        d[r["L"]] = max(d.get(r["L"], 0.0), r["res_end"])
    deeper = all(np.all(np.diff(list(d.values())) > 0) for d in by_scale.values())
    return (f" Over the {len(pts)} runs, each run's largest |alpha_star - closed form| and largest end residual "
            f"have Spearman rho {res.statistic:.2f} (p = {res.pvalue:.2g}): {how}"
            + (" (depth moves both: at each init scale the deeper net is the less balanced one)." if deeper else "."))


# ----------------------------------------------------------------------------- grokking
GROK_STATS = ("pearson_a05", "pearson_a1", "rand_pearson_a1")  # rand_: the random-W baseline


def grok_curve(df):
    """The grokking run's checkpoints (the newest run named grokking_modular): step, epoch,
    train and test accuracy and layer 1's ansatz statistics, by step."""
    g = df[(df["name"] == "grokking_modular") & (df["layer"] == 1) & df["step"].notna()]
    if g.empty:
        return None
    rid = g.sort_values("created")["run_id"].iloc[-1]
    cols = ["run_id", "step", "epoch", "train_acc", "test_acc", *(k for k in GROK_STATS if k in g)]
    return g[g["run_id"] == rid].sort_values("step")[cols]


def grok_words(c) -> str:
    """Whether and when test accuracy rises after train accuracy saturates (first reaches
    its maximum over the run): the run groks if most of test accuracy's rise comes after."""
    tr, te, st = c["train_acc"].to_numpy(float), c["test_acc"].to_numpy(float), c["step"].to_numpy(int)
    s = int(np.argmax(tr >= tr.max()))
    top = te.max()
    after, total = top - te[s], top - te.min()
    where_ = f"train accuracy reaches its maximum {f3(tr.max())} at step {st[s]} (epoch {c['epoch'].iloc[s]:.1f})"
    ansatz = (f" Over the same checkpoints layer 1's pearson_a05 goes from {f2(c['pearson_a05'].iloc[0])} at "
              f"initialisation to {f2(c['pearson_a05'].iloc[s])} at saturation and {f2(c['pearson_a05'].iloc[-1])} "
              "at the end (Mallinar et al. report above 0.92 after grokking).")
    if total <= 0 or after <= total / 2:
        return (f"The run is not shown to grok: {where_}, where test accuracy is already {f3(te[s])} "
                f"of its best {f3(top)}; most of its rise came with the training accuracy's, not after." + ansatz)
    h = s + int(np.argmax(te[s:] >= te[s] + after / 2))
    return (f"The run groks: {where_}, where test accuracy is {f3(te[s])}; test accuracy then climbs to "
            f"{f3(top)}, passing half-way ({f3(te[s] + after / 2)}) between the checkpoints at steps {st[h - 1]} "
            f"and {st[h]} ({st[h] / max(st[s], 1):.1f} times the saturation step), and ends at {f3(te[-1])}."
            + ansatz)


def fig_grok(c, figdir: Path) -> Path:
    """Train and test accuracy per checkpoint, and layer 1's ansatz statistics over the same steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    x = c["step"].clip(lower=1)
    for k, m in (("train_acc", "o-"), ("test_acc", "s-")):
        a.plot(x, c[k], m, label=k.replace("_", " "))
    for k in (k for k in GROK_STATS if k in c):
        b.plot(x, c[k], "o-", label=f"{k}, layer 1")
    for ax, t in ((a, "accuracy"), (b, "ansatz")):
        ax.set_xscale("log")
        ax.set_xlabel("step (step 0 drawn at 1)")
        ax.set_title(f"grokking_modular: {t}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    figdir.mkdir(parents=True, exist_ok=True)
    path = figdir / "fig_grokking.png"
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the section
def section(runs_dir: Path, figdir: Path = ROOT / "findings", frame=None) -> tuple[str, list[Path]]:
    """The markdown of FINDINGS' "Closed forms and reproductions" and the figures it wrote
    in `figdir` (linked as `<figdir name>/<file>`, FINDINGS.md beside figdir). `frame`:
    load_runs(runs_dir, checkpoints="all") when the caller has it already."""
    df = load(Path(runs_dir), frame)
    head = "## Closed forms and reproductions\n\n"
    if df is None:
        return head + f"No reproduction has run in {runs_dir}.\n", []
    gone = left_out(df)
    df = df[df["status"] == "ok"]
    init, end = ends(df)
    missing = [n for n in REPRODUCTIONS if n not in set(df["name"])]
    parts = [
        "Each reproduction's run (one seed each) with its test accuracy, or its test loss and R^2 "
        "(1 - MSE / the test targets' variance), at the end of training:", t_runs(end, runs_dir),
        "Per layer, dnfa's own statistics at initialisation and at the end beside what the published "
        "scripts print at the end (`published_*`: the Science-era Pearson with AGOP^(1/2) and the arXiv-era "
        "cosine with the AGOP, of the NFM of W - W0; at initialisation W - W0 = 0 and they print nothing):",
        t_layers(init, end), x1x2_settings(init, end, runs_dir)]
    dl = deep_linear_rows(init, end, runs_dir)
    parts += [DERIVATION, t_deep_linear(dl), deep_linear_words(dl)] if dl else []
    figs = []
    c = grok_curve(df)
    if c is not None:
        figs.append(fig_grok(c, figdir))
        parts += [f"**Grokking.** {grok_words(c)}", f"![Grokking](findings/{figs[-1].name})".replace(
            "findings/", f"{figdir.name}/")]
    if missing:
        parts.append(f"No finished run in this runs directory: {', '.join(f'`{n}`' for n in missing)}.")
    parts += [gone] if gone else []
    return head + "\n\n".join(parts) + "\n", figs
