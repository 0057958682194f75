"""YAML as dnfa reads what a user writes (config files, --set, --grid): PyYAML's safe
loader with one change, YAML 1.2's float rule added to YAML 1.1's.

YAML 1.1, which PyYAML implements, reads `1e-3`, `5E-4`, `-.5` and `1.0e3` as strings
(its floats need a dot and a signed exponent), so `lr: 1e-3` was refused as "not a
number". Every scalar that was a float stays one, and nothing else changes: `yes`/`on`
are still booleans, `0x1F` and `1_000` still integers, and a plain integer is never a
float.
"""
from __future__ import annotations

import re

import yaml

FLOAT = "tag:yaml.org,2002:float"
# the YAML 1.1 pattern PyYAML resolves floats with, plus YAML 1.2's forms it misses: an
# exponent without a dot or without a sign (1e-3, 5E-4, 1.5e3, .5e1) and a signed
# leading dot (-.5)
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN)
                    |[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+
                    |[-+]?\.[0-9]+)$""", re.X)


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the float rule above (it takes the place of 1.1's in the
    resolver lists, so the order in which PyYAML tries the tags is unchanged)."""


SafeLoader.yaml_implicit_resolvers = {
    ch: [(tag, _FLOAT_RE if tag == FLOAT else rx) for tag, rx in resolvers]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(text: str):
    """yaml.safe_load with YAML 1.2 floats."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a SafeLoader subclass
