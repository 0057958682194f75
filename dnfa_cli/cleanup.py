"""`dnfa rm`: what removing some runs and sweeps would free (`plan_removal`, for the
confirmation), and the removal itself (`remove`), each run under its lock so that a run
being trained is never removed."""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import runs
from .config import DnfaInputError


@dataclass
class Removal:
    """What `dnfa rm` would remove: runs (with their directories' bytes), sweep records
    (with their report folders), the runs being trained now (which block the removal)
    and, per other sweep, the runs to go that it lists too."""

    root: Path
    run_ids: list[str] = field(default_factory=list)
    sweep_ids: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # run or sweep id -> bytes
    running: list[str] = field(default_factory=list)
    shared: dict[str, int] = field(default_factory=dict)  # another sweep -> how many of its runs go
    members: dict[str, list[str]] = field(default_factory=dict)  # sweep id -> its runs that go

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())


def _sweep_runs(root: Path, sweep_id: str) -> list[str] | None:
    """The run ids a sweep record lists; None if it cannot be read (the record still goes)."""

    try:
        return [r["run_id"] for r in runs.load_sweep(root, sweep_id)["runs"]]
    except DnfaInputError:
        return None


def plan_removal(root: Path, idents: list[str]) -> Removal:
    """Resolve each id (a run, a sweep with its runs, or a unique prefix of either) and
    size what would go; DnfaInputError for an id that names nothing."""
    from .report import resolve

    rm = Removal(Path(root))
    for ident in idents:
        kind, full = resolve(root, ident)
        if kind == "sweep" and full not in rm.sweep_ids:
            rm.sweep_ids.append(full)
            rec = runs.sweep_file(root, full)
            rm.sizes[full] = runs.disk_usage(rec) + runs.disk_usage(rec.with_suffix(""))
            members = rm.members[full] = [r for r in _sweep_runs(root, full) or [] if runs.run_dir(root, r).is_dir()]
        else:
            members = [full] if kind == "run" else []
        for rid in members:
            if rid not in rm.run_ids and runs.run_dir(root, rid).is_dir():
                rm.run_ids.append(rid)
                rm.sizes[rid] = runs.disk_usage(runs.run_dir(root, rid))
    rm.running = [rid for rid in rm.run_ids if runs.is_locked(root, rid)]
    going = set(rm.run_ids)
    for other in runs.list_sweep_ids(root):
        if other not in rm.sweep_ids:
            n = len(going & set(_sweep_runs(root, other) or []))
            if n:
                rm.shared[other] = n
    return rm


def _remove_run(root: Path, run_id: str) -> bool:
    """Remove a run's directory under its lock (False: a process trains it now). result.json
    goes first: stopped half-way, the rest reads as an unfinished run, never as a finished
    one with files missing."""
    with runs.run_lock(root, run_id, blocking=False) as got:
        if not got:
            return False
        d = runs.check_inside(root, run_id)
        with contextlib.suppress(FileNotFoundError):
            (d / runs.RESULT).unlink()
        shutil.rmtree(d, ignore_errors=True)
        return not d.exists()


@dataclass
class Removed:
    run_ids: list[str] = field(default_factory=list)
    sweep_ids: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # began training after the plan: kept
    freed: int = 0  # bytes


def remove(rm: Removal) -> Removed:
    """Remove what `rm` lists (runs that began training meanwhile are kept and named)."""

    done = Removed()
    for rid in rm.run_ids:
        if _remove_run(rm.root, rid):
            done.run_ids.append(rid)
            done.freed += rm.sizes.get(rid, 0)
        else:
            done.busy.append(rid)
    for sid in rm.sweep_ids:
        rec = runs.sweep_file(rm.root, sid)
        with contextlib.suppress(FileNotFoundError):
            rec.unlink()
        shutil.rmtree(rec.with_suffix(""), ignore_errors=True)
        done.sweep_ids.append(sid)
        done.freed += rm.sizes.get(sid, 0)
    return done


def human_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as df -H and most file managers)."""
    if n < 1000:
        return f"{n} B"
    v = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        v /= 1000
        if round(v, 1) < 1000 or unit == "TB":
            return f"{v:.1f} {unit}"
