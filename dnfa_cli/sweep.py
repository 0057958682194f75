"""Sweeps: plan the runs of config files, execute what is left, and sum up what happened.

Runs already done are skipped; runs that differ only in seed are grouped into one vmapped
program when that pays; the groups execute on a local process pool (forked or spawned, each
worker pinned to its share of the cores and to its own device) or on a Dask distributed cluster. The run directories are the only state, so any engine resumes any
sweep; a per-run file lock keeps two sweeps from ever training the same run twice.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import math
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import rules, runs, sweepspec
from .progress import sweep_eta
from .config import (MAX_RUNS, Config, ConfigError, DnfaInputError, canonical_json, flatten, load_config, source_id,
                     source_of)
from .rules import seed_free

# The sweep's own process plans, starts the workers and gathers their results: on a machine
# whose only devices are CPUs it never imports JAX (1.1 s before the workers could start);
# what runs (engine, and with it JAX) is imported by the workers (run_group, _worker_init).

# Seed batching (auto): with one jit per epoch a CPU step costs ~100 us of overhead, and
# bench/seed_batch.py measured 8 vmapped seeds against 8 sequential ones on this 2-core
# CPU at 0.6x (40-64-64-10), 1.0x (100-64-64-1), 1.05x (100-128-128-1), 1.3x
# (100-256-256-1) and 0.9x (100-512-512-1); on one core, as each of two workers has,
# 0.6x to 1.1x. So on CPU `auto` does not batch. On GPU/TPU a small step is
# kernel-launch bound and R seeds cost about one, so `auto` batches steps below this many
# multiply-adds per run (an expectation, not measured here: no accelerator was lent).
BATCH_MAX_MACS_PER_STEP = 1.2e8
MAX_BATCH = 16


# ----------------------------------------------------------------------------- planning
@dataclass
class Plan:
    sweep_id: str
    files: list[str]
    configs: list[Config]
    params: dict[str, dict] = field(default_factory=dict)  # run id -> the swept values
    varied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what --set / --grid changed
    where: dict[str, str] = field(default_factory=dict)  # run id -> the file it came from

    def needs(self) -> dict[str, str]:
        """Run id -> the run id of its transplant's source, for the runs that have one."""
        return {c.run_id: source_id(c) for c in self.configs if c.model.init_from is not None}

    def located(self, c: Config, e: Exception) -> DnfaInputError:
        """An input error of run `c`, prefixed with its file and swept values."""
        vals = ", ".join(f"{k}={v}" for k, v in self.params.get(c.run_id, {}).items())
        return DnfaInputError(f"{self.where.get(c.run_id, '')}" + (f" (sweep run {vals})" if vals else "") + f": {e}")


def _add(c: Config, f: str, seen: set, out: list, where: dict) -> None:
    """Run c, after the source its transplant describes by config (and that one's, ...):
    a sweep plans the runs a transplant needs and runs them first."""
    if c.run_id in seen:
        return
    src = source_of(c)
    if src is not None:
        _add(src, f, seen, out, where)
    seen.add(c.run_id)
    out.append(c)
    where[c.run_id] = f


def _varied_values(cfgs: list[Config]) -> tuple[list[str], dict[str, dict]]:
    """The dotted keys whose values differ across the runs, and each run's values."""
    flat = [flatten(c.to_dict()) for c in cfgs]
    keys = sorted({k for f in flat for k in f})
    varied = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1 and k != "name"]
    return varied, {c.run_id: {k: f.get(k) for k in varied} for c, f in zip(cfgs, flat)}


def plan(files: list[str], overrides: list[str] | None = None, max_runs: int = MAX_RUNS,
         grid: list[str] | None = None, name: str | None = None) -> Plan:
    """Read, expand and validate every file (and every expanded run) before anything runs;
    more than `max_runs` runs in all is refused. `overrides` (--set) and `grid` (--grid)
    apply to every file; what they change about a file's sweep is in Plan.notes. The id
    is sweep-<name>-<hash of the run ids>: `name` (--name), else the files' sweep.name,
    else the runs' names."""
    if not files:
        raise ConfigError("no config files given")
    if name is not None:
        sweepspec.check_name(name, "--name")
    seen, unique, source, notes, sweep_names = set(), [], {}, [], []
    for f in files:
        cf = load_config(f, overrides, grid)
        notes += cf.notes
        sweep_names += [cf.sweep_name] if cf.sweep_name else []
        for c in cf.expand(max_runs, notes):
            _add(c, str(f), seen, unique, source)
    if len(unique) > max_runs:
        raise ConfigError(f"{', '.join(map(str, files))}: {len(unique):,} runs in all, more than --max-runs {max_runs:,} "
                          "(raise --max-runs if you mean it)")
    varied, params = _varied_values(unique)
    ids = sorted(seen)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:10]
    names = sorted(set(sweep_names) or {c.name for c in unique})
    label = name or (names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}")
    p = Plan(f"sweep-{label}-{digest}", [str(f) for f in files], unique, params, varied, notes, source)
    for c in unique:
        try:
            rules.precheck(c)
        except DnfaInputError as e:
            raise p.located(c, e) from None
    return p


def _jax():
    """jax, for the sweep's parent, which only asks for the backend and its devices: on a GPU
    it must not preallocate most of every GPU's memory (the default; a setting of the user's
    wins). The workers inherit the setting."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax


def _cpu_only() -> bool:
    """Whether JAX's only devices here are CPUs, known without importing it: JAX_PLATFORMS
    names the CPU first, or it names nothing, JAX is not loaded already (it then says
    itself) and no accelerator's plugin is installed. False where unsure."""
    chosen = os.environ.get("JAX_PLATFORMS", "")
    if chosen:
        return chosen.split(",")[0].strip().lower() == "cpu"
    return "jax" not in sys.modules and not accelerator_plugins()


@functools.cache
def accelerator_plugins() -> bool:
    """Whether a PJRT plugin (CUDA, ROCm ...: the jax_plugins package or an entry point of
    that group) or libtpu is installed, or it cannot be told."""
    import importlib.util

    try:
        from importlib.metadata import entry_points

        return bool(importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu")
                    or entry_points(group="jax_plugins"))
    except Exception:  # noqa: BLE001 - unsure: ask JAX
        return True


def _cpu_devices() -> int:
    """How many CPU devices JAX will make (jax_num_cpu_devices, else XLA_FLAGS'
    --xla_force_host_platform_device_count, else 1), as its CPU backend reads them."""
    with contextlib.suppress(ValueError):
        n = int(os.environ.get("JAX_NUM_CPU_DEVICES", "-1"))
        if n >= 0:
            return max(n, 1)
    got = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return max(int(got[-1]), 1) if got else 1


def backend() -> str:
    return "cpu" if _cpu_only() else _jax().default_backend()


GPU_VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Devices:
    """The devices a local pool's workers are spread over, one worker per device (round
    robin when there are more workers): `ids` as a worker selects its own, the physical GPU
    numbers for CUDA_VISIBLE_DEVICES on a GPU, else indices into jax.devices()."""

    platform: str
    ids: tuple[str, ...]

    def pick(self, slot: int) -> None:
        """In a fresh worker, before its first program: make device `slot` (mod their
        number) the one every run of this process uses. On a GPU the worker sees only that
        device; elsewhere (CPU with forced host devices, TPU) it becomes JAX's default."""
        if len(self.ids) <= 1:
            return
        mine = self.ids[slot % len(self.ids)]
        if self.platform == "gpu":
            os.environ[GPU_VISIBLE] = mine
            return
        import jax

        jax.config.update("jax_default_device", jax.devices()[int(mine)])


def local_devices() -> Devices:
    """This machine's devices of JAX's default backend (without JAX where they are CPUs)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the workers inherit it (_jax)
    if _cpu_only():
        return Devices("cpu", tuple(str(i) for i in range(_cpu_devices())))
    jax = _jax()
    devs = jax.devices()
    platform = devs[0].platform
    if platform == "gpu":
        seen = [v.strip() for v in os.environ.get(GPU_VISIBLE, "").split(",") if v.strip()]
        return Devices(platform, tuple(seen[d.id] if d.id < len(seen) else str(d.id) for d in devs))
    return Devices(platform, tuple(str(i) for i in range(len(devs))))


def group_runs(cfgs: list[Config], seed_batch: str, workers: int) -> list[list[Config]]:
    """Runs that differ only in seed go together when batching pays (`auto`: on an
    accelerator, for steps small enough to be launch-bound), split so every worker gets
    work; `on` batches regardless, `off` never."""
    buckets: dict[str, list[Config]] = {}
    for c in cfgs:
        # the config itself, not its id: a seed-free transplant's source (seed 0 + seed_offset) need not exist
        buckets.setdefault(canonical_json(seed_free(c).to_dict()), []).append(c)
    per_bucket = []
    for members in buckets.values():
        per_bucket.append(groups := [])
        c0 = members[0]
        if seed_batch == "off":
            groups += [[c] for c in members]
            continue
        if seed_batch == "auto":
            if backend() == "cpu":
                groups += [[c] for c in members]
                continue
            macs = rules.step_macs(c0)  # None for a user .npz: unknown without reading it, do not batch
            if macs is None or macs > BATCH_MAX_MACS_PER_STEP:
                groups += [[c] for c in members]
                continue
        # at least one group per worker, at most MAX_BATCH runs per program
        n_groups = max(math.ceil(len(members) / MAX_BATCH), min(workers, len(members)))
        size = math.ceil(len(members) / n_groups)
        groups += [members[i:i + size] for i in range(0, len(members), size)]
    # the configs in turn (the first group of each, then the second ...): the first runs a
    # pool starts need different programs, which a cold cache has its workers compile side
    # by side, and the later runs of a config find theirs made; biggest programs first, so
    # a long one does not start last
    turns = [b[i] for i in range(max(map(len, per_bucket), default=0)) for b in per_bucket if i < len(b)]
    return sorted(turns, key=len, reverse=True)


# ----------------------------------------------------------------------------- one group
def _summary(res: dict, ran: bool) -> dict:
    end = res["checkpoints"][-1]["layers"][0] if res.get("checkpoints") else {}
    return {
        "run_id": res["run_id"], "status": res["status"], "error": res.get("error"), "ran": ran,
        "seconds": (res.get("seconds") or {}).get("total"),
        "pearson_a05": end.get("pearson_a05"), "tightness_range": end.get("tightness_range"),
    }


def identity() -> dict:
    """What this process runs: dnfa's version and the schema number that enters run ids
    (read when asked: a Dask worker reports its own)."""
    from . import __version__, config

    return {"dnfa": __version__, "schema": config.SCHEMA}


def _differences(planned: dict, ran: dict, pairs: list[tuple[str, str]] = ()) -> list[str]:
    """What differs between a sweep's plan and a worker: 'dnfa 0.1.0 (this sweep: 0.2.0)',
    the schema likewise, and 'run id A (this sweep: B)' for each of `pairs` (planned, ran)
    that differ."""
    out = [f"{k} {ran.get(k, 'unknown')} (this sweep: {planned[k]})" for k in ("dnfa", "schema") if ran.get(k) != planned[k]]
    return out + [f"run id {theirs} (this sweep: {mine})" for mine, theirs in pairs if mine != theirs]


def run_group(cfg_dicts: list[dict], root: str, rerun: list[str], blocking: bool = False,
              planned: dict | None = None) -> list[dict]:
    """Worker entry point (local pool or Dask): lock each run, skip those that finished
    meanwhile (another sweep), train the rest together, return one summary per run, each
    saying who ran it (`worker`: identity()). Runs whose lock another process holds come
    back as `busy` unless `blocking`. `planned`: the sweep's identity() and run ids; a
    worker that differs (another dnfa version or schema) trains nothing and says what
    differs, each run failed."""
    me = identity()
    cfgs = [Config.model_validate(d) for d in cfg_dicts]
    if planned is not None:
        pairs = list(zip(planned["ids"], [c.run_id for c in cfgs]))
        diff = _differences(planned, me, pairs)
        if diff:
            why = f"not run: the worker differs from this sweep: {'; '.join(diff)}; install this sweep's dnfa on the workers"
            return [{"run_id": rid, "status": "failed", "ran": False, "error": why, "worker": me} for rid in planned["ids"]]
    return [{**r, "worker": me} for r in _run_group(cfgs, Path(root), rerun, blocking)]


def _run_group(cfgs: list[Config], rootp: Path, rerun: list[str], blocking: bool) -> list[dict]:
    import contextlib

    if _STOP is not None and _STOP.is_set():  # queued before a --finish-running signal: not started
        return [{"run_id": c.run_id, "status": "stopped", "ran": False} for c in cfgs]
    out, todo = [], []
    with contextlib.ExitStack() as stack:
        # sorted order: two processes locking overlapping groups cannot deadlock
        for c in sorted(cfgs, key=lambda c: c.run_id):
            got = stack.enter_context(runs.run_lock(rootp, c.run_id, blocking=blocking))
            if not got:
                out.append({"run_id": c.run_id, "status": "busy", "ran": False})
                continue
            st, res = runs.load_checked(rootp, c.run_id)
            if not _to_run(st, res, rerun):
                # finished by another process between planning and taking the lock
                out.append({**_summary(res, ran=False), "elsewhere": True})
                continue
            todo.append(c)
        if todo:
            from . import engine

            if _THREADS is not None:  # --workers 1 (InlineExecutor); nothing if JAX has started
                engine.programs.start_backend(_THREADS)
            _announce([c.run_id for c in todo])
            try:
                datasets = [engine.prepare(c) for c in todo]
            except Exception as e:  # noqa: BLE001 - reported per run, the sweep goes on
                return out + [{"run_id": c.run_id, "status": "failed", "error": f"{type(e).__name__}: {e}", "ran": False}
                              for c in todo]
            try:
                results = engine.execute(todo, rootp, datasets)
            except (runs.RunBusy, DnfaInputError) as e:  # another writer, a symlink: nothing written
                return out + [{"run_id": c.run_id, "status": "failed", "error": str(e), "ran": False} for c in todo]
            except OSError as e:  # a run directory that cannot be started: no result.json, rerun next time
                if runs.io_failure(e) is None:
                    raise
                return out + [{"run_id": c.run_id, "status": "failed", "error": runs.io_failure(e), "ran": True}
                              for c in todo]
            for res in results:
                out.append(_summary(res, ran=True))
    if todo:
        engine.release_compiled_if_crowded()
    return out


# ----------------------------------------------------------------------------- executors
class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the sweep's parent. A BaseException, as KeyboardInterrupt:
    a run interrupted in this process must not be caught and recorded as failed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _die_with_parent(parent: int) -> None:
    """A pool worker must not outlive its sweep (a SIGKILLed parent cannot clean up): the
    kernel's parent-death signal on Linux, and a watchdog on the parent's pid everywhere
    (which also catches a parent that died while this worker was still starting)."""
    import signal
    import threading
    import time

    if os.getppid() != parent:
        os._exit(1)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="dnfa-parent-watch").start()


_STOP = None  # in a pool worker: the sweep's "start no new run" event
# where run_group says which runs it starts: in a pool worker a queue to the sweep's
# parent, in the parent (inline execution) a function; None: nobody listens (Dask)
_STARTED = None
_THREADS = None  # inline execution: XLA:CPU's threads for the runs (rules.sweep_threads); None: the cores


def _announce(run_ids: list[str]) -> None:
    try:
        if callable(_STARTED):
            _STARTED(run_ids)
        elif _STARTED is not None:
            _STARTED.put(run_ids)
    except Exception:  # noqa: BLE001 - a progress line is never worth a run
        pass


SPREAD = "DNFA_SPREAD_COMPILES"  # in a pinned worker: the sweep's cores (programs._spread)


def _leave() -> None:
    """A spawned worker's exit: registered last in _worker_init (after JAX's exit functions),
    so it runs first; it runs the others once (the exit functions registered during the runs
    already ran: they run again), then leaves without the interpreter's teardown. The pool's
    shutdown waits for its workers to end, and freeing XLA's programs and thread pools took
    about 0.5 s of every sweep's end (as `dnfa`'s own exit: cli.entry); the worker has sent
    its last result by then. Its exit status is 0, as multiprocessing's is for a pool worker
    that returned (the pool reads none). A forked worker never gets here: multiprocessing
    ends it with os._exit."""
    atexit.unregister(_leave)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _worker_init(share: int, slots, lock, parent: int, stop=None, started=None, devices: Devices | None = None,
                 threads: int | None = None) -> None:
    """Pin this worker to its own `share` cores, so N workers never oversubscribe, and to
    its own device, with XLA:CPU computing with `threads` threads where given
    (rules.sweep_threads; else its cores); leave Ctrl-C to the parent (it stops the workers
    itself) and die with it."""
    import signal

    global _STOP, _STARTED
    _STOP, _STARTED = stop, started

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    with lock:
        slot = slots.value
        slots.value += 1
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = None
    cpu = devices is None or devices.platform == "cpu"
    if cores is not None:
        mine = [cores[(slot * share + i) % len(cores)] for i in range(share)]
        os.sched_setaffinity(0, mine)
        if cpu:  # its compiles may use the cores others leave idle
            os.environ[SPREAD] = ",".join(map(str, cores))
    # not on GPUs (make_executor gives None there): a worker's backend starts once pick
    # chose the one GPU it sees
    if threads is not None and cpu:
        from . import programs

        programs.start_backend(threads)
    if devices is not None:
        # pinned first: on forced host devices this starts JAX's backend, whose threads are
        # the cores it starts with (programs._cores names them)
        devices.pick(slot)
    from . import engine  # noqa: F401 - JAX and the rest, now, not when the first group arrives

    atexit.register(_leave)  # the newest exit function, after JAX's: it runs first (_leave)


class LocalExecutor:
    """A process pool; thread counts for BLAS and XLA are set in the environment the
    workers inherit, core affinity and the device (one worker per device) by each worker's
    initializer.

    The workers are forked from this process where that is safe and the same: on Linux, with
    JAX not loaded here (CPUs only: local_devices) and one core a worker, whose BLAS threads
    (1) are those this process loaded. A forked worker has the modules this process imported
    (typer, pydantic, numpy, dnfa's config: about 0.5 s a worker); otherwise, as before,
    spawned."""

    def __init__(self, workers: int, threads: int | None = None):
        import multiprocessing as mp

        self.workers = workers
        self.devices = local_devices()
        share = max(1, default_workers() // workers)
        env = {k: str(share) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        # a forked worker keeps the BLAS this process loaded: only where that has one thread
        fork = (sys.platform == "linux" and share == 1 and "jax" not in sys.modules
                and all(os.environ.get(k, "1") == "1" for k in env))
        ctx = mp.get_context("fork" if fork else "spawn")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.stop, self.started = ctx.Event(), ctx.Queue()
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                            initargs=(share, ctx.Value("i", 0), ctx.Lock(), os.getpid(), self.stop,
                                                      self.started, self.devices, threads))
            # start the workers now, while the environment is theirs
            list(self.pool.map(int, range(workers)))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, *args):
        return self.pool.submit(run_group, *args)

    def on_start(self, fn: Callable[[list[str]], None]) -> None:
        """Call fn(run ids) in this process as a worker starts them (a reader thread)."""
        import threading

        def read():
            while True:
                try:
                    ids = self.started.get()
                except (EOFError, OSError, ValueError, TypeError):  # the queue closed with the pool (TypeError: its
                    # connection was already released, seen at the end of a 2-worker sweep)
                    return
                if ids is None:
                    return
                fn(ids)

        self._reader = threading.Thread(target=read, daemon=True, name="dnfa-run-starts")
        self._reader.start()

    def check(self) -> None:  # a local pool has no scheduler to lose (a dead worker fails its group)
        pass

    def stop_new(self) -> None:
        """Start no new run: groups a worker has already taken off the queue come back as
        `stopped` (the pool hands out more than one group per worker)."""
        self.stop.set()

    def close(self, kill: bool = False):
        """Shut the pool down; `kill`: stop the runs in flight now (they leave no
        result.json, so the next sweep reruns them)."""
        if kill:
            for p in list(getattr(self.pool, "_processes", {}).values()):
                p.terminate()
            self.pool.shutdown(wait=False, cancel_futures=True)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if kill:  # a worker stopped mid-put may hold the queue's lock: never wait on it at exit
            self.started.cancel_join_thread()
            return
        with contextlib.suppress(OSError, ValueError):
            self.started.put(None)  # ends the reader thread ...
        if getattr(self, "_reader", None) is not None:
            self._reader.join(5.0)  # ... before the interpreter's exit releases the queue under it


class _Deferred:
    """A future that runs its call when first asked for the result (inline execution)."""

    def __init__(self, args):
        self.args, self._done, self._value, self._exc = args, False, None, None

    def cancel(self) -> bool:
        return not self._done

    def result(self):
        if not self._done:
            try:
                self._value = run_group(*self.args)
            except Exception as e:  # noqa: BLE001 - surfaced like a pool future's
                self._exc = e
            self._done = True
        if self._exc:
            raise self._exc
        return self._value


class InlineExecutor:
    """`--workers 1`: run groups in this process, one at a time (no spawn, no second
    JAX import, compiled programs shared across runs)."""

    workers = 1

    def __init__(self, threads: int | None = None):
        global _THREADS
        _THREADS = threads  # XLA:CPU's threads, where this process starts its backend for the runs

    def submit(self, *args):
        return _Deferred(args)

    def on_start(self, fn: Callable[[list[str]], None]) -> None:
        global _STARTED
        _STARTED = fn

    def stop_new(self) -> None:  # the sweep cancels the deferred groups itself
        pass

    def check(self) -> None:
        pass

    def close(self, kill: bool = False):
        global _STARTED, _THREADS
        _STARTED = _THREADS = None


class SchedulerLost(Exception):
    """The Dask scheduler went away mid-sweep (it cancels every future: no run failed). The
    runs that finished are on disk and in the sweep record; the sweep started again, on a
    new scheduler or locally, does the rest."""


DASK_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):\d{1,5}$")


class DaskExecutor:
    """Runs groups on a Dask distributed cluster; its workers need dnfa installed and the
    same runs directory (a shared filesystem). The connection and the scheduler's first
    answer must both come within `timeout` seconds."""

    def __init__(self, address: str, timeout: float = 30.0):
        if not DASK_ADDRESS.match(address):
            raise ConfigError(f"--scheduler {address!r}: not a Dask scheduler address (tcp://HOST:PORT or HOST:PORT)")
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs Dask distributed: pip install 'dnfa[dask]'") from None
        import threading

        box: dict = {}

        def connect():  # in a thread: a port that accepts and never answers must not hang us
            try:
                c = Client(address, timeout=f"{timeout}s")
                box["workers"] = c.scheduler_info().get("workers", {})
                box["client"] = c
            except Exception as e:  # noqa: BLE001 - reported as one line below
                box["error"] = e

        t = threading.Thread(target=connect, daemon=True, name="dnfa-dask-connect")
        t.start()
        t.join(timeout + 2)
        if "client" not in box:
            why = box.get("error")
            reason = f"{type(why).__name__}: {str(why).splitlines()[0] if str(why) else ''}" if why else \
                f"no answer within {timeout:g} s"
            raise ConfigError(f"--scheduler {address}: cannot reach a Dask scheduler ({reason}); "
                              "see --scheduler-timeout")
        self.client, self.address = box["client"], address
        # the client logs the loss of its scheduler as tracebacks from its own thread, before
        # the sweep sees a cancelled future: the sweep says it in one line (check)
        import logging

        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
        self._futures: list = []
        self.workers = max(1, sum(w.get("nthreads", 1) for w in box["workers"].values()))

    def submit(self, *args):
        fut = self.client.submit(run_group, *args, pure=False)
        self._futures.append(fut)
        return fut

    def stop_new(self) -> None:  # the sweep cancels the futures it has not collected
        pass

    def on_start(self, fn) -> None:  # Dask workers run elsewhere: no word when a run starts
        pass

    def check(self) -> None:
        """SchedulerLost once the client has lost its scheduler (it then tries to reconnect,
        and logs its tracebacks as it gives up: they are silenced, the user gets one line)."""
        if self.client.status not in ("running", "newly-created"):
            import logging

            logging.disable(logging.CRITICAL)
            raise SchedulerLost(f"the Dask scheduler {self.address} was lost mid-sweep")

    def close(self, kill: bool = False):
        if self.client.status not in ("running", "newly-created"):  # lost: nothing to cancel, nobody to tell
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
            return
        if kill:  # the runs in flight stop; they leave no result.json and rerun next time
            self.client.cancel([f for f in self._futures if not f.done()], force=True)
        self.client.close()


def _wait_any(futures):
    if futures and isinstance(next(iter(futures)), _Deferred):
        return {next(iter(futures))}
    try:
        from distributed import Future as DFuture
        from distributed import wait as dwait

        if futures and isinstance(next(iter(futures)), DFuture):
            return dwait(futures, return_when="FIRST_COMPLETED").done
    except ImportError:
        pass
    return wait(futures, return_when=FIRST_COMPLETED).done


# ----------------------------------------------------------------------------- the sweep
def write_sweep_record(root: Path, p: Plan, state: dict[str, dict], created: str) -> None:
    rows = []
    for c in p.configs:
        s = state.get(c.run_id) or {}
        rows.append({"run_id": c.run_id, "status": s.get("status", "pending"), "ran": s.get("ran", False),
                     "seconds": s.get("seconds"), "error": s.get("error"), "params": p.params.get(c.run_id, {})})
    runs.atomic_write_json(runs.sweep_file(root, p.sweep_id), {
        "schema": 1, "sweep_id": p.sweep_id, "files": p.files, "created": created, "updated": runs.now_iso(),
        "varied": p.varied, "runs": rows,
    })


def rerun_statuses(force: bool, rerun_failed: bool) -> list[str]:
    """The result statuses a sweep runs again (a run without result.json always runs)."""
    return ["ok", "diverged", "failed"] if force else (["diverged", "failed"] if rerun_failed else [])


def _to_run(status: str | None, res: dict | None, rerun: list[str]) -> bool:
    """Whether a sweep executes a run of this status (load_checked): one not finished, a
    corrupt one, one of the `rerun` statuses, or one that failed for want of disk space or
    permission (runs.IO_FAILED: not the run's fault, tried again without --rerun-failed)."""
    return status in (None, "corrupt") or status in rerun or bool(res and res.get(runs.IO_FAILED))


def todo_of(p: Plan, root: Path, rerun: list[str]) -> tuple[list[Config], dict[str, str | None]]:
    """The runs to execute, and every run's current status (None: no result.json; 'corrupt':
    files that are not what dnfa writes, always rerun, the bad files kept aside)."""
    checked = {c.run_id: runs.load_checked(root, c.run_id) for c in p.configs}
    return [c for c in p.configs if _to_run(*checked[c.run_id], rerun)], {rid: st for rid, (st, _) in checked.items()}


class _Queue:
    """The groups of a sweep not yet submitted: a group goes once the source of every
    transplant in it has finished ok in this sweep (or was done before it); a run whose
    source ended otherwise fails without starting (no result.json: a later sweep, or
    --rerun-failed on the source, tries it again)."""

    def __init__(self, groups: list[list[Config]], needs: dict[str, str], todo_ids: set[str]):
        self.waiting, self.needs, self.todo_ids = list(groups), needs, todo_ids

    def _source_status(self, rid: str, state: dict) -> str | None:
        src = self.needs.get(rid)
        if src is None:
            return "ok"
        if src in state:
            return state[src]["status"]
        return None if src in self.todo_ids else "ok"  # outside the plan: prepare found it ok

    def take(self, state: dict) -> tuple[list[list[Config]], list[dict]]:
        """The groups ready to go, and the summaries of the runs whose source failed them."""
        ready, failed, still = [], [], []
        for g in self.waiting:
            st = {c.run_id: self._source_status(c.run_id, state) for c in g}
            if any(v is None for v in st.values()):
                still.append(g)
                continue
            failed += [{"run_id": rid, "status": "failed", "ran": False,
                        "error": f"source run {self.needs[rid]} ended {v}: no trained layer to take"}
                       for rid, v in st.items() if v != "ok"]
            go = [c for c in g if st[c.run_id] == "ok"]
            ready += [go] if go else []
        self.waiting = still
        return ready, failed


def run_sweep(p: Plan, root: Path, executor, *, force: bool = False, rerun_failed: bool = False,
              seed_batch: str = "auto", on_done: Callable[[dict], None] | None = None,
              todo: list[Config] | None = None, stop: Callable[[], bool] = lambda: False) -> dict[str, dict]:
    """Execute a plan; returns the final per-run summaries keyed by run id. `todo`: the
    runs to execute if the caller already has todo_of()'s answer (saves reading every
    result.json again). Transplants start after their sources (_Queue). Once `stop()`
    says so, no new group starts; those in flight finish."""
    root = Path(root).resolve()  # Dask workers run elsewhere: never hand them a relative path
    rerun = rerun_statuses(force, rerun_failed)
    created = runs.now_iso()
    state: dict[str, dict] = {}
    if todo is None:
        todo, _ = todo_of(p, root, rerun)
    todo_ids = {c.run_id for c in todo}
    for c in p.configs:
        if c.run_id not in todo_ids:
            state[c.run_id] = {**_summary(runs.load_result(root, c.run_id), ran=False), "skipped": True}
    write_sweep_record(root, p, state, created)
    queue = _Queue(group_runs(todo, seed_batch, executor.workers if executor else 1), p.needs(), todo_ids)
    pending: dict = {}  # future -> (group, blocking)
    busy: list[Config] = []
    by_id = {c.run_id: c for c in p.configs}

    def record(results: list[dict], blocking: bool) -> None:
        for r in results:
            if r["status"] == "busy" and not blocking:
                busy.append(by_id[r["run_id"]])
                continue
            if r["status"] in ("busy", "stopped"):
                continue
            state[r["run_id"]] = r
            if on_done:
                on_done(r)
        write_sweep_record(root, p, state, created)

    try:
        while True:
            if not stop():
                ready, failed = queue.take(state)
                record(failed, False)
                pending.update({executor.submit([c.to_dict() for c in g], str(root), rerun, False, _planned(g)): (g, False)
                                for g in ready})
            if not pending and busy and not stop():
                # runs another sweep held: wait for its lock, then train them only if it did not finish
                pending.update({executor.submit([c.to_dict()], str(root), rerun if not force else [], True, _planned([c])):
                                ([c], True) for c in busy})
                busy.clear()
            if stop():
                for fut in [f for f in pending if f.cancel()]:
                    pending.pop(fut)
            if not pending:
                break
            try:
                done = _wait_any(set(pending))
            except Exception:
                executor.check()  # a lost scheduler cancels every future: SchedulerLost, not a traceback
                raise
            executor.check()
            for fut in done:
                group, blocking = pending.pop(fut)
                record(_as_planned(_results(fut, group), group), blocking)
    finally:
        _settle(root, p, state)
        write_sweep_record(root, p, state, created)
    return state


def _results(fut, group: list[Config]) -> list[dict]:
    """A finished group's summaries; a dead worker fails its group, not the sweep."""
    try:
        return fut.result()
    except Exception as e:  # noqa: BLE001
        return [{"run_id": c.run_id, "status": "failed", "error": f"worker: {type(e).__name__}: {e}", "ran": False}
                for c in group]


def _planned(group: list[Config]) -> dict:
    return {**identity(), "ids": [c.run_id for c in group]}


def _as_planned(results: list[dict], group: list[Config]) -> list[dict]:
    """A group's summaries, checked against the plan: a worker that ran runs this sweep
    did not plan (one on another dnfa version or schema, from before workers checked
    that themselves) fails the group's runs, saying what differs."""
    ids = {c.run_id for c in group}
    extra = [r["run_id"] for r in results if r.get("run_id") not in ids]
    if not extra:
        return results
    worker = next((r["worker"] for r in results if isinstance(r.get("worker"), dict)), {})
    diff = _differences(identity(), worker)
    what = "; ".join(diff) if diff and worker else "another dnfa version or schema (it does not say which)"
    why = (f"the worker runs {what} and wrote runs this sweep did not plan ({', '.join(map(str, extra))}); "
           "install this sweep's dnfa on the workers")
    return [{"run_id": c.run_id, "status": "failed", "ran": False, "error": why} for c in group]


def _settle(root: Path, p: Plan, state: dict[str, dict]) -> None:
    """Runs the sweep never heard back from (it stopped first, or lost its workers) but
    whose files say they finished: recorded as their files say, never as pending."""
    for c in p.configs:
        if c.run_id not in state:
            st, res = runs.load_checked(root, c.run_id)
            if st in runs.STATUSES:
                state[c.run_id] = _summary(res, ran=False)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)



# ----------------------------------------------------------------------------- the command
@dataclass(frozen=True)
class Options:
    """How `dnfa sweep` runs a plan (its flags)."""

    workers: int | None = None  # local worker processes; None: the usable cores
    scheduler: str | None = None  # a Dask scheduler's address
    scheduler_timeout: float = 30.0
    force: bool = False
    rerun_failed: bool = False
    seed_batch: str = "auto"
    finish_running: bool = False  # the first Ctrl-C / SIGTERM lets the runs in flight finish


@dataclass
class Prepared:
    """A sweep ready to run: its checked runs directory, the plan, the runs to execute and
    every run's status now (todo_of)."""

    root: Path
    plan: Plan
    todo: list[Config]
    status: dict[str, str | None]


def prepare(files: list, overrides: list[str] | None = None, grid: list[str] | None = None, *,
            max_runs: int = MAX_RUNS, runs_dir=None, write: bool = True, force: bool = False,
            rerun_failed: bool = False, name: str | None = None) -> Prepared:
    """Check the runs directory (writable when `write`), plan the files and find what is
    left to do; DnfaInputError (one line) before anything is written."""
    root = runs.check_root(runs.runs_root(runs_dir), write=write)
    p = plan([str(f) for f in files], overrides, max_runs=max_runs, grid=grid, name=name)
    for c in p.configs:
        runs.check_inside(root, c.run_id)
    by_id = {c.run_id: c for c in p.configs}
    for c in p.configs:
        try:
            rules.check_source(c, root, by_id)  # a source this sweep runs, or one trained ok
        except DnfaInputError as e:
            raise p.located(c, e) from None
    todo, status = todo_of(p, root, rerun_statuses(force, rerun_failed))
    return Prepared(root, p, todo, status)


def make_executor(todo: list[Config], opts: Options, say: Callable[[str], None] | None = None):
    """The scheduler's cluster if one is given; else a local pool of as many workers as
    there are groups to run (at most `opts.workers`), run inline for one; None if nothing
    is left to run. `say`: a line for the user before a wait (workers starting)."""
    say = say or (lambda line: None)
    if opts.scheduler:
        return DaskExecutor(opts.scheduler, timeout=opts.scheduler_timeout)
    if not todo:
        return None
    n = opts.workers or default_workers()
    n = min(n, len(group_runs(todo, opts.seed_batch, n)))
    if n > 1:
        say(f"starting {n} worker processes (each loads JAX once)")
    # decided here, before JAX is loaded (backend() asks JAX where a plugin is installed):
    # XLA's own setting wins, and an accelerator's numbers do not depend on it
    threads = (rules.sweep_threads(todo) if backend() == "cpu" and rules.xla_threads_env() is None else None)
    return InlineExecutor(threads) if n <= 1 else LocalExecutor(n, threads)


@dataclass
class SweepSummary:
    """What a sweep did. `counts`: final statuses (ok, diverged, failed; a run with no
    result counts as failed); after an interruption, the statuses on disk, so their sum
    is the number of runs finished so far."""

    sweep_id: str
    record: Path
    runs: int
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in runs.STATUSES})
    ran: int = 0
    skipped: int = 0  # already done before this sweep
    elsewhere: int = 0  # finished by another process while this sweep waited
    finished_now: int = 0  # runs this sweep saw finish
    seconds: float = 0.0
    interrupted: int | None = None  # the signal that stopped the sweep

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    @property
    def signal_name(self) -> str | None:
        import signal

        return None if self.interrupted is None else signal.Signals(self.interrupted).name


class _Signals:
    """Ctrl-C / SIGTERM while a sweep runs: stop within seconds (Interrupted), or with
    `finish_running` start no new run at the first signal and stop at the second."""

    def __init__(self, executor, finish_running: bool, say: Callable[[str], None] | None):
        self.executor, self.finish_running, self.say = executor, finish_running, say
        self.caught: list[int] = []

    def __enter__(self):
        import signal

        self._old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        import signal

        for sig, h in self._old.items():
            signal.signal(sig, h)

    def _on_signal(self, signum, frame):
        import signal

        if _drops_exceptions(frame):  # raised there it would be printed and lost: again, once out
            import threading

            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        self.caught.append(signum)
        if len(self.caught) == 1 and self.finish_running:
            if self.executor is not None:
                self.executor.stop_new()
            if self.say:
                self.say(f"{signal.Signals(signum).name}: no new runs; waiting for the runs in flight "
                         "(signal again to stop them now)")
            return
        raise Interrupted(signum)

    def kill(self) -> bool:
        """Whether the runs in flight must stop now (a signal, and not the one a
        --finish-running sweep waits out)."""
        return bool(self.caught) and not (self.finish_running and len(self.caught) == 1)


def _drops_exceptions(frame) -> bool:
    """Whether Python code running in `frame` drops what it raises (printing "Exception
    ignored in ..."): a garbage collector's callback (JAX's frees XLA's buffers at every
    collection) or a __del__. A signal handled there cannot stop the sweep by raising."""
    import gc

    code = getattr(frame, "f_code", None)
    return code is not None and (code.co_name == "__del__"
                                 or any(getattr(cb, "__code__", None) is code for cb in gc.callbacks))


def _tally(s: SweepSummary, ids: list[str], state: dict[str, dict]) -> None:
    for rid in ids:
        st = state.get(rid, {})
        s.counts[st.get("status", "failed")] = s.counts.get(st.get("status", "failed"), 0) + 1
        s.skipped += bool(st.get("skipped"))
        s.ran += bool(st.get("ran"))
        s.elsewhere += bool(st.get("elsewhere"))


def run(prep: Prepared, opts: Options, *, on_done: Callable[[dict, int, int, float], None] | None = None,
        say: Callable[[str], None] | None = None, on_start: Callable[[str], None] | None = None) -> SweepSummary:
    """Execute a prepared sweep with the executor its options choose, handling Ctrl-C and
    SIGTERM; after an interruption the sweep record is rewritten from the run directories.
    `on_done(summary, k, n, eta)`: the k-th of the n runs to execute finished, eta
    seconds left; `say`: a line for the user (what a first --finish-running signal does);
    `on_start(run_id)`: a run starts (local workers only: Dask's do not say)."""
    t0 = time.perf_counter()
    executor = make_executor(prep.todo, opts, say)
    if executor is not None and on_start is not None:
        executor.on_start(lambda ids: [on_start(rid) for rid in ids])
    n_todo, finished = len(prep.todo), []  # finished: seconds since the start at which each run finished

    def done(r):
        finished.append(time.perf_counter() - t0)
        if on_done:
            on_done(r, len(finished), n_todo, sweep_eta(finished, n_todo, getattr(executor, "workers", 1) or 1))

    signals, interrupted, state = _Signals(executor, opts.finish_running, say), None, {}
    try:
        with signals:
            state = run_sweep(prep.plan, prep.root, executor, force=opts.force, rerun_failed=opts.rerun_failed,
                              seed_batch=opts.seed_batch, on_done=done, todo=prep.todo, stop=lambda: bool(signals.caught))
    except Interrupted as e:
        interrupted = e.signum
    finally:
        if executor:
            executor.close(kill=signals.kill())
    ids = [c.run_id for c in prep.plan.configs]
    s = SweepSummary(prep.plan.sweep_id, runs.sweep_file(prep.root, prep.plan.sweep_id), len(ids), finished_now=len(finished))
    s.interrupted = interrupted if interrupted is not None else (signals.caught[0] if signals.caught else None)
    if s.interrupted is None:
        _tally(s, ids, state)
    else:
        final = {rid: runs.result_status(prep.root, rid) for rid in ids}
        for v in final.values():
            if v in runs.STATUSES:
                s.counts[v] += 1
        write_sweep_record(prep.root, prep.plan, {rid: {"status": v} for rid, v in final.items() if v in runs.STATUSES},
                           runs.now_iso())
    s.seconds = time.perf_counter() - t0
    return s


def resume_command(files: list, *, runs_dir=None, overrides: list[str] | None = None, grid: list[str] | None = None,
                   max_runs: int = MAX_RUNS, scheduler: str | None = None, name: str | None = None) -> str:
    """The `dnfa sweep` command line that resumes this sweep (the flags that chose its runs
    and where they go)."""
    import shlex

    again = [*map(str, files), *(["--runs-dir", str(runs_dir)] if runs_dir else []), *(["--name", name] if name else []),
             *[a for kv in overrides or [] for a in ("--set", kv)], *[a for kv in grid or [] for a in ("--grid", kv)],
             *(["--max-runs", str(max_runs)] if max_runs != MAX_RUNS else []),
             *(["--scheduler", scheduler] if scheduler else [])]
    return f"dnfa sweep {shlex.join(again)}"


def report_command(sweep_id: str, runs_dir=None) -> str:
    """The `dnfa report` command line for a sweep's HTML page."""
    import shlex

    rd = f" --runs-dir {shlex.quote(str(runs_dir))}" if runs_dir else ""
    return f"dnfa report {sweep_id}{rd} --html"
