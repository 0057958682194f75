"""Issue 21: no "ok" run without its data, a closed pipe never ends a run, bombs refused
cheaply, every I/O failure one line. Faults are made for real; subprocesses where pipes,
signals or a second process are involved."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dnfa_cli import config, runs
from dnfa_cli.cli import app

TINY = """name: tiny
data: {task: monomial, d: 4, n_train: 64, n_test: 16}
model: {depth: 1, width: 8}
train: {epochs: 3, batch_size: 16}
metrics: {checkpoints: 1, samples: 64}
"""
TWO_SEEDS = TINY + "sweep:\n  method: grid\n  parameters:\n    seed: {values: [0, 1]}\n"


def _cfg(tmp_path, text=TINY, name="tiny.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _train(tmp_path, *args, text=TINY):
    p = _cfg(tmp_path, text)
    r = CliRunner().invoke(app, ["train", str(p), "--runs-dir", str(tmp_path / "runs"), *args])
    assert r.exit_code == 0, r.output
    return config.load_config(p).base


def _cmd(*args):
    return [sys.executable, "-m", "dnfa_cli.cli", *map(str, args)]


# ----------------------------------------------------------------------------- 1. data loss
def test_a_rerun_killed_at_any_point_of_its_clean_up_never_leaves_an_ok_run(tmp_path, monkeypatch):
    """--force (and a sweep's rerun) empties the old directory first: stopped after any
    number of deletions, the old run must not read as finished. The listing is made sorted
    (result.json last), the order in which a naive clean-up loses everything behind an ok."""
    cfg = _train(tmp_path)
    root = tmp_path / "runs"
    d = root / cfg.run_id
    pristine = tmp_path / "pristine"
    shutil.copytree(d, pristine)
    listing = pathlib.Path.iterdir
    monkeypatch.setattr(pathlib.Path, "iterdir", lambda self: iter(sorted(listing(self))))
    n_children = len(list(listing(d)))
    for k in range(n_children):
        shutil.rmtree(d)
        shutil.copytree(pristine, d)
        deleted = []

        def stop_after(fn):
            def wrapped(p, *a, **kw):
                if len(deleted) == k:
                    raise KeyboardInterrupt  # Ctrl-C, a kill, a power cut: nothing after runs
                deleted.append(str(p))
                return fn(p, *a, **kw)
            return wrapped

        monkeypatch.setattr(pathlib.Path, "unlink", stop_after(pathlib.Path.unlink))
        monkeypatch.setattr(runs.shutil, "rmtree", stop_after(shutil.rmtree))
        w = runs.RunWriter(root, cfg)
        with pytest.raises(KeyboardInterrupt):
            w.start({})
        w.release()
        monkeypatch.undo()
        monkeypatch.setattr(pathlib.Path, "iterdir", lambda self: iter(sorted(listing(self))))
        if runs.result_status(root, cfg.run_id) == "ok":  # only with every file it had
            assert sorted(_files(d)) == sorted(_files(pristine)), (k, deleted)
    monkeypatch.undo()
    r = CliRunner().invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--runs-dir", str(root)])
    assert r.exit_code == 0 and "already finished" not in r.output  # it trains again


def _files(d):
    return [f.relative_to(d).as_posix() for f in d.rglob("*") if f.is_file()]


def _drop_manifest(d):
    res = json.loads((d / "result.json").read_text())
    del res["files"]
    (d / "result.json").write_text(json.dumps(res))


@pytest.mark.parametrize("damage", ["metrics gone", "checkpoints emptied", "one npz gone", "npz grown",
                                    "old run: metrics gone", "old run: checkpoints emptied"])
def test_an_ok_run_missing_its_files_is_damaged_and_a_sweep_redoes_it(tmp_path, damage):
    cfg = _train(tmp_path)
    root = tmp_path / "runs"
    d = root / cfg.run_id
    res = json.loads((d / "result.json").read_text())
    steps = [ck["step"] for ck in res["checkpoints"]]
    # the manifest lists every file with its size, independently of how it was written
    assert res["files"] == {f.relative_to(d).as_posix(): f.stat().st_size for f in d.rglob("*")
                            if f.is_file() and f.name != "result.json"}
    assert {f"checkpoints/step_{s:07d}.npz" for s in steps} <= set(res["files"]) and "metrics.jsonl" in res["files"]
    if damage.startswith("old run"):
        _drop_manifest(d)
        assert runs.result_status(root, cfg.run_id) == "ok"  # a run from before the manifest still loads
    if damage.endswith("metrics gone"):
        (d / "metrics.jsonl").unlink()
    elif damage.endswith("checkpoints emptied"):
        for f in (d / "checkpoints").iterdir():
            f.unlink()
    elif damage == "one npz gone":
        (d / "checkpoints" / f"step_{steps[-1]:07d}.npz").unlink()
    else:
        with open(d / "checkpoints" / f"step_{steps[0]:07d}.npz", "ab") as f:
            f.write(b"\0")
    assert runs.result_status(root, cfg.run_id) == "corrupt"
    ls = CliRunner().invoke(app, ["ls", "--runs-dir", str(root)])
    assert ls.exit_code == 0 and f"corrupt: {cfg.run_id}" in ls.output, ls.output
    rep = CliRunner().invoke(app, ["report", cfg.run_id, "--runs-dir", str(root)])
    assert rep.exit_code == 1 and "corrupt" in rep.output and "Traceback" not in rep.output
    tr = CliRunner().invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--runs-dir", str(root), "--set", "seed=0"])
    assert "already finished" not in tr.output
    (d / "metrics.jsonl").unlink()  # damaged again, for the sweep
    sw = CliRunner().invoke(app, ["sweep", str(tmp_path / "tiny.yaml"), "--runs-dir", str(root), "--workers", "1"])
    assert sw.exit_code == 0 and "ran 1" in sw.output, sw.output
    assert runs.result_status(root, cfg.run_id) == "ok" and (d / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- 2. closed pipes
def _closed_pipe_run(args, cwd, which=("stdout", "stderr")):
    """Run dnfa with stdout and/or stderr a pipe nobody reads (its reader already gone, as
    after `| head -1`): every write to it fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        kw = {k: (w if k in which else subprocess.DEVNULL) for k in ("stdout", "stderr")}
        return subprocess.run(_cmd(*args), cwd=cwd, timeout=600, **kw).returncode
    finally:
        os.close(w)


@pytest.mark.parametrize("which", [("stdout", "stderr"), ("stderr",)])
def test_a_closed_pipe_silences_a_training_but_never_stops_it(tmp_path, which):
    p = _cfg(tmp_path)
    rid = config.load_config(p).base.run_id
    assert _closed_pipe_run(["train", p, "--runs-dir", "runs"], tmp_path, which) == 0
    assert runs.result_status(tmp_path / "runs", rid) == "ok"
    # the real exit code of a run that does not end ok
    rc = _closed_pipe_run(["train", p, "--runs-dir", "runs", "--set", "train.lr=1.0e+30"], tmp_path, which)
    bad = config.load_config(p, ["train.lr=1.0e+30"]).base.run_id
    assert rc == 1 and runs.result_status(tmp_path / "runs", bad) == "diverged"


def test_a_closed_pipe_silences_a_sweep_whose_record_says_what_finished(tmp_path):
    p = _cfg(tmp_path, TWO_SEEDS, "two.yaml")
    assert _closed_pipe_run(["sweep", p, "--runs-dir", "runs", "--workers", "1"], tmp_path) == 0
    rec = json.loads(next((tmp_path / "runs" / "sweeps").glob("*.json")).read_text())
    assert [r["status"] for r in rec["runs"]] == ["ok", "ok"]
    assert all(runs.result_status(tmp_path / "runs", r["run_id"]) == "ok" for r in rec["runs"])
    # the same exit code as with the output read: 0 when no run failed (diverged is a result)
    assert _closed_pipe_run(["sweep", p, "--runs-dir", "runs", "--workers", "1", "--set", "train.lr=1.0e+30"],
                            tmp_path) == 0
    rec = json.loads(max((tmp_path / "runs" / "sweeps").glob("*.json"), key=os.path.getmtime).read_text())
    assert [r["status"] for r in rec["runs"]] == ["diverged", "diverged"]


def test_result_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """result.json goes through a temp file in the run's directory and one rename: a
    process killed before the rename leaves no result.json (the run reads as unfinished),
    never a partial or a complete one for a run whose write did not finish. The kill is
    an exception raised at the rename; a direct write (no rename) would leave the file."""
    from types import SimpleNamespace

    cfg = config.validate({"name": "w", "model": {"width": 4}})
    outcome = SimpleNamespace(status="ok", error=None, seconds={"total": 1.0}, checkpoints=[])
    renames = []
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "result.json":
            renames.append((Path(src), Path(dst), Path(src).read_text()))
            if len(renames) == 1:
                raise KeyboardInterrupt  # killed between the write and the rename
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    w = runs.RunWriter(tmp_path / "runs", cfg)
    w.start({})
    with pytest.raises(KeyboardInterrupt):
        w.finish(outcome, {}, runs.now_iso())
    assert len(renames) == 1 and not (w.dir / "result.json").exists()
    assert sorted(p.name for p in w.dir.iterdir()) == ["checkpoints", "config.yaml", "env.json", "metrics.jsonl"]
    assert runs.result_status(tmp_path / "runs", cfg.run_id) is None  # unfinished, so a rerun trains it
    w.release()
    w = runs.RunWriter(tmp_path / "runs", cfg)
    w.start({})
    res = w.finish(outcome, {}, runs.now_iso())
    src, dst, text = renames[1]
    assert dst == w.dir / "result.json" and src.parent == w.dir and src != dst  # a temp file beside it, renamed
    assert json.loads(text) == res == json.loads(dst.read_text())  # whole before the rename
    assert runs.result_status(tmp_path / "runs", cfg.run_id) == "ok"
