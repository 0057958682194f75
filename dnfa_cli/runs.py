"""The run directory contract of DESIGN.md: atomic writes, per-run locks, listing and
loading, and `execute`, which turns a validated config into a finished run directory.

    runs/<run_id>/config.yaml  env.json  metrics.jsonl  result.json (last, atomic)
    runs/<run_id>/checkpoints/step_<NNNNNNN>.npz      W1, b1, ..., WL, bL
    runs/<run_id>/checkpoints/matrices_<NNNNNNN>.npz  nfm_i, agop_i, agop_half_i, pgop_i (float32;
                                                      which checkpoints: metrics.save_matrices)
    runs/sweeps/<sweep_id>.json
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from .config import SCHEMA, Config, DnfaInputError, config_to_yaml

RESULT = "result.json"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def runs_root(runs_dir: str | Path | None) -> Path:
    return Path(runs_dir or os.environ.get("DNFA_RUNS_DIR") or "runs")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- atomic io
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide files on shared runs/


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see the
    old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # the rename itself is durable only once the directory is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps_json(obj) -> str:
    return json.dumps(obj, indent=1, allow_nan=False)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (dumps_json(obj) + "\n").encode())


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- locks
@contextlib.contextmanager
def run_lock(root: Path, run_id: str, blocking: bool = True):
    """An exclusive flock on runs/.locks/<run_id>.lock for the duration; released by the
    kernel if the process dies (SIGKILL included), so a lock never goes stale. Yields False
    without waiting if `blocking` is off and another process holds it."""
    d = Path(root) / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{run_id}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_locked(root: Path, run_id: str) -> bool:
    """Whether a process is training this run now; creates nothing (for read-only commands)."""
    p = Path(root) / ".locks" / f"{run_id}.lock"
    if not p.exists():
        return False
    with open(p) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------- env
def env_info() -> dict:
    import jax

    from . import __version__

    def ver(mod):
        try:
            from importlib.metadata import version

            return version(mod)
        except Exception:  # noqa: BLE001
            return None

    src = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "dnfa": __version__,
        "python": sys.version.split()[0],
        "packages": {p: ver(p) for p in ("jax", "jaxlib", "optax", "numpy", "mnist1d", "pydantic")},
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "time": now_iso(),
    }


# ----------------------------------------------------------------------------- reading
def check_id(ident: str) -> str:
    if not ident or "/" in ident or "\\" in ident or ".." in ident or not ID_RE.match(ident):
        raise DnfaInputError(f"{ident!r} is not a run or sweep id (ids hold letters, digits, '_', '.', '-'; no path separators or '..')")
    return ident


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / check_id(run_id)


def load_result(root: Path, run_id: str) -> dict | None:
    p = run_dir(root, run_id) / RESULT
    if not p.exists():
        return None
    with open(p) as f:
        return json.load(f)


def result_status(root: Path, run_id: str) -> str | None:
    """'ok' | 'diverged' | 'failed' from result.json; None if the run has none yet."""
    try:
        r = load_result(root, run_id)
    except (OSError, json.JSONDecodeError):
        return None
    return r.get("status") if r else None


def read_metrics(d: Path) -> list[dict]:
    """metrics.jsonl, tolerating a final line cut short by a killed process."""
    out = []
    p = Path(d) / "metrics.jsonl"
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def list_run_ids(root: Path) -> list[str]:
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in ("sweeps", ".locks") and (p / "config.yaml").exists())


def list_sweep_ids(root: Path) -> list[str]:
    d = Path(root) / "sweeps"
    return sorted(p.stem for p in d.glob("*.json")) if d.exists() else []


# ----------------------------------------------------------------------------- writing
class RunWriter:
    """Writes one run's directory in the order of the contract."""

    def __init__(self, root: Path, cfg: Config):
        self.cfg = cfg
        self.run_id = cfg.run_id
        self.dir = run_dir(root, self.run_id)

    def start(self, env: dict) -> None:
        """A fresh directory: anything left by an interrupted or failed attempt goes."""
        if self.dir.exists():
            for child in self.dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / "config.yaml", config_to_yaml(self.cfg).encode())
        atomic_write_json(self.dir / "env.json", env)
        (self.dir / "metrics.jsonl").touch()

    def checkpoint(self, rec: dict, params: list) -> None:
        step = rec["step"]
        arrays = {}
        for i, layer in enumerate(params, start=1):
            W = np.asarray(layer["W"])
            arrays[f"W{i}"] = W
            arrays[f"b{i}"] = np.asarray(layer["b"]) if "b" in layer else np.zeros(W.shape[0], W.dtype)
        atomic_savez(self.dir / "checkpoints" / f"step_{step:07d}.npz", arrays)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
            f.flush()

    def matrices(self, step: int, mats: dict) -> None:
        """The layer matrices of a checkpoint, as float32 (metrics.save_matrices says which)."""
        atomic_savez(self.dir / "checkpoints" / f"matrices_{step:07d}.npz",
                     {k: np.asarray(v, np.float32) for k, v in mats.items()})

    def finish(self, outcome, info: dict, created: str) -> dict:
        result = {
            "schema": SCHEMA,
            "run_id": self.run_id,
            "status": outcome.status,
            "error": outcome.error,
            "config": self.cfg.to_dict(),
            "created": created,
            "finished": now_iso(),
            "seconds": outcome.seconds,
            "info": info,
            "checkpoints": outcome.checkpoints,
        }
        atomic_write_json(self.dir / RESULT, result)
        return result


def _data_info(ds) -> dict:
    return {"kind": ds.kind, "d": ds.d, "c": ds.c, "n_train": len(ds.X_train), "n_test": len(ds.X_test)}


def precheck(cfg: Config) -> None:
    """The input checks that need no data: cheap enough for every run of a sweep."""
    from . import data, train

    data.check(cfg)
    n = data.n_train_of(cfg)
    if n:
        train.checkpoint_steps(cfg, train.total_steps(cfg, n))


def prepare(cfg: Config):
    """Everything that can reject the input, done before any directory exists: the data
    (a bad .npz, a batch larger than the data) and the checkpoint schedule."""
    from . import data, train

    ds = data.make_dataset(cfg)
    train.checkpoint_steps(cfg, train.total_steps(cfg, len(ds.X_train)))
    return ds


def execute(cfgs: list[Config], root: Path, datasets=None, *, on_progress=None, env: dict | None = None) -> list[dict]:
    """Train runs that differ only in seed (one run is the usual case) as one program and
    write each run's directory; returns their result dicts. The caller holds the locks.
    An exception inside training is recorded as status `failed`, never raised."""
    from . import train

    datasets = datasets or [prepare(c) for c in cfgs]
    env = env or env_info()
    created = now_iso()
    writers = [RunWriter(root, c) for c in cfgs]
    for w in writers:
        w.start(env)
    try:
        outs = train.train_batched(cfgs, datasets, on_checkpoint=[w.checkpoint for w in writers],
                                   on_matrices=[w.matrices for w in writers], on_progress=on_progress)
    except Exception as e:  # noqa: BLE001 - a broken run is recorded, the sweep goes on
        msg = f"{type(e).__name__}: {e}".splitlines()[0]
        tb = traceback.format_exc()
        outs = [train.Outcome("failed", checkpoints=read_metrics(w.dir), error=msg, traceback=tb) for w in writers]
    for w, o in zip(writers, outs):
        if o.traceback:
            (w.dir / "traceback.txt").write_text(o.traceback)
    results = []
    for w, o, ds in zip(writers, outs, datasets):
        info = {**o.info, "data": _data_info(ds)}
        results.append(w.finish(o, info, created))
    return results
