"""Runs as data: load_runs against result.json read here independently, load_matrices
against the .npz files, the --where language against hand-computed selections."""
import io
import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dnfa_cli import load_matrices, load_runs, where
from dnfa_cli.config import DnfaInputError
from dnfa_cli.cli import app

runner = CliRunner(env={"COLUMNS": "250"})

BASE = {
    "name": "fr",
    "data": {"task": "monomial", "d": 5, "n_train": 48, "n_test": 16},
    "model": {"depth": 2, "width": 8},
    "train": {"batch_size": 16, "epochs": 2},
    "metrics": {"checkpoints": 2, "samples": 24},
}


def _flat(d, pre=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
    return out


def _result(root, rid):
    return json.loads((root / rid / "result.json").read_text())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 2 x 2 sweep (optimizer x lr) through the CLI, and beside it three damaged copies of
    its first run: result.json cut short (corrupt), result.json gone (interrupted), and one
    whose result.json lacks a statistic and has one the others lack (an older dnfa)."""
    tmp = tmp_path_factory.mktemp("frame")
    root = tmp / "runs"
    p = tmp / "s.yaml"
    p.write_text(yaml.safe_dump({**BASE, "sweep": {"parameters": {
        "train.optimizer": {"values": ["sgd", "adam"]}, "train.lr": {"values": [0.001, 0.05]}}}}))
    r = runner.invoke(app, ["sweep", str(p), "--workers", "1", "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    sweep_id = re.search(r"sweep (sweep-fr-\w+):", r.stdout).group(1)
    ids = [x["run_id"] for x in json.loads((root / "sweeps" / f"{sweep_id}.json").read_text())["runs"]]
    src = root / ids[0]
    for name in ("zcorrupt-0000000001", "zinterrupted-0000000002", "zolder-0000000003"):
        shutil.copytree(src, root / name)
    res = root / "zcorrupt-0000000001" / "result.json"
    res.write_text(res.read_text()[:500])
    (root / "zinterrupted-0000000002" / "result.json").unlink()
    old = _result(root, "zolder-0000000003")
    for ck in old["checkpoints"]:
        for L in ck["layers"]:
            del L["cond"]
            L["older_stat"] = 0.25
    (root / "zolder-0000000003" / "result.json").write_text(json.dumps(old))
    return root, sweep_id, ids


def _same(got, want):
    if want is None:
        return got is None or (isinstance(got, float) and math.isnan(got))
    if isinstance(want, list):
        return tuple(got) == tuple(want)
    return got == want


def test_the_frame_equals_result_json_value_by_value(made):
    root, _, ids = made
    df = load_runs(root)
    rows = df.to_dict("records")
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    for rid in [*ids, "zolder-0000000003"]:
        res = _result(root, rid)
        want = [(ck, L) for ck in res["checkpoints"] for L in ck["layers"]]
        got = by_run[rid]
        assert len(got) == len(want) == len(res["checkpoints"]) * 3
        flat = _flat(res["config"])
        for row, (ck, L) in zip(got, want):
            assert row["status"] == res["status"] and row["created"] == res["created"]
            for k in ("step", "epoch", "train_loss", "test_loss", "train_acc", "test_acc"):
                assert _same(row[k], ck[k]), (rid, k)
            for k, v in L.items():
                assert _same(row[k], v), (rid, ck["step"], L["layer"], k, row[k], v)
            for k, v in flat.items():
                assert _same(row[k], v), (rid, k)
    # keys a run lacks are NaN: the older run has no cond, the others no older_stat
    older = df[df.run_id == "zolder-0000000003"]
    assert older["cond"].isna().all() and (older["older_stat"] == 0.25).all()
    assert df[df.run_id == ids[0]]["older_stat"].isna().all() and df[df.run_id == ids[0]]["cond"].notna().any()
    assert df["step"].dtype.kind in "if" and df["train.lr"].dtype.kind == "f"


def test_damaged_runs_are_rows_with_their_status(made):
    root, _, ids = made
    df = load_runs(root)
    corrupt = df[df.run_id == "zcorrupt-0000000001"]
    assert len(corrupt) == 1 and corrupt.iloc[0]["status"] == "corrupt"
    assert "not valid JSON" in corrupt.iloc[0]["error"] and math.isnan(corrupt.iloc[0]["step"])
    assert corrupt.iloc[0]["train.optimizer"] == _result(root, ids[0])["config"]["train"]["optimizer"]  # config.yaml
    inter = df[df.run_id == "zinterrupted-0000000002"]
    lines = [json.loads(x) for x in (root / "zinterrupted-0000000002" / "metrics.jsonl").read_text().splitlines()]
    assert set(inter["status"]) == {"interrupted"} and list(inter["step"]) == [ck["step"] for ck in lines for _ in ck["layers"]]
    assert list(inter["pearson_a1"]) == [L["pearson_a1"] for ck in lines for L in ck["layers"]]


def test_checkpoint_choices_and_sweeps(made):
    root, sweep_id, ids = made
    steps = [ck["step"] for ck in _result(root, ids[1])["checkpoints"]]
    assert len(steps) == 3
    for which, want in (("all", steps), ("ends", [steps[0], steps[-1]]), ("last", [steps[-1]])):
        df = load_runs(root, sweep=sweep_id, checkpoints=which)
        assert list(df.run_id.unique()) == ids  # the sweep's runs, in its order
        assert sorted(set(df[df.run_id == ids[1]]["step"])) == want
        assert len(df) == 4 * len(want) * 3
    assert len(load_runs(root, sweep=sweep_id[:12])) == len(load_runs(root, sweep=sweep_id))
    for bad, msg in (({"sweep": "sweep-nope"}, "no run or sweep"), ({"sweep": ids[0]}, "is a run, not a sweep"),
                     ({"checkpoints": "first"}, "must be one of all, ends, last"),
                     ({"where": ["train.lrr=1"]}, "did you mean train.lr"), ({"where": ["train.lr~1"]}, "expected KEY OP VALUE")):
        with pytest.raises(DnfaInputError, match=msg):
            load_runs(root, **bad)


def _ends(root, ids):
    return {rid: _result(root, rid) for rid in ids}


def test_where_selects_what_a_hand_count_says(made):
    root, sweep_id, ids = made
    res = _ends(root, ids)
    cfg = lambda rid, sec, k: res[rid]["config"][sec][k]
    end = lambda rid: res[rid]["checkpoints"][-1]
    sel = lambda *w: list(load_runs(root, sweep=sweep_id, where=list(w)).run_id.unique())
    # 1e-3 is a string to YAML 1.1 and a number here; 0.001 == 1e-3
    assert sel("train.lr=1e-3") == [r for r in ids if cfg(r, "train", "lr") == 0.001] and len(sel("train.lr=1e-3")) == 2
    assert sel("train.lr=0.001", "train.optimizer!=sgd") == [r for r in ids if cfg(r, "train", "lr") == 0.001
                                                              and cfg(r, "train", "optimizer") == "adam"]
    assert sel("train.lr>1e-3") == [r for r in ids if cfg(r, "train", "lr") > 0.001]
    vals = sorted(end(r)["layers"][1]["pearson_a1"] for r in ids)
    cut = (vals[1] + vals[2]) / 2
    assert sel(f"pearson_a1@2>{cut}") == [r for r in ids if end(r)["layers"][1]["pearson_a1"] > cut]
    assert sel(f"pearson_a1@2<={cut}") == [r for r in ids if end(r)["layers"][1]["pearson_a1"] <= cut]
    loss = sorted(end(r)["test_loss"] for r in ids)
    assert sel(f"test_loss<{loss[2]}") == [r for r in ids if end(r)["test_loss"] < loss[2]]
    assert sel("model.widths=null") == ids and sel("data.coords=[0, 1]") == ids and sel("model.bias=false") == ids
    assert sel("status=ok", "model.width=8.0") == ids and sel("model.width!=8") == []
    # over every run: the damaged ones have no end, so they match no comparison but !=
    everyone = lambda *w: set(load_runs(root, where=list(w)).run_id)
    assert everyone("pearson_a1@1>-2") == set(ids) | {"zolder-0000000003", "zinterrupted-0000000002"}
    assert "zcorrupt-0000000001" in everyone("pearson_a1@1!=0.5")
    with pytest.raises(DnfaInputError, match="name the layer, e.g. pearson_a1@1"):
        load_runs(root, where="pearson_a1>0.5")


@pytest.mark.parametrize("text,key,op,value", [
    ("model.width=256", "model.width", "=", "256"), ("train.lr == 1e-3", "train.lr", "=", "1e-3"),
    ("pearson_a1@2>=0.8", "pearson_a1@2", ">=", "0.8"), ("name!=x1x2", "name", "!=", "x1x2"),
    ("test_loss<1", "test_loss", "<", "1"), ("a>-1", "a", ">", "-1"), ("a<=3", "a", "<=", "3")])
def test_where_parses(text, key, op, value):
    c = where.parse(text)
    assert (c.key, c.op, c.value) == (key, op, value)


def test_where_compares_numbers_as_numbers_and_refuses_nonsense():
    row = {"lr": 0.001, "w": 256, "act": "relu", "b": True, "none": None, "nan": float("nan"), "coords": (0, 1),
           "name": "1e-3"}
    holds = lambda t: where.parse(t).holds(row)
    assert holds("lr=1e-3") and holds("lr=0.0010") and not holds("lr!=1e-3") and holds("lr<0.01") and not holds("lr>0.01")
    assert holds("w=256") and holds("w=2.56e2") and holds("w>=256") and not holds("w>256")
    assert holds("act=relu") and not holds("act=tanh") and holds("act!=tanh") and not holds("act<1")
    assert holds("b=true") and not holds("b=1") and not holds("b>0")  # a flag is not a number
    assert holds("none=null") and holds("nan=null") and holds("missing=null") and not holds("none<1")
    assert holds("none!=1") and not holds("none=0")
    assert holds("coords=[0,1]") and holds("coords=[0, 1]") and not holds("coords=[1,0]")
    assert holds("name=1e-3")  # a string that looks like a number still equals its text
    for bad, msg in (("width", "expected KEY OP VALUE"), ("=3", "expected KEY OP VALUE"), ("a=", "expected KEY OP VALUE"),
                     ("a<relu", "< compares numbers"), ("a>nan", "compares numbers"), ("a@x>1", "STAT@LAYER"),
                     ("a=<3", "expected KEY OP VALUE")):
        with pytest.raises(DnfaInputError, match=re.escape(msg)):
            where.parse(bad)


def test_load_matrices_equals_the_npz_files(made):
    root, _, ids = made
    rid = ids[0]
    steps = [ck["step"] for ck in _result(root, rid)["checkpoints"]]
    got = load_matrices(rid, runs_dir=root)  # the last step
    with np.load(root / rid / "checkpoints" / f"step_{steps[-1]:07d}.npz") as p, \
            np.load(root / rid / "checkpoints" / f"matrices_{steps[-1]:07d}.npz") as m:
        want = {**{k: p[k] for k in p.files}, **{k: m[k] for k in m.files}}
    assert set(got) == set(want) and {"W1", "b3", "nfm_1", "agop_2", "pgop_1"} <= set(got)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    np.testing.assert_allclose(got["nfm_1"], got["W1"].T.astype(np.float64) @ got["W1"], rtol=1e-5, atol=1e-6)
    first = load_matrices(rid[:8], step=0, runs_dir=root)
    with np.load(root / rid / "checkpoints" / "step_0000000.npz") as p:
        np.testing.assert_array_equal(first["W2"], p["W2"])
    with pytest.raises(DnfaInputError, match=f"nothing saved at step 7; steps with files: {', '.join(map(str, steps))}"):
        load_matrices(rid, step=7, runs_dir=root)


def test_cli_does_not_import_pandas():
    code = "import sys, dnfa_cli.cli, dnfa_cli.report, dnfa_cli.sweep, dnfa_cli.frame; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------- dnfa ls
def _ls(root, *args):
    return runner.invoke(app, ["ls", "--runs-dir", str(root), *map(str, args)])


def _end_row(root, rid):
    """What `dnfa ls` should say of a finished run, read from its result.json here."""
    res = _result(root, rid)
    end = res["checkpoints"][-1]
    row = {"run_id": rid, "status": res["status"], "created": res["created"],
           **{k: end[k] for k in ("step", "epoch", "train_loss", "test_loss", "train_acc", "test_acc")}}
    for L in end["layers"]:
        row.update({f"{k}@{L['layer']}": v for k, v in L.items() if k != "layer"})
    return {**row, **_flat(res["config"])}


def test_ls_json_and_csv_round_trip(made):
    import pandas as pd

    root, sweep_id, ids = made
    want = {rid: _end_row(root, rid) for rid in ids}
    r = _ls(root, "--sweep", sweep_id, "--format", "json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert sorted(x["run_id"] for x in got) == sorted(ids)
    for x in got:
        w = want[x["run_id"]]
        assert {k: v for k, v in x.items() if k != "error"} == w  # every column, exactly
    r = _ls(root, "--sweep", sweep_id, "--format", "csv")
    df = pd.read_csv(io.StringIO(r.stdout))
    assert list(df.columns[:6]) == ["created", "run_id", "status", "error", "train.optimizer", "train.lr"]
    assert len(df) == 4
    for rec in df.to_dict("records"):
        w = want[rec["run_id"]]
        for k, v in w.items():
            if isinstance(v, list):
                assert json.loads(rec[k]) == v, k
            elif isinstance(v, bool):
                assert rec[k] == v, k
            else:
                assert _same(None if isinstance(rec[k], float) and math.isnan(rec[k]) else rec[k], v), (k, rec[k], v)


def test_ls_ids_columns_and_default_order(made):
    root, sweep_id, ids = made
    res = _ends(root, ids)
    adam = sorted(sorted(r for r in ids if res[r]["config"]["train"]["optimizer"] == "adam"),
                  key=lambda r: res[r]["created"], reverse=True)  # newest first; ties in id order
    r = _ls(root, "--ids", "--where", "train.optimizer=adam")
    assert r.exit_code == 0 and r.stdout.splitlines() == adam
    r = _ls(root, "--ids", "--sweep", sweep_id, "--sort", "pearson_a1@2")
    assert r.stdout.splitlines() == sorted(ids, key=lambda i: res[i]["checkpoints"][-1]["layers"][1]["pearson_a1"])
    r = _ls(root, "--sweep", sweep_id, "--columns", "run_id,train.lr,pearson_a1@2", "--format", "csv")
    lines = r.stdout.splitlines()
    assert lines[0] == "run_id,train.lr,pearson_a1@2" and len(lines) == 5
    for line in lines[1:]:
        rid, lr, p = line.split(",")
        assert float(lr) == res[rid]["config"]["train"]["lr"]
        assert float(p) == res[rid]["checkpoints"][-1]["layers"][1]["pearson_a1"]
    # the table: the keys that vary (optimizer first), then the seed although it is fixed
    r = _ls(root, "--sweep", sweep_id)
    header = re.split("[│┃]", next(line for line in r.stdout.splitlines() if "run_id" in line))
    names = [h.strip() for h in header if h.strip()]
    assert names[:6] == ["created", "run_id", "status", "train.optimizer", "train.lr", "seed"]
    assert "model.width" not in names and "pearson_a1@1" in names


@pytest.mark.parametrize("args,msg", [
    (["--columns", "run_id,trian.lr"], "--columns trian.lr: no such key in these runs (did you mean train.lr?)"),
    (["--sort", "pearson_a1@9"], "--sort pearson_a1@9: no layer 9 in these runs; pearson_a1 is there for layer 1, 2, 3"),
    (["--where", "train.lr=>1"], "--where 'train.lr=>1': expected KEY OP VALUE"),
    (["--where", "train.lr>big"], "--where 'train.lr>big': > compares numbers, and 'big' is not a number"),
    (["--sweep", "sweep-nope"], "no run or sweep 'sweep-nope'"),
    (["--format", "xml"], "--format 'xml': must be table, json or csv")])
def test_ls_bad_input_is_one_line_and_exit_2(made, args, msg):
    root, _, _ = made
    r = _ls(root, *args)
    assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.output
