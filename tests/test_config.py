"""Config validation, overrides, run ids and sweep expansion."""
from pathlib import Path

import pytest
import yaml

from dnfa_cli import config

ROOT = Path(__file__).resolve().parent.parent


def _err(raw, src="c.yaml"):
    with pytest.raises(config.ConfigError) as e:
        config.validate(raw, src)
    return str(e.value)


@pytest.mark.parametrize("raw,msg", [
    ({"model": {"width": 0}}, "c.yaml: model.width = 0: must be greater than or equal to 1"),
    ({"model": {"width": -3}}, "c.yaml: model.width = -3: must be greater than or equal to 1"),
    ({"train": {"lr": 0}}, "c.yaml: train.lr = 0: must be greater than 0"),
    ({"train": {"lr": -0.1}}, "c.yaml: train.lr = -0.1: must be greater than 0"),
    ({"train": {"lr": "fast"}}, "c.yaml: train.lr = 'fast': must be a valid number"),
    ({"model": {"widht": 3}}, "c.yaml: model.widht: unknown key (allowed in model: depth, width, widths, activation, bias, init, init_scale, init_from, tied_init)"),
    ({"bogus": 1}, "c.yaml: bogus: unknown key (allowed at top level: name, seed, data, model, train, metrics)"),
    ({"model": {"activation": "sigmoid"}}, "c.yaml: model.activation = 'sigmoid': must be one of 'relu', 'gelu', 'tanh', 'silu', 'quadratic' or 'identity'"),
    ({"data": {"task": "imagenet"}}, "c.yaml: data.task = 'imagenet': unknown task (allowed: monomial, multi_index, linear, sparse_parity, modular, mnist1d, mnist, npz)"),
    ({"train": {"optimizer": "rmsprop"}}, "c.yaml: train.optimizer = 'rmsprop': must be one of 'sgd', 'adam' or 'adamw'"),
    ({"train": {"loss": "hinge"}}, "c.yaml: train.loss = 'hinge': must be one of 'mse' or 'cross_entropy'"),
    ({"data": {"task": "modular", "d": 3}}, "c.yaml: data.d: unknown key (allowed for task modular: seed, task, p, op, train_frac)"),
    ({"model": {"widths": [3, -4]}}, "c.yaml: model.widths[1] = -4: must be greater than or equal to 1"),
    ({"model": {"widths": [3], "width": 4}}, "c.yaml: model: widths conflicts with width"),
    ({"train": {"epochs": 3, "steps": 4}}, "c.yaml: train: give epochs or steps, not both"),
    ({"train": {"optimizer": "adam", "momentum": 0.9}}, "c.yaml: train: momentum applies to optimizer sgd only"),
    ({"data": {"task": "npz", "path": "/nonexistent/x.npz"}}, "c.yaml: data.path = '/nonexistent/x.npz': no such file"),
    ({"data": {"coords": [0, 100]}}, "c.yaml: data: coords [100] out of range for d = 100"),
    ({"model": {"bias": "maybe"}}, "c.yaml: model.bias = 'maybe': must be a valid boolean"),
    ({"name": "a..b"}, "c.yaml: name: must not contain '..'"),
    ({"data": {"task": "npz", "path": "/"}}, "c.yaml: data.path = '/': not a readable file"),
    ({"metrics": {"bootstrap": 5000}}, "c.yaml: metrics.bootstrap = 5000: must be less than or equal to 1000"),
    ({"model": {"depth": 2}, "train": {"freeze": [2, 4]}},
     "c.yaml: train.freeze = [2, 4]: layer 4 does not exist: the net has 3 layers (1..3, 3 the read-out)"),
    ({"train": {"freeze": [0]}}, "c.yaml: train.freeze[0] = 0: must be greater than or equal to 1"),
    ({"train": {"freeze": [2, 2]}}, "c.yaml: train.freeze: layer 2 is listed twice"),
])
def test_bad_values_name_file_key_value_and_what_is_allowed(raw, msg):
    assert _err(raw).startswith(msg)
    assert "\n" not in _err(raw)


def test_defaults_are_filled_and_resolved():
    cfg = config.validate({})
    d = cfg.to_dict()
    assert d["model"] == {"depth": 3, "width": 1024, "widths": None, "activation": "relu", "bias": False,
                          "init": "gaussian", "init_scale": 1.0, "init_from": None,
                          "tied_init": False}
    assert d["data"]["task"] == "monomial" and d["data"]["d"] == 100 and d["data"]["coords"] == [0, 1]
    assert d["train"]["epochs"] == 100 and d["train"]["steps"] is None
    assert cfg.model.hidden() == [1024] * 3
    assert config.validate({"model": {"widths": [5, 7]}}).model.hidden() == [5, 7]
    # the resolved config is a fixed point: re-validating it changes nothing
    assert config.validate(d) == cfg


def test_run_id_is_content_addressed():
    a = config.validate({"name": "x", "model": {"width": 8, "depth": 2}, "train": {"lr": 0.1}})
    b = config.validate({"train": {"lr": 1e-1}, "model": {"depth": 2, "width": 8}, "name": "x"})
    c = config.validate({"name": "x", "model": {"width": 9, "depth": 2}})
    assert a.run_id == b.run_id
    assert a.run_id != c.run_id
    assert a.run_id.startswith("x-") and len(a.run_id) == len("x-") + 10
    # explicit defaults are the same run as omitted ones
    assert config.validate({"name": "x", "model": {"width": 8, "depth": 2, "activation": "relu"}}).run_id == a.run_id


def test_keys_added_later_keep_old_run_ids_at_their_default():
    """Keys added after schema 1 (metrics.save_matrices, published, swap, save_weights, spacing, ...) are left out of the
    hash at their defaults, so every run finished before they existed keeps its id."""
    import hashlib
    import json

    cfg = config.validate({"name": "x", "model": {"width": 8}})
    d = cfg.to_dict()
    for k in ("save_matrices", "published", "swap", "swap_uv", "save_weights", "spacing"):
        del d["metrics"][k]
    del d["train"]["freeze"]
    del d["model"]["init_from"]
    del d["model"]["tied_init"]
    payload = json.dumps({"schema": 1, "config": d}, sort_keys=True, separators=(",", ":"))
    assert cfg.run_id == "x-" + hashlib.sha256(payload.encode()).hexdigest()[:10]
    for k, v in (("save_matrices", "all"), ("published", "ends"), ("swap", "all"), ("swap_uv", "ends"),
                 ("save_weights", "ends"), ("spacing", "linear")):
        assert config.validate({"name": "x", "model": {"width": 8}, "metrics": {k: v}}).run_id != cfg.run_id
    frozen = config.validate({"name": "x", "model": {"width": 8}, "train": {"freeze": [4, 1]}})
    assert frozen.run_id != cfg.run_id and frozen.train.freeze == [1, 4]  # one order, one id
    assert frozen.run_id == config.validate({"name": "x", "model": {"width": 8}, "train": {"freeze": [1, 4]}}).run_id
    assert config.validate({"name": "x", "model": {"width": 8}, "metrics": {"spacing": "log"}}).run_id == cfg.run_id


def test_the_published_configs_keep_their_run_ids():
    """The ids the README and FINDINGS cite, and that finished runs on disk carry: a new
    config key at its default changes none of them."""
    ids = {"quickstart.yaml": "quickstart-4b22040aff", "paper_x1x2.yaml": "paper_x1x2-7c8c78905a"}
    for name, rid in ids.items():
        assert config.load_config(ROOT / "configs" / name).base.run_id == rid


def test_files_and_overrides(tmp_path):
    p = tmp_path / "my-exp.yaml"
    p.write_text("model: {width: 8, depth: 1}\n")
    cf = config.load_config(p, ["model.width=16", "train.lr=0.5", "data.task=modular", "data.p=11"])
    assert cf.base.name == "my-exp"  # default name: the file stem made id-safe
    (tmp_path / "a b.yaml").write_text("model: {width: 8}\n")
    assert config.load_config(tmp_path / "a b.yaml").base.name == "a_b"
    assert cf.base.model.width == 16 and cf.base.train.lr == 0.5 and cf.base.data.p == 11
    with pytest.raises(config.ConfigError, match=r"my-exp.yaml: --set model.widht: no such config key \(did you mean model.width\?\)"):
        config.load_config(p, ["model.widht=3"])
    with pytest.raises(config.ConfigError, match="expected KEY=VALUE"):
        config.load_config(p, ["model.width"])
    with pytest.raises(config.ConfigError, match="my-exp.yaml: --set data.p: no such config key"):
        config.load_config(p, ["data.p=3"])  # p belongs to task modular, not monomial
    with pytest.raises(config.ConfigError, match="model.width = -1: must be greater than or equal to 1"):
        config.load_config(p, ["model.width=-1"])


@pytest.mark.parametrize("text,msg", [
    ("", "empty file"),
    ("model: {width: 8\n", "broken YAML at line 2"),
    ("- 1\n- 2\n", "expected a mapping of config keys at top level, got list"),
    ("model: 3\n", "model: must be a mapping of keys, got 3"),
    ("x: !!python/object:os.system ls\n", "broken YAML"),  # safe_load refuses python tags
])
def test_bad_files(tmp_path, text, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=msg):
        config.load_config(p)
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load_config(tmp_path / "missing.yaml")


def _sweep(tmp_path, sweep, base="model: {width: 8, depth: 1}\n"):
    p = tmp_path / "s.yaml"
    p.write_text(base + yaml.safe_dump({"sweep": sweep}))
    return config.load_config(p).expand()


def test_grid_and_random_sweeps(tmp_path):
    runs = _sweep(tmp_path, {"method": "grid", "parameters": {
        "model.activation": {"values": ["relu", "tanh", "gelu"]}, "seed": {"values": [0, 1]}, "train.lr": {"value": 0.2}}})
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert {(r.model.activation, r.seed) for r in runs} == {(a, s) for a in ("relu", "tanh", "gelu") for s in (0, 1)}
    assert all(r.train.lr == 0.2 for r in runs)
    spec = {"method": "random", "count": 20, "seed": 4, "parameters": {
        "train.lr": {"distribution": "log_uniform", "min": 1e-3, "max": 1e-1},
        "model.width": {"distribution": "int_uniform", "min": 4, "max": 9},
        "model.init_scale": {"distribution": "uniform", "min": 0.5, "max": 2.0},
        "model.activation": {"values": ["relu", "tanh"]}}}
    runs = _sweep(tmp_path, spec)
    assert len(runs) == 20
    assert all(1e-3 <= r.train.lr <= 1e-1 and 4 <= r.model.width <= 9 and 0.5 <= r.model.init_scale <= 2 for r in runs)
    assert len({r.model.width for r in runs}) > 2
    assert [r.run_id for r in _sweep(tmp_path, spec)] == [r.run_id for r in runs]  # its own seed: reproducible
    # sweeping the task: keys of each task are accepted
    runs = _sweep(tmp_path, {"parameters": {"data.task": {"values": ["monomial", "mnist1d"]}}}, base="train: {batch_size: 8}\n")
    assert [r.data.task for r in runs] == ["monomial", "mnist1d"]


@pytest.mark.parametrize("sweep,msg", [
    ({"parameters": {"model.widht": {"values": [1]}}}, "s.yaml: sweep.parameters.model.widht: no such config key (did you mean model.width?)"),
    ({"parameters": {"model.width": {"values": []}}}, "s.yaml: sweep.parameters.model.width.values: must be a non-empty list"),
    ({"method": "random", "parameters": {"seed": {"values": [1]}}}, "s.yaml: sweep.count: method random needs count"),
    ({"method": "random", "count": 2, "parameters": {"train.lr": {"distribution": "uniform", "min": 2, "max": 1}}},
     "s.yaml: sweep.parameters.train.lr: min = 2 exceeds max = 1"),
    ({"method": "bayes", "parameters": {"seed": {"values": [1]}}}, "s.yaml: sweep.method = 'bayes': must be grid or random"),
    ({"parameters": {"model.width": {"values": [4, -1]}}}, "model.width = -1: must be greater than or equal to 1"),
    ({"parameters": {}}, "s.yaml: sweep.parameters: must be a non-empty mapping"),
])
def test_bad_sweeps(tmp_path, sweep, msg):
    with pytest.raises(config.ConfigError) as e:
        _sweep(tmp_path, sweep)
    assert msg in str(e.value)
