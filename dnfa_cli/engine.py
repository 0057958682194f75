"""Running things: turn validated configs into finished run directories (execute, with
the input checks before it), the environment a run records, and the housekeeping of the
compiled programs a long-lived process accumulates."""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax

from . import __version__, data, measure, model, programs, runs, train
from .config import Config, DnfaInputError, program_signature, source_id
from .rules import check_source, precheck, sizes_of  # noqa: F401


# ----------------------------------------------------------------------------- env
def env_info() -> dict:
    """What env.json records: versions, the device JAX runs on, the git commit, the host."""
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
        **run_device(),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "xla_cpu_threads": programs.backend_threads(),  # they decide the last digits (programs._cores)
        "time": runs.now_iso(),
    }


def run_device() -> dict:
    """The device this process's runs use (`jax_device`: JAX's default device, the one a
    sweep worker was given) and, where set, the GPUs it was allowed to see."""
    dev = jax.config.jax_default_device or jax.devices()[0]
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"jax_device": str(dev), **({"cuda_visible_devices": seen} if seen is not None else {})}


def _count_lines(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return None


# ----------------------------------------------------------------------------- compiled programs
def release_compiled_if_crowded(fraction: float = 0.5) -> bool:
    """Drop JAX's compiled programs when this process holds more than `fraction` of the
    kernel's memory-map limit. Every XLA:CPU executable keeps a few mappings of its own
    (about 4 for a small program, more for the statistics); a worker that trains many
    different shapes in one process reaches vm.max_map_count (65530 by default) and the
    next compile dies with a segmentation fault - the test suite did, at 190 tests.
    Clearing costs a recompile of the next shape; returns whether it cleared."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
    except (OSError, ValueError):  # not Linux
        return False
    held = _count_lines("/proc/self/maps")
    if held is None or held < fraction * limit:
        return False
    release_compiled()
    return True


def release_compiled() -> None:
    """Drop every compiled JAX program this process holds (they are recompiled, or loaded
    from the persistent cache, when next needed)."""
    programs.release()
    jax.clear_caches()
    gc.collect()


# ----------------------------------------------------------------------------- Ctrl-C
INTERRUPT_GRACE = 5.0  # seconds a Ctrl-C may wait for the call in progress to return


@contextlib.contextmanager
def prompt_interrupt(grace: float | None = None):
    """Ctrl-C (SIGINT) ends the process within `grace` seconds (INTERRUPT_GRACE). Python
    raises KeyboardInterrupt only once the main thread is back from the call it is in, and
    a compile or a long measuring program is one call: if the first SIGINT has not ended
    the process `grace` seconds later, or at a second SIGINT, a watcher thread ends it at
    once (exit 130). The run is then left as a KeyboardInterrupt leaves it: no result.json,
    its lock released by the kernel (`dnfa ls`: interrupted; rerun to redo it). The kernel
    writes each signal's number to signal.set_wakeup_fd's pipe as it arrives, whatever the
    main thread is doing; the watcher reads it there. Main thread only."""
    grace = INTERRUPT_GRACE if grace is None else grace
    r, w = os.pipe()
    os.set_blocking(w, False)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_watch_interrupts, args=(r, grace), daemon=True, name="dnfa-ctrl-c").start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old)
        os.close(w)  # the watcher reads end-of-file and stops


def _watch_interrupts(r: int, grace: float) -> None:
    deadline, seen = None, 0
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([r], [], [], wait)[0]:
                return _end_now(f"interrupted: still busy {grace:g} s after Ctrl-C; ended at once")
            got = os.read(r, 512)
            if not got:
                return
            seen += got.count(signal.SIGINT)
            if seen >= 2:
                return _end_now("interrupted: second Ctrl-C; ended at once")
            if seen and deadline is None:
                deadline = time.monotonic() + grace
    finally:
        os.close(r)


def _end_now(why: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"\n{why}\n".encode())
    os._exit(130)


# ----------------------------------------------------------------------------- running
def ahead(cfg: Config) -> None:
    """Put up the programs a run of cfg needs first that its config alone says (its random-W
    draws, measure.ahead) as wanted: on a cold cache a sweep's worker that waits for
    another's first programs makes them meanwhile."""
    measure.ahead(cfg)


def prepare(cfg: Config):
    """Everything that can reject the input, done before any directory exists: the data
    (a bad .npz, a batch larger than the data) and the checkpoint schedule. First the run's
    random-W draws are put up as wanted (ahead), before the data's programs are made."""
    ahead(cfg)
    ds = data.make_dataset(cfg)
    train.checkpoint_steps(cfg, train.total_steps(cfg, len(ds.X_train)))
    return ds


# ----------------------------------------------------------------------------- transplants
def donor(cfg: Config, root: Path):
    """The parameters a transplant takes its layers from: its source run's last
    checkpoint (None without model.init_from)."""
    if cfg.model.init_from is None:
        return None
    check_source(cfg, root)
    return runs.final_params(root, source_id(cfg))[1]


def _data_info(ds) -> dict:
    return {"kind": ds.kind, "d": ds.d, "c": ds.c, "n_train": len(ds.X_train), "n_test": len(ds.X_test)}


def execute(cfgs: list[Config], root: Path, datasets=None, *, on_progress=None, env: dict | None = None) -> list[dict]:
    """Train runs that differ only in seed (one run is the usual case) as one program and
    write each run's directory; returns their result dicts. The caller holds the locks.
    An exception inside training is recorded as status `failed`, never raised."""
    signature = program_signature(cfgs)
    programs.prefetch(signature)  # loads the programs while the data is made (no-op if begun)
    datasets = datasets or [prepare(c) for c in cfgs]
    donors = [donor(c, root) for c in cfgs]  # a missing source is an input error: nothing written
    env = env or env_info()
    created = runs.now_iso()
    writers = [runs.RunWriter(root, c) for c in cfgs]
    try:
        for w in writers:
            w.start(env)
    except BaseException:
        for w in writers:
            w.release()
        raise
    try:
        outs = train.train_batched(cfgs, datasets, on_checkpoint=[w.checkpoint for w in writers],
                                   on_matrices=[w.matrices for w in writers], on_progress=on_progress, donors=donors)
    except BaseException as e:  # an interruption (Ctrl-C, SIGTERM) leaves no result.json: rerun later
        if not isinstance(e, Exception):
            for w in writers:
                w.release()
            raise
        # a broken run is recorded, the sweep goes on; a file that could not be written
        # (disk full, no permission) is named, and the run is tried again by the next sweep
        io = runs.io_failure(e)
        msg = io or f"{type(e).__name__}: {e}".splitlines()[0]
        tb = None if io else traceback.format_exc()
        outs = [train.Outcome("failed", checkpoints=runs.read_metrics(w.dir), error=msg, traceback=tb) for w in writers]
    else:
        io = None
        programs.record(signature)
    try:
        for w, o in zip(writers, outs):
            if o.traceback:
                with contextlib.suppress(OSError):  # a diagnostic: result.json has the error line
                    (w.dir / "traceback.txt").write_text(o.traceback)
        results = []
        for w, o, ds in zip(writers, outs, datasets):
            info = {**o.info, "data": _data_info(ds)}
            results.append(w.finish(o, info, created, io_failed=io is not None))
    finally:
        for w in writers:
            w.release()
    return results


@dataclass
class TrainDone:
    """What `dnfa train` did: trained the run now (`why` None), or found it finished ok
    (`why` says when), and the run's result.json content either way."""

    run_id: str
    dir: Path
    result: dict
    why: str | None = None


def train_one(cfg: Config, root: Path, *, force: bool = False, source: str = "",
              on_start: Callable[[str, Path], None] | None = None, on_progress=None,
              on_phase: Callable[[str], None] | None = None, threads: int | None = None) -> TrainDone:
    """Train one run unless it finished ok before (`force`: train it again): every input
    check before anything is written (their errors start with `source`), then the run's
    lock, then training. `on_start(run_id, dir)` is called once the checks that need no
    data passed, before the data is made and JAX's first program loaded; `on_phase(what)`
    names what is done before training reports progress. `threads`: how many threads
    XLA:CPU computes with, where this process has not started its backend yet (None: its
    cores; programs.start_backend). RunBusy if another process writes the run's directory
    without its lock."""
    rid = cfg.run_id
    if not force and runs.result_status(root, rid) == "ok":
        return TrainDone(rid, root / rid, runs.load_result(root, rid), "already finished ok (use --force to retrain)")
    try:
        precheck(cfg)  # no data, no JAX: the rules of the config alone
        check_source(cfg, root)
    except DnfaInputError as e:
        raise DnfaInputError(f"{source}: {e}") from None
    runs.check_inside(root, rid)
    if on_start:
        on_start(rid, (root / rid).absolute())
    if on_phase:
        on_phase("preparing data")
    programs.start_backend(threads)
    programs.prefetch(program_signature([cfg]))
    try:
        ds = prepare(cfg)  # every input check, before anything is written
    except DnfaInputError as e:
        raise DnfaInputError(f"{source}: {e}") from None
    with runs.run_lock(root, rid):
        if not force and runs.result_status(root, rid) == "ok":  # another process finished it meanwhile
            return TrainDone(rid, root / rid, runs.load_result(root, rid), "finished ok in another process meanwhile")
        if on_phase:
            on_phase("starting")
        return TrainDone(rid, root / rid, execute([cfg], root, [ds], on_progress=on_progress)[0])
