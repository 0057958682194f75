"""Faults a user can cause, each tried for real (subprocesses where signals, pipes or a
second writer are involved): nothing lost, nothing trained twice, no traceback."""
import json
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dnfa_cli import config
from dnfa_cli.cli import app

TINY = """name: tiny
data: {task: monomial, d: 4, n_train: 64, n_test: 16}
model: {depth: 1, width: 8}
train: {epochs: 3, batch_size: 16}
metrics: {checkpoints: 1, samples: 64}
"""


def _dnfa(*args, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def _cfg(tmp_path, text=TINY, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _rid(p):
    return config.load_config(p).base.run_id


def test_a_symlinked_run_directory_is_refused_and_its_target_survives(tmp_path):
    p = _cfg(tmp_path)
    (tmp_path / "sl").mkdir()
    target = tmp_path / "p"
    target.mkdir()
    (target / "keep").write_text("mine")
    (tmp_path / "sl" / _rid(p)).symlink_to(target)
    for cmd in ("train", "sweep"):
        r = CliRunner().invoke(app, [cmd, str(p), "--runs-dir", str(tmp_path / "sl")])
        assert r.exit_code == 2 and "is a symbolic link" in r.output and str(target) in r.output
    assert (target / "keep").read_text() == "mine" and sorted(os.listdir(target)) == ["keep"]


def test_a_removed_lock_file_never_yields_two_writers(tmp_path):
    slow = TINY.replace("epochs: 3", "epochs: 4000").replace("checkpoints: 1", "checkpoints: 30")
    p = _cfg(tmp_path, slow, "slow.yaml")
    rid = _rid(p)
    a = subprocess.Popen([sys.executable, "-m", "dnfa_cli.cli", "train", str(p), "--runs-dir", "runs"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / rid / "metrics.jsonl"
    for _ in range(600):
        if metrics.exists() and metrics.read_text():
            break
        time.sleep(0.1)
    (tmp_path / "runs" / ".locks" / f"{rid}.lock").unlink()
    b = CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(tmp_path / "runs")])
    assert b.exit_code == 1 and "another process is writing" in b.output and "not starting a second writer" in b.output
    assert a.wait(timeout=600) == 0
    res = json.loads((tmp_path / "runs" / rid / "result.json").read_text())
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert res["status"] == "ok" and lines == res["checkpoints"]  # one writer's lines, none interleaved


@pytest.mark.parametrize("damage", ["truncated", "status only", "a list", "truncated npz"])
def test_corrupt_runs_are_reported_and_rerun_with_the_originals_kept(tmp_path, damage):
    p = _cfg(tmp_path)
    rid = _rid(p)
    runs = tmp_path / "runs"
    assert CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(runs)]).exit_code == 0
    _cfg(tmp_path, TINY.replace("name: tiny", "name: other"), "other.yaml")
    assert CliRunner().invoke(app, ["train", str(tmp_path / "other.yaml"), "--runs-dir", str(runs)]).exit_code == 0
    d = runs / rid
    res = d / "result.json"
    if damage == "truncated":
        res.write_text(res.read_text()[:200])
    elif damage == "status only":
        res.write_text('{"status": "ok"}')
    elif damage == "a list":
        res.write_text("[1, 2]")
    else:
        npz = next((d / "checkpoints").glob("step_*.npz"))
        npz.write_bytes(npz.read_bytes()[:100])
    bad = {f.relative_to(d): f.read_bytes() for f in d.rglob("*") if f.is_file()}
    ls = CliRunner().invoke(app, ["ls", "--runs-dir", str(runs)])
    assert ls.exit_code == 0 and "corrupt" in ls.output and "other-" in ls.output
    assert sum(f"corrupt: {rid}" in line for line in ls.output.splitlines()) == 1
    rep = CliRunner().invoke(app, ["report", rid, "--runs-dir", str(runs)])
    assert rep.exit_code == 1 and f"run {rid} is corrupt" in rep.output and "Traceback" not in rep.output
    sw = CliRunner().invoke(app, ["sweep", str(p), "--runs-dir", str(runs), "--workers", "1"])
    assert sw.exit_code == 0 and "ran 1" in sw.output
    assert json.loads(res.read_text())["status"] == "ok"
    kept = list((runs / ".corrupt").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith(rid)
    assert {f.relative_to(kept[0]): f.read_bytes() for f in kept[0].rglob("*") if f.is_file()} == bad
    # damaged again after its sweep ended: the sweep's report says so, not the record's "ok"
    res.write_text("[1, 2]")
    sweep_id = re.search(r"sweep (sweep-\S+):", sw.output).group(1)
    rep = CliRunner().invoke(app, ["report", sweep_id, "--runs-dir", str(runs)])
    assert rep.exit_code == 0 and "corrupt 1" in rep.output and "ok 1" not in rep.output
    assert sum(line.startswith(f"corrupt: {rid}") for line in rep.output.splitlines()) == 1


def _wait_for(path: Path, text: str, timeout=600):
    for _ in range(int(timeout * 10)):
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


SWEEP = TINY.replace("name: tiny", "name: sw").replace("epochs: 3", "epochs: 400").replace("width: 8", "width: 64") + """sweep:
  method: grid
  parameters:
    seed: {values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
"""


@pytest.mark.parametrize("sig,code,workers", [(signal.SIGINT, 130, "2"), (signal.SIGTERM, 143, "2"), (signal.SIGINT, 130, "1")])
def test_a_signal_stops_a_sweep_within_5_s_with_its_record_up_to_date(tmp_path, sig, code, workers):
    """With a pool (--workers 2) and in-process (--workers 1), where the signal lands in the
    middle of a run's training: that run must leave no result.json (not a `failed` one)."""
    p = _cfg(tmp_path, SWEEP, "sw.yaml")
    err = tmp_path / "err.txt"
    with open(err, "w") as fe:
        s = subprocess.Popen([sys.executable, "-m", "dnfa_cli.cli", "sweep", str(p), "--runs-dir", "runs", "--workers", workers],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fe)
        _wait_for(err, "[1/10]")
        t0 = time.monotonic()
        s.send_signal(sig)
        rc = s.wait(timeout=30)
        took = time.monotonic() - t0
    assert rc == code and took < 5, (rc, took)
    text = err.read_text()
    assert "Traceback" not in text and "resume with: dnfa sweep" in text
    rec = json.loads(next((tmp_path / "runs" / "sweeps").glob("*.json")).read_text())
    on_disk = {r["run_id"]: (tmp_path / "runs" / r["run_id"] / "result.json").exists() for r in rec["runs"]}
    assert any(on_disk.values())
    for r in rec["runs"]:
        assert (r["status"] == "ok") == on_disk[r["run_id"]]  # finished runs are not listed as pending
    statuses = [json.loads((tmp_path / "runs" / i / "result.json").read_text())["status"]
                for i, done in on_disk.items() if done]
    assert set(statuses) == {"ok"}  # the interrupted run is not recorded as failed
    assert not [q for q in _children(s.pid)]


def _children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def test_killing_the_parent_ends_the_workers(tmp_path):
    """SIGKILL to a sweep's parent ends its pool workers (they cannot be told: the kernel's
    parent-death signal and each worker's watchdog do it). The parent is killed once both
    workers have started a run, so both are past their set-up (a worker still importing
    is a different case: it ends when its set-up sees the parent gone); their runs are
    long enough (4 x 10^8 steps) that a worker left alive is still alive at the bound.
    The bound is generous for a loaded machine: ending takes under a second unloaded."""
    p = _cfg(tmp_path, SWEEP.replace("epochs: 400", "epochs: 100000000"), "sw.yaml")
    err = tmp_path / "err.txt"
    workers = []
    try:
        with open(err, "w") as fe:
            s = subprocess.Popen([sys.executable, "-m", "dnfa_cli.cli", "sweep", str(p), "--runs-dir", "runs", "--workers", "2",
                                  "--seed-batch", "off"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fe)
            for _ in range(6000):  # one run per worker: two "started" lines are two workers
                # the pool's processes (forked, or spawned where a worker has several cores), not
                # multiprocessing's resource tracker
                workers = [c for c in _children(s.pid) if _cmdline(c) and "resource_tracker" not in _cmdline(c)]
                if len(workers) == 2 and err.read_text().count(" started ") >= 2:
                    break
                assert s.poll() is None, err.read_text()[-800:]
                time.sleep(0.1)
            assert len(workers) == 2 and err.read_text().count(" started ") >= 2, err.read_text()[-800:]
            s.kill()
            s.wait()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        for w in workers:  # never leave a worker behind, even when the test fails
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # ended meanwhile
        return ""


def _alive(pid):
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_a_silent_dask_port_times_out_and_bad_addresses_are_one_line(tmp_path):
    p = _cfg(tmp_path)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():  # accept and never answer
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept())
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        t0 = time.monotonic()
        r = _dnfa("sweep", p, "--runs-dir", "runs", "--scheduler", f"tcp://127.0.0.1:{port}", "--scheduler-timeout", "2",
                  cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and "cannot reach a Dask scheduler" in r.stderr and time.monotonic() - t0 < 60
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        stop.set()
        th.join()
        srv.close()
    for addr in ("foo", "http://127.0.0.1:8799"):
        r = CliRunner().invoke(app, ["sweep", str(p), "--runs-dir", str(tmp_path / "runs"), "--scheduler", addr])
        assert r.exit_code == 2 and "not a Dask scheduler address" in r.output
    assert not (tmp_path / "runs").exists()


def _npz(tmp_path, name, **arrays):
    base = {"X_train": np.zeros((4, 2)), "y_train": np.zeros(4), "X_test": np.zeros((2, 2)), "y_test": np.zeros(2)}
    np.savez(tmp_path / name, **{**base, **arrays})
    return name


NPZ = "name: npz\ndata: {task: npz, path: PATH, kind: KIND}\nmodel: {depth: 1, width: 4}\ntrain: {epochs: 1, batch_size: 2}\n"


def _bad_inputs(tmp_path):
    p = _cfg(tmp_path)
    (tmp_path / "dup.yaml").write_text("name: dup\nmodel: {width: 8}\nmodel: {width: 16}\n")
    (tmp_path / "afile").write_text("")
    np.save(tmp_path / "one.npy", np.zeros((3, 2)))
    cases = [
        (["--set", "train.lr=.inf"], "must be a finite number"),
        (["--set", "model.init_scale=.inf"], "must be a finite number"),
        (["--set", "train.lr=1e400"], "train.lr = Infinity: must be a finite number"),  # a number (YAML 1.2), too large
        (["--set", "seed=99999999999999999999999"], "must be less than 4294967296"),
        (["--set", "model.width=true"], "must be a valid integer"),
        (["--set", "model.width=1000000"], "would need about"),
        (["--set", "data.n_train=100000000000"], "data.n_train + data.n_test = 100,000,000,"),
        (["--set", "model.depth=100000"], "model.depth = 100000: must be less than or equal to 256"),
        (["--runs-dir", str(tmp_path / "afile")], "is a file, not a directory"),
        (["--runs-dir", "/proc/dnfa-runs"], "is not writable"),
    ]
    out = [(["train", str(p), *a], m) for a, m in cases]
    out.append((["train", str(tmp_path / "dup.yaml")], "given twice"))
    for name, kind, arrays, msg in [
        ("obj.npz", "regression", {"X_train": np.array([[1, 2]] * 4, dtype=object)}, "cannot be read without pickle"),
        ("str.npz", "regression", {"X_train": np.array([["a", "b"]] * 4)}, "numbers only"),
        ("complex.npz", "regression", {"X_train": np.ones((4, 2), complex)}, "has dtype complex128; real numbers only"),
        ("scalar.npz", "regression", {"y_train": np.array(1.0)}, "is a scalar"),
        ("d0.npz", "regression", {"X_train": np.zeros((4, 0)), "X_test": np.zeros((2, 0))}, "d = 0"),
        ("labels.npz", "classification", {"y_train": np.array([0, 1, 1, 1e9])}, "more than 10,000"),
    ]:
        f = tmp_path / f"{name}.yaml"
        f.write_text(NPZ.replace("PATH", _npz(tmp_path, name, **arrays)).replace("KIND", kind))
        out.append((["train", str(f)], msg))
    f = tmp_path / "npy.yaml"
    f.write_text(NPZ.replace("PATH", "one.npy").replace("KIND", "regression"))
    out.append((["train", str(f)], "not an .npz archive"))
    (tmp_path / "rnd.yaml").write_text(TINY + "sweep:\n  method: random\n  count: 100000000\n  parameters:\n"
                                       "    train.lr: {distribution: log_uniform, min: 0.001, max: 0.1}\n")
    out.append((["sweep", str(tmp_path / "rnd.yaml"), "--dry-run"], "more than --max-runs 10,000"))
    out.append((["report", "tiny", "--out", str(tmp_path / "afile")], "exists and is not a directory"))
    out.append((["sweep", str(p), "--scheduler", "127.0.0.1:9", "--scheduler-timeout", "inf"], "less than or equal to 86400"))
    return out


def test_each_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path):
    for args, msg in _bad_inputs(tmp_path):
        before = set(os.listdir(tmp_path))
        r = _dnfa(*args, *([] if "--runs-dir" in args else ["--runs-dir", "runs"]), cwd=tmp_path, timeout=120)
        assert r.returncode == 2, (args, r.stderr[-500:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], (args, r.stderr[-500:])
        assert set(os.listdir(tmp_path)) == before, args


def test_a_closed_stdout_pipe_exits_0_quietly(tmp_path):
    p = _cfg(tmp_path)
    assert CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(tmp_path / "runs")]).exit_code == 0
    for fmt in ("table", "json", "csv"):
        r = subprocess.run(f"{sys.executable} -m dnfa_cli.cli report tiny --runs-dir runs --format {fmt} | head -c 10",
                           shell=True, cwd=tmp_path, capture_output=True, text=True, executable="/bin/bash",
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
        status = subprocess.run(f"set -o pipefail; {sys.executable} -m dnfa_cli.cli report tiny --runs-dir runs "
                                f"--format {fmt} | head -c 10 > /dev/null", shell=True, cwd=tmp_path,
                                capture_output=True, text=True, executable="/bin/bash")
        assert status.returncode == 0 and status.stderr == "", (fmt, status.stderr[-300:])
        assert len(r.stdout) == 10


@pytest.mark.skipif(not Path("/proc/sys/vm/max_map_count").exists(), reason="Linux memory-map accounting")
def test_compiled_programs_are_released_when_the_process_holds_too_many_maps():
    import jax
    import jax.numpy as jnp

    from dnfa_cli import engine

    def maps():
        return len(Path("/proc/self/maps").read_text().splitlines())

    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    assert engine.release_compiled_if_crowded(fraction=1.0) is (maps() >= limit)  # far from the limit: keep
    keep = []
    for i in range(60):  # distinct shapes: 60 programs, each with its own mappings
        f = jax.jit(lambda x: jnp.linalg.eigh(x @ x.T)[0].sum() + jnp.sin(x).sum())
        f(jnp.ones((i + 2, 3))).block_until_ready()
        keep.append(f)
    before = maps()
    assert engine.release_compiled_if_crowded(fraction=0.0) is True
    assert maps() < before - 60  # at least one mapping per program is gone


def test_finish_running_starts_no_new_run_and_the_resume_command_is_the_same_sweep(tmp_path):
    """--finish-running: after the signal only the runs in flight (at most one a worker)
    finish, though the pool had already taken more groups off the queue; the printed resume
    command keeps --set, so it names the same sweep."""
    p = _cfg(tmp_path, SWEEP, "sw.yaml")
    err = tmp_path / "err.txt"
    args = ["sweep", str(p), "--runs-dir", "runs", "--workers", "2", "--set", "train.epochs=300"]
    with open(err, "w") as fe:
        s = subprocess.Popen([sys.executable, "-m", "dnfa_cli.cli", *args, "--finish-running"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fe)
        _wait_for(err, "[1/10]")
        s.send_signal(signal.SIGINT)
        rc = s.wait(timeout=120)
    text = err.read_text()
    assert rc == 130 and "Traceback" not in text, text[-500:]
    finished = len(list((tmp_path / "runs").glob("sw-*/result.json")))
    before = text.split("SIGINT: no new runs")[0].count("] ok")
    assert before >= 1 and finished - before <= 2, (before, finished)  # two workers: two in flight at most
    again = text.split("resume with: dnfa ")[1].strip()
    r = subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *again.split(), "--dry-run"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert f"10 runs, {finished} done" in r.stdout, (again, r.stdout[:300])


def test_figures_that_cannot_be_written_are_one_line_before_any_output(tmp_path):
    p = _cfg(tmp_path)
    for seed in ("0", "1"):
        r = CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(tmp_path / "runs"), "--set", f"seed={seed}"])
        assert r.exit_code == 0, r.output
    (tmp_path / "afile").write_text("")
    a, b = sorted(d.name for d in (tmp_path / "runs").iterdir() if d.name.startswith("tiny"))
    for args in (["report", a], ["report", a, "--format", "json"], ["compare", a, b]):
        r = _dnfa(*args, "--runs-dir", "runs", "--out", str(tmp_path / "afile" / "sub"), cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout[-300:], r.stderr[-300:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot write figures to" in lines[0] and "afile/sub" in lines[0], r.stderr


def test_a_two_worker_sweep_ends_without_a_traceback(tmp_path):
    """The reader thread that prints 'started' lines must end quietly when the pool closes
    (it raised TypeError from a released queue connection at the end of the quickstart)."""
    p = _cfg(tmp_path, TINY + "sweep:\n  method: grid\n  parameters:\n    seed: {values: [0, 1, 2, 3]}\n")
    r = _dnfa("sweep", p, "--runs-dir", "runs", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok 4" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stderr


def test_a_signal_that_lands_in_a_garbage_collector_callback_stops_the_sweep_once_out_of_it():
    """A signal handled while a gc callback runs (JAX's, at every collection) must not raise
    there, where Python prints the exception and drops it (a traceback on stderr, seen once
    in CI): it is sent again and raised once the callback is done."""
    import gc
    import sys as _sys

    from dnfa_cli import sweep

    frames = []

    def callback(phase, info):
        frames.append(_sys._getframe())

    gc.callbacks.append(callback)
    try:
        gc.collect()
        s = sweep._Signals(None, False, None)
        with s:
            s._on_signal(signal.SIGINT, frames[0])  # inside the callback: no raise here
            assert s.caught == []
            with pytest.raises(sweep.Interrupted):
                for _ in range(200):  # the signal comes again, and lands here
                    time.sleep(0.01)
        assert s.caught == [signal.SIGINT]
        assert not sweep._drops_exceptions(_sys._getframe())
    finally:
        gc.callbacks.remove(callback)
