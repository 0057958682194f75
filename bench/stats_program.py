"""A fingerprint of the compiled per-layer statistics program (stats.layers_batch), for
showing that a rewrite of stats.py compiles to the same program, so costs the same at run
time whatever the machine's load: the optimised HLO's instructions, value names and
debug metadata left out, sorted and hashed, for each SVD route, with and without the
bootstrap, and for the trivial read-out layer.

    PYTHONPATH=OLD_CHECKOUT python bench/stats_program.py > old.txt
    PYTHONPATH=NEW_CHECKOUT python bench/stats_program.py > new.txt
    diff old.txt new.txt        # nothing: the same compiled program
"""
from __future__ import annotations

import hashlib
import re

import jax
import numpy as np

import dnfa_cli  # noqa: F401  (enables x64)
from dnfa_cli import baselines as bl
from dnfa_cli import grams as gm
from dnfa_cli import stats

CASES = [((48, 32), False, 3), ((32, 48), False, 0), ((1, 48), True, 0)]  # (shape, trivial, bootstrap)


def fingerprint(hlo: str) -> tuple[int, str]:
    """(instructions, hash) of an HLO text without names, metadata and frame tables."""
    lines = []
    for line in hlo.splitlines():
        if " = " not in line:
            continue
        line = re.sub(r", (metadata|frontend_attributes|backend_config)=\{[^}]*\}", "", line)
        lines.append(re.sub(r"%[\w.\-]+", "%v", line.strip()))
    return len(lines), hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def layer(shape, B):
    ko, ki = shape
    W = np.asarray(jax.random.normal(jax.random.PRNGKey(0), shape), np.float64)
    A = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (ko, ko)), np.float64)
    G = A @ A.T
    g = gm.Grams(agop=[W.T @ G @ W], pgop=[G], jbar=[np.zeros((2, ki))], gbar=[np.zeros((2, ko))],
                 pcov=[np.eye(ko)], pgop_boot=[np.stack([G] * B)] if B else None, n=10, agop_c=[W.T @ G @ W],
                 pgop_c=[G], gdev=[np.trace(G)])
    return stats.layer_input(W, W, g, 0, 1e-12, bl.draw_terms(jax.random.PRNGKey(2), shape))


def main() -> None:
    for shape, trivial, B in CASES:
        x = layer(shape, B)
        for route in (stats.route_of(shape), "svd"):
            n, h = fingerprint(stats.layers_batch.jit.lower((x,), route=route, trivial=trivial)
                                  .compile(compiler_options=stats.layers_batch.options or None).as_text())
            print(f"{shape[0]}x{shape[1]} trivial={trivial} bootstrap={B} route={route}: {n} instructions, {h}")


if __name__ == "__main__":
    main()
