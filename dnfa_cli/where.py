"""The --where language that `dnfa ls`, `dnfa report` and `load_runs` share: KEY OP VALUE
over a run's row (config keys, run-level keys, the end's losses and `STAT@LAYER`), numbers
compared as numbers; and the did-you-mean for a key that no run has."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from .errors import DnfaInputError, closest

OPS = ("=", "!=", "<", "<=", ">", ">=")
_COND = re.compile(r"^\s*([^\s=!<>]+)\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$")
_LAYER_KEY = re.compile(r"^(.+)@(.*)$")
NULLS = ("null", "none", "~")


def _number(text: str) -> float | None:
    """The value as a number when it reads as one (1e-3, 256, -0.5); YAML 1.1 would read
    1e-3 as a string, so float() decides. Booleans are not numbers."""
    try:
        return float(text)
    except ValueError:
        return None


def _boolean(text: str) -> bool | None:
    """The value as YAML reads a boolean (true, yes, on, off, ... as in a config file), or None."""
    import yaml

    from . import yaml12

    try:
        v = yaml12.load(text)
    except yaml.YAMLError:
        return None
    return v if isinstance(v, bool) else None


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Condition:
    """One `KEY OP VALUE`; `holds(row)` on a dict of a run's keys. A run without the key
    (or with null there) matches `KEY=null` and every `!=` but no other condition."""

    text: str
    key: str
    op: str
    value: str
    number: float | None

    def holds(self, row: dict) -> bool:
        if self.op in ("=", "!="):
            return self._equal(row.get(self.key)) == (self.op == "=")
        x = row.get(self.key)
        if _missing(x) or not is_number(x):
            return False
        a, b = float(x), self.number
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]

    def _equal(self, x) -> bool:
        if _missing(x):
            return self.value.lower() in NULLS
        if self.number is not None and is_number(x):
            return float(x) == self.number
        if isinstance(x, bool):
            return _boolean(self.value) is x
        if isinstance(x, (list, tuple)):  # data.coords=[0,1] or data.coords=[0, 1]
            return self.value.replace(" ", "") == "[" + ",".join(map(str, x)) + "]"
        return str(x) == self.value


def parse(text: str) -> Condition:
    """`model.width=256`, `train.lr<=1e-3`, `pearson_a1@2>0.8` -> Condition; DnfaInputError
    (one line) for anything else."""
    m = _COND.match(text) if isinstance(text, str) else None
    if not m or not m.group(3) or m.group(3)[0] in "=!<>":
        raise DnfaInputError(f"--where {text!r}: expected KEY OP VALUE with OP one of {' '.join(OPS)}, "
                             "e.g. --where model.width=256 or --where pearson_a1@2>0.8")
    key, op, value = m.group(1), m.group(2), m.group(3)
    op = "=" if op == "==" else op
    lk = _LAYER_KEY.match(key)
    if lk and not (lk.group(1) and lk.group(2).isdigit()):
        raise DnfaInputError(f"--where {text!r}: {key!r} is not STAT@LAYER with a layer number, e.g. pearson_a1@2")
    number = _number(value)
    if op not in ("=", "!=") and (number is None or math.isnan(number)):
        raise DnfaInputError(f"--where {text!r}: {op} compares numbers, and {value!r} is not a number")
    return Condition(text, key, op, value, number)


def parse_all(where: str | Iterable[str] | None) -> list[Condition]:
    if where is None:
        return []
    return [parse(w) for w in ([where] if isinstance(where, str) else where)]


def check_key(key: str, known: Iterable[str], flag: str) -> None:
    """DnfaInputError naming the closest known key when `key` is none of them; a
    per-layer statistic named without its layer is told how to name one."""
    known = sorted(set(known))
    if key in known:
        return
    stat, at, layer = key.rpartition("@")
    layers = sorted(int(k.rpartition("@")[2]) for k in known if k.startswith(stat + "@") and k.rpartition("@")[2].isdigit())
    if at and layers:
        raise DnfaInputError(f"{flag} {key}: no layer {layer} in these runs; {stat} is there for layer "
                             + ", ".join(map(str, layers)))
    per_layer = sorted(k for k in known if k.startswith(key + "@"))
    if per_layer:
        raise DnfaInputError(f"{flag} {key}: a statistic of each layer; name the layer, e.g. {per_layer[0]} "
                             f"({', '.join(per_layer[:6])}{' ...' if len(per_layer) > 6 else ''})")
    close = closest(key, known)
    raise DnfaInputError(f"{flag} {key}: no such key in these runs" + (f" (did you mean {close}?)" if close else ""))


def select(rows: list[dict], conds: list[Condition]) -> list[dict]:
    """The rows every condition holds for; a key that no row has is an error (with
    rows to look at: over no runs every key is unknown and nothing is filtered)."""
    if not conds:
        return rows
    if rows:
        known = {k for r in rows for k in r}
        for c in conds:
            check_key(c.key, known, "--where")
    return [r for r in rows if all(c.holds(r) for c in conds)]
