"""Daily use (issue 20): YAML 1.2 numbers, the command line's values, linked parameters
and named sweeps. Expected values are written out here, never taken from the code."""
import json
import re

import pytest
import yaml

from dnfa_cli import config, sweep, sweepspec, yaml12

BASE = ("name: b\ndata: {task: monomial, d: 5, n_train: 48, n_test: 16}\nmodel: {depth: 1, width: 8}\n"
        "metrics: {samples: 24}\n")


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("text,value", [
    ("1e-3", 0.001), ("5E-4", 0.0005), (".5", 0.5), ("-.5", -0.5), ("+.25", 0.25), ("1.0e3", 1000.0),
    ("1.5e+2", 150.0), ("2e5", 200000.0), (".5e1", 5.0), ("1.", 1.0), ("1.0e-3", 0.001), ("-1E-2", -0.01),
])
def test_yaml_1_2_floats_are_numbers(text, value):
    v = yaml12.load(f"x: {text}")["x"]
    assert type(v) is float and v == value


@pytest.mark.parametrize("text,value", [
    # everything else keeps its YAML 1.1 meaning
    ("yes", True), ("on", True), ("off", False), ("1_000", 1000), ("0x1F", 31), ("12", 12), ("-3", -3),
    ("1e", "1e"), ("e5", "e5"), ("1e-", "1e-"), ("relu", "relu"), (".inf", float("inf")), ("1.5", 1.5),
    ("'1e-3'", "1e-3"), ("1:30", 90), ("2024-01-02", None),
])
def test_everything_else_reads_as_before(text, value):
    v = yaml12.load(f"x: {text}")["x"]
    if value is None:  # a date stays a date
        assert v == yaml.safe_load(f"x: {text}")["x"]
    else:
        assert v == value and type(v) is type(value)
    assert v == yaml.safe_load(f"x: {text}")["x"]  # YAML 1.1 reads these the same


def test_1e_3_is_a_number_in_files_set_grid_and_sweeps(tmp_path):
    p = _write(tmp_path, BASE + "train: {lr: 1e-3, weight_decay: 5E-4}\n")
    cf = config.load_config(p)
    assert cf.base.train.lr == 0.001 and cf.base.train.weight_decay == 0.0005
    # the same run as the config written with 0.001
    plain = config.validate(yaml.safe_load(BASE + "train: {lr: 0.001, weight_decay: 0.0005}\n"))
    assert cf.base.run_id == plain.run_id
    assert config.load_config(p, ["train.lr=2e-2"]).base.train.lr == 0.02
    assert [c.train.lr for c in config.load_config(p, grid=["train.lr=1e-1,1E-2"]).expand()] == [0.1, 0.01]
    s = _write(tmp_path, BASE + "sweep:\n  method: random\n  count: 5\n  parameters:\n"
               "    train.lr: {distribution: log_uniform, min: 1e-4, max: 1e-2}\n"
               "    model.init_scale: {values: [.5, 2e0]}\n", "r.yaml")
    runs = config.load_config(s).expand()
    assert all(1e-4 <= r.train.lr <= 1e-2 for r in runs) and {r.model.init_scale for r in runs} <= {0.5, 2.0}


# ----------------------------------------------------------------------------- --set and --grid
def test_an_empty_set_value_is_refused_not_the_default(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(config.ConfigError, match=r"--set 'model.width=': no value"):
        config.load_config(p, ["model.width="])
    assert config.load_config(p, ["model.width=null"]).base.model.width == 1024  # null still says "the default"


@pytest.mark.parametrize("item,key,values", [
    ("model.width=64,256", "model.width", [64, 256]),
    ("model.width=[64, 256]", "model.width", [64, 256]),  # a YAML flow list of values
    ("data.coords=[0,1]", "data.coords", [[0, 1]]),  # a list-valued key: one value, not split at its comma
    ("data.coords=[0,1],[0,2]", "data.coords", [[0, 1], [0, 2]]),
    ("data.coords=[[0,1],[0,2]]", "data.coords", [[0, 1], [0, 2]]),
    ("train={optimizer: sgd, lr: 0.1},{optimizer: adam}", "train", [{"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam"}]),
    ("train=[{optimizer: sgd, lr: 0.1}, {optimizer: adam, lr: 1e-3}]", "train",
     [{"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam", "lr": 0.001}]),
    ("model.activation='a,b',relu", "model.activation", ["a,b", "relu"]),
])
def test_grid_values_split_at_top_level_commas_only(item, key, values):
    assert sweepspec.parse_grid([item], config.takes_list) == [(key, values)]


def test_grid_twice_on_one_key_and_empty_values_are_refused(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(config.ConfigError, match="--grid model.width is given twice"):
        config.load_config(p, grid=["model.width=8,16", "model.width=32"])
    with pytest.raises(config.ConfigError, match="no value"):
        config.load_config(p, grid=["model.width=8,"])
    # two keys: both kept
    assert len(config.load_config(p, grid=["model.width=8,16", "model.depth=1,2"]).expand()) == 4


def test_a_long_file_name_gives_a_valid_name(tmp_path):
    p = _write(tmp_path, BASE.replace("name: b\n", ""), "x" * 80 + ".yaml")
    assert config.load_config(p).base.name == "x" * 64
    assert config.takes_list("data.coords") and config.takes_list("model.widths")
    assert not config.takes_list("metrics.checkpoints") and not config.takes_list("model.width")


# ----------------------------------------------------------------------------- linked parameters
LINKED = BASE + """train: {optimizer: sgd, lr: 0.1, momentum: 0.9, epochs: 2, batch_size: 16}
sweep:
  parameters:
    train: {values: [{optimizer: sgd, lr: 0.1}, {optimizer: adam, lr: 1e-3}]}
    seed: {values: [0, 1]}
"""


def _cfg(**train):
    raw = yaml.safe_load(BASE)
    raw["train"] = {"epochs": 2, "batch_size": 16, **train}
    return raw


def test_linked_parameters_set_their_keys_together(tmp_path):
    notes = []
    runs = config.load_config(_write(tmp_path, LINKED)).expand(notes=notes)
    want = [config.validate({**_cfg(**t), "seed": s}) for t in
            ({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, {"optimizer": "adam", "lr": 0.001}) for s in (0, 1)]
    # the ids are those of the configs written out by hand: adam without the base's momentum
    assert [r.run_id for r in runs] == [w.run_id for w in want]
    assert [(r.train.optimizer, r.train.lr, r.train.momentum) for r in runs] == \
        [("sgd", 0.1, 0.9)] * 2 + [("adam", 0.001, 0.0)] * 2
    assert notes == [f"{tmp_path / 's.yaml'}: train.momentum = 0.9 of the base config is dropped where it does not "
                     "apply (momentum applies to optimizer sgd only): 2 of 4 runs"]


def test_linked_parameters_in_a_random_sweep_and_on_the_command_line(tmp_path):
    p = _write(tmp_path, LINKED.replace("  parameters:", "  method: random\n  count: 12\n  seed: 3\n  parameters:"))
    runs = config.load_config(p).expand()
    assert {(r.train.optimizer, r.train.lr) for r in runs} == {("sgd", 0.1), ("adam", 0.001)}
    plain = _write(tmp_path, BASE, "plain.yaml")
    runs = config.load_config(plain, grid=["train=[{optimizer: sgd, lr: 0.1}, {optimizer: adam, lr: 1e-3}]"]).expand()
    assert [r.run_id for r in runs] == [config.validate({**yaml.safe_load(BASE), "train": t}).run_id
                                        for t in ({"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam", "lr": 0.001})]


def test_linked_data_switches_task_and_drops_the_keys_of_the_old_one(tmp_path):
    p = _write(tmp_path, BASE + "train: {batch_size: 8, epochs: 1}\nsweep:\n  parameters:\n"
               "    data: {values: [{d: 6}, {task: modular, p: 7}]}\n")
    notes = []
    runs = config.load_config(p).expand(notes=notes)
    assert (runs[0].data.task, runs[0].data.d, runs[0].data.n_train) == ("monomial", 6, 48)
    assert (runs[1].data.task, runs[1].data.p) == ("modular", 7)
    assert sorted(n.split(": ", 1)[1].split(" of the base")[0] for n in notes) == \
        ["data.d = 5", "data.n_test = 16", "data.n_train = 48"]
    s = _write(tmp_path, BASE + "train: {epochs: 2}\nsweep:\n  parameters:\n    train: {values: [{steps: 3}]}\n", "st.yaml")
    assert config.load_config(s).expand()[0].train.steps == 3  # epochs dropped: the run sets steps


@pytest.mark.parametrize("params,msg", [
    ("train: {values: [{optimizer: adam}, 3]}", "sweep.parameters.train.values[1] = 3: train is a section; each value must be a mapping"),
    ("train: {values: [{optimiser: adam}]}", "sweep.parameters.train: train.optimiser: no such config key (did you mean train.optimizer?)"),
    ("train: {values: [{lr: 0.1}]}\n    train.lr: {values: [0.2]}", "sweep.parameters: train.lr is set by both train and train.lr"),
    ("train: {distribution: uniform, min: 0, max: 1}", "sweep.parameters.train: a distribution needs method: random"),
    ("train: {values: [{optimizer: adam, momentum: 0.9}]}", "momentum applies to optimizer sgd only"),  # written, so refused
])
def test_bad_linked_parameters(tmp_path, params, msg):
    p = _write(tmp_path, BASE + f"sweep:\n  parameters:\n    {params}\n")
    with pytest.raises(config.ConfigError) as e:
        config.load_config(p).expand()
    assert msg in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- sweep names
def test_a_sweep_is_named_by_sweep_name_or_name_flag(tmp_path):
    a = _write(tmp_path, BASE + "train: {batch_size: 16}\nsweep:\n  name: study\n  parameters:\n    seed: {values: [0, 1]}\n", "a.yaml")
    b = _write(tmp_path, BASE.replace("name: b", "name: c") + "train: {batch_size: 16}\n", "b.yaml")
    pa = sweep.plan([str(a)])
    assert pa.sweep_id.startswith("sweep-study-") and len(pa.sweep_id) == len("sweep-study-") + 10
    assert sweep.plan([str(a), str(b)]).sweep_id.startswith("sweep-study-")
    assert sweep.plan([str(b), str(a)], name="mine").sweep_id.startswith("sweep-mine-")
    assert sweep.plan([str(b)]).sweep_id.startswith("sweep-c-")  # unnamed: the runs' name, as before
    # the name does not change the runs, and --set on the only swept key keeps the name
    assert [c.run_id for c in pa.configs] == [c.run_id for c in sweep.plan([str(a)], name="x").configs]
    assert sweep.plan([str(a)], ["seed=3"]).sweep_id.startswith("sweep-study-")
    only = _write(tmp_path, BASE + "train: {batch_size: 16}\nsweep: {name: solo}\n", "only.yaml")
    assert len(sweep.plan([str(only)]).configs) == 1 and sweep.plan([str(only)]).sweep_id.startswith("sweep-solo-")
    for bad in ("a+b", "-x", "a/b", "a..b", "x" * 65):
        with pytest.raises(config.ConfigError, match="--name = .*must start with a letter or digit"):
            sweep.plan([str(a)], name=bad)
    with pytest.raises(config.ConfigError, match=r"sweep.name = 'a b': must start"):
        sweep.plan([str(_write(tmp_path, BASE + "sweep: {name: a b}\n", "bad.yaml"))])


# ----------------------------------------------------------------------------- ids the tool prints
def _cli(*args, input=None):
    from typer.testing import CliRunner

    from dnfa_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], input=input)


TINY = BASE.replace("metrics: {samples: 24}", "metrics: {checkpoints: 1, samples: 24}") + "train: {batch_size: 16, epochs: 1}\n"


def test_every_id_the_tool_prints_is_accepted_by_report_ls_compare_and_rm(tmp_path):
    """A sweep of two files has a `+` in its id; the commands it prints, and ls, compare
    and rm on that id, all work - also once a second such sweep shares its prefix."""
    import shlex

    tiny = TINY
    a = _write(tmp_path, tiny.replace("name: b", "name: opt_adam"), "a.yaml")
    b = _write(tmp_path, tiny.replace("name: b", "name: opt_sgd") + "sweep: {parameters: {seed: {values: [0, 1]}}}\n", "b.yaml")
    rd = tmp_path / "runs"
    r = _cli("sweep", a, b, "--workers", "1", "--runs-dir", rd)
    assert r.exit_code == 0, r.output
    sid = re.search(r"^sweep (\S+):", r.stdout, re.M).group(1)
    assert sid.startswith("sweep-opt_adam+1-")
    printed = re.search(r"^report: (dnfa .*)$", r.stdout, re.M).group(1)
    r2 = _cli(*shlex.split(printed)[1:])
    assert r2.exit_code == 0, r2.output
    assert f"sweep {sid}: 3 runs from {a}, {b}; ok 3" in r2.stdout
    # a second sweep of two files with the same first name: same prefix, both still reachable
    c = _write(tmp_path, tiny.replace("name: b", "name: opt_sgd") + "seed: 5\n", "c.yaml")
    assert _cli("sweep", a, c, "--workers", "1", "--runs-dir", rd).exit_code == 0
    ls = _cli("ls", "--sweep", sid, "--runs-dir", rd)
    assert ls.exit_code == 0, ls.output
    assert ls.stdout.startswith(f"3 runs in {rd.absolute()} (sweep {sid})")
    run_ids = sorted(re.findall(r"(opt_\w+-[0-9a-f]{10})", ls.stdout))
    assert len(set(run_ids)) == 3
    cmp = _cli("compare", sid, "--runs-dir", rd, "--format", "json")
    assert cmp.exit_code == 0, cmp.output
    assert sorted({row["run_id"] for row in json.loads(cmp.stdout)}) == sorted(set(run_ids))
    assert _cli("report", run_ids[0], "--runs-dir", rd).exit_code == 0
    # rm: asks, and no answer removes nothing
    size = sum(f.stat().st_size for rid in run_ids for f in (rd / rid).rglob("*") if f.is_file()) \
        + (rd / "sweeps" / f"{sid}.json").stat().st_size + sum(f.stat().st_size for f in (rd / "sweeps" / sid).rglob("*") if f.is_file())
    no = _cli("rm", sid, "--runs-dir", rd, input="n\n")
    assert no.exit_code == 1 and "nothing removed" in no.stderr and all((rd / rid).exists() for rid in run_ids)
    yes = _cli("rm", sid, "--runs-dir", rd, input="y\n")
    assert yes.exit_code == 0, yes.output
    assert f"sweep {sid}: its record and 3 runs" in yes.stdout
    assert "note: 1 of these runs is also in sweep" in yes.stdout  # opt_adam's run is in the second sweep too
    from dnfa_cli.cleanup import human_bytes

    assert f"removed 1 sweep and 3 runs: freed {human_bytes(size)}" in yes.stdout
    assert not any((rd / rid).exists() for rid in run_ids) and not (rd / "sweeps" / f"{sid}.json").exists()
    assert _cli("report", sid, "--runs-dir", rd).exit_code == 2


def test_rm_refuses_a_running_run_and_unknown_ids(tmp_path):
    from dnfa_cli import runs

    rd = tmp_path / "runs"
    p = _write(tmp_path, TINY)
    assert _cli("train", p, "--runs-dir", rd).exit_code == 0
    rid = runs.list_run_ids(rd)[0]
    with runs.run_lock(rd, rid):  # as a training holds it
        r = _cli("rm", rid, "--yes", "--runs-dir", rd)
    assert r.exit_code == 1 and f"run {rid} is being trained now" in r.stderr and (rd / rid).exists()
    r = _cli("rm", "nosuch", "--yes", "--runs-dir", rd)
    assert r.exit_code == 2 and "no run or sweep 'nosuch'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("rm", rid[:4], "--yes", "--runs-dir", rd)  # a unique prefix, as everywhere
    assert r.exit_code == 0 and "removed 1 run: freed" in r.stdout and not (rd / rid).exists()


# ----------------------------------------------------------------------------- disk
def test_save_weights_ends_keeps_the_first_and_last_weights_only(tmp_path):
    import numpy as np

    from dnfa_cli import engine, runs

    raw = yaml.safe_load(TINY)
    raw["train"]["epochs"] = 3
    raw["metrics"]["checkpoints"] = 4
    every = config.validate(raw)
    ends = config.validate({**raw, "metrics": {**raw["metrics"], "save_weights": "ends"}})
    assert every.run_id == config.validate({**raw, "metrics": {**raw["metrics"], "save_weights": "all"}}).run_id
    ra, re_ = engine.execute([every], tmp_path), engine.execute([ends], tmp_path)
    steps = [c["step"] for c in ra[0]["checkpoints"]]
    assert len(steps) >= 4 and [c["step"] for c in re_[0]["checkpoints"]] == steps
    files = lambda cfg: sorted(f.name for f in (tmp_path / cfg.run_id / "checkpoints").glob("step_*.npz"))
    assert files(every) == [f"step_{s:07d}.npz" for s in steps]
    assert files(ends) == [f"step_{steps[0]:07d}.npz", f"step_{steps[-1]:07d}.npz"]
    assert runs.result_status(tmp_path, ends.run_id) == "ok"  # its manifest lists what is there
    for s in (steps[0], steps[-1]):  # the same training: the same weights where both keep them
        a = np.load(tmp_path / every.run_id / "checkpoints" / f"step_{s:07d}.npz")
        b = np.load(tmp_path / ends.run_id / "checkpoints" / f"step_{s:07d}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert runs.disk_usage(tmp_path / ends.run_id) < runs.disk_usage(tmp_path / every.run_id)


# ----------------------------------------------------------------------------- no silent start
def test_train_says_its_run_and_directory_before_making_data_or_training(tmp_path, monkeypatch):
    from dnfa_cli import engine

    events = []
    real_prepare, real_execute = engine.prepare, engine.execute
    monkeypatch.setattr(engine, "prepare", lambda cfg: (events.append("prepare"), real_prepare(cfg))[1])
    monkeypatch.setattr(engine, "execute", lambda *a, **k: (events.append("execute"), real_execute(*a, **k))[1])
    cfg = config.validate(yaml.safe_load(TINY))
    engine.train_one(cfg, tmp_path, on_start=lambda rid, d: events.append(("start", rid, d)),
                     on_phase=lambda what: events.append(what))
    assert events == [("start", cfg.run_id, (tmp_path / cfg.run_id).absolute()), "preparing data", "prepare",
                      "starting", "execute"]
    r = _cli("train", _write(tmp_path, TINY), "--runs-dir", tmp_path / "r")
    assert r.exit_code == 0 and r.stdout.startswith(f"run {cfg.run_id} -> ")
    assert "] measuring checkpoint 1/" in r.stderr and "(compiling)" in r.stderr


def _progress_on(monkeypatch, file):
    from dnfa_cli import cli

    monkeypatch.setattr(cli, "err", cli._Console(file=file, stderr=True, highlight=False, soft_wrap=True))
    monkeypatch.setattr(cli._RunProgress, "TICK", 0.01)
    return cli._RunProgress()


def _wait_for(cond, what):
    import time

    for _ in range(3000):  # a safety net against a hang, not a timing claim
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_the_ticker_repeats_the_phase_during_one_long_call(monkeypatch):
    import io

    buf = io.StringIO()
    with _progress_on(monkeypatch, buf) as show:
        show.phase("measuring checkpoint 1/5 (compiling)")
        # the call that compiles blocks the main thread; the ticker keeps talking
        _wait_for(lambda: buf.getvalue().count("measuring checkpoint 1/5 (compiling)") >= 3, "three phase lines")
    lines = buf.getvalue().splitlines()
    assert all(re.fullmatch(r"\[\d+:\d\d:\d\d\] measuring checkpoint 1/5 \(compiling\)", x) for x in lines), lines


def test_a_closed_stderr_silences_the_ticker_and_never_stops_it(monkeypatch):
    import os

    r, w = os.pipe()
    os.close(r)  # the reader is gone, as after `2>&1 | head -1`
    f = os.fdopen(w, "w")
    try:
        show = _progress_on(monkeypatch, f)
        said = []
        real = show._say
        show._say = lambda text: (said.append(text), real(text))
        with show:
            show.phase("training step 0/10 (compiling)")
            _wait_for(lambda: len(said) >= 5, "five tries to say the phase")
            assert show.ticker.is_alive()
        from dnfa_cli import cli

        assert cli.err.quiet  # silenced by the first failed write
    finally:
        f.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sweep_prints_its_plan_at_once_and_a_line_as_each_run_starts(tmp_path, workers):
    p = _write(tmp_path, TINY + "sweep: {parameters: {seed: {values: [0, 1]}}}\n")
    ids = [c.run_id for c in config.load_config(p).expand()]
    r = _cli("sweep", p, "--workers", workers, "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    plan = next(i for i, x in enumerate(out) if x.startswith("sweep sweep-"))
    for rid in ids:
        started = out.index(f"      started   {rid}")  # under the run ids of the [k/n] lines
        done = next(i for i, x in enumerate(out) if re.match(rf"\[\d/2\] ok +{rid} ", x))
        assert plan < started < done
    one = _write(tmp_path, TINY, "one.yaml")
    r = _cli("sweep", one, "--workers", workers, "--runs-dir", tmp_path / "runs", "--dry-run")
    assert re.search(r"^sweep sweep-b-[0-9a-f]{10}: 1 run, 1 done, 0 to run$", r.stdout, re.M), r.stdout
    r = _cli("report", "--where", "seed=0", "--runs-dir", tmp_path / "runs")
    assert r.exit_code == 0 and r.stdout.startswith("1 run where seed=0; ok 1"), r.stdout


def test_the_example_config_sweeps_sgd_and_adam_as_pairs():
    from pathlib import Path

    p = Path(__file__).parent.parent / "configs" / "sgd_vs_adam.yaml"
    plan = sweep.plan([str(p)])
    assert plan.sweep_id.startswith("sweep-sgd-vs-adam-")
    raw = yaml.safe_load(p.read_text())
    del raw["sweep"]
    adam = {**raw["train"], "optimizer": "adam", "lr": 0.001}
    del adam["momentum"]
    want = [config.validate({**raw, "train": {**raw["train"], "lr": 0.01}, "seed": s}).run_id for s in (0, 1, 2)]
    want += [config.validate({**raw, "train": adam, "seed": s}).run_id for s in (0, 1, 2)]
    assert [c.run_id for c in plan.configs] == want
    assert len(plan.notes) == 1 and "train.momentum = 0.9 of the base config is dropped" in plan.notes[0]
    from dnfa_cli import report as rp

    assert [rp.fmt_config(plan.params[c.run_id], "train.momentum") for c in plan.configs] == ["0.9"] * 3 + ["-"] * 3
    assert [rp.fmt_config(plan.params[c.run_id], "train.lr") for c in plan.configs] == ["0.01"] * 3 + ["0.001"] * 3


# ----------------------------------------------------------------------------- what tables and figures say
def _view(run_id, status, cfg, steps=(0, 101)):
    from dnfa_cli import report as rp

    cks = [{"step": s, "epoch": s / 10, "train_loss": 1.0, "test_loss": 1.0,
            "layers": [{"layer": 1, "shape": [4, 3], "pearson_a05": 0.5, "pearson_a1": 0.4, "tightness_range": 0.3}]}
           for s in steps]
    return rp.RunView(run_id, __import__("pathlib").Path("/nonexistent"), status, cfg, cks)


def test_an_unfinished_run_has_a_latest_checkpoint_not_an_end():
    from dnfa_cli import report as rp

    cfg = config.validate({"name": "x"}).to_dict()
    for status, label in (("interrupted", "latest (101)"), ("running", "latest (101)"), ("ok", "end (101)"),
                          ("diverged", "end (101)")):
        headers = {tuple(h) for _, h, _ in rp.run_tables(_view("x-1", status, cfg))[1:]}
        assert headers == {("statistic", "init (0)", label)}, (status, headers)


def _figure_of(monkeypatch, draw):
    from dnfa_cli import report as rp

    got = {}
    monkeypatch.setattr(rp, "_save", lambda fig, path: got.setdefault("fig", fig) and path)
    draw()
    return got["fig"]


def test_figures_say_what_the_run_is_and_compare_legends_what_differs(monkeypatch, tmp_path):
    from dnfa_cli import report as rp

    sgd = config.validate({"name": "opt", "model": {"depth": 2, "width": 64}, "train": {"momentum": 0.9}}).to_dict()
    adam = config.validate({"name": "opt", "model": {"depth": 2, "width": 64},
                            "train": {"optimizer": "adam", "lr": 1e-3}}).to_dict()
    v = _view("opt-0123456789", "ok", sgd)
    fig = _figure_of(monkeypatch, lambda: rp.fig_curves(v, tmp_path / "c.png"))
    assert fig._suptitle.get_text() == "opt: monomial, 64x64 relu, sgd lr 0.1, seed 0\nthe ansatz and tightness during training"
    assert "opt-0123456789" in [t.get_text() for t in fig.texts]  # the id, small, below
    views = [v, _view("opt-abcdefabcd", "ok", adam)]
    fig = _figure_of(monkeypatch, lambda: rp.fig_compare(views, tmp_path / "k.png"))
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # momentum does not apply to adam: not in its label
    assert legend == ["lr=0.1, momentum=0.9, optimizer=sgd", "lr=0.001, optimizer=adam"]


def _sweep_rows():
    rows = []
    for width in (8, 16, 32, 64, 128, 256):
        for opt, lr in (("sgd", 0.1), ("adam", 0.001)):
            for seed in (0, 1):
                rows.append({"run_id": f"r{width}{opt}{seed}", "status": "ok", "layer": 1, "model.width": width,
                             "train.lr": lr, "train.optimizer": opt, "train.momentum": 0.0, "seed": seed,
                             "pearson_a05": 0.5, "pearson_a1": 0.6 + seed / 10, "rand_pearson_a1": 0.3,
                             "alpha_star": 0.2, "tightness_range": 0.1, "half_range_pearson": 0.4, "test_loss": 1.0})
    return rows


def test_scatter_colours_tell_apart_the_keys_with_fewest_values_not_the_first_alphabetically():
    from dnfa_cli import report as rp

    rows = _sweep_rows()
    varied = ["model.width", "seed", "train.lr", "train.optimizer"]
    # 6 widths, 2 optimizer/lr pairs (linked: they vary together): the pair, not model.width
    assert rp.colour_keys(rows, varied) == ["train.lr", "train.optimizer"]
    two = [r for r in rows if r["model.width"] <= 16]  # 2 widths, 2 pairs: a tie, the sweep's order
    assert rp.colour_keys(two, varied) == ["model.width"]
    assert rp.colour_keys(two, ["train.optimizer", "model.width", "train.lr"]) == ["train.optimizer", "train.lr"]
    assert rp.colour_keys(rows, ["seed"]) == []


def test_lr_gets_a_log_axis_and_the_random_baseline_shares_pearson_a1s_panel(monkeypatch, tmp_path):
    from dnfa_cli import report as rp

    rows = _sweep_rows()
    fig = _figure_of(monkeypatch, lambda: rp.fig_stat_vs_param(rows, "train.lr", ["model.width", "seed", "train.lr",
                                                                                  "train.optimizer"], tmp_path / "s.png"))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert "rand_pearson_a1" not in panels  # no panel of its own
    ax = panels["pearson_a1 (filled) and rand_pearson_a1 (hollow: a random W)"]
    assert ax.get_xscale() == "log"  # two learning rates 100x apart
    points = [ln for ln in ax.lines if ln.get_marker() == "o"]  # layer 1's marker (the caps are lines too)
    hollow = [ln for ln in points if ln.get_markerfacecolor() == "none"]
    filled = [ln for ln in points if ln.get_markerfacecolor() != "none"]
    assert len(hollow) == len(filled) == 12  # each width x optimizer point twice: trained W and random W
    assert sorted(round(y, 6) for ln in hollow for y in ln.get_ydata()) == [0.3] * 12
    assert sorted(round(y, 6) for ln in filled for y in ln.get_ydata()) == [0.65] * 12  # mean over the two seeds


def test_the_command_line_wins_over_a_linked_value(tmp_path):
    p = _write(tmp_path, LINKED)
    cf = config.load_config(p, ["train.lr=0.5"])
    runs = cf.expand()
    assert [(r.train.optimizer, r.train.lr) for r in runs] == [("sgd", 0.5)] * 2 + [("adam", 0.5)] * 2
    assert cf.notes == [f"--set train.lr=0.5 replaces the sweep's values for train.lr in {p}"]
    runs = config.load_config(p, grid=["train.lr=0.2,0.02"]).expand()
    assert sorted({(r.train.optimizer, r.train.lr) for r in runs}) == \
        [("adam", 0.02), ("adam", 0.2), ("sgd", 0.02), ("sgd", 0.2)]
    # a linked parameter left with nothing to set goes: seeds only
    only_lr = _write(tmp_path, BASE + "sweep:\n  parameters:\n    train: {values: [{lr: 0.1}, {lr: 1e-3}]}\n"
                     "    seed: {values: [0, 1]}\n", "lr.yaml")
    assert [(r.train.lr, r.seed) for r in config.load_config(only_lr, ["train.lr=0.3"]).expand()] == [(0.3, 0), (0.3, 1)]


def test_keys_swept_together_get_one_figure(monkeypatch, tmp_path):
    from dnfa_cli import report as rp

    rows = _sweep_rows()
    names = []
    monkeypatch.setattr(rp, "_save", lambda fig, path: names.append((path.name, fig._suptitle and fig._suptitle.get_text()))
                        or path)
    monkeypatch.setattr(rp, "DRAW_PROCESSES", 1)  # names are appended in this process
    rp.sweep_figures(rows, ["model.width", "seed", "train.lr", "train.optimizer"], tmp_path)
    stats = sorted(n for n in names if n[0].startswith("stats_vs_"))
    assert [n for n, _ in stats] == ["stats_vs_model_width.png", "stats_vs_train_lr.png"]
    assert stats[1][1].startswith("final statistics against train.lr (with train.optimizer):")


def test_a_key_that_takes_a_mapping_is_not_a_section(tmp_path):
    """model.init_from is a config key whose values are mappings (or null): swept as
    values, never merged as linked parameters, and its inline source config never dropped."""
    p = _write(tmp_path, TINY + "sweep:\n  parameters:\n    model.init_from:\n      values:\n        - null\n"
               "        - {layers: [1], keep: trained, config: {model: {width: 16}}}\n")
    runs = config.load_config(p).expand()
    assert runs[0].model.init_from is None
    assert runs[1].model.init_from.keep == "trained" and runs[1].model.init_from.config["model"]["width"] == 16


# ----------------------------------------------------------------------------- ls
def test_ls_size_column_sorts_and_filters_by_the_disk_a_run_takes(tmp_path):
    import os

    from dnfa_cli.cleanup import human_bytes

    rd = tmp_path / "runs"
    small = _write(tmp_path, TINY.replace("metrics: {", "metrics: {save_weights: ends, "), "small.yaml")
    big = _write(tmp_path, TINY.replace("width: 8", "width: 64").replace("name: b", "name: big"), "big.yaml")
    for f in (small, big):
        assert _cli("train", f, "--runs-dir", rd, "--set", "train.epochs=3", "--set", "metrics.checkpoints=3").exit_code == 0
    du = {d.name: sum(os.path.getsize(os.path.join(w, f)) for w, _, fs in os.walk(d) for f in fs)
          for d in rd.iterdir() if (d / "config.yaml").exists()}
    r = _cli("ls", "--runs-dir", rd, "--size", "--format", "json", "--columns", "run_id,size")
    assert {row["run_id"]: row["size"] for row in json.loads(r.stdout)} == du
    r = _cli("ls", "--runs-dir", rd, "--sort", "-size", "--columns", "run_id,size")  # --sort size asks for sizes
    order = sorted(du, key=du.get, reverse=True)
    assert [x.split()[1] for x in r.stdout.splitlines() if x.startswith("│")] == order
    assert all(human_bytes(du[rid]) in r.stdout for rid in du)
    r = _cli("ls", "--runs-dir", rd, "--where", f"size>{min(du.values())}", "--ids")
    assert r.stdout.split() == [max(du, key=du.get)]


def test_ls_and_where_read_values_as_a_config_does(tmp_path):
    rd = tmp_path / "runs"
    p = _write(tmp_path, TINY + "sweep:\n  parameters:\n    train: {values: [{optimizer: sgd, lr: 0.1, momentum: 0.9},"
               " {optimizer: adam, lr: 1e-3}]}\n    model.bias: {values: [true, false]}\n")
    assert _cli("sweep", p, "--workers", "1", "--runs-dir", rd).exit_code == 0
    ids = lambda *w: sorted(_cli("ls", "--runs-dir", rd, "--ids", *[a for x in w for a in ("--where", x)]).stdout.split())
    adam = ids("train.optimizer=adam")
    assert len(adam) == 2 and ids("train.lr=1e-3") == adam and ids("train.lr=.001") == adam
    assert ids("model.bias=yes") == ids("model.bias=true") == ids("model.bias=on") and len(ids("model.bias=yes")) == 2
    assert ids("model.bias=off") == ids("model.bias=false") and set(ids("model.bias=off")).isdisjoint(ids("model.bias=on"))
    r = _cli("ls", "--runs-dir", rd, "--columns", "run_id,train.optimizer,train.lr,train.momentum")
    rows = {tuple(c.strip() for c in x.split("│")[2:5]) for x in r.stdout.splitlines() if x.startswith("│")}
    assert rows == {("sgd", "0.1", "0.9"), ("adam", "0.001", "-")}
