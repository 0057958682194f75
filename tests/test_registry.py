"""The registry of statistics (statnames.REGISTRY) against what is computed and shown: every key
a run writes is registered, every registered key is written, the numpy reference names
the same per-layer keys, the report's lists are drawn from it, and docs/SCIENCE.md shows
its meanings."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_stats as ref

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import baselines as bl
from dnfa_cli import config, data, stats, train
from dnfa_cli import statnames as sn
from dnfa_cli import grams as gm
from dnfa_cli import report as rp

ROOT = Path(__file__).resolve().parent.parent
ROW = {"layer", "shape", "trivial"}  # every layer row's bookkeeping, not statistics


def _boot(names):
    return {f"{n}_{e}" for n in names for e in ("lo", "hi")}


def _layer(B=3, k_out=5, k_in=4, key=0):
    W = np.asarray(jax.random.normal(jax.random.PRNGKey(key), (k_out, k_in), jnp.float64))
    A = np.asarray(jax.random.normal(jax.random.PRNGKey(key + 1), (k_out, k_out), jnp.float64))
    G = A @ A.T
    boot = np.stack([G * (1 + 0.1 * b) for b in range(B)]) if B else None
    g = gm.Grams(agop=[W.T @ G @ W], pgop=[G], jbar=[np.zeros((2, k_in))], gbar=[np.zeros((2, k_out))],
                 pcov=[np.eye(k_out)], pgop_boot=None if boot is None else [boot], n=10, agop_c=[W.T @ G @ W],
                 pgop_c=[G], gdev=[np.trace(G)])
    return W, 0.5 * W, g


def test_the_reference_and_the_device_compute_exactly_the_registered_layer_keys():
    W, W0, g = _layer()
    f = bl.draw(jax.random.PRNGKey(3), W.shape)
    facs = [tuple(np.asarray(a[d]) for a in f) for d in range(bl.N_DRAWS)]
    row, _ = stats.layer_stats(W, W0, g, 0, trivial=False, rel_tol=1e-12, terms=bl.terms(f))
    want, _ = ref.layer_stats(W, W0, g, 0, trivial=False, rel_tol=1e-12, factors=facs)
    registered = set(sn.names("layer")) | _boot(sn.shown("ci"))
    assert set(want) - ROW == registered  # the reference names its keys by hand
    assert set(row) - ROW == registered


def test_a_run_writes_every_registered_key_and_nothing_else():
    cfg = config.validate({"data": {"task": "monomial", "d": 6, "n_train": 64, "n_test": 32},
                           "model": {"depth": 2, "width": 8, "activation": "tanh"},
                           "train": {"epochs": 1, "batch_size": 32},
                           "metrics": {"checkpoints": 0, "samples": 40, "bootstrap": 5, "published": "all",
                                       "swap": "all", "swap_uv": "all"}})
    out = train.train(cfg, data.make_dataset(cfg))
    assert out.status == "ok"
    every = set(sn.REGISTRY) | _boot(sn.shown("ci"))
    for ck in out.checkpoints:
        for L in ck["layers"]:
            assert set(L) - ROW == every, (ck["step"], L["layer"])


def test_a_statistic_missing_from_the_registry_fails_the_layer_program(monkeypatch):
    """Today's registry drives the program, so an unregistered key can only come from a
    function that returns more than its entries, or from a key dropped from the registry."""
    W, W0, g = _layer(B=0, k_out=3, k_in=7, key=5)
    terms = bl.draw_terms(jax.random.PRNGKey(1), W.shape)
    fns = list(stats._LAYER_FNS)
    keys, fn = fns[1]
    monkeypatch.setattr(stats, "_LAYER_FNS", fns[:1] + [(keys + ("not_registered",), fn)] + fns[2:])
    jax.clear_caches()
    with pytest.raises(ValueError, match="returned 1 values for its 2 statistics"):
        stats.layer_stats(W, W0, g, 0, trivial=False, rel_tol=1e-12, terms=terms)
    monkeypatch.setattr(stats, "_LAYER_FNS", fns)
    monkeypatch.setattr(stats, "ROW_ORDER", stats.ROW_ORDER + ("registered_only",))
    jax.clear_caches()
    with pytest.raises(KeyError, match="registered but not computed: \\['registered_only'\\]"):
        stats.layer_stats(W, W0, g, 0, trivial=False, rel_tol=1e-12, terms=terms)
    jax.clear_caches()


def test_a_function_of_an_unregistered_key_fails_and_every_registered_key_has_one_function():
    with pytest.raises(ValueError, match="computes 'not_registered', which is not a per-layer statistic"):
        stats.statistic("not_registered")(lambda c: 0.0)
    with pytest.raises(ValueError, match="computes 'published_cosine_a1', which is not a per-layer statistic"):
        stats.statistic("published_cosine_a1")(lambda c: 0.0)  # counterfactual.py's, not a layer context's
    with pytest.raises(ValueError, match="computes 'kta', which another function computes already"):
        stats.statistic("kta")(lambda c: 0.0)
    computed = [k for keys, _ in stats._LAYER_FNS for k in keys]
    assert tuple(computed) == sn.names("layer") == stats.ROW_ORDER  # each once, in the registry's order


def test_every_entry_is_complete_and_every_display_is_drawn_from_the_registry():
    for name, e in sn.REGISTRY.items():
        assert e.name == name and e.meaning and "\n" not in e.meaning
        assert e.kind in ("float", "int", "edge") and e.family in ("layer", "published", "swap", "swap_uv")
        for display, pos in e.shows:
            assert display in sn.DISPLAYS and isinstance(pos, int)
    for d in sn.DISPLAYS:  # positions 1..n, none twice
        pos = sorted(dict(e.shows)[d] for e in sn.REGISTRY.values() if d in dict(e.shows))
        assert pos == list(range(1, len(pos) + 1)), d
    assert set(stats._BOOT_FNS) == set(sn.shown("ci"))
    assert rp.HEADLINE == sn.shown("headline") and rp.CI == sn.shown("ci")
    assert rp.SWEEP_STATS == sn.shown("sweep") and rp.COMPARE_STATS == sn.shown("compare")
    assert rp.TERMINAL_STATS[:-2] == sn.shown("terminal")
    assert stats.INT_KEYS == ("w_rank", "w_rank90", "iso_dim90")


def test_docs_science_shows_the_registry():
    assert sn.markdown_table() in (ROOT / "docs" / "SCIENCE.md").read_text()
