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
