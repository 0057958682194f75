"""XLA compile options of kept programs (programs.ELEMENTAL): the float64 statistics of a
checkpoint compile with XLA:CPU's elemental emitters, training and its data with XLA's
defaults; the option is in the program's names; a jaxlib that does not know it compiles
without it."""
import jax
import numpy as np
import pytest

from dnfa_cli import baselines, data, grams, model, programs, stats, train
from dnfa_cli.programs import ELEMENTAL, Stored


def _pair(k: int = 20):
    rng = np.random.default_rng(0)
    return tuple(g @ g.T for g in (rng.standard_normal((k, k)) for _ in range(2)))


def test_a_program_kept_with_the_elemental_option_gives_the_elemental_emitters_numbers(tmp_path, monkeypatch):
    """offdiag_pearson and traceless_pearson of one pair sum their reductions in another
    order under the two emitters (their last digits part): a Stored program with ELEMENTAL
    gives XLA's compile with that option, digit for digit, and one without gives jax.jit's,
    each kept under names of its own (by call and by program) and read back as it was."""
    monkeypatch.setenv("DNFA_SET_JAX_CACHE", str(tmp_path))  # a store of the test's own
    A, B = _pair()

    def fn(A, B):
        return stats.offdiag_pearson(A, B), stats.traceless_pearson(A, B)

    lowered = jax.jit(fn).lower(A, B)
    elemental = [float(x) for x in lowered.compile(compiler_options=ELEMENTAL)(A, B)]
    fusion = [float(x) for x in lowered.compile()(A, B)]
    if elemental == fusion:
        pytest.skip("the two emitters give these numbers alike on this jaxlib: nothing to tell them apart")
    assert [float(x) for x in Stored(fn, options=ELEMENTAL)(A, B)] == elemental
    assert [float(x) for x in Stored(fn)(A, B)] == fusion == [float(x) for x in jax.jit(fn)(A, B)]
    assert len(list((tmp_path / "programs").glob("fn-*.xla"))) == 4  # neither found the other's
    monkeypatch.setattr(programs.Stored, "_compile", lambda *a: pytest.fail("compiled again, not read"))
    assert [float(x) for x in Stored(fn, options=ELEMENTAL)(A, B)] == elemental  # a fresh process's read
    assert [float(x) for x in Stored(fn)(A, B)] == fusion


def test_the_option_is_in_the_names_and_an_unknown_one_compiles_without_it(monkeypatch):
    A, B = _pair(4)

    def fn(A, B):
        return stats.pearson(A, B)

    plain, elemental = Stored(fn), Stored(fn, options=ELEMENTAL)
    sig = plain._sig((A, B), {})[1]
    assert plain._key(sig) != elemental._key(sig)  # a store never serves one for the other
    lowered = plain._lower(sig)[0]
    assert programs._program_key(lowered) != programs._program_key(lowered, ELEMENTAL)
    assert programs._program_key(lowered, {}) == programs._program_key(lowered)
    monkeypatch.setattr(programs, "_UNKNOWN_OPTIONS", set())
    compiled = programs._compile_with(lowered, {"xla_no_such_option_of_dnfa": True})
    assert programs._UNKNOWN_OPTIONS == {"xla_no_such_option_of_dnfa"}  # asked once, then left out
    assert float(compiled(A, B)[0]) == float(jax.jit(fn)(A, B))


def test_only_a_checkpoints_float64_statistics_compile_with_the_elemental_emitters():
    """An ulp in a training step grows along the trajectory (an Adam run in float32 ended with
    other weights): training, its data and the initial weights keep XLA's default emitters."""
    assert stats.layers_batch.options == grams._grams_runs.options == baselines._draw_terms.options == ELEMENTAL
    kept = [st for st in programs._ALL.values() if st.options and st.name.startswith("dnfa_cli.")]
    assert {st.name for st in kept} == {stats.layers_batch.name, grams._grams_runs.name, baselines._draw_terms.name}
    for st in (train.epoch_fn, train.steps_fn, train._opt_init, model._init_draws, data._gauss_split):
        assert st.options == {}
