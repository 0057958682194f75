"""dnfa: train MLPs in JAX and measure the Deep Neural Feature Ansatz and its tight-frame
reformulation at checkpoints (see docs/SCIENCE.md)."""
import os
import sys

# numpy's BLAS/LAPACK runs one thread (set before numpy loads; an explicit setting wins):
# it only serves the eigenvalues of pgop, and with two, OpenBLAS's spinning threads slowed
# XLA's matrix products (README, "How the statistics are computed"). Sweep workers are
# started with their share of the cores (sweep.LocalExecutor).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# jax's settings for dnfa, made without importing jax, so that `dnfa --help`, `dnfa stats`
# and `dnfa ls` start without it: jax reads them from the environment when the modules that
# compute first import it; were jax imported already, they are set on it directly.
# - float64 metrics need x64; every training array is given its dtype explicitly, so this
#   changes no training numbers (float32 stays float32).
# - Compiled programs are kept on disk, so a run pays XLA's compile (about 1.5 s for the
#   statistics of each layer shape) once per machine, not once per process.
#   DNFA_CACHE_DIR="" turns it off. A directory that exists but takes no files (a read-only
#   mount, another user's) would make JAX warn at every compile, a dozen lines per run: it is
#   tried once here, and if it fails the cache is off, with one note, for this process and
#   the workers it starts.
_JAX = {"jax_enable_x64": True}

# XLA:CPU's matrix products run single-threaded (Eigen's) in every dnfa process, as they
# always did in a sweep's workers (one core each: with its thread pool a worker's products
# cost 18% more, README "Start-up"). One setting everywhere, and a sweep gives the numbers
# it gave before (programs.py keys programs by XLA_FLAGS, and by the cores a process
# started with). XLA reads its flags when its backend starts, not when jax is imported; a
# value set by the user wins.
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
_cache = os.environ.get("DNFA_CACHE_DIR", os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "dnfa", "jax"))


def _writable_dir(path: str) -> bool:
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".dnfa-probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


if _cache:
    _cache = os.path.expanduser(_cache)
    if _writable_dir(_cache):
        _JAX.update(jax_compilation_cache_dir=_cache, jax_persistent_cache_min_compile_time_secs=0.0)
    else:  # a read-only home: compile every time, as before
        if "DNFA_CACHE_DIR" in os.environ or os.path.exists(_cache):
            print(f"note: compilation cache {_cache} is not writable: compiling in every process "
                  f"(DNFA_CACHE_DIR names another; empty turns the cache off)", file=sys.stderr)
        os.environ["DNFA_CACHE_DIR"] = ""  # the sweep's workers: no second note
if "jax" in sys.modules:
    for _k, _v in _JAX.items():
        sys.modules["jax"].config.update(_k, _v)
else:
    # a cache dir a dnfa parent process put there (not the user's) goes when this one has none
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") == os.environ.get("DNFA_SET_JAX_CACHE"):
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ.update({_k.upper(): str(int(_v) if isinstance(_v, bool) else _v) for _k, _v in _JAX.items()})
# dnfa's cache folder, "" when off, whichever was imported first (programs.store_dir keeps
# its exported programs there)
os.environ["DNFA_SET_JAX_CACHE"] = _JAX.get("jax_compilation_cache_dir", "")

__version__ = "0.2.0"


def __getattr__(name):
    """`from dnfa_cli import load_runs`: frame.py (and with it pandas) is imported on first
    use only, so `dnfa train` does not pay for pandas at start-up."""
    if name in ("load_runs", "load_matrices"):
        from . import frame

        return getattr(frame, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
