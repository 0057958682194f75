"""Input that must be refused cheaply and in one line (issue 21): YAML alias bombs, npz
archives whose arrays are larger than the memory, markup in paths, data a float32 run
cannot hold."""
import resource
import subprocess
import sys

import pytest
import yaml

from dnfa_cli import config, sweepspec, yaml12
from dnfa_cli.errors import ConfigError


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
