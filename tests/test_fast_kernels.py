"""The fast paths of the conv, relu and max-pool layers against their loop references, in
every dtype a check runs them in (float64, float32, and complex128 for the complex step).

* ``conv.input_delta`` (the δ the conv layer passes down) — both of its ways, the folded-crop
  correlation and col2im — equals the cropped naive full convolution, for any stride,
  padding, dilation, kernel and channel counts;
* a whole ``Conv`` layer, grouped or not, forward and backward, equals the naive loops in
  float32 and complex128 too (the complex step runs the forward on complex arrays);
* relu's forward and backward (a multiply by the mask) equal ``where(Re z > 0, …)``, NaN
  and all; max pooling (in-place running max, a strided write per tap) equals a loop that
  branches on the real part, with the same argmax (``kink_state``) on ties.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnngrad import conv as C
from cnngrad import grouped as GC
from cnngrad import layers as L

TOL = {np.float64: 1e-12, np.complex128: 1e-12, np.float32: 2e-5}


def close(got: np.ndarray, want: np.ndarray, scale: float, dtype) -> None:
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, scale))


def draw(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    x = rng.uniform(-2, 2, shape)
    if dtype == np.complex128:
        x = x + 1j * rng.uniform(-2, 2, shape)
    return x.astype(dtype)


# --------------------------------------------------------------------------- conv.input_delta


@st.composite
def delta_cases(draw_: st.DrawFn):
    n, c, o = draw_(st.integers(1, 2)), draw_(st.integers(1, 4)), draw_(st.integers(1, 4))
    k = (draw_(st.integers(1, 4)), draw_(st.integers(1, 4)))
    d = (draw_(st.integers(1, 3)), draw_(st.integers(1, 3)))
    s = (draw_(st.integers(1, 3)), draw_(st.integers(1, 3)))
    p = (draw_(st.integers(0, 3)), draw_(st.integers(0, 3)))
    ext = (C.effective_kernel(k[0], d[0]), C.effective_kernel(k[1], d[1]))
    hw = tuple(draw_(st.integers(max(1, ext[i] - 2 * p[i]), max(1, ext[i] - 2 * p[i]) + 6)) for i in range(2))
    return n, c, o, k, s, p, d, hw, draw_(st.integers(0, 2**32 - 1))


def _input_delta_against_naive(n, c, o, k, s, p, d, hw, seed, dtype) -> None:
    rng = np.random.default_rng(seed)
    ho, wo = C.out_size(hw[0], k[0], s[0], p[0], d[0]), C.out_size(hw[1], k[1], s[1], p[1], d[1])
    W, G = draw(rng, (o, c) + k, dtype), draw(rng, (n, o, ho, wo), dtype)
    padded = (hw[0] + 2 * p[0], hw[1] + 2 * p[1])
    got = C.input_delta(G, W, hw, p, s, d)
    want = C.crop(C.full_convolve_naive(G, W, padded, s, d), p)
    assert got.shape == want.shape == (n, c) + hw
    assert got.dtype == np.result_type(G, W)
    close(got, want, float(np.max(C.full_convolve_naive(np.abs(G), np.abs(W), padded, s, d), initial=0.0)), dtype)


@given(delta_cases())
def test_input_delta_matches_the_cropped_naive_full_convolution(case):
    _input_delta_against_naive(*case, np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("c, o, k, s, p, d", [
    (3, 2, (3, 3), (1, 1), (1, 1), (1, 1)),  # stride 1: the folded-crop correlation (im2col)
    (4, 4, (3, 2), (1, 1), (2, 0), (2, 1)),  # the same, dilated, asymmetric padding
    (2, 3, (3, 3), (1, 1), (1, 1), (1, 1)),  # o > c: the same
    (3, 6, (3, 3), (1, 1), (1, 1), (1, 1)),  # δ deep enough (o·kw ≥ 15): correlate_rows
    (2, 8, (2, 3), (1, 1), (1, 2), (2, 1)),  # the same, dilated, asymmetric
    (3, 2, (3, 3), (2, 1), (1, 1), (1, 1)),  # a stride: col2im
    (3, 2, (1, 1), (1, 1), (1, 1), (1, 1)),  # p > extent − 1: col2im
])
def test_input_delta_each_way_each_dtype(c, o, k, s, p, d, dtype):
    _input_delta_against_naive(2, c, o, k, s, p, d, (7, 6), 5, dtype)


# --------------------------------------------------------------------------- the conv layer


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("c, f, groups, k, s, p, d, mode", [
    (3, 4, 1, 3, 1, 1, 1, "correlation"),
    (4, 2, 1, 3, 1, 1, 2, "convolution"),
    (2, 3, 1, [3, 2], [2, 1], [1, 0], 1, "correlation"),
    (4, 6, 2, 3, 1, 1, 1, "correlation"),
    (4, 4, 4, 3, 2, 1, 1, "convolution"),
])
def test_conv_layer_equals_the_loops_in_every_dtype(c, f, groups, k, s, p, d, mode, dtype):
    rng = np.random.default_rng(3)
    layer = L.Conv((c, 7, 6), rng, filters=f, kernel=k, stride=s, padding=p, dilation=d, mode=mode,
                   groups=groups, bias="tied", dtype=np.float64)
    for name, value in layer.params.items():
        layer.params[name] = draw(rng, value.shape, dtype)
    a = draw(rng, (2, c, 7, 6), dtype)
    z, cache = layer.forward(a)
    assert z.dtype == dtype
    K, kp = layer._kernel(), layer.k
    a_pad = C.pad(a, layer.p)
    want = GC.correlate_naive(a_pad, K, groups, layer.s, layer.d) + layer.params["b"][:, None, None]
    scale = float(np.max(GC.correlate_naive(np.abs(a_pad), np.abs(K), groups, layer.s, layer.d)))
    close(z, want, scale, dtype)
    G = draw(rng, z.shape, dtype)
    d_in, grads = layer.backward(G, cache)
    assert d_in.dtype == grads["W"].dtype == dtype
    full = GC.full_convolve_naive(G, K, groups, a_pad.shape[-2:], layer.s, layer.d)
    close(d_in, C.crop(full, layer.p), scale, dtype)
    nabla = GC.weight_grad_naive(a_pad, G, groups, kp, layer.s, layer.d)
    close(grads["W"], C.rot180(nabla) if mode == "convolution" else nabla, scale, dtype)
    close(grads["b"], G.sum(axis=(0, 2, 3)), scale, dtype)


# --------------------------------------------------------------------------- relu, max pool


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # −inf · 0, as where(…, 0·z) had it
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
def test_relu_is_the_masked_value_nan_and_all(dtype):
    rng = np.random.default_rng(4)
    z = draw(rng, (2, 3, 4, 5), dtype)
    z.flat[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-300]
    layer = L.Activation(z.shape[1:], rng, function="relu")
    a, cache = layer.forward(z)
    pos = z.real > 0
    want = np.where(pos, z, 0.0 * z)
    assert a.dtype == dtype
    np.testing.assert_array_equal(a, want)  # NaN where want has NaN
    G = draw(rng, z.shape, dtype)
    d, _ = layer.backward(G, cache)
    np.testing.assert_array_equal(d, np.where(pos, G, 0.0 * G))
    assert d.dtype == dtype
    np.testing.assert_array_equal(layer.kink_state(cache), pos)


def pool_loops(a: np.ndarray, k: tuple[int, int], s: tuple[int, int], delta: np.ndarray):
    """Max pooling by loops, branching on the real part; the first maximum (row-major) wins."""
    n, c, H, Wd = a.shape
    ho, wo = (H - k[0]) // s[0] + 1, (Wd - k[1]) // s[1] + 1
    z = np.zeros((n, c, ho, wo), dtype=a.dtype)
    arg = np.zeros((n, c, ho, wo), dtype=np.intp)
    g = np.zeros_like(a)
    for b, ch, i, j in np.ndindex(n, c, ho, wo):
        best = None
        for u in range(k[0]):
            for v in range(k[1]):
                x = a[b, ch, i * s[0] + u, j * s[1] + v]
                if best is None or x.real > best.real:
                    best, where = x, (u, v)
        z[b, ch, i, j], arg[b, ch, i, j] = best, where[0] * k[1] + where[1]
        g[b, ch, i * s[0] + where[0], j * s[1] + where[1]] += delta[b, ch, i, j]
    return z, arg, g


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("size, stride", [(2, 2), ([2, 3], [2, 3]), (3, 1), ([2, 2], [3, 1]), (1, 2)])
def test_max_pool_equals_the_loops_ties_and_all(size, stride, dtype):
    rng = np.random.default_rng(6)
    a = np.round(draw(rng, (2, 3, 7, 8), dtype) * 2) / 2  # coarse values: many ties
    layer = L.Pool((3, 7, 8), rng, kind="max", size=size, stride=stride)
    z, cache = layer.forward(a)
    delta = draw(rng, z.shape, dtype)
    want_z, want_arg, want_g = pool_loops(a, layer.k, layer.s, delta)
    np.testing.assert_array_equal(z, want_z)
    np.testing.assert_array_equal(layer.kink_state(cache), want_arg)
    g, _ = layer.backward(delta, cache)
    assert g.dtype == dtype
    close(g, want_g, float(np.max(np.abs(delta))), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("size, stride", [(2, 2), ([2, 3], [2, 3]), (3, 1), ([2, 2], [3, 1]), (1, 2)])
def test_max_pool_on_a_piece_reads_each_windows_stated_tap(size, stride, dtype):
    """forward_on_piece (one gather through the windows' flat positions) against a loop that
    reads tap ``state`` of every window; a strided (non-contiguous) input too."""
    rng = np.random.default_rng(7)
    a = draw(rng, (2, 3, 7, 8), dtype)
    layer = L.Pool((3, 7, 8), rng, kind="max", size=size, stride=stride)
    (kh, kw), (sh, sw) = layer.k, layer.s
    z, _ = layer.forward(a)
    state = rng.integers(0, kh * kw, size=z.shape).astype(np.uint8)
    want = np.zeros_like(z)
    for b, ch, i, j in np.ndindex(*z.shape):
        u, v = divmod(int(state[b, ch, i, j]), kw)
        want[b, ch, i, j] = a[b, ch, i * sh + u, j * sw + v]
    np.testing.assert_array_equal(layer.forward_on_piece(a, state), want)
    wide = np.zeros((2, 3, 7, 16), dtype=dtype)
    wide[..., ::2] = a  # the same values, every other column of a bigger array
    np.testing.assert_array_equal(layer.forward_on_piece(wide[..., ::2], state), want)


# --------------------------------------------------------------------------- conv.paste_at


@st.composite
def pastes(draw_: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x of shape (g, c, H, W), a patch (g, c, h, w) and its corners: inside, across a border,
    or off x altogether, mixed in one call."""
    g, c = draw_(st.integers(1, 6)), draw_(st.integers(1, 3))
    H, W, h, w = (draw_(st.integers(1, 7)) for _ in range(4))
    y0 = np.array(draw_(st.lists(st.integers(-h - 1, H + 1), min_size=g, max_size=g)))
    x0 = np.array(draw_(st.lists(st.integers(-w - 1, W + 1), min_size=g, max_size=g)))
    if draw_(st.booleans()):  # one corner for every row (a chunk at one position: paste_at's slice)
        y0, x0 = np.full(g, y0[0]), np.full(g, x0[0])
    rng = np.random.default_rng(draw_(st.integers(0, 2**16)))
    return rng.standard_normal((g, c, H, W)), rng.standard_normal((g, c, h, w)), y0, x0


@given(pastes())
def test_paste_at_writes_what_a_loop_writes(case):
    """``paste_at`` (one indexed write through a window view for patches wholly inside, masks
    for the rest) against the loop of its definition."""
    x, patch, y0, x0 = case
    want = x.copy()
    g, _, h, w = patch.shape
    for i in range(g):
        for a in range(h):
            for b in range(w):
                if 0 <= y0[i] + a < x.shape[2] and 0 <= x0[i] + b < x.shape[3]:
                    want[i, :, y0[i] + a, x0[i] + b] = patch[i, :, a, b]
    got = x.copy()
    C.paste_at(got, patch, y0, x0)
    assert np.array_equal(got, want)


@st.composite
def crops(draw_: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray]:
    """x of shape (N, c, H, W), windows h×w inside it at corners (y0, x0) for rows drawn from
    x's (repeats allowed): every row at one corner, or each at its own."""
    n, c, H, W = draw_(st.integers(1, 4)), draw_(st.integers(1, 3)), draw_(st.integers(1, 7)), draw_(st.integers(1, 7))
    h, w, g = draw_(st.integers(1, H)), draw_(st.integers(1, W)), draw_(st.integers(1, 8))
    y0 = np.array(draw_(st.lists(st.integers(0, H - h), min_size=g, max_size=g)))
    x0 = np.array(draw_(st.lists(st.integers(0, W - w), min_size=g, max_size=g)))
    if draw_(st.booleans()):
        y0, x0 = np.full(g, y0[0]), np.full(g, x0[0])
    rows = np.array(draw_(st.lists(st.integers(0, n - 1), min_size=g, max_size=g)))
    rng = np.random.default_rng(draw_(st.integers(0, 2**16)))
    return rng.standard_normal((n, c, H, W)), y0, x0, h, w, rows


@given(crops())
def test_crop_at_reads_what_a_loop_reads(case):
    """``crop_at`` (a slice and a take where every row has the same window, a gather through
    a window view otherwise) against slicing row by row; a copy, never a view of x."""
    x, y0, x0, h, w, rows = case
    want = np.stack([x[r, :, y:y + h, xx:xx + w] for r, y, xx in zip(rows, y0, x0)])
    got = C.crop_at(x, y0, x0, h, w, rows)
    assert np.array_equal(got, want) and not np.shares_memory(got, x)
    if np.array_equal(rows, np.arange(len(rows))):
        assert np.array_equal(C.crop_at(x, y0, x0, h, w), want)
