"""Runs as data: `load_runs` gives every run x checkpoint x layer as one row of a pandas
DataFrame (pandas is imported there and nowhere else), `load_matrices` the arrays saved at
one checkpoint, and `run_row` the one row per run that `--where` filters and `dnfa ls` lists.

    >>> from dnfa_cli import load_runs
    >>> df = load_runs("runs", where=["train.optimizer=adam"], checkpoints="ends")
"""
from __future__ import annotations

import contextlib
import gc
from pathlib import Path
from typing import Iterable

import numpy as np

from . import runs
from . import where as wh
from .config import DnfaInputError, flatten
from .report import CHECKPOINTS, Report, RunView, load_run, pick_checkpoints, resolve, sweep_report

CHECKPOINT_KEYS = ("step", "epoch", "train_loss", "test_loss", "train_acc", "test_acc")
RUN_KEYS = ("run_id", "status", "error", "created")


def _cell(v):
    """Lists (data.coords, a layer's shape) become tuples: hashable, so a column of them
    groups, sorts and counts."""
    return tuple(v) if isinstance(v, list) else v


# ----------------------------------------------------------------------------- which runs
def sweep_views(root: Path, sweep: str, files: bool = True) -> list[tuple[RunView, dict]]:
    """The runs of a sweep (id or unique prefix) in the record's order, each with its swept
    values; a run not started yet is there with status `missing`."""

    if not runs.sweep_file(root, runs.check_id(sweep)).exists():
        kind, full = resolve(root, sweep)
        if kind != "sweep":
            raise DnfaInputError(f"{sweep!r} is a run, not a sweep")
        sweep = full
    return [(load_run(root, r["run_id"], files), r["params"]) for r in runs.load_sweep(root, sweep)["runs"]]


def views(root: Path, sweep: str | None = None, files: bool = True) -> list[tuple[RunView, dict]]:
    """(run, its flat config) for the runs of `sweep`, or every run under `root` (id order).
    `files`: also check the files beside each result.json (report.load_run)."""
    pairs = sweep_views(root, sweep, files) if sweep is not None else \
        [(load_run(root, i, files), {}) for i in runs.list_run_ids(root)]
    return [(v, flatten(v.config) or params) for v, params in pairs]


def run_row(v: RunView, flat: dict) -> dict:
    """One run as one flat row: status, creation time, the end's losses and accuracies, each
    of its layers' statistics as `STAT@LAYER`, and every config key (`model.width`, ...).
    What --where, --sort and --columns name."""
    end = v.checkpoints[-1] if v.checkpoints else {}
    row = {"created": v.created, "run_id": v.run_id, "status": v.status, "error": v.error}
    row.update({k: end.get(k) for k in CHECKPOINT_KEYS})
    for L in end.get("layers") or []:
        row.update({f"{k}@{L['layer']}": x for k, x in L.items() if k != "layer"})
    row.update(flat)
    return row


def filtered(root: Path, sweep: str | None, where: Iterable[str] | str | None = (), files: bool = True
             ) -> list[tuple[RunView, dict]]:
    """views() with only the runs every --where condition holds for."""
    conds = wh.parse_all(where)
    pairs = views(root, sweep, files)
    if not conds:
        return pairs
    rows = wh.select([run_row(v, f) for v, f in pairs], conds)
    keep = {r["run_id"] for r in rows}
    return [(v, f) for v, f in pairs if v.run_id in keep]


# ----------------------------------------------------------------------------- dnfa ls
LS_STATUSES = ("ok", "diverged", "failed", "corrupt", "running", "interrupted")
LS_HEAD = ("created", "run_id", "status")
LS_END = ("step", "test_loss", "test_acc", "pearson_a05@1", "pearson_a1@1", "tightness_range@1")
LS_FIRST = ("train.optimizer", "seed")  # shown even when fixed: what a reader asks of a run first
_RANK = ("train.optimizer", "seed", "model.", "train.", "data.", "name", "metrics.")


def is_config_key(k: str) -> bool:
    return "." in k or k in ("seed", "name")


def list_runs(root: Path, sweep: str | None = None, where: Iterable[str] = (), status: Iterable[str] = (),
              sort: str | None = None, size: bool = False) -> list[dict]:
    """`dnfa ls`: a run_row per run that has a directory (the side files checked too),
    those every --where condition holds for and with one of `status`, newest first or
    sorted by `sort`. `size`: each row's `size`, the bytes its directory holds (before
    --where and --sort, which may use it)."""
    status = list(status or ())
    for st in status:
        if st not in LS_STATUSES:
            raise DnfaInputError(f"--status {st!r}: must be one of {', '.join(LS_STATUSES)}")
    conds = wh.parse_all(where)
    rows = [run_row(v, f) for v, f in views(root, sweep) if v.status != "missing"]
    for r in rows if size else []:
        r["size"] = runs.disk_usage(runs.run_dir(root, r["run_id"]))
    rows = wh.select(rows, conds)
    rows = [r for r in rows if not status or r["status"] in status]
    rows.sort(key=lambda r: r["created"] or "", reverse=True)
    return sort_rows(rows, sort)


def sort_rows(rows: list[dict], key: str | None) -> list[dict]:
    """`--sort KEY` (any key of the rows; -KEY descending); missing values last."""
    if not key:
        return rows
    desc = key.startswith("-")
    k = key.lstrip("-")
    if rows:
        wh.check_key(k, {c for r in rows for c in r}, "--sort")
    have = [r for r in rows if r.get(k) is not None]
    missing = [r for r in rows if r.get(k) is None]
    have.sort(key=lambda r: (not wh.is_number(r[k]), r[k] if wh.is_number(r[k]) else str(r[k])), reverse=desc)
    return have + missing


def varying_keys(rows: list[dict]) -> list[str]:
    """The config keys whose values differ among these runs, the optimizer and the seed
    first, then model, train, data ... keys."""
    keys = dict.fromkeys(k for r in rows for k in r if is_config_key(k))
    vary = [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1]
    return sorted(vary, key=lambda k: (next((i for i, p in enumerate(_RANK) if k == p or k.startswith(p) and p.endswith(".")),
                                             len(_RANK)), k))


def ls_columns(rows: list[dict], columns: Iterable[str] | None = None, every: bool = False) -> list[str]:
    """The columns of `dnfa ls`: `columns` as asked (each checked: a did-you-mean for an
    unknown one); by default the head, the keys that vary, the optimizer and the seed, then
    (`every`, for csv and json) the fixed config keys and every end statistic, and the end's
    headline numbers."""
    known = dict.fromkeys(k for r in rows for k in r)
    if columns:
        for c in columns:
            if rows:
                wh.check_key(c, known, "--columns")
        return list(columns)
    vary = varying_keys(rows)
    first = [k for k in LS_FIRST if k in known and k not in vary]
    end = [c for c in LS_END if any(r.get(c) is not None for r in rows)] or ["step"]
    size = ["size"] if "size" in known else []  # dnfa ls --size
    if not every:
        return [*LS_HEAD, *size, *vary, *first, *end]
    fixed = [k for k in known if is_config_key(k) and k not in vary and k not in first]
    return list(dict.fromkeys([*LS_HEAD, *size, "error", *vary, *first, *fixed, *end, *known]))


def selection(root: Path, sweep: str | None, where: Iterable[str]) -> tuple[dict, dict[str, RunView]]:
    """The runs --where selects (in a sweep, or all) as a sweep record that
    report.sweep_rows takes: their ids and statuses, the config keys that vary among them
    as the swept ones, and each run's values of those; and the runs, read once."""
    pairs = [(v, f) for v, f in filtered(root, sweep, where) if v.status != "missing"]
    varied = varying_keys([run_row(v, f) for v, f in pairs])
    rec = {"runs": [{"run_id": v.run_id, "status": v.status, "params": {k: f.get(k) for k in varied}} for v, f in pairs],
           "varied": varied, "files": []}
    return rec, {v.run_id: v for v, _ in pairs}


def selection_report(root: Path, sweep: str | None, where: list[str], **kw) -> Report:
    """`dnfa report [SWEEP] --where ...`: the selected runs reported as a sweep; figures
    go to runs/where/<hash of the sweep and conditions>/report/."""
    import hashlib

    rec, loaded = selection(root, sweep, where)
    of = f" of sweep {sweep}" if sweep else ""
    if not rec["runs"]:
        raise DnfaInputError(f"no runs{of} in {Path(root).absolute()} where {' and '.join(where)}")
    tag = hashlib.sha256("\n".join([sweep or "", *where]).encode()).hexdigest()[:10]
    what = f"runs{of} where {' and '.join(where)}"
    n = len(rec["runs"])
    return sweep_report(root, rec, f"{n} {what if n != 1 else what.replace('runs', 'run', 1)}", f"dnfa report: {what}",
                        Path(root) / "where" / tag / "report", loaded, **kw)


# ----------------------------------------------------------------------------- the frame
class _Columns:
    """Column lists grown run by run: a key first seen at row n starts with n Nones, a key
    a run lacks gets Nones for its rows. Memory is the rows' numbers, nothing else."""

    def __init__(self):
        self.cols: dict[str, list] = {k: [] for k in (*RUN_KEYS, *CHECKPOINT_KEYS, "layer")}
        self.config: dict = {}  # the config keys, in the order first seen
        self.n = 0

    def put(self, key: str, values: list) -> None:
        col = self.cols.get(key)
        if col is None:
            col = self.cols[key] = [None] * self.n
        col.extend(values)

    def close_run(self, m: int) -> None:
        self.n += m
        for col in self.cols.values():
            if len(col) < self.n:
                col.extend([None] * (self.n - len(col)))

    def ordered(self) -> dict[str, list]:
        """Run keys, config keys, checkpoint keys, then the layer's."""
        order = [*RUN_KEYS, *self.config, *CHECKPOINT_KEYS, *self.cols]
        return {k: self.cols[k] for k in dict.fromkeys(order)}


def _add_run(c: _Columns, v: RunView, flat: dict, checkpoints: str) -> None:
    pairs = [(ck, L) for ck in pick_checkpoints(v.checkpoints, checkpoints) for L in (ck.get("layers") or [{}])] or [({}, {})]
    m = len(pairs)
    for k in RUN_KEYS:
        c.put(k, [getattr(v, k)] * m)
    for k, x in flat.items():
        c.put(k, [_cell(x)] * m)
    c.config.update(dict.fromkeys(flat))
    for k in CHECKPOINT_KEYS:
        c.put(k, [ck.get(k) for ck, _ in pairs])
    keys: dict = {}
    for _, L in pairs:
        if L.keys() != keys.keys():
            keys.update(dict.fromkeys(L))
    # the layers' values row by row (dict.get mapped in C), then turned into columns by zip
    for k, vals in zip(keys, zip(*[tuple(map(L.get, keys)) for _, L in pairs])):
        c.put(k, [tuple(x) if type(x) is list else x for x in vals] if k == "shape" else vals)
    c.close_run(m)


def load_runs(runs_dir: str | Path | None = None, *, sweep: str | None = None,
              where: Iterable[str] | str = (), checkpoints: str = "all"):
    """Every run as rows of a pandas DataFrame in long form: one row per run x checkpoint x
    layer, with `run_id`, `status`, `error`, `created`, every config key flattened
    (`model.width`, `train.lr`, ...), `step`, `epoch`, the losses and accuracies at that
    checkpoint, `layer`, `shape`, `trivial` and one column per statistic. Keys a run lacks
    are NaN; a run without checkpoints (failed at once, corrupt, not started) is one row
    with its status. `sweep`: only its runs (id or unique prefix); `where`: the conditions
    of `dnfa ls --where`, all of which must hold (on the config and the run's end);
    `checkpoints`: "all", "ends" (initialisation and the end) or "last". Reads result.json
    (metrics.jsonl for a run in progress) and nothing else: `status` is result.json's
    (`dnfa ls` also checks the files beside it, and calls a run whose checkpoint files are
    damaged corrupt)."""
    import pandas as pd

    if checkpoints not in CHECKPOINTS:
        raise DnfaInputError(f"checkpoints={checkpoints!r}: must be one of {', '.join(CHECKPOINTS)}")
    root = runs.check_root(runs.runs_root(runs_dir), write=False)
    c = _Columns()
    with _gc_paused():
        for v, flat in filtered(root, sweep, where, files=False):
            _add_run(c, v, flat, checkpoints)
        return pd.DataFrame(c.ordered())


@contextlib.contextmanager
def _gc_paused():
    """Reading makes hundreds of thousands of containers (the parsed JSON's dicts, the
    columns' lists and tuples), none in a cycle, all freed by reference counting; the
    cyclic collector would walk the growing heap again and again for nothing (15% of
    load_runs on 150 runs)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ----------------------------------------------------------------------------- matrices
def load_matrices(run_id: str, step: int | None = None, runs_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays saved at one checkpoint of a run (an id or unique prefix): the parameters
    W1, b1, ..., WL, bL and, where metrics.save_matrices kept them, nfm_i, agop_i,
    agop_half_i, pgop_i of each layer i. `step`: the checkpoint's step (default: the run's
    last saved one)."""
    root = runs.runs_root(runs_dir)
    kind, rid = resolve(root, run_id)
    if kind != "run":
        raise DnfaInputError(f"{run_id!r} is a sweep; load_matrices takes a run id")
    d = runs.run_dir(root, rid) / "checkpoints"
    files: dict[int, list[Path]] = {}
    for f in sorted(d.glob("*_*.npz")):
        head, _, num = f.stem.rpartition("_")
        if head in ("step", "matrices") and num.isdigit():
            files.setdefault(int(num), []).append(f)
    if not files:
        raise DnfaInputError(f"run {rid} has no saved checkpoints in {d}")
    step = max(files) if step is None else step
    if step not in files:
        raise DnfaInputError(f"run {rid} has nothing saved at step {step}; steps with files: "
                             + ", ".join(map(str, sorted(files))))
    out: dict[str, np.ndarray] = {}
    for f in files[step]:
        with np.load(f) as z:
            out.update({k: z[k] for k in z.files})
    return out
