"""dnfa: train MLPs in JAX and measure the Deep Neural Feature Ansatz and its tight-frame
reformulation at checkpoints (see SCIENCE.md)."""
import jax

# float64 metrics need x64; every training array is given its dtype explicitly, so this
# changes no training numbers (float32 stays float32).
jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
