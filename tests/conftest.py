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


@pytest.fixture(autouse=True, scope="session")
def _one_backend_for_the_session():
    """JAX's backend started once, with this process's cores, before any test: an in-process
    `dnfa train` of a small run would otherwise start it with one thread
    (programs.start_backend), and every test after it would compute with the threads of
    whichever test happened to run first."""
    from dnfa_cli import programs

    programs.start_backend(None)
    yield
