"""The `dnfa` command: parses flags, calls the library, maps errors to exit codes
(0 ok, 1 a failed or diverged run, 2 bad input). Kept thin on purpose."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import DnfaInputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train MLPs and measure the Deep Neural Feature Ansatz and its tight-frame reformulation.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RunsDir = Annotated[Optional[Path], typer.Option("--runs-dir", help="Run directory root (default: $DNFA_RUNS_DIR or runs/).")]


@app.callback()
def _root():
    """Train MLPs and measure the Deep Neural Feature Ansatz and its tight-frame reformulation."""


def _fail(msg: str, code: int = 2):
    err.print(f"error: {msg}", markup=False)
    raise typer.Exit(code)


def _fmt(v, nd=4):
    return "-" if v is None else f"{v:.{nd}f}"


def layer_summary_table(result: dict, title: str | None = None) -> Table:
    """Per layer: pearson_a05, pearson_a1 and tightness_range at initialisation and at the end."""
    cks = result.get("checkpoints") or []
    t = Table(title=title, title_justify="left")
    t.add_column("layer", justify="right")
    t.add_column("shape")
    for name in ("pearson_a05", "pearson_a1", "tightness_range"):
        t.add_column(f"{name}\ninit -> end", justify="right")
    if not cks:
        return t
    first, last = cks[0], cks[-1]
    for a, b in zip(first["layers"], last["layers"]):
        label = f"{a['layer']}" + ("*" if a.get("trivial") else "")
        cells = [label, "x".join(map(str, a["shape"]))]
        cells += [f"{_fmt(a.get(n))} -> {_fmt(b.get(n))}" for n in ("pearson_a05", "pearson_a1", "tightness_range")]
        t.add_row(*cells)
    if any(a.get("trivial") for a in first["layers"]):
        t.caption = "* trivial: the read-out layer, where agop = nfm by construction"
        t.caption_justify = "left"
    return t


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set model.width=256 (repeatable).")] = None,
    runs_dir: RunsDir = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if this exact run already finished ok.")] = False,
):
    """Train one run and measure the ansatz at its checkpoints."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from . import config as cfgmod
    from . import runs

    try:
        cf = cfgmod.load_config(config, set_)
        cfg = cf.base
        root = runs.runs_root(runs_dir)
        if cf.sweep:
            err.print(f"note: {config} has a sweep: block; dnfa train runs its base config only (use dnfa sweep for all)")
        rid = cfg.run_id
        with runs.run_lock(root, rid) as _:
            if not force and runs.result_status(root, rid) == "ok":
                res = runs.load_result(root, rid)
                out.print(f"run {rid} already finished ok (use --force to retrain): {root / rid}")
                out.print(layer_summary_table(res))
                return
            ds = runs.prepare(cfg)  # raises DnfaInputError before any directory exists
            out.print(f"run {rid} -> {root / rid}")
            with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as prog:
                task = prog.add_task("train", total=None)
                res = runs.execute([cfg], root, [ds], on_progress=lambda s, n: prog.update(task, completed=s, total=n))[0]
    except DnfaInputError as e:
        _fail(str(e))
    status = res["status"]
    secs = res["seconds"].get("total")
    out.print(layer_summary_table(res, title=f"{rid}: {status}" + (f" in {secs:.1f} s" if secs else "")))
    last = res["checkpoints"][-1] if res["checkpoints"] else None
    if last:
        acc = f", test_acc {last['test_acc']:.4f}" if last.get("test_acc") is not None else ""
        out.print(f"step {last['step']}: train_loss {_fmt(last['train_loss'], 6)}, test_loss {_fmt(last['test_loss'], 6)}{acc}")
    if status != "ok":
        _fail(f"run {rid} {status}: {res.get('error')}", 1)


def main():
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
