"""`dnfa train` through the real CLI: the run-directory contract and every bad input."""
import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dnfa_cli import config
from dnfa_cli.cli import app

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"task": "monomial", "d": 6, "n_train": 64, "n_test": 32},
    "model": {"depth": 2, "width": 12, "activation": "relu"},
    "train": {"lr": 0.05, "batch_size": 16, "epochs": 3},
    "metrics": {"checkpoints": 2, "samples": 40},
}
LAYER_KEYS = {"layer", "shape", "trivial", "pearson_a1", "pearson_a05", "cosine_a1", "cosine_a05", "alpha_star",
              "tightness", "tightness_range", "tightness_top", "w_rank90", "iso_dev", "iso_dev_range", "eff_rank",
              "cond", "left_pearson"}

runner = CliRunner()


def _write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg) if isinstance(cfg, dict) else cfg)
    return p


def _train(tmp_path, *args):
    return runner.invoke(app, ["train", *map(str, args), "--runs-dir", str(tmp_path / "runs")])


def test_train_writes_the_whole_contract(tmp_path):
    p = _write(tmp_path, TINY)
    r = _train(tmp_path, p)
    assert r.exit_code == 0, r.output
    rid = config.load_config(p).base.run_id
    d = tmp_path / "runs" / rid
    assert f"run {rid}" in r.stdout and "pearson_a05" in r.stdout and "tightness_range" in r.stdout
    res = json.loads((d / "result.json").read_text())
    assert res["schema"] == 1 and res["run_id"] == rid and res["status"] == "ok" and res["error"] is None
    assert res["config"] == config.load_config(p).base.to_dict()
    assert yaml.safe_load((d / "config.yaml").read_text()) == res["config"]
    env = json.loads((d / "env.json").read_text())
    assert env["jax_backend"] == "cpu" and env["packages"]["jax"] and env["host"] and "git_commit" in env
    steps = [c["step"] for c in res["checkpoints"]]
    assert steps[0] == 0 and steps[-1] == 3 * 4 and steps == sorted(set(steps))
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert lines == res["checkpoints"]
    for ck in res["checkpoints"]:
        assert {"step", "epoch", "train_loss", "test_loss", "test_acc"} <= set(ck)
        assert [L["layer"] for L in ck["layers"]] == [1, 2, 3]
        assert [L["trivial"] for L in ck["layers"]] == [False, False, True]
        assert [L["shape"] for L in ck["layers"]] == [[12, 6], [12, 12], [1, 12]]
        for L in ck["layers"]:
            assert LAYER_KEYS <= set(L)
        z = np.load(d / "checkpoints" / f"step_{ck['step']:07d}.npz")
        assert sorted(z.files) == ["W1", "W2", "W3", "b1", "b2", "b3"]
        assert z["W1"].shape == (12, 6) and not z["b2"].any()  # bias off: zeros, per the contract
    # the stored numbers are those of the stored weights: recompute layer 1 at the end
    import reference_stats as ref

    from dnfa_cli import data, measure
    from dnfa_cli import grams as gm

    cfg = config.load_config(p).base
    ds = data.make_dataset(cfg)
    z = np.load(d / "checkpoints" / f"step_{steps[-1]:07d}.npz")
    params = [{"W": z[f"W{i}"]} for i in (1, 2, 3)]
    X = ds.X_train[measure.metrics_subset(cfg, ds)]
    g = gm.compute_grams(params, X, "relu", method="jacfwd")
    nfm = z["W1"].astype(np.float64).T @ z["W1"]
    assert res["checkpoints"][-1]["layers"][0]["pearson_a1"] == pytest.approx(ref.pearson(nfm, g.agop[0]), abs=1e-10)
    m = np.load(d / "checkpoints" / f"matrices_{steps[-1]:07d}.npz")
    assert {"nfm_1", "agop_1", "agop_half_1", "pgop_1", "pgop_3"} <= set(m.files)
    assert m["agop_1"].dtype == np.float32  # metrics.dtype is the statistics', not the files'
    np.testing.assert_allclose(m["agop_1"], g.agop[0], rtol=2e-6, atol=1e-6 * np.abs(g.agop[0]).max())
    assert (d / "checkpoints" / "matrices_0000000.npz").exists()
    assert not any((d / "checkpoints").glob("matrices_0000001.npz"))

    # the same config again: done, not retrained; --force retrains to identical numbers
    r2 = _train(tmp_path, p)
    assert r2.exit_code == 0 and "already finished ok" in r2.stdout
    r3 = _train(tmp_path, p, "--force")
    assert r3.exit_code == 0
    assert json.loads((d / "result.json").read_text())["checkpoints"] == res["checkpoints"]


def test_set_override_makes_a_different_run(tmp_path):
    p = _write(tmp_path, TINY)
    r = _train(tmp_path, p, "--set", "model.width=7", "--set", "train.epochs=1")
    assert r.exit_code == 0, r.output
    res = json.loads(next((tmp_path / "runs").glob("tiny-*/result.json")).read_text())
    assert res["config"]["model"]["width"] == 7 and res["checkpoints"][-1]["step"] == 4


def test_classification_records_accuracy(tmp_path):
    cfg = {**TINY, "data": {"task": "modular", "p": 5, "train_frac": 0.6}, "train": {**TINY["train"], "loss": "cross_entropy", "batch_size": 5}}
    r = _train(tmp_path, _write(tmp_path, cfg))
    assert r.exit_code == 0, r.output
    res = json.loads(next((tmp_path / "runs").glob("tiny-*/result.json")).read_text())
    last = res["checkpoints"][-1]
    assert 0.0 <= last["test_acc"] <= 1.0 and 0.0 <= last["train_acc"] <= 1.0
    assert res["info"]["data"] == {"kind": "classification", "d": 10, "c": 5, "n_train": 15, "n_test": 10}


def test_diverging_run_is_recorded_and_exits_1(tmp_path):
    cfg = {**TINY, "model": {**TINY["model"], "activation": "quadratic", "init_scale": 3.0}, "train": {**TINY["train"], "lr": 50.0}}
    r = _train(tmp_path, _write(tmp_path, cfg))
    assert r.exit_code == 1
    assert "diverged" in r.stderr
    res = json.loads(next((tmp_path / "runs").glob("tiny-*/result.json")).read_text())
    assert res["status"] == "diverged" and re.search(r"(loss became|loss is not finite|non-finite).* step \d+", res["error"])
    assert res["checkpoints"][0]["step"] == 0  # the checkpoints it has


@pytest.mark.parametrize("cfg,msg", [
    ({**TINY, "model": {"width": 0}}, "model.width = 0: must be greater than or equal to 1"),
    ({**TINY, "train": {"lr": -1}}, "train.lr = -1: must be greater than 0"),
    ({**TINY, "model": {"width": "wide"}}, "model.width = 'wide': must be a valid integer"),
    ({**TINY, "model": {"activation": "swish"}}, "model.activation = 'swish': must be one of"),
    ({**TINY, "data": {"task": "cifar"}}, "data.task = 'cifar': unknown task"),
    ({**TINY, "train": {"optimizer": "lbfgs"}}, "train.optimizer = 'lbfgs': must be one of"),
    ({**TINY, "train": {"loss": "l1"}}, "train.loss = 'l1': must be one of"),
    ({**TINY, "colour": "red"}, "colour: unknown key"),
    ({**TINY, "train": {"batch_size": 1000}}, "train.batch_size = 1000 exceeds the 64 training samples"),
    ({**TINY, "train": {"loss": "cross_entropy"}}, "train.loss = 'cross_entropy' needs a classification task"),
    ({**TINY, "metrics": {"checkpoints": [10_000]}}, "metrics.checkpoints: step 10000 is beyond the run's last step"),
    ("model: [width: 3\n", "broken YAML"),
    ("", "empty file"),
])
def test_bad_input_exits_2_with_one_line_and_no_directory(tmp_path, cfg, msg):
    p = _write(tmp_path, cfg)
    r = _train(tmp_path, p)
    assert r.exit_code == 2, r.output
    assert msg in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    runs = tmp_path / "runs"
    assert not runs.exists()


def test_missing_file_and_unknown_set_key(tmp_path):
    r = _train(tmp_path, tmp_path / "nope.yaml")
    assert r.exit_code == 2 and "nope.yaml: no such file" in r.stderr
    r = _train(tmp_path, _write(tmp_path, TINY), "--set", "model.depht=2")
    assert r.exit_code == 2 and "--set model.depht: no such config key (did you mean model.depth?)" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["sweep", "x.yaml", "--workers", "0"], ["train"], ["train", "c.yaml", "--bogus"],
                                  ["report", "x", "--format", "xml"]])
def test_flag_errors_through_the_entry_point_are_one_line(argv, capsys, monkeypatch):
    import sys

    from dnfa_cli import cli

    monkeypatch.setattr(sys, "argv", ["dnfa", *argv])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_files_are_readable_like_any_other(tmp_path):
    import os

    r = _train(tmp_path, _write(tmp_path, TINY), "--set", "train.epochs=1")
    assert r.exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    d = next((tmp_path / "runs").glob("tiny-*"))
    for f in [d / "result.json", d / "config.yaml", d / "env.json", *d.glob("checkpoints/*.npz")]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f  # not mkstemp's 0600


def test_entry_point_lets_exits_through(monkeypatch):
    """rich turns a closed pipe (`dnfa ls | head -1`) into SystemExit(1): it must leave main()
    as it is, not as a traceback from the except clauses."""
    import sys

    from dnfa_cli import cli

    def closed_pipe(**kw):
        raise SystemExit(1)

    monkeypatch.setattr(cli, "app", closed_pipe)
    monkeypatch.setattr(sys, "argv", ["dnfa", "ls"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1


@pytest.mark.parametrize("raised, code, err", [(SystemExit(3), 3, ""), (SystemExit(None), 0, ""),
                                               (SystemExit("bad thing"), 1, "bad thing\n"), (None, 0, "")])
def test_the_dnfa_command_leaves_with_mains_status_after_flushing(raised, code, err, monkeypatch, capsys):
    """`dnfa` (cli.entry) skips the interpreter's teardown once JAX is loaded: main's exit
    status, the streams flushed, the atexit functions run first."""
    import atexit
    import os

    import jax  # noqa: F401  (loaded: the fast exit applies)

    from dnfa_cli import cli

    ran, left = [], []

    def fake_main():
        print("output", end="")
        if raised is not None:
            raise raised

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: ran.append(True))
    monkeypatch.setattr(os, "_exit", lambda c: left.append(c))  # returns: entry goes on to sys.exit
    with pytest.raises(SystemExit) as e:
        cli.entry()
    assert left == [code] and ran == [True] and e.value.code == code
    out = capsys.readouterr()
    assert out.out == "output" and out.err == err
