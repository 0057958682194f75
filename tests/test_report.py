"""`dnfa report` and `dnfa ls` on runs and a sweep the tests make themselves."""
import base64
import csv
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from dnfa_cli import config, engine, runs
from dnfa_cli.cli import app

runner = CliRunner(env={"COLUMNS": "250"})

BASE = {
    "name": "rep",
    "data": {"task": "monomial", "d": 5, "n_train": 48, "n_test": 16},
    "model": {"depth": 2, "width": 8},
    "train": {"lr": 0.05, "batch_size": 16, "epochs": 3},
    "metrics": {"checkpoints": 3, "samples": 24},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One run trained directly and a 2 x 2 sweep trained through the CLI."""
    tmp = tmp_path_factory.mktemp("rep")
    root = tmp / "runs"
    res = engine.execute([config.validate(BASE)], root)[0]
    p = tmp / "s.yaml"
    p.write_text(yaml.safe_dump({**BASE, "name": "sw", "sweep": {"parameters": {
        "model.activation": {"values": ["relu", "tanh"]}, "seed": {"values": [0, 1]}}}}))
    r = runner.invoke(app, ["sweep", str(p), "--workers", "1", "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    sweep_id = re.search(r"sweep (sweep-sw-\w+):", r.stdout).group(1)
    return root, res, sweep_id


def _report(root, *args):
    return runner.invoke(app, ["report", *map(str, args), "--runs-dir", str(root)])


def test_run_table_numbers_equal_result_json(made):
    root, res, _ = made
    r = _report(root, res["run_id"])
    assert r.exit_code == 0, r.output
    first, last = res["checkpoints"][0], res["checkpoints"][-1]
    assert f"run {res['run_id']}: ok" in r.stdout
    # each layer's table: statistic rows, init and end columns; the read-out only on request
    blocks = r.stdout.split("layer ")[1:]
    assert len(blocks) == 2
    with_readout = _report(root, res["run_id"], "--include-readout")
    blocks = with_readout.stdout.split("layer ")[1:]
    assert len(blocks) == 3 and "trivial: read-out layer" in blocks[2]
    for li, block in enumerate(blocks):
        for key in ("pearson_a05", "pearson_a1", "tightness_range", "alpha_star"):
            m = re.search(rf"│ {key}\s+│\s+(\S+)\s+│\s+(\S+)\s+│", block)
            assert m, (key, block)
            for got, ck in zip(m.groups(), (first, last)):
                want = ck["layers"][li][key]
                if want is None:
                    assert got == "-"
                else:
                    assert float(got) == pytest.approx(want, abs=5e-5)
    assert f"end ({last['step']})" in r.stdout


def _rows_from_result(res, all_cks=False):
    cks = res["checkpoints"] if all_cks else [res["checkpoints"][0], res["checkpoints"][-1]]
    return [(c["step"], L) for c in cks for L in c["layers"]]


def test_json_and_csv_round_trip(made):
    root, res, _ = made
    r = _report(root, res["run_id"], "--format", "json")
    doc = json.loads(r.stdout)
    rows = doc["rows"]
    # the whole config, flat, the keys that differ from the defaults first
    cfg = yaml.safe_load((root / res["run_id"] / "config.yaml").read_text())
    def flatten(d, pre=""):
        return {kk: vv for k, v in d.items()
                for kk, vv in (flatten(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v}).items()}

    flat = flatten(cfg)
    assert doc["config"] == flat and doc["run_id"] == res["run_id"]
    differ = doc["config_differs"]
    assert list(doc["config"])[:len(differ)] == differ and "train.epochs" in differ
    assert all(config.validate({}).to_dict()["model"][k[6:]] != doc["config"][k] for k in differ if k.startswith("model."))
    want = _rows_from_result(res)
    assert len(rows) == len(want)
    for row, (step, L) in zip(rows, want):
        assert row["step"] == step and row["run_id"] == res["run_id"]
        for k, v in L.items():
            assert row[k] == v
    r = _report(root, res["run_id"], "--format", "csv", "--all-checkpoints")
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    want = _rows_from_result(res, all_cks=True)
    assert len(table) == len(want) == len(res["checkpoints"]) * 3
    for row, (step, L) in zip(table, want):
        assert int(row["step"]) == step
        for k in ("pearson_a05", "pearson_a1", "tightness_range", "cond"):
            assert (row[k] == "") if L[k] is None else float(row[k]) == L[k]
        assert json.loads(row["shape"]) == L["shape"]


def _png_size(path):
    with Image.open(path) as im:
        im.load()  # decodes the whole image
        return im.size


def test_run_figures_and_html(made, tmp_path):
    root, res, _ = made
    out = tmp_path / "out"
    r = _report(root, res["run_id"], "--html", "--out", out)
    assert r.exit_code == 0, r.output
    expected = {"curves.png": (800, 360), "loss.png": (600, 400)}  # two panels: no read-out
    for layer in (1, 2):
        expected[f"matrices_layer{layer}.png"] = (1050, 700)  # init and the end
        expected[f"spectrum_layer{layer}.png"] = (1000, 400)
    for name, size in expected.items():
        assert _png_size(out / name) == size, name
    assert not (out / "matrices_layer3.png").exists()
    page = (out / "report.html").read_text()
    assert f"html: {out / 'report.html'}" in r.stdout
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(imgs) == len(expected)
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:)""", page) and "url(" not in page and "<script" not in page
    # default location: the run's own report/ folder
    r = _report(root, res["run_id"][:8])
    assert r.exit_code == 0 and (root / res["run_id"] / "report" / "curves.png").exists()


def test_wide_layer_heatmaps_say_they_show_a_block(tmp_path):
    cfg = config.validate({**BASE, "model": {"depth": 1, "width": 200}, "train": {**BASE["train"], "epochs": 1}})
    res = engine.execute([cfg], tmp_path / "runs")[0]
    from dnfa_cli import report as rp

    v = rp.load_run(tmp_path / "runs", res["run_id"])
    import matplotlib

    matplotlib.use("Agg")
    p = rp.fig_matrices(v, 2, tmp_path / "m.png")  # layer 2 is 1 x 200: nfm is 200 x 200
    assert _png_size(p) == (1050, 700)
    # the leading block in the NFM's eigenbasis is V^T M V restricted to the top 64
    z = np.load(next((tmp_path / "runs" / res["run_id"] / "checkpoints").glob("matrices_*.npz")))
    nfm = z["nfm_2"].astype(np.float64)  # stored as float32; the report works in float64
    lam, V = np.linalg.eigh(nfm)
    top = V[:, ::-1][:, :64]
    np.testing.assert_allclose(top.T @ nfm @ top, np.diag(lam[::-1][:64]), atol=1e-10 * lam.max())


def test_sweep_report_rows_grouping_and_figures(made, tmp_path):
    root, _, sweep_id = made
    r = _report(root, sweep_id, "--format", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    rows, grouped = data["runs"], data["grouped"]
    assert len(rows) == 4 * 3 and {r["model.activation"] for r in rows} == {"relu", "tanh"}
    # grouped over seeds: mean and std of each run's own result.json
    for g in grouped:
        vals = []
        for row in rows:
            if row["model.activation"] == g["model.activation"] and row["layer"] == g["layer"]:
                res = json.loads((root / row["run_id"] / "result.json").read_text())
                vals.append(res["checkpoints"][-1]["layers"][g["layer"] - 1]["pearson_a1"])
        assert g["n"] == 2
        assert g["pearson_a1_mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert g["pearson_a1_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    out = tmp_path / "sw"
    r = _report(root, sweep_id, "--html", "--out", out)
    assert r.exit_code == 0, r.output
    assert "grouped over seeds" in r.stdout and "±" in r.stdout
    names = {"pearson_a1_vs_tightness_range.png": (750, 520), "pearson_a05_vs_pearson_a1.png": (750, 520),
             "stats_vs_model_activation.png": (1600, 900),  # 16:9; no plot against the seed
             "training.png": (1680, 400)}  # train loss, test loss, layers 1 and 2 (no accuracy: a regression)
    for n, size in names.items():
        assert _png_size(out / n) == size
    assert not (out / "stats_vs_seed.png").exists()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    # a caption under each figure
    assert len(re.findall(r"<img [^>]*><figcaption>[^<]{40,}</figcaption></figure>", page)) == 4


def test_bad_ids(made):
    root, res, sweep_id = made
    rid = res["run_id"]
    r = _report(root, rid[:-1] + ("0" if rid[-1] != "0" else "1"))
    assert r.exit_code == 2 and "no run or sweep" in r.stderr and "closest:" in r.stderr and rid in r.stderr
    for bad in ("../etc", "a/b", "..", "x\\y"):
        r = _report(root, bad)
        assert r.exit_code == 2 and "no path separators" in r.stderr, bad
    r = _report(root, "sw-")  # the four sweep runs
    assert r.exit_code == 2 and "is ambiguous" in r.stderr and r.stderr.count("sw-") >= 4
    r = _report(root, "nothing-like-it")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_interrupted_run_reported_from_metrics(made, tmp_path):
    root, res, _ = made
    root2 = tmp_path / "runs"
    shutil.copytree(root / res["run_id"], root2 / res["run_id"])
    (root2 / res["run_id"] / "result.json").unlink()
    lines = (root2 / res["run_id"] / "metrics.jsonl").read_text().splitlines()
    (root2 / res["run_id"] / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])  # cut mid-line
    r = _report(root2, res["run_id"])
    assert r.exit_code == 0, r.output
    assert "interrupted" in r.stdout and "2 checkpoints from metrics.jsonl" in r.stdout
    r = runner.invoke(app, ["ls", "--runs-dir", str(root2)])
    assert "interrupted" in r.stdout


def test_ls_newest_first_and_by_sweep(made):
    root, res, sweep_id = made
    r = runner.invoke(app, ["ls", "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    assert f"5 runs in {root.absolute()}" in r.stdout
    ids = re.findall(r"(rep-\w{10}|sw-\w{10})", r.stdout)
    created = [json.loads((root / i / "result.json").read_text())["created"] for i in ids]
    assert created == sorted(created, reverse=True)
    r = runner.invoke(app, ["ls", "--sweep", sweep_id, "--runs-dir", str(root)])
    assert "4 runs" in r.stdout and res["run_id"] not in r.stdout
    r = runner.invoke(app, ["ls", "--sweep", "sweep-nope", "--runs-dir", str(root)])
    assert r.exit_code == 2


def test_sweep_runs_not_started_are_missing_and_reading_takes_no_locks(made, tmp_path):
    root, res, sweep_id = made
    root2 = tmp_path / "runs"
    (root2 / "sweeps").mkdir(parents=True)
    rec = json.loads((root / "sweeps" / f"{sweep_id}.json").read_text())
    shutil.copytree(root / rec["runs"][0]["run_id"], root2 / rec["runs"][0]["run_id"])
    (root2 / "sweeps" / f"{sweep_id}.json").write_text(json.dumps(rec))

    r = _report(root2, sweep_id, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["runs"]
    assert [x["status"] for x in rows if x["layer"] is None] == ["missing"] * 3
    r = runner.invoke(app, ["ls", "--runs-dir", str(root2)])
    assert r.exit_code == 0 and "1 run in" in r.stdout
    assert not (root2 / ".locks").exists()  # reading takes no locks and leaves no lock files


def test_bootstrap_intervals_reach_result_json_and_the_table(tmp_path):
    cfg = config.validate({**BASE, "train": {**BASE["train"], "epochs": 1}, "metrics": {"checkpoints": 0, "samples": 24, "bootstrap": 30}})
    res = engine.execute([cfg], tmp_path / "runs")[0]
    L1 = res["checkpoints"][-1]["layers"][0]
    for k in ("pearson_a05", "pearson_a1", "tightness_range"):
        assert L1[f"{k}_lo"] <= L1[f"{k}_hi"]
    r = _report(tmp_path / "runs", res["run_id"])
    m = re.search(r"│ pearson_a1 95% CI\s+│\s+\[(\S+), (\S+)\]\s+│\s+\[(\S+), (\S+)\]", r.stdout)
    assert m, r.stdout
    assert float(m.group(3)) == pytest.approx(L1["pearson_a1_lo"], abs=5e-5)
    assert float(m.group(4)) == pytest.approx(L1["pearson_a1_hi"], abs=5e-5)


def test_the_run_report_shows_its_config_non_defaults_first(made, tmp_path):
    root, res, _ = made
    r = _report(root, res["run_id"])
    m = re.search(r"config: (\d+) keys differ from dnfa's defaults", r.stdout)
    assert m
    # BASE sets name, d, n_train, n_test, depth, width, lr, batch_size, epochs, checkpoints, samples
    # (lr 0.05: the default is 0.1); 12 keys with the name
    for key, value in (("data.d", "5"), ("model.width", "8"), ("train.lr", "0.05"), ("metrics.samples", "24")):  # as written, not 0.0500
        assert re.search(rf"│ {re.escape(key)}\s+│\s+{re.escape(value)}\s+│", r.stdout), key
    assert "model.activation" not in r.stdout.split("losses")[0]  # at its default: not in the terminal table
    out = tmp_path / "h"
    _report(root, res["run_id"], "--html", "--out", out)
    page = (out / "report.html").read_text()
    assert "model.activation" in page and page.index("model.width") < page.index("model.activation")


def test_ls_columns_filters_and_sort(made):
    root, _, sweep_id = made
    r = runner.invoke(app, ["ls", "--sweep", sweep_id, "--runs-dir", str(root)])
    header = next(line for line in r.stdout.splitlines() if "run_id" in line)
    assert "model.activation" in header and "seed" in header and "model.width" not in header  # only what varies
    r = runner.invoke(app, ["ls", "--runs-dir", str(root), "--where", "model.activation=tanh", "--where", "seed=1"])
    assert r.exit_code == 0 and "1 run in" in r.stdout and r.stdout.count("sw-") == 1
    # a narrow terminal: ids stay whole, the varying keys that do not fit are named below
    from dnfa_cli import cli

    wide, cli.out.width = cli.out.width, 110
    try:
        r = runner.invoke(app, ["ls", "--runs-dir", str(root)])
    finally:
        cli.out.width = wide
    ids = re.findall(r"(rep-\w{10}|sw-\w{10})", r.stdout)
    assert r.exit_code == 0 and len(ids) == 5 and "more varying key" in r.stdout and "seed" in r.stdout.split("not shown:")[1]
    r = runner.invoke(app, ["ls", "--runs-dir", str(root), "--status", "ok", "--sort", "-pearson_a05@1"])
    got = [json.loads((root / i / "result.json").read_text())["checkpoints"][-1]["layers"][0]["pearson_a05"]
           for i in re.findall(r"(rep-\w{10}|sw-\w{10})", r.stdout)]
    assert got == sorted(got, reverse=True) and len(got) == 5
    for bad, msg in ((["--where", "model.widht=8"], "did you mean model.width"), (["--status", "done"], "must be one of"),
                     (["--sort", "nope"], "no such key"), (["--sort", "pearson_a05"], "name the layer, e.g. pearson_a05@1")):
        r = runner.invoke(app, ["ls", "--runs-dir", str(root), *bad])
        assert r.exit_code == 2 and msg in r.output


def test_compare_two_runs(made, tmp_path):
    root, res, sweep_id = made
    rec = json.loads((root / "sweeps" / f"{sweep_id}.json").read_text())
    a, b = (x["run_id"] for x in rec["runs"][:2])
    r = runner.invoke(app, ["compare", a, b, "--runs-dir", str(root), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    ra, rb = (json.loads((root / i / "result.json").read_text()) for i in (a, b))
    diff = [k for k in ("model.activation", "seed")
            if rec["runs"][0]["params"][k] != rec["runs"][1]["params"][k]]
    assert diff and all(re.search(rf"│ {re.escape(k)}\s+│", r.stdout) for k in diff)
    m = re.search(r"│ layer 1 pearson_a05\s+│\s+(\S+)\s+│\s+(\S+)\s+│", r.stdout)
    assert float(m.group(1)) == pytest.approx(ra["checkpoints"][-1]["layers"][0]["pearson_a05"], abs=5e-5)
    assert float(m.group(2)) == pytest.approx(rb["checkpoints"][-1]["layers"][0]["pearson_a05"], abs=5e-5)
    assert _png_size(tmp_path / "c" / "curves.png")[0] > 0
    rows = json.loads(runner.invoke(app, ["compare", a, b, "--runs-dir", str(root), "--format", "json",
                                          "--out", str(tmp_path / "c")]).stdout)
    assert {x["run_id"] for x in rows} == {a, b} and len(rows) == 2 * 3
    table = list(csv.DictReader(io.StringIO(runner.invoke(app, ["compare", a, b, "--runs-dir", str(root), "--format",
                                                                "csv", "--out", str(tmp_path / "c")]).stdout)))
    assert len(table) == 6 and table[0]["trivial"] in ("true", "false")  # CSV booleans as JSON writes them
    r = runner.invoke(app, ["compare", a, "--runs-dir", str(root)])
    assert r.exit_code == 2 and "at least two" in r.output


def test_figures_have_colour_bars_and_fitted_spectrum_axes(made):
    root, res, _ = made
    from dnfa_cli import report as rp

    v = rp.load_run(root, res["run_id"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = {}
    real = rp._save

    def keep(fig, path):
        saved[path.name] = [ax for ax in fig.axes]
        return real(fig, path)

    rp._save = keep
    try:
        rp.fig_matrices(v, 1, root.parent / "m.png")
        rp.fig_spectrum(v, 1, root.parent / "s.png")
    finally:
        rp._save = real
    # 6 heat-maps and a colour bar per column
    assert len(saved["m.png"]) == 9 and sum(ax.get_label() == "<colorbar>" for ax in saved["m.png"]) == 3
    lo, hi = saved["s.png"][0].get_ylim()
    assert lo > 1e-6 and hi < 1e6  # fitted to the eigenvalues, not floored at 1e-6
    plt.close("all")


def test_small_things():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"dnfa {__import__('dnfa_cli').__version__}"
    h = runner.invoke(app, ["train", "--help"]).stdout
    assert "train [OPTIONS] CONFIG\n" in h and "--set KEY=VALUE" in h and "<list[str]>" not in h and "{CONFIG}" not in h
    for cmd, arg in (("train", "CONFIG"), ("sweep", "FILE..."), ("compare", "ID..."), ("report", "[ID]")):
        h = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "100"}).stdout
        assert f"{cmd} [OPTIONS] {arg}\n" in h, h
        assert "<" not in h.split("Arguments", 1)[1].split("Options", 1)[0], h  # no <list[Path]>, <str>
    from dnfa_cli import report as rp

    assert rp.fmt([0, 1]) == "[0, 1]" and rp.shape_str([1024, 100]) == "1024x100"  # data.coords is not a shape
    assert rp.fmt(1.923e-16) == "0.0000" and rp.fmt(-1.110e-16) == "0.0000" and rp.fmt(2e-4) == "2.000e-04"
    assert config.validate({"name": "ref-tanh"}).run_id.startswith("ref-tanh-")


def test_a_swept_value_has_one_colour_in_every_sweep_figure(tmp_path, monkeypatch):
    from matplotlib.colors import to_hex

    from dnfa_cli import report as rp

    rows = [{"run_id": f"r{a}{w}{s}", "status": "ok", "layer": layer, "model.activation": a, "model.width": w,
             "seed": s, **{k: 0.1 * layer + 0.01 * w + s * 1e-3 for k in (*rp.SWEEP_STATS, "tightness_range", "pearson_a1",
                                                                         "pearson_a05")}}
            for a in ("relu", "tanh") for w in (8, 16) for s in (0, 1) for layer in (1, 2)]
    legends = {}
    real = rp._save

    def keep(fig, path):
        hs = [h for ax in fig.axes if ax.get_legend() for h in ax.get_legend().legend_handles]
        hs += [h for lg in fig.legends for h in lg.legend_handles]
        legends[path.name] = {h.get_label(): to_hex(h.get_color()) for h in hs}
        return real(fig, path)

    monkeypatch.setattr(rp, "_save", keep)
    monkeypatch.setattr(rp, "DRAW_PROCESSES", 1)  # keep() sees every figure in this process
    rp.sweep_figures(rows, ["model.activation", "model.width", "seed"], tmp_path)
    scatter, by_width = legends["pearson_a1_vs_tightness_range.png"], legends["stats_vs_model_width.png"]
    for a in ("relu", "tanh"):
        assert scatter[f"model.activation={a}"] == by_width[f"model.activation={a}"]
    assert scatter["model.activation=relu"] != scatter["model.activation=tanh"]
    assert "stats_vs_seed.png" not in legends  # seeds are the error bars, not a plot


# ----------------------------------------------------------------------------- sweeps over checkpoints, --where
def _sweep_results(root, sweep_id):
    rec = json.loads((root / "sweeps" / f"{sweep_id}.json").read_text())
    return {r["run_id"]: json.loads((root / r["run_id"] / "result.json").read_text()) for r in rec["runs"]}


def test_sweep_all_checkpoints_in_csv_and_json(made):
    root, _, sweep_id = made
    res = _sweep_results(root, sweep_id)
    want = [(rid, ck, L) for rid, r in res.items() for ck in r["checkpoints"] for L in ck["layers"]]
    r = _report(root, sweep_id, "--format", "csv", "--all-checkpoints")
    assert r.exit_code == 0, r.output
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(table) == len(want) == 4 * len(res[next(iter(res))]["checkpoints"]) * 3
    assert {int(row["step"]) for row in table} >= {0, res[next(iter(res))]["checkpoints"][-1]["step"]}
    for row, (rid, ck, L) in zip(table, want):
        assert row["run_id"] == rid and int(row["step"]) == ck["step"] and int(row["layer"]) == L["layer"]
        assert row["model.activation"] == res[rid]["config"]["model"]["activation"]
        for k in ("pearson_a1", "tightness_range", "test_loss"):
            v = L[k] if k in L else ck[k]
            assert (row[k] == "") if v is None else float(row[k]) == v
    doc = json.loads(_report(root, sweep_id, "--format", "json", "--all-checkpoints").stdout)
    assert len(doc["runs"]) == len(want)
    # grouped over seeds at every checkpoint: mean and std of the runs' own numbers at that step
    assert len(doc["grouped"]) == 2 * 3 * len(res[next(iter(res))]["checkpoints"])
    for g in doc["grouped"]:
        vals = [L["pearson_a1"] for r in res.values() if r["config"]["model"]["activation"] == g["model.activation"]
                for ck in r["checkpoints"] if ck["step"] == g["step"] for L in ck["layers"] if L["layer"] == g["layer"]]
        assert g["n"] == len(vals) == 2
        assert g["pearson_a1_mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert g["pearson_a1_std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)


def test_sweep_tables_show_initialisation_beside_the_end(made, tmp_path, monkeypatch):
    from dnfa_cli import cli

    root, _, sweep_id = made
    res = _sweep_results(root, sweep_id)
    monkeypatch.setattr(cli.out, "width", 250)  # no cell wrapped
    r = _report(root, sweep_id)
    assert r.exit_code == 0, r.output
    for act in ("relu", "tanh"):
        for layer in (1, 2):
            at = lambda i: [x["checkpoints"][i]["layers"][layer - 1]["pearson_a1"] for x in res.values()
                            if x["config"]["model"]["activation"] == act]
            m = re.search(rf"│ {act}\s+│\s+{layer}\s+│\s+2\s+│[^│]+│\s+([-\d.]+) -> ([-\d.]+)±([\d.]+)\s+│", r.stdout)
            assert m, r.stdout
            assert float(m.group(1)) == pytest.approx(np.mean(at(0)), abs=5e-4)
            assert float(m.group(2)) == pytest.approx(np.mean(at(-1)), abs=5e-4)
            assert float(m.group(3)) == pytest.approx(np.std(at(-1), ddof=1), abs=5e-4)
    # the page's per-run table: each run's own init -> end
    _report(root, sweep_id, "--html", "--out", tmp_path / "h")
    page = (tmp_path / "h" / "report.html").read_text()
    for rid, x in res.items():
        a, b = (x["checkpoints"][i]["layers"][0]["pearson_a05"] for i in (0, -1))  # the first statistic
        assert re.search(rf"<td>{rid}</td><td>ok</td>(<td>[^<]*</td>){{2}}<td>1</td><td>{a:.4f} -&gt; {b:.4f}</td>", page), rid


def test_report_where_reports_the_selected_runs_as_a_sweep(made, tmp_path):
    root, res, sweep_id = made
    all_runs = json.loads(_report(root, sweep_id, "--format", "json").stdout)["runs"]
    r = _report(root, "--where", "model.activation=tanh", "--format", "json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    tanh = [x for x in all_runs if x["model.activation"] == "tanh"]
    assert sorted(x["run_id"] for x in got["runs"]) == sorted(x["run_id"] for x in tanh) and len(tanh) == 2 * 3
    by = {(x["run_id"], x["layer"]): x for x in got["runs"]}
    for x in tanh:
        assert by[(x["run_id"], x["layer"])]["pearson_a1"] == x["pearson_a1"]
    assert [g["n"] for g in got["grouped"]] == [2, 2, 2]  # seeds vary among them: grouped over seeds
    out = tmp_path / "w"
    r = _report(root, sweep_id[:10], "--where", "seed=1", "--where", "pearson_a1@1>-1", "--html", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"2 runs of sweep {sweep_id} where seed=1 and pearson_a1@1>-1; ok 2; varying model.activation" in r.stdout
    assert (out / "report.html").exists() and (out / "stats_vs_model_activation.png").exists()
    r = _report(root, "--where", "model.activation=relu")
    assert r.exit_code == 0 and len(list((root / "where").glob("*/report/training.png"))) == 2  # one per selection
    for args, msg in ((["--where", "model.activation=gelu"], "no runs in"), ([], "report what?"),
                      ([res["run_id"], "--where", "seed=0"], "is one run"),
                      (["--where", "model.activaton=relu"], "did you mean model.activation")):
        r = _report(root, *args)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.output)


def test_sweep_training_curves_are_the_mean_and_range_over_seeds(tmp_path, monkeypatch):
    from dnfa_cli import report as rp

    rng = np.random.default_rng(0)
    rows = [{"run_id": f"r{a}{s}", "status": "ok", "layer": layer, "trivial": layer == 3, "step": step,
             "model.activation": a, "seed": s, "train_loss": rng.random(), "test_loss": rng.random(),
             "test_acc": rng.random(), "pearson_a1": rng.random(), "pearson_a05": rng.random()}
            for a in ("relu", "tanh") for s in (0, 1, 2) for step in (0, 5, 50) for layer in (1, 2, 3)]
    seen = {}
    real = rp._save
    monkeypatch.setattr(rp, "_save", lambda fig, path: seen.setdefault(path.name, fig) and real(fig, path))
    rp.fig_sweep_curves(rows, ["model.activation", "seed"], tmp_path / "t.png")
    axes = [ax for ax in seen["t.png"].axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["train_loss", "test_loss", "test_acc",
                                               "layer 1: pearson_a1 (solid), pearson_a05 (dashed)",
                                               "layer 2: pearson_a1 (solid), pearson_a05 (dashed)"]
    colours = rp.fixed_colours(f"model.activation={a}" for a in ("relu", "tanh"))
    for ax, key, layer in ((axes[2], "test_acc", 1), (axes[4], "pearson_a1", 2)):
        for a in ("relu", "tanh"):
            line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "-"
                        and ln.get_color() == colours[repr(f"model.activation={a}")])
            want = [np.mean([r[key] for r in rows if r["model.activation"] == a and r["step"] == st and r["layer"] == layer])
                    for st in (0, 5, 50)]
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
            np.testing.assert_allclose(line.get_xdata(), [0, 5, 50])


def test_sweep_tables_carry_accuracy_and_every_checkpoint():
    from dnfa_cli import report as rp

    rows = [{"run_id": f"r{s}", "status": "ok", "layer": 1, "step": st, "seed": s, "model.width": 8,
             "pearson_a1": 0.1 * st + s, "test_acc": 0.5 + 0.01 * st + 0.1 * s} for s in (0, 1) for st in (0, 10)]
    (grouped,) = rp.sweep_tables(rows, ["seed"], terminal=True)
    col = grouped[1].index("test_acc\ninit -> end")
    assert grouped[2][0][col] == f"{0.55:.3f} -> {0.65:.3f}±{np.std([0.6, 0.7], ddof=1):.3f}"
    grouped, per_run = rp.sweep_tables(rows, ["seed"], all_checkpoints=True)
    assert [r[grouped[1].index("step")] for r in grouped[2]] == ["0", "10"]
    assert [(r[0], r[per_run[1].index("step")]) for r in per_run[2]] == [("r0", "0"), ("r0", "10"), ("r1", "0"), ("r1", "10")]
    col = per_run[1].index("pearson_a1")
    assert [float(r[col]) for r in per_run[2]] == [0.0, 1.0, 1.0, 2.0]


# the keys issue 16 added: runs made before them lack them
NEW_KEYS = ("traceless_pearson_a1", "offdiag_pearson_a05", "delta_traceless_pearson_a05", "alpha_curve_range",
            "iso_dim90", "iso_frac90", "rand_iso_dim90", "cka_init", "kta")


def test_runs_made_before_a_statistic_existed_load_with_it_missing(made, tmp_path):
    """An old run's result.json lacks the newer keys: its report, and a sweep report that
    mixes it with new runs, show them as missing ('-', an empty csv cell), never crash."""
    root, res, sweep_id = made
    old = tmp_path / "runs"
    shutil.copytree(root, old)
    rec = json.loads((old / "sweeps" / f"{sweep_id}.json").read_text())
    stripped = [res["run_id"], rec["runs"][0]["run_id"]]
    for rid in stripped:
        p = old / rid / "result.json"
        doc = json.loads(p.read_text())
        for ck in doc["checkpoints"]:
            for L in ck["layers"]:
                assert all(k in L for k in NEW_KEYS)  # today's runs have them, at every checkpoint
                for k in NEW_KEYS:
                    del L[k]
        p.write_text(json.dumps(doc))
    r = _report(old, res["run_id"])
    assert r.exit_code == 0, r.output
    r = _report(old, res["run_id"], "--format", "csv", "--all-checkpoints")
    assert r.exit_code == 0 and "iso_dim90" not in r.stdout.splitlines()[0]
    r = _report(old, sweep_id, "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    for row in rows:
        for k in NEW_KEYS:
            assert (row[k] == "") == (row["run_id"] in stripped), (row["run_id"], k)
    r = _report(old, sweep_id)
    assert r.exit_code == 0, r.output


@pytest.mark.skipif(not hasattr(os, "fork"), reason="draws in forked processes")
@pytest.mark.filterwarnings("ignore:os.fork")  # this test process has JAX's threads; the children do not touch JAX
def test_figures_drawn_side_by_side_are_the_files_drawn_one_by_one(made, tmp_path, monkeypatch):
    """draw_all: children forked from the report's process draw the very files it draws
    alone, byte for byte, with the same captions in the same order; the jobs are shared
    out among the processes, and an error in any of them (a full disk) reaches the caller
    after the others finished."""
    import time

    from dnfa_cli import report as rp

    root, _, sweep_id = made
    rec = runs.load_sweep(root, sweep_id)
    rows = rp.sweep_rows(root, rec, "all")
    monkeypatch.setattr(rp, "DRAW_PROCESSES", 1)
    alone = rp.sweep_figures(rows, rec["varied"], tmp_path / "alone")
    monkeypatch.setattr(rp, "DRAW_PROCESSES", 3)
    side = rp.sweep_figures(rows, rec["varied"], tmp_path / "side")
    assert len(alone) == 4 and [(f.name, c) for f, c in side] == [(f.name, c) for f, c in alone]
    for (a, _), (b, _) in zip(alone, side):
        assert a.read_bytes() == b.read_bytes()

    def job(i):
        time.sleep(0.5)
        (tmp_path / f"pid{i}").write_text(str(os.getpid()))
        return tmp_path / f"pid{i}"

    got = rp.draw_all([(lambda i=i: job(i), f"c{i}") for i in range(6)] + [(lambda: None, "nothing")])
    assert [c for _, c in got] == [f"c{i}" for i in range(6)]
    assert len({(tmp_path / f"pid{i}").read_text() for i in range(6)}) >= 2  # not one process alone

    def full():
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    with pytest.raises(OSError, match="No space left") as e:
        rp.draw_all([(lambda i=i: job(i), "") for i in range(4)] + [(full, "")])
    assert e.value.filename == str(tmp_path / "x.png")
    # any other error, drawn by whichever process: raised, or its child's traceback as text
    with pytest.raises((ZeroDivisionError, RuntimeError), match="division by zero"):
        rp.draw_all([(lambda i=i: job(i), "") for i in range(2)] + [(lambda: 1 / 0, "")] * 2)
