"""dnfa: train MLPs in JAX and measure the Deep Neural Feature Ansatz and its tight-frame
reformulation at checkpoints (see docs/SCIENCE.md)."""
import os

# BLAS/LAPACK (the eigendecompositions) gets the cores this process may use - all of them
# for `dnfa train` (0.11 s against 0.15 s for a 1024 x 1024 eigh on 2 cores) - set before
# numpy loads; an explicit setting wins. Sweep workers are started with their share
# (sweep.LocalExecutor): two processes each spinning 2 OpenBLAS threads on 2 cores made
# one eigh 12x slower.
_cores = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402

# float64 metrics need x64; every training array is given its dtype explicitly, so this
# changes no training numbers (float32 stays float32).
jax.config.update("jax_enable_x64", True)

# Compiled programs are kept on disk, so a run pays XLA's compile (about 1.5 s for the
# statistics of each layer shape) once per machine, not once per process.
# DNFA_CACHE_DIR="" turns it off.
_cache = os.environ.get("DNFA_CACHE_DIR", os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "dnfa", "jax"))
if _cache:
    try:
        _cache = os.path.expanduser(_cache)
        os.makedirs(_cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", _cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except OSError:  # a read-only home: compile every time, as before
        pass

__version__ = "0.2.0"
