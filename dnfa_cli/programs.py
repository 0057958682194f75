"""Compiled programs that outlive the process (issue 22): a `stored` function is traced and
lowered once per machine, not once per process.

jax's persistent compilation cache (dnfa_cli/__init__.py) saves XLA's compile, but every
process still traces the Python function and lowers its jaxpr to StableHLO before it can
even look the compiled program up: for the statistics of one layer shape that is 0.3 s
(tens of programs in a small run, most of a warm quickstart's overhead). `stored(fn)` is
`jax.jit(fn)` whose lowered program is kept with `jax.export`, serialised into the cache's
`programs/` folder under a key of everything that decides it: the function, its static
arguments, the structure, shapes and dtypes (weak types too) of its arguments, the
versions of jax and jaxlib, the platform, and the source of dnfa itself (any edit to the
package makes new keys, so a stale program is never used). A later process with the same
key deserialises the program and calls it (`Exported.call` under jit): nothing is traced
but one call, and XLA's compile is the persistent cache's hit as before.

The program run is always the exported one, stored or not (with the cache off it is
exported in memory), so a number never depends on whether the store held it; it computes
what jax.jit of the same function computes, bit for bit (tests/test_programs.py, and every
run of the configs compared with bench/compare_runs.py). It is compiled ahead of time for
its avals. Called from inside another program (tracers), the function is inlined there as
jax.jit's would be. A file that cannot be read or deserialised is made again; one that
cannot be written costs only the time (the cache folder was tried at start-up,
dnfa_cli/__init__.py).

A run's programs are also prefetched: see `prefetch` below.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

import jax
from jax import export

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _fingerprint() -> bytes:
    """What every key shares: the versions, the platform and the package's source (not
    XLA's flags: they act at compile time, on the persistent cache's key, not on the
    exported program, so a sweep's workers and `dnfa train` share these)."""
    import jaxlib

    h = hashlib.sha256()
    for part in (jax.__version__, jaxlib.__version__, jax.default_backend(), str(jax.config.jax_enable_x64)):
        h.update(part.encode() + b"\0")
    for f in sorted(_PACKAGE.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.digest()


def _device() -> str:
    return str(jax.config.jax_default_device)


def release() -> None:
    """Drop the compiled programs every `stored` function holds (engine.release_compiled)."""
    for st in _ALL.values():
        st._calls.clear()
    _loaded.clear()


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


class Stored:
    """`jax.jit(fn, static_argnames=static)` whose lowering is exported and kept (module doc).
    Called with the same arguments as fn; static arguments by keyword."""

    def __init__(self, fn: Callable, static: tuple[str, ...] = ()):
        self.fn, self.static = fn, frozenset(static)
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.jit = jax.jit(fn, static_argnames=tuple(static))  # called with tracers (vmap, inside a jit)
        self._calls: dict = {}  # sig -> _Call, or the Future of one a prefetch is loading
        functools.update_wrapper(self, fn)
        _ALL[self.name] = self

    def __call__(self, *args, **kwargs):
        static = tuple(sorted((k, kwargs.pop(k)) for k in list(kwargs) if k in self.static))
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):  # inside another program: inlined there
            return self.jit(*args, **kwargs, **dict(static))
        sig = (tree, tuple(_aval(x) for x in leaves), static)
        here = (sig, _device())  # compiled for the device it runs on; the file serves any
        call = self._calls.get(here)
        if isinstance(call, Future):  # being prefetched: wait for it (None: it failed)
            call = call.result()
        if call is None:
            call = self._calls[here] = self._load(sig)
        if _recording is not None and call.file:
            _recording.setdefault(call.file)
        return jax.tree_util.tree_unflatten(call.out_tree, call.compiled(*leaves))

    def _cache_size(self) -> int:
        """How many compiled programs this function holds (as jax.jit's _cache_size)."""
        return len(self._calls)

    def _key(self, sig) -> str:
        h = hashlib.sha256(_fingerprint())
        h.update(self.name.encode() + b"\0" + repr(sig).encode())
        return f"{self.fn.__name__}-{h.hexdigest()[:32]}.jaxexport"

    def _load(self, sig) -> "_Call":
        folder = store_dir()
        name = self._key(sig)
        with _exclusive(folder, name):
            got = _read(folder / name) if folder else None
            if got is None:
                exp, out_tree = self._export(sig)
                if folder:
                    _write(folder / name, (self.name, sig, out_tree), exp)
            else:
                exp, out_tree = got[1], got[0][2]
            return _Call(self.fn, exp, out_tree, name if folder else None)

    def _export(self, sig):
        tree, avals, static = sig[0], sig[1], dict(sig[2])
        out_tree = []

        def flat(*leaves):
            a, kw = jax.tree_util.tree_unflatten(tree, leaves)
            out, t = jax.tree_util.tree_flatten(self.fn(*a, **kw, **static))
            out_tree.append(t)
            return out

        exp = export.export(jax.jit(flat))(*(jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
                                             for shape, dtype, weak in avals))
        return exp, out_tree[0]


class _Call:
    """One stored program, compiled ahead of time for its avals: a jit would compile again
    for arguments that differ only in being committed to the device (initial parameters
    put there from the host, later ones a program's outputs)."""

    def __init__(self, fn: Callable, exp, out_tree, file: str | None):
        run = functools.wraps(fn)(lambda *leaves: exp.call(*leaves))  # logs name fn, not "call"
        self.compiled = jax.jit(run).lower(*exp.in_avals).compile()
        self.out_tree, self.file = out_tree, file
        if file:
            _loaded.add(file)


@contextlib.contextmanager
def _exclusive(folder: Path | None, name: str):
    """One process (or thread) at a time makes or compiles program `name`: the sweep's
    workers all start with the same programs, and on an empty cache each compiled them
    all; now one compiles (XLA's codegen then has the cores the others wait with) and the
    others load what it left. A folder without locks (no fcntl, read-only) just goes on."""
    fd = None
    if folder is not None and fcntl is not None:
        try:
            (folder / "locks").mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / "locks" / name, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the lock


def _read(path: Path):
    """((name, sig, out_tree), Exported) from a stored file; None if absent or unreadable
    (a torn or foreign file is made again)."""
    try:
        blob = path.read_bytes()
        n = int.from_bytes(blob[:8], "little")
        return pickle.loads(blob[8:8 + n]), export.deserialize(bytearray(blob[8 + n:]))
    except Exception:
        return None


def _write(path: Path, head, exp) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        head = pickle.dumps(head)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(len(head).to_bytes(8, "little") + head + bytes(exp.serialize()))
        os.replace(tmp, path)
    except OSError:
        pass


# ---------------------------------------------------------------------------- prefetching
# A run records which stored programs it called, in the order it first called them, under
# a key of what decides them (engine.program_signature: the config without its seed); the
# next run with that key has two threads load them, in that order, while it makes its data,
# draws its factors and computes its first Grams. A program the run reaches before the
# threads do is loaded by the run itself. What they have not begun when the run
# ends, another prefetch starts or the process exits is dropped (`_generation`).
_ALL: dict[str, Stored] = {}
_loaded: set[str] = set()  # the files this process holds compiled
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
    _pending[:] = [_loader.submit(_prefetch_one, name, _generation) for name in _lanes(path.parent.parent, names)]


def _lanes(folder: Path, names: list[str]) -> list[str]:
    """The loading order for two threads: the largest third of the programs (the
    statistics of each layer shape, needed at the first checkpoint, each several times the
    load of the rest) alternate with the others in the order the run first called them,
    which it needs at once: one thread starts on the large ones while the other keeps just
    ahead of the run."""
    def size(n):
        try:
            return (folder / n).stat().st_size
        except OSError:
            return 0

    big = sorted(names, key=size, reverse=True)[:len(names) // 3]
    small = [n for n in names if n not in big]
    out = []
    for i in range(max(len(big), len(small))):
        out += small[i:i + 1] + big[i:i + 1]
    return out


def wait_prefetched() -> None:
    """Wait until the loader has done (or dropped) what the last prefetch gave it."""
    for f in list(_pending):
        f.result()


def _prefetch_one(name: str, generation: int) -> None:
    if generation != _generation or name in _loaded:  # a sweep worker's next run: held already
        return
    got = _read(store_dir() / name)
    if got is None or got[0][0] not in _ALL:
        return
    (owner, sig, out_tree), exp = got
    st, here = _ALL[owner], (sig, _device())
    if here in st._calls:
        return
    fut = Future()
    fut.set_running_or_notify_cancel()
    st._calls[here] = fut
    try:
        with _exclusive(store_dir(), name):
            fut.set_result(_Call(st.fn, exp, out_tree, name))
    except Exception:  # the run, reaching it, loads it itself
        st._calls.pop(here, None)
        fut.set_result(None)


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


def stored(fn: Callable | None = None, *, static: tuple[str, ...] = ()):
    """Decorator: `@stored` or `@stored(static=("route",))` in place of jax.jit."""
    if fn is None:
        return functools.partial(Stored, static=static)
    return Stored(fn, static)
