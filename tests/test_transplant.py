"""Layer transplants (model.init_from): the layer a run starts from is the source run's
final matrix (or its spectrum with other singular vectors), sources are planned and run
first, bad input is one line before anything trains, and a killed sweep resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import config, engine, runs
from dnfa_cli import model as mdl
from dnfa_cli import sweep as sw

BASE = {"name": "src", "seed": 4,
        "data": {"task": "monomial", "d": 5, "n_train": 48, "n_test": 16, "seed": 0},
        "model": {"depth": 2, "width": 7, "activation": "tanh", "bias": True, "init": "torch"},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01,
                  "dtype": "float64"},
        "metrics": {"checkpoints": 0, "samples": 48}}


def _with(raw, **over):
    raw = json.loads(json.dumps(raw))
    for k, v in over.items():
        config._set_dotted(raw, k, v)
    return raw


def _npz(root, rid, step=None):
    d = Path(root) / rid / "checkpoints"
    f = sorted(d.glob("step_*.npz"))[-1] if step is None else d / f"step_{step:07d}.npz"
    with np.load(f) as z:
        return {k: z[k] for k in z.files}


def _bits(a):
    return a.dtype, a.shape, a.tobytes()


def test_a_trained_transplant_starts_from_the_source_matrix_and_keeps_it_frozen(tmp_path):
    src = config.validate(BASE)
    assert engine.execute([src], tmp_path)[0]["status"] == "ok"
    cfg = config.validate(_with(BASE, **{"seed": 3, "model.init_from": {"layers": [2]},
                                         "train.freeze": [2]}))
    assert config.source_id(cfg) == src.run_id  # seed 3 + seed_offset 1: the source's seed 4
    assert engine.execute([cfg], tmp_path)[0]["status"] == "ok"
    theirs, first, last = _npz(tmp_path, src.run_id), _npz(tmp_path, cfg.run_id, 0), _npz(tmp_path, cfg.run_id)
    for k in ("W2", "b2"):
        assert _bits(first[k]) == _bits(theirs[k]) and _bits(last[k]) == _bits(theirs[k]), k
    # the other layers are the run's own initialisation, and they trained
    own = mdl.init_params(mdl.run_keys(3)[0], [5, 7, 7, 1], bias=True, init="torch", init_scale=1.0, dtype=jnp.float64)
    for l in (1, 3):
        np.testing.assert_array_equal(first[f"W{l}"], np.asarray(own[l - 1]["W"]))
        assert not np.array_equal(last[f"W{l}"], first[f"W{l}"])


def test_a_spectrum_transplant_keeps_the_singular_values_and_draws_the_vectors(tmp_path):
    src = config.validate(BASE)
    engine.execute([src], tmp_path)
    W = _npz(tmp_path, src.run_id)["W2"]
    U, s, Vt = np.linalg.svd(W)
    got = []
    for seed in (3, 5):  # two runs from one source: each draws its own vectors from its init key
        cfg = config.validate(_with(BASE, **{"seed": seed,
                                             "model.init_from": {"layers": [2], "keep": "spectrum", "seed": 4}}))
        engine.execute([cfg], tmp_path)
        M = _npz(tmp_path, cfg.run_id, 0)["W2"]
        Um, sm, Vmt = np.linalg.svd(M)
        np.testing.assert_allclose(sm, s, rtol=1e-12, atol=0)
        # matched singular vectors of a Haar frame are nowhere near the source's
        assert np.max(np.abs(np.sum(Um * U, axis=0))) < 0.99 and np.max(np.abs(np.sum(Vmt * Vt, axis=1))) < 0.99
        own_b = mdl.init_params(mdl.run_keys(seed)[0], [5, 7, 7, 1], bias=True, init="torch", init_scale=1.0,
                                dtype=jnp.float64)[1]["b"]
        np.testing.assert_array_equal(_npz(tmp_path, cfg.run_id, 0)["b2"], np.asarray(own_b))  # b: the run's own
        got.append(M)
    assert not np.allclose(got[0], got[1])


def test_the_source_id_is_in_the_run_id_and_old_ids_stay(tmp_path):
    plain = config.validate(BASE)
    assert plain.model.init_from is None and "init_from" not in json.dumps(plain.run_id)
    same = config.validate(_with(BASE, **{"seed": 3, "model.init_from": {"layers": [2]}}))
    # one source, three spellings, one id: same cell (seed 3 + 1), an explicit seed, its run id
    src_yaml = tmp_path / "src.yaml"
    src_yaml.write_text(json.dumps({**BASE, "seed": 99}))
    spellings = [{"layers": [2], "seed": 4}, {"layers": [2], "run": plain.run_id},
                 {"layers": [2], "config": "src.yaml", "seed_offset": 1}]
    for fr in spellings:
        c = config.validate(_with(BASE, **{"seed": 3, "model.init_from": fr}), "c.yaml", tmp_path)
        assert config.source_id(c) == plain.run_id and c.run_id == same.run_id, fr
    # a different source, or a different keep, is a different run
    for fr in ({"layers": [2], "seed_offset": 2}, {"layers": [2], "keep": "spectrum"}, {"layers": [1, 2]}):
        assert config.validate(_with(BASE, **{"seed": 3, "model.init_from": fr})).run_id != same.run_id, fr
    # the same cell's source is this config without init_from and train.freeze
    frozen = config.validate(_with(BASE, **{"seed": 3, "model.init_from": {"layers": [2]}, "train.freeze": [2]}))
    assert config.source_id(frozen) == plain.run_id
    # the resolved config is a fixed point
    assert config.validate(frozen.to_dict()) == frozen
    # --set (and a sweep) reach inside init_from
    f = tmp_path / "k.yaml"
    f.write_text(json.dumps(_with(BASE, **{"model.init_from": {"layers": [2]}})))
    got = config.load_config(f, ["model.init_from.keep=spectrum", "model.init_from.seed_offset=2"]).base
    assert got.model.init_from.keep == "spectrum" and config.source_seed(got) == BASE["seed"] + 2


def _two_cells(tmp_path, diverge=False):
    """A sweep file: per seed, a run with layer 2 transplanted from the next seed's plain
    run (planned by the sweep) and one from a source described by another file (a linear
    net whose float32 weights overflow within 9 steps of lr 1e10, if `diverge`)."""
    bad = {"train.lr": 1e10, "model.activation": "identity", "train.dtype": "float32"} if diverge else {}
    (tmp_path / "other.yaml").write_text(json.dumps(_with(BASE, **{"name": "other", **bad})))
    raw = _with(BASE, **{"name": "tp", "train.freeze": [2]})
    raw["sweep"] = {"method": "grid", "parameters": {
        "seed": {"values": [0, 1]},
        "model.init_from": {"values": [{"layers": [2], "keep": "trained"},
                                       {"layers": [2], "keep": "trained", "config": "other.yaml"}]}}}
    f = tmp_path / "tp.yaml"
    f.write_text(json.dumps(raw))
    return f


def test_a_sweep_plans_the_sources_first_and_a_failed_source_fails_its_runs_unstarted(tmp_path):
    f = _two_cells(tmp_path, diverge=True)
    prep = sw.prepare([f], runs_dir=tmp_path / "runs")
    ids = [c.run_id for c in prep.plan.configs]
    assert len(ids) == 4 + 2 + 2  # 2 seeds x 2 sources, the next seeds' plain runs, the other file's
    for c in prep.plan.configs:
        if c.model.init_from is not None:
            assert ids.index(config.source_id(c)) < ids.index(c.run_id)
    s = sw.run(prep, sw.Options(workers=1))
    root = tmp_path / "runs"
    for c in prep.plan.configs:
        st = runs.result_status(root, c.run_id)
        if c.model.init_from is not None and c.model.init_from.config is not None:
            assert st is None  # never started: nothing written, a later sweep tries again
        else:
            assert st == ("diverged" if c.name == "other" else "ok"), c.run_id
    rec = json.loads(s.record.read_text())
    bad = [r for r in rec["runs"] if r["status"] == "failed"]
    assert len(bad) == 2 and all("ended diverged: no trained layer to take" in r["error"] for r in bad)


def _dnfa(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_transplants_are_one_line_exit_2_before_anything_trains(tmp_path):
    (tmp_path / "src.yaml").write_text(json.dumps(BASE))
    wide = _with(BASE, **{"name": "wide", "model.width": 9})
    (tmp_path / "wide.yaml").write_text(json.dumps(wide))
    cases = {
        "layer.yaml": (_with(BASE, **{"model.init_from": {"layers": [4]}}),
                       "model.init_from.layers = [4]: layer 4 does not exist: the net has 3 layers"),
        "norun.yaml": (_with(BASE, **{"model.init_from": {"layers": [1], "run": "src-0123456789"}}),
                       "source run src-0123456789 has not been trained"),
        "untrained.yaml": (_with(BASE, **{"name": "u", "model.init_from": {"layers": [1], "config": "src.yaml"}}),
                           "has not been trained"),
        "shape.yaml": (_with(BASE, **{"model.init_from": {"layers": [2], "config": "wide.yaml"}}),
                       "layer 2 is 7 x 7 here but 9 x 9 in source run wide-"),
    }
    for name, (raw, _) in cases.items():
        (tmp_path / name).write_text(json.dumps(raw))
    tries = [(cmd, name, msg) for name, (_, msg) in cases.items() for cmd in ("train", "sweep")
             if not (cmd == "sweep" and name == "untrained.yaml")]  # a sweep trains that source first
    tries.append(("sweep", "self.yaml", "sources nested more than 8 deep"))
    (tmp_path / "self.yaml").write_text(json.dumps(_with(BASE, **{"model.init_from": {"layers": [1], "config": "self.yaml"}})))
    for cmd, name, msg in tries:
        before = set(os.listdir(tmp_path))
        r = _dnfa(cmd, name, "--runs-dir", "runs", cwd=tmp_path, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], (cmd, name, r.stderr[-600:])
        assert set(os.listdir(tmp_path)) - before <= {"runs"}, (cmd, name)
        assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir()), (cmd, name)


def _wait_for(path, text, timeout=240):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_killed_sweep_of_sources_and_transplants_resumes_with_every_transplant_from_its_source(tmp_path):
    """Killed (SIGKILL) after its first run, then resumed with two workers and seed batching
    (the two seeds of a transplant train as one program, each from its own source): runs
    finished before the kill are kept as they are, and every transplant starts from its
    source's final matrix."""
    raw = json.loads(_two_cells(tmp_path).read_text())
    raw["train"]["epochs"] = 40
    raw["sweep"]["parameters"]["seed"]["values"] = [0, 1, 2]
    (tmp_path / "tp.yaml").write_text(json.dumps(raw))
    args = [sys.executable, "-m", "dnfa_cli.cli", "sweep", "tp.yaml", "--runs-dir", "runs", "--workers", "2",
            "--seed-batch", "on"]
    dry = subprocess.run(args + ["--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "12 runs, 0 done" in dry.stdout and "seed batching: 8 runs in 4 vmapped programs" in dry.stdout, dry.stdout
    err = tmp_path / "err.txt"
    with open(err, "w") as fe:
        s = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fe, start_new_session=True)
        _wait_for(err, "[1/")
        os.killpg(s.pid, signal.SIGKILL)
        s.wait()
    root = tmp_path / "runs"
    done = {p.parent.name: p.read_bytes() for p in root.glob("*/result.json")}
    assert 0 < len(done) < 12
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-800:]
    assert f"skipped {len(done)} (already done)" in r.stdout
    for rid, text in done.items():
        assert (root / rid / "result.json").read_bytes() == text, rid  # not trained again
    results = [json.loads(p.read_text()) for p in root.glob("*/result.json")]
    assert len(results) == 12 and {x["status"] for x in results} == {"ok"}
    for x in results:
        cfg = config.Config.model_validate(x["config"])
        if cfg.model.init_from is None:
            continue
        theirs, mine = _npz(root, config.source_id(cfg)), _npz(root, x["run_id"])
        assert _bits(mine["W2"]) == _bits(theirs["W2"]) and _bits(mine["b2"]) == _bits(theirs["b2"]), x["run_id"]


def test_tied_init_starts_the_hidden_to_hidden_layers_equal_and_trains_them_apart(tmp_path):
    raw = _with(BASE, **{"model.depth": 3, "model.tied_init": True})
    cfg = config.validate(raw)
    assert engine.execute([cfg], tmp_path)[0]["status"] == "ok"
    first, last = _npz(tmp_path, cfg.run_id, 0), _npz(tmp_path, cfg.run_id)
    # the untied draw of the same seed: layers 1, 2 and the read-out are it, layer 3 is layer 2
    own = mdl.init_params(mdl.run_keys(4)[0], [5, 7, 7, 7, 1], bias=True, init="torch", init_scale=1.0, dtype=jnp.float64)
    for l, src in ((1, 1), (2, 2), (3, 2), (4, 4)):
        for p in ("W", "b"):
            np.testing.assert_array_equal(first[f"{p}{l}"], np.asarray(own[src - 1][p]))
    assert not np.array_equal(own[2]["W"], own[1]["W"])
    assert not np.array_equal(last["W3"], last["W2"])  # tied at the start only
    # off by default, and then absent from the run id: the ids of every earlier run stay
    plain = _with(BASE, **{"model.depth": 3})
    assert config.validate(_with(plain, **{"model.tied_init": False})).run_id == config.validate(plain).run_id
    assert cfg.run_id != config.validate(plain).run_id


@pytest.mark.parametrize("model", [{"depth": 2, "width": 7}, {"widths": [7, 7, 8]}])
def test_tied_init_needs_two_hidden_to_hidden_layers_of_one_shape(model):
    raw = _with(BASE, **{"model": {**model, "tied_init": True}})
    with pytest.raises(config.ConfigError, match="tied_init needs"):
        config.validate(raw)
