"""dnfa: train MLPs in JAX and measure the Deep Neural Feature Ansatz and its tight-frame
reformulation at checkpoints (see docs/SCIENCE.md)."""
import os

# numpy's BLAS only serves the k x k statistics; multi-threaded OpenBLAS spin-waits, and
# with two processes on 2 cores one 1024 x 1024 eigh went from 0.12 s to 1.45 s (0.17 s
# single-threaded, alone or not). Set before numpy loads; an explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402

# float64 metrics need x64; every training array is given its dtype explicitly, so this
# changes no training numbers (float32 stays float32).
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
