"""Input that must be refused cheaply and in one line (issue 21): YAML alias bombs, npz
archives whose arrays are larger than the memory, markup in paths, data a float32 run
cannot hold."""
import io
import resource
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
import yaml

from dnfa_cli import config, data, sweep, sweepspec, yaml12
from dnfa_cli.errors import ConfigError, DnfaInputError


def _bomb(levels: int, width: int = 10) -> str:
    """The "billion laughs": each level a list of `width` aliases of the one before, so the
    last holds width**levels scalars in a few hundred bytes."""
    lines = ["name: bomb", "a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    """10**12 values in 700 bytes. Without the bound, read_yaml returns (PyYAML shares the
    aliased objects) and the first copy of the config expands them."""
    text = _bomb(12)
    assert len(text) < 1024
    p = tmp_path / "bomb.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"bomb.yaml: line 6: YAML aliases expand this to 111,111 values"):
        config.read_yaml(p)
    with pytest.raises(ConfigError, match="aliases expand"):
        yaml12.load(text)
    with pytest.raises(ConfigError, match=r"^--set 'data.x=.*aliases expand"):
        sweepspec.parse_set(["data.x=" + "{" + text.replace("\n", ", ").rstrip(", ").replace("name: bomb, ", "") + "}"])


def test_aliases_within_the_bound_read_as_written_out():
    text = "a: &a {x: 1, y: [1, 2]}\nb: {<<: *a, z: 3}\nc: *a\nd: &d [*a, *a]\ne: [*d, *d]\n"
    a = {"x": 1, "y": [1, 2]}
    assert yaml12.load(text) == {"a": a, "b": {**a, "z": 3}, "c": a, "d": [a, a], "e": [[a, a], [a, a]]}
    assert yaml12.load(_bomb(4)) == yaml.safe_load(_bomb(4))  # 11,111 values: allowed
    # a long list written out is never refused: the bound is on what aliases add
    assert len(yaml12.load("[" + ", ".join(["1"] * 300_000) + "]")) == 300_000


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: 1, <<: *a}\n", "a: &a {b: [*a]}\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text):
    with pytest.raises(ConfigError, match="line 1: an alias inside its own anchor"):
        yaml12.load(text)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_the_cli_refuses_an_alias_bomb_in_one_line_under_a_memory_limit(tmp_path):
    """End to end, in a process that may not take 1 GiB (10**9 values would need far more):
    one line, exit 2, nothing written."""
    (tmp_path / "bomb.yaml").write_text(_bomb(9))
    for cmd in (["train", "bomb.yaml"], ["sweep", "bomb.yaml", "--dry-run"]):
        r = subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *cmd, "--runs-dir", "runs"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (cmd, r.returncode, r.stderr[-800:])
        assert r.stderr.startswith("error: bomb.yaml: line 6: YAML aliases expand this to 111,111 values")
        assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- npz bombs
def _zeros_npz(path, n, d=8):
    """A compressed .npz whose X_train is n x d float64 zeros: 8 n d bytes declared,
    about a thousandth of that on disk."""
    np.savez_compressed(path, X_train=np.zeros((n, d)), y_train=np.zeros(n), X_test=np.zeros((4, d)),
                        y_test=np.zeros(4))


def test_a_sweep_plan_over_an_npz_reads_its_headers_once_and_no_array(tmp_path, monkeypatch):
    """What `dnfa sweep --dry-run` does for 5 runs on a 64 MB array compressed to 64 KB:
    the rows are counted from the .npy header, the zip is opened once for all runs, and
    no more than a few MB is ever allocated (the array would be 64 MB, per run)."""
    _zeros_npz(tmp_path / "z.npz", 1_000_000)
    assert (tmp_path / "z.npz").stat().st_size < 1_000_000
    (tmp_path / "s.yaml").write_text("name: z\ndata: {task: npz, path: z.npz}\nmodel: {depth: 1, width: 4}\n"
                                     "train: {epochs: 1, batch_size: 1000}\nsweep:\n  parameters:\n"
                                     "    seed: {values: [0, 1, 2, 3, 4]}\n")
    opened = []
    init = zipfile.ZipFile.__init__
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda self, f, *a, **k: (opened.append(f), init(self, f, *a, **k))[1])
    tracemalloc.start()
    try:
        prep = sweep.prepare([tmp_path / "s.yaml"], runs_dir=tmp_path / "runs", write=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(prep.todo) == 5 and [c.data.train_size() for c in prep.todo] == [1_000_000] * 5
    assert peak < 8e6, f"{peak / 1e6:.0f} MB allocated"
    assert len(opened) == 1, opened
    # a batch larger than the declared rows is still refused, from the header alone
    (tmp_path / "b.yaml").write_text((tmp_path / "s.yaml").read_text().replace("batch_size: 1000", "batch_size: 2000000"))
    with pytest.raises(DnfaInputError, match="exceeds the 1000000 training samples"):
        sweep.prepare([tmp_path / "b.yaml"], runs_dir=tmp_path / "runs", write=False)


def _crafted_npz(path, n, d, dtype="<f4"):
    """An .npz whose X_train and y_train headers declare n x d and n rows over 16 bytes of
    data each: what a few-KB compressed file can claim. The test arrays are honest."""
    with zipfile.ZipFile(path, "w") as z:
        for k, shape in (("X_train", (n, d)), ("y_train", (n,))):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
            z.writestr(f"{k}.npy", buf.getvalue() + b"\0" * 16)
        for k, a in (("X_test", np.zeros((4, d))), ("y_test", np.zeros(4))):
            buf = io.BytesIO()
            np.save(buf, a)
            z.writestr(f"{k}.npy", buf.getvalue())


def test_the_memory_check_comes_before_any_array_is_loaded(tmp_path):
    """X_train declares 10^9 x 1000 float32 (4 TB): refused as too large for this machine
    from its header, not read (and then called damaged, or worse, allocated)."""
    _crafted_npz(tmp_path / "big.npz", 10**9, 1000)
    cfg = config.validate({"data": {"task": "npz", "path": str(tmp_path / "big.npz")}, "model": {"width": 4}})
    assert cfg.data.train_size() == 10**9
    with pytest.raises(DnfaInputError, match=r"data.n_train \+ data.n_test = 1,000,000,004: this run would need about "
                                             r"16 TB of memory"):
        data.make_dataset(cfg)


# ----------------------------------------------------------------------------- smaller (issue 21.10)
TINY = """name: tiny
data: {task: monomial, d: 4, n_train: 64, n_test: 16}
model: {depth: 1, width: 8}
train: {epochs: 3, batch_size: 16}
metrics: {checkpoints: 1, samples: 64}
"""


def _dnfa(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "dnfa_cli.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env=env)


def test_paths_that_look_like_rich_markup_print_as_written(tmp_path):
    """`[old]` was taken for a style and dropped, `[/]` for a closing tag and crashed the
    print (after the run's lock was taken: a traceback, exit 1)."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "e[/]").mkdir(parents=True)  # the directory "]" in "e["
    r = _dnfa("ls", "--runs-dir", "e[/]", cwd=tmp_path)
    assert r.returncode == 0 and "e[/]" in r.stdout, r.stderr[-500:]
    for why in ("->", "already finished ok"):
        r = _dnfa("train", "tiny.yaml", "--runs-dir", "runs[old][/]", cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-800:]
        line = next(x for x in r.stdout.splitlines() if x.startswith("run tiny-"))
        assert why in line and line.endswith("runs[old][/]/" + line.split()[1]), line


def test_a_cache_dir_that_takes_no_files_is_one_note():
    """/proc exists and takes no new files, even for root: JAX warned at every compile
    (two lines each); now one note, and the compile still works."""
    code = "import dnfa_cli, jax, jax.numpy as jnp; print(jax.jit(lambda x: jnp.sin(x) * 2)(1.0))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "DNFA_CACHE_DIR": "/proc"})
    assert r.returncode == 0 and r.stdout.strip() == str(np.sin(1.0) * 2), r.stderr[-800:]
    assert r.stderr.splitlines() == ["note: compilation cache /proc is not writable: compiling in every process "
                                     "(DNFA_CACHE_DIR names another; empty turns the cache off)"], r.stderr[-800:]


def _npz_cfg(tmp_path, dtype="float32", **arrays):
    base = {"X_train": np.zeros((4, 2)), "y_train": np.zeros(4), "X_test": np.zeros((2, 2)), "y_test": np.zeros(2)}
    np.savez(tmp_path / "d.npz", **{**base, **arrays})
    return config.validate({"data": {"task": "npz", "path": str(tmp_path / "d.npz")}, "model": {"width": 4},
                            "train": {"batch_size": 2, "dtype": dtype}})


def test_regression_targets_with_no_outputs_are_bad_input(tmp_path):
    cfg = _npz_cfg(tmp_path, y_train=np.zeros((4, 0)), y_test=np.zeros((2, 0)))
    with pytest.raises(DnfaInputError, match=r"y_train has shape \(4, 0\): no outputs"):
        data.make_dataset(cfg)


@pytest.mark.parametrize("name,n", [("X_train", 4), ("X_test", 2), ("y_train", 4), ("y_test", 2)])
def test_finite_data_beyond_float32_is_bad_input_naming_the_array(tmp_path, name, n):
    """1e39 is finite in float64 and inf in float32: the run 'diverged at step 0'. Bad
    input under train.dtype float32; under float64 the same file trains."""
    a = np.zeros((n, 2) if name[0] == "X" else n)
    a.flat[-1] = -1e39
    with pytest.raises(DnfaInputError, match=rf"d.npz': {name} holds -1e\+39, beyond the range of train.dtype float32"):
        data.make_dataset(_npz_cfg(tmp_path, **{name: a}))
    ds = data.make_dataset(_npz_cfg(tmp_path, "float64", **{name: a}))
    assert getattr(ds, name.replace("y_", "T_")).min() == -1e39  # Dataset.T_*: the regression targets
    a.flat[-1] = float(np.finfo(np.float32).max)  # the largest float32 is allowed
    data.make_dataset(_npz_cfg(tmp_path, **{name: a}))
