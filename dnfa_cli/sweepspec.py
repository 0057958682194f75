"""The sweep specification: `--set` and `--grid` strings, a file's `sweep:` block (grid or
random, in W&B's vocabulary) read into one value object per parameter, and the dotted-key
assignments of each run it expands to. It knows no config schema: which keys exist is
asked of the caller (config.expand_sweep), which turns each assignment into a Config."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import yaml

from .errors import ConfigError, closest, fmt_value

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")


# ----------------------------------------------------------------------------- command line
def parse_set(items: list[str] | None) -> list[tuple[str, Any]]:
    """`--set key=value` strings -> (key, value) with the value read as YAML (ints, lists...)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.width=256")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        out.append((key, value))
    return out


def parse_grid(items: list[str] | None) -> list[tuple[str, list]]:
    """`--grid KEY=V1,V2,...` strings -> (key, values), each value read as YAML."""
    out = []
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid model.width=64,256")
        vals = []
        for t in text.split(","):
            try:
                vals.append(yaml.safe_load(t) if t.strip() else None)
            except yaml.YAMLError:
                vals.append(t)
        out.append((key.strip(), vals))
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
        if key in params:
            del params[key]
            changed = True
            notes.append(f"--set {key}={value!r} replaces the sweep's values for {key} in {path}")
    if grids:
        if isinstance(sweep, dict) and sweep.get("method", "grid") != "grid":
            raise ConfigError(f"{path}: --grid adds a grid, but the file's sweep is method {sweep.get('method')!r}")
        for key, vals in grids:
            if key in params:
                notes.append(f"--grid {key} replaces the sweep's values for {key} in {path}")
            params[key] = {"values": vals}
    if changed:  # else the file's sweep block is validated as written (expand)
        sweep = {**(sweep if isinstance(sweep, dict) else {"method": "grid"}), "parameters": params} if params else None
    return sweep, notes


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Values:
    """A parameter given as a list (`values: [...]`, or `value: x` for a list of one)."""

    items: list

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


@dataclass(frozen=True)
class SweepSpec:
    """A checked `sweep:` block. `count` and `seed` are kept as written: assignments()
    checks them, after the size check (a random sweep's size is its count)."""

    source: str
    method: str
    params: dict  # dotted key -> Values | Distribution, in the file's order
    count: Any = None
    seed: Any = 0

    @classmethod
    def parse(cls, sweep, source: str, base_task, keys_of_task: Callable[[Any], set]) -> SweepSpec:
        """`keys_of_task(task)`: the dotted keys a config of that data task may set; a key
        is accepted if it is valid for the base task or for any task the sweep sets."""
        if not isinstance(sweep, dict):
            raise ConfigError(f"{source}: sweep: must be a mapping with method and parameters")
        unknown = set(sweep) - {"method", "parameters", "count", "seed"}
        if unknown:
            k = sorted(unknown)[0]
            raise ConfigError(f"{source}: sweep.{k}: unknown key (allowed: method, parameters, count, seed)")
        method = sweep.get("method", "grid")
        if method not in ("grid", "random"):
            raise ConfigError(f"{source}: sweep.method = {fmt_value(method)}: must be grid or random")
        params = sweep.get("parameters")
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{source}: sweep.parameters: must be a non-empty mapping of dotted config keys")
        # data.task may itself be swept; accept keys valid for any swept task
        tasks = {base_task}
        if "data.task" in params and isinstance(params["data.task"], dict):
            tasks |= set(v for v in params["data.task"].get("values", []) if isinstance(v, str))
        valid = set()
        for t in tasks:
            valid |= keys_of_task(t)
        specs = {}
        for key, spec in params.items():
            where = f"{source}: sweep.parameters.{key}"
            if key not in valid:
                close = closest(key, valid)
                raise ConfigError(f"{where}: no such config key" + (f" (did you mean {close}?)" if close else ""))
            specs[key] = parse_parameter(spec, method, where)
        return cls(source, method, specs, sweep.get("count"), sweep.get("seed", 0))

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
        than `max_runs` is refused before any is made."""
        self._check_size(max_runs)
        keys = list(self.params)
        if self.method == "grid":
            return [dict(zip(keys, combo)) for combo in itertools.product(*(self.params[k].values() for k in keys))]
        if self.count is None:
            raise ConfigError(f"{self.source}: sweep.count: method random needs count (the number of runs)")
        if not _is_int(self.count) or self.count < 1:
            raise ConfigError(f"{self.source}: sweep.count = {fmt_value(self.count)}: must be an integer >= 1")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"{self.source}: sweep.seed = {fmt_value(self.seed)}: must be an integer in [0, 2^32)")
        rng = np.random.default_rng(self.seed)
        return [{k: self.params[k].sample(rng) for k in keys} for _ in range(self.count)]
