"""The zoo (tests/zoo/): hand-written buggy layers and their correct twins.

1. Each zoo layer against PyTorch autograd, on its own: every twin's forward and backward
   agree with torch's; every bug's forward agrees and its backward does not.  So a bug is a
   bug and a twin is right by an oracle that is not cnngrad.
2. cnngrad on each zoo config: a bug fails, localisation names its layer, and a stated
   diagnosis contains the family's phrase (a bug outside the catalogue, ``# expect: -``, gets
   ``no known pattern`` only); a twin passes.
3. ``--directions 4`` and ``--method complex`` give the default's verdict on every config.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from oracles import custom_layer, rel

from cnngrad.checker import check
from cnngrad.diagnose import NO_PATTERN

ROOT = Path(__file__).resolve().parent.parent
ZOO = sorted((ROOT / "tests" / "zoo").glob("*.yaml"))
BUGS = [p for p in ZOO if not p.stem.startswith("twin_")]
TWINS = [p for p in ZOO if p.stem.startswith("twin_")]

_spec = importlib.util.spec_from_file_location("zoo_bench", ROOT / "benchmarks" / "zoo.py")
zoo_bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("zoo_bench", zoo_bench)  # dataclasses look their module up there
_spec.loader.exec_module(zoo_bench)


def test_the_zoo_is_big_enough():
    assert len(BUGS) >= 25 and len(TWINS) >= 5
    phrases = [zoo_bench.expectations(p)["expect"] for p in BUGS]
    assert sum(p != "-" for p in phrases) >= 25


def zoo_layer(path: Path):
    """The zoo plugin in the config (the user's own object) and its input shape."""
    layer, in_shape = custom_layer(path)
    return layer.layer, in_shape


def torch_grads(layer, x: np.ndarray, delta: np.ndarray):
    """The layer's maths in torch (independent of the zoo code): out, ∂/∂x and ∂/∂params."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xt = torch.tensor(x, requires_grad=True)
    ps = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
    name = type(layer).__name__
    if name == "ZooConv":
        out = F.conv2d(xt, ps["W"], ps["b"], stride=layer.s, padding=layer.p, dilation=layer.d)
    elif name == "ZooDense":
        out = F.linear(xt, ps["W"], ps["b"])
    elif name == "ZooPool":
        pool = F.avg_pool2d if layer.kind == "avg" else F.max_pool2d
        out = pool(xt, layer.k, layer.s)
    else:
        out = {"sigmoid": torch.sigmoid, "tanh": torch.tanh,
               "leaky_relu": lambda t: F.leaky_relu(t, layer.alpha)}[layer.function](xt)
    grads = torch.autograd.grad(out, [xt, *ps.values()], torch.tensor(delta))
    return out.detach().numpy(), {"input": grads[0].numpy(), **{k: g.numpy() for k, g in zip(ps, grads[1:])}}


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_each_zoo_layer_against_torch(path):
    pytest.importorskip("torch")
    layer, in_shape = zoo_layer(path)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3,) + tuple(in_shape))
    out, cache = layer.forward(x)
    delta = rng.standard_normal(out.shape)
    d_in, grads = layer.backward(delta, cache)
    t_out, t_grads = torch_grads(layer, x, delta)
    assert rel(out, t_out) < 1e-12  # the forward is right in the bugs too: only backward is broken
    errors = {"input": rel(d_in, t_grads["input"]), **{k: rel(g, t_grads[k]) for k, g in grads.items()}}
    if path.stem.startswith("twin_"):
        assert max(errors.values()) < 1e-12, errors
    else:
        assert max(errors.values()) > 1e-6, errors  # wrong by torch, beyond any tolerance


@pytest.mark.parametrize("path", BUGS, ids=lambda p: p.stem)
def test_each_bug_is_caught_located_and_never_misdiagnosed(path):
    o = zoo_bench.run(path)
    assert o.caught and o.located, (o.localisation, o.diagnoses)
    assert not o.wrong, o.diagnoses
    assert o.right, o.diagnoses
    if zoo_bench.expectations(path)["expect"] == "-":
        assert all(d.startswith(NO_PATTERN) for d in o.diagnoses)


@pytest.mark.parametrize("path", TWINS, ids=lambda p: p.stem)
def test_each_twin_passes(path):
    assert check(str(path), plugins=True).return_code == 0


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_directions_and_the_complex_step_agree_with_the_default(path):
    default = check(str(path), plugins=True).return_code
    assert check(str(path), plugins=True, directions=4).return_code == default
    assert check(str(path), plugins=True, method="complex").return_code == default
