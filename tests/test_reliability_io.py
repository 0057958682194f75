"""Issue 21, items 3, 7, 8 and 9: what a Dask worker ran checked against the plan, a lost
scheduler in one line, I/O failures that name their file and are retried, reports that
do not crash on user text. Faults are made for real (a worker that reports another
version, a killed scheduler, a file size limit, a read-only directory)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from dnfa_cli import config, runs, sweep
from dnfa_cli.cli import app

TINY = {"name": "tiny", "data": {"task": "monomial", "d": 4, "n_train": 64, "n_test": 16},
        "model": {"depth": 1, "width": 8}, "train": {"epochs": 3, "batch_size": 16},
        "metrics": {"checkpoints": 1, "samples": 64}}


def _file(tmp_path, raw=TINY, name="tiny.yaml", **sweep_params):
    p = tmp_path / name
    doc = dict(raw)
    if sweep_params:
        doc["sweep"] = {"method": "grid", "parameters": {k.replace("__", "."): {"values": v}
                                                        for k, v in sweep_params.items()}}
    p.write_text(yaml.safe_dump(doc))
    return p


def _cmd(*args):
    return [sys.executable, "-m", "dnfa_cli.cli", *map(str, args)]


def _no_traceback(text: str) -> bool:
    return "Traceback" not in text and "File \"" not in text


# ----------------------------------------------------------------------------- 9. report crashes
def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(48, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X_train=X[:32], y_train=X[:32, 0], X_test=X[32:], y_test=X[32:, 0])
    return path


def test_a_swept_data_path_with_dollar_signs_is_drawn_as_text(tmp_path):
    """Paths are user text: matplotlib's mathtext must not parse `$x^$` (a parse error) in a
    title, legend, label or tick."""
    a, b = _npz(tmp_path / "d$x^$" / "a.npz", 0), _npz(tmp_path / "e$\\q$" / "b.npz", 1)
    raw = {**TINY, "data": {"task": "npz", "path": str(a)}}
    p = _file(tmp_path, raw, data__path=[str(a), str(b)])
    root = tmp_path / "runs"
    r = CliRunner().invoke(app, ["sweep", str(p), "--workers", "1", "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    sid = runs.list_sweep_ids(root)[0]
    r = CliRunner().invoke(app, ["report", sid, "--runs-dir", str(root), "--html"])
    assert r.exit_code == 0, r.output
    figs = sorted((root / "sweeps" / sid / "report").glob("*.png"))
    assert figs and (root / "sweeps" / sid / "report" / "report.html").exists()
    for rid in runs.list_run_ids(root):
        r = CliRunner().invoke(app, ["report", rid, "--runs-dir", str(root), "--html"])
        assert r.exit_code == 0, r.output


def test_a_sweep_record_naming_a_path_outside_is_one_line(tmp_path):
    root = tmp_path / "runs"
    (root / "sweeps").mkdir(parents=True)
    rec = {"schema": 1, "sweep_id": "sweep-x-0", "files": ["x.yaml"], "varied": [],
           "runs": [{"run_id": "../../../etc", "status": "ok", "params": {}}]}
    (root / "sweeps" / "sweep-x-0.json").write_text(json.dumps(rec))
    r = subprocess.run(_cmd("report", "sweep-x-0", "--runs-dir", root, "--html"), capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert _no_traceback(r.stderr) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "../../../etc" in r.stderr and "sweep-x-0" in r.stderr


# ----------------------------------------------------------------------------- 8. I/O failures
# d = 40, width 64: a checkpoint's parameters take 12 KB, its matrices 87 KB, result.json 15 KB
WIDE = {**TINY, "name": "io", "data": {**TINY["data"], "d": 40}, "model": {"depth": 1, "width": 64},
        "train": {"epochs": 2, "batch_size": 16}}


def _limited(cmd, cwd, max_bytes):
    """`cmd` with no file larger than `max_bytes` (ulimit -f): a write past it fails with
    EFBIG (Python ignores SIGXFSZ, which would otherwise kill the process)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, preexec_fn=limit, timeout=600)


def _counts(text):
    import re

    m = re.search(r"ok (\d+), diverged (\d+), failed (\d+); ran (\d+), skipped (\d+)", text)
    return tuple(map(int, m.groups()))


@pytest.mark.parametrize("limit,metrics,first,written", [
    (50_000, {}, "checkpoints/matrices_0000000.npz", True),  # recorded failed as an I/O failure
    (13_000, {"save_matrices": "none"}, "result.json", False),  # every file fits but result.json
    (600, {}, "config.yaml", False),  # the run directory cannot be started
])
def test_a_full_disk_names_the_file_and_the_next_sweep_retries(tmp_path, limit, metrics, first, written):
    """A write past the file size limit (as a full disk) fails the run with a line naming
    the file, in the sweep's output and its record; the next sweep runs it again without
    --rerun-failed. Where result.json cannot be written the run is left unfinished."""
    p = _file(tmp_path, {**WIDE, "metrics": {**WIDE["metrics"], **metrics}})
    rid = config.load_config(p).base.run_id
    root = tmp_path / "runs"
    r = _limited(_cmd("sweep", p, "--runs-dir", root, "--workers", 1), tmp_path, limit)
    assert r.returncode == 1, r.stderr
    assert _no_traceback(r.stderr), r.stderr
    line = next(l for l in r.stderr.splitlines() if rid in l and "failed" in l)
    assert f"{rid}/{first}" in line and "File too large" in line, line
    rec = json.loads(next((root / "sweeps").glob("*.json")).read_text())
    assert rec["runs"][0]["status"] == "failed" and first in rec["runs"][0]["error"]
    st, res = runs.load_checked(root, rid)
    assert (st is not None) == written
    assert res is None or (st == "failed" and first in res["error"] and res["io_failed"] is True)
    # the next sweep tries it again: no --rerun-failed needed
    r = subprocess.run(_cmd("sweep", p, "--runs-dir", root, "--workers", 1), cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert _counts(r.stdout) == (1, 0, 0, 1, 0)
    assert runs.result_status(root, rid) == "ok"


def test_a_report_that_cannot_write_a_figure_says_so_in_one_line(tmp_path):
    p = _file(tmp_path)
    root = tmp_path / "runs"
    r = CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(root)])
    assert r.exit_code == 0, r.output
    rid = config.load_config(p).base.run_id
    r = _limited(_cmd("report", rid, "--runs-dir", root, "--html"), tmp_path, 4_000)
    assert r.returncode == 2, r.stderr
    assert _no_traceback(r.stderr) and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ".png" in r.stderr and "File too large" in r.stderr and str(root / rid / "report") in r.stderr


# ----------------------------------------------------------------------------- 3. a worker on another version
# run in the Dask worker's process before the sweep: it then runs another dnfa (a version,
# a schema that changes every run id), with or without the check workers make themselves
OTHER_VERSION = "import dnfa_cli; dnfa_cli.__version__ = '0.0.9'"
OLD_WORKER_OTHER_SCHEMA = """
import pathlib, dnfa_cli.config as c, dnfa_cli.sweep as s
c.SCHEMA = 7
if hasattr(s, "_run_group"):  # a worker from before workers checked the plan: the group runs unchecked
    s.run_group = lambda dicts, root, rerun, blocking=False, planned=None: s._run_group(
        [c.Config.model_validate(d) for d in dicts], pathlib.Path(root), rerun, blocking)
"""


@pytest.mark.parametrize("patch,says", [(OTHER_VERSION, "dnfa 0.0.9 (this sweep: {v})"),
                                        (OLD_WORKER_OTHER_SCHEMA, "wrote runs this sweep did not plan")])
def test_a_worker_on_another_dnfa_fails_each_run_saying_what_differs(tmp_path, patch, says):
    distributed = pytest.importorskip("distributed")
    from dnfa_cli import __version__

    p = _file(tmp_path, seed=[0, 1])
    root = tmp_path / "runs"
    planned = [c.run_id for c in sweep.plan([str(p)]).configs]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(exec, patch, {})
        r = CliRunner().invoke(app, ["sweep", str(p), "--scheduler", cluster.scheduler_address, "--runs-dir", str(root)])
    assert r.exit_code == 1, r.output
    assert _counts(r.stdout)[:3] == (0, 0, 2)
    lines = [l for l in r.stderr.splitlines() if "failed" in l]
    assert len(lines) == 2 and all(says.format(v=__version__) in l for l in lines), r.stderr
    assert {rid for rid in planned if any(rid in l for l in lines)} == set(planned)
    rec = json.loads(next((root / "sweeps").glob("*.json")).read_text())
    assert [x["status"] for x in rec["runs"]] == ["failed", "failed"]
    assert all(says.format(v=__version__) in x["error"] for x in rec["runs"])
    assert not any(runs.result_status(root, rid) for rid in planned)


# ----------------------------------------------------------------------------- 7. the scheduler dies
def _dask(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def test_a_scheduler_killed_mid_sweep_is_one_line_with_the_resume_command(tmp_path):
    """A scheduler and a worker in their own processes; the scheduler is SIGKILLed once the
    first of three runs has finished: one line says so and how to resume, exit 1, no
    traceback, and the run that finished is in the record."""
    pytest.importorskip("distributed")
    import threading
    import time

    p = _file(tmp_path, seed=[0, 1, 2])
    root = tmp_path / "runs"
    sf = tmp_path / "scheduler.json"
    procs = [_dask("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", sf)]
    try:
        for _ in range(600):
            if sf.exists() and sf.read_text().strip():
                break
            time.sleep(0.1)
        addr = json.loads(sf.read_text())["address"]
        procs.append(_dask("distributed.cli.dask_worker", addr, "--nthreads", "1", "--no-dashboard"))
        sw = subprocess.Popen(_cmd("sweep", p, "--scheduler", addr, "--runs-dir", root), cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(sw)
        watchdog = threading.Timer(600, sw.kill)  # never wait forever on a line that does not come
        watchdog.daemon = True
        watchdog.start()
        seen = []
        for line in sw.stderr:
            seen.append(line)
            if line.startswith("[1/3]"):
                break
        procs[0].kill()
        out, rest = sw.communicate(timeout=300)
        err = "".join(seen) + rest
    finally:
        for q in procs:
            q.kill()
            q.wait()
    assert sw.returncode == 1, err
    assert _no_traceback(err), err
    last = err.strip().splitlines()[-1]
    assert "scheduler" in last and f"resume with: dnfa sweep {p} --runs-dir {root} --scheduler {addr}" in last, err
    first = seen[-1].split()[2]
    assert runs.result_status(root, first) == "ok"
    rec = json.loads(next((root / "sweeps").glob("*.json")).read_text())
    assert {x["run_id"]: x["status"] for x in rec["runs"]}[first] == "ok"


def test_two_processes_checking_a_missing_runs_directory_at_once_both_pass(tmp_path):
    """Two dnfa sweeps started at the same moment into a runs directory not made yet: each
    checks that it could write there while the other makes it (the check once made the
    folders and removed them again, and the other found them gone under it: exit 2)."""
    import threading

    errors, rounds = [], 60
    for i in range(rounds):
        root = tmp_path / f"r{i}" / "runs"
        go = threading.Barrier(3)

        def check():
            go.wait()
            try:
                runs.check_root(root)
                root.mkdir(parents=True, exist_ok=True)  # as the sweep then does
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        def make():
            go.wait()
            root.mkdir(parents=True, exist_ok=True)

        ts = [threading.Thread(target=f) for f in (check, check, make)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == []
    # and it still refuses what cannot be written, leaving nothing behind
    (tmp_path / "afile").write_text("")
    for bad, why in ((tmp_path / "afile" / "runs", "Not a directory"), (Path("/proc/dnfa-runs/x"), "")):
        with pytest.raises(config.DnfaInputError, match=f"is not writable.*{why}"):
            runs.check_root(bad)
    assert not (tmp_path / "nothing").exists()
    runs.check_root(tmp_path / "nothing" / "runs")
    assert not (tmp_path / "nothing").exists()
