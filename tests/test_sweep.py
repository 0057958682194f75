"""`dnfa sweep`: expansion, idempotence, seed batching, interruption, concurrency, Dask."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dnfa_cli import config, engine, rules, runs, sweep
from dnfa_cli.cli import app

runner = CliRunner()

BASE = {
    "name": "g",
    "data": {"task": "monomial", "d": 5, "n_train": 48, "n_test": 16},
    "model": {"depth": 1, "width": 8},
    "train": {"lr": 0.05, "batch_size": 16, "epochs": 2},
    "metrics": {"checkpoints": 1, "samples": 24},
}


def _file(tmp_path, params, base=BASE, name="s.yaml", **sweep_extra):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({**base, "sweep": {"method": "grid", "parameters": params, **sweep_extra}}))
    return p


def _sweep(tmp_path, *args):
    return runner.invoke(app, ["sweep", *map(str, args), "--runs-dir", str(tmp_path / "runs")])


def _counts(text):
    m = re.search(r"ok (\d+), diverged (\d+), failed (\d+); ran (\d+), skipped (\d+)", text)
    return tuple(map(int, m.groups()))


# ----------------------------------------------------------------------------- seed batching
def test_seed_batched_runs_equal_runs_trained_alone(tmp_path):
    raw = {**BASE, "model": {"depth": 2, "width": 6, "activation": "tanh", "bias": True},
           "train": {**BASE["train"], "dtype": "float64", "optimizer": "adam", "lr": 0.01}}
    cfgs = [config.validate({**raw, "seed": s}) for s in (0, 1, 2)]
    batched = engine.execute(cfgs, tmp_path / "a")
    alone = [engine.execute([c], tmp_path / "b")[0] for c in cfgs]
    for rb, ra in zip(batched, alone):
        assert rb["run_id"] == ra["run_id"] and rb["status"] == ra["status"] == "ok"
        for cb, ca in zip(rb["checkpoints"], ra["checkpoints"]):
            assert cb["step"] == ca["step"]
            np.testing.assert_allclose(cb["train_loss"], ca["train_loss"], rtol=1e-12)
            for lb, la in zip(cb["layers"], ca["layers"]):
                for k, v in la.items():
                    # alpha_star is an argmax on a flat maximum: rounding-level changes of
                    # the weights move it far; the maximum itself (pearson_alpha_star) is stable
                    if isinstance(v, float) and k != "alpha_star":
                        np.testing.assert_allclose(lb[k], v, rtol=1e-8, atol=1e-10, err_msg=k)
        za = np.load(tmp_path / "a" / ra["run_id"] / "checkpoints" / "step_0000006.npz")
        zb = np.load(tmp_path / "b" / ra["run_id"] / "checkpoints" / "step_0000006.npz")
        for k in za.files:
            np.testing.assert_allclose(za[k], zb[k], rtol=1e-12, atol=1e-14)
    # the seeds really differ
    assert batched[0]["checkpoints"][-1]["train_loss"] != batched[1]["checkpoints"][-1]["train_loss"]


def test_a_diverging_seed_does_not_disturb_its_batch(tmp_path):
    raw = {**BASE, "model": {"depth": 1, "width": 8, "activation": "quadratic", "init_scale": 2.5},
           "train": {**BASE["train"], "lr": 0.5}}
    cfgs = [config.validate({**raw, "seed": s}) for s in range(4)]
    batched = engine.execute(cfgs, tmp_path / "a")
    alone = [engine.execute([c], tmp_path / "b")[0] for c in cfgs]
    assert [r["status"] for r in batched] == [r["status"] for r in alone]
    assert "diverged" in [r["status"] for r in alone]
    for rb, ra in zip(batched, alone):
        assert [c["step"] for c in rb["checkpoints"]] == [c["step"] for c in ra["checkpoints"]]


def test_grouping(monkeypatch):
    small = [config.validate({**BASE, "seed": s}) for s in range(6)]
    monkeypatch.setattr(sweep, "backend", lambda: "cpu")
    assert [len(g) for g in sweep.group_runs(small, "auto", 2)] == [1] * 6  # never pays on CPU
    monkeypatch.setattr(sweep, "backend", lambda: "gpu")
    assert [len(g) for g in sweep.group_runs(small, "auto", 2)] == [3, 3]
    assert [len(g) for g in sweep.group_runs(small, "off", 2)] == [1] * 6
    assert [len(g) for g in sweep.group_runs(small, "on", 1)] == [6]
    big = [config.validate({**BASE, "model": {"depth": 2, "width": 4096}, "seed": s}) for s in range(4)]
    assert [len(g) for g in sweep.group_runs(big, "auto", 1)] == [1] * 4  # compute-bound: never batched
    assert [len(g) for g in sweep.group_runs(big, "on", 1)] == [4]
    mixed = small[:2] + [config.validate({**BASE, "seed": 0, "train": {**BASE["train"], "lr": 0.1}})]
    assert sorted(len(g) for g in sweep.group_runs(mixed, "on", 1)) == [1, 2]  # lr differs: own program
    pinned = [config.validate({**BASE, "seed": s, "data": {**BASE["data"], "seed": 7}}) for s in range(2)]
    assert [len(g) for g in sweep.group_runs(pinned, "on", 1)] == [2]


@pytest.mark.parametrize("seed_batch", ["auto", "off"])
def test_runs_of_different_configs_start_first(monkeypatch, seed_batch):
    """The configs take turns (seed 0 of each, then seed 1 ...): the first runs a pool
    starts need different programs, which a cold cache has the workers compile side by
    side, and a config's later runs find its programs made."""
    monkeypatch.setattr(sweep, "backend", lambda: "cpu")
    cfgs = [config.validate({**BASE, "seed": s, "model": {**BASE.get("model", {}), "activation": a}})
            for a in ("relu", "tanh", "gelu") for s in range(3)]
    order = [(g[0].model.activation, g[0].seed) for g in sweep.group_runs(cfgs, seed_batch, 2)]
    assert order == [(a, s) for s in range(3) for a in ("relu", "tanh", "gelu")]


# ----------------------------------------------------------------------------- through the CLI
def test_grid_runs_skips_and_reruns(tmp_path):
    p = _file(tmp_path, {"model.activation": {"values": ["relu", "tanh", "identity"]}, "seed": {"values": [0, 1]}})
    r = _sweep(tmp_path, p, "--dry-run")
    assert r.exit_code == 0 and "6 runs, 0 done, 6 to run" in r.stdout and r.stdout.count("to run") == 7
    assert not any((tmp_path / "runs").glob("g-*"))
    r = _sweep(tmp_path, p, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert _counts(r.stdout) == (6, 0, 0, 6, 0)
    ids = [c.run_id for c in config.load_config(p).expand()]
    assert all(runs.result_status(tmp_path / "runs", i) == "ok" for i in ids)
    rec = json.loads(next((tmp_path / "runs" / "sweeps").glob("sweep-g-*.json")).read_text())
    assert rec["varied"] == ["model.activation", "seed"] and len(rec["runs"]) == 6
    assert {(x["params"]["model.activation"], x["params"]["seed"]) for x in rec["runs"]} == {
        (a, s) for a in ("relu", "tanh", "identity") for s in (0, 1)}
    assert all(x["status"] == "ok" and x["ran"] for x in rec["runs"])
    # a line per finished run: id, status, seconds, layer-1 pearson_a05 and tightness_range
    lines = re.findall(r"^\[(\d)/6\] ok\s+g-\w+\s+[\d.]+ s\s+pearson_a05 -?[\d.]+\s+tightness_range -?[\d.]+"
                       r"  \(eta \d+:\d\d:\d\d\)$", r.stderr, re.M)
    assert lines == [str(i) for i in range(1, 7)]
    r = _sweep(tmp_path, p)
    assert r.exit_code == 0 and _counts(r.stdout) == (6, 0, 0, 0, 6)
    r = _sweep(tmp_path, p, "--dry-run")
    assert "6 done, 0 to run" in r.stdout
    before = (tmp_path / "runs" / ids[0] / "result.json").stat().st_mtime_ns
    r = _sweep(tmp_path, p, "--force", "--workers", "1")
    assert r.exit_code == 0 and _counts(r.stdout) == (6, 0, 0, 6, 0)
    assert (tmp_path / "runs" / ids[0] / "result.json").stat().st_mtime_ns != before


def test_diverged_runs_are_recorded_and_rerun_on_request(tmp_path):
    base = {**BASE, "model": {"depth": 1, "width": 8, "activation": "quadratic", "init_scale": 2.5}}
    p = _file(tmp_path, {"train.lr": {"values": [0.001, 5.0]}}, base=base)
    r = _sweep(tmp_path, p, "--workers", "1")
    assert r.exit_code == 0, r.output  # diverging is a result, not a failure
    assert _counts(r.stdout) == (1, 1, 0, 2, 0)
    r = _sweep(tmp_path, p)
    assert _counts(r.stdout) == (1, 1, 0, 0, 2)
    r = _sweep(tmp_path, p, "--rerun-failed", "--workers", "1")
    assert _counts(r.stdout) == (1, 1, 0, 1, 1)


def test_two_workers_and_multiple_files(tmp_path):
    p1 = _file(tmp_path, {"seed": {"values": [0, 1, 2]}}, name="a.yaml")
    p2 = _file(tmp_path, {"model.width": {"values": [4, 6]}}, base={**BASE, "name": "h"}, name="b.yaml")
    r = _sweep(tmp_path, p1, p2, "--workers", "2")
    assert r.exit_code == 0, r.output
    assert _counts(r.stdout) == (5, 0, 0, 5, 0)
    assert re.search(r"sweep sweep-g\+1-\w{10}: 5 runs", r.stdout)


@pytest.mark.parametrize("params,extra,msg", [
    ({"model.widht": {"values": [1]}}, {}, "sweep.parameters.model.widht: no such config key"),
    ({"model.width": {"values": []}}, {}, "sweep.parameters.model.width.values: must be a non-empty list"),
    ({"seed": {"values": [1]}}, {"method": "random"}, "sweep.count: method random needs count"),
    ({"train.lr": {"distribution": "uniform", "min": 1, "max": 0.1}}, {"method": "random", "count": 2},
     "sweep.parameters.train.lr: min = 1 exceeds max = 0.1"),
    ({"train.batch_size": {"values": [8, 4000]}}, {}, "train.batch_size = 4000 exceeds the 48 training samples"),
])
def test_bad_sweeps_exit_2_and_run_nothing(tmp_path, params, extra, msg):
    p = _file(tmp_path, params, **extra)
    r = _sweep(tmp_path, p)
    assert r.exit_code == 2, r.output
    assert msg in r.stderr and str(p) in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- real processes
def _dnfa(tmp_path, *args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dnfa_cli.cli", *map(str, args), "--runs-dir", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _slow_grid(tmp_path):
    base = {**BASE, "model": {"depth": 2, "width": 32}, "train": {**BASE["train"], "epochs": 30},
            "metrics": {"checkpoints": 3, "samples": 24}}
    return _file(tmp_path, {"seed": {"values": [0, 1, 2]}, "model.activation": {"values": ["relu", "tanh"]}}, base=base)


def test_sigkill_midway_then_rerun_finishes_only_the_rest(tmp_path):
    p = _slow_grid(tmp_path)
    ids = [c.run_id for c in config.load_config(p).expand()]
    proc = _dnfa(tmp_path, "sweep", p, "--workers", "1", "--seed-batch", "off")
    root = tmp_path / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and sum((root / i / "result.json").exists() for i in ids) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [i for i in ids if (root / i / "result.json").exists()]
    assert 2 <= len(done) < len(ids)
    for i in done:  # never half-written
        assert json.loads((root / i / "result.json").read_text())["status"] == "ok"
    started = [i for i in ids if (root / i).exists() and i not in done]
    r = _sweep(tmp_path, p, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert _counts(r.stdout) == (6, 0, 0, len(ids) - len(done), len(done))
    for i in started:  # an interrupted run was redone from scratch
        res = json.loads((root / i / "result.json").read_text())
        assert res["status"] == "ok"
        assert len((root / i / "metrics.jsonl").read_text().splitlines()) == len(res["checkpoints"])


def test_two_sweeps_at_once_never_run_a_run_twice(tmp_path):
    p = _slow_grid(tmp_path)
    a = _dnfa(tmp_path, "sweep", p, "--workers", "1", "--seed-batch", "off")
    b = _dnfa(tmp_path, "sweep", p, "--workers", "1", "--seed-batch", "off")
    outs = [x.communicate(timeout=300) for x in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    counts = [_counts(o[0]) for o in outs]
    assert all(c[:3] == (6, 0, 0) for c in counts)
    assert counts[0][3] + counts[1][3] == 6  # every run trained by exactly one of them


# ----------------------------------------------------------------------------- dask
def test_dask_local_cluster_matches_local_executor(tmp_path):
    distributed = pytest.importorskip("distributed")
    p = _file(tmp_path, {"seed": {"values": [0, 1]}, "model.activation": {"values": ["relu", "gelu"]}})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        r = runner.invoke(app, ["sweep", str(p), "--scheduler", cluster.scheduler_address,
                                "--runs-dir", str(tmp_path / "dask")])
    assert r.exit_code == 0, r.output
    assert _counts(r.stdout) == (4, 0, 0, 4, 0)
    r = runner.invoke(app, ["sweep", str(p), "--workers", "1", "--runs-dir", str(tmp_path / "local")])
    assert r.exit_code == 0
    for c in config.load_config(p).expand():
        a = json.loads((tmp_path / "dask" / c.run_id / "result.json").read_text())
        b = json.loads((tmp_path / "local" / c.run_id / "result.json").read_text())
        assert a["checkpoints"] == b["checkpoints"]
    r = runner.invoke(app, ["sweep", str(p), "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "2",
                            "--runs-dir", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--scheduler tcp://127.0.0.1:9: cannot reach a Dask scheduler" in r.stderr
    assert "after 2 s" in r.stderr and not (tmp_path / "x").exists()


def test_set_on_a_swept_key_replaces_its_values_and_grid_adds_one(tmp_path):
    p = _file(tmp_path, {"model.activation": {"values": ["relu", "tanh"]}, "seed": {"values": [0, 1]}})
    plan = sweep.plan([str(p)], ["model.activation=gelu"])
    assert len(plan.configs) == 2 and {c.model.activation for c in plan.configs} == {"gelu"}
    assert plan.notes and "replaces the sweep's values for model.activation" in plan.notes[0]
    r = runner.invoke(app, ["sweep", str(p), "--set", "model.activation=gelu", "--dry-run", "--runs-dir",
                            str(tmp_path / "runs")])
    assert r.exit_code == 0 and "note: --set model.activation='gelu' replaces" in r.output and "2 runs" in r.output
    plan = sweep.plan([str(p)], grid=["model.width=4,16", "seed=0,1,2"])
    assert len(plan.configs) == 2 * 3 * 2
    assert sorted({(c.model.width, c.seed) for c in plan.configs}) == [(w, s) for w in (4, 16) for s in (0, 1, 2)]
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(BASE))
    assert len(sweep.plan([str(plain)], grid=["model.width=4,16"]).configs) == 2
    for bad, msg in ((dict(overrides=["seed=1"], grid=["seed=0,1"]), "both --set and --grid"),
                     (dict(grid=["model.width"]), "expected KEY=V1,V2")):
        with pytest.raises(config.ConfigError, match=msg):
            sweep.plan([str(p)], **bad)
    rnd = _file(tmp_path, {"train.lr": {"distribution": "uniform", "min": 0.01, "max": 0.1}}, name="r.yaml",
                method="random", count=2)
    with pytest.raises(config.ConfigError, match="adds a grid"):
        sweep.plan([str(rnd)], grid=["seed=0,1"])


def test_sweep_progress_counts_runs_on_stderr_and_results_on_stdout(tmp_path):
    p = _file(tmp_path, {"seed": {"values": [0, 1, 2]}})
    r = subprocess.run([sys.executable, "-m", "dnfa_cli.cli", "sweep", str(p), "--runs-dir", str(tmp_path / "runs"),
                        "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("[")]
    assert [x.split("]")[0] + "]" for x in lines] == ["[1/3]", "[2/3]", "[3/3]"] and all("eta" in x for x in lines)
    assert "ok 3" in r.stdout and "[1/3]" not in r.stdout


def test_the_sweep_eta_leaves_out_start_up_once_every_worker_has_run_again():
    # 2 workers, 20 runs: 6 s of start-up and compiling, then each run 1 s on its worker
    finish = sorted([6.0, 6.2] + [6.0 + i for i in range(1, 10)] + [6.2 + i for i in range(1, 10)])
    truth_end = finish[-1]
    for k in range(3, len(finish)):  # from the first run after every worker finished again
        eta = sweep.sweep_eta(finish[:k], len(finish), 2)
        truth = truth_end - finish[k - 1]
        assert truth / 2 <= eta <= 2 * truth or abs(eta - truth) < 1.0, (k, eta, truth)
    # the plain average (elapsed / done) said 39.7 s at the third run, 4.8x the truth; with one
    # finished run there is nothing better to go on than that average
    assert sweep.sweep_eta([6.0], 20, 2) == 6.0 * 19


# ----------------------------------------------------------------------------- the library, without the CLI
def test_sweep_summary_counts_what_the_run_directories_hold(tmp_path):
    """sweep.run's summary: its counts are the statuses the run directories hold, a second
    run of the same sweep skips every run, and the record it names lists them all."""
    p = _file(tmp_path, {"seed": {"values": [0, 1, 2]}})
    prep = sweep.prepare([p], runs_dir=tmp_path / "runs")
    assert len(prep.todo) == 3 and set(prep.status.values()) == {None}
    seen = []
    s = sweep.run(prep, sweep.Options(workers=1), on_done=lambda r, k, n, eta: seen.append((r["run_id"], k, n)))
    ids = [c.run_id for c in config.load_config(p).expand()]
    on_disk = [runs.result_status(tmp_path / "runs", i) for i in ids]
    assert s.interrupted is None and s.runs == 3 and s.counts == {k: on_disk.count(k) for k in runs.STATUSES}
    assert (s.ran, s.skipped, s.elsewhere, s.finished_now) == (3, 0, 0, 3)
    assert sorted(r for r, _, _ in seen) == sorted(ids) and [(k, n) for _, k, n in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [x["run_id"] for x in json.loads(s.record.read_text())["runs"]] == ids
    again = sweep.run(sweep.prepare([p], runs_dir=tmp_path / "runs"), sweep.Options(workers=1))
    assert (again.ran, again.skipped, again.counts["ok"]) == (0, 3, on_disk.count("ok"))


def test_sweep_summary_after_a_signal(tmp_path):
    """A SIGINT while a sweep runs in this process: run() returns (no exception) saying
    which signal stopped it, counts the runs with a result.json then, and rewrites the
    record from the run directories; the resume command names the flags that chose the runs."""
    p = _file(tmp_path, {"seed": {"values": [0, 1, 2]}})
    prep = sweep.prepare([p], ["train.epochs=1"], runs_dir=tmp_path / "runs")
    before = signal.getsignal(signal.SIGINT)
    s = sweep.run(prep, sweep.Options(workers=1), on_done=lambda r, k, n, eta: os.kill(os.getpid(), signal.SIGINT))
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    done = [c.run_id for c in prep.plan.configs if runs.result_status(tmp_path / "runs", c.run_id) == "ok"]
    assert (s.interrupted, s.signal_name, s.finished, s.finished_now) == (signal.SIGINT, "SIGINT", len(done), 1)
    assert len(done) == 1
    rec = {x["run_id"]: x["status"] for x in json.loads(s.record.read_text())["runs"]}
    assert rec == {c.run_id: "ok" if c.run_id in done else "pending" for c in prep.plan.configs}
    cmd = sweep.resume_command([p], runs_dir=tmp_path / "my runs", overrides=["train.epochs=1"], grid=["model.width=4,8"],
                               max_runs=7)
    assert shlex.split(cmd) == ["dnfa", "sweep", str(p), "--runs-dir", str(tmp_path / "my runs"), "--set", "train.epochs=1",
                                "--grid", "model.width=4,8", "--max-runs", "7"]


# ----------------------------------------------------------------------------- devices
def test_each_worker_runs_on_its_own_device_with_the_numbers_of_one_device(tmp_path):
    # two forced host devices stand for two accelerators: each of the two workers takes one.
    # The reference is the same 2-worker sweep on one device (the threads a worker gets
    # change the statistics' rounding, so a --workers 1 sweep is no reference).
    base = {**BASE, "model": {"depth": 2, "width": 16}, "train": {**BASE["train"], "epochs": 4},
            "metrics": {"checkpoints": 2, "samples": 24}}
    p = _file(tmp_path, {"seed": {"values": [0, 1]}}, base=base)
    ids = [c.run_id for c in config.load_config(p).expand()]
    flags = os.environ.get("XLA_FLAGS", "")
    # the `dnfa` entry point, saying at its exit which of JAX's modules the sweep's own process
    # imported: none, it counts the CPU devices from the flags and leaves the rest to its workers
    dnfa = ("import atexit, sys\nsaid = sys.argv[1]\n"
            "atexit.register(lambda: open(said, 'w').write(repr(sorted(m for m in sys.modules"
            " if m.split('.')[0] in ('jax', 'jaxlib')))))\n"
            "sys.argv = ['dnfa'] + sys.argv[2:]\nfrom dnfa_cli.cli import entry\nentry()\n")
    procs = {}
    for name, xla in (("one", flags), ("two", f"{flags} --xla_force_host_platform_device_count=2")):
        procs[name] = subprocess.Popen([sys.executable, "-c", dnfa, str(tmp_path / f"{name}.jax"), "sweep", str(p),
                                        "--workers", "2", "--runs-dir", str(tmp_path / name)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       env={**{k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"},
                                            "XLA_FLAGS": xla.strip()})
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        if not sweep.accelerator_plugins():
            assert (tmp_path / f"{name}.jax").read_text() == "[]"
    one, two = tmp_path / "one", tmp_path / "two"
    envs = [json.loads((two / i / "env.json").read_text()) for i in ids]
    assert all(e["jax_devices"] == ["cpu:0", "cpu:1"] for e in envs)
    assert sorted(e["jax_device"] for e in envs) == ["cpu:0", "cpu:1"]
    for i in ids:
        assert json.loads((one / i / "env.json").read_text())["jax_device"] == "cpu:0"
        a, b = ((d / i / "metrics.jsonl").read_text().splitlines() for d in (one, two))
        assert [json.loads(x) for x in a] == [json.loads(x) for x in b] and len(a) == 3
        for f in sorted((one / i / "checkpoints").glob("*.npz")):
            with np.load(f) as x, np.load(two / i / "checkpoints" / f.name) as y:
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def test_a_small_run_gives_the_same_numbers_with_the_same_programs_however_it_is_started(tmp_path):
    """A sweep's workers compute with one XLA:CPU thread each (one core each); `dnfa train`
    of a run this small computes with one too, whatever its cores (rules.train_threads), and
    so does a sweep of such runs in its own process (--workers 1) or in workers of two
    cores each (rules.sweep_threads): each gives the sweep's numbers bit for bit, and from
    the programs the first sweep left in the store compiles nothing (issue 22: `train
    --force` after a warm sweep took 18 s)."""
    base = {**BASE, "model": {"depth": 2, "width": 16}, "train": {**BASE["train"], "epochs": 4},
            "metrics": {"checkpoints": 2, "samples": 24}}
    p = _file(tmp_path, {"seed": {"values": [0, 1]}}, base=base)
    seed0 = config.load_config(p).expand()[0]
    assert seed0.seed == 0 and seed0.run_id == config.load_config(p).base.run_id
    assert rules.train_threads(config.load_config(p).base, 64) == 1
    env = {**{k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC", "JAX_PLATFORMS")},
           "DNFA_CACHE_DIR": str(tmp_path / "cache")}  # a store of this test's own
    cores = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else None
    # `dnfa` on two cores, so two workers get one core each on any machine; with `wide`, the
    # workers of a machine with twice the cores: two each (sweep.default_workers says 4)
    pinned = ("import os, sys; from dnfa_cli import sweep\n"
              f"if {cores!r}: os.sched_setaffinity(0, {cores!r})\n"
              "if sys.argv[1] == 'wide': sweep.default_workers = lambda: 4\n"
              "sys.argv = ['dnfa'] + sys.argv[2:]\nfrom dnfa_cli.cli import entry\nentry()\n")
    r = subprocess.run([sys.executable, "-c", pinned, "", "sweep", str(p), "--workers", "2", "--runs-dir",
                        str(tmp_path / "swept")], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    store = tmp_path / "cache" / "programs"
    made = sorted(f.name for f in store.glob("*.xla"))
    others = {"trained": ["-m", "dnfa_cli.cli", "train", str(p)],
              "inline": ["-m", "dnfa_cli.cli", "sweep", str(p), "--workers", "1"],
              "wide": ["-c", pinned, "wide", "sweep", str(p), "--workers", "2"]}
    for name, args in others.items():
        r = subprocess.run([sys.executable, *args, "--runs-dir", str(tmp_path / name)], capture_output=True, text=True,
                           env=env, timeout=900)
        assert r.returncode == 0, r.stderr
        assert sorted(f.name for f in store.glob("*.xla")) == made, name  # nothing compiled: every program was the sweep's
    a = tmp_path / "swept" / seed0.run_id
    ra = json.loads((a / "result.json").read_text())
    assert len(ra["checkpoints"]) == 3
    for name in others:
        b = tmp_path / name / seed0.run_id
        assert [json.loads((d / "env.json").read_text())["xla_cpu_threads"] for d in (a, b)] == [1, 1], name
        assert json.loads((b / "result.json").read_text())["checkpoints"] == ra["checkpoints"], name
        assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
        for f in sorted((a / "checkpoints").glob("*.npz")):
            with np.load(f) as x, np.load(b / "checkpoints" / f.name) as y:
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def test_dnfa_train_computes_a_larger_run_with_every_core():
    """rules.train_threads: one thread up to the quickstart's size (a training step of 7.3e6
    multiply-adds, 1000 samples x 19072 weights at a checkpoint), every core beyond."""
    q = config.load_config(Path(__file__).parent.parent / "configs" / "quickstart.yaml").base
    assert rules.step_macs(q) == 128 * 3 * (20 * 128 + 128 * 128 + 128 * 1)
    assert rules.measured_samples(q) == 1000
    assert rules.train_threads(q, 8) == 1
    wider = q.model_copy(update={"model": q.model.model_copy(update={"width": 192})})
    assert rules.train_threads(wider, 8) == 8
    more = q.model_copy(update={"metrics": q.metrics.model_copy(update={"samples": 2000}),
                                "data": q.data.model_copy(update={"n_train": 2000})})
    assert rules.measured_samples(more) == 2000 and rules.train_threads(more, 8) == 8
    test_split = q.model_copy(update={"metrics": q.metrics.model_copy(update={"split": "test"})})
    assert rules.measured_samples(test_split) == 500 and rules.train_threads(test_split, 8) == 1


def test_a_worker_on_a_gpu_sees_only_its_own(monkeypatch):
    monkeypatch.delenv(sweep.GPU_VISIBLE, raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    sweep.local_devices()  # the parent counts devices without taking every GPU's memory; workers inherit it
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    d = sweep.Devices("gpu", ("2", "5"))  # the GPUs the sweep's parent was allowed to see
    d.pick(3)
    assert os.environ[sweep.GPU_VISIBLE] == "5"
    sweep.Devices("gpu", ("7",)).pick(0)  # a single device: nothing to choose
    assert os.environ[sweep.GPU_VISIBLE] == "5"
