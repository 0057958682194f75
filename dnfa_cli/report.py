"""Tables, figures (matplotlib, Agg) and a self-contained HTML page for a run or a sweep.

Reads only the run-directory files of DESIGN.md, never re-trains: result.json (or
metrics.jsonl for a run still in progress or interrupted), the parameter checkpoints and
the matrices saved at the first and latest checkpoint.
"""
from __future__ import annotations

import base64
import csv
import difflib
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import runs
from .config import DnfaInputError

# the statistics a table shows (json/csv carry every key of result.json)
HEADLINE = ["pearson_a05", "pearson_a1", "cosine_a1", "delta_cosine_a1", "alpha_star", "tightness",
            "tightness_range", "tightness_top", "w_rank90", "iso_dev_range", "eff_rank_range",
            "rand_pearson_a1", "rand_pearson_a1_sd", "rand_spec_pearson_a1", "rand_gap_a1", "centered_pearson", "gc_pearson_a1",
            "left_pearson", "left_act_pearson", "half_range_pearson", "align_1", "align_4"]
CI = ["pearson_a05", "pearson_a1", "tightness_range"]  # with metrics.bootstrap: *_lo, *_hi
SWEEP_STATS = ["pearson_a05", "pearson_a1", "alpha_star", "tightness_range", "rand_pearson_a1", "half_range_pearson"]
FIG_DPI = 100


# ----------------------------------------------------------------------------- ids
def resolve(root: Path, ident: str) -> tuple[str, str]:
    """A run id, a sweep id, or a unique prefix of one -> ("run" | "sweep", full id)."""
    runs.check_id(ident)
    run_ids, sweep_ids = runs.list_run_ids(root), runs.list_sweep_ids(root)
    if ident in sweep_ids:
        return "sweep", ident
    if ident in run_ids:
        return "run", ident
    matches = [("sweep", s) for s in sweep_ids if s.startswith(ident)] + [("run", r) for r in run_ids if r.startswith(ident)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(m[1] for m in matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
        raise DnfaInputError(f"{ident!r} is ambiguous in {root}: it matches {shown}")
    close = difflib.get_close_matches(ident, sweep_ids + run_ids, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ("" if run_ids or sweep_ids else "; it holds no runs yet")
    raise DnfaInputError(f"no run or sweep {ident!r} in {root}{hint}")


# ----------------------------------------------------------------------------- a run
@dataclass
class RunView:
    run_id: str
    dir: Path
    status: str  # ok | diverged | failed | running | interrupted | missing
    config: dict
    checkpoints: list
    seconds: dict = field(default_factory=dict)
    error: str | None = None
    created: str | None = None


def _read_side(d: Path) -> tuple[dict, str | None]:
    """config.yaml and the creation time from env.json, as far as they read."""
    import yaml

    cfg, created = {}, None
    try:
        c = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").exists() else {}
        cfg = c if isinstance(c, dict) else {}
        e = json.loads((d / "env.json").read_text()) if (d / "env.json").exists() else {}
        created = e.get("time") if isinstance(e, dict) else None
    except (OSError, ValueError, yaml.YAMLError):
        pass
    return cfg, created


def load_run(root: Path, run_id: str) -> RunView:
    """A run as its files say; status `corrupt` (the reason in `error`) where they are not
    what dnfa writes, so a listing goes on with the other runs."""
    d = runs.run_dir(root, run_id)
    if not d.exists():
        return RunView(run_id, d, "missing", {}, [])
    try:
        res = runs.load_result(root, run_id, files=True)
    except runs.CorruptRun as e:
        cfg, created = _read_side(d)
        return RunView(run_id, d, "corrupt", cfg, [], {}, str(e), created)
    if res is not None:
        return RunView(run_id, d, res["status"], res["config"], res["checkpoints"], res.get("seconds") or {},
                       res.get("error"), res.get("created"))
    cfg, created = _read_side(d)
    status = "running" if runs.is_locked(root, run_id) else "interrupted"
    return RunView(run_id, d, status, cfg, runs.read_metrics(d), {}, None, created)


def _pick(cks: list, all_checkpoints: bool) -> list:
    if all_checkpoints or len(cks) <= 2:
        return cks
    return [cks[0], cks[-1]]


def run_rows(v: RunView, all_checkpoints: bool = False) -> list[dict]:
    """One row per (checkpoint, layer) with every key of result.json."""
    rows = []
    for ck in _pick(v.checkpoints, all_checkpoints):
        head = {"run_id": v.run_id, "status": v.status, "step": ck["step"], "epoch": ck["epoch"],
                "train_loss": ck.get("train_loss"), "test_loss": ck.get("test_loss"),
                "train_acc": ck.get("train_acc"), "test_acc": ck.get("test_acc")}
        for L in ck["layers"]:
            rows.append({**head, **L})
    return rows


def fmt(v, nd=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.{nd}f}"
    if isinstance(v, list):
        return "x".join(map(str, v))
    return str(v)


def run_tables(v: RunView, all_checkpoints: bool = False) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per layer: (title, header, rows) with statistics as rows and checkpoints as columns."""
    cks = _pick(v.checkpoints, all_checkpoints)
    tables = []
    if not cks:
        return tables
    names = ["init" if c["step"] == 0 else ("end" if c is v.checkpoints[-1] else f"step {c['step']}") for c in cks]
    header = ["statistic"] + [f"{n} ({c['step']})" if n in ("init", "end") else n for n, c in zip(names, cks)]
    for li, L0 in enumerate(cks[0]["layers"]):
        title = f"layer {L0['layer']}  W {fmt(L0['shape'])}" + ("  (trivial: read-out layer)" if L0.get("trivial") else "")
        rows = [[k] + [fmt(c["layers"][li].get(k)) for c in cks] for k in HEADLINE if k in L0]
        rows += [[f"{k} 95% CI"] + [f"[{fmt(c['layers'][li].get(k + '_lo'))}, {fmt(c['layers'][li].get(k + '_hi'))}]"
                                    for c in cks] for k in CI if f"{k}_lo" in L0]
        tables.append((title, header, rows))
    loss = [["train_loss"] + [fmt(c.get("train_loss"), 6) for c in cks], ["test_loss"] + [fmt(c.get("test_loss"), 6) for c in cks]]
    if any(c.get("test_acc") is not None for c in cks):
        loss += [["train_acc"] + [fmt(c.get("train_acc")) for c in cks], ["test_acc"] + [fmt(c.get("test_acc")) for c in cks]]
    tables.insert(0, ("losses", header, loss))
    return tables


def run_headline(v: RunView) -> str:
    secs = v.seconds.get("total")
    last = v.checkpoints[-1] if v.checkpoints else None
    bits = [f"run {v.run_id}: {v.status}"]
    if secs is not None:
        bits.append(f"wall {secs:.1f} s (train {v.seconds.get('train', 0):.1f}, metrics {v.seconds.get('metrics', 0):.1f})")
    if last:
        bits.append(f"last step {last['step']}: train_loss {fmt(last.get('train_loss'), 6)}, test_loss {fmt(last.get('test_loss'), 6)}"
                    + (f", test_acc {fmt(last.get('test_acc'))}" if last.get("test_acc") is not None else ""))
    if v.status in ("running", "interrupted"):
        bits.append(f"no result.json yet: {len(v.checkpoints)} checkpoints from metrics.jsonl")
    if v.error:
        bits.append(f"error: {v.error}")
    return "; ".join(bits)


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIG_DPI, metadata={"Software": None})
    _plt().close(fig)
    return path


def _steps_axis(ax):
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (symlog: 0 = initialisation)")


def fig_curves(v: RunView, path: Path) -> Path:
    plt = _plt()
    layers = [L for L in v.checkpoints[0]["layers"]]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.6), squeeze=False)
    steps = [c["step"] for c in v.checkpoints]
    for ax, L0 in zip(axes[0], layers):
        i = L0["layer"] - 1
        for key, style in (("pearson_a05", "-o"), ("pearson_a1", "-s"), ("tightness_range", "-^")):
            ys = [c["layers"][i].get(key) for c in v.checkpoints]
            ax.plot(steps, [np.nan if y is None else y for y in ys], style, ms=3, label=key)
        _steps_axis(ax)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"layer {L0['layer']} ({fmt(L0['shape'])})" + (" trivial" if L0.get("trivial") else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{v.run_id}: the ansatz and tightness during training")
    fig.tight_layout()
    return _save(fig, path)


def fig_loss(v: RunView, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [c["step"] for c in v.checkpoints]
    for key in ("train_loss", "test_loss"):
        ax.plot(steps, [np.nan if c.get(key) is None else c[key] for c in v.checkpoints], "-o", ms=3, label=key)
    _steps_axis(ax)
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"{v.run_id}: loss")
    fig.tight_layout()
    return _save(fig, path)


def _mat_files(v: RunView) -> list[tuple[int, Path]]:
    files = sorted((v.dir / "checkpoints").glob("matrices_*.npz"))
    return [(int(f.stem.split("_")[1]), f) for f in files]


BLOCK = 64  # wider matrices are shown as their leading block in the NFM's eigenbasis


def fig_matrices(v: RunView, layer: int, path: Path) -> Path | None:
    """NFM, AGOP^(1/2) and AGOP side by side, at initialisation and at the latest checkpoint."""
    plt = _plt()
    mfiles = _mat_files(v)
    if not mfiles:
        return None
    fig, axes = plt.subplots(len(mfiles), 3, figsize=(10.5, 3.5 * len(mfiles)), squeeze=False)
    for row, (step, f) in enumerate(mfiles):
        z = np.load(f)
        nfm, half, agop = (z[f"{n}_{layer}"].astype(np.float64) for n in ("nfm", "agop_half", "agop"))
        k = nfm.shape[0]
        if k > 2 * BLOCK:
            lam, V = np.linalg.eigh(nfm)
            V = V[:, ::-1][:, :BLOCK]
            mats = [V.T @ m @ V for m in (nfm, half, agop)]
            how = f"leading {BLOCK}x{BLOCK} block in the NFM's eigenbasis (k = {k})"
        else:
            mats = [nfm, half, agop]
            how = f"all {k}x{k} entries"
        for ax, m, name in zip(axes[row], mats, ("NFM = W^T W", "AGOP^(1/2)", "AGOP")):
            a = np.abs(m).max() or 1.0
            ax.imshow(m, cmap="RdBu_r", vmin=-a, vmax=a, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, step {step}", fontsize=9)
        axes[row][0].set_ylabel(how, fontsize=7)
    fig.suptitle(f"{v.run_id}, layer {layer}: each panel on its own symmetric colour scale")
    fig.tight_layout()
    return _save(fig, path)


def fig_spectrum(v: RunView, layer: int, path: Path) -> Path | None:
    """Eigenvalues of pgop divided by their mean, in full and on range(W), against the flat
    line of a tight frame."""
    plt = _plt()
    mfiles = _mat_files(v)
    if not mfiles:
        return None
    from .stats import svd_range

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for step, f in mfiles:
        G = np.load(f)[f"pgop_{layer}"].astype(np.float64)
        pf = v.dir / "checkpoints" / f"step_{step:07d}.npz"
        U = None
        if pf.exists():
            W = np.load(pf)[f"W{layer}"].astype(np.float64)
            Uf, s, r = svd_range(W)
            U = Uf[:, :r]
        for ax, M, where in ((axes[0], G, "full"), (axes[1], None if U is None else U.T @ G @ U, "range(W)")):
            if M is None:
                continue
            lam = np.clip(np.linalg.eigvalsh(0.5 * (M + M.T))[::-1], 0, None)
            mean = lam.mean()
            if mean <= 0:
                continue
            x = (np.arange(len(lam)) + 0.5) / len(lam)
            ax.plot(x, lam / mean, label=f"step {step}")
            ax.set_title(f"pgop eigenvalues / mean, {where} (k = {len(lam)})", fontsize=10)
    for ax in axes:
        ax.axhline(1.0, color="k", ls="--", lw=1, label="tight frame")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)  # below: zero up to rounding (rank(G) <= n c)
        ax.set_xlabel("eigenvalue rank / k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{v.run_id}, layer {layer}: spectrum of the pre-activation gradient Gram matrix "
                 "(axis floor 1e-6 of the mean)")
    fig.tight_layout()
    return _save(fig, path)


def run_figures(v: RunView, out: Path) -> list[Path]:
    figs = []
    if not v.checkpoints:
        return figs
    figs.append(fig_curves(v, out / "curves.png"))
    figs.append(fig_loss(v, out / "loss.png"))
    for L in v.checkpoints[0]["layers"]:
        for fn, name in ((fig_matrices, "matrices"), (fig_spectrum, "spectrum")):
            p = fn(v, L["layer"], out / f"{name}_layer{L['layer']}.png")
            if p:
                figs.append(p)
    return figs


# ----------------------------------------------------------------------------- a sweep
def sweep_rows(root: Path, rec: dict) -> list[dict]:
    """One row per (run, layer): the swept values and the final statistics."""
    rows = []
    for r in rec["runs"]:
        try:
            v = load_run(root, r["run_id"])
        except OSError:
            v = None
        if v is None or not v.checkpoints:
            rows.append({"run_id": r["run_id"], "status": v.status if v else "unreadable", **r["params"], "layer": None,
                         **({"error": v.error} if v is not None and v.error else {})})
            continue
        last = v.checkpoints[-1]
        for L in last["layers"]:
            rows.append({"run_id": r["run_id"], "status": v.status, **r["params"], "step": last["step"],
                         "train_loss": last.get("train_loss"), "test_loss": last.get("test_loss"),
                         "test_acc": last.get("test_acc"), **L})
    return rows


def grouped_rows(rows: list[dict], varied: list[str]) -> list[dict]:
    """Rows grouped over seeds: mean and standard deviation of each headline statistic, over
    the runs that finished ok (a diverged run's last checkpoint is from an earlier step)."""
    keys = [k for k in varied if k not in ("seed", "data.seed")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("layer") is None or r.get("status") != "ok":
            continue
        groups.setdefault(tuple(repr(r.get(k)) for k in keys) + (r["layer"],), []).append(r)
    out = []
    for members in groups.values():
        g = {k: members[0].get(k) for k in keys}
        g["layer"] = members[0]["layer"]
        g["trivial"] = members[0].get("trivial")
        g["n"] = len(members)
        for s in SWEEP_STATS + ["test_loss"]:
            vals = np.array([m.get(s) for m in members if m.get(s) is not None], dtype=float)
            g[f"{s}_mean"] = float(vals.mean()) if vals.size else None
            g[f"{s}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else None
        out.append(g)
    return out


def _colour_key(varied: list[str]) -> str | None:
    keys = [k for k in varied if k not in ("seed", "data.seed")]
    return keys[0] if keys else (varied[0] if varied else None)


def _scatter(rows, xkey, ykey, ckey, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    pts = [r for r in rows if r.get(xkey) is not None and r.get(ykey) is not None and not r.get("trivial")]
    vals = [r.get(ckey) for r in pts] if ckey else [None] * len(pts)
    numeric = ckey and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)
    if numeric and len(set(vals)) > 6:
        sc = ax.scatter([r[xkey] for r in pts], [r[ykey] for r in pts], c=vals, s=14, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=ckey)
    else:
        for val in sorted(set(map(str, vals))):
            sel = [r for r, x in zip(pts, vals) if str(x) == val]
            ax.scatter([r[xkey] for r in sel], [r[ykey] for r in sel], s=14, label=f"{ckey} = {val}" if ckey else None)
        if ckey:
            ax.legend(fontsize=8)
    ax.set_xlabel(xkey)
    ax.set_ylabel(ykey)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_stat_vs_param(rows, param: str, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, len(SWEEP_STATS), figsize=(3.2 * len(SWEEP_STATS), 3.4), squeeze=False)
    pts = [r for r in rows if r.get("layer") is not None and not r.get("trivial")]
    cats = sorted({str(r.get(param)) for r in pts})
    numeric = all(isinstance(r.get(param), (int, float)) and not isinstance(r.get(param), bool) for r in pts)
    layers = sorted({r["layer"] for r in pts})
    for ax, s in zip(axes[0], SWEEP_STATS):
        for j, layer in enumerate(layers):
            sel = [r for r in pts if r["layer"] == layer and r.get(s) is not None]
            xs = [r[param] if numeric else cats.index(str(r[param])) + (j - (len(layers) - 1) / 2) * 0.08 for r in sel]
            ax.scatter(xs, [r[s] for r in sel], s=10, label=f"layer {layer}")
        if not numeric:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30, fontsize=7)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        elif len({r[param] for r in pts}) > 2 and min(r[param] for r in pts) > 0:
            vals = [r[param] for r in pts]
            if max(vals) / min(vals) > 20:
                ax.set_xscale("log")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel(param, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"final statistics against {param} (one point per run and layer)")
    fig.tight_layout()
    return _save(fig, path)


def sweep_figures(rows: list[dict], varied: list[str], out: Path) -> list[Path]:
    ck = _colour_key(varied)
    figs = [
        _scatter(rows, "tightness_range", "pearson_a1", ck, out / "pearson_a1_vs_tightness_range.png",
                 "pearson_a1 against tightness_range (one point per run and non-trivial layer)"),
        _scatter(rows, "pearson_a1", "pearson_a05", ck, out / "pearson_a05_vs_pearson_a1.png",
                 "pearson_a05 against pearson_a1 (one point per run and non-trivial layer)"),
    ]
    for p in varied:
        figs.append(fig_stat_vs_param(rows, p, out / f"stats_vs_{p.replace('.', '_')}.png"))
    return figs


# ----------------------------------------------------------------------------- output
def to_csv(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(v) if isinstance(v, list) else ("" if v is None else v)) for k, v in r.items()})
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, allow_nan=False)


def write_html(path: Path, title: str, intro: list[str], tables: list[tuple[str, list[str], list[list[str]]]],
               figures: list[Path]) -> Path:
    """One file, figures inline as base64 PNG, no external resources."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}",
        "td:first-child{text-align:left}img{max-width:100%;margin:0.5em 0 1.5em}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(x)}</p>" for x in intro]
    for t, header, rows in tables:
        parts.append(f"<h3>{html.escape(t)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    for f in figures:
        b64 = base64.b64encode(Path(f).read_bytes()).decode()
        parts.append(f"<h3>{html.escape(Path(f).stem)}</h3><img alt='{html.escape(Path(f).stem)}' src='data:image/png;base64,{b64}'>")
    parts.append("</body></html>")
    runs.atomic_write_bytes(path, "\n".join(parts).encode())
    return path


TERMINAL_STATS = ["pearson_a05", "pearson_a1", "tightness_range", "alpha_star", "rand_pearson_a1"]


def sweep_tables(rows: list[dict], grouped: list[dict], varied: list[str], terminal: bool = False
                 ) -> list[tuple[str, list[str], list[list[str]]]]:
    """The grouped-over-seeds table (when seeds vary) and the per-run table. For the
    terminal: fewer statistics, and the per-run table only when there is no grouping."""
    stats = TERMINAL_STATS if terminal else SWEEP_STATS + ["test_loss"]
    keys = [k for k in varied if k not in ("seed", "data.seed")]
    seeds_vary = any(k in ("seed", "data.seed") for k in varied)
    layer = lambda r: f"{r.get('layer')}" + ("*" if r.get("trivial") else "") if r.get("layer") is not None else "-"
    out = []
    if grouped and seeds_vary:
        gcols = [*keys, "layer", "n", *stats]
        grows = [[fmt(g.get(k)) for k in keys] + [layer(g), str(g["n"])]
                 + [_pm(g.get(f"{s}_mean"), g.get(f"{s}_std")) for s in stats] for g in grouped]
        out.append(("grouped over seeds, runs that finished ok: mean ± std (* the trivial read-out layer)", gcols, grows))
    if not (terminal and seeds_vary):
        cols = ["run_id", "status", *varied, "layer", *stats]
        out.append(("runs: final checkpoint, one row per layer (* trivial)", cols,
                    [[fmt(r.get(c)) for c in cols[:-len(stats) - 1]] + [layer(r)] + [fmt(r.get(s)) for s in stats]
                     for r in rows]))
    return out


def _pm(m, s) -> str:
    if m is None:
        return "-"
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return f"{m:.3f}"
    return f"{m:.3f}±{s:.3f}"


# ----------------------------------------------------------------------------- ls
def ls_rows(root: Path, sweep_id: str | None = None) -> list[dict]:
    if sweep_id is not None:
        from .sweep import load_sweep, sweep_file

        if not sweep_file(root, runs.check_id(sweep_id)).exists():
            _, sweep_id = resolve(root, sweep_id)
            if not sweep_file(root, sweep_id).exists():
                raise DnfaInputError(f"{sweep_id!r} is a run, not a sweep")
        ids = [r["run_id"] for r in load_sweep(root, sweep_id)["runs"]]
        ids = [i for i in ids if (Path(root) / i).exists()]  # runs not started yet have no row
    else:
        ids = runs.list_run_ids(root)
    rows = []
    for rid in ids:
        v = load_run(root, rid)
        end = v.checkpoints[-1] if v.checkpoints else {}
        L1 = (end.get("layers") or [{}])[0]
        rows.append({"created": v.created, "run_id": rid, "status": v.status, "error": v.error, "name": v.config.get("name"),
                     "step": end.get("step"), "test_loss": end.get("test_loss"), "test_acc": end.get("test_acc"),
                     "pearson_a05": L1.get("pearson_a05"), "pearson_a1": L1.get("pearson_a1"),
                     "tightness_range": L1.get("tightness_range")})
    rows.sort(key=lambda r: r["created"] or "", reverse=True)
    return rows
