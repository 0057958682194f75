"""Programs kept across processes (dnfa_cli/programs.py): a stored program computes what
jax.jit of the same function computes, bit for bit, whether it was compiled here or read
from the store (in this process and in a fresh one); a torn file is made again; the key separates what decides a program; the
prefetch loads what the last run of a signature called; and the eager draws moved into
kept programs give the very numbers of the eager ops they replace."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dnfa_cli  # noqa: F401  (x64)
from dnfa_cli import data, model as mdl, programs


class Pair(NamedTuple):
    A: jax.Array
    b: jax.Array


def _fn(p: Pair, key, scale, *, mode: str, k: int):
    """Enough of what dnfa's programs do: a decomposition, products, a reduction, random
    draws, a python-scalar argument, a pytree out."""
    lam, V = jnp.linalg.eigh(p.A @ p.A.T)
    z = jax.random.normal(key, (k, p.A.shape[0]), jnp.float64)
    out = {"lam": lam * scale, "proj": z @ V, "sum": jnp.sum(p.b) if mode == "sum" else jnp.max(p.b)}
    return [out, (V[:, -1], lam[-1])]


def _args(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return Pair(jnp.asarray(rng.normal(size=(n, n + 2))), jnp.asarray(rng.normal(size=(n,)))), jax.random.PRNGKey(seed)


def _same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


NAMED = "_fn-[0-9a-f]*.xla"  # a program under its first name (the second, what it is, starts with p)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DNFA_SET_JAX_CACHE", str(tmp_path))
    programs.release()  # what another test's prefetch left is not this store's
    yield tmp_path / "programs"
    programs.release()


def _fresh():
    """A new Stored of _fn: what a new process would have (nothing in memory)."""
    return programs.Stored(_fn, static=("mode", "k"))


def test_compiled_and_stored_equal_jit_bit_for_bit(store, monkeypatch):
    p, key = _args()
    ref = jax.jit(_fn, static_argnames=("mode", "k"))(p, key, 2.5, mode="sum", k=3)
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)  # compiled here, written
    files = list(store.glob(NAMED))
    assert len(files) == 1
    st = _fresh()  # read from the store: nothing traced
    monkeypatch.setattr(programs.Stored, "_compile", lambda *a: pytest.fail("compiled again, not read"))
    _same(st(p, key, 2.5, mode="sum", k=3), ref)
    # the same program serves other values of the same avals
    p2, key2 = _args(seed=5)
    _same(st(p2, key2, -1.0, mode="sum", k=3), jax.jit(_fn, static_argnames=("mode", "k"))(p2, key2, -1.0, mode="sum", k=3))


def test_key_separates_shapes_statics_weak_types_and_source(store, monkeypatch):
    st = _fresh()
    p, key = _args()
    st(p, key, 2.5, mode="sum", k=3)
    st(p, key, 2.5, mode="max", k=3)  # another static
    st(p, key, 2.5, mode="sum", k=4)
    st(_args(n=7)[0], key, 2.5, mode="sum", k=3)  # another shape
    st(p, key, np.float64(2.5), mode="sum", k=3)  # strong float64 where a python float is weak
    assert len(list(store.glob("_fn-*.xla"))) == 10  # 5 programs, each under 2 names
    sig = next(iter(st._calls))[0]
    key_now = st._key(sig)
    monkeypatch.setattr(programs, "_fingerprint", lambda: b"another jax, or an edited dnfa")
    assert st._key(sig) != key_now


def test_the_cores_a_process_started_with_are_in_every_name(monkeypatch):
    """XLA:CPU compiles and runs a program for the threads its backend started with (the
    cores, or PJRT_NPROC: a program compiled on two cores gave a one-core sweep worker other
    last digits): programs part by that count, as the backend said it when it started."""
    for var in ("PJRT_NPROC", "NPROC"):
        monkeypatch.delenv(var, raising=False)
    if hasattr(os, "sched_getaffinity"):
        with monkeypatch.context() as m:
            m.setattr(os, "sched_getaffinity", lambda pid: {0})
            assert programs._threads_now() == 1
            m.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
            assert programs._threads_now() == 2
    with monkeypatch.context() as m:  # XLA's thread pool as the environment sets it, whatever the cores
        m.setenv("PJRT_NPROC", "1")
        assert programs._threads_now() == 1
        m.delenv("PJRT_NPROC")
        m.setenv("NPROC", "3")
        assert programs._threads_now() == 3
    # this process's backend has started: its names keep the count it started with,
    # whatever the process's cores or environment say now
    programs.backend_threads()  # started, if no test before started it
    started = programs._cores()
    with monkeypatch.context() as m:
        m.setenv("PJRT_NPROC", "7")
        assert programs._cores() == started == f"cores {programs.backend_threads()}"
        m.setattr(programs, "_backend_threads", 7)
        assert programs._cores() == "cores 7"
    programs._platform.cache_clear()
    here = programs._platform()
    try:
        monkeypatch.setattr(programs, "_cores", lambda: "cores 1000")
        programs._platform.cache_clear()
        assert programs._platform() != here
    finally:
        monkeypatch.undo()
        programs._platform.cache_clear()
    assert programs._platform() == here


def test_a_backend_started_with_n_threads_says_n_and_leaves_the_environment_as_it_was():
    """programs.start_backend sizes XLA:CPU's thread pool (PJRT_NPROC, only while the
    backend starts: a process started later does not inherit it), and the program names and
    env.json say that count, not the process's cores; a backend already started keeps its
    own."""
    code = ("import os, jax; from dnfa_cli import programs\n"
            "n = programs.start_backend(3)\n"
            "def name(t):\n"
            "    try: return open(f'/proc/self/task/{t}/comm').read().strip()\n"
            "    except OSError: return ''\n"
            "pool = sum(name(t) == 'tf_XLAEigen' for t in os.listdir('/proc/self/task'))"
            " if os.path.isdir('/proc/self/task') else 3\n"  # XLA:CPU's pool, by its threads' name
            "print(n, programs._cores(), programs.backend_threads(), os.environ.get('PJRT_NPROC'),"
            " programs.start_backend(5), pool)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "cores", "3", "3", "None", "3", "3"]


def test_an_edit_that_leaves_a_program_as_it_was_compiles_nothing(store, monkeypatch):
    """After an edit of dnfa (or an upgrade) every first name is new; a program whose
    lowering did not change is found by what it is, kept under its new name, not compiled."""
    p, key = _args()
    ref = _fresh()(p, key, 2.5, mode="sum", k=3)
    monkeypatch.setattr(programs, "_fingerprint", lambda: b"dnfa edited elsewhere")
    monkeypatch.setattr(programs.Stored, "_compile", lambda *a: pytest.fail("compiled again"))
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)
    assert len(list(store.glob(NAMED))) == 2  # the old name and the new one
    monkeypatch.setattr(programs.Stored, "_lower", lambda *a: pytest.fail("lowered again"))
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)  # by its new name: nothing traced


def test_a_torn_file_is_made_again(store):
    p, key = _args()
    ref = jax.jit(_fn, static_argnames=("mode", "k"))(p, key, 2.5, mode="sum", k=3)
    _fresh()(p, key, 2.5, mode="sum", k=3)
    (f,) = store.glob(NAMED)
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)
    assert programs._parts(f) is not None and len(f.read_bytes()) > len(good) // 2  # rewritten whole


def _old_layout(path: Path) -> None:
    """Rewrite a stored file in the layout before dnfa-xla2: 8 bytes, a pickle of (head,
    in_tree, out_tree), the executable."""
    import pickle

    head, (payload, in_tree, exe_out) = programs._parts(path)
    meta = pickle.dumps((head, in_tree, exe_out))
    path.write_bytes(len(meta).to_bytes(8, "little") + meta + payload)


def test_a_file_of_the_layout_before_is_read_by_the_run_and_kept_on(store, monkeypatch):
    """Programs stored before the dnfa-xla2 layout still serve: read by the run (not by a
    loader thread, whose reading must import nothing), and an edit of dnfa that finds one
    by what it is keeps it under the new name in the new layout; nothing is compiled."""
    p, key = _args()
    ref = jax.jit(_fn, static_argnames=("mode", "k"))(p, key, 2.5, mode="sum", k=3)
    _fresh()(p, key, 2.5, mode="sum", k=3)
    files = sorted(store.glob("*.xla"))  # its two names
    assert len(files) == 2 and all(f.read_bytes().startswith(programs._LAYOUT) for f in files)
    for f in files:
        _old_layout(f)
        assert programs._split(f) is None and programs._parts(f) is not None
    monkeypatch.setattr(programs.Stored, "_compile", lambda *a: pytest.fail("compiled again"))
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)  # by its name, in the layout before
    monkeypatch.setattr(programs, "_fingerprint", lambda: b"dnfa edited elsewhere")
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), ref)  # by what it is
    new = [f for f in store.glob(NAMED) if f.read_bytes().startswith(programs._LAYOUT)]
    assert len(new) == 1 and programs._split(new[0]) is not None


def test_the_loader_reads_a_file_without_importing_what_its_head_names(store, tmp_path, monkeypatch):
    """A loader thread reads the stored file while the run may still be importing dnfa's
    modules: what it unpickles (the executable's flat trees) must name none of them; the
    head, whose trees name their classes, is read by the run."""
    (tmp_path / "headmod_probe.py").write_text("from typing import NamedTuple\nclass P(NamedTuple):\n    a: int\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import headmod_probe

    tree = jax.tree_util.tree_structure(headmod_probe.P(a=1))
    flat = jax.tree_util.tree_structure([0, 0])
    f = store / "probe.xla"
    programs._write_blob(f, ("owner", (tree, (), ()), tree), (b"not an executable", flat, flat))
    monkeypatch.delitem(sys.modules, "headmod_probe")
    head, (payload, in_tree, exe_out) = programs._split(f)
    assert "headmod_probe" not in sys.modules
    assert payload == b"not an executable" and in_tree == flat and exe_out == flat
    programs._prefetch_one(f.name, programs._generation)  # a loader's whole read (the executable fails to load)
    assert "headmod_probe" not in sys.modules and programs._handoff[str(f)].result() is None
    got = programs._parts(f)[0][2]  # the run's read imports it (a class of its own, so compared as text)
    assert "headmod_probe" in sys.modules and str(got) == str(tree) == "PyTreeDef(CustomNode(namedtuple[P], [*]))"


def test_cache_off_compiles_in_memory_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DNFA_SET_JAX_CACHE", "")
    p, key = _args()
    _same(_fresh()(p, key, 2.5, mode="sum", k=3), jax.jit(_fn, static_argnames=("mode", "k"))(p, key, 2.5, mode="sum", k=3))
    assert programs.store_dir() is None and not list(tmp_path.iterdir())


def test_prefetch_and_record_with_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("DNFA_SET_JAX_CACHE", "")
    st = _fresh()
    p, key = _args()
    programs.prefetch("sig C")
    st(p, key, 2.5, mode="sum", k=3)
    programs.wait_prefetched()
    programs.record("sig C")
    assert not list(tmp_path.iterdir())


def test_prefetch_loads_what_the_last_run_of_the_signature_called(store, monkeypatch):
    st = _fresh()
    p, key = _args()
    programs.prefetch("sig A")
    ref = st(p, key, 2.5, mode="sum", k=3)
    programs.record("sig A")
    monkeypatch.setattr(programs, "_ALL", {st.name: st})
    programs.release()  # what a new process holds: nothing
    programs.prefetch("sig B")  # another signature: nothing recorded for it
    programs.wait_prefetched()
    assert not st._calls
    programs.record("sig B")
    assert not programs._handoff
    programs.prefetch("sig A")
    programs.wait_prefetched()
    (path, got), = programs._handoff.items()
    assert Path(path).parent == store and Path(path).name.startswith("_fn-")
    assert got.result() is not None  # loaded, not a load that failed
    assert not st._calls  # handed over when the run calls it
    monkeypatch.setattr(programs.Stored, "_load", lambda *a: pytest.fail("loaded again, not prefetched"))
    _same(st(p, key, 2.5, mode="sum", k=3), ref)
    programs.record("sig A")
    # a sweep worker's next run of the config: what it holds is not read again
    monkeypatch.setattr(programs, "_split", lambda path: pytest.fail(f"{path.name} read again, though held"))
    programs.prefetch("sig A")
    programs.wait_prefetched()
    programs.record("sig A")


# ----------------------------------------------------------------------------- the draws moved into programs
@pytest.mark.parametrize("init", ["gaussian", "torch"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_params_equal_the_eager_draws_bit_for_bit(init, dtype):
    """The formula of model.init_params as eager jax ops, one op at a time (what it was)."""
    sizes, scale = [5, 16, 16, 3], 0.37
    key = jax.random.PRNGKey(11)
    got = mdl.init_params(key, sizes, bias=True, init=init, init_scale=scale, dtype=dtype)
    for k, (fan_in, fan_out), layer in zip(jax.random.split(key, 3), zip(sizes[:-1], sizes[1:]), got):
        kW, kb = jax.random.split(k)
        if init == "gaussian":
            W = jax.random.normal(kW, (fan_out, fan_in), dtype) * (scale / math.sqrt(fan_in))
            b = jnp.zeros((fan_out,), dtype)
        else:
            bound = 1.0 / math.sqrt(fan_in)
            W = jax.random.uniform(kW, (fan_out, fan_in), dtype, -bound, bound) * scale
            b = jax.random.uniform(kb, (fan_out,), dtype, -bound, bound) * scale
        _same({"W": layer["W"], "b": layer["b"]}, {"W": W, "b": b})


def test_keys_and_data_equal_the_eager_draws_bit_for_bit():
    for seed in (0, 7, 2**31 - 1):
        _same(mdl.run_keys(seed), tuple(jax.random.split(jax.random.PRNGKey(seed), 3)))
    key = jax.random.fold_in(jax.random.PRNGKey(3), 0xDA7A)
    shapes = [(40, 6), (20, 6), (40, 1), (20, 1)]
    want = [np.asarray(jax.random.normal(k, s, dtype=jnp.float64)) for k, s in zip(jax.random.split(key, 4), shapes)]
    _same(data.gauss_split(key, *shapes), want)


def test_a_second_process_reads_every_program_and_gives_the_same_numbers(tmp_path):
    """Two fresh `dnfa train` processes on one cache: the first leaves no program it wanted
    unmade, the second exports nothing (the store's files are untouched), prefetches from
    the manifest the first wrote, and its result.json equals the first's, number for number."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("name: tiny\nseed: 3\ndata: {task: monomial, d: 5, n_train: 64, n_test: 32}\n"  # 2 layer shapes
                   "model: {depth: 1, width: 5}\ntrain: {epochs: 2, batch_size: 16}\nmetrics: {checkpoints: 1}\n")
    env = {**os.environ, "DNFA_CACHE_DIR": str(tmp_path / "cache")}

    def run(n):
        r = subprocess.run([sys.executable, "-m", "dnfa_cli.cli", "train", str(cfg), "--runs-dir", str(tmp_path / f"r{n}")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        (res,) = (tmp_path / f"r{n}").glob("tiny-*/result.json")
        out = json.loads(res.read_text())
        out.pop("seconds"), out.pop("created"), out.pop("finished")
        return out

    first = run(1)
    store = tmp_path / "cache" / "programs"
    # the programs the run put up as wanted (the second layer shape's statistics and random-W
    # draws) were made under the names it then called: none is left
    assert (store / "wanted").is_dir() and not list((store / "wanted").iterdir())
    files = {f: f.stat().st_mtime_ns for f in store.glob("*-[0-9a-f]*.xla")}  # by name (the manifest's)
    (manifest,) = (store / "runs").glob("*.txt")
    assert set(manifest.read_text().split()) == {f.name for f in files}
    assert run(2) == first
    assert {f: f.stat().st_mtime_ns for f in store.glob("*-[0-9a-f]*.xla")} == files
    # `dnfa train` starts loading them before it imports the rest of dnfa: held there (at its
    # prefetch, engine not yet imported) until the loaders are done, the run is handed every
    # one, and the loaders imported no module of dnfa's or optax's
    r = subprocess.run([sys.executable, "-c", _HANDED, str(cfg), str(tmp_path / "r3")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[-2] == f"{len(files)} False 2 []"


_HANDED = """
import importlib.abc, importlib.util, sys
from dnfa_cli import cli  # no JAX yet, as in `dnfa train`
seen = []
def held(prefetch):
    def first(signature):
        prefetch(signature)
        if not seen:  # dnfa train's own, before it imports engine: wait for the loaders there
            programs = sys.modules["dnfa_cli.programs"]
            before = set(sys.modules)
            programs.wait_prefetched()
            seen.append("dnfa_cli.engine" in sys.modules)
            seen.append(len(programs._pending))
            seen.append(sorted(m for m in set(sys.modules) - before if m.startswith(("dnfa_cli", "optax"))))
    return first
class Hold(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "dnfa_cli.programs":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.prefetch = held(module.prefetch)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hold())
sys.argv = ["dnfa", "train", sys.argv[1], "--runs-dir", sys.argv[2]]
try:
    cli.main()
except SystemExit as e:
    assert not e.code, e.code
from dnfa_cli import programs
print(programs._hits, *seen)
"""


_FRESH_PROCESS = """
import sys, numpy as np, jax, jax.numpy as jnp
import dnfa_cli
from dnfa_cli import programs
sys.path.insert(0, {tests!r})
from test_programs import _args, _fn
st = programs.Stored(_fn, static=("mode", "k"))
if sys.argv[1] == "read":
    st._compile = None  # a compile here would fail: the program must come from the file
out = st(*_args(), 2.5, mode="sum", k=3)
np.save(sys.argv[2], np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(out)]))
if sys.argv[1] == "read":  # LAPACK's routines came from scipy's two modules alone, and left it as it was
    assert "scipy.linalg" not in sys.modules and "scipy.linalg.cython_blas" not in sys.modules
    import scipy.linalg
    from scipy.linalg import cython_lapack
    assert scipy.linalg.cython_blas.__pyx_capi__ and cython_lapack.__pyx_capi__
    q, r = scipy.linalg.qr(np.eye(3) + 0.5)
    u, v = np.arange(3.0), np.ones(3)
    q1, r1 = scipy.linalg.qr_update(q, r, u, v)  # through cython_blas and cython_lapack
    np.testing.assert_allclose(q1 @ r1, np.eye(3) + 0.5 + np.outer(u, v), atol=1e-12)
"""


def test_a_fresh_process_runs_a_stored_decomposition(tmp_path):
    """An eigendecomposition read from the store in a process that has lowered none (its
    LAPACK routine is set up by hand, programs._custom_calls_ready: without it the process
    crashed) gives the numbers of the process that compiled it and of jax.jit here; the
    routines come from scipy's two Cython modules without importing scipy.linalg, which
    imports as usual afterwards."""
    code = _FRESH_PROCESS.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "DNFA_CACHE_DIR": str(tmp_path / "cache")}
    for step in ("compile", "read"):
        r = subprocess.run([sys.executable, "-c", code, step, str(tmp_path / f"{step}.npy")], capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 0, (step, r.returncode, r.stderr[-1500:])
    assert len(list((tmp_path / "cache" / "programs").glob(NAMED))) == 1
    ref = jax.jit(_fn, static_argnames=("mode", "k"))(*_args(), 2.5, mode="sum", k=3)
    want = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(ref)])
    np.testing.assert_array_equal(np.load(tmp_path / "compile.npy"), want)
    np.testing.assert_array_equal(np.load(tmp_path / "read.npy"), want)


@pytest.mark.parametrize("first", ["import jax\nimport dnfa_cli", "import dnfa_cli\nimport jax"])
def test_the_store_is_dnfas_cache_whichever_is_imported_first(first, tmp_path):
    code = first + "\nfrom dnfa_cli import programs\nprint(programs.store_dir())\n"
    env = {**os.environ, "DNFA_CACHE_DIR": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == str(tmp_path / "c" / "programs"), out.stderr[-500:]
    env["DNFA_CACHE_DIR"] = ""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "None", out.stderr[-500:]


_SERVED = """
import contextlib, sys, numpy as np, jax
import dnfa_cli
from dnfa_cli import programs
sys.path.insert(0, {tests!r})
from test_programs import _args, _fn, _same
p, key = _args()
ref = jax.jit(_fn, static_argnames=("mode", "k"))(p, key, 2.5, mode="sum", k=3)
st = programs.Stored(_fn, static=("mode", "k"))
_same(st(p, key, 2.5, mode="sum", k=3), ref)
store = programs.store_dir()
assert len(list(store.glob("*.xla"))) == 2  # under its name and under what the program is
ours = lambda: sorted(x.name for x in store.parent.iterdir() if x.name.startswith("jit_dnfa__fn"))
assert ours() == [], ours()  # compiled for the store, not given to jax's cache
# a jax cache written otherwise (by hand here) that holds the very program
sig = next(iter(st._calls))[0]
unshared, programs._unshared = programs._unshared, contextlib.nullcontext
assert st._compile(st._lower(sig)[0])[1] is True and len(ours()) == 1  # compiled, and now in jax's cache
assert st._compile(st._lower(sig)[0])[1] is False  # served by jax's cache: seen
programs._unshared = unshared
for f in store.glob("*.xla"):
    f.unlink()
_same(programs.Stored(_fn, static=("mode", "k"))(p, key, 2.5, mode="sum", k=3), ref)  # served, runs right
assert not list(store.glob("*.xla"))  # but not kept: its copy would lack its kernels
print("ok")
"""


def test_a_program_jax_cache_served_is_run_but_not_kept(tmp_path):
    """jax's persistent cache is not given the stored programs (a program it served
    serialises without its kernels and fails when the copy runs); should it hold one all
    the same, the cache-hit event marks it, and it is run but not kept."""
    code = _SERVED.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "DNFA_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]



def test_a_waiting_process_makes_the_programs_another_wants_next(store, monkeypatch):
    """Stored.ahead puts up the programs of the calls after the first as wanted. A process
    (a sweep's worker) that waits for another's lock makes them meanwhile, each under the
    name the wanting process reads; the entries go once made, and the programs give
    jax.jit's numbers, read with nothing compiled."""
    import fcntl
    import threading

    st = _fresh()
    calls = [((*_args(n), 2.5), {"mode": "sum", "k": 3}) for n in (4, 5, 6)]
    names = [st._key(st._sig(a, dict(kw))[1]) for a, kw in calls]
    st.ahead(calls)
    assert sorted(p.name for p in (store / "wanted").iterdir()) == sorted(names[1:])  # not the first: the caller's
    held = programs._lock_file(store, names[0])
    fcntl.flock(held, fcntl.LOCK_EX)  # as another process compiling the first program would
    entered = threading.Event()

    def wait_for_the_first():
        with programs._exclusive(store, names[0]):
            entered.set()

    t = threading.Thread(target=wait_for_the_first)
    t.start()
    for _ in range(600):
        if all((store / n).exists() for n in names[1:]) or not t.is_alive():
            break
        t.join(0.1)
    assert not entered.is_set()  # it helped while the lock was held ...
    os.close(held)
    t.join(30)
    assert entered.is_set()  # ... and went on once it was free
    assert all((store / n).exists() for n in names[1:]) and not (store / names[0]).exists()
    assert not list((store / "wanted").iterdir())
    monkeypatch.setattr(programs.Stored, "_compile", lambda *a: pytest.fail("compiled again, not read"))
    monkeypatch.setattr(programs.Stored, "_lower", lambda *a: pytest.fail("lowered, not read by name"))
    jit = jax.jit(_fn, static_argnames=("mode", "k"))
    for a, kw in calls[1:]:
        _same(_fresh()(*a, **kw), jit(*a, **kw))


def test_a_wanted_program_named_otherwise_is_left_to_its_owner(store, monkeypatch):
    """A wanted program this process would name otherwise (another version of dnfa, other
    XLA flags, another device) is not made by it: its owner makes it."""
    st = _fresh()
    calls = [((*_args(n), 2.5), {"mode": "sum", "k": 3}) for n in (4, 5)]
    with monkeypatch.context() as m:
        m.setattr(programs, "_fingerprint", lambda: b"another dnfa")
        st.ahead(calls)
    (entry,) = (store / "wanted").iterdir()
    assert programs._help(store) is False
    assert entry.exists() and not list(store.glob(NAMED))



@pytest.mark.parametrize("depth", [1, 2])
def test_the_draws_a_run_puts_up_at_its_start_are_those_it_makes(store, tmp_path, depth):
    """engine.ahead puts up the random-W draws of a run from its config alone (a sweep's
    run start, before data and parameters exist); measure.random_baselines then makes
    each under its wanted name, and nothing is left wanted."""
    from dnfa_cli import config, engine, measure

    p = tmp_path / "t.yaml"
    p.write_text(f"name: t\nseed: 1\ndata: {{task: monomial, d: 3, n_train: 16, n_test: 8}}\n"
                 f"model: {{depth: {depth}, width: 4}}\ntrain: {{epochs: 1, batch_size: 4}}\n")
    cfg = config.load_config(p).base
    programs.release()
    engine.ahead(cfg)
    wanted = sorted(e.name for e in (store / "wanted").iterdir())
    assert len(wanted) == min(depth + 1, 3) and all(w.startswith("_draw_terms-") for w in wanted)  # one per shape
    params = mdl.init_params(jax.random.PRNGKey(0), [3] + [4] * depth + [1], bias=False, init="gaussian",
                             init_scale=1.0, dtype="float32")
    measure.random_baselines(cfg, params)
    assert all((store / w).exists() for w in wanted) and not list((store / "wanted").iterdir())
    programs.release()


_SPREAD_CHILD = """
import json, os, sys, threading
cores = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, cores[:1])  # as sweep._worker_init pins a worker
if sys.argv[1] == "worker":
    os.environ["DNFA_SPREAD_COMPILES"] = ",".join(map(str, cores))
from dnfa_cli import programs
stop = threading.Event()
tids = []
def idle():
    tids.append(threading.get_native_id())
    stop.wait()
threading.Thread(target=idle).start()
while not tids:
    pass
aff = lambda t=0: sorted(os.sched_getaffinity(t))
with programs._spread():
    during = {"compiling": aff(), "other": aff(tids[0])}
    threading.Thread(target=idle).start()  # a thread started during the compile
    while len(tids) < 2:
        pass
after = {"compiling": aff(), "other": aff(tids[0]), "started during": aff(tids[1])}
stop.set()
print(json.dumps({"cores": cores, "during": during, "after": after}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="needs two cores and Linux affinity")
@pytest.mark.parametrize("who", ["worker", "not a worker"])
def test_a_pinned_worker_spreads_its_compiles_over_the_sweeps_cores(who):
    """While a sweep's worker (pinned to one core) compiles, its other threads (XLA's
    compile pool) may run on every core of the sweep; the compiling thread stays on its own
    core, and every thread, even one started meanwhile, is pinned back after (the run
    computes where the worker was pinned). Outside a worker nothing moves."""
    r = subprocess.run([sys.executable, "-c", _SPREAD_CHILD, who], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    got = json.loads(r.stdout)
    one, every = got["cores"][:1], got["cores"]
    assert got["during"] == {"compiling": one, "other": every if who == "worker" else one}
    assert got["after"] == {"compiling": one, "other": one, "started during": one}
