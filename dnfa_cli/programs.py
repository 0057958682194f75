"""Compiled programs that outlive the process (issue 22): a `stored` function is traced,
lowered and compiled once per machine, not once per process.

jax's persistent compilation cache (dnfa_cli/__init__.py) saves XLA's compile, but every
process still traces the Python function and lowers it to StableHLO before it can even look
the compiled program up, and that lowering is most of a warm small run's overhead.
`stored(fn)` is `jax.jit(fn)` whose compiled executable is kept itself
(`jax.experimental.serialize_executable`) in the cache's `programs/` folder, under two
names. The first is known before anything is traced: the function, its static arguments,
the structure, shapes and dtypes (weak types too) of its arguments, the versions of jax and
jaxlib, the platform, the host's CPU (XLA compiles for its instruction set), XLA_FLAGS, the
default device, its XLA compile options (ELEMENTAL) and the source of dnfa itself (any edit
of the package makes new names, so a stale program is never used). A later process with the
same name deserialises the executable and calls it: nothing is traced, lowered or looked
up. The second is what the lowered program is (its text, the platform, its compile
options): after an edit of dnfa, or an upgrade, that left a program as it was, the process
traces and lowers it, finds it under that name and keeps it under its new first name, and
nothing is compiled again.

The program that runs is the same compiled executable whether it was compiled here or read
from the store, so a number never depends on whether the store held it; it is jax.jit's
compile of the function (with its compile options, where it has any), so it computes what
jax.jit computes, bit for bit (tests/test_programs.py, tests/test_xla_flags.py, and runs
compared with bench/compare_runs.py). It is compiled ahead of time for its avals. Called
from inside another program (tracers), the function is inlined there as jax.jit's would be,
and compiled with that program's options. A file that cannot be read or deserialised is
made again; one that cannot be written costs only the time (the cache folder was tried at
start-up, dnfa_cli/__init__.py). With the cache off each process compiles in memory, as
jax.jit does.

A run's programs are also prefetched: see `prefetch` below.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import platform
import re
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

import jax
from jax.experimental.serialize_executable import deserialize_and_load, serialize  # here: a loader thread imports nothing

from . import rules

_PACKAGE = Path(__file__).resolve().parent
_SUFFIX = ".xla"


def _host() -> str:
    """The CPU the executables are compiled for: XLA:CPU targets the host's instruction set,
    so a cache folder shared by machines keeps one program per kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, arm
                    return platform.machine() + " " + " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


@functools.cache
def _platform() -> bytes:
    """What decides the compiled code besides the program: the versions, the platform, the
    host's CPU, XLA_FLAGS and the cores the process's backend started with."""
    import jaxlib

    h = hashlib.sha256()
    backend = jax.devices()[0].client
    for part in (jax.__version__, jaxlib.__version__, backend.platform, backend.platform_version,
                 str(jax.config.jax_enable_x64), os.environ.get("XLA_FLAGS", ""), _host(), _cores()):
        h.update(part.encode() + b"\0")
    return h.digest()


def _cores() -> str:
    """How many threads the process's XLA:CPU backend computes with, as it said when it
    started (`_on_backend`; before that, as it would start now). They decide a program's
    last digits: a program compiled on two cores gave a one-core worker other last digits
    than its own compile (half_range_pearson of a width-256 run, at 1e-16), and a worker
    pinned to one core with PJRT_NPROC=2 gave the numbers of a two-core process; an
    unpinned process with PJRT_NPROC=1 gives those of a one-core worker (the quickstart and
    a width-256 run, bench/compare_runs.py). So programs part by this count, and a process
    computing with one thread (`dnfa train` of a small run: start_backend) shares a
    sweep's one-core workers' programs. (Said "cores N" whatever set it: the names programs
    had before.)"""
    return f"cores {_backend_threads if _backend_threads is not None else _threads_now()}"


def _threads_now() -> int:
    """The threads XLA:CPU's backend would start with now: PJRT_NPROC (or NPROC), as XLA
    reads them, else the cores of the process's main thread (a sweep's worker is pinned
    before its backend starts)."""
    n = rules.xla_threads_env()
    if n is not None:
        return n
    try:
        return len(os.sched_getaffinity(os.getpid()))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_backend_threads: int | None = None  # what _threads_now() said when the CPU backend started


def _on_backend(backend) -> None:
    global _backend_threads
    if backend.platform == "cpu" and _backend_threads is None:
        _backend_threads = _threads_now()


try:  # jax's own hook; called at once for a backend already started
    from jax._src.xla_bridge import register_backend_initialization_hook

    register_backend_initialization_hook(_on_backend)
except (ImportError, AttributeError):  # another jax: the count is read when names are made
    pass


def backend_threads() -> int | None:
    """The threads XLA:CPU computes with in this process (env.json's xla_cpu_threads);
    None where it has no CPU backend (JAX_PLATFORMS without cpu)."""
    jax.devices()
    if _backend_threads is None and jax.default_backend() == "cpu":  # a jax without the hook
        return _threads_now()
    return _backend_threads


def _started() -> bool:
    try:
        from jax._src.xla_bridge import backends_are_initialized

        return backends_are_initialized()
    except (ImportError, AttributeError):  # another jax: as if started (nothing is set)
        return True


def start_backend(threads: int | None = None) -> int | None:
    """Start JAX's backends now, XLA:CPU's computing with `threads` threads (None: as it
    would, from PJRT_NPROC or the process's cores); -> the threads it computes with. The
    process keeps its cores: only the backend's thread pool is sized (PJRT_NPROC, set
    while it starts; the processes this one starts later do not inherit it). A backend
    already started keeps its threads."""
    global _backend_threads
    if threads is None or _started():
        return backend_threads()
    saved = os.environ.get("PJRT_NPROC")
    os.environ["PJRT_NPROC"] = str(threads)
    try:
        jax.devices()
        if _backend_threads is None and jax.default_backend() == "cpu":  # a jax without the hook
            _backend_threads = threads
        return backend_threads()
    finally:
        if saved is None:
            os.environ.pop("PJRT_NPROC", None)
        else:
            os.environ["PJRT_NPROC"] = saved


@functools.cache
def _fingerprint() -> bytes:
    """What every name key shares: the platform and the package's source (the name is known
    before anything is traced; an edit of dnfa makes new names)."""
    h = hashlib.sha256(_platform())
    for f in sorted(_PACKAGE.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.digest()


def _device() -> str:
    return str(jax.config.jax_default_device)


_lapack_lock = threading.Lock()
_lapack_done = False


def _custom_calls_ready() -> None:
    """jaxlib fills its table of LAPACK routines (eigh, and the other decompositions on
    the CPU) when it first lowers one, and an executable read from a file was never
    lowered here: called before that, the routine is a null pointer and the process
    crashes. Fill it first (once: the loader's threads and the run may all come at once);
    where that private entry point is missing, lowering one decomposition does it by the
    public way."""
    global _lapack_done
    if _lapack_done:
        return
    with _lapack_lock:
        if not _lapack_done:
            _fill_lapack()
            _lapack_done = True


def _fill_lapack() -> None:
    if jax.devices()[0].platform != "cpu":
        return
    try:
        from jaxlib import lapack

        with _scipy_lapack_modules():
            lapack._lapack.initialize()
    except (ImportError, AttributeError):
        import jax.numpy as jnp

        jax.jit(jnp.linalg.eigh).lower(jax.ShapeDtypeStruct((2, 2), jnp.float32))


_SCIPY_LAPACK = ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack")


@contextlib.contextmanager
def _scipy_lapack_modules():
    """jaxlib takes its LAPACK routines from scipy's two Cython modules of them, which it
    imports by name; importing them the usual way first runs all of scipy.linalg's
    __init__ (0.11-0.15 s, a tenth of a warm quickstart run, for nothing it uses). Inside,
    the two extension modules are loaded from their files alone and are in sys.modules;
    after, those it put there are gone again, so a later `import scipy.linalg` is the usual
    one (the loaded library serves it). Where the files are not found, jaxlib imports them
    as it would."""
    added = []
    try:
        if not any(n in sys.modules for n in _SCIPY_LAPACK):
            import importlib.machinery
            import importlib.util

            spec = importlib.util.find_spec("scipy")
            folder = Path(spec.submodule_search_locations[0]) / "linalg"
            for name in _SCIPY_LAPACK:
                files = [folder / (name.rsplit(".", 1)[1] + s) for s in importlib.machinery.EXTENSION_SUFFIXES]
                file = next((f for f in files if f.exists()), None)
                if file is None:
                    break
                mspec = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(mspec)
                mspec.loader.exec_module(module)
                sys.modules[name] = module
                added.append((name, module))
    except Exception:  # another scipy: jaxlib imports it its way
        pass
    try:
        yield
    finally:
        for name, module in added:
            if sys.modules.get(name) is module:
                del sys.modules[name]


def release() -> None:
    """Drop the compiled programs every `stored` function holds (engine.release_compiled)."""
    _stop_prefetch()  # what the loaders have not begun (a failed run records nothing) stays unloaded
    for st in _ALL.values():
        st._calls.clear()
    _loaded.clear()
    _handoff.clear()


def store_dir() -> Path | None:
    """The folder of stored programs, beside jax's compiled ones; None when the cache is off."""
    cache = os.environ.get("DNFA_SET_JAX_CACHE", "")
    return Path(cache) / "programs" if cache else None


def _aval(leaf) -> tuple:
    """(shape, dtype, weak type) of an argument: what a jit program is specialised on."""
    if isinstance(leaf, jax.Array):
        return leaf.shape, leaf.dtype.name, leaf.weak_type
    a = jax.typeof(leaf)
    return a.shape, a.dtype.name, a.weak_type


def _pending_call() -> Future:
    fut = Future()
    fut.set_running_or_notify_cancel()
    return fut


class Stored:
    """`jax.jit(fn, static_argnames=static)` whose compiled executable is kept (module doc).
    Called with the same arguments as fn; static arguments by keyword."""

    def __init__(self, fn: Callable, static: tuple[str, ...] = (), options: dict | None = None):
        self.fn, self.static = fn, frozenset(static)
        self.options = dict(options or {})  # XLA's compile options (ELEMENTAL), in its names too
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.jit = jax.jit(fn, static_argnames=tuple(static))  # called with tracers (vmap, inside a jit)
        self._calls: dict = {}  # (sig, device) -> _Call, or the Future of one being loaded
        functools.update_wrapper(self, fn)
        _ALL[self.name] = self

    def _sig(self, args, kwargs):
        """(the flat arguments, the signature of the program) of a call; None for tracers."""
        static = tuple(sorted((k, kwargs.pop(k)) for k in list(kwargs) if k in self.static))
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return None
        return leaves, (tree, tuple(_aval(x) for x in leaves), static)

    def __call__(self, *args, **kwargs):
        got = self._sig(args, dict(kwargs))
        if got is None:  # inside another program: inlined there
            return self.jit(*args, **kwargs)
        leaves, sig = got
        here = (sig, _device())  # compiled for the device it runs on
        call = self._calls.get(here)
        if not isinstance(call, _Call):
            call = self._claim(here, sig)
        if _recording is not None and call.file:
            _recording.setdefault(call.file)
        return jax.tree_util.tree_unflatten(call.out_tree, call.compiled(*leaves))

    def ahead(self, calls, *, first: bool = False) -> None:
        """Say that these calls ((args, kwargs) each; an argument may be a
        jax.ShapeDtypeStruct) come next, in that order: the programs of all but the first
        (`first`: of all: none is called now) that the store lacks are put up as wanted, and
        another process of this machine (a sweep's worker) that would wait for a program
        makes one of them meanwhile (`_exclusive`). The caller then calls them in turn,
        each loaded, or made here, as any call."""
        folder = store_dir()
        for args, kwargs in (list(calls)[0 if first else 1:] if folder is not None else ()):
            got = self._sig(args, dict(kwargs))
            if got is None or (got[1], _device()) in self._calls:
                continue
            name = self._key(got[1])
            if not (folder / name).exists():
                _write_wanted(folder, name, (self.name, got[1]))

    def _claim(self, here, sig) -> "_Call":
        """The program for `here`: as the prefetch loaded it (waited for where a loader
        has it in hand), loaded here otherwise (and then not loaded by the prefetch)."""
        mine = _pending_call()
        got = self._calls.setdefault(here, mine)
        if got is not mine:
            call = got.result() if isinstance(got, Future) else got
            if call is not None:
                self._calls[here] = call
                return call
            self._calls[here] = mine  # the thread that had it in hand could not load it: this one does
        try:
            folder = store_dir()
            name = None if folder is None else self._key(sig)
            call = (name and self._prefetched(folder, name)) or self._load(sig, folder, name)
        except BaseException:
            self._calls.pop(here, None)
            mine.set_result(None)
            raise
        self._calls[here] = call
        mine.set_result(call)
        return call

    @staticmethod
    def _prefetched(folder: Path, name: str) -> "_Call | None":
        """The program `name` as a loader thread read it (`prefetch`), once it has; None
        where none had begun it, which none will now, or where it could not."""
        key = str(folder / name)
        got = _handoff.setdefault(key, _TAKEN)
        if got is _TAKEN:
            return None
        _handoff[key] = _TAKEN  # handed over (or failed): the entry holds nothing from now on
        got = got.result()
        if got is None:
            return None
        compiled, head = got
        try:  # the head names classes of dnfa's modules: read here, where they are imported
            out_tree = pickle.loads(head)[2]
        except Exception:
            return None
        global _hits
        _hits += 1
        return _Call(compiled, out_tree, name)

    def _cache_size(self) -> int:
        """How many compiled programs this function holds (as jax.jit's _cache_size)."""
        return len(self._calls)

    def _key(self, sig) -> str:
        h = hashlib.sha256(_fingerprint())
        h.update(self.name.encode() + b"\0" + repr(sig).encode() + b"\0" + _device().encode())
        h.update(_options_bytes(self.options))
        return f"{self.fn.__name__}-{h.hexdigest()[:32]}{_SUFFIX}"

    def _load(self, sig, folder: Path | None, name: str | None) -> "_Call":
        """The program of `sig`, from the store `folder` by its `name` (nothing traced);
        else made here (`_make`), once the process that is making it (a sweep's other
        worker) is done, or found made by it. With the cache off (no folder), compiled here."""
        if folder is None:
            lowered, out_tree = self._lower(sig)
            return _Call(self._compile(lowered)[0], out_tree, None)
        got = _load_file(folder / name)  # a file is whole once it is there: no lock to read it
        if got is not None:
            return _Call(got[1], got[0][2], name)
        with _exclusive(folder, name):
            got = _load_file(folder / name)  # made while this waited for the lock
            if got is not None:
                return _Call(got[1], got[0][2], name)
            compiled, out_tree = self._make(sig, folder, name)
        return _Call(compiled, out_tree, name)

    def _make(self, sig, folder: Path, name: str, load: bool = True):
        """Trace and lower `sig`; keep it under `name` from the store by what the lowered
        program is (an edit of dnfa, or an upgrade, that left it as it was: no compile),
        else compiled and kept under both. -> (the executable, or None where not `load`ed
        and not compiled here; the output tree). The caller holds the name's lock."""
        lowered, out_tree = self._lower(sig)
        head = (self.name, sig, out_tree)
        same = f"{self.fn.__name__}-{_program_key(lowered, self.options)}{_SUFFIX}"
        try:
            got = _load_file(folder / same) if load else _parts(folder / same)
            if got is not None:
                _write_blob(folder / name, head, got[-1])
                return (got[1] if load else None), out_tree
            compiled, fresh = self._compile(lowered)
            if fresh:
                blob = _serialize(compiled)
                if blob is not None:
                    _write_blob(folder / same, head, blob)
                    _link(folder / same, folder / name, head, blob)
            return compiled, out_tree
        finally:
            with contextlib.suppress(OSError):  # wanted no more (Stored.ahead)
                (folder / WANTED / name).unlink()

    def _lower(self, sig):
        """jax.jit's lowering of fn for the avals of `sig`: the program takes and gives flat
        lists of arrays; the tree of fn's output is returned beside it."""
        tree, avals, static = sig[0], sig[1], dict(sig[2])
        out_tree = []

        def flat(*leaves):
            a, kw = jax.tree_util.tree_unflatten(tree, leaves)
            out, t = jax.tree_util.tree_flatten(self.fn(*a, **kw, **static))
            out_tree.append(t)
            return out

        flat.__name__ = flat.__qualname__ = f"dnfa_{self.fn.__name__}"  # apart from jax.jit(fn)'s own
        lowered = jax.jit(flat).lower(*(jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
                                        for shape, dtype, weak in avals))
        return lowered, out_tree[0]

    def _compile(self, lowered):
        """XLA's compile of `lowered`, and whether it was compiled here (`fresh`).

        Only a fresh executable can be kept: one that jax's persistent cache served
        serialises without its kernels (jaxlib 0.10: "Function ... not found" when the copy
        runs). So jax's cache is not given the stored programs (`_unshared`; they are named
        dnfa_*, apart from anything else's), and should it hold one all the same (a cache
        written otherwise), the cache-hit event says so and it is not kept."""
        hits = _cache_hits()
        with _unshared(), _spread():
            compiled = _compile_with(lowered, self.options)
        return compiled, _cache_hits() == hits


# ------------------------------------------------------------- compiling on idle cores
# A sweep's worker is pinned to its share of the cores (sweep.LocalExecutor) before its
# XLA backend starts, and XLA's compile threads with it: a cold cache's programs were
# compiled on one core, while a worker that waited for one (or had finished) left its own
# idle. While a worker compiles, `_spread` lets its other threads (XLA's compile pool, and
# any other: a loader, work dispatched before) run on every core of the sweep, and pins them
# all back after; the compiling thread itself stays where the worker was pinned, and so do
# the cores its backend started with, which decide the program and its numbers. The
# program is the one the pinned worker compiled before: its numbers are bit for bit the same
# (bench/compare_runs.py on the quickstart sweep, a width-256 sweep and six FINDINGS runs).
# What does move a worker's numbers is the threads its backend starts with: compiled by
# the sweep's unpinned process, or run unpinned (which also cost 17% of a warm sweep),
# programs gave other last digits.
_spread_lock = threading.Lock()


@functools.cache
def _spread_cores() -> set[int] | None:
    """The sweep's cores, in a pinned worker (sweep._worker_init says them); else None."""
    cores = os.environ.get("DNFA_SPREAD_COMPILES", "")  # sweep.SPREAD
    try:
        return {int(c) for c in cores.split(",")} if cores else None
    except ValueError:
        return None


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _pin(tids, cores) -> None:
    for t in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(t, cores)


@contextlib.contextmanager
def _spread():
    """This process's other threads on every core of the sweep while this one compiles
    (above); nothing outside a pinned worker."""
    cores = _spread_cores()
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    with _spread_lock:
        mine = os.sched_getaffinity(0)
        if cores <= mine:
            yield
            return
        me = threading.get_native_id()
        _pin([t for t in _threads() if t != me], cores)
        try:
            yield
        finally:
            _pin(_threads(), mine)  # threads started meanwhile too


def _program_key(lowered, options: dict | None = None) -> str:
    """What the lowered program is (its text, without source locations) on this platform,
    compiled with these options."""
    h = hashlib.sha256(_platform())
    h.update(lowered.as_text().encode() + b"\0" + _device().encode() + _options_bytes(options))
    return "p" + h.hexdigest()[:31]


def _options_bytes(options: dict | None) -> bytes:
    """What compile options add to a name: nothing without any (the names stay as they were)."""
    return b"\0" + repr(sorted(options.items())).encode() if options else b""


# XLA:CPU's elemental emitters for a program, not its MLIR fusion emitters, which lower each
# fusion to LLVM through MLIR first: the statistics programs compile in a third less time
# (bench/compile_cost.py) and compute the same numbers but for the order in which a few
# reductions are summed (an ulp, or two). Only for a checkpoint's float64 statistics (the
# Grams, the random-W terms, the per-layer statistics), never for training or its data:
# there an ulp grows along a trajectory (an Adam step in float32 that moved by an ulp gave
# FINDINGS' Adam runs other weights by their end).
ELEMENTAL = {"xla_cpu_use_fusion_emitters": False}
_UNKNOWN_OPTIONS: set[str] = set()  # compile options this jaxlib does not know


def _compile_with(lowered, options: dict):
    """lowered.compile() with XLA compile options, those this jaxlib knows (a jaxlib without
    one compiles as it would without it; a stored program's name holds the versions)."""
    opts = {k: v for k, v in options.items() if k not in _UNKNOWN_OPTIONS}
    if not opts:
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=opts)
    except jax.errors.JaxRuntimeError as e:
        unknown = re.search(r"No such compile option: '(\w+)'", str(e))
        if unknown is None or unknown.group(1) not in opts:
            raise
        _UNKNOWN_OPTIONS.add(unknown.group(1))
        return _compile_with(lowered, options)


_events = threading.local()


def _on_event(event: str, **kw) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _events.hits = getattr(_events, "hits", 0) + 1


jax.monitoring.register_event_listener(_on_event)


def _cache_hits() -> int:
    """How many programs jax's persistent cache has served this thread."""
    return getattr(_events, "hits", 0)


def _unshared():
    """A context in which a compile is not written into jax's persistent cache (its
    minimum compile time set past any; the setting is this thread's only)."""
    try:
        from jax._src import config as jax_config

        return jax_config.persistent_cache_min_compile_time_secs(float("inf"))
    except (ImportError, AttributeError, TypeError):  # another jax: the cache-hit check still guards
        return contextlib.nullcontext()


class _Call:
    """One stored program, compiled ahead of time for its avals (a jit would compile again
    for arguments that differ only in being committed to the device: initial parameters put
    there from the host, later ones a program's outputs)."""

    def __init__(self, compiled, out_tree, file: str | None):
        self.compiled, self.out_tree, self.file = compiled, out_tree, file
        if file:
            _loaded.add(file)


@contextlib.contextmanager
def _exclusive(folder: Path | None, name: str):
    """One process (or thread) at a time makes or compiles program `name`: the sweep's
    workers all start with the same programs, and on an empty cache each compiled them
    all; now one compiles and the others load what it left. One that waits makes a wanted
    program meanwhile (`_help`: what a worker said it needs next, Stored.ahead), so the
    workers of a sweep compile side by side, each on its own core. A folder without locks
    (no fcntl, read-only) just goes on."""
    fd = None
    if folder is not None and fcntl is not None:
        try:
            fd = _lock_file(folder, name)
            while not _try_lock(fd):
                if not _help(folder):
                    time.sleep(0.02)
        except BaseException as e:  # no lock to be had (OSError): go on without; else the error
            if fd is not None:
                os.close(fd)
            fd = None
            if not isinstance(e, OSError):
                raise
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _lock_file(folder: Path, name: str) -> int:
    """An open descriptor of program `name`'s lock file (flock'ed by its maker)."""
    (folder / "locks").mkdir(parents=True, exist_ok=True)
    return os.open(folder / "locks" / name, os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# ---------------------------------------------------------------------- wanted programs
# On a cold cache the workers of a sweep start the same runs and need the same programs:
# one compiles each, the others wait for it. Where a run knows the programs it needs next
# (the statistics of each layer shape, the random-W draws of each layer: Stored.ahead), it
# puts them up as wanted, and a worker that waits makes one of them in the meantime. It is
# the compile a worker does for itself (in a sweep's worker, pinned as the one that wanted
# it: the numbers are those of a program the run compiled itself), kept in the store, from
# which the run that wanted it reads it.
WANTED = "wanted"
_helped: set[str] = set()  # the wanted programs this process has made (or tried to)


def _write_wanted(folder: Path, name: str, request: tuple) -> None:
    try:
        (folder / WANTED).mkdir(parents=True, exist_ok=True)
        tmp = folder / WANTED / f".{name}.tmp{os.getpid()}"
        tmp.write_bytes(pickle.dumps(request))
        os.replace(tmp, folder / WANTED / name)
    except (OSError, pickle.PicklingError):
        pass


def _help(folder: Path) -> bool:
    """Make one wanted program whose lock is free (False where there is none): one this
    process would name so (the same code, flags and device; the rest are left to their
    owners), made under its lock as the owner would make it."""
    try:
        names = sorted(n for n in os.listdir(folder / WANTED) if not n.startswith(".") and n not in _helped)
    except OSError:
        return False
    for name in names:
        path = folder / WANTED / name
        try:
            made = (folder / name).exists()
        except OSError:
            continue
        if made:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        try:
            owner, sig = pickle.loads(path.read_bytes())
            st = _ALL[owner]
            mine = st._key(sig) == name
        except Exception:  # gone meanwhile, torn, or another version's
            mine = False
        if not mine:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 86400:  # its owner is long gone
                    path.unlink()
            continue
        fd = None
        try:
            fd = _lock_file(folder, name)
            if not _try_lock(fd):
                continue  # its owner, or another helper, is making it
            _helped.add(name)  # once: an entry that cannot be removed is not made again and again
            if not (folder / name).exists():
                st._make(sig, folder, name, load=False)
            return True
        except Exception:  # its owner makes it, and reports what fails
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            if fd is not None:
                os.close(fd)
    return False


# A stored file: _LAYOUT, 8 bytes (little-endian) giving the length of a pickle of (in_tree,
# out_tree of the executable, the head pickled apart), that pickle, then the executable.
# The executable's trees are flat (Stored._lower), so that pickle names no class of dnfa's
# (or optax's) modules and a loader thread can read it while the run still imports them;
# the head, (name, sig, out_tree), names them (a LayerIn, a TrainState) and is read by the
# run. Files of the layout before (no _LAYOUT: 8 bytes, a pickle of (head, in_tree,
# out_tree), the executable) are read by the run alone, and kept on in this one.
_LAYOUT = b"dnfa-xla2"


def _split(path: Path):
    """(the head, still pickled; the executable as _serialize gave it) from a stored file,
    importing nothing; None if absent, unreadable or of the layout before."""
    try:
        return _split_bytes(path.read_bytes())
    except Exception:
        return None


def _split_bytes(blob: bytes):
    """_split of a file's bytes; None for the layout before; raises where torn."""
    if not blob.startswith(_LAYOUT):
        return None
    i = len(_LAYOUT) + 8
    n = int.from_bytes(blob[i - 8:i], "little")
    in_tree, exe_out, head = pickle.loads(blob[i:i + n])
    return head, (blob[i + n:], in_tree, exe_out)


def _parts(path: Path):
    """((name, sig, out_tree), the executable as _serialize gave it) from a stored file of
    either layout; None if absent or unreadable (a torn or foreign file is made again)."""
    try:
        blob = path.read_bytes()
        got = _split_bytes(blob)
        if got is not None:
            return pickle.loads(got[0]), got[1]
        n = int.from_bytes(blob[:8], "little")
        head, in_tree, exe_out = pickle.loads(blob[8:8 + n])
    except Exception:
        return None
    return head, (blob[8 + n:], in_tree, exe_out)


def _deserialize(blob: tuple):
    _custom_calls_ready()
    payload, in_tree, exe_out = blob
    return deserialize_and_load(payload, in_tree, exe_out, execution_devices=[_default_device()])


def _load_file(path: Path):
    """(head, the loaded executable, the executable as kept), or None (as _parts, or a file
    that does not deserialise)."""
    got = _parts(path)
    if got is None:
        return None
    try:
        return got[0], _deserialize(got[1]), got[1]
    except Exception:
        return None


def _default_device():
    """The device a program runs on: jax's default (sweep.Devices.pick sets it per worker)."""
    d = jax.config.jax_default_device
    if d is None:
        return jax.devices()[0]
    return jax.devices(d)[0] if isinstance(d, str) else d


def _serialize(compiled) -> tuple | None:
    """(payload, in_tree, out_tree of the executable), or None where it cannot be kept."""
    try:
        return serialize(compiled)
    except (ValueError, NotImplementedError):
        return None


def _write_blob(path: Path, head, blob: tuple) -> None:
    """Keep an executable under `path` with its head (whole or not at all: a temporary file
    renamed); a file that cannot be written costs only the time."""
    payload, in_tree, exe_out = blob
    try:
        meta = pickle.dumps((in_tree, exe_out, pickle.dumps(head)))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_LAYOUT + len(meta).to_bytes(8, "little") + meta + payload)
        os.replace(tmp, path)
    except (OSError, pickle.PicklingError):
        pass


def _link(src: Path, dst: Path, head, blob: tuple) -> None:
    """`dst` the same file as `src` (a hard link, no second copy on disk; files are replaced,
    never written in place, so the two names cannot tear each other); a copy where links
    are not to be had."""
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        _write_blob(dst, head, blob)


# ---------------------------------------------------------------------------- prefetching
# A run records which stored programs it called, in the order it first called them, under
# a key of what decides them (config.program_signature: the config without its seed); the
# next run with that key has two threads load them (`_lanes`) while it imports the rest of
# dnfa (`dnfa train` starts them as soon as JAX is in), makes its data, draws its factors
# and computes its first Grams. They go by file name: a loaded program waits in `_handoff`
# until the run calls it (Stored._prefetched), and a program the run reaches before the
# threads do is loaded by the run itself. What they have not begun when the run ends,
# another prefetch starts or the process exits is dropped (`_generation`).
_ALL: dict[str, Stored] = {}
_loaded: set[str] = set()  # the files this process holds compiled
_handoff: dict = {}  # file path -> Future of (executable, head pickled) or None; _TAKEN once the run has it in hand
_TAKEN = object()
_hits = 0  # programs the run was handed by a loader (tests)
_recording: dict | None = None  # file names, as an ordered set
_signature: str | None = None
_generation = 0
_pending: list = []
_loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dnfa-prefetch")


def _manifest(signature: str) -> Path | None:
    folder = store_dir()
    if folder is None:
        return None
    return folder / "runs" / (hashlib.sha256(_fingerprint() + signature.encode()).hexdigest()[:32] + ".txt")


def prefetch(signature: str) -> None:
    """Start loading, in threads, the programs the last run of this signature called, and
    record the ones this run calls (`record` writes them). Again for the same signature:
    nothing new."""
    global _recording, _signature, _generation
    if signature == _signature and _recording is not None:
        return
    _recording, _signature, _generation = {}, signature, _generation + 1
    path = _manifest(signature)
    if path is None:  # the cache is off: nothing kept, nothing to load
        return
    try:
        names = path.read_text().split()
    except OSError:
        names = []
    for key, got in list(_handoff.items()):  # what a run took, or a load that failed: free to load again
        if got is _TAKEN or (got.done() and got.result() is None):
            _handoff.pop(key, None)
    if names:
        _custom_calls_ready()  # here, not in a loader: it touches sys.modules, which imports may be using
    _pending[:] = [_loader.submit(_prefetch_lane, lane, _generation) for lane in _lanes(path.parent.parent, names)]


def _lanes(folder: Path, names: list[str]) -> tuple[list[str], list[str]]:
    """What the two threads load, in turn: one all the programs in the order the run first
    called them, just ahead of it; the other the largest third, largest first (the
    statistics of each layer shape, needed at the first checkpoint, each several times the
    load of the rest, which the first thread would reach last). Each program is loaded by
    whichever comes to it first (or by the run)."""
    def size(n):
        try:
            return (folder / n).stat().st_size
        except OSError:
            return 0

    return names, sorted(names, key=size, reverse=True)[:len(names) // 3]


def _prefetch_lane(names: list[str], generation: int) -> None:
    for name in names:
        if generation != _generation:
            return
        _prefetch_one(name, generation)


def loading() -> bool:
    """Whether the loader threads are still at what the last prefetch gave them (a run then
    holds its checkpoints and trains on: train._Loop.checkpoint)."""
    return any(not f.done() for f in _pending)


def wait_prefetched() -> None:
    """Wait until the loader has done (or dropped) what the last prefetch gave it."""
    for f in list(_pending):
        f.result()


def _prefetch_one(name: str, generation: int) -> None:
    folder = store_dir()
    if generation != _generation or name in _loaded or folder is None:  # a sweep worker's next run: held already
        return
    path = folder / name
    mine = _pending_call()
    if _handoff.setdefault(str(path), mine) is not mine:  # the run (or the other thread) has it in hand
        return
    got = None
    try:  # a file is whole once it is there (written aside, then renamed): no lock to read it
        parts = _split(path)
        if parts is not None:
            got = _deserialize(parts[1]), parts[0]
    except Exception:  # the run, reaching it, loads it itself
        got = None
    mine.set_result(got)


def _stop_prefetch() -> None:
    global _generation
    _generation += 1


# before the interpreter joins the loader threads at exit (threading's own exit hooks run
# in reverse order of registration, concurrent.futures' first registered): a run that
# fails on its input does not wait for programs it will never call
getattr(threading, "_register_atexit", lambda fn: None)(_stop_prefetch)


def record(signature: str) -> None:
    """Write the programs this run called (since `prefetch`) as its signature's manifest,
    and drop what the loader has not begun."""
    global _recording, _signature
    _stop_prefetch()
    path, names, _recording, _signature = _manifest(signature), _recording, None, None
    if path is None or not names:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join(names) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def stored(fn: Callable | None = None, *, static: tuple[str, ...] = (), options: dict | None = None):
    """Decorator: `@stored` or `@stored(static=("route",))` in place of jax.jit; `options`:
    XLA's compile options (ELEMENTAL)."""
    if fn is None:
        return functools.partial(Stored, static=static, options=options)
    return Stored(fn, static, options)
