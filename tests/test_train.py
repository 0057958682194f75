"""The training loop against a hand-written numpy loop; compilation; determinism."""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnfa_cli import baselines as bl
from dnfa_cli import config, data, train
from dnfa_cli import measure as ms
from dnfa_cli import model as mdl
from dnfa_cli import progress


def _cfg(**over):
    raw = {
        "name": "t",
        "seed": 3,
        "data": {"task": "monomial", "d": 4, "n_train": 21, "n_test": 7, "noise": 0.1},
        "model": {"depth": 1, "width": 5, "activation": "tanh", "bias": True, "init": "torch"},
        "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "epochs": 2, "dtype": "float64"},
        "metrics": {"checkpoints": 2, "samples": 21},
    }
    for k, v in over.items():
        config._set_dotted(raw, k, v)
    return config.validate(raw)


def _numpy_epoch(cfg, ds, params, epoch, opt_state, t0, frozen=()):
    """One epoch of minibatch training written out by hand: the shuffle, the leftover last
    minibatch, backprop through one tanh layer, and the three optimizers; the layers in
    `frozen` (0-based) are left alone."""
    tc = cfg.train
    W1, b1, W2, b2 = (np.array(params[0]["W"]), np.array(params[0]["b"]), np.array(params[1]["W"]), np.array(params[1]["b"]))
    X, T = ds.X_train, ds.T_train
    n, B = len(X), tc.batch_size
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(mdl.run_keys(cfg.seed)[1], epoch), n))
    t = t0
    for s in range(0, n, B):
        idx = perm[s:s + B]
        x, y = X[idx], T[idx]
        m = len(idx)
        p = x @ W1.T + b1
        h = np.tanh(p)
        f = h @ W2.T + b2
        df = 2 * (f - y) / (m * y.shape[1])
        gW2, gb2 = df.T @ h, df.sum(0)
        dp = (df @ W2) * (1 - h**2)
        gW1, gb1 = dp.T @ x, dp.sum(0)
        ps, gs = [W1, b1, W2, b2], [gW1, gb1, gW2, gb2]
        t += 1
        for j, (pj, gj) in enumerate(zip(ps, gs)):
            if j // 2 in frozen:
                continue
            if tc.optimizer == "sgd":
                gj = gj + tc.weight_decay * pj
                opt_state[j] = gj + tc.momentum * opt_state[j]
                pj -= tc.lr * opt_state[j]
            else:
                if tc.optimizer == "adam":
                    gj = gj + tc.weight_decay * pj
                mu, nu = opt_state[j]
                mu = 0.9 * mu + 0.1 * gj
                nu = 0.999 * nu + 0.001 * gj**2
                opt_state[j] = (mu, nu)
                step = (mu / (1 - 0.9**t)) / (np.sqrt(nu / (1 - 0.999**t)) + 1e-8)
                if tc.optimizer == "adamw":
                    step = step + tc.weight_decay * pj
                pj -= tc.lr * step
    return [{"W": W1, "b": b1}, {"W": W2, "b": b2}], t


@pytest.mark.parametrize("opt", [
    {"train.optimizer": "sgd"},
    {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 0.01},
    {"train.optimizer": "adam", "train.lr": 0.01, "train.weight_decay": 0.01},
    {"train.optimizer": "adamw", "train.lr": 0.01, "train.weight_decay": 0.1},
])
def test_epochs_match_handwritten_numpy_loop(opt):
    cfg = _cfg(**opt)
    ds = data.make_dataset(cfg)
    st = train.init_state(cfg, ds)
    ref = [{k: np.array(v) for k, v in layer.items()} for layer in st.params]
    zeros = [np.zeros_like(a) for layer in ref for a in (layer["W"], layer["b"])]
    opt_state = zeros if cfg.train.optimizer == "sgd" else [(z, z.copy()) for z in zeros]
    arrays = (jnp.asarray(ds.X_train), jnp.asarray(ds.T_train), jnp.asarray(ds.y_train))
    static = dict(activation="tanh", loss="mse", kind="regression", optimizer=cfg.train.optimizer, batch_size=8)
    t = 0
    for e in range(2):
        key = jax.random.fold_in(mdl.run_keys(cfg.seed)[1], e)
        st, losses = train.epoch_fn(st, *arrays, key, 0, 3, **static)
        ref, t = _numpy_epoch(cfg, ds, ref, e, opt_state, t)
        assert losses.shape == (3,)  # 21 samples, batch 8: 8 + 8 + 5
    for got, want in zip(st.params, ref):
        np.testing.assert_allclose(np.asarray(got["W"]), want["W"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(np.asarray(got["b"]), want["b"], rtol=1e-12, atol=1e-13)


OPTIMIZERS = [
    {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 0.01},
    {"train.optimizer": "adam", "train.lr": 0.01, "train.weight_decay": 0.01},
    {"train.optimizer": "adamw", "train.lr": 0.01, "train.weight_decay": 0.1},
]


def _bits(a):
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("frozen", [[1], [2]])  # a hidden layer, the read-out
def test_a_frozen_layer_keeps_its_init_bit_for_bit_and_the_rest_trains_as_by_hand(opt, frozen):
    """Weight decay and momentum would move a frozen layer if it went through the optimizer;
    through train.train (and a seed batch of two) its W and b are the initial arrays exactly,
    while the other layer follows the numpy loop that never touches the frozen one."""
    cfg = _cfg(**opt, **{"train.freeze": frozen})
    ds = data.make_dataset(cfg)
    ref = [{k: np.array(v) for k, v in layer.items()} for layer in train.init_state(cfg, ds).params]
    zeros = [np.zeros_like(a) for layer in ref for a in (layer["W"], layer["b"])]
    opt_state = zeros if cfg.train.optimizer == "sgd" else [(z, z.copy()) for z in zeros]
    t = 0
    for e in range(2):
        ref, t = _numpy_epoch(cfg, ds, ref, e, opt_state, t, frozen=[i - 1 for i in frozen])
    other = _cfg(**opt, **{"train.freeze": frozen, "seed": 8})
    seen = [{}, {}]
    train.train_batched([cfg, other], [ds, data.make_dataset(other)],
                        on_checkpoint=[lambda rec, p, r=r: seen[r].setdefault(rec["step"], p) for r in range(2)])
    for got in seen:
        first, last = got[0], got[max(got)]
        for l in range(2):
            for k in ("W", "b"):
                if l + 1 in frozen:
                    assert _bits(last[l][k]) == _bits(first[l][k]), (l, k)
                else:
                    assert not np.array_equal(np.asarray(last[l][k]), np.asarray(first[l][k])), (l, k)
    for l in range(2):
        for k in ("W", "b"):
            np.testing.assert_allclose(np.asarray(seen[0][max(seen[0])][l][k]), ref[l][k], rtol=1e-12, atol=1e-13)


def test_epoch_compiles_once_and_split_epochs_equal_whole():
    cfg = _cfg(**{"train.dtype": "float32"})
    ds = data.make_dataset(cfg)
    st0 = train.init_state(cfg, ds)
    arrays = (jnp.asarray(ds.X_train, jnp.float32), jnp.asarray(ds.T_train, jnp.float32), jnp.asarray(ds.y_train))
    static = dict(activation="tanh", loss="mse", kind="regression", optimizer="sgd", batch_size=8)
    key = jax.random.PRNGKey(0)
    whole, _ = train.epoch_fn(st0, *arrays, key, 0, 3, **static)
    before = train.epoch_fn._cache_size()
    a, _ = train.epoch_fn(st0, *arrays, key, 0, 1, **static)
    a, _ = train.epoch_fn(a, *arrays, key, 1, 3, **static)
    b, _ = train.epoch_fn(whole, *arrays, jax.random.PRNGKey(1), 0, 3, **static)
    assert train.epoch_fn._cache_size() == before  # new start/stop/key/state values: no retrace
    for x, y in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(a.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a different learning rate is state, not a constant of the program
    cfg2 = _cfg(**{"train.dtype": "float32", "train.lr": 0.3})
    st2 = train.init_state(cfg2, ds)
    train.epoch_fn(st2, *arrays, key, 0, 3, **static)
    assert train.epoch_fn._cache_size() == before


def test_same_config_same_numbers_and_mid_epoch_checkpoints_change_nothing():
    cfg = _cfg(**{"train.epochs": 3, "metrics.checkpoints": [4]})  # step 4 is inside epoch 2
    ds = data.make_dataset(cfg)
    params_at = {}
    out1 = train.train(cfg, ds, on_checkpoint=lambda rec, p: params_at.setdefault(rec["step"], p))
    out2 = train.train(cfg, data.make_dataset(cfg))
    assert [c["step"] for c in out1.checkpoints] == [0, 4, 9]
    assert out1.checkpoints == out2.checkpoints  # bit-for-bit, every statistic
    cfg_plain = _cfg(**{"train.epochs": 3, "metrics.checkpoints": 0})
    final = {}
    train.train(cfg_plain, ds, on_checkpoint=lambda rec, p: final.setdefault(rec["step"], p))
    assert sorted(final) == [0, 9]
    for x, y in zip(jax.tree_util.tree_leaves(final[9]), jax.tree_util.tree_leaves(params_at[9])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_losses_and_accuracy_against_numpy():
    f = jnp.asarray([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    T = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = jnp.asarray([0, 2])
    mse = np.asarray(mdl.per_example_loss(f, T, y, "mse", "classification"))
    np.testing.assert_allclose(mse, ((np.asarray(f) - np.asarray(T)) ** 2).mean(1))
    ce = np.asarray(mdl.per_example_loss(f, T, y, "cross_entropy", "classification"))
    fz = np.asarray(f)
    ref = np.log(np.exp(fz).sum(1)) - fz[[0, 1], [0, 2]]
    np.testing.assert_allclose(ce, ref, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(mdl.correct(f, T, y, "classification")), [1.0, 0.0])
    fb = jnp.asarray([[0.3], [-2.0]])
    tb = jnp.asarray([[1.0], [1.0]])
    np.testing.assert_allclose(np.asarray(mdl.per_example_loss(fb, tb, y, "cross_entropy", "binary")),
                               np.log1p(np.exp(-np.array([0.3, -2.0]))), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(mdl.correct(fb, tb, y, "binary")), [1.0, 0.0])


def test_checkpoint_schedule():
    cfg = _cfg(**{"metrics.checkpoints": 5})
    assert train.checkpoint_steps(cfg, 1000) == [0, 1, 6, 32, 178, 1000]
    cfg = _cfg(**{"metrics.checkpoints": 0})
    assert train.checkpoint_steps(cfg, 7) == [0, 7]
    # evenly spaced: N steps total / N apart, the last one included
    cfg = _cfg(**{"metrics.checkpoints": 5, "metrics.spacing": "linear"})
    assert train.checkpoint_steps(cfg, 1000) == [0, 200, 400, 600, 800, 1000]
    assert train.checkpoint_steps(cfg, 12) == [0, 2, 5, 7, 10, 12]  # 2.4, 4.8, 7.2, 9.6 rounded
    assert train.checkpoint_steps(cfg, 3) == [0, 1, 2, 3]  # fewer where they coincide
    assert train.checkpoint_steps(_cfg(**{"metrics.checkpoints": [3, 5], "metrics.spacing": "linear"}), 9) == [0, 3, 5, 9]
    ex = config.load_config(Path(__file__).resolve().parent.parent / "configs" / "paper_x1x2_linear.yaml").base
    assert train.checkpoint_steps(ex, train.total_steps(ex, 2000)) == list(range(0, 1601, 80))
    cfg = _cfg(**{"metrics.checkpoints": [3, 5, 5]})
    assert train.checkpoint_steps(cfg, 9) == [0, 3, 5, 9]
    with pytest.raises(config.DnfaInputError, match="beyond the run's last step 9"):
        train.checkpoint_steps(_cfg(**{"metrics.checkpoints": [10]}), 9)
    assert train.total_steps(_cfg(), 21) == 6
    assert train.total_steps(_cfg(**{"train.steps": 5, "train.epochs": None}), 21) == 5


def test_steps_budget_ends_mid_epoch():
    cfg = _cfg(**{"train.steps": 4, "train.epochs": None, "metrics.checkpoints": 0})
    out = train.train(cfg, data.make_dataset(cfg))
    assert [c["step"] for c in out.checkpoints] == [0, 4]
    assert out.checkpoints[-1]["epoch"] == pytest.approx(4 / 3)


def test_weights_that_overflow_before_a_checkpoint_are_diverged_not_failed(monkeypatch):
    """The losses are taken before each update, so the last update of a segment can blow up
    unseen; the checkpoint must catch it, for that run only."""
    cfgs = [_cfg(**{"seed": s, "train.epochs": 2, "metrics.checkpoints": 0}) for s in (0, 1)]
    dss = [data.make_dataset(c) for c in cfgs]
    real = train.epoch_fn
    calls = []

    def poisoned(state, X, *a, **k):
        st, L = real(state, X, *a, **k)
        calls.append(1)
        if len(calls) < 2:  # only the last epoch, whose losses were all taken before the blow-up
            return st, L
        # seed 1's data: its weights go NaN on the epoch's last update, its losses stay finite
        bad = jnp.isclose(X[..., 0, 0], dss[1].X_train[0, 0])
        leaves = [jnp.where(bad.reshape(bad.shape + (1,) * (w.ndim - bad.ndim)), jnp.nan, w) for w in jax.tree_util.tree_leaves(st.params)]
        return st._replace(params=jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(st.params), leaves)), L

    monkeypatch.setattr(train, "epoch_fn", poisoned)
    outs = train.train_batched(cfgs, dss)
    assert outs[0].status == "ok" and [c["step"] for c in outs[0].checkpoints] == [0, 6]
    assert outs[1].status == "diverged" and "non-finite by step 6" in outs[1].error
    assert [c["step"] for c in outs[1].checkpoints] == [0]


def test_a_run_failing_in_measurement_is_failed_alone_with_its_traceback(monkeypatch, tmp_path):
    from dnfa_cli import engine

    cfgs = [_cfg(**{"seed": s, "train.epochs": 1, "metrics.checkpoints": 0}) for s in (0, 1)]
    real = ms.measure

    def flaky(cfgs, *a, **k):
        if any(c.seed == 1 for c in cfgs) and a[4] > 0:  # a batch holding seed 1, after initialisation
            raise np.linalg.LinAlgError("SVD did not converge")
        return real(cfgs, *a, **k)

    monkeypatch.setattr(ms, "measure", flaky)
    res = engine.execute(cfgs, tmp_path)
    assert [r["status"] for r in res] == ["ok", "failed"]
    assert res[1]["error"].startswith("LinAlgError at step 3: SVD did not converge")
    assert "SVD did not converge" in (tmp_path / res[1]["run_id"] / "traceback.txt").read_text()
    assert not (tmp_path / res[0]["run_id"] / "traceback.txt").exists()


@pytest.mark.parametrize("save,want", [("ends", [0, 6]), ("all", [0, 1, 2, 6]), ("none", [])])
def test_save_matrices_writes_the_checkpoints_it_names(save, want, tmp_path):
    from dnfa_cli import engine

    cfg = _cfg(**{"metrics.checkpoints": [1, 2], "metrics.save_matrices": save})
    res = engine.execute([cfg], tmp_path)[0]
    assert [c["step"] for c in res["checkpoints"]] == [0, 1, 2, 6]
    files = sorted((tmp_path / cfg.run_id / "checkpoints").glob("matrices_*.npz"))
    assert [int(f.stem.split("_")[1]) for f in files] == want
    for f in files:
        z = np.load(f)
        assert sorted(z.files) == sorted(f"{m}_{i}" for m in ("nfm", "agop", "agop_half", "pgop") for i in (1, 2))
        assert all(z[k].dtype == np.float32 for k in z.files)
        # agop_half is the square root of agop (from the same eigendecomposition)
        half = z["agop_half_1"].astype(np.float64)
        np.testing.assert_allclose(half @ half, z["agop_1"], rtol=1e-4, atol=1e-5 * np.abs(z["agop_1"]).max())
    s = res["seconds"]
    assert len(s["metrics_per_checkpoint"]) == 4 and s["metrics"] == pytest.approx(sum(s["metrics_per_checkpoint"]))


def test_a_diverging_run_keeps_the_matrices_of_its_last_checkpoint(tmp_path):
    from dnfa_cli import engine

    cfg = _cfg(**{"model.activation": "identity", "train.lr": 5.0, "train.epochs": 30, "metrics.checkpoints": [1, 2]})
    res = engine.execute([cfg], tmp_path)[0]
    assert res["status"] == "diverged"
    last = res["checkpoints"][-1]["step"]
    assert 0 < last < 30 * 3  # measured after initialisation, diverged before the end
    files = sorted((tmp_path / cfg.run_id / "checkpoints").glob("matrices_*.npz"))
    assert [int(f.stem.split("_")[1]) for f in files] == sorted({0, last})


def _simulate(total, spe, n_ck, *, compile_s, per_call, per_step, first_ck, per_ck):
    """A run's timeline from a cost model: the Progress it would report, the truth left."""
    cks = train.checkpoint_steps(_cfg(**{"train.steps": total, "train.epochs": None, "metrics.checkpoints": n_ck}), total)
    calls = progress.call_sizes(cks, spe)
    assert sum(calls) == total
    p = progress.Progress(step=0, total=total, checkpoints=len(cks), calls=calls)
    events, step = [], 0
    p.checkpoint_seconds.append(first_ck)
    events.append((p.elapsed, p.eta()))
    for target in cks[1:]:
        while step < target:
            n = calls[len(p.train_calls)]
            p.train_calls.append((n, per_call + per_step * n + (compile_s if not p.train_calls else 0.0)))
            step += n
            p.step = step
            events.append((p.elapsed, p.eta()))
        p.checkpoint_seconds.append(per_ck)
        events.append((p.elapsed, p.eta()))
    end = p.elapsed
    return [(t, eta, end - t) for t, eta in events], end


@pytest.mark.parametrize("profile", [
    dict(compile_s=0.5, per_call=0.002, per_step=0.005, first_ck=3.0, per_ck=2.0),  # paper_x1x2-like
    dict(compile_s=0.3, per_call=0.0005, per_step=0.00003, first_ck=1.2, per_ck=0.01),  # quickstart-like
    dict(compile_s=1.0, per_call=0.001, per_step=0.02, first_ck=0.5, per_ck=0.1),  # training-bound
])
def test_the_eta_is_within_2x_of_the_truth_after_a_tenth_of_the_run(profile):
    events, end = _simulate(1600, 16, 10, **profile)
    late = [(t, eta, truth) for t, eta, truth in events if t >= 0.1 * end and truth > 0.01 * end]
    assert late
    for t, eta, truth in late:  # once the run has data beyond its one-time costs, eta is within 2x
        if eta is not None:
            assert truth / 2 <= eta <= 2 * truth, (t, eta, truth)
    # and it has one from the first event after a second checkpoint and a second call
    p_second = next(i for i, (t, eta, truth) in enumerate(events) if eta is not None)
    assert all(eta is not None for _, eta, _ in events[p_second:])


def test_the_random_w_factors_are_drawn_at_the_start_from_the_run_s_metrics_key():
    # dispatched when the Meter is made (before the first checkpoint), not waited for: the
    # factors must be those of the documented keys, bit for bit, drawn and waited for alone
    cfg = _cfg()
    ds = data.make_dataset(cfg)
    params0 = train.init_state(cfg, ds).params
    m = ms.Meter([cfg], [ds], [params0], spe=1, total=1, method="preact", arrays_of=lambda r: None)
    assert m.terms[0] is not None
    k = jax.random.fold_in(mdl.run_keys(cfg.seed)[2], 2)
    for l, p in enumerate(params0):
        want = jax.block_until_ready(bl.draw_terms(jax.random.fold_in(k, l), p["W"].shape))
        got = m.terms[0][l]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))


@pytest.mark.parametrize("small", [True, False])
def test_while_programs_load_only_a_small_run_draws_its_random_w_factors_at_its_first_checkpoint(small, monkeypatch):
    # a larger run's draws compute (1.4 s at width 1024) beside the loading of its first
    # checkpoint's programs: dispatched when the Meter is made, as without loaders
    monkeypatch.setattr(ms, "loading", lambda: True)
    monkeypatch.setattr(ms, "small_run", lambda cfg: small)
    cfg = _cfg()
    ds = data.make_dataset(cfg)
    params0 = train.init_state(cfg, ds).params
    m = ms.Meter([cfg], [ds], [params0], spe=1, total=1, method="preact", arrays_of=lambda r: None)
    assert (m._terms is None) == small
    assert len(m.terms[0]) == len(params0)


# ----------------------------------------------------------------------------- held checkpoints
def _run_dirs(cfgs, root, monkeypatch, *, loading, hold_bytes=None, events=None):
    """engine.execute of cfgs into root with programs.loading() replaced by `loading` (a
    function), and every run's directory read back: (results, {run: {file: content}})."""
    from dnfa_cli import engine

    monkeypatch.setattr(train, "loading", loading)
    monkeypatch.setattr(ms, "loading", loading)
    if hold_bytes is not None:
        monkeypatch.setattr(train, "HOLD_BYTES", hold_bytes)
    if events is not None:
        real_epoch, real_ck = train._Batch.epoch, ms.Meter.checkpoint
        monkeypatch.setattr(train._Batch, "epoch", lambda self, *a: events.append("train") or real_epoch(self, *a))
        monkeypatch.setattr(ms.Meter, "checkpoint", lambda self, p, step: events.append(step) or real_ck(self, p, step))
    res = engine.execute(cfgs, root)
    monkeypatch.undo()
    files = {}
    for r in res:
        d = root / r["run_id"]
        got = {"metrics.jsonl": (d / "metrics.jsonl").read_text()}
        for f in sorted((d / "checkpoints").glob("*.npz")):
            z = np.load(f)
            got[f.name] = {k: z[k] for k in z.files}
        files[r["run_id"]] = got
    return res, files


def _same_runs(a, b):
    (res_a, files_a), (res_b, files_b) = a, b
    keep = ("status", "error", "checkpoints", "run_id")
    assert [{k: r.get(k) for k in keep} for r in res_a] == [{k: r.get(k) for k in keep} for r in res_b]
    assert files_a.keys() == files_b.keys()
    for rid in files_a:
        fa, fb = files_a[rid], files_b[rid]
        assert fa.keys() == fb.keys() and fa["metrics.jsonl"] == fb["metrics.jsonl"]
        for name in fa:
            if name != "metrics.jsonl":
                assert fa[name].keys() == fb[name].keys()
                for k in fa[name]:
                    np.testing.assert_array_equal(fa[name][k], fb[name][k])


def _after(n):
    """A loading() that says True for its first n calls (the loaders then are done)."""
    calls = []
    return lambda: calls.append(1) is None and len(calls) <= n


def _ends_seed_1_at_step_2(monkeypatch):
    """all_finite says False for the second run at the third checkpoint (step 2): its weights
    "blew up unseen" there, and its losses after stay finite."""
    real, calls = ms.all_finite, []
    monkeypatch.setattr(ms, "all_finite", lambda p: calls.append(1) is None and len(calls) != 6 and real(p))


@pytest.mark.parametrize("case", ["batch", "one_diverges", "save_matrices_ends", "loaders_done_mid_run",
                                  "ended_at_a_held_checkpoint"])
def test_held_checkpoints_give_every_record_and_file_of_measuring_at_once(case, monkeypatch, tmp_path):
    over = {"train.epochs": 4, "metrics.checkpoints": [1, 2, 5], "metrics.save_matrices": "all"}
    if case == "one_diverges":  # a loss that goes non-finite mid-run, with checkpoints held before it
        over.update({"model.activation": "identity", "train.lr": 5.0, "train.epochs": 30})
    if case == "save_matrices_ends":
        over.update({"metrics.save_matrices": "ends", "model.activation": "identity", "train.lr": 5.0,
                     "train.epochs": 30})
    cfgs = [_cfg(**{"seed": s, **over}) for s in ((0,) if "diverges" in case or "ends" in case else (0, 1))]
    if case == "ended_at_a_held_checkpoint":
        _ends_seed_1_at_step_2(monkeypatch)
    now = _run_dirs(cfgs, tmp_path / "now", monkeypatch, loading=lambda: False)
    if case == "ended_at_a_held_checkpoint":
        _ends_seed_1_at_step_2(monkeypatch)
        assert now[0][1]["status"] == "diverged" and [c["step"] for c in now[0][1]["checkpoints"]] == [0, 1]
    events = []
    held = _run_dirs(cfgs, tmp_path / "held", monkeypatch, loading=_after(4) if case == "loaders_done_mid_run" else
                     (lambda: True), events=events)
    _same_runs(now, held)
    if case in ("one_diverges", "save_matrices_ends"):
        assert now[0][0]["status"] == "diverged"
    # the checkpoints were held: the first was measured only after training had begun
    assert events.index(0) > events.index("train")


def test_a_checkpoint_is_measured_at_once_when_the_held_ones_pass_hold_bytes(monkeypatch, tmp_path):
    cfgs = [_cfg(**{"train.epochs": 3, "metrics.checkpoints": [1, 2]})]
    events = []
    _run_dirs(cfgs, tmp_path, monkeypatch, loading=lambda: True, hold_bytes=0, events=events)
    assert [e for e in events if e != "train"] == [0, 1, 2, 9]
    assert events.index(0) < events.index("train")  # measured as it came: nothing held


def _failing_call(monkeypatch, n, exc=RuntimeError("device lost")):
    """The n-th training call of a run raises exc."""
    real, calls = train._Batch.epoch, []

    def epoch(self, *a):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(self, *a)

    monkeypatch.setattr(train._Batch, "epoch", epoch)


def _both(cfgs, tmp_path, monkeypatch, patch):
    """_run_dirs measuring at once and with every checkpoint held, `patch(monkeypatch)` made
    before each; the two compared (_same_runs). -> the held one's results."""
    got = []
    for name, loading in (("now", lambda: False), ("held", lambda: True)):
        patch(monkeypatch)
        got.append(_run_dirs(cfgs, tmp_path / name, monkeypatch, loading=loading))
    _same_runs(*got)
    return got[1][0]


def test_a_failing_training_call_writes_the_held_checkpoints_first(monkeypatch, tmp_path):
    res = _both([_cfg(**{"train.epochs": 4, "metrics.checkpoints": [1, 2, 5]})], tmp_path, monkeypatch,
                lambda mp: _failing_call(mp, 5, FloatingPointError("boom")))
    assert res[0]["status"] == "failed" and res[0]["error"].startswith("FloatingPointError: boom")
    assert [c["step"] for c in res[0]["checkpoints"]] == [0, 1, 2, 5]  # the 5th call (steps 5-6) fails


@pytest.mark.parametrize("loading", [lambda: False, lambda: True], ids=["at_once", "held"])
def test_each_checkpoint_line_names_the_step_it_was_measured_at(loading, monkeypatch, tmp_path):
    import io
    import re

    from dnfa_cli import cli, engine

    buf = io.StringIO()
    monkeypatch.setattr(cli, "err", cli._Console(file=buf, stderr=True, highlight=False, soft_wrap=True))
    monkeypatch.setattr(train, "loading", loading)
    monkeypatch.setattr(ms, "loading", loading)
    cfg = _cfg(**{"train.epochs": 4, "metrics.checkpoints": [1, 2, 5]})
    with cli._RunProgress() as show:
        res = engine.execute([cfg], tmp_path, on_progress=show)[0]
    steps = [c["step"] for c in res["checkpoints"]]
    said = [(int(k), int(s)) for k, s in re.findall(r"checkpoint (\d+)/\d+ measured at step (\d+)/", buf.getvalue())]
    assert said and all(steps[k - 1] == s for k, s in said), (said, steps)


def test_a_call_that_fails_after_a_held_checkpoint_ended_the_run_changes_nothing(monkeypatch, tmp_path):
    # measuring at once, the run stops at step 2 (its weights "non-finite" there): the
    # failing 4th call never comes
    def patch(mp):
        real, calls = ms.all_finite, []
        mp.setattr(ms, "all_finite", lambda p: calls.append(1) is None and len(calls) != 3 and real(p))
        _failing_call(mp, 4)

    res = _both([_cfg(**{"train.epochs": 4, "metrics.checkpoints": [1, 2, 5]})], tmp_path, monkeypatch, patch)
    assert res[0]["status"] == "diverged" and [c["step"] for c in res[0]["checkpoints"]] == [0, 1]


def test_an_error_outside_a_training_call_writes_the_held_checkpoints_first(monkeypatch, tmp_path):
    def patch(mp):
        real, calls = train._Batch.params, []

        def params(self, r):
            calls.append(1)
            if len(calls) == 7:  # the checkpoint at step 5 of a two-run batch
                raise MemoryError("RESOURCE_EXHAUSTED slicing")
            return real(self, r)

        mp.setattr(train._Batch, "params", params)

    res = _both([_cfg(**{"seed": s, "train.epochs": 4, "metrics.checkpoints": [1, 2, 5]}) for s in (0, 1)],
                tmp_path, monkeypatch, patch)
    assert [r["status"] for r in res] == ["failed"] * 2
    assert all([c["step"] for c in r["checkpoints"]] == [0, 1, 2] for r in res)


def test_random_w_draws_that_fail_fail_the_batch_as_when_drawn_at_the_start(monkeypatch, tmp_path):
    def patch(mp):
        def boom(*a, **k):
            raise MemoryError("RESOURCE_EXHAUSTED draws")

        mp.setattr(ms, "random_baselines", boom)

    res = _both([_cfg(**{"seed": s}) for s in (0, 1)], tmp_path, monkeypatch, patch)
    assert [r["error"] for r in res] == ["MemoryError: RESOURCE_EXHAUSTED draws"] * 2


def test_a_full_disk_at_a_held_checkpoint_is_the_error_not_a_later_failed_call(monkeypatch, tmp_path):
    import errno

    from dnfa_cli import runs

    def patch(mp):
        real = runs.RunWriter.checkpoint

        def checkpoint(self, rec, params):
            if rec["step"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, rec, params)

        mp.setattr(runs.RunWriter, "checkpoint", checkpoint)
        _failing_call(mp, 4)

    res = _both([_cfg(**{"train.epochs": 4, "metrics.checkpoints": [1, 2, 5]})], tmp_path, monkeypatch, patch)
    assert res[0]["status"] == "failed" and "No space left" in res[0]["error"]
    assert [c["step"] for c in res[0]["checkpoints"]] == [0, 1]
