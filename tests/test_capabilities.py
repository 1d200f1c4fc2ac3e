"""Declared capabilities, never assumed: what each layer declares, what a plugin exposes,
and that the engine leaves every shortcut a layer does not declare (its numbers stay the
plain central-difference loop's)."""
from __future__ import annotations

import numpy as np
import pytest

from cnngrad.config import validate
from cnngrad.finite_diff import FiniteDifferences, capabilities
from cnngrad.finite_diff.shortcuts import REQUIRES, SHORTCUTS, Capabilities
from cnngrad.layers import LAYERS, Activation, Conv, Dense, Flatten, Pool
from cnngrad.network import PluginLayer, build
from cnngrad.refs import TensorRef


def test_built_in_layers_declare_per_sample_complex_safe_and_their_shortcuts():
    want = {Conv: {"perturbed", "input_delta", "window"}, Dense: {"perturbed", "input_delta"},
            Activation: {"elementwise", "channelwise", "piece"}, Pool: {"channelwise", "region", "piece"},
            Flatten: {"reshape"}}
    # the modern layers (layers_modern, layers_norm) declare less: tests/test_layers13.py
    assert set(want) == {cls for cls in LAYERS.values() if cls.__module__ == "cnngrad.layers"}
    for cls, offers in want.items():
        assert cls.per_sample is True and cls.complex_safe is True
        assert cls.offers == offers and offers <= set(SHORTCUTS)
        assert all(callable(getattr(cls, m, None)) for s in offers for m in REQUIRES[s])


class Undeclared:
    def __init__(self, in_shape):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, a):
        return a, None

    def backward(self, delta, cache):
        return delta, {}


class Declared(Undeclared):
    per_sample = True
    complex_safe = True
    offers = frozenset({"elementwise"})  # a plugin's offer is not taken: it offers no shortcuts

    def kink_state(self, cache):
        return None


class Truthy(Undeclared):
    per_sample = 1  # only True declares
    complex_safe = "yes"


@pytest.mark.parametrize("cls, want", [
    (Undeclared, Capabilities()),
    (Declared, Capabilities(per_sample=True, complex_safe=True, kink_state=True)),
    (Truthy, Capabilities()),
])
def test_a_plugin_exposes_what_its_class_declares(cls, want):
    assert capabilities(PluginLayer(cls((2, 3, 3)), "layers[0]", (2, 3, 3))) == want


def test_an_unknown_shortcut_is_an_error_naming_the_known_ones():
    class Odd(Undeclared):
        offers = frozenset({"teleport"})
    with pytest.raises(ValueError, match="Odd.offers: unknown shortcuts \\['teleport'\\]; known: perturbed"):
        capabilities(Odd((1,)))


def test_an_offered_shortcut_must_be_implemented():
    class Liar(Undeclared):
        per_sample = True
        offers = frozenset({"window"})

        def window(self, y0, x0, h, w):
            return y0, x0, h, w
    with pytest.raises(ValueError, match=r"Liar.offers \['window'\] but does not implement \['window_delta'\]"):
        capabilities(Liar((1, 2, 2)))


def naive(net, x, y, eps, ref):
    """Central differences entry by entry, the whole batch, the whole network."""
    arr = x if ref.is_delta else net.layers[ref.index].params[ref.name]
    flat, out = arr.reshape(-1), []
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = net.cost(net.forward(x)[0], y)
        flat[i] = old - eps
        down = net.cost(net.forward(x)[0], y)
        flat[i] = old
        out.append((up - down) / ((old + eps) - (old - eps)))
    return np.array(out)


@pytest.mark.parametrize("cls", [Conv, Activation, Pool, Flatten, Dense])
def test_a_layer_that_does_not_declare_per_sample_gets_no_shortcut(monkeypatch, cls):
    """With one built-in class undeclared, the engine runs whole copies of the batch through it
    (and no shortcut relies on it), says so, and still gets the plain loop's numbers."""
    monkeypatch.setattr(cls, "per_sample", False)
    raw = {"seed": 2, "input": {"batch": 3, "channels": 2, "height": 10, "width": 10},
           "layers": [{"conv": {"filters": 2, "kernel": 3, "padding": 1}}, {"activation": "tanh"},
                      {"pool": {"kind": "avg", "size": 2}}, {"flatten": {}}, {"dense": {"units": 3}}],
           "loss": "softmax_cross_entropy"}
    p = build(validate(raw))
    x = p.x.copy()
    fd = FiniteDifferences(p.net, x, p.y, 1e-6, workers=1)
    refs = [TensorRef.delta(0)] + [TensorRef.param(l, n) for l in (0, 4) for n in ("W", "b")]
    got = fd.numeric([(ref, np.arange(naive(p.net, x, p.y, 1e-6, ref).size)) for ref in refs])
    index = [type(layer) for layer in p.net.layers].index(cls)
    assert any(note.startswith(f"layers[{index}] {cls.kind} does not declare per_sample") for note in fd.fast_fallbacks)
    for ref, num in zip(refs, got):
        np.testing.assert_allclose(num.values, naive(p.net, x, p.y, 1e-6, ref), rtol=1e-6, atol=1e-8,
                                   err_msg=str(ref))
