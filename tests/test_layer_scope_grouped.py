"""The layer scope's grouped input links (``layer_scope/grouped.py``) against a plain loop.

The oracle is the definition written out here: for every entry j of layer l's input,
``⟨δ^l, (z^l(a + h·e_j) − z^l(a − h·e_j)) / 2h⟩`` by two real forward passes of that layer,
and a kink crossed wherever either pass's kink state differs from the unperturbed one.
"""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad import check, layer_scope
from cnngrad.config import validate
from cnngrad.finite_diff import FiniteDifferences
from cnngrad.finite_diff.shortcuts import kink_state
from cnngrad.layer_scope.grouped import period
from cnngrad.network import build
from cnngrad.refs import TensorRef

NET = {
    "name": "grouped", "seed": 3, "dtype": "float64", "init": "he",
    "input": {"batch": 3, "channels": 2, "height": 13, "width": 11},
    "layers": [
        {"conv": {"filters": 3, "kernel": 3, "padding": 1}},                   # 3x13x11
        {"activation": "relu"},
        {"conv": {"filters": 4, "kernel": 3, "stride": 2, "padding": 2, "dilation": 2}},
        {"activation": "tanh"},
        {"pool": {"kind": "max", "size": 3, "stride": 2}},                     # overlapping windows
        {"conv": {"filters": 3, "kernel": [2, 1]}},
        {"pool": {"kind": "avg", "size": 2}},
        {"flatten": {}},
        {"dense": {"units": 5}},
    ],
    "loss": "softmax_cross_entropy",
    "check": {"eps": 1e-6, "samples": "all"},
}


def links(eps: float):
    p = build(validate(NET))
    net, x, y = p.net, p.x, p.y
    _, deltas, _, outputs = net.trace(x, y, {})
    fd = FiniteDifferences(net, x, y, eps, "central", workers=1)
    received = layer_scope.received_deltas(deltas, net.loss.gradient(outputs[-1], y))
    return layer_scope.LinkDifferences(fd, received), fd, received


def plain(fd, received, l: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    layer, a0, base = fd.net.layers[l], fd.inputs[l], fd.base_kinks[l]
    values, crossed = np.empty(a0.size), np.zeros(a0.size, dtype=bool)
    for j in range(a0.size):
        outs = []
        for sign in (1, -1):
            a = a0.copy()
            a.reshape(-1)[j] += sign * h
            out, cache = layer.forward(a)
            outs.append(out)
            state = kink_state(layer, fd.caps[l], cache) if base is not None else None
            crossed[j] |= state is not None and bool(np.any(state != base))
        values[j] = np.sum((outs[0] - outs[1]) * received[l]) / (2 * h)
    return values, crossed


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4, 5, 6, 7])
def test_grouped_input_links_equal_a_plain_loop(l):
    ld, fd, received = links(1e-6)
    assert ld.grouped_plan(l) is not None  # every layer here is grouped
    num = ld.numeric([(TensorRef.delta(l), np.arange(fd.inputs[l].size))])[0]
    truth, _ = plain(fd, received, l, 1e-6)
    ok = ~num.kinks
    assert ok.mean() > 0.9
    assert np.allclose(num.values[ok], truth[ok], rtol=1e-6, atol=1e-9 * np.abs(truth).max())


@pytest.mark.parametrize("l", [1, 4])
def test_grouped_kinks_are_the_entries_whose_own_passes_cross_one(l):
    """A step as large as the pre-activations: relu / max-pool entries cross kinks; the
    grouped pass flags exactly the entries whose own two passes cross one."""
    ld, fd, received = links(0.3)
    num = ld.numeric([(TensorRef.delta(l), np.arange(fd.inputs[l].size))])[0]
    _, crossed = plain(fd, received, l, 0.3)
    assert crossed.any() and not crossed.all()
    assert np.array_equal(num.kinks, crossed)


def test_a_wrong_forward_input_delta_is_not_used(monkeypatch):
    """A conv whose forward_input_delta disagrees with its forward: the spot check refuses
    the shortcut, the input is differenced another way and the check still passes."""
    from cnngrad.layers import Conv

    real = Conv.forward_input_delta
    monkeypatch.setattr(Conv, "forward_input_delta", lambda self, d, c: 2 * real(self, d, c))
    ld, fd, _ = links(1e-6)
    assert ld.grouped_plan(0) is None
    assert check(NET, scope="layer").passed


def test_period_keeps_windows_apart():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, width = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        starts = np.clip(np.arange(n) // int(rng.integers(1, 3)) - int(rng.integers(0, 3)), 0, max(0, n - width))
        p = period(starts, width)
        for i in range(n):
            for j in range(i + p, n, p):
                assert starts[j] - starts[i] >= width or starts[i] - starts[j] >= width


@pytest.mark.parametrize("method", ["central", "richardson", "forward"])
def test_link_directions_equal_a_plain_loop_and_the_backward(method):
    """``LinkDifferences.directional``, which runs a built-in linear layer's first step only
    (scaling it to the others) and a per-sample layer's steps stacked in one pass, against
    the definition written out: ⟨δ^l, Σ_m c_m·z^l(θ + o_m·h·v)⟩ by real passes of the layer,
    one per step, at the same (lifted) step — and against the layer's own backward, ⟨v, ∂C/∂θ⟩."""
    from cnngrad.finite_diff.methods import get_method

    p = build(validate(NET))
    net, x, y = p.net, p.x, p.y
    _, deltas, grads, outputs = net.trace(x, y, {})
    fd = FiniteDifferences(net, x, y, 1e-6, method, workers=1)
    received = layer_scope.received_deltas(deltas, net.loss.gradient(outputs[-1], y))
    ld = layer_scope.LinkDifferences(fd, received)
    rng = np.random.default_rng(5)
    offsets = np.asarray(get_method(method).offsets).real
    for l, layer in enumerate(net.layers):
        tensors = [(TensorRef.delta(l), fd.inputs[l], deltas[l])]
        tensors += [(TensorRef.param(l, name), P, grads[l][name]) for name, P in layer.params.items()]
        for ref, original, g in tensors:
            V = rng.uniform(-1, 1, (2, original.size))
            V /= np.linalg.norm(V, axis=1, keepdims=True)
            along, crossed = ld.directional(ref, V)
            assert not crossed.any(), ref
            h = 1e-6 * ld._lift(layer, original)
            z0 = layer.forward(fd.inputs[l])[0]
            for k, v in enumerate(V):
                sums = []
                for o in offsets:
                    moved = original + o * h * v.reshape(original.shape)
                    if ref.is_delta:
                        out = layer.forward(moved)[0]
                    else:
                        layer.params[ref.name] = moved
                        try:
                            out = layer.forward(fd.inputs[l])[0]
                        finally:
                            layer.params[ref.name] = original
                    sums.append(np.sum((out - z0) * received[l]))
                if method == "central":
                    want = (sums[0] - sums[1]) / (2 * h)
                elif method == "forward":
                    want = sums[0] / h
                else:  # Richardson: (4·D(h/2) − D(h)) / 3
                    want = (4 * (sums[2] - sums[3]) / h - (sums[0] - sums[1]) / (2 * h)) / 3
                scale = np.linalg.norm(g) * (1e-4 if method == "forward" else 1e-7)
                assert abs(along[k] - want) <= 1e-9 * abs(want) + 1e-3 * scale, (ref, method, along[k], want)
                assert abs(along[k] - v @ g.reshape(-1)) <= scale, (ref, method, along[k], v @ g.reshape(-1))


@pytest.mark.parametrize("l", [1, 4])
def test_link_directions_off_the_piece_flag_the_kinks_their_own_passes_cross(l):
    """A relu / max pool moved along its input with its ``piece`` shortcut withdrawn: every
    step of a direction runs in one pass of stacked copies of the batch, and a direction is
    flagged exactly where one of its own passes (the plain loop, a pass a step) crosses a kink."""
    import dataclasses

    p = build(validate(NET))
    net, x, y = p.net, p.x, p.y
    _, deltas, _, outputs = net.trace(x, y, {})
    fd = FiniteDifferences(net, x, y, 0.05, "central", workers=1)
    fd.caps[l] = dataclasses.replace(fd.caps[l], offers=fd.caps[l].offers - {"piece"})
    received = layer_scope.received_deltas(deltas, net.loss.gradient(outputs[-1], y))
    ld = layer_scope.LinkDifferences(fd, received)
    layer, a0, base = net.layers[l], fd.inputs[l], fd.base_kinks[l]
    V = np.random.default_rng(2).uniform(-1, 1, (24, a0.size)) * np.geomspace(1e-4, 30, 24)[:, None]
    _, crossed = ld.directional(TensorRef.delta(l), V)
    want = np.zeros(len(V), dtype=bool)
    for k, v in enumerate(V):
        for sign in (1, -1):
            cache = layer.forward(a0 + sign * 0.05 * v.reshape(a0.shape))[1]
            want[k] |= bool(np.any(kink_state(layer, fd.caps[l], cache) != base))
    assert want.any() and not want.all()
    assert np.array_equal(crossed, want)
