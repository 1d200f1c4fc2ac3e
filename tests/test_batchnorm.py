"""Layers that couple the samples of a batch (batch norm) and plugins with odd parameter
names: the verdicts against independent oracles — torch autograd for the layers' own
backward, a plain loop of central differences for the engine's numbers."""
from __future__ import annotations

import json
import shutil
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cnngrad.cli import main
from cnngrad.config import validate
from cnngrad.finite_diff import FiniteDifferences
from cnngrad.network import build
from cnngrad.refs import TensorRef
from cnngrad.strategies import configs

PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))
from batchnorm import BatchNorm  # noqa: E402
from oddnames import Gain  # noqa: E402


def run(*args: str):
    return CliRunner().invoke(main, ["check", *args])


def norm_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)))


# --------------------------------------------------------------------------- the layers, by torch


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4)])
def test_the_batchnorm_pair_against_torch(shape):
    """The correct plugin is batch norm (forward and backward = torch's autograd); the
    broken one has the right γ, β gradients and a wrong δ."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 2 + 0.5
    delta = rng.standard_normal(shape)
    right, wrong = BatchNorm(shape[1:], np.random.default_rng(1)), BatchNorm(shape[1:], np.random.default_rng(1),
                                                                           bug="constant_stats")
    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(right.params["gamma"], requires_grad=True)
    tb = torch.tensor(right.params["beta"], requires_grad=True)
    out = torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True, eps=1e-5)
    out.backward(torch.tensor(delta))
    want = {"input": tx.grad.numpy(), "gamma": tg.grad.numpy(), "beta": tb.grad.numpy()}
    for layer in (right, wrong):
        z, cache = layer.forward(x)
        np.testing.assert_allclose(z, out.detach().numpy(), rtol=1e-12, atol=1e-12)
        d_in, grads = layer.backward(delta, cache)
        for name in ("gamma", "beta"):
            np.testing.assert_allclose(grads[name], want[name], rtol=1e-10, atol=1e-12)
        if layer is right:
            np.testing.assert_allclose(d_in, want["input"], rtol=1e-9, atol=1e-12)
        else:
            assert norm_rel(d_in, want["input"]) > 1e-2


def test_gain_pair_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, delta = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    right, wrong = Gain((2, 4, 4), np.random.default_rng(3)), Gain((2, 4, 4), np.random.default_rng(3), bug="double")
    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(right.params["input"], requires_grad=True)
    (tx * tg[None, :, None, None]).backward(torch.tensor(delta))
    for layer, ok in ((right, True), (wrong, False)):
        d_in, grads = layer.backward(delta, layer.forward(x)[1])
        np.testing.assert_allclose(d_in, tx.grad.numpy(), rtol=1e-12)
        assert np.allclose(grads["input"], tg.grad.numpy(), rtol=1e-12) == ok


# --------------------------------------------------------------------------- cnngrad's verdicts


def test_a_correct_batchnorm_passes():
    result = run(str(PLUGINS / "batchnorm_null.yaml"), "--plugins")
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.stdout.splitlines() if "│ BatchNorm" in ln]
    assert len(rows) == 3 and all("PASS" in ln for ln in rows), rows  # δ input, gamma, beta
    assert "layers[1] BatchNorm does not declare per_sample" in result.stdout  # the summary says why


def test_the_classic_batchnorm_bug_fails_at_that_layer():
    result = run(str(PLUGINS / "batchnorm_constant_stats.yaml"), "--plugins")
    assert result.exit_code == 1, result.output
    assert any(ln.startswith("layer 1 (BatchNorm): backward is wrong") for ln in result.stdout.splitlines())
    bn = {ln.split("│")[3].strip(): ln for ln in result.stdout.splitlines() if "│ BatchNorm" in ln}
    assert "FAIL" in bn["δ input"] and "PASS" in bn["gamma"] and "PASS" in bn["beta"]


def test_a_parameter_named_input_is_a_parameter(tmp_path):
    """Its row is the parameter's (role param), beside the δ row of the same layer; the
    correct layer passes, and doubling ∂C/∂input fails exactly that row."""
    for bug, code in (("null", 0), ("double", 1)):
        cfg = tmp_path / f"gain_{bug}.yaml"
        cfg.write_text("input: {batch: 3, channels: 2, height: 5, width: 5}\nlayers:\n"
                       "  - conv: {filters: 3, kernel: 3}\n"
                       f"  - custom: {{class: \"oddnames:Gain\", bug: {bug}}}\n"
                       "  - flatten: {}\n  - dense: {units: 3}\nloss: softmax_cross_entropy\n")
        shutil.copy(PLUGINS / "oddnames.py", tmp_path / "oddnames.py")
        result = run(str(cfg), "--plugins", "--format", "json")
        assert result.exit_code == code, result.output
        data = json.loads(result.stdout)
        schema = (resources.files("cnngrad") / "schemas" / "report.schema.json").read_text(encoding="utf-8")
        jsonschema.validate(data, json.loads(schema))
        records = data["configs"][0]["records"]
        mine = {(r["tensor"], r["role"]): r["status"] for r in records if r["layer"] == 1}
        assert mine == {("input", "delta"): "pass", ("input", "param"): "pass" if code == 0 else "fail"}


def every_index_config(tmp_path: Path, plugin: str, bug: str, index: int) -> Path:
    """A small net with the plugin inserted at ``index`` (0 … 4)."""
    # no bias right before a train-mode batch norm: its gradient is exactly 0 in truth, which the
    # differences resolve only to rounding (the resolution floor, a matter for the verdict)
    layers = ["conv: {filters: 2, kernel: 3, bias: none}", "activation: tanh", "flatten: {}",
              "dense: {units: 3, bias: false}"]
    layers.insert(index, f"custom: {{class: \"{plugin}\", bug: {bug}}}")
    cfg = tmp_path / f"{plugin.replace(':', '_')}_{bug}_{index}.yaml"
    cfg.write_text("seed: 4\ninput: {batch: 3, channels: 2, height: 5, width: 5}\nlayers:\n"
                   + "".join(f"  - {ln}\n" for ln in layers) + "loss: softmax_cross_entropy\n")
    for module in ("batchnorm.py", "oddnames.py"):
        shutil.copy(PLUGINS / module, tmp_path / module)
    return cfg


@pytest.mark.parametrize("plugin, bug", [("batchnorm:BatchNorm", "constant_stats"), ("oddnames:Gain", "double")])
@pytest.mark.parametrize("index", range(5))
def test_directions_with_a_plugin_at_every_index(tmp_path, plugin, bug, index):
    """``--directions 2``: a correct plugin anywhere passes, a broken one fails; never a crash."""
    for b, code in (("null", 0), (bug, 1)):
        result = run(str(every_index_config(tmp_path, plugin, b, index)), "--plugins", "--directions", "2")
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception,
                                                                                            SystemExit)


# --------------------------------------------------------------------------- the engine, by a plain loop


def naive(net, x, y, eps: float, ref: TensorRef, method: str = "central") -> np.ndarray:
    """(C(θ + h) − C(θ − h)) / 2h entry by entry (``"forward"``: (C(θ + h) − C(θ)) / h), the
    whole batch through the whole network from the tensor's layer on."""
    a = x
    for layer in net.layers[:ref.index]:
        a = layer.forward(a)[0]
    start = ref.index
    arr = a.copy() if ref.is_delta else net.layers[ref.index].params[ref.name]
    flat, out = arr.reshape(-1), []
    for i in range(flat.size):
        old = flat[i]
        costs = []
        for step in ((eps, -eps) if method == "central" else (eps, 0.0)):
            flat[i] = old + step
            costs.append(net.cost(net.forward(arr if ref.is_delta else a, start)[0], y))
        flat[i] = old
        out.append((costs[0] - costs[1]) / ((old + eps) - (old - eps if method == "central" else old)))
    return np.array(out)


def naive_directional(net, x, y, eps: float, ref: TensorRef, V: np.ndarray) -> np.ndarray:
    a = x
    for layer in net.layers[:ref.index]:
        a = layer.forward(a)[0]
    out = []
    for v in V:
        costs = []
        for step in (eps, -eps):
            if ref.is_delta:
                costs.append(net.cost(net.forward(a + step * v.reshape(a.shape), ref.index)[0], y))
            else:
                P = net.layers[ref.index].params
                old = P[ref.name]
                P[ref.name] = old + step * v.reshape(old.shape)
                try:
                    costs.append(net.cost(net.forward(a, ref.index)[0], y))
                finally:
                    P[ref.name] = old
        out.append((costs[0] - costs[1]) / (2 * eps))
    return np.array(out)


BN = {"custom": {"class": "batchnorm:BatchNorm"}}
NETS = {
    # windows through conv and pooling, then whole copies of the batch from the batch norm on
    "conv-pool-bn": ({"batch": 3, "channels": 2, "height": 10, "width": 10},
                     [{"conv": {"filters": 3, "kernel": 3, "padding": 1, "bias": "none"}},
                      {"pool": {"kind": "avg", "size": 2}}, BN, {"activation": "tanh"},
                      {"conv": {"filters": 2, "kernel": 3}}, {"flatten": {}}, {"dense": {"units": 3}}]),
    "bn-first": ({"batch": 2, "channels": 2, "height": 4, "width": 4},
                 [BN, {"conv": {"filters": 2, "kernel": 3}}, {"activation": "softplus"}, {"flatten": {}},
                  {"dense": {"units": 3}}]),
    "dense-bn": ({"batch": 4, "channels": 1, "height": 3, "width": 3},
                 [{"flatten": {}}, {"dense": {"units": 5}}, BN, {"activation": "sigmoid"}, {"dense": {"units": 3}},
                  {"custom": {"class": "oddnames:Gain"}}]),
}


def plugin_problem(name: str, loss: str = "softmax_cross_entropy"):
    shape, layers = NETS[name]
    raw = {"seed": 7, "input": shape, "layers": layers, "loss": loss}
    return build(validate(raw, plugins=True, folder=PLUGINS))


def all_refs(net) -> list[TensorRef]:
    return [TensorRef.delta(l) for l in range(len(net.layers))] + [
        TensorRef.param(l, name) for l, layer in enumerate(net.layers) for name in layer.params]


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("name", list(NETS))
def test_engine_equals_the_naive_loop_with_a_batch_coupling_plugin(name, loss):
    p = plugin_problem(name, loss)
    net, x, y = p.net, p.x, p.y
    fd = FiniteDifferences(net, x, y, 1e-6, workers=1, memory_budget=1 << 15)  # several chunks
    refs = all_refs(net)
    got = fd.numeric([(ref, np.arange(naive(net, x, y, 1e-6, ref).size)) for ref in refs])
    for ref, num in zip(refs, got):
        want = naive(net, x, y, 1e-6, ref)
        assert not num.kinks.any()
        np.testing.assert_allclose(num.values, want, rtol=1e-6, atol=1e-8, err_msg=str(ref))


@pytest.mark.parametrize("name", list(NETS))
def test_directional_equals_the_naive_loop_with_a_batch_coupling_plugin(name):
    p = plugin_problem(name)
    net, x, y = p.net, p.x, p.y
    fd = FiniteDifferences(net, x, y, 1e-6, workers=1, memory_budget=1 << 12)  # one direction a batch
    rng = np.random.default_rng(0)
    for ref in all_refs(net):
        size = (fd.inputs[ref.index] if ref.is_delta else net.layers[ref.index].params[ref.name]).size
        V = rng.standard_normal((3, size))
        V /= np.linalg.norm(V, axis=1, keepdims=True)
        num, kinks = fd.directional(ref, V)
        assert not kinks.any()
        np.testing.assert_allclose(num, naive_directional(net, x, y, 1e-6, ref, V), rtol=1e-6, atol=1e-8,
                                   err_msg=str(ref))


def test_directions_are_chunked_by_the_memory_budget():
    """1000 directions of a large input never build one batch of 2·1000 copies: the layers
    see at most the budget's rows at a time, and the numbers do not depend on the chunks."""
    raw = {"seed": 1, "input": {"batch": 2, "channels": 1, "height": 8, "width": 8},
           "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                      {"dense": {"units": 3}}], "loss": "mse"}
    p = build(validate(raw))
    rows: list[int] = []
    dense = p.net.layers[3]
    forward = dense.forward
    dense.forward = lambda a: (rows.append(a.shape[0]), forward(a))[1]
    V = np.random.default_rng(0).standard_normal((1000, p.x.size))
    small = FiniteDifferences(p.net, p.x, p.y, 1e-6, memory_budget=1 << 16).directional(TensorRef.delta(0), V)
    assert 1 < max(rows[1:]) < 2 * 1000 * 2  # the first call is the unperturbed pass
    rows.clear()
    whole = FiniteDifferences(p.net, p.x, p.y, 1e-6, memory_budget=1 << 30)
    whole.slice_bytes = 1 << 30  # rows go through the layers a cache-sized slice at a time: here all at once
    big = whole.directional(TensorRef.delta(0), V)
    assert max(rows[1:]) == 2 * 1000 * 2
    # the same to rounding (a batch's size changes BLAS's order of summation: ε·|C|/h)
    np.testing.assert_allclose(small[0], big[0], rtol=1e-6, atol=1e-8)


def on_a_kink(net, x) -> bool:
    """Whether a unit of a built-in ReLU, leaky ReLU or max pooling sits exactly on its kink at
    x: z = 0, or a window whose maximum is tied (overlapping windows share their maximum, so a
    max pool after one ties often).  Along a direction those layers are held on the piece of
    x (README, "along a direction"), which is then one of two, and the plain loop's quotient
    is the true function's, across both: they need not agree."""
    a = x
    for layer in net.layers:
        kind, out = getattr(layer, "kind", ""), layer.forward(a)
        if kind == "activation" and layer.function in ("relu", "leaky_relu") and np.any(a == 0):
            return True
        if kind in ("pool", "global_pool") and getattr(layer, "pool", "") == "max":
            k, s = (getattr(layer, "k", a.shape[2:]), getattr(layer, "s", a.shape[2:]))
            win = np.lib.stride_tricks.sliding_window_view(a, tuple(k), axis=(2, 3))[:, :, ::s[0], ::s[1]]
            if np.any((win == win.max(axis=(-2, -1), keepdims=True)).sum(axis=(-2, -1)) > 1):
                return True
        a = out[0]
    return False


@settings(max_examples=15)
@given(configs(max_layers=3, max_size=6, max_batch=3), st.integers(0, 20), st.sampled_from(["central", "forward"]))
def test_engine_equals_the_naive_loop_with_batch_norm_anywhere(raw, where, method):
    """Random networks (relu and max pooling included) with a batch norm inserted anywhere:
    every entry of every tensor as the plain loop has it (kink crossings left out), and
    each tensor along two random directions."""
    raw = dict(raw, layers=list(raw["layers"]))
    raw["layers"].insert(where % (len(raw["layers"]) + 1), BN)
    p = build(validate(raw, plugins=True, folder=PLUGINS))
    net, x, y = p.net, p.x, p.y
    fd = FiniteDifferences(net, x, y, 1e-6, method, workers=1, memory_budget=1 << 14)
    refs = all_refs(net)
    got = fd.numeric([(ref, np.arange(naive(net, x, y, 1e-6, ref).size)) for ref in refs])
    rng = np.random.default_rng(0)
    # the two sum C in other orders (a batch of copies vs the batch): rounding's share of a
    # quotient is some ε·|C|/h, which a fixed atol ignores (hypothesis found 1.9e-8 between
    # them at an entry of −0.005, central differences through two add/concat blocks)
    noise = 64 * np.finfo(np.float64).eps * abs(float(net.cost(net.forward(x)[0], y))) / 1e-6
    for ref, num in zip(refs, got):
        want = naive(net, x, y, 1e-6, ref, method)
        if method == "forward":  # the same formula as the plain loop: equal to rounding (ε/h)
            np.testing.assert_allclose(num.values[~num.kinks], want[~num.kinks], rtol=1e-6, atol=1e-7 + noise,
                                       err_msg=str(ref))
            continue
        np.testing.assert_allclose(num.values[~num.kinks], want[~num.kinks], rtol=1e-6, atol=1e-8 + noise,
                                   err_msg=str(ref))
        if on_a_kink(net, x):  # directions hold ReLU and max pooling on their piece: a tie has two
            continue
        V = rng.standard_normal((2, want.size))
        along, kinks = fd.directional(ref, V)
        ok = ~kinks
        np.testing.assert_allclose(along[ok], naive_directional(net, x, y, 1e-6, ref, V)[ok], rtol=1e-6, atol=1e-8)
