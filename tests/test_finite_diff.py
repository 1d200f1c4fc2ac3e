"""The finite-difference engine equals the naive loop (perturb, run everything, restore)
to rounding, whichever path it takes: linear shortcuts, real forward passes, one process
or several."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnngrad.config import validate
from cnngrad.finite_diff import FiniteDifferences, propagate
from cnngrad.finite_diff import workers as fd_workers
from cnngrad.layers import Conv, Dense, Pool
from cnngrad.network import build
from cnngrad.refs import TensorRef
from cnngrad.strategies import configs


def assert_shortcut_equals_forward(layer, a, z, cache, rng):
    """forward_perturbed moves one channel per perturbation: the same as a real forward
    pass with the parameter changed, in that channel, and nothing else changes."""
    for name, P in layer.params.items():
        idx = np.arange(P.size)
        steps = rng.standard_normal(P.size)
        channel, values = layer.forward_perturbed(z, cache, name, idx, steps)
        for g, i in enumerate(idx):
            P.reshape(-1)[i] += steps[g]
            real, _ = layer.forward(a)
            P.reshape(-1)[i] -= steps[g]
            np.testing.assert_allclose(values[g], real[:, channel[g]], rtol=1e-12, atol=1e-12)
            others = np.delete(np.arange(z.shape[1]), channel[g])
            np.testing.assert_allclose(real[:, others], z[:, others], rtol=1e-12, atol=1e-12)


def naive_numeric(net, x, y, eps, array, idx, start=0):
    """Central differences the slow, obvious way: one entry at a time, the whole network
    (from layer ``start`` on, x being that layer's input)."""
    flat = array.reshape(-1)
    out = []
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        c_plus = net.cost(net.forward(x, start)[0], y)
        flat[i] = old - eps
        c_minus = net.cost(net.forward(x, start)[0], y)
        flat[i] = old
        out.append((c_plus - c_minus) / ((old + eps) - (old - eps)))
    return np.array(out)


def engine_and_naive(raw, eps=1e-6, **fd_options):
    problem = build(validate(raw))
    net, x, y = problem.net, problem.x.copy(), problem.y
    fd = FiniteDifferences(net, x, y, eps, **fd_options)
    targets = [(TensorRef.delta(0), np.arange(x.size))] + [
        (TensorRef.param(i, name), np.arange(P.size)) for i, layer in enumerate(net.layers)
        for name, P in layer.params.items()]
    got = fd.numeric(targets)
    want = [naive_numeric(net, x, y, eps, x if t.is_delta else net.layers[t.index].params[t.name], idx)
            for t, idx in targets]
    return got, want, fd


def assert_same_to_rounding(got, want, loss=1.0):
    for g, w in zip(got, want):
        ok = ~g.kinks
        # both are (C+ − C−)/2h; they differ only by how C was rounded: ~ε·|C|/h
        np.testing.assert_allclose(g.values[ok], w[ok], rtol=1e-6, atol=1e-8 * max(1.0, loss))


SMALL = dict(max_layers=3, max_size=7, max_batch=2)


@settings(max_examples=25)
@given(configs(**SMALL))
def test_engine_equals_the_naive_loop(raw):
    got, want, fd = engine_and_naive(raw)
    assert fd.fast_fallbacks == []  # the built-in shortcuts pass their spot checks
    assert_same_to_rounding(got, want, float(np.mean(np.abs(fd.c0))))  # blocks can make C large


@settings(max_examples=10)
@given(configs(**SMALL))
def test_engine_without_linear_shortcuts_equals_the_naive_loop(raw):
    with pytest.MonkeyPatch.context() as mp:
        for cls in (Conv, Dense):  # no linear shortcuts, and no windows: whole rows from the input on
            mp.setattr(cls, "offers", cls.offers - {"perturbed", "window"})
        mp.setattr(Pool, "offers", Pool.offers - {"region"})
        got, want, fd = engine_and_naive(raw)
    assert_same_to_rounding(got, want, float(np.mean(np.abs(fd.c0))))


@settings(max_examples=5)
@given(configs(**SMALL))
def test_worker_processes_give_the_same_numbers_bit_for_bit(raw):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fd_workers, "PARALLEL_WORK", 0)  # fork even for a tiny check
        one, _, _ = engine_and_naive(raw, workers=1, memory_budget=1 << 14)
        two, _, _ = engine_and_naive(raw, workers=2, memory_budget=1 << 14)
    for a, b in zip(one, two):
        assert np.array_equal(a.values, b.values) and np.array_equal(a.kinks, b.kinks)


def test_a_wrong_shortcut_is_caught_by_the_spot_check(monkeypatch):
    """A forward_perturbed that disagrees with forward is not trusted: the engine falls
    back to real forward passes and still gets the naive loop's numbers."""
    raw = {"input": {"batch": 2, "channels": 1, "height": 5, "width": 5}, "seed": 3,
           "layers": [{"conv": {"filters": 2, "kernel": 3}}, {"activation": "tanh"}, {"flatten": {}},
                      {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}
    original = Conv.forward_perturbed
    monkeypatch.setattr(Conv, "forward_perturbed",
                        lambda self, z, cache, name, idx, steps: original(self, z, cache, name, idx, 2 * steps))
    got, want, fd = engine_and_naive(raw)
    assert [f.split(":")[0] for f in fd.fast_fallbacks] == ["layers[0].W", "layers[0].b"]
    assert all("forward_perturbed disagrees" in f for f in fd.fast_fallbacks)
    assert_same_to_rounding(got, want)


@pytest.mark.parametrize("mode", ["correlation", "convolution"])
@pytest.mark.parametrize("bias", ["tied", "untied"])
def test_conv_shortcuts_equal_real_forward_passes(mode, bias):
    rng = np.random.default_rng(0)
    layer = Conv((2, 9, 8), rng, filters=3, kernel=[3, 2], stride=[2, 1], padding=[1, 2], dilation=[1, 2],
                 bias=bias, mode=mode)
    a = rng.standard_normal((2, 2, 9, 8))
    z, cache = layer.forward(a)
    assert_shortcut_equals_forward(layer, a, z, cache, rng)
    positions = np.arange(a[0].size)
    delta = rng.standard_normal((2, 9, 8))
    for c in range(2):
        moved = a.copy()
        moved[:, c] += delta
        np.testing.assert_allclose(layer.forward_input_delta(delta, c), layer.forward(moved)[0] - z,
                                   rtol=1e-11, atol=1e-11)
    # a change inside a window moves z only inside layer.window(...), by window_delta
    c, y0, x0 = np.unravel_index(positions, a.shape[1:])
    for h, w in ((1, 1), (2, 3)):
        y0c, x0c = np.minimum(y0, 9 - h), np.minimum(x0, 8 - w)
        delta = rng.standard_normal((len(positions), 2, h, w))
        i0, j0, wh, ww = layer.window(y0c, x0c, h, w)
        got = layer.window_delta(delta, y0c, x0c, i0, j0, wh, ww)
        for g in range(0, len(positions), 7):
            moved = a[:1].copy()
            moved[0, :, y0c[g]:y0c[g] + h, x0c[g]:x0c[g] + w] += delta[g]
            change = layer.forward(moved)[0][0] - z[0]
            inside = np.zeros(change.shape[1:], dtype=bool)
            inside[i0[g]:i0[g] + wh, j0[g]:j0[g] + ww] = True
            np.testing.assert_allclose(got[g], change[:, inside].reshape(change.shape[0], wh, ww),
                                       rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(change[:, ~inside], 0, atol=1e-12)  # nothing moves outside


def test_dense_shortcuts_equal_real_forward_passes():
    rng = np.random.default_rng(1)
    layer = Dense((7,), rng, units=4)
    a = rng.standard_normal((3, 7))
    z, cache = layer.forward(a)
    assert_shortcut_equals_forward(layer, a, z, cache, rng)
    delta = rng.standard_normal((3, 2))
    for units in (np.array([6, 1]), np.array([[6, 1], [0, 2], [3, 3]])):
        moved = a.copy()
        per_row = units if units.ndim == 2 else np.broadcast_to(units, (3, 2))
        np.add.at(moved, (np.arange(3)[:, None], per_row), delta)
        np.testing.assert_allclose(layer.forward_input_delta(delta, units), layer.forward(moved)[0] - z,
                                   rtol=1e-12, atol=1e-12)


def test_chunking_does_not_change_the_numbers():
    raw = {"input": {"batch": 3, "channels": 2, "height": 6, "width": 6}, "seed": 5,
           "layers": [{"conv": {"filters": 3, "kernel": 3, "padding": 1}}, {"activation": "softplus"},
                      {"pool": {"kind": "avg", "size": 2}}, {"flatten": {}}, {"dense": {"units": 4}}],
           "loss": "mse"}
    big, _, _ = engine_and_naive(raw, memory_budget=1 << 30)
    small, want, _ = engine_and_naive(raw, memory_budget=1 << 12)  # one entry per chunk
    for a, b in zip(big, small):
        np.testing.assert_allclose(a.values, b.values, rtol=1e-9, atol=1e-12)
    assert_same_to_rounding(small, want)


@pytest.mark.parametrize("layers", [
    [{"conv": {"filters": 3, "kernel": 3, "padding": 1}}, {"activation": "relu"},
     {"pool": {"kind": "max", "size": 3, "stride": 2}}, {"conv": {"filters": 2, "kernel": 3, "dilation": 2}}],
    [{"conv": {"filters": 2, "kernel": [3, 2], "stride": 2, "padding": [2, 1], "mode": "convolution",
               "bias": "untied"}}, {"activation": "softplus"}, {"pool": {"kind": "avg", "size": 2}}],
    [{"activation": "tanh"}, {"conv": {"filters": 2, "kernel": 5, "padding": 2, "bias": "none"}},
     {"activation": {"leaky_relu": 0.1}}, {"conv": {"filters": 2, "kernel": 3, "stride": [1, 2]}}],
])
def test_windows_on_large_maps_equal_the_naive_loop(layers):
    """On 16x16 maps an input entry reaches a small window: the engine carries just the
    window through the local layers (checked to be in use), with the naive loop's numbers."""
    raw = {"seed": 11, "input": {"batch": 2, "channels": 2, "height": 16, "width": 16},
           "layers": layers + [{"flatten": {}}, {"dense": {"units": 3}}], "loss": "softmax_cross_entropy"}
    problem = build(validate(raw))
    net, x, y = problem.net, problem.x, problem.y
    fd = FiniteDifferences(net, x, y, 1e-6, workers=1)
    assert propagate.local_end(fd, 0) >= 2
    targets = [(TensorRef.delta(l), np.arange(fd.inputs[l].size)) for l in (0, 1, 2)]
    got = fd.numeric(targets)
    assert fd.fast_fallbacks == []
    want = [naive_numeric(net, x, y, 1e-6, x, np.arange(x.size))]
    for l in (1, 2):  # δ at the input of layer l: perturb that input with the layers from l on
        a_l = fd.inputs[l].copy()
        want.append(naive_numeric(net, a_l, y, 1e-6, a_l, np.arange(a_l.size), start=l))
    assert_same_to_rounding(got, want)


@settings(max_examples=60)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 3), st.integers(1, 2), st.integers(4, 12),
       st.integers(1, 5), st.data())
def test_a_tight_window_holds_what_the_rows_change(k, s, p, d, size_in, h, data):
    """``window_after(…, tight=True)`` for one row: the outputs whose kernel reads any of rows
    [y0, y0 + h) (a plain loop over outputs and taps) lie inside it, and it is no larger than
    the window every row gets; without dilation it is exactly their span, clipped to the map."""
    from cnngrad import conv as C

    size = C.out_size(size_in, k, s, p, d)
    assume(size >= 1 and h <= size_in)
    y0 = data.draw(st.integers(0, size_in - h))
    read = [i for i in range(size) if any(y0 <= i * s + u * d - p < y0 + h for u in range(k))]
    i0, n = C.window_after(np.array([y0]), h, size, k, s, p, d, tight=True)
    _, uniform = C.window_after(np.array([y0]), h, size, k, s, p, d)
    assert n <= uniform and 0 <= i0[0] and i0[0] + n <= size
    assert all(i0[0] <= i < i0[0] + n for i in read)
    if d == 1 and read:
        assert n == max(1, read[-1] - read[0] + 1)


def test_input_entries_in_any_order_give_their_own_numbers():
    """The input's entries are chunked position by position (``planning.by_position``, for
    windows clipped to the map): asked in a shuffled order, a subset gets the numbers of the
    naive loop at those entries, in the order asked."""
    raw = {"seed": 3, "input": {"batch": 2, "channels": 2, "height": 12, "width": 12},
           "layers": [{"conv": {"filters": 3, "kernel": 3, "padding": 1}}, {"activation": "tanh"},
                      {"conv": {"filters": 2, "kernel": 3, "padding": 1}}, {"activation": "tanh"},
                      {"pool": {"kind": "avg", "size": 2}}, {"flatten": {}}, {"dense": {"units": 3}}],
           "loss": "softmax_cross_entropy"}
    problem = build(validate(raw))
    net, x, y = problem.net, problem.x, problem.y
    idx = np.random.default_rng(0).permutation(x.size)[:150]
    fd = FiniteDifferences(net, x, y, 1e-6, workers=1, memory_budget=1 << 16)  # many chunks
    got = fd.numeric([(TensorRef.delta(0), idx)])[0]
    assert np.array_equal(got.indices, idx)
    assert_same_to_rounding([got], [naive_numeric(net, x, y, 1e-6, x, idx)])
