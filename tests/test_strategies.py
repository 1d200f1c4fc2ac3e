"""`cnngrad.strategies`: every drawn config validates, every case of the schema can be
drawn, ``kinds`` is honoured, unknown kinds are refused, numpy draws are reproducible."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import find, given
from hypothesis import strategies as st

from cnngrad.config import validate
from cnngrad.strategies import DTYPES, KINDS, configs, sample


def kinds_of(raw: dict) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in raw["layers"]]


def allowed(kinds: list[str]) -> set[str]:
    """What a net drawn from ``kinds`` may hold: those kinds, and the flatten dense needs."""
    return set(kinds) | ({"flatten"} if "dense" in kinds else set())


def features(raw: dict) -> set[str]:
    """Every schema case a raw config exercises, named (read from the raw dict, not from
    cnngrad's validator, so a drawn case is what the YAML says)."""
    f = {f"dtype:{raw.get('dtype', 'float64')}", f"loss:{raw.get('loss', 'mse')}",
         f"batch:{'1' if raw['input']['batch'] == 1 else 'many'}"}
    init = raw.get("init", "lecun")
    f.add(f"init:{next(iter(init)) if isinstance(init, dict) else init}")
    if kinds_of(raw)[-1] == "flatten":
        f.add("ends in flatten")
    for entry in raw["layers"]:
        kind, o = (entry, None) if isinstance(entry, str) else next(iter(entry.items()))
        f.add(kind)
        if kind == "conv":
            f |= {f"conv.bias:{o.get('bias', 'tied')}", f"conv.mode:{o.get('mode', 'correlation')}"}
            for key, default in (("stride", 1), ("padding", 0), ("dilation", 1)):
                v = o.get(key, default)
                if max(v if isinstance(v, list) else [v]) > default:
                    f.add(f"conv.{key}")
            f.add("conv.kernel:" + ("pair" if isinstance(o["kernel"], list) else "int"))
        elif kind == "pool":
            f.add(f"pool:{(o or {}).get('kind', 'max')}")
        elif kind == "dense":
            f.add(f"dense.bias:{o.get('bias', True)}")
        elif kind == "activation":
            name = o if isinstance(o, str) else next(iter(o))
            f.add(f"activation:{name}")
            if isinstance(o, dict) and o[name] is not None:
                f.add("activation:leaky_relu:slope")
    return f


EVERY_CASE = {
    "dtype:float64", "dtype:float32", "loss:mse", "loss:softmax_cross_entropy", "batch:1", "batch:many",
    "init:lecun", "init:he", "init:xavier", "init:normal",
    "conv", "conv.bias:tied", "conv.bias:untied", "conv.bias:none", "conv.mode:correlation",
    "conv.mode:convolution", "conv.stride", "conv.padding", "conv.dilation", "conv.kernel:pair", "conv.kernel:int",
    "pool", "pool:max", "pool:avg", "flatten", "dense", "dense.bias:True", "dense.bias:False", "activation",
    *(f"activation:{a}" for a in ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "identity")),
    "activation:leaky_relu:slope", "ends in flatten",
}


def test_numpy_draws_cover_every_case_of_the_schema_and_all_validate():
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for _ in range(600):
        raw = sample(rng, dtypes=DTYPES, min_dense=0)
        validate(raw)  # valid by construction: must not raise
        seen |= features(raw)
    assert EVERY_CASE - seen == set()


@pytest.mark.parametrize("case", ["dtype:float32", "activation:relu", "pool:max", "conv.bias:untied",
                                  "conv.mode:convolution", "activation:leaky_relu:slope", "loss:softmax_cross_entropy",
                                  "ends in flatten"])
def test_hypothesis_draws_reach_each_case(case):
    """The strategy (not only the numpy sampler) reaches the cases the benchmark needs."""
    raw = find(configs(dtypes=DTYPES, min_dense=0), lambda r: case in features(r))
    assert case in features(raw)
    validate(raw)


@given(st.data())
def test_every_drawn_config_validates_and_kinds_are_honoured(data):
    kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=len(KINDS), unique=True))
    raw = data.draw(configs(kinds=kinds, dtypes=DTYPES))
    validate(raw)
    assert set(kinds_of(raw)) <= allowed(kinds)


@pytest.mark.parametrize("kind", KINDS)
def test_a_single_kind_is_what_is_drawn(kind):
    """configs(kinds=['dense']) draws dense nets (it used to draw activation-only ones)."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        raw = sample(rng, kinds=[kind])
        validate(raw)
        drawn = kinds_of(raw)
        assert kind in drawn and set(drawn) <= allowed([kind]), drawn


def test_each_kind_of_a_mix_is_drawn():
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(100):
        seen |= set(kinds_of(sample(rng, kinds=["pool", "dense"])))
    assert seen == {"pool", "dense", "flatten"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kinds": ["custom"]}, "unknown 'custom'; custom layers are your own code, not drawn; "
                            "known: conv, pool, activation, block, flatten, dense"),
    ({"kinds": ["conv", "dence"]}, "unknown 'dence'; known: conv, pool, activation, block, flatten, dense"),
    ({"kinds": []}, "configs(kinds=...): empty; known: conv"),
    ({"activations": ["gelu"]}, "unknown 'gelu'; known: sigmoid, tanh, relu, leaky_relu, softplus, identity"),
    ({"dtypes": ["float16"]}, "unknown 'float16'; known: float64, float32"),
    ({"losses": ["hinge"]}, "unknown 'hinge'; known: mse, softmax_cross_entropy"),
    ({"kinds": ["conv", "pool"], "losses": ["softmax_cross_entropy"]}, "put 'flatten' or 'dense' in kinds"),
    ({"kinds": ["activation"], "activations": []}, "empty, but kinds has 'activation'"),
    ({"max_layers": 0}, "must be >= 1"),
    ({"min_dense": 3}, "0 <= min_dense <= max_dense"),
])
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError) as info:
        configs(**kwargs)  # when the strategy is made, not at the first draw
    assert message in str(info.value)
    with pytest.raises(ValueError):
        sample(np.random.default_rng(0), **kwargs)


def test_a_flat_net_ends_in_dense_unless_min_dense_is_0():
    """By default a flatten is followed by dense (a bare flatten before softmax can make a bias
    gradient zero in truth, which cnngrad fails today); min_dense=0 draws those nets too."""
    rng = np.random.default_rng(5)
    default = [kinds_of(sample(rng, dtypes=DTYPES)) for _ in range(300)]
    assert all("dense" in k for k in default if "flatten" in k)
    assert any(k[-1] == "flatten" for k in (kinds_of(sample(rng, min_dense=0)) for _ in range(100)))
    assert all(k == ["flatten"] for k in (kinds_of(sample(rng, kinds=["flatten"])) for _ in range(20)))


def test_mse_only_when_no_flat_layer_is_allowed():
    rng = np.random.default_rng(3)
    for _ in range(50):
        raw = sample(rng, kinds=["conv", "pool", "activation"])
        assert raw.get("loss", "mse") == "mse" and "flatten" not in kinds_of(raw)


def test_numpy_draws_are_reproducible():
    a = [sample(np.random.default_rng(7), dtypes=DTYPES) for _ in range(3)]
    b = [sample(np.random.default_rng(7), dtypes=DTYPES) for _ in range(3)]
    assert a == b
    rng1, rng2 = np.random.default_rng(7), np.random.default_rng(8)
    assert [sample(rng1) for _ in range(5)] != [sample(rng2) for _ in range(5)]


def test_sizes_stay_small():
    """Configs check fast: inputs within max_size a side, conv/pool outputs never grow past it."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        config = validate(sample(rng, max_size=6, max_batch=2))
        assert config.batch <= 2 and max(config.in_shape[1:]) <= 6
        for spec in config.layers:
            assert len(spec.out_shape) != 3 or max(spec.out_shape[1:]) <= 6, spec
