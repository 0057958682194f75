"""The run directory contract of DESIGN.md: atomic writes, per-run locks, listing,
loading and checking run directories (engine.py is what fills them).

    runs/<run_id>/config.yaml  env.json  metrics.jsonl  result.json (last, atomic)
    runs/<run_id>/checkpoints/step_<NNNNNNN>.npz      W1, b1, ..., WL, bL (which checkpoints:
                                                      metrics.save_weights)
    runs/<run_id>/checkpoints/matrices_<NNNNNNN>.npz  nfm_i, agop_i, agop_half_i, pgop_i (float32;
                                                      which checkpoints: metrics.save_matrices)
    runs/sweeps/<sweep_id>.json
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np

from .config import SCHEMA, Config, DnfaInputError, config_to_yaml

RESULT = "result.json"
# a run id is <name>-<hash>; a sweep's over several files is sweep-<name>+<n>-<hash>
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


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


# the errors of a place that cannot take a file (disk full, file size limit, quota, no
# permission, read-only filesystem, a failing device): not the run's fault, tried again
IO_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EACCES", "EPERM", "EROFS", "EIO")
                      if hasattr(errno, n))


@contextlib.contextmanager
def writing(path: Path):
    """An OSError raised while writing `path` names it: a write to a full disk says only
    "No space left on device", and which file is what the user needs."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def io_failure(e: BaseException) -> str | None:
    """The line that reports an I/O failure (IO_ERRNOS), naming the file; None for any
    other error."""
    if not isinstance(e, OSError) or e.errno not in IO_ERRNOS:
        return None
    return f"I/O error writing {e.filename or '(a file)'}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see the
    old file or the whole new one, never a part. An OSError names `path`."""
    path = Path(path)
    with writing(path):
        _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself is durable only once the directory is synced
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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


# ----------------------------------------------------------------------------- reading
def check_id(ident: str) -> str:
    if not ident or "/" in ident or "\\" in ident or ".." in ident or not ID_RE.match(ident):
        raise DnfaInputError(f"{ident!r} is not a run or sweep id (ids hold letters, digits, '_', '.', '-', '+'; "
                             "no path separators or '..')")
    return ident


def run_dir(root: Path, run_id: str) -> Path:
    return Path(root) / check_id(run_id)


class CorruptRun(Exception):
    """A run directory whose files are not what dnfa writes (truncated, foreign, edited)."""


STATUSES = ("ok", "diverged", "failed")


def _check_result(r) -> None:
    if not isinstance(r, dict):
        raise CorruptRun(f"result.json holds a JSON {type(r).__name__}, not a run's result")
    for key, typ in (("status", str), ("config", dict), ("checkpoints", list), ("seconds", dict)):
        if not isinstance(r.get(key), typ):
            raise CorruptRun(f"result.json has no {key!r}" if key not in r else f"result.json: {key!r} is not a {typ.__name__}")
    if r["status"] not in STATUSES:
        raise CorruptRun(f"result.json: status {r['status']!r} is none of {', '.join(STATUSES)}")
    for i, ck in enumerate(r["checkpoints"]):
        if not isinstance(ck, dict) or not isinstance(ck.get("step"), int) or not isinstance(ck.get("layers"), list) \
                or not all(isinstance(L, dict) for L in ck["layers"]):
            raise CorruptRun(f"result.json: checkpoint {i} is not a record of step and layers")


IO_FAILED = "io_failed"  # result.json: true where the run failed writing a file; a sweep runs it again
MANIFEST = "files"  # result.json's manifest: every other file of the run, name -> size in bytes


def manifest(d: Path) -> dict[str, int]:
    """The files of a run directory as they stand (result.json, temporary files and a
    report/ folder aside): relative name -> size in bytes, for result.json to list."""
    d = Path(d)
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if p.is_file() and not p.is_symlink() and rel.parts[0] not in (RESULT, "report") \
                and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = p.stat().st_size
    return out


def _check_manifest(d: Path, files) -> None:
    if not isinstance(files, dict) or not all(isinstance(k, str) and type(v) is int for k, v in files.items()):
        raise CorruptRun(f"result.json: {MANIFEST!r} is not a list of file names and sizes")
    for name, size in files.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CorruptRun(f"result.json lists {name!r}, a file outside the run directory")
        try:
            have = (Path(d) / name).stat().st_size
        except FileNotFoundError:
            raise CorruptRun(f"{name} is missing (result.json lists it)") from None
        if have != size:
            raise CorruptRun(f"{name} has {have:,} bytes; result.json says {size:,}")


def check_files(d: Path, result: dict) -> None:
    """The files beside a result.json. With a manifest (runs written since it was added): each listed file is
    there with its size. Without one (older runs): metrics.jsonl and every checkpoint's
    parameter file are there, every .npz opens (a truncated zip has no central directory)
    and every metrics.jsonl line parses. CorruptRun says which file is wrong."""
    import zipfile

    if MANIFEST in result:
        return _check_manifest(d, result[MANIFEST])
    p = Path(d) / "metrics.jsonl"
    if not p.exists():
        raise CorruptRun("metrics.jsonl is missing")
    for ck in result["checkpoints"]:
        if not (Path(d) / "checkpoints" / f"step_{ck['step']:07d}.npz").exists():
            raise CorruptRun(f"checkpoints/step_{ck['step']:07d}.npz is missing (result.json has that checkpoint)")
    for f in sorted((Path(d) / "checkpoints").glob("*.npz")):
        try:
            with zipfile.ZipFile(f) as z:
                if not z.namelist():
                    raise zipfile.BadZipFile("empty")
        except (zipfile.BadZipFile, OSError) as e:
            raise CorruptRun(f"checkpoints/{f.name} is damaged ({e})") from None
    for i, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            raise CorruptRun(f"metrics.jsonl line {i} is not JSON") from None


def load_result(root: Path, run_id: str, *, files: bool = False) -> dict | None:
    """result.json, validated (CorruptRun if it is not one dnfa wrote); None if there is
    none yet. `files`: check the checkpoint files and metrics.jsonl beside it too."""
    d = run_dir(root, run_id)
    p = d / RESULT
    if not p.exists():
        return None
    try:
        with open(p) as f:
            r = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRun(f"result.json is not valid JSON ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    _check_result(r)
    if files:
        check_files(d, r)
    return r


def load_checked(root: Path, run_id: str) -> tuple[str | None, dict | None]:
    """(status, result): 'ok' | 'diverged' | 'failed' with result.json's content, 'corrupt'
    if its files are not what dnfa writes, None if the run has no result.json yet (the
    result is None but for the first three)."""
    try:
        r = load_result(root, run_id, files=True)
    except CorruptRun:
        return "corrupt", None
    except OSError:
        return None, None
    return (r["status"], r) if r else (None, None)


def result_status(root: Path, run_id: str) -> str | None:
    """load_checked's status alone."""
    return load_checked(root, run_id)[0]


def final_params(root: Path, run_id: str) -> tuple[dict, list[dict]]:
    """A finished-ok run's result.json and the parameters of its last checkpoint, as
    [{"W", "b"?}, ...] numpy arrays (b where the run's net has biases). DnfaInputError,
    one line, for a run that is not there, not finished, or not ok."""
    status, res = load_checked(root, run_id)
    if status != "ok":
        why = {None: "has not finished (no result.json)", "corrupt": "is corrupt"}.get(status, f"ended {status}")
        raise DnfaInputError(f"run {run_id} in {root} {why}: there is no trained layer to take")
    step = res["checkpoints"][-1]["step"]
    bias = res["config"]["model"]["bias"]
    with np.load(run_dir(root, run_id) / "checkpoints" / f"step_{step:07d}.npz", allow_pickle=False) as z:
        n = len(res["checkpoints"][-1]["layers"])
        layers = [{"W": z[f"W{i}"], **({"b": z[f"b{i}"]} if bias else {})} for i in range(1, n + 1)]
    return res, layers


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
                  if p.is_dir() and not p.is_symlink() and ID_RE.match(p.name) and p.name != "sweeps"
                  and (p / "config.yaml").exists())


def check_root(root: Path, write: bool = True) -> Path:
    """The runs directory as given, checked: a directory (or creatable), and writable when
    `write` (tried, not guessed: a file is made and removed in it, or, where it does not
    exist yet, in the nearest folder above it that does; not by making its folders and
    removing them again, which a second dnfa starting at the same moment would find gone
    under it). DnfaInputError names what is wrong; nothing is left."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DnfaInputError(f"runs directory {root} is a file, not a directory (--runs-dir or $DNFA_RUNS_DIR)")
    if not write:
        return root
    try:
        here = next((p for p in [root, *root.absolute().parents] if p.exists()), root)
        if not here.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        raise DnfaInputError(f"runs directory {root} is not writable ({e.strerror or e})") from None
    return root


def check_inside(root: Path, run_id: str) -> Path:
    """The run's directory, refusing one that is a symbolic link or resolves outside the
    runs directory: dnfa creates and cleans run directories there and nowhere else."""
    d = run_dir(root, run_id)
    if d.is_symlink():
        raise DnfaInputError(f"{d} is a symbolic link (to {os.readlink(d)}); dnfa writes run directories only "
                             f"inside {root}: remove the link")
    if d.exists() and d.resolve().parent != Path(root).resolve():
        raise DnfaInputError(f"{d} resolves to {d.resolve()}, outside {Path(root).resolve()}; dnfa writes there only")
    return d


def disk_usage(path: Path) -> int:
    """Bytes in the files under `path` (or of the file itself), symbolic links not followed."""
    p = Path(path)
    total = 0
    for f in [p] + (list(p.rglob("*")) if p.is_dir() and not p.is_symlink() else []):
        try:
            st = f.lstat()
        except OSError:  # gone meanwhile
            continue
        total += st.st_size if not stat.S_ISDIR(st.st_mode) else 0
    return total


def list_sweep_ids(root: Path) -> list[str]:
    d = Path(root) / "sweeps"
    return sorted(p.stem for p in d.glob("*.json")) if d.exists() else []


# ----------------------------------------------------------------------------- writing
class RunBusy(Exception):
    """Another process holds the run directory itself (its lock file was removed)."""


class RunWriter:
    """Writes one run's directory in the order of the contract. While it writes it holds an
    exclusive flock on the directory itself, besides the caller's runs/.locks file: a lock
    file deleted under a running training cannot let a second writer in."""

    def __init__(self, root: Path, cfg: Config):
        self.cfg = cfg
        self.root = Path(root)
        self.run_id = cfg.run_id
        self.dir = run_dir(root, self.run_id)
        self._fd = None
        self._latest = None  # the step of the latest weights written

    def start(self, env: dict) -> None:
        """A fresh directory: anything left by an interrupted or failed attempt goes; a
        corrupt one is moved aside to runs/.corrupt/, never deleted."""
        check_inside(self.root, self.run_id)
        corrupt = self.dir.exists() and result_status(self.root, self.run_id) == "corrupt"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunBusy(f"run {self.run_id}: another process is writing {self.dir} (its lock file "
                          f"{self.root / '.locks' / (self.run_id + '.lock')} was removed?); not starting a second writer") from None
        self._clear(corrupt)
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.dir / "config.yaml", config_to_yaml(self.cfg).encode())
        atomic_write_json(self.dir / "env.json", env)
        with writing(self.dir / "metrics.jsonl"):
            (self.dir / "metrics.jsonl").touch()

    def _clear(self, corrupt: bool) -> None:
        """Empty the directory of an earlier attempt. result.json goes first, and durably:
        killed at any point after, the old run reads as unfinished (rerun), never as a
        finished run whose files are gone. A corrupt run's files move to runs/.corrupt/."""
        aside = None
        if corrupt:
            aside = self.root / ".corrupt" / f"{self.run_id}-{_dt.datetime.now().strftime('%Y%m%dT%H%M%S%f')}"
            aside.mkdir(parents=True)
        for i, child in enumerate(sorted(self.dir.iterdir(), key=lambda c: c.name != RESULT)):
            if aside is not None:
                os.replace(child, aside / child.name)
            elif child.is_symlink() or not child.is_dir():
                child.unlink()
            else:
                shutil.rmtree(child)
            if i == 0 and child.name == RESULT:
                _fsync_dir(self.dir)

    def checkpoint(self, rec: dict, params: list) -> None:
        step = rec["step"]
        arrays = {}
        for i, layer in enumerate(params, start=1):
            W = np.asarray(layer["W"])
            arrays[f"W{i}"] = W
            arrays[f"b{i}"] = np.asarray(layer["b"]) if "b" in layer else np.zeros(W.shape[0], W.dtype)
        atomic_savez(self.dir / "checkpoints" / f"step_{step:07d}.npz", arrays)
        with writing(self.dir / "metrics.jsonl"), open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
            f.flush()
        # save_weights ends: the first checkpoint's weights and the latest's, which is the
        # last one's once the run ends however it ends (the one before goes once this is written)
        prev, self._latest = self._latest, step
        if self.cfg.metrics.save_weights == "ends" and prev not in (None, 0, step):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "checkpoints" / f"step_{prev:07d}.npz").unlink()

    def matrices(self, step: int, mats: dict) -> None:
        """The layer matrices of a checkpoint, as float32 (metrics.save_matrices says which)."""
        atomic_savez(self.dir / "checkpoints" / f"matrices_{step:07d}.npz",
                     {k: np.asarray(v, np.float32) for k, v in mats.items()})

    def finish(self, outcome, info: dict, created: str, io_failed: bool = False) -> dict:
        """Write result.json (last, atomically) and return its content. `io_failed`: the run
        failed writing a file (IO_FAILED). If result.json itself cannot be written for want
        of space or permission, the run is left unfinished (the next sweep reruns it) and
        the returned result says so."""
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
            MANIFEST: manifest(self.dir),  # checked on every read: an ok run has all its files
            **({IO_FAILED: True} if io_failed else {}),
        }
        try:
            atomic_write_json(self.dir / RESULT, result)
        except OSError as e:
            line = io_failure(e)
            if line is None:
                raise
            result.update({"status": "failed", "error": outcome.error if io_failed else line, IO_FAILED: True})
        self.release()
        return result

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the directory's flock
            self._fd = None


# ----------------------------------------------------------------------------- sweep records
def sweep_file(root: Path, sweep_id: str) -> Path:
    """A sweep's record: runs/sweeps/<id>.json (sweep.write_sweep_record writes it)."""
    return Path(root) / "sweeps" / f"{sweep_id}.json"


def load_sweep(root: Path, sweep_id: str) -> dict:
    """runs/sweeps/<id>.json, checked: DnfaInputError (one line) if it is not one dnfa wrote."""
    p = sweep_file(root, sweep_id)
    try:
        with open(p) as f:
            rec = json.load(f)
    except (OSError, ValueError) as e:
        raise DnfaInputError(f"sweep record {p} cannot be read: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    ok = isinstance(rec, dict) and isinstance(rec.get("runs"), list) and isinstance(rec.get("varied"), list) \
        and isinstance(rec.get("files"), list) and all(isinstance(r, dict) and isinstance(r.get("run_id"), str)
                                                       and isinstance(r.get("params", {}), dict) for r in rec["runs"])
    if not ok:
        raise DnfaInputError(f"sweep record {p} is corrupt: not the runs, files and varied keys dnfa writes")
    for r in rec["runs"]:
        try:
            check_id(r["run_id"])  # a path out of the runs directory is never read
        except DnfaInputError as e:
            raise DnfaInputError(f"sweep record {p} is corrupt: {e}") from None
        r.setdefault("params", {})
        r.setdefault("status", "pending")
    return rec
