"""Everything done at a checkpoint: the metrics subset, the loss record, the Grams, the
statistics, the random baselines, the counterfactual nets (published, swap, U/V swaps) and which
layer matrices are kept. The training loop (train.py) hands a `Meter` each run's
parameters at a checkpoint and gets back the records of the runs that go on.
"""
from __future__ import annotations

import math
import time
import traceback
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import baselines as bl
from . import counterfactual as cf
from . import grams, stats
from . import model as mdl
from .config import Config
from .data import Dataset, device_arrays, dims_of
from .programs import loading, stored
from .rules import small_run

# metrics keys that name a checkpoint set (all | ends | none), each a family of keys
COUNTERFACTUALS = ("published", "swap", "swap_uv")
FAMILY_KEYS = {"published": cf.PUBLISHED_KEYS, "swap": cf.SWAP_KEYS, "swap_uv": cf.SWAP_UV_KEYS}


def _num(x):
    """JSON-safe float: nan / inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def metrics_subset(cfg: Config, ds: Dataset) -> np.ndarray:
    """Row indices of the AGOP subset: fixed once per run, from the metrics key."""
    X = ds.X_train if cfg.metrics.split == "train" else ds.X_test
    n = min(cfg.metrics.samples, len(X))
    _, _, k_metrics = mdl.run_keys(cfg.seed)
    return np.sort(np.asarray(_permutation(k_metrics, n=len(X)))[:n])


@stored(static=("n",))
def _permutation(k_metrics, *, n):
    return jax.random.permutation(jax.random.fold_in(k_metrics, 0), n)


def random_baselines(cfg: Config, params) -> list[bl.Terms]:
    """Each layer's random-W terms (baselines.py), drawn once per run from the metrics key
    and kept on the device."""
    _, _, k_metrics = mdl.run_keys(cfg.seed)
    return bl.draw_terms_each(_layer_keys(k_metrics, salt=2, n=len(params)), [layer["W"].shape for layer in params])


def ahead(cfg: Config) -> None:
    """Put up what a run of cfg will need first that its config alone says: the programs of
    its random-W draws (random_baselines; a user .npz, whose sizes are in the file, says
    nothing)."""
    dims = dims_of(cfg)
    if dims is not None:
        sizes = mdl.layer_sizes(dims[0], cfg.model.hidden(), dims[1])
        bl.draws_ahead([(fan_out, fan_in) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])])


@stored
def _bootstrap_key(k_metrics, step):
    return jax.random.fold_in(jax.random.fold_in(k_metrics, 1), step)


@stored(static=("salt", "n"))
def _layer_keys(k_metrics, *, salt, n):
    """fold_in(fold_in(k_metrics, salt), l) for the layers l < n."""
    k = jax.random.fold_in(k_metrics, salt)
    return [jax.random.fold_in(k, l) for l in range(n)]


def swap_factors(cfg: Config, params) -> list:
    """Each hidden layer's swap-test factors (with the U/V swaps' where metrics.swap_uv asks
    for them), drawn once per run from the metrics key."""
    _, _, k_metrics = mdl.run_keys(cfg.seed)
    k = jax.random.fold_in(k_metrics, 3)
    uv = cfg.metrics.swap_uv != "none"
    return [cf.SwapFactors(jax.random.fold_in(k, l), layer["W"].shape, uv) for l, layer in enumerate(params[:-1])]


def loss_record(cfg: Config, ds: Dataset, params, step: int, spe: int, arrays=None) -> dict:
    """The checkpoint record's step and losses (accuracies for classification)."""
    tc, mc = cfg.train, cfg.model
    kw = dict(activation=mc.activation, loss=tc.loss, kind=ds.kind)
    dt = jnp.dtype(tc.dtype)
    tr_loss, tr_acc = mdl.evaluate(params, *(arrays or device_arrays(ds.X_train, ds.T_train, ds.y_train, dtype=dt)), **kw)
    te_loss, te_acc = mdl.evaluate(params, *device_arrays(ds.X_test, ds.T_test, ds.y_test, dtype=dt), **kw)
    cls = ds.kind != "regression"
    return {
        "step": int(step),
        "epoch": step / spe,
        "train_loss": _num(tr_loss),
        "test_loss": _num(te_loss),
        "train_acc": _num(tr_acc) if cls else None,
        "test_acc": _num(te_acc) if cls else None,
    }


def counterfactuals(cfg: Config, params, params0, X, what: set, swaps) -> list[dict]:
    """The keys of the counterfactual families in `what` (published_*, swap_*, the U/V
    swaps') of every hidden layer (the read-out's are null)."""
    mdt = jnp.dtype(cfg.metrics.dtype)
    Xd = jnp.asarray(X, mdt)  # to the device once, not once per layer
    hs = cf.layer_inputs(params, Xd, cfg.model.activation)
    L = len(params)
    rows = []
    for i in range(L):
        row = {}
        for fam in COUNTERFACTUALS:
            if fam not in what:
                continue
            if i == L - 1:
                row.update(dict.fromkeys(FAMILY_KEYS[fam]))
            elif fam == "published":
                row.update(cf.published(cfg, params, params0, Xd, hs, i, dtype=mdt))
            else:
                row.update(cf.swap(cfg, params, hs, i, swaps[i], dtype=mdt, family=fam))
        rows.append(row)
    return rows


def _layer_rows(cfg: Config, params, outs, extra: list[dict]) -> tuple[list[dict], dict]:
    """One run's layer rows (statistics, with the asked counterfactual keys, null where this
    checkpoint does not compute them) and its matrices keyed `<name>_<layer>`."""
    asked = {k for k in COUNTERFACTUALS if getattr(cfg.metrics, k) != "none"}
    L = len(params)
    layers, mats = [], {}
    for l in range(L):
        row, m = outs[l]
        for k in COUNTERFACTUALS:
            if k in asked:
                row.update({key: extra[l].get(key) for key in FAMILY_KEYS[k]})
        W = params[l]["W"]
        layers.append({"layer": l + 1, "shape": [int(W.shape[0]), int(W.shape[1])], "trivial": l == L - 1,
                       **{k: (_num(v) if isinstance(v, float) else v) for k, v in row.items()}})
        mats.update({f"{name}_{l + 1}": a for name, a in m.items()})
    return layers, mats


def measure(cfgs: list[Config], dss: list[Dataset], params_list, params0_list, subsets, step: int, spe: int, *,
            method: str, terms: list, arrays=None, what: set = frozenset(), swaps=None) -> list[tuple[dict, dict]]:
    """For runs of one seed batch (one run is the usual case) at `step`: each run's
    checkpoint record (losses and every per-layer statistic) and its layer matrices
    nfm/agop/agop_half/pgop keyed `<name>_<layer>` (float32 device arrays). The Grams and
    the statistics are computed on the device, runs and layers of one shape together.
    `terms`: each run's random_baselines(), drawn once per run. `what`: the counterfactuals
    (COUNTERFACTUALS) this checkpoint computes (the swaps need `swaps`, each run's
    swap_factors()); a run that asks for one elsewhere gets its keys as null."""
    cfg0 = cfgs[0]
    mc, mt = cfg0.model, cfg0.metrics
    recs = [loss_record(c, d, p, step, spe, a) for c, d, p, a in zip(cfgs, dss, params_list, arrays or [None] * len(cfgs))]
    Xs = [(d.X_train if mt.split == "train" else d.X_test)[s] for d, s in zip(dss, subsets)]
    Ts = [(d.T_train if mt.split == "train" else d.T_test)[s] for d, s in zip(dss, subsets)]
    mdt = jnp.dtype(mt.dtype)
    # bootstrap resamples are drawn afresh per checkpoint; the random-W baselines use the
    # same random factors for the whole run
    keys = [_bootstrap_key(mdl.run_keys(c.seed)[2], np.uint32(step)) for c in cfgs]
    gs = grams.compute_grams_batch(params_list, Xs, mc.activation, method=method, dtype=mdt, chunk=mt.chunk,
                                   bootstrap=mt.bootstrap, keys=keys, params0_list=params0_list, T_list=Ts)
    L = len(params_list[0])
    eps = float(jnp.finfo(mdt).eps)
    items = [(stats.layer_input(p[l]["W"], p0[l]["W"], g, l, max(p[l]["W"].shape) * eps, t[l]), l == L - 1)
             for p, p0, g, t in zip(params_list, params0_list, gs, terms) for l in range(L)]
    outs = stats.compute(items)
    what = what & {k for k in COUNTERFACTUALS if getattr(mt, k) != "none"}
    res = []
    for r, rec in enumerate(recs):
        extra = (counterfactuals(cfgs[r], params_list[r], params0_list[r], Xs[r], what, (swaps or [None] * len(cfgs))[r])
                 if what else [{} for _ in range(L)])
        layers, mats = _layer_rows(cfgs[r], params_list[r], outs[r * L:(r + 1) * L], extra)
        res.append(({**rec, "layers": layers}, mats))
    return res


@stored
def all_finite(params):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(params)]))


# ----------------------------------------------------------------------------- a batch's checkpoints
class Ended(NamedTuple):
    """Why a run stopped at a checkpoint."""

    status: str  # diverged | failed
    error: str
    traceback: str | None = None


def _failed(step: int, e: Exception) -> Ended:
    return Ended("failed", f"{type(e).__name__} at step {step}: {e}".splitlines()[0], traceback.format_exc())


class Meter:
    """Measures the runs of one seed batch at their checkpoints. Holds what is drawn once
    per run (the random-W terms from the start, the swap factors when first needed) and,
    for save_matrices: ends, the parameters (not the 50 MB of matrices at width 1024) of
    each run's latest checkpoint: should the run end before its last step, that
    checkpoint's matrices are measured again from them (`end`)."""

    def __init__(self, cfgs: list[Config], dss: list[Dataset], params0: list, *, spe: int, total: int, method: str,
                 arrays_of: Callable[[int], tuple], on_checkpoint=None, on_matrices=None):
        R = len(cfgs)
        self.cfgs, self.dss, self.params0 = cfgs, dss, params0
        self.spe, self.total, self.method, self.arrays_of = spe, total, method, arrays_of
        self.on_checkpoint = on_checkpoint or [None] * R
        self.on_matrices = on_matrices or [None] * R
        self.subsets = [metrics_subset(c, d) for c, d in zip(cfgs, dss)]
        self.swaps: list = [None] * R
        self.held: list = [None] * R  # (step, params) of the latest checkpoint, save_matrices: ends
        # the random-W terms are dispatched now and not waited for: they compute (1.4 s at
        # width 1024) while the first checkpoint's programs are traced and loaded, which is
        # Python on one core; the statistics, the first program that takes them, wait for them.
        # A small run's draws compute nothing to speak of, and while the loader threads still
        # read its programs it trains on instead (train._Loop.checkpoint): they are drawn
        # when its first checkpoint is measured
        self.baseline_seconds = 0.0  # dispatching the draws, all runs
        self._terms: list | None = None
        if not (loading() and all(small_run(c) for c in cfgs)):
            self.terms  # noqa: B018 - drawn now

    @property
    def terms(self) -> list:
        """Each run's random_baselines(), drawn on first use."""
        if self._terms is None:
            t0 = time.perf_counter()
            self._terms = [random_baselines(c, p) for c, p in zip(self.cfgs, self.params0)]
            self.baseline_seconds = time.perf_counter() - t0
        return self._terms

    def due(self, mode: str, step: int) -> bool:
        """Whether a checkpoint-set key (all / ends / none) includes this step."""
        return mode == "all" or (mode == "ends" and step in (0, self.total))

    def checkpoint(self, params: dict, step: int) -> tuple[dict, dict]:
        """Measure the runs of `params` ({run: its parameters}) at `step`: ({run: record}
        of those that go on, {run: Ended} of those that stop here). Calls each run's
        on_checkpoint(record, params) and on_matrices(step, matrices) as it goes."""
        self.terms  # noqa: B018 - drawn here if not yet: a failure is the batch's, as when drawn at the start
        ended, finite = {}, {}
        for r, p in params.items():
            # the minibatch losses are taken before each update: the last update of a
            # segment can still overflow the weights
            if bool(all_finite(p)):
                finite[r] = p
            else:
                ended[r] = Ended("diverged", f"parameters became non-finite by step {step}")
        go = {}
        for r, (rec, mats) in (self._measure_runs(finite, step, ended) if finite else {}).items():
            if rec["train_loss"] is None:
                ended[r] = Ended("diverged", f"training loss is not finite at step {step}")
                continue
            if self.on_checkpoint[r]:
                self.on_checkpoint[r](rec, params[r])
            self._keep(r, step, mats, params[r])
            go[r] = rec
        for r in params:
            if r not in go:
                self.end(r)  # the run ends here: keep its latest matrices
        return go, ended

    def _keep(self, r: int, step: int, mats: dict, params) -> None:
        save = self.cfgs[r].metrics.save_matrices
        if self.due(save, step):
            self.held[r] = None  # written now: nothing to measure again at the run's end
            if self.on_matrices[r]:
                self.on_matrices[r](step, mats)
        elif save == "ends":
            self.held[r] = (step, params)

    def end(self, r: int) -> None:
        """Run r ends: write the matrices of its latest checkpoint if they were held back."""
        if self.held[r] is not None and self.on_matrices[r]:
            step, params = self.held[r]
            try:
                mats = measure([self.cfgs[r]], [self.dss[r]], [params], [self.params0[r]], [self.subsets[r]], step,
                               self.spe, method=self.method, terms=[self.terms[r]])[0][1]
            except Exception:  # noqa: BLE001 - the run's status already says why it ended
                mats = None
            if mats is not None:
                self.on_matrices[r](step, mats)
        self.held[r] = None

    def _measure_runs(self, params: dict, step: int, ended: dict) -> dict:
        """{run: (record, matrices)} for the runs of `params`, measured together; if that
        raises, each alone, so one run's failure does not take its batch down (it goes into
        `ended`)."""
        what = {k for k in COUNTERFACTUALS if self.due(getattr(self.cfgs[0].metrics, k), step)}
        if len(params) > 1:
            try:
                return self._measure(list(params), params, step, what)
            except Exception:  # noqa: BLE001 - find the run that raised
                pass
        got = {}
        for r in params:
            try:
                got.update(self._measure([r], params, step, what))
            except Exception as e:  # noqa: BLE001
                ended[r] = _failed(step, e)
        return got

    def _measure(self, idx: list[int], params: dict, step: int, what: set) -> dict:
        for r in idx:
            if what & {"swap", "swap_uv"} and self.swaps[r] is None:
                self.swaps[r] = swap_factors(self.cfgs[r], self.params0[r])
        pick = lambda xs: [xs[r] for r in idx]
        return dict(zip(idx, measure(pick(self.cfgs), pick(self.dss), [params[r] for r in idx], pick(self.params0),
                                     pick(self.subsets), step, self.spe, method=self.method, terms=pick(self.terms),
                                     arrays=[self.arrays_of(r) for r in idx], what=what, swaps=pick(self.swaps))))
