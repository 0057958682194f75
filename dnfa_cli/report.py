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
from typing import Callable

import numpy as np

from . import runs, statnames
from .config import DnfaInputError, flatten, inapplicable

# the statistics a table shows (json/csv carry every key of result.json)
HEADLINE = statnames.shown("headline")
CI = statnames.shown("ci")  # with metrics.bootstrap: *_lo, *_hi
SWEEP_STATS = statnames.shown("sweep")
FIG_DPI = 100
TINY = 1e-12  # magnitudes below this are printed as 0


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
        raise DnfaInputError(f"{ident!r} is ambiguous in {Path(root).absolute()}: it matches {shown}")
    close = difflib.get_close_matches(ident, sweep_ids + run_ids, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ("" if run_ids or sweep_ids else "; it holds no runs yet")
    raise DnfaInputError(f"no run or sweep {ident!r} in {Path(root).absolute()}{hint}")


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


def load_run(root: Path, run_id: str, files: bool = True) -> RunView:
    """A run as its files say; status `corrupt` (the reason in `error`) where they are not
    what dnfa writes, so a listing goes on with the other runs. `files`: check the
    checkpoint files and metrics.jsonl beside result.json too (runs.check_files)."""
    d = runs.run_dir(root, run_id)
    if not d.exists():
        return RunView(run_id, d, "missing", {}, [])
    try:
        res = runs.load_result(root, run_id, files=files)
    except runs.CorruptRun as e:
        cfg, created = _read_side(d)
        return RunView(run_id, d, "corrupt", cfg, [], {}, str(e), created)
    if res is not None:
        return RunView(run_id, d, res["status"], res["config"], res["checkpoints"], res.get("seconds") or {},
                       res.get("error"), res.get("created"))
    cfg, created = _read_side(d)
    status = "running" if runs.is_locked(root, run_id) else "interrupted"
    return RunView(run_id, d, status, cfg, runs.read_metrics(d), {}, None, created)


CHECKPOINTS = ("all", "ends", "last")


def pick_checkpoints(cks: list, which: str) -> list:
    """`all` of a run's checkpoints, its `ends` (initialisation and the latest) or the `last`."""
    if which == "last":
        return cks[-1:]
    if which == "ends" and len(cks) > 2:
        return [cks[0], cks[-1]]
    return cks


def run_rows(v: RunView, all_checkpoints: bool = False) -> list[dict]:
    """One row per (checkpoint, layer) with every key of result.json."""
    rows = []
    for ck in pick_checkpoints(v.checkpoints, "all" if all_checkpoints else "ends"):
        head = {"run_id": v.run_id, "status": v.status, "step": ck["step"], "epoch": ck["epoch"],
                "train_loss": ck.get("train_loss"), "test_loss": ck.get("test_loss"),
                "train_acc": ck.get("train_acc"), "test_acc": ck.get("test_acc")}
        for L in ck["layers"]:
            rows.append({**head, **L})
    return rows


def run_json(v: RunView, all_checkpoints: bool = False) -> dict:
    """`dnfa report RUN --format json`: the run, its whole config (flat keys, those that
    differ from dnfa's defaults first, as in the HTML page) and its rows."""
    rows, _ = config_rows(v.config)
    flat = flatten(v.config)
    return {"run_id": v.run_id, "status": v.status, "config": {k: flat[k] for k, *_ in rows},
            "config_differs": [k for k, _, d in rows if d != "(default)"], "rows": run_rows(v, all_checkpoints)}


def fmt(v, nd=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if abs(v) < TINY:  # 1.9e-16 is a zero that rounding left behind
            return f"{0.0:.{nd}f}"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.{nd}f}"
    if isinstance(v, list):  # a config value such as data.coords: [0, 1]
        return "[" + ", ".join(fmt(x, nd) for x in v) + "]"
    return str(v)


def fmt_config(row: dict, key: str) -> str:
    """A config value in a table: "-" where it does not apply to the row's config (momentum
    under adam), floats as short as they read (0.001, not 0.0010; 1e-05), lists as lists."""
    if key in inapplicable(row):
        return "-"
    v = row.get(key)
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.6g}"
    return fmt(v)


def shape_str(shape) -> str:
    """A weight's shape as 1024x100."""
    return "x".join(map(str, shape))


def config_rows(cfg: dict) -> tuple[list[list[str]], int]:
    """The run's resolved config as (key, value, default) rows, the keys that differ from
    dnfa's defaults (for the same data task) first; and how many differ."""
    from .config import ConfigError, validate

    flat = flatten(cfg)
    data = cfg.get("data") or {}
    try:
        base = {"data": {"task": data.get("task", "monomial"), **({"path": data["path"]} if "path" in data else {})}}
        defaults = flatten(validate(base).to_dict())
    except (ConfigError, OSError):
        defaults = {}
    differ = [k for k in flat if k in defaults and flat[k] != defaults[k] or k not in defaults]
    same = [k for k in flat if k not in differ]
    rows = [[k, fmt_config(flat, k), fmt_config(defaults, k) if k in defaults else "-"] for k in differ]
    rows += [[k, fmt_config(flat, k), "(default)"] for k in same]
    return rows, len(differ)


def run_tables(v: RunView, all_checkpoints: bool = False, include_readout: bool = False, terminal: bool = False
               ) -> list[tuple[str, list[str], list[list[str]]]]:
    """The config (for the terminal only the keys that differ from the defaults), then per
    layer (title, header, rows) with statistics as rows and checkpoints as columns. The
    trivial read-out layer only with `include_readout`."""
    cks = pick_checkpoints(v.checkpoints, "all" if all_checkpoints else "ends")
    tables = []
    if v.config:
        rows, n = config_rows(v.config)
        title = f"config: {n} keys differ from dnfa's defaults" + (
            f" (the other {len(rows) - n}: --html or --format json)" if terminal else ", listed first")
        tables.append((title, ["key", "value", "default"], rows[:n] if terminal else rows))
    if not cks:
        return tables
    # a run still going or interrupted has no end yet: its last checkpoint is the latest
    last = "end" if v.status in runs.STATUSES else "latest"
    names = ["init" if c["step"] == 0 else (last if c is v.checkpoints[-1] else f"step {c['step']}") for c in cks]
    header = ["statistic"] + [f"{n} ({c['step']})" if n in ("init", last) else n for n, c in zip(names, cks)]
    for li, L0 in enumerate(cks[0]["layers"]):
        if L0.get("trivial") and not include_readout:
            continue
        title = f"layer {L0['layer']}  W {shape_str(L0['shape'])}" + ("  (trivial: read-out layer)" if L0.get("trivial") else "")
        rows = [[k] + [fmt(c["layers"][li].get(k)) for c in cks] for k in HEADLINE if k in L0]
        rows += [[f"{k} 95% CI"] + [f"[{fmt(c['layers'][li].get(k + '_lo'))}, {fmt(c['layers'][li].get(k + '_hi'))}]"
                                    for c in cks] for k in CI if f"{k}_lo" in L0]
        tables.append((title, header, rows))
    loss = [["train_loss"] + [fmt(c.get("train_loss"), 6) for c in cks], ["test_loss"] + [fmt(c.get("test_loss"), 6) for c in cks]]
    if any(c.get("test_acc") is not None for c in cks):
        loss += [["train_acc"] + [fmt(c.get("train_acc")) for c in cks], ["test_acc"] + [fmt(c.get("test_acc")) for c in cks]]
    tables.insert(1 if v.config else 0, ("losses", header, loss))
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
    """pyplot, drawing to files (Agg), with every text drawn as given: titles, legends, labels
    and ticks carry user text (a name, a swept data.path), and `$...$` in it must not be read
    as matplotlib mathtext (a parse error ends the report; no figure here uses mathtext).
    Both settings are the process's, as matplotlib.use always is."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure and close it; an OSError (a full disk) names `path`."""
    try:
        with runs.writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=FIG_DPI, metadata={"Software": None})
    finally:
        _plt().close(fig)
    return path


def describe(cfg: dict) -> str:
    """What a run is, in a few words, for figure titles (its id says nothing to a reader):
    `quickstart: monomial, 128x128 relu, sgd lr 0.1, seed 0`."""
    f = flatten(cfg)
    hidden = f.get("model.widths") or ([f["model.width"]] * f["model.depth"] if f.get("model.width") and f.get("model.depth") else [])
    net = " ".join(b for b in ("x".join(map(str, hidden)), f.get("model.activation")) if b)
    train = f"{f.get('train.optimizer', '')} lr {fmt_config(f, 'train.lr')}" if "train.lr" in f else ""
    bits = [b for b in (f.get("data.task"), net, train, f"seed {f['seed']}" if "seed" in f else "") if b]
    return f"{f.get('name', 'run')}: {', '.join(bits)}" if bits else str(f.get("name", "run"))


def _titled(fig, v: RunView, what: str, **kw) -> None:
    """A figure's title: what the run is and what the figure shows; the run id below, small."""
    fig.suptitle(f"{describe(v.config) if v.config else v.run_id}\n{what}", **kw)
    fig.text(0.995, 0.005, v.run_id, ha="right", va="bottom", fontsize=7, color="0.4")


def _steps_axis(ax):
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (symlog: 0 = initialisation)")


def fig_curves(v: RunView, path: Path, include_readout: bool = False) -> Path:
    plt = _plt()
    layers = [L for L in v.checkpoints[0]["layers"] if include_readout or not L.get("trivial")]
    layers = layers or v.checkpoints[0]["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.6), squeeze=False)
    steps = [c["step"] for c in v.checkpoints]
    for ax, L0 in zip(axes[0], layers):
        i = L0["layer"] - 1
        for key, style in (("pearson_a05", "-o"), ("pearson_a1", "-s"), ("tightness_range", "-^")):
            ys = [c["layers"][i].get(key) for c in v.checkpoints]
            ax.plot(steps, [np.nan if y is None else y for y in ys], style, ms=3, label=key)
        _steps_axis(ax)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"layer {L0['layer']} ({shape_str(L0['shape'])})" + (" trivial" if L0.get("trivial") else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _titled(fig, v, "the ansatz and tightness during training")
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
    _titled(fig, v, "loss", fontsize=10)
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
    fig, axes = plt.subplots(len(mfiles), 3, figsize=(10.5, 3.5 * len(mfiles)), squeeze=False, layout="constrained")
    shown = []
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
        shown.append(mats)
        axes[row][0].set_ylabel(how, fontsize=7)
    # one symmetric colour scale per column, shared by initialisation and the end, so the
    # two rows compare; each column its own, since NFM, AGOP^(1/2) and AGOP differ in units
    # The scale ends at the 99.5th percentile of |entries| (the colour bar's arrows say where
    # it clips): one large entry, e.g. a trained NFM's top eigenvalue, would otherwise leave
    # every other entry, and the whole initialisation row, white.
    clipped = False
    for col, name in enumerate(("NFM = W^T W", "AGOP^(1/2)", "AGOP")):
        top = max(float(np.abs(m[col]).max()) for m in shown)
        a = max(float(np.quantile(np.abs(m[col]), 0.995)) for m in shown) or top or 1.0
        clipped |= top > a * (1 + 1e-9)
        for row, (step, _) in enumerate(mfiles):
            ax = axes[row][col]
            im = ax.imshow(shown[row][col], cmap="RdBu_r", vmin=-a, vmax=a, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, step {step}", fontsize=9)
        fig.colorbar(im, ax=[axes[r][col] for r in range(len(mfiles))], shrink=0.8,
                     extend="both" if top > a * (1 + 1e-9) else "neither")
    _titled(fig, v, f"layer {layer}: each column on one colour scale (shared by its rows)"
            + (", clipped at the 99.5th percentile of |entries| (arrows)" if clipped else ""), fontsize=10)
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
    seen = {0: [], 1: []}
    for step, f in mfiles:
        G = np.load(f)[f"pgop_{layer}"].astype(np.float64)
        pf = v.dir / "checkpoints" / f"step_{step:07d}.npz"
        U = None
        if pf.exists():
            W = np.load(pf)[f"W{layer}"].astype(np.float64)
            Uf, s, r = svd_range(W)
            U = Uf[:, :r]
        for j, (ax, M, where) in enumerate(((axes[0], G, "full"), (axes[1], None if U is None else U.T @ G @ U, "range(W)"))):
            if M is None:
                continue
            lam = np.clip(np.linalg.eigvalsh(0.5 * (M + M.T))[::-1], 0, None)
            mean = lam.mean()
            if mean <= 0:
                continue
            # eigenvalues below float32 rounding of the largest are zero (rank(G) <= n c):
            # left out, so the axis spans the data, not the rounding
            keep = lam > 1e-6 * lam[0]
            x = (np.arange(len(lam)) + 0.5) / len(lam)
            ax.plot(x[keep], lam[keep] / mean, marker="o" if keep.sum() <= 8 else None, ms=4,  # k = 1: a point
                    label=f"step {step}" + (f" ({(~keep).sum()} zero)" if (~keep).any() else ""))
            seen[j] += list(lam[keep] / mean)
            ax.set_title(f"pgop eigenvalues / mean, {where} (k = {len(lam)})", fontsize=10)
    for j, ax in enumerate(axes):
        ax.axhline(1.0, color="k", ls="--", lw=1, label="tight frame")
        ax.set_yscale("log")
        if seen[j]:
            lo, hi = min(min(seen[j]), 1.0), max(max(seen[j]), 1.0)
            ax.set_ylim(lo / 1.5, hi * 1.5)
        ax.set_xlabel("eigenvalue rank / k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _titled(fig, v, f"layer {layer}: spectrum of the pre-activation gradient Gram matrix")
    fig.tight_layout()
    return _save(fig, path)


Figure = tuple[Path, str]  # the PNG and the caption the HTML page prints under it
Job = tuple[Callable[[], "Path | None"], str]  # draws and writes one figure (None: nothing to draw); its caption
# processes that draw a report's figures: None, one per core this process may use; 1, this
# process alone, one after another (a test that looks at the figures' objects)
DRAW_PROCESSES: int | None = None


def draw_all(jobs: list[Job]) -> list[Figure]:
    """Each job's figure, in order, with its caption (those that drew nothing left out).
    Where the process may use more than one core (and has not loaded JAX), forked children
    draw them side by side, taking the next job as they finish one, the report's own
    process too: matplotlib draws one figure at a time, and a quickstart sweep's four took
    1.2 s one after another. A figure is drawn by the same code in a child as in the
    parent: the files are the same bytes (tests/test_report.py). An error in a child (a
    full disk) is raised here."""
    import os
    import sys

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    # not beside JAX's threads (a report made in a process that trained): a fork copies none
    n = min(len(jobs), DRAW_PROCESSES or (cores if "jax" not in sys.modules else 1))
    if n <= 1 or not hasattr(os, "fork") or len(jobs) > 4096:
        return [(f, cap) for f, cap in ((make(), cap) for make, cap in jobs) if f]
    import pickle

    _plt()  # matplotlib's font list is read (or built) once, before the children exist
    # the jobs' numbers, 4 bytes each, in a pipe every process reads the next one from (a read
    # of 4 bytes takes 4 whole bytes); no shared memory, which a file-size limit refuses
    todo, fill = os.pipe()
    os.write(fill, b"".join(i.to_bytes(4, "little") for i in range(len(jobs))))  # within the pipe's buffer
    os.close(fill)

    def mine() -> tuple[dict, BaseException | None]:
        out: dict[int, Path | None] = {}
        try:
            while len(got := os.read(todo, 4)) == 4:
                i = int.from_bytes(got, "little")
                out[i] = jobs[i][0]()
            return out, None
        except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
            return out, e

    kids = []
    for _ in range(n - 1):
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no more processes: those there are draw what is left
            os.close(r)
            os.close(w)
            break
        if pid == 0:  # a child: draw, send the paths (or the error), and leave without cleanup
            os.close(r)
            code = 0
            try:
                out, e = mine()
                if e is not None and not isinstance(e, OSError):  # its traceback, as text: any error reads back
                    import traceback

                    e = RuntimeError("".join(traceback.format_exception(e)).rstrip())
                with os.fdopen(w, "wb") as f:
                    f.write(pickle.dumps((out, e)))
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        os.close(w)
        kids.append((pid, r))
    done, err = mine()
    os.close(todo)
    for pid, r in kids:
        try:
            with os.fdopen(r, "rb") as f:
                out, e = pickle.loads(f.read())
        except Exception:  # noqa: BLE001 - a child killed before it said anything
            out, e = {}, RuntimeError("a process drawing the report's figures ended without its result")
        finally:
            os.waitpid(pid, 0)
        done.update(out)
        err = err or e
    if err is not None:
        raise err
    return [(done[i], cap) for i, (_, cap) in enumerate(jobs) if done.get(i)]


def run_figures(v: RunView, out: Path, include_readout: bool = False) -> list[Figure]:
    if not v.checkpoints:
        return []
    jobs: list[Job] = [
        (lambda: fig_curves(v, out / "curves.png", include_readout),
         "The ansatz during training, a panel per layer: pearson_a05 and pearson_a1 (the correlation of "
         "the NFM W^T W with AGOP^(1/2) and with AGOP) and tightness_range (1: the pre-activation gradients "
         "are isotropic on range(W), a tight frame), against the training step; step 0 is initialisation."),
        (lambda: fig_loss(v, out / "loss.png"), "Train and test loss against the training step (log scale).")]
    for L in v.checkpoints[0]["layers"]:
        if L.get("trivial") and not include_readout:
            continue
        i = L["layer"]
        for fn, name, caption in (
                (fig_matrices, "matrices", f"Layer {i}: the NFM, AGOP^(1/2) and AGOP at the saved checkpoints "
                                           "(rows), each column on one colour scale; where the ansatz holds the "
                                           "three show the same pattern."),
                (fig_spectrum, "spectrum", f"Layer {i}: the eigenvalues of pgop divided by their mean, in full and "
                                           "on range(W); a tight frame is the flat line at 1.")):
            jobs.append((lambda fn=fn, i=i, name=name: fn(v, i, out / f"{name}_layer{i}.png"), caption))
    return draw_all(jobs)


# ----------------------------------------------------------------------------- a sweep
def sweep_statuses(rec: dict, rows: list[dict]) -> dict[str, int]:
    """How many of a sweep's runs have each status (ok, diverged, failed, corrupt first;
    none listed that no run has), as the runs' own files say now (`rows`, sweep_rows),
    not as the record said when the sweep ended."""
    now = {r["run_id"]: r["status"] for r in rows}
    st = [now.get(r["run_id"], r["status"]) for r in rec["runs"]]
    return {k: st.count(k) for k in dict.fromkeys(("ok", "diverged", "failed", "corrupt", *st)) if st.count(k)}


def sweep_rows(root: Path, rec: dict, checkpoints: str = "last", loaded: dict | None = None) -> list[dict]:
    """One row per (run, checkpoint, layer): the swept values and the statistics at the
    run's `last` checkpoint, its `ends` or `all` of them (pick_checkpoints). A run without
    checkpoints is one row with its status. `loaded`: RunViews already read, by run id."""
    rows = []
    for r in rec["runs"]:
        try:
            v = (loaded or {}).get(r["run_id"]) or load_run(root, r["run_id"])
        except OSError:
            v = None
        if v is None or not v.checkpoints:
            rows.append({"run_id": r["run_id"], "status": v.status if v else "unreadable", **r["params"], "layer": None,
                         **({"error": v.error} if v is not None and v.error else {})})
            continue
        for ck in pick_checkpoints(v.checkpoints, checkpoints):
            for L in ck["layers"]:
                rows.append({"run_id": r["run_id"], "status": v.status, **r["params"], "step": ck["step"],
                             "train_loss": ck.get("train_loss"), "test_loss": ck.get("test_loss"),
                             "test_acc": ck.get("test_acc"), **L})
    return rows


def ends(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of each run's first checkpoint and those of its last (a run without
    checkpoints: its one row, in both)."""
    first: dict = {}
    last: dict = {}
    for r in rows:
        s, rid = r.get("step"), r["run_id"]
        if s is not None:
            first[rid] = min(first.get(rid, s), s)
            last[rid] = max(last.get(rid, s), s)
    return ([r for r in rows if r.get("step") == first.get(r["run_id"])],
            [r for r in rows if r.get("step") == last.get(r["run_id"])])


SEEDS = ("seed", "data.seed")  # what error bars are over, never a plotted parameter


def grouped_rows(rows: list[dict], varied: list[str]) -> list[dict]:
    """Rows grouped over seeds (per swept value, layer and step): mean and standard
    deviation of each headline statistic, over the runs that finished ok (a diverged run's
    last checkpoint is from an earlier step)."""
    keys = [k for k in varied if k not in SEEDS]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("layer") is None or r.get("status") != "ok":
            continue
        groups.setdefault(tuple(repr(r.get(k)) for k in keys) + (r["layer"], r.get("step")), []).append(r)
    out = []
    for members in groups.values():
        g = {k: members[0].get(k) for k in keys}
        g["layer"] = members[0]["layer"]
        g["step"] = members[0].get("step")
        g["trivial"] = members[0].get("trivial")
        g["n"] = len(members)
        for s in SWEEP_STATS + ["test_loss", "test_acc"]:
            vals = np.array([m.get(s) for m in members if m.get(s) is not None], dtype=float)
            g[f"{s}_mean"] = float(vals.mean()) if vals.size else None
            g[f"{s}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else None
        out.append(g)
    return out


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]  # layer 1, 2, ...


def fixed_colours(values) -> dict:
    """A colour per value that does not depend on which other values a sweep has: the
    value's stable hash picks the palette slot (the next free one on a collision), so relu
    is the same colour in every sweep that has it."""
    import zlib

    out, used = {}, set()
    for v in sorted({repr(x) for x in values}):
        i = zlib.crc32(v.encode()) % len(PALETTE)
        while i in used and len(used) < len(PALETTE):
            i = (i + 1) % len(PALETTE)
        used.add(i)
        out[v] = PALETTE[i]
    return out


def linked_groups(rows: list[dict], keys: list[str]) -> list[list[str]]:
    """The keys grouped by what varies together: keys whose values go one to one (an
    optimizer with its lr and momentum, swept as linked parameters) share a group; in
    the order given."""
    n = lambda ks: len({tuple(fmt_config(r, k) for k in ks) for r in rows})
    groups: list[list[str]] = []
    for k in keys:
        linked = next((g for g in groups if n(g) == n([k]) == n(g + [k])), None)
        if linked is None:
            groups.append([k])
        else:
            linked.append(k)
    return groups


def colour_keys(rows: list[dict], varied: list[str]) -> list[str]:
    """The swept keys a scatter's colours tell apart: the group of linked keys
    (linked_groups) with the fewest values, ties in the sweep's order - not the
    alphabetically first key. A single key gets the colours it has in every figure."""
    groups = linked_groups(rows, [k for k in varied if k not in SEEDS])
    n = lambda ks: len({tuple(fmt_config(r, k) for k in ks) for r in rows})
    return min(groups, key=lambda g: (n(g), groups.index(g)), default=[])


def _is_numeric(vals) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals)


def _scatter(rows, xkey, ykey, ckeys: list[str], path: Path, title: str, include_readout: bool = False) -> Path:
    """One point per run and layer: marker by layer, a fixed colour per combination of
    the values of `ckeys` (colour_keys)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    pts = [r for r in rows if r.get(xkey) is not None and r.get(ykey) is not None
           and (include_readout or not r.get("trivial"))]
    # coloured by the label "key=value", as the facets of stats_vs_<param> are: relu has one
    # colour in every figure of every sweep
    label = lambda r: ", ".join(f"{k}={fmt_config(r, k)}" for k in ckeys)
    colours = {k.strip("'"): c for k, c in fixed_colours(label(r) for r in pts).items()} if ckeys else {}
    for layer in sorted({r["layer"] for r in pts}):
        for val, col in (colours.items() if ckeys else [(None, PALETTE[0])]):
            sel = [r for r in pts if r["layer"] == layer and (not ckeys or label(r) == val)]
            if sel:
                ax.scatter([r[xkey] for r in sel], [r[ykey] for r in sel], s=16, c=col,
                           marker=MARKERS[(layer - 1) % len(MARKERS)], alpha=0.8, edgecolors="none")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=MARKERS[(l - 1) % len(MARKERS)], color="k", label=f"layer {l}")
               for l in sorted({r["layer"] for r in pts})]
    handles += [Line2D([], [], ls="", marker="o", color=c, label=v) for v, c in colours.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel(xkey)
    ax.set_ylabel(ykey)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# a statistic drawn in the panel of the one it is the baseline of (hollow markers): the
# gap between a trained W's pearson_a1 and a random W's is what the comparison is about
PAIRED = {"pearson_a1": "rand_pearson_a1"}
LOG_KEYS = ("train.lr", "train.weight_decay")  # scales: a log axis whenever positive


def _param_axis(ax, param: str, xs: list, cats: list | None) -> None:
    """The x axis of `param`: categories, or numbers (a log scale for scale keys and
    positive values spanning more than a factor 20)."""
    if cats is not None:
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c.strip("'") for c in cats], fontsize=9)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    elif len(set(xs)) > 1 and min(xs) > 0 and (param in LOG_KEYS or max(xs) / min(xs) > 20):
        ax.set_xscale("log")
    ax.set_xlabel(param, fontsize=9)


def fig_stat_vs_param(rows, param: str, varied: list[str], path: Path, include_readout: bool = False,
                      linked: list[str] = ()) -> Path:
    """A 16:9 grid, a panel per statistic: the final value against `param` (a categorical
    axis for categorical keys), mean and std over seeds, a marker per layer and a fixed
    colour per combination of the other swept keys (the facets). A baseline (PAIRED) is
    drawn hollow in its statistic's panel. `linked`: keys that vary with `param` (not
    facets: each of their values goes with one of param's)."""
    plt = _plt()
    stats = [s for s in SWEEP_STATS if s not in PAIRED.values()]
    ncol = 3
    nrow = -(-len(stats) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(16, 9), squeeze=False)
    pts = [r for r in rows if r.get("layer") is not None and r.get("status") == "ok"
           and (include_readout or not r.get("trivial"))]
    others = [k for k in varied if k not in SEEDS and k != param and k not in linked]
    facet = lambda r: _facet(r, others)
    xs_all = [r.get(param) for r in pts]
    numeric = _is_numeric(xs_all)
    cats = sorted({repr(x) for x in xs_all}) if not numeric else None
    colours = fixed_colours(facet(r) for r in pts)
    layers = sorted({r["layer"] for r in pts})
    groups: dict = {}
    for r in pts:
        groups.setdefault((facet(r), r["layer"], repr(r.get(param))), []).append(r)
    nf = max(1, len(colours))
    for ax, s in zip(axes.ravel(), stats):
        for (fc, layer, xv), members in sorted(groups.items()):
            fi = sorted(colours).index(repr(fc))
            off = ((fi * len(layers) + layers.index(layer)) / max(1, nf * len(layers) - 1) - 0.5) * 0.3
            x = cats.index(xv) + off if not numeric else members[0][param]
            for key, hollow in ((s, False), *([(PAIRED[s], True)] if s in PAIRED else [])):
                vals = [m[key] for m in members if m.get(key) is not None]
                if vals:
                    ax.errorbar([x], [np.mean(vals)], yerr=[np.std(vals, ddof=1)] if len(vals) > 1 else None,
                                fmt=MARKERS[(layer - 1) % len(MARKERS)], color=colours[repr(fc)], ms=5, capsize=2,
                                alpha=0.85, mfc="none" if hollow else None)
        _param_axis(ax, param, xs_all, cats)
        ax.set_title(f"{s} (filled) and {PAIRED[s]} (hollow: a random W)" if s in PAIRED else s, fontsize=11)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(stats):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=MARKERS[(l - 1) % len(MARKERS)], color="k", label=f"layer {l}") for l in layers]
    handles += [Line2D([], [], ls="", marker="o", color=c, label=f.strip("'")) for f, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=9, frameon=False)
    with_ = f" (with {', '.join(linked)})" if linked else ""
    fig.suptitle(f"final statistics against {param}{with_}: mean and std over seeds, runs that finished ok", fontsize=12)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(handles) // 6), 1, 1))
    return _save(fig, path)


def sweep_figures(rows: list[dict], varied: list[str], out: Path, include_readout: bool = False) -> list[Figure]:
    """From a sweep's rows at every checkpoint: the curves during training, then the
    statistics at each run's end."""
    _, end = ends(rows)
    ck = colour_keys([r for r in end if r.get("layer") is not None], varied)
    by = f"a colour per value of {', '.join(ck)}" if ck else "one colour"
    jobs: list[Job] = [
        (lambda: fig_sweep_curves(rows, varied, out / "training.png", include_readout),
         "During training, a line per combination of the swept keys (the mean over seeds; the band spans the "
         "seeds' lowest to highest value), runs that finished ok: train and test loss, test accuracy (where the "
         "task has classes), and each layer's ansatz, pearson_a1 (solid) and pearson_a05 (dashed), against the "
         "training step; step 0 is initialisation."),
        (lambda: _scatter(end, "tightness_range", "pearson_a1", ck, out / "pearson_a1_vs_tightness_range.png",
                          "pearson_a1 against tightness_range (one point per run and layer)", include_readout),
         f"At the end of each run: the ansatz (pearson_a1) against how tight a frame the pre-activation gradients "
         f"are on range(W) (tightness_range); one point per run and layer, a marker per layer, {by}."),
        (lambda: _scatter(end, "pearson_a1", "pearson_a05", ck, out / "pearson_a05_vs_pearson_a1.png",
                          "pearson_a05 against pearson_a1 (one point per run and layer)", include_readout),
         f"At the end of each run: the ansatz with AGOP^(1/2) (pearson_a05) against the ansatz with AGOP "
         f"(pearson_a1); one point per run and layer, a marker per layer, {by}."),
    ]
    # seeds are what the error bars are over; keys that vary together get one figure
    for p, *linked in linked_groups([r for r in end if r.get("layer") is not None], [k for k in varied if k not in SEEDS]):
        with_ = f" (with {', '.join(linked)}, which vary with it)" if linked else ""
        jobs.append((lambda p=p, linked=linked: fig_stat_vs_param(end, p, varied, out / f"stats_vs_{p.replace('.', '_')}.png",
                                                                  include_readout, linked),
                     f"The headline statistics at the end against {p}{with_}: mean and std over seeds of the runs "
                     f"that finished ok, a marker per layer, a colour per combination of the other swept keys; "
                     f"a random W's value hollow beside its statistic."))
    return draw_all(jobs)


def _facet(r: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={fmt_config(r, k)}" for k in keys) or "all runs"


def fig_sweep_curves(rows: list[dict], varied: list[str], path: Path, include_readout: bool = False) -> Path:
    """Losses, test accuracy and each layer's pearson_a1 / pearson_a05 against the step, a
    line per combination of the swept keys but the seed: the mean over seeds and a band
    from the lowest to the highest."""
    plt = _plt()
    keys = [k for k in varied if k not in SEEDS]
    ok = [r for r in rows if r.get("status") == "ok" and r.get("layer") is not None]
    layers = sorted({r["layer"] for r in ok if include_readout or not r.get("trivial")})
    first = min((r["layer"] for r in ok), default=None)  # losses are per checkpoint: one layer's rows carry them
    panels = [("train_loss", None), ("test_loss", None)]
    panels += [("test_acc", None)] if any(r.get("test_acc") is not None for r in ok) else []
    panels += [("pearson_a1", L) for L in layers]
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow + 0.6), squeeze=False)
    colours = fixed_colours(_facet(r, keys) for r in ok)
    for ax, (key, layer) in zip(axes.ravel(), panels):
        sel = [r for r in ok if r["layer"] == (first if layer is None else layer)]
        for name, style in ((key, "-"), ("pearson_a05", "--")) if layer is not None else ((key, "-"),):
            for fc in sorted(colours):
                _mean_band(ax, [r for r in sel if repr(_facet(r, keys)) == fc], name, colours[fc], style)
        _steps_axis(ax)
        if "loss" in key:
            ax.set_yscale("log")
        ax.set_title(key if layer is None else f"layer {layer}: pearson_a1 (solid), pearson_a05 (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=f.strip("'")) for f, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(handles))), fontsize=9, frameon=False)
    fig.suptitle("during training: mean over seeds, band from the lowest to the highest", fontsize=11)
    fig.tight_layout(rect=(0, (0.1 + 0.28 * -(-len(handles) // 4)) / fig.get_figheight(), 1, 1))
    return _save(fig, path)


def _mean_band(ax, rows: list[dict], key: str, colour: str, style: str) -> None:
    by_step: dict = {}
    for r in rows:
        if r.get(key) is not None and r.get("step") is not None:
            by_step.setdefault(r["step"], []).append(r[key])
    if not by_step:
        return
    steps = sorted(by_step)
    vals = [np.array(by_step[s], dtype=float) for s in steps]
    ax.plot(steps, [v.mean() for v in vals], style, color=colour, lw=1.5, marker="o" if len(steps) < 3 else None, ms=3)
    if any(len(v) > 1 for v in vals):
        ax.fill_between(steps, [v.min() for v in vals], [v.max() for v in vals], color=colour, alpha=0.15, lw=0)


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
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, bool)) else ("" if v is None else v)) for k, v in r.items()})
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, allow_nan=False)


def write_html(path: Path, title: str, intro: list[str], tables: list[tuple[str, list[str], list[list[str]]]],
               figures: list[Figure]) -> Path:
    """One file, figures inline as base64 PNG with their captions under them, no external
    resources."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}",
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}",
        "td:first-child{text-align:left}img{max-width:100%;margin:0.5em 0 0.3em}",
        "figure{margin:0 0 2em}figcaption{max-width:60em;font-size:14px;color:#333}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(x)}</p>" for x in intro]
    for t, header, rows in tables:
        parts.append(f"<h3>{html.escape(t)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    for f, caption in figures:
        b64 = base64.b64encode(Path(f).read_bytes()).decode()
        parts.append(f"<figure><h3>{html.escape(Path(f).stem)}</h3><img alt='{html.escape(Path(f).stem)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    runs.atomic_write_bytes(path, "\n".join(parts).encode())
    return path


TERMINAL_STATS = [*statnames.shown("terminal"), "test_loss", "test_acc"]
Tables = list[tuple[str, list[str], list[list[str]]]]


def sweep_tables(rows: list[dict], varied: list[str], terminal: bool = False, include_readout: bool = False,
                 all_checkpoints: bool = False) -> Tables:
    """From a sweep's rows at every checkpoint (sweep_rows "all"): the grouped-over-seeds
    table (when seeds vary) and the per-run table, each cell `init -> end`, or with
    `all_checkpoints` a row per checkpoint. For the terminal: fewer statistics, and the
    per-run table only when there is no grouping. The trivial read-out layer only with
    `include_readout`."""
    if not include_readout:
        rows = [r for r in rows if not r.get("trivial")]
    shown = [s for s in (TERMINAL_STATS if terminal else SWEEP_STATS + ["test_loss", "test_acc"])
             if s != "test_acc" or any(r.get(s) is not None for r in rows)]
    keys = [k for k in varied if k not in SEEDS]
    seeds_vary = any(k in SEEDS for k in varied)
    star = " (* the trivial read-out layer)" if include_readout else ""
    out = []
    if seeds_vary:
        out.append(_grouped_table(rows, varied, keys, shown, all_checkpoints, star, terminal))
    if not (terminal and seeds_vary):
        out.append(_runs_table(rows, varied, shown, all_checkpoints, star))
    return out


def _layer(r) -> str:
    return f"{r.get('layer')}" + ("*" if r.get("trivial") else "") if r.get("layer") is not None else "-"


def _init_end(first: dict, last: dict, cell) -> str:
    a, b = cell(first), cell(last)
    return b if first.get("step") == last.get("step") else f"{a} -> {b}"


def _grouped_table(rows, varied, keys, shown, all_checkpoints, star, terminal):
    """Grouped over seeds; for the terminal, initialisation as the mean alone."""
    what = "mean ± std over seeds of the runs that finished ok"
    if all_checkpoints:
        grows = [[fmt_config(g, k) for k in keys] + [_layer(g), fmt(g["step"]), str(g["n"])]
                 + [_pm(g.get(f"{s}_mean"), g.get(f"{s}_std")) for s in shown] for g in grouped_rows(rows, varied)]
        return (f"grouped over seeds, every checkpoint: {what}{star}", [*keys, "layer", "step", "n", *shown], grows)
    first, last = (grouped_rows(x, varied) for x in ends(rows))
    at0 = {tuple(repr(g.get(k)) for k in keys) + (g["layer"],): g for g in first}
    grows = []
    for g in last:
        g0 = at0.get(tuple(repr(g.get(k)) for k in keys) + (g["layer"],), {})
        grows.append([fmt_config(g, k) for k in keys] + [_layer(g), str(g["n"])]
                     + [_init_end(g0, g, lambda x: _pm(x.get(f"{s}_mean"), None if terminal and x is g0 else x.get(f"{s}_std")))
                        for s in shown])
    return (f"grouped over seeds, initialisation -> end: {what}{star}", [*keys, "layer", "n", *[f"{s}\ninit -> end" for s in shown]],
            grows)


def _runs_table(rows, varied, shown, all_checkpoints, star):
    head = ["run_id", "status", *varied]
    if all_checkpoints:
        return (f"runs: every checkpoint, one row per layer{star}", [*head, "layer", "step", *shown],
                [[fmt_config(r, c) for c in head] + [_layer(r), fmt(r.get("step"))] + [fmt(r.get(s)) for s in shown]
                 for r in rows])
    first, last = ends(rows)
    at0 = {(r["run_id"], r.get("layer")): r for r in first}
    return (f"runs: initialisation -> end, one row per layer{star}", [*head, "layer", *[f"{s}\ninit -> end" for s in shown]],
            [[fmt_config(r, c) for c in head] + [_layer(r)]
             + [_init_end(at0.get((r["run_id"], r.get("layer")), r), r, lambda x: fmt(x.get(s))) for s in shown]
             for r in last])


def _pm(m, s) -> str:
    if m is None:
        return "-"
    m = 0.0 if abs(m) < TINY else m
    s = 0.0 if s is not None and abs(s) < TINY else s
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return f"{m:.3f}"
    return f"{m:.3f}±{s:.3f}"


# ----------------------------------------------------------------------------- what dnfa report shows
@dataclass
class Report:
    """What `dnfa report` shows of a run, a sweep or a --where selection: the title and
    intro lines, the json document and csv rows, the terminal's and the page's tables,
    where figures go by default, how to draw them, and lines for stderr (runs that
    cannot be read)."""
    title: str
    intro: list[str]
    doc: object
    rows: list[dict]
    tables: Tables
    html_tables: Tables
    dest: Path
    figures: Callable[[Path], list[Figure]]
    notes: list[str] = field(default_factory=list)
    per_run_hint: bool = False  # the terminal shows groups only: say where the per-run rows are


def run_report(v: RunView, all_checkpoints: bool = False, include_readout: bool = False) -> Report:
    return Report(f"dnfa run {v.run_id}", [run_headline(v)], run_json(v, all_checkpoints), run_rows(v, all_checkpoints),
                  run_tables(v, all_checkpoints, include_readout, terminal=True),
                  run_tables(v, all_checkpoints, include_readout), v.dir / "report",
                  lambda dest: run_figures(v, dest, include_readout))


def sweep_report(root: Path, rec: dict, what: str, title: str, dest: Path, loaded: dict | None = None,
                 all_checkpoints: bool = False, include_readout: bool = False) -> Report:
    """A sweep record's runs (or a selection's, frame.selection): `what` opens the intro
    line, the statuses and the varying keys follow."""
    every = sweep_rows(root, rec, "all", loaded)
    rows = every if all_checkpoints else ends(every)[1]
    counts = ", ".join(f"{k} {n}" for k, n in sweep_statuses(rec, rows).items())
    intro = f"{what}; {counts}" + (f"; varying {', '.join(rec['varied'])}" if rec["varied"] else "")
    notes = [f"{r['status']}: {r['run_id']}: {r.get('error') or 'cannot be read'}" for r in rows
             if r["status"] in ("corrupt", "unreadable") and r.get("layer") is None]
    return Report(title, [intro], {"runs": rows, "grouped": grouped_rows(rows, rec["varied"])}, rows,
                  sweep_tables(every, rec["varied"], True, include_readout, all_checkpoints),
                  sweep_tables(every, rec["varied"], False, include_readout, all_checkpoints), dest,
                  lambda d: sweep_figures(every, rec["varied"], d, include_readout), notes,
                  any(k in SEEDS for k in rec["varied"]))


def sweep_id_report(root: Path, sweep_id: str, **kw) -> Report:
    rec = runs.load_sweep(root, sweep_id)
    n = len(rec["runs"])
    return sweep_report(root, rec, f"sweep {sweep_id}: {n} run{'' if n == 1 else 's'} from {', '.join(rec['files'])}",
                        f"dnfa sweep {sweep_id}", runs.sweep_file(root, sweep_id).with_suffix("") / "report", **kw)


# ----------------------------------------------------------------------------- compare
COMPARE_STATS = statnames.shown("compare")


def compare_views(root: Path, idents: list[str]) -> list[RunView]:
    """The runs the ids name, in order, each once: a sweep id names the runs of that sweep
    that have started."""
    ids: list[str] = []
    for ident in idents:
        kind, full = resolve(root, ident)
        members = [r["run_id"] for r in runs.load_sweep(root, full)["runs"]] if kind == "sweep" else [full]
        ids += [rid for rid in members if rid not in ids and (kind == "run" or runs.run_dir(root, rid).exists())]
    if len(ids) < 2:
        raise DnfaInputError(f"compare needs at least two different runs; {' '.join(idents)} name{'s' if len(idents) == 1 else ''} "
                             f"{len(ids)}")
    return [load_run(root, rid) for rid in ids]


def compare_tables(views: list[RunView], include_readout: bool = False):
    """(config differences, headline statistics at the end), runs side by side."""
    flats = [flatten(v.config) for v in views]
    keys = sorted({k for f in flats for k in f})
    diff = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    header = ["key"] + [v.run_id for v in views]
    cfg = [[k] + [fmt_config(f, k) for f in flats] for k in diff]
    rows = [["status"] + [v.status for v in views]]
    ends = [v.checkpoints[-1] if v.checkpoints else {} for v in views]
    for k in ("step", "train_loss", "test_loss", "test_acc"):
        if any(e.get(k) is not None for e in ends):
            rows.append([k] + [fmt(e.get(k), 6 if "loss" in k else 4) for e in ends])
    layers = max((len(e.get("layers") or []) for e in ends), default=0)
    for li in range(layers):
        trivial = any((e.get("layers") or [{}] * layers)[li].get("trivial") for e in ends if e.get("layers"))
        if trivial and not include_readout:
            continue
        for s in COMPARE_STATS:
            vals = [((e.get("layers") or [])[li].get(s) if li < len(e.get("layers") or []) else None) for e in ends]
            if any(x is not None for x in vals):
                rows.append([f"layer {li + 1} {s}"] + [fmt(x) for x in vals])
    return [("config: the keys that differ", header, cfg), ("at the end of each run", header, rows)]


def compare_rows(views: list[RunView], include_readout: bool = True) -> list[dict]:
    """For json/csv: one row per run and layer at the end, with the differing config keys."""
    flats = [flatten(v.config) for v in views]
    diff = [k for k in sorted({k for f in flats for k in f}) if len({repr(f.get(k)) for f in flats}) > 1]
    out = []
    for v, f in zip(views, flats):
        end = v.checkpoints[-1] if v.checkpoints else {}
        head = {"run_id": v.run_id, "status": v.status, **{k: f.get(k) for k in diff},
                **{k: end.get(k) for k in ("step", "train_loss", "test_loss", "test_acc")}}
        for L in end.get("layers") or []:
            if L.get("trivial") and not include_readout:
                continue
            out.append({**head, **L})
        if not end.get("layers"):
            out.append(head)
    return out


def compare_labels(views: list[RunView]) -> dict[str, str]:
    """Each run's legend label: the config values that tell it from the others
    (`optimizer=adam, lr=0.001`; the last part of each key), not its hash; the id where
    nothing in the config differs."""
    flats = [flatten(v.config) for v in views]
    diff = [k for k in sorted({k for f in flats for k in f}) if len({repr(f.get(k)) for f in flats}) > 1 and k != "name"]
    diff = diff or (["name"] if len({f.get("name") for f in flats}) > 1 else [])
    out = {}
    for v, f in zip(views, flats):
        shown = [f"{k.rsplit('.', 1)[-1]}={fmt_config(f, k)}" for k in diff if k not in inapplicable(f)]
        out[v.run_id] = ", ".join(shown) or v.run_id
    if len(set(out.values())) < len(out):  # short names that coincide: the whole keys
        out = {v.run_id: ", ".join(f"{k}={fmt_config(f, k)}" for k in diff) or v.run_id for v, f in zip(views, flats)}
    return out


def fig_compare(views: list[RunView], path: Path, include_readout: bool = False) -> Path:
    """Every run's curves on one figure: a panel per layer and statistic, a colour per run."""
    plt = _plt()
    n_layers = max((len(v.checkpoints[0]["layers"]) for v in views if v.checkpoints), default=0)
    layers = [i for i in range(n_layers)
              if include_readout or not any(v.checkpoints and v.checkpoints[0]["layers"][i].get("trivial")
                                            for v in views if len(v.checkpoints[0]["layers"]) > i)]
    keys = ("pearson_a05", "pearson_a1", "tightness_range")
    fig, axes = plt.subplots(len(keys), max(1, len(layers)), figsize=(4.2 * max(1, len(layers)), 8.5), squeeze=False)
    colours = fixed_colours(v.run_id for v in views)
    labels = compare_labels(views)
    for j, li in enumerate(layers):
        for i, key in enumerate(keys):
            ax = axes[i][j]
            for v in views:
                cks = [c for c in v.checkpoints if len(c["layers"]) > li]
                ys = [c["layers"][li].get(key) for c in cks]
                ax.plot([c["step"] for c in cks], [np.nan if y is None else y for y in ys], "-o", ms=3,
                        color=colours[repr(v.run_id)], label=labels[v.run_id])
            _steps_axis(ax)
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"layer {li + 1}: {key}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("runs side by side during training", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)
