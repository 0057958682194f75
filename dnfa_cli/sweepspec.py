"""The sweep specification: `--set` and `--grid` strings, a file's `sweep:` block (grid or
random, in W&B's vocabulary) read into one value object per parameter, and the dotted-key
assignments of each run it expands to. It knows no config schema: which keys exist is
asked of the caller (config.expand_sweep), which turns each assignment into a Config."""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import yaml

from . import yaml12
from .errors import ConfigError, closest, fmt_value

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")


# ----------------------------------------------------------------------------- command line
def _value(text: str, what: str):
    """One value as written on the command line, read as YAML (1e-3 a number, [0, 1] a
    list, {optimizer: adam} a mapping); text that is not YAML stays text. Nothing at all
    is refused: `--set model.width=` does not silently mean the default."""
    if not text.strip():
        raise ConfigError(f"{what}: no value (write null to leave a key at its default)")
    try:
        return yaml12.load(text)
    except yaml12.AliasBomb as e:
        raise ConfigError(f"{what}: {e}") from None
    except yaml.YAMLError:
        return text


def parse_set(items: list[str] | None) -> list[tuple[str, Any]]:
    """`--set key=value` strings -> (key, value) with the value read as YAML (ints, lists...)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.width=256")
        key, text = item.split("=", 1)
        out.append((key.strip(), _value(text, f"--set {item!r}")))
    return out


def split_top(text: str) -> list[str]:
    """`V1,V2,...` cut at the commas outside brackets, braces and quotes: `[0,1],[0,2]` is
    two values, `{optimizer: sgd, lr: 0.1}` one."""
    parts, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and (not "".join(cur).strip() or "".join(cur).rstrip()[-1] in "[{,:"):
            quote = ch  # a quote opens a scalar only where one starts
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    return parts + ["".join(cur)]


def parse_grid(items: list[str] | None, takes_list: Callable[[str], bool] = lambda key: False) -> list[tuple[str, list]]:
    """`--grid KEY=V1,V2,...` or `--grid KEY=[V1, V2, ...]` (a YAML flow list) strings ->
    (key, values), each value read as YAML. For a key whose value is a list
    (`takes_list`), `[0,1]` is one value and `[[0,1],[0,2]]` or `[0,1],[0,2]` two. A key
    given twice is refused (the second would silently replace the first)."""
    out, seen = [], set()
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid model.width=64,256")
        if key in seen:
            raise ConfigError(f"--grid {key} is given twice; give all its values in one --grid {key}=V1,V2,...")
        seen.add(key)
        vals = [_value(t, f"--grid {item!r}") for t in split_top(text)]
        if len(vals) == 1 and isinstance(vals[0], list) \
                and not (takes_list(key) and not all(isinstance(v, list) for v in vals[0])):
            vals = vals[0]  # a flow list of values
            if not vals:
                raise ConfigError(f"--grid {item!r}: an empty list of values")
        out.append((key, vals))
    return out


def with_command_line(sweep, sets: list[tuple[str, Any]], grids: list[tuple[str, list]],
                      path) -> tuple[Any, list[str]]:
    """A file's sweep block after the command line, which wins (Hydra's rule): `--set` on a
    swept key replaces that key's values with its one value, and `--grid KEY=V1,V2` sweeps
    KEY over those values (a grid added to the file's, or replacing its values for KEY).
    Returns the block (as written if the command line changes nothing about it) and notes
    for the user saying what changed."""
    notes = []
    both = {k for k, _ in sets} & {k for k, _ in grids}
    if both:
        raise ConfigError(f"{path}: {sorted(both)[0]} is given by both --set and --grid")
    params = dict((sweep or {}).get("parameters") or {}) if isinstance(sweep, dict) else {}
    changed = bool(grids)
    for key, value in sets:
        if key in params or _unlink(params, key):
            params.pop(key, None)
            changed = True
            notes.append(f"--set {key}={value!r} replaces the sweep's values for {key} in {path}")
    if grids:
        if isinstance(sweep, dict) and sweep.get("method", "grid") != "grid":
            raise ConfigError(f"{path}: --grid adds a grid, but the file's sweep is method {sweep.get('method')!r}")
        for key, vals in grids:
            if key in params or _unlink(params, key):
                notes.append(f"--grid {key} replaces the sweep's values for {key} in {path}")
            params[key] = {"values": vals}
    if changed:  # else the file's sweep block is validated as written (expand)
        block = {**(sweep if isinstance(sweep, dict) else {"method": "grid"}), "parameters": params}
        # no parameters left: one run, still under the sweep's name if it has one
        sweep = block if params else ({"name": sweep["name"]} if isinstance(sweep, dict) and "name" in sweep else None)
    return sweep, notes


def _unlink(params: dict, key: str) -> bool:
    """Take `key` out of the linked parameters that set it (`train` setting train.lr), in
    place: the command line's value wins. Mappings left empty or the same go; a parameter
    left with none goes. Whether any parameter set it."""
    hit = False
    for p, spec in list(params.items()):
        vals = spec.get("values", [spec["value"]] if "value" in spec else None) if isinstance(spec, dict) else None
        rel = key[len(p) + 1:] if isinstance(p, str) and key.startswith(p + ".") else None
        if rel is None or not isinstance(vals, list) or not all(isinstance(v, dict) for v in vals):
            continue
        flat = [_dotted(v, "") for v in vals]
        if not any(rel in f for f in flat):
            continue
        hit = True
        kept = []
        for f in ({k: v for k, v in f.items() if k != rel} for f in flat):
            if f and f not in kept:
                kept.append(f)
        if kept:
            params[p] = {"values": kept}
        else:
            del params[p]
    return hit


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Values:
    """A parameter given as a list (`values: [...]`, or `value: x` for a list of one)."""

    items: list
    linked: bool = False  # items are {dotted key: value} mappings, each set together

    def values(self) -> list:
        """What a grid takes, in order."""
        return list(self.items)

    def sample(self, rng: np.random.Generator):
        """One of the values, uniformly (method random)."""
        return self.items[int(rng.integers(len(self.items)))]


@dataclass(frozen=True)
class Distribution:
    """A parameter drawn between min and max (method random only): `uniform`,
    `log_uniform` (uniform in log) or `int_uniform` (an integer, both ends included)."""

    kind: str
    lo: float
    hi: float

    def sample(self, rng: np.random.Generator):
        if self.kind == "uniform":
            return float(rng.uniform(self.lo, self.hi))
        if self.kind == "log_uniform":
            return float(math.exp(rng.uniform(math.log(self.lo), math.log(self.hi))))
        return int(rng.integers(int(self.lo), int(self.hi) + 1))


def parse_parameter(spec, method: str, where: str) -> Values | Distribution:
    """One entry of sweep.parameters, checked; `where` (file: sweep.parameters.KEY) starts
    every error line."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping such as {{values: [...]}}")
    bad = set(spec) - {"values", "value", "distribution", "min", "max"}
    if bad:
        raise ConfigError(f"{where}.{sorted(bad)[0]}: unknown key (allowed: values, value, distribution, min, max)")
    if "values" in spec:
        vals = spec["values"]
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.values: must be a non-empty list")
        return Values(vals)
    if "value" in spec:
        return Values([spec["value"]])
    if "distribution" not in spec:
        raise ConfigError(f"{where}: give values, value, or distribution with min and max")
    dist = spec["distribution"]
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.distribution = {fmt_value(dist)}: must be one of {', '.join(DISTRIBUTIONS)}")
    if method != "random":
        raise ConfigError(f"{where}: a distribution needs method: random (grid takes values)")
    lo, hi = spec.get("min"), spec.get("max")
    for nm, v in (("min", lo), ("max", hi)):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConfigError(f"{where}.{nm} = {fmt_value(v)}: must be a number")
    if lo > hi:
        raise ConfigError(f"{where}: min = {lo} exceeds max = {hi}")
    if dist == "log_uniform" and lo <= 0:
        raise ConfigError(f"{where}.min = {lo}: log_uniform needs min > 0")
    if dist == "int_uniform" and (int(lo) != lo or int(hi) != hi):
        raise ConfigError(f"{where}: int_uniform needs integer min and max")
    return Distribution(dist, lo, hi)


# ----------------------------------------------------------------------------- the block
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# a sweep's name, like a run's, becomes part of an id (sweep-<name>-<hash>)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_name(name, where: str) -> str:
    """A sweep name (sweep.name, --name), or ConfigError naming `where`."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or len(name) > 64:
        raise ConfigError(f"{where} = {fmt_value(name)}: must start with a letter or digit and hold only letters, "
                          "digits, '_', '-' and '.' (at most 64, no '..'; it becomes part of the sweep id)")
    return name


def _dotted(d: dict, prefix: str) -> dict:
    """{"optimizer": "adam", "x": {"y": 1}} under "train" -> {"train.optimizer": "adam", "train.x.y": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _linked(key: str, spec: Values, where: str) -> Values:
    """A parameter over a section (`train: {values: [{optimizer: sgd, lr: 0.1}, ...]}`):
    each value a mapping of keys under it, set together; kept as dotted keys."""
    items = []
    for i, v in enumerate(spec.items):
        if not isinstance(v, dict) or not v:
            raise ConfigError(f"{where}.values[{i}] = {fmt_value(v)}: {key} is a section; each value must be a "
                              f"mapping of its keys set together, e.g. {{optimizer: adam, lr: 1e-3}}")
        items.append(_dotted(v, f"{key}."))
    return Values(items, linked=True)


def _tasks(base_task, params: dict) -> set:
    """The data tasks a sweep's runs may have: the base's and every one a parameter sets."""
    tasks = {base_task}
    for key, p in params.items():
        if isinstance(p, Values):
            tasks |= {v for v in p.items if key == "data.task" and isinstance(v, str)}
            tasks |= {v.get("data.task") for v in p.items if p.linked and isinstance(v.get("data.task"), str)}
    return tasks


def _check_keys(params: dict, valid: set, source: str) -> None:
    """Every key a parameter sets is a config key, and no key is set by two parameters."""
    owner = {}
    for key, p in params.items():
        where = f"{source}: sweep.parameters.{key}"
        sets = sorted({k for v in p.items for k in v}) if getattr(p, "linked", False) else [key]
        for k in sets:
            if k not in valid:
                close = closest(k, valid)
                what = f"{where}: {k}" if k != key else where
                raise ConfigError(f"{what}: no such config key" + (f" (did you mean {close}?)" if close else ""))
            if k in owner:
                raise ConfigError(f"{source}: sweep.parameters: {k} is set by both {owner[k]} and {key}")
            owner[k] = key


@dataclass(frozen=True)
class SweepSpec:
    """A checked `sweep:` block. `count` and `seed` are kept as written: assignments()
    checks them, after the size check (a random sweep's size is its count)."""

    source: str
    method: str
    params: dict  # parameter key -> Values | Distribution, in the file's order
    count: Any = None
    seed: Any = 0
    name: str | None = None

    @classmethod
    def parse(cls, sweep, source: str, base_task, keys_of_task: Callable[[Any], set]) -> SweepSpec:
        """`keys_of_task(task)`: the dotted keys a config of that data task may set; a key
        is accepted if it is valid for the base task or for any task the sweep sets. A
        parameter over a section (`train`, `data`) takes mappings of its keys (linked
        parameters). A block with a name and no parameters is one run."""
        if not isinstance(sweep, dict):
            raise ConfigError(f"{source}: sweep: must be a mapping with method and parameters")
        unknown = set(sweep) - {"method", "parameters", "count", "seed", "name"}
        if unknown:
            k = sorted(unknown)[0]
            raise ConfigError(f"{source}: sweep.{k}: unknown key (allowed: method, parameters, count, seed, name)")
        name = check_name(sweep["name"], f"{source}: sweep.name") if "name" in sweep else None
        method = sweep.get("method", "grid")
        if method not in ("grid", "random"):
            raise ConfigError(f"{source}: sweep.method = {fmt_value(method)}: must be grid or random")
        params = sweep.get("parameters")
        if name is not None and params is None and method == "grid":
            return cls(source, method, {}, name=name)
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{source}: sweep.parameters: must be a non-empty mapping of dotted config keys")
        base_keys = keys_of_task(base_task)
        specs = {}
        for key, spec in params.items():
            where = f"{source}: sweep.parameters.{key}"
            p = parse_parameter(spec, method, where)
            # a section, not itself a key (model.init_from is a key that takes a mapping)
            section = isinstance(key, str) and key not in base_keys and any(k.startswith(key + ".") for k in base_keys)
            if section and not isinstance(p, Values):
                raise ConfigError(f"{where}: {key} is a section; it takes values, mappings of its keys set together")
            specs[key] = _linked(key, p, where) if section else p
        # data.task may itself be swept; accept keys valid for any swept task
        valid = set().union(*(keys_of_task(t) for t in _tasks(base_task, specs)))
        _check_keys(specs, valid, source)
        return cls(source, method, specs, sweep.get("count"), sweep.get("seed", 0), name)

    def _check_size(self, max_runs: int) -> None:
        grid = self.method == "grid"
        size = math.prod(len(p.items) for p in self.params.values()) if grid else self.count
        if _is_int(size) and size > max_runs:
            what = "a grid of " + " x ".join(str(len(p.items)) for p in self.params.values()) if grid else "count"
            raise ConfigError(f"{self.source}: sweep: {what} = {size:,} runs, more than --max-runs {max_runs:,} "
                              "(raise --max-runs if you mean it)")

    def assignments(self, max_runs: int) -> list[dict]:
        """Each run's {dotted key: value}: every combination for a grid (the first key
        varies slowest), `count` draws from a generator seeded by `seed` for random. More
        than `max_runs` is refused before any is made. A linked parameter's value sets
        each of its keys."""
        self._check_size(max_runs)
        keys = list(self.params)
        if self.method == "grid":
            combos = itertools.product(*(self.params[k].values() for k in keys))
        else:
            if self.count is None:
                raise ConfigError(f"{self.source}: sweep.count: method random needs count (the number of runs)")
            if not _is_int(self.count) or self.count < 1:
                raise ConfigError(f"{self.source}: sweep.count = {fmt_value(self.count)}: must be an integer >= 1")
            if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
                raise ConfigError(f"{self.source}: sweep.seed = {fmt_value(self.seed)}: must be an integer in [0, 2^32)")
            rng = np.random.default_rng(self.seed)
            combos = [[self.params[k].sample(rng) for k in keys] for _ in range(self.count)]
        out = []
        for combo in combos:
            a = {}
            for k, v in zip(keys, combo):
                a.update(v if getattr(self.params[k], "linked", False) else {k: v})
            out.append(a)
        return out
