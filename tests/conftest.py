import sys
from pathlib import Path

# tests/reference_stats.py, the independent numpy reference, is imported by name
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """The suite compiles hundreds of distinct XLA programs in one process; without this it
    reaches the kernel's memory-map limit and the next compile segfaults (see
    dnfa_cli.engine.release_compiled_if_crowded)."""
    yield
    from dnfa_cli import engine

    engine.release_compiled()
