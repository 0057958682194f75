"""The `dnfa` command: parses flags, calls the library, maps errors to exit codes
(0 ok, 1 a failed or diverged run, 2 bad input). Kept thin on purpose."""
from __future__ import annotations

import contextlib
import gc
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

# A command allocates millions of small objects (imports, pytrees, the programs it reads) and
# almost no reference cycles: CPython's youngest-generation collection every 700 allocations
# cost 0.13-0.17 s of a warm quickstart's 1.8 s (interleaved runs, README "Start-up"). The
# `dnfa` process collects 100x less often; refcounting frees everything else as before.
gc.set_threshold(100_000, 50, 100)

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, statnames
from .config import MAX_RUNS, DnfaInputError


def _plain_usage_names() -> None:
    """typer >= 0.2x prints a required argument as {CONFIG} in the usage line and follows
    its name with the Python type (`FILE <list[Path]>`) in the arguments list; show CONFIG
    and FILE... alone, the way click and man pages do (options already show their metavar
    alone)."""
    try:
        from typer.core import TyperArgument

        def name(self):
            n = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return n + ("..." if self.nargs != 1 else "")

        def listed_name(self):
            return self.display_name_raw + ("..." if self.nargs != 1 else "")

        if hasattr(TyperArgument, "_usage_display_name"):
            TyperArgument._usage_display_name = name
        if hasattr(TyperArgument, "_rich_display_name") and hasattr(TyperArgument, "display_type_rich"):
            TyperArgument._rich_display_name = listed_name
            TyperArgument.display_type_rich = lambda self, ctx: None
    except ImportError:  # pragma: no cover - older typer prints plain names already
        pass


_plain_usage_names()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train MLPs and measure the Deep Neural Feature Ansatz and its tight-frame reformulation.",
)
_PIPE = {"stop": True}  # a closed stdout ends report, ls, compare (exit 0); train and sweep go on


def _silence(stream) -> None:
    """Point the file descriptor of a closed pipe at /dev/null: later writes, the
    interpreter's last flush included, vanish instead of raising."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture output)
        pass


def _stdout_closed():
    """`dnfa report ID | head -1`: the reader has what it wanted; stop quietly with exit 0
    (rich's handler and click's EPIPE handling would exit 1)."""
    _silence(sys.stdout)
    raise SystemExit(0)


class _Console(Console):
    def __init__(self, **kw):
        """Markup off: what dnfa prints is user text (paths, names, keys, values) and none
        of it is rich markup, so `--runs-dir 'runs[old]'` prints as written and '[/]'
        cannot crash a print."""
        super().__init__(markup=False, **kw)

    def on_broken_pipe(self) -> None:
        """A closed stdout or stderr silences this console. It ends the command only where
        the output is all it does (report, ls, compare read stdout's reader gone as "done");
        a training or a sweep (`dnfa train cfg 2>&1 | head -1`) finishes and records its
        real status and exit code."""
        self.quiet = True
        _silence(self.file)
        if _PIPE["stop"] and not self.stderr:
            raise SystemExit(0)


def _emit(text: str) -> None:
    """Rows for a pipe (json, csv), written so that a closed pipe ends in exit 0."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()


# piped output is read later, often in a wide editor: do not squeeze tables into 80 columns
out = _Console(highlight=False, soft_wrap=True)
if not out.is_terminal and "COLUMNS" not in __import__("os").environ:
    out = _Console(highlight=False, soft_wrap=True, width=160)
err = _Console(stderr=True, highlight=False, soft_wrap=True)

RunsDir = Annotated[Optional[Path], typer.Option("--runs-dir", metavar="DIR", help="Run directory root (default: $DNFA_RUNS_DIR or runs/).")]


def _version(value: bool):
    if value:
        print(f"dnfa {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """Train MLPs and measure the Deep Neural Feature Ansatz and its tight-frame reformulation."""


def _fail(msg: str, code: int = 2):
    err.print(f"error: {msg}", markup=False)
    raise typer.Exit(code)


def _checks_pass(cfg, root: Path) -> bool:
    """The checks of a run's config that need no data and no JAX pass (engine.train_one makes
    them again, and reports a failure with the file's name): worth loading its programs."""
    from . import rules

    try:
        rules.precheck(cfg)
        rules.check_source(cfg, root)
    except DnfaInputError:
        return False
    return True


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


class _RunProgress:
    """A run's progress on stderr, from its first second: the phase it is in (preparing
    data, compiling, training step s/S, measuring checkpoint k/K) and an ETA from the time
    both phases have taken (progress.Progress). In a terminal a live line, which rich
    redraws on its own; otherwise a plain line as the first measuring and training start
    (they compile) and per measured checkpoint, and the phase again whenever TICK seconds
    passed without a line - from a ticker thread, so also inside one long call such as a
    compile. A closed stderr silences the lines (the console's broken-pipe handling); the
    run goes on."""

    TICK = 5.0  # seconds without a line after which the plain output says the phase again

    def __init__(self):
        import threading

        self.live = err.is_terminal
        self.prog = None
        self.t0 = self.last_line = time.perf_counter()
        self.what = "starting"
        self.stopped = threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True, name="dnfa-progress-ticker")

    def __enter__(self):
        if not self.live:
            self.ticker.start()
        return self

    def _start(self) -> None:
        """The live line, from the first phase on (after the line printed before it)."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.prog = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(),
                             TextColumn("eta {task.fields[eta]}", markup=False), console=err, transient=True)
        self.prog.__enter__()
        self.task = self.prog.add_task(self.what, total=1.0, eta="-")

    def __exit__(self, *exc):
        self.stopped.set()
        if self.ticker.is_alive():
            self.ticker.join(1.0)  # no phase line after the run's own output
        if self.prog is not None:
            self.prog.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.last_line = time.perf_counter()
        try:
            err.print(f"[{_clock(self.last_line - self.t0)}] {text}", markup=False, highlight=False)
        except Exception:  # noqa: BLE001 - a progress line is never worth the run
            pass

    def _tick(self) -> None:
        while not self.stopped.wait(0.25):
            if time.perf_counter() - self.last_line >= self.TICK:
                self._say(self.what)

    def phase(self, what: str, say: bool = False, done: float | None = None, eta: str = "-") -> None:
        """Now doing `what`; `say`: a plain line at once (the first measuring and training,
        which compile). Preparing the data is not said at once: bad data stops the run
        there with its one error line; the ticker says it if it takes long."""
        changed, self.what = what != self.what, what
        if self.live:
            if self.prog is None:
                self._start()
            self.prog.update(self.task, description=what, eta=eta, **({"completed": done} if done is not None else {}))
        elif say and changed:
            self._say(what)

    def __call__(self, p) -> None:
        first = p.checkpoint == 1 if p.phase == "measuring" else not p.train_calls
        what = (f"measuring checkpoint {p.checkpoint}/{p.checkpoints}" if p.phase == "measuring"
                else f"training step {p.step}/{p.total}") + (" (compiling)" if first else "")
        line = not self.live and p.phase == "training" and p.checkpoint_seconds \
            and p.checkpoint == len(p.checkpoint_seconds) and getattr(self, "_said", None) != p.checkpoint
        eta = p.eta() if self.live or line else None  # a fit per report: only where it is shown
        eta_s = "-" if eta is None else _clock(eta)
        done = p.elapsed / (p.elapsed + eta) if eta is not None and p.elapsed + eta > 0 else 0.0
        if line:
            self._said = p.checkpoint  # one plain line per measured checkpoint (the last of held ones)
            self._say(f"checkpoint {p.checkpoint}/{p.checkpoints} measured at step {p.measured}/{p.total}; eta {eta_s}")
        self.phase(what, say=first, done=done, eta=eta_s)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="YAML config file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set model.width=256 (repeatable).")] = None,
    runs_dir: RunsDir = None,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if this exact run already finished ok.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", metavar="N", min=1, help="Threads XLA:CPU computes with; the last digits depend on it (default: PJRT_NPROC where set, else 1 for a run as small as the quickstart, as a sweep's worker has, else every core).")] = None,
):
    """Train one run and measure the ansatz at its checkpoints."""
    from . import config as cfgmod
    from . import rules, runs, sweep

    _PIPE["stop"] = False
    try:
        cf = cfgmod.load_config(config, set_)
        root = runs.check_root(runs.runs_root(runs_dir))
        if cf.sweep:
            err.print(f"note: {config} has a sweep: block; dnfa train runs its base config only (use dnfa sweep for all)")
        # decided before JAX is loaded (on a CPU-only machine sweep.backend() asks it nothing,
        # else it starts its backends); XLA's own setting wins, and a GPU's numbers do not
        # depend on it
        if threads is None and rules.xla_threads_env() is None and sweep.backend() == "cpu":
            threads = rules.train_threads(cf.base, sweep.default_workers())
        if (force or runs.result_status(root, cf.base.run_id) != "ok") and _checks_pass(cf.base, root):
            # JAX first, then the programs the last run of this config called start loading
            # (threads) while the rest of dnfa imports: 0.1 s of a warm quickstart run
            from . import programs

            programs.start_backend(threads)
            programs.prefetch(cfgmod.program_signature([cf.base]))
        from . import engine

        with engine.prompt_interrupt(), _RunProgress() as show:  # Ctrl-C: within 5 s, even in a compile
            done = engine.train_one(cf.base, root, force=force, source=str(config), on_progress=show, on_phase=show.phase,
                                    on_start=lambda rid, d: out.print(f"run {rid} -> {d}", markup=False), threads=threads)
    except DnfaInputError as e:
        _fail(str(e))
    except runs.RunBusy as e:
        _fail(str(e), 1)
    except OSError as e:  # the run directory could not be started (disk full, no permission)
        if runs.io_failure(e) is None:
            raise
        _fail(runs.io_failure(e), 1)
    rid, res = done.run_id, done.result
    if done.why:
        out.print(f"run {rid} {done.why}: {done.dir}")
        return out.print(layer_summary_table(res))
    status = res["status"]
    secs = res["seconds"].get("total")
    out.print(layer_summary_table(res, title=f"{rid}: {status}" + (f" in {secs:.1f} s" if secs else "")))
    last = res["checkpoints"][-1] if res["checkpoints"] else None
    if last:
        acc = f", test_acc {last['test_acc']:.4f}" if last.get("test_acc") is not None else ""
        out.print(f"step {last['step']}: train_loss {_fmt(last['train_loss'], 6)}, test_loss {_fmt(last['test_loss'], 6)}{acc}")
    if status != "ok":
        _fail(f"run {rid} {status}: {res.get('error')}", 1)


@app.command()
def sweep(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Config files; each one's sweep: block is expanded.")],
    workers: Annotated[Optional[int], typer.Option("--workers", metavar="N", min=1, help="Local worker processes (default: the usable cores).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", metavar="ADDRESS", help="Address of a running Dask scheduler, e.g. tcp://HOST:8786.")] = None,
    scheduler_timeout: Annotated[float, typer.Option("--scheduler-timeout", metavar="SECONDS", min=1, max=86_400, help="Give up on a Dask scheduler that has not answered by then.")] = 30.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs, their ids and which are done; run nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Rerun every run, finished or not.")] = False,
    rerun_failed: Annotated[bool, typer.Option("--rerun-failed", help="Also rerun runs that failed or diverged.")] = False,
    seed_batch: Annotated[str, typer.Option("--seed-batch", metavar="auto|on|off", help="Train runs differing only in seed as one vmapped program: auto (when a step is cheap), on, off.")] = "auto",
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a key in every file, e.g. --set train.epochs=5.")] = None,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", metavar="KEY=V1,V2", help="Sweep a key over these values, e.g. --grid model.width=64,256 (repeatable; adds to a file's grid).")] = None,
    max_runs: Annotated[int, typer.Option("--max-runs", metavar="N", min=1, help="Refuse a sweep of more runs than this.")] = MAX_RUNS,
    finish_running: Annotated[bool, typer.Option("--finish-running", help="On Ctrl-C / SIGTERM, let the runs in flight finish (a second signal stops them).")] = False,
    name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Name the sweep: its id becomes sweep-NAME-<hash> (default: the files' sweep.name, else the runs' names).")] = None,
    runs_dir: RunsDir = None,
):
    """Run every config of one or more files; skip finished runs; resume after interruption."""
    _PIPE["stop"] = False
    from . import runs
    from . import sweep as sw

    if seed_batch not in ("auto", "on", "off"):
        _fail(f"--seed-batch {seed_batch!r}: must be auto, on or off")
    try:
        prep = sw.prepare(files, set_, grid, max_runs=max_runs, runs_dir=runs_dir, write=not dry_run, force=force,
                          rerun_failed=rerun_failed, name=name)
    except DnfaInputError as e:
        _fail(str(e))
    plan, n = prep.plan, len(prep.plan.configs)
    for note in plan.notes:
        err.print(f"note: {note}", markup=False)
    out.print(f"sweep {plan.sweep_id}: {_count(n, 'run')}, {n - len(prep.todo)} done, {len(prep.todo)} to run"
              + (f"; varying {', '.join(plan.varied)}" if plan.varied else ""))
    if dry_run:
        return _dry_run_table(prep, seed_batch, workers)
    opts = sw.Options(workers, scheduler, scheduler_timeout, force, rerun_failed, seed_batch, finish_running)
    again = sw.resume_command(files, runs_dir=runs_dir, overrides=set_, grid=grid, max_runs=max_runs, scheduler=scheduler,
                              name=name)
    try:
        pad = " " * len(f"[{len(prep.todo)}/{len(prep.todo)}]")  # the run id under those of the [k/n] lines
        s = sw.run(prep, opts, on_done=_sweep_line, say=lambda line: err.print(line, markup=False),
                   on_start=lambda rid: err.print(f"{pad} started   {rid}", markup=False, highlight=False))
    except DnfaInputError as e:
        _fail(str(e))
    except OSError as e:  # the sweep record cannot be written (disk full, no permission)
        if runs.io_failure(e) is None:
            raise
        _fail(f"{runs.io_failure(e)}; the runs that finished are kept; resume with: {again}", 1)
    except sw.SchedulerLost as e:
        _fail(f"{e}; the runs that finished are kept (record: {runs.sweep_file(prep.root, plan.sweep_id)}); "
              f"resume with: {again}", 1)
    if s.interrupted is not None:
        err.print(f"{s.signal_name}: stopped after {s.seconds:.1f} s; {s.finished} of {_count(s.runs, 'run')} finished "
                  f"({s.finished_now} this time); resume with: {again}", markup=False)
        raise typer.Exit(128 + s.interrupted)
    out.print(f"sweep {s.sweep_id}: ok {s.counts['ok']}, diverged {s.counts['diverged']}, failed {s.counts['failed']}; "
              f"ran {s.ran}, skipped {s.skipped} (already done)"
              + (f", {s.elsewhere} finished by another process" if s.elsewhere else "") + f" in {s.seconds:.1f} s")
    out.print(f"record: {s.record}")
    out.print(f"report: {sw.report_command(s.sweep_id, runs_dir)}")
    if s.counts["failed"]:
        raise typer.Exit(1)


def _sweep_line(r: dict, k: int, n: int, eta: float) -> None:
    """One line on stderr as each run of a sweep finishes."""
    secs = f"{r['seconds']:6.1f} s" if r.get("seconds") is not None else "      -"
    extra = (f"  pearson_a05 {_fmt(r.get('pearson_a05'))}  tightness_range {_fmt(r.get('tightness_range'))}"
             if r["status"] in ("ok", "diverged") else f"  {r.get('error') or ''}")
    tag = r["status"] if r.get("ran") else f"{r['status']}*"
    err.print(f"[{k}/{n}] {tag:9} {r['run_id']}  {secs}{extra}  (eta {_clock(eta)})", markup=False, highlight=False)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _dry_run_table(prep, seed_batch, workers, limit: int = 200):
    from . import report as rp
    from . import sweep as sw

    plan, todo, status = prep.plan, prep.todo, prep.status
    t = Table()
    t.add_column("run id")
    for k in plan.varied:
        t.add_column(k)
    t.add_column("status")
    todo_ids = {c.run_id for c in todo}
    for c in plan.configs[:limit]:
        st = status[c.run_id]
        label = ("to rerun (" + st + ")" if st else "to run") if c.run_id in todo_ids else f"done ({st})"
        t.add_row(c.run_id, *[rp.fmt_config(plan.params[c.run_id], k) for k in plan.varied], label)
    out.print(t)
    if len(plan.configs) > limit:
        out.print(f"... and {len(plan.configs) - limit} more runs (the first {limit} shown)")
    groups = sw.group_runs(todo, seed_batch, workers or sw.default_workers())
    batched = [g for g in groups if len(g) > 1]
    if batched:
        out.print(f"seed batching: {_count(sum(map(len, batched)), 'run')} in {_count(len(batched), 'vmapped program')}")


def _rich_table(title, header, rows) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


# `dnfa report --help` ends with what its per-run table shows (the registry's meanings)
_HEADLINE_HELP = "\b\nThe statistics of a run's table (every statistic: dnfa stats):\n" + "\n".join(
    statnames.lines(statnames.shown("headline")))


@app.command(epilog=_HEADLINE_HELP)
def report(
    ident: Annotated[Optional[str], typer.Argument(metavar="ID", help="A run id, a sweep id, or a unique prefix of one (with --where: a sweep, or none for every run).")] = None,
    where: Where = None,
    format: Annotated[str, typer.Option("--format", metavar="table|json|csv", help="table (terminal), json or csv (rows to stdout).")] = "table",
    html_: Annotated[bool, typer.Option("--html", help="Also write one self-contained HTML page; its path is printed.")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Where figures and HTML go (default: runs/<id>/report/, runs/sweeps/<id>/report/ for a sweep, runs/where/<hash>/report/ for --where).")] = None,
    all_checkpoints: Annotated[bool, typer.Option("--all-checkpoints", help="Every checkpoint, not just initialisation and the end.")] = False,
    include_readout: Annotated[bool, typer.Option("--include-readout", help="Also show the trivial read-out layer in tables and figures (json and csv always have it).")] = False,
    runs_dir: RunsDir = None,
):
    """Tables, figures and an HTML page for a run, a whole sweep, or the runs --where
    selects (reads files, never trains)."""
    from . import frame
    from . import report as rp
    from . import runs

    _check_output(format, out_dir)
    if ident is None and not where:
        _fail("report what? give a run or sweep ID, or --where to report the runs it selects")
    opts = dict(all_checkpoints=all_checkpoints, include_readout=include_readout)
    try:
        root = runs.check_root(runs.runs_root(runs_dir), write=False)
        kind, ident = rp.resolve(root, ident) if ident is not None else ("sweep", None)
        if where and kind == "run":
            raise DnfaInputError(f"--where selects runs of a sweep or of the whole runs directory; {ident} is one run")
        if where:
            rep = frame.selection_report(root, ident, where, **opts)
        elif kind == "sweep":
            rep = rp.sweep_id_report(root, ident, **opts)
        else:
            v = rp.load_run(root, ident)
            if v.status == "corrupt":
                _fail(f"run {ident} is corrupt: {v.error} ({v.dir.absolute()})", 1)
            rep = rp.run_report(v, **opts)
    except DnfaInputError as e:
        _fail(str(e))
    for note in rep.notes:
        err.print(note, markup=False)
    dest = out_dir or rep.dest
    _writable(dest, out_dir is not None)
    if format == "json":
        _emit(rp.to_json(rep.doc) + "\n")
    elif format == "csv":
        _emit(rp.to_csv(rep.rows))
    else:
        for line in rep.intro:
            console_print(line)
        for t in rep.tables:
            if len(t[2]) > 200:
                console_print(f"{t[0]}: {len(t[2])} rows, see --format csv or --html")
                continue
            console_print(_rich_table(*t))
        if rep.per_run_hint:
            console_print("per-run rows: --format csv / json, or --html")
    with _writes():
        figs = rep.figures(dest)
        if format == "table":
            console_print(f"figures: {dest.absolute()}/ ({', '.join(f.name for f, _ in figs)})")
        if html_:
            page = rp.write_html(dest / "report.html", rep.title, rep.intro, rep.html_tables, figs)
            (out if format == "table" else err).print(f"html: {page.absolute()}", markup=False)


@contextlib.contextmanager
def _writes():
    """Figures and pages being written: a full disk or a denied write ends the command in
    one line naming the file (exit 2, as a place that cannot be written is for _writable)."""
    try:
        yield
    except OSError as e:
        _fail(f"cannot write {e.filename or 'a file'}: {e.strerror or e}")


def _writable(dest: Path, flag: bool) -> None:
    """Figures go to `dest`: make it now, before anything is printed, or say in one line
    why it cannot be (a read-only runs dir, --out under a file)."""
    import os

    try:
        dest.mkdir(parents=True, exist_ok=True)
        if not os.access(dest, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        hint = "" if flag else "; choose another place with --out DIR"
        _fail(f"cannot write figures to {dest.absolute()}: {e.strerror or e}{hint}")


def _check_output(format: str, out_dir: Path | None) -> None:
    if format not in ("table", "json", "csv"):
        _fail(f"--format {format!r}: must be table, json or csv")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        _fail(f"--out {out_dir}: exists and is not a directory (figures and HTML go into a directory)")


def console_print(x):
    if isinstance(x, str):
        out.print(x, markup=False)
    else:
        out.print(x)


Where = Annotated[Optional[list[str]], typer.Option(
    "--where", metavar="KEY OP VALUE",
    help="Only runs for which this holds (repeatable: all must): OP one of = != < <= > >=, KEY a config key "
         "(train.lr=1e-3), an end loss or accuracy (test_acc>0.9), or a layer's end statistic (pearson_a1@2>0.8; the statistics: dnfa stats).")]


@app.command("ls")
def ls_(
    sweep_id: Annotated[Optional[str], typer.Option("--sweep", metavar="ID", help="Only the runs of this sweep (id or unique prefix).")] = None,
    where: Where = None,
    status: Annotated[Optional[list[str]], typer.Option("--status", metavar="STATUS", help="Only runs with this status: ok, diverged, failed, corrupt, running, interrupted (repeatable).")] = None,
    sort: Annotated[Optional[str], typer.Option("--sort", metavar="KEY", help="Sort by a column or config key (-KEY: descending); default: newest first.")] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", metavar="KEY,...", help="These columns, in this order (any config key, run-level key or STAT@LAYER; the statistics: dnfa stats).")] = None,
    format: Annotated[str, typer.Option("--format", metavar="table|csv|json", help="table (terminal), or csv / json rows (every column unless --columns).")] = "table",
    ids: Annotated[bool, typer.Option("--ids", help="Print the run ids alone, one a line (for pipes).")] = False,
    size: Annotated[bool, typer.Option("--size", help="A size column: the disk each run's directory takes (also for --sort size, --where size>1e8).")] = False,
    runs_dir: RunsDir = None,
):
    """The runs, newest first: status, the config keys that vary among them, and the
    headline numbers at the end."""
    from . import frame
    from . import report as rp
    from . import runs

    if format not in ("table", "json", "csv"):
        _fail(f"--format {format!r}: must be table, json or csv")
    try:
        root = runs.check_root(runs.runs_root(runs_dir), write=False)
        named = [c.strip() for c in (columns or "").split(",")] + [(sort or "").lstrip("-")]
        size = size or "size" in named or any(w.strip().startswith("size") for w in where or [])
        rows = frame.list_runs(root, sweep_id, where, status, sort, size=size)
        cols = frame.ls_columns(rows, [c.strip() for c in columns.split(",") if c.strip()] if columns else None,
                                every=format != "table")
    except DnfaInputError as e:
        _fail(str(e))
    if ids:
        _emit("".join(r["run_id"] + "\n" for r in rows))
    elif format == "json":
        _emit(rp.to_json([{c: r.get(c) for c in cols} for r in rows]) + "\n")
    elif format == "csv":
        _emit(rp.to_csv([{c: r.get(c) for c in cols} for r in rows]))
    else:
        title = (f"{len(rows)} run{'' if len(rows) == 1 else 's'} in {root.absolute()}" + (f" (sweep {sweep_id})" if sweep_id else "")
                 + (f" where {' and '.join(where)}" if where else ""))
        _ls_table(rows, cols, title, fit=not columns)
    for r in rows:
        if r["status"] == "corrupt":
            err.print(f"corrupt: {r['run_id']}: {r['error']}", markup=False)


@app.command("stats")
def stats_(
    prefix: Annotated[Optional[str], typer.Argument(metavar="PREFIX", help="Only the statistics whose key starts with this (delta_, tightness, published).")] = None,
):
    """Every statistic dnfa computes, with its one-line meaning: the keys of result.json's
    layer rows, of report and compare, and of ls --where / --columns as STAT@LAYER
    (pearson_a1@2). docs/SCIENCE.md defines each in full."""
    try:
        text = statnames.listing(prefix or "")
    except DnfaInputError as e:
        _fail(str(e))
    _emit("\n".join(text) + "\n")


def _ls_table(rows: list[dict], cols: list[str], title: str, fit: bool) -> None:
    """Every column whole: with `fit`, the config keys that do not fit the width are left
    out (the varying ones named below the table); the others are never squeezed, and on a
    narrow terminal the lines run long instead."""
    from . import frame
    from . import report as rp

    from .cleanup import human_bytes

    def cell(r, c):
        if c == "created":
            return (r.get(c) or "-").replace("+00:00", "Z")
        if c == "size" and r.get(c) is not None:
            return human_bytes(r[c])
        return rp.fmt_config(r, c) if frame.is_config_key(c) else rp.fmt(r.get(c))

    width = {c: max([len(c)] + [len(cell(r, c)) for r in rows]) + 3 for c in cols}  # cells, padding, border
    hidden = []
    if fit:
        keys = [c for c in cols if frame.is_config_key(c)]
        room = out.width - 1 - sum(width[c] for c in cols if c not in keys)
        for k in keys:
            if width[k] <= room:
                room -= width[k]
            else:
                hidden.append(k)
        cols = [c for c in cols if c not in hidden]
    vary = set(frame.varying_keys(rows))
    hidden = [k for k in hidden if k in vary]
    t = Table(title=title, title_justify="left", caption_justify="left",
              caption=(f"{len(hidden)} more varying key{'' if len(hidden) == 1 else 's'} not shown: {', '.join(hidden)} "
                       "(narrow the list with --sweep or --where, or choose --columns)") if hidden else None)
    for c in cols:
        t.add_column(c, justify="left" if c in frame.LS_HEAD else "right", no_wrap=True,
                     min_width=width[c] - 3 if c == "run_id" else None)  # an id is never cut
    for r in rows:
        t.add_row(*[cell(r, c) for c in cols])
    natural = 1 + sum(width[c] for c in cols)
    con = out if natural <= out.width else _Console(highlight=False, soft_wrap=True, width=natural)
    con.print(t if rows else t.title)


@app.command()
def compare(
    idents: Annotated[list[str], typer.Argument(metavar="ID", help="Run ids, or sweep ids for their runs (or unique prefixes): two runs or more.")],
    format: Annotated[str, typer.Option("--format", metavar="table|json|csv", help="table (terminal), json or csv (rows to stdout).")] = "table",
    out_dir: Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Where the figure goes (default: runs/compare/<ids>/).")] = None,
    include_readout: Annotated[bool, typer.Option("--include-readout", help="Also show the trivial read-out layer.")] = False,
    runs_dir: RunsDir = None,
):
    """Runs side by side: the config keys that differ, the headline statistics at the end,
    and their curves during training on one figure."""
    import hashlib

    from . import report as rp
    from . import runs

    _check_output(format, out_dir)
    try:
        root = runs.check_root(runs.runs_root(runs_dir), write=False)
        views = rp.compare_views(root, idents)
    except DnfaInputError as e:
        _fail(str(e))
    bad = [v for v in views if v.status in ("corrupt", "missing")]
    if bad:
        _fail(f"run {bad[0].run_id} is {bad[0].status}" + (f": {bad[0].error}" if bad[0].error else ""), 1)
    tag = hashlib.sha256(" ".join(v.run_id for v in views).encode()).hexdigest()[:10]
    dest = out_dir or root / "compare" / f"{views[0].run_id}+{len(views) - 1}-{tag}"
    _writable(dest, out_dir is not None)
    if format == "json":
        _emit(rp.to_json(rp.compare_rows(views, include_readout=True)) + "\n")
    elif format == "csv":
        _emit(rp.to_csv(rp.compare_rows(views, include_readout=True)))
    else:
        for t in rp.compare_tables(views, include_readout):
            console_print(_rich_table(*t))
    with _writes():
        fig = rp.fig_compare(views, dest / "curves.png", include_readout)
    (out if format == "table" else err).print(f"figure: {fig.absolute()}", markup=False)


@app.command()
def rm(
    idents: Annotated[list[str], typer.Argument(metavar="ID", help="Run ids, sweep ids (the sweep's record and its runs), or unique prefixes of either.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    runs_dir: RunsDir = None,
):
    """Remove runs, or sweeps with their runs; asks first (unless --yes), never removes
    a run being trained, and says how much disk it freed."""
    from . import cleanup, runs

    try:
        root = runs.check_root(runs.runs_root(runs_dir))
        plan = cleanup.plan_removal(root, idents)
    except DnfaInputError as e:
        _fail(str(e))
    if plan.running:
        _fail(f"run {plan.running[0]} is being trained now" + (f" (and {len(plan.running) - 1} more)" if len(plan.running) > 1 else "")
              + "; nothing removed (stop it first, or remove the others)", 1)
    for line in _removal_lines(plan):
        out.print(line, markup=False)
    if not yes and not _confirm(f"remove {_removal_what(plan)}, {cleanup.human_bytes(plan.bytes)}? [y/N] "):
        _fail("not confirmed: nothing removed", 1)
    done = cleanup.remove(plan)
    out.print(f"removed {_removal_what(done)}: freed {cleanup.human_bytes(done.freed)}", markup=False)
    if done.busy:
        _fail(f"kept {_count(len(done.busy), 'run')} that began training meanwhile: {', '.join(done.busy)}", 1)


def _count(n: int, noun: str) -> str:
    """1 run, 2 runs."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _removal_what(r) -> str:
    parts = ([_count(len(r.sweep_ids), "sweep")] if r.sweep_ids else []) + [_count(len(r.run_ids), "run")]
    return " and ".join(parts)


def _removal_lines(plan) -> list[str]:
    from .cleanup import human_bytes

    in_sweeps = {rid for m in plan.members.values() for rid in m}
    lines = [f"sweep {sid}: its record and {_count(len(m), 'run')} "
             f"({human_bytes(plan.sizes[sid] + sum(plan.sizes[r] for r in m))})" for sid, m in plan.members.items()]
    lines += [f"run {rid} ({human_bytes(plan.sizes[rid])})" for rid in plan.run_ids if rid not in in_sweeps]
    lines += [f"note: {n} of these runs {'is' if n == 1 else 'are'} also in sweep {sid} "
              "(its record stays; dnfa sweep would rerun them)" for sid, n in plan.shared.items()]
    return lines


def _confirm(question: str) -> bool:
    """Ask on stderr, read one line from stdin: y or yes (any case) confirms; anything
    else, or no input at all, does not."""
    err.print(question, end="", markup=False)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    if not answer.endswith("\n"):
        err.print("")
    return answer.strip().lower() in ("y", "yes")


def main():
    """Entry point: click's usage errors (a bad flag value, an unknown option) become the
    same one line and exit 2 as every other bad input."""
    try:  # typer >= 0.2x vendors its own click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer uses click itself
        import click.exceptions as cx

    try:
        rv = app(standalone_mode=False)
    except getattr(cx, "NoArgsIsHelpError", ()) as e:  # click >= 8.2 only
        print(e.ctx.get_help() if e.ctx else e.format_message())
        sys.exit(2)
    except cx.UsageError as e:
        cmd = f" (see {e.ctx.command_path} --help)" if e.ctx else ""
        err.print(f"error: {e.format_message()}{cmd}", markup=False)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


def entry():
    """The `dnfa` command: main(), then, once JAX is loaded, leave without the interpreter's
    teardown (freeing XLA's compiled programs, thread pools and modules took 0.4-0.5 s at
    every exit, a fifth of a small run). Everything dnfa writes is closed by then; the
    standard streams are flushed and the atexit functions run as at any exit."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    code = 0 if code is None else code
    if "jax" in sys.modules:
        import atexit
        import os

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
