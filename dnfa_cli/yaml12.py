"""YAML as dnfa reads what a user writes (config files, --set, --grid): PyYAML's safe
loader with one change, YAML 1.2's float rule added to YAML 1.1's.

YAML 1.1, which PyYAML implements, reads `1e-3`, `5E-4`, `-.5` and `1.0e3` as strings
(its floats need a dot and a signed exponent), so `lr: 1e-3` was refused as "not a
number". Every scalar that was a float stays one, and nothing else changes: `yes`/`on`
are still booleans, `0x1F` and `1_000` still integers, and a plain integer is never a
float.

Aliases are bounded: an anchor may be reused (`<<: *defaults` in a sweep file), but a
document whose aliases would add over MAX_EXPANDED values to it (the "billion laughs":
a kilobyte of nested aliases that copying the config turns into gigabytes) is refused
before anything is built, with one line, and so is an alias inside its own anchor.
"""
from __future__ import annotations

import re

import yaml

from .errors import ConfigError

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


# values (scalars, lists, mappings) a document may hold once its aliases are expanded;
# a document without aliases is never refused (it holds what is written)
MAX_EXPANDED = 100_000


class AliasBomb(ConfigError):
    """A document whose aliases expand past MAX_EXPANDED values, or refer to themselves."""


def _expanded_size(root) -> int:
    """The values the composed node graph `root` holds with every alias expanded, counted
    without expanding anything: an alias is the anchor's node object
    itself, so each node's expanded size is counted once and reused. Raises AliasBomb as
    soon as aliases add over MAX_EXPANDED values to what is written, or on a cycle."""
    size: dict[int, int] = {}
    open_: set[int] = set()

    def count(node) -> int:
        k = id(node)
        if k in size:
            return size[k]
        if k in open_:
            raise AliasBomb(f"line {node.start_mark.line + 1}: an alias inside its own anchor (a recursive structure)")
        open_.add(k)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(count(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(count(a) + count(b) for a, b in node.value)
        open_.discard(k)
        size[k] = n
        if n > MAX_EXPANDED + len(size):  # aliases add over MAX_EXPANDED values to what is written
            raise AliasBomb(f"line {node.start_mark.line + 1}: YAML aliases expand this to {n:,} values; aliases may add "
                            f"at most {MAX_EXPANDED:,} to what is written (write the values out or nest fewer aliases)")
        return n

    return count(root)


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the float rule above (it takes the place of 1.1's in the
    resolver lists, so the order in which PyYAML tries the tags is unchanged), and the
    alias bound checked on the composed nodes before any Python object is built."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


SafeLoader.yaml_implicit_resolvers = {
    ch: [(tag, _FLOAT_RE if tag == FLOAT else rx) for tag, rx in resolvers]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(text: str):
    """yaml.safe_load with YAML 1.2 floats."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a SafeLoader subclass
