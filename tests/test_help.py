"""What `dnfa stats` and `dnfa report --help` say each statistic means, against the table of
docs/SCIENCE.md read as text (an independent reference: parsed here, not generated); and
that the help paths start without jax while every path that computes still gets jax with
float64 and the compile cache."""
import os
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dnfa_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `([a-z0-9_]+)` \| (.*) \| (float|int|edge) \| (.*) \|$")
runner = CliRunner()


def _science_table() -> dict:
    """docs/SCIENCE.md's table of statistics: key -> (meaning, kind, displays)."""
    lines = (ROOT / "docs" / "SCIENCE.md").read_text().splitlines()
    start = lines.index("| key | meaning | kind | shown in |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        key, meaning, kind, shown = ROW.match(line).groups()
        rows[key] = (meaning, kind, [s.strip() for s in shown.split(",")])
    return rows


def _says(output: str, key: str, meaning: str, kind: str) -> bool:
    """Whether a line of `output` is the key, its kind (where not a float) and its meaning."""
    k = "" if kind == "float" else re.escape(kind) + r"\s+"
    return re.search(rf"^\s+{re.escape(key)}\s+{k}{re.escape(meaning)}$", output, re.M) is not None


def test_dnfa_stats_gives_every_statistic_its_meaning_as_docs_science_does():
    table = _science_table()
    assert len(table) > 60
    r = runner.invoke(app, ["stats"])
    assert r.exit_code == 0, r.output
    missing = [k for k, (m, kind, _) in table.items() if not _says(r.output, k, m, kind)]
    assert not missing
    listed = re.findall(r"^  ([a-z0-9_]+)  ", r.output, re.M)
    assert sorted(listed) == sorted(table)  # each once, nothing else
    assert "pearson_a1_lo and _hi" in r.output  # the bootstrapped ones' interval keys


def test_dnfa_stats_prefix_lists_those_keys_alone_and_a_prefix_of_none_is_one_line_exit_2():
    table = _science_table()
    for prefix in ("delta_", "tightness", "published_", "iso_"):
        r = runner.invoke(app, ["stats", prefix])
        assert r.exit_code == 0, r.output
        listed = re.findall(r"^  ([a-z0-9_]+)  ", r.output, re.M)
        assert sorted(listed) == sorted(k for k in table if k.startswith(prefix)), prefix
    r = runner.invoke(app, ["stats", "pearson_a1@2"])  # STAT@LAYER as --where writes it
    assert r.exit_code == 0 and re.findall(r"^  ([a-z0-9_]+)  ", r.output, re.M) == ["pearson_a1"]
    r = runner.invoke(app, ["stats", "tigthness"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: no statistic starts with 'tigthness'; did you mean 'tightness'? "
                                             "(dnfa stats lists them all)"]


def test_report_help_gives_the_headline_statistics_meanings_and_ls_help_points_to_dnfa_stats():
    table = _science_table()
    headline = [k for k, (_, _, shown) in table.items() if "headline" in shown]
    assert len(headline) > 10
    r = runner.invoke(app, ["report", "--help"])
    assert r.exit_code == 0
    assert [k for k in headline if not _says(r.output, k, table[k][0], table[k][1])] == []
    assert "dnfa stats" in r.output
    r = runner.invoke(app, ["ls", "--help"])
    assert r.output.count("dnfa stats") == 2  # --where and --columns


def _python(code: str, **env) -> str:
    """Run `code` in a fresh interpreter, without the JAX_* settings this one may have."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**clean, **env}).stdout


def test_the_help_paths_start_without_jax():
    """`dnfa --help`, `dnfa stats` and the commands' --help never import jax: start-up
    stays fast (checked on the real entry point and in-process)."""
    imp = subprocess.run([sys.executable, "-X", "importtime", "-m", "dnfa_cli.cli", "--help"], capture_output=True,
                         text=True)
    assert imp.returncode == 0 and "Commands:" in imp.stdout
    assert "| dnfa_cli.config" in imp.stderr  # -X importtime did list the imports
    assert not re.search(r"\|\s+jax(lib)?(\.\S+)?$", imp.stderr, re.M)
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dnfa_cli.cli import app\n"
            "for args in (['--help'], ['stats'], ['stats', 'delta_'], ['report', '--help'], ['ls', '--help'],"
            " ['train', '--help'], ['sweep', '--help']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))\n")
    assert _python(code).strip() == "[]"


def test_jax_gets_float64_and_the_compile_cache_whether_imported_before_or_after_dnfa(tmp_path):
    show = ("import jax.numpy as jnp\n"
            "print(jnp.asarray(1.0, jnp.float64).dtype, jax.config.jax_compilation_cache_dir,"
            " jax.config.jax_persistent_cache_min_compile_time_secs)\n")
    want = f"float64 {tmp_path} 0.0"
    assert _python("import dnfa_cli\nimport jax\n" + show, DNFA_CACHE_DIR=str(tmp_path)).strip() == want
    assert _python("import jax\nimport dnfa_cli\n" + show, DNFA_CACHE_DIR=str(tmp_path)).strip() == want
    off = _python("import dnfa_cli\nimport jax\n" + show, DNFA_CACHE_DIR="")
    assert off.split()[:2] == ["float64", "None"]  # DNFA_CACHE_DIR="": no cache
    # nor in a child of a dnfa process that had one (the child inherits its environment)
    child = ("import os, subprocess, sys\nimport dnfa_cli\n"
             "print(subprocess.run([sys.executable, '-c', sys.argv[1]], capture_output=True, text=True, check=True,"
             " env={**os.environ, 'DNFA_CACHE_DIR': ''}).stdout)\n")
    r = subprocess.run([sys.executable, "-c", child, "import dnfa_cli\nimport jax\n" + show], capture_output=True,
                       text=True, check=True, env={k: v for k, v in os.environ.items() if not k.startswith("JAX_")})
    assert r.stdout.split()[:2] == ["float64", "None"]
    user = _python("import dnfa_cli\nimport jax\n" + show, DNFA_CACHE_DIR="", JAX_COMPILATION_CACHE_DIR=str(tmp_path))
    assert user.split()[1] == str(tmp_path)  # the user's own JAX setting stays theirs
