"""The convolution primitives of `cnngrad.conv` and the built-in layers of `cnngrad.layers`.

* every fast primitive equals its naive loop reference (to ~1e-12);
* the adjoint identity ties forward, input gradient and weight gradient together;
* the input gradient is the seed's rotated-kernel step, "full convolution of δ with W",
  checked against an explicit pad + ROT180 correlation and against ``np.convolve``;
* each layer's backward against brute-force central differences or a naive loop;
* small exact examples of ``dilate``, ``pad``, ``crop``, ``rot180``, ``windows``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracles import central

from cnngrad import conv as C
from cnngrad import layers as L

TOL = 1e-12  # fast vs naive, adjoint identity
FD_TOL = 1e-7  # layer backward vs central differences
FD_EPS = 1e-3  # conv/dense/flatten are linear in each entry: central differences exact up to rounding

# bounded elements; no subnormals so that nothing underflows into noise
ELEMENTS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def f64(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, shape, elements=ELEMENTS)


# --------------------------------------------------------------------------- strategies


@dataclass
class Case:
    """One valid conv case: ``x`` is the (already padded) input, ``W`` the kernel,
    ``G`` an upstream gradient of z's shape; ``p`` a padding for layer-level tests."""

    x: np.ndarray
    W: np.ndarray
    G: np.ndarray
    k: C.Pair
    s: C.Pair
    d: C.Pair
    p: C.Pair

    @property
    def out_hw(self) -> tuple[int, int]:
        H, Wd = self.x.shape[-2:]
        return (C.out_size(H, self.k[0], self.s[0], 0, self.d[0]), C.out_size(Wd, self.k[1], self.s[1], 0, self.d[1]))


@st.composite
def conv_cases(draw: st.DrawFn, max_hw: int = 12) -> Case:
    """A conv case valid by construction: n, c, o, kernel, dilation, stride, then an input
    at least as large as the dilated kernel's extent ``d(k−1)+1`` (so Ho, Wo ≥ 1)."""
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    eh, ew = C.effective_kernel(kh, dh), C.effective_kernel(kw, dw)
    H = draw(st.integers(eh, max(eh, max_hw)))
    Wd = draw(st.integers(ew, max(ew, max_hw)))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    Ho, Wo = (H - eh) // sh + 1, (Wd - ew) // sw + 1
    x = draw(f64((n, c, H, Wd)))
    W = draw(f64((o, c, kh, kw)))
    G = draw(f64((n, o, Ho, Wo)))
    # rows/columns of x the stride never reaches (full_convolve must zero-fill them)
    note(f"untiled rows={H - ((Ho - 1) * sh + eh)} cols={Wd - ((Wo - 1) * sw + ew)}")
    return Case(x, W, G, (kh, kw), (sh, sw), (dh, dw), (ph, pw))


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray | float, tol: float = TOL) -> None:
    """``|got − want| ≤ tol·(|want| + scale)``: relative, with ``scale`` the size of the
    terms summed (e.g. the same operation on |inputs|), so cancellation is not a failure."""
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.max(scale, initial=0.0))))


# --------------------------------------------------------------------------- fast vs naive


@given(conv_cases())
def test_correlate_matches_naive(case: Case):
    x, W, s, d = case.x, case.W, case.s, case.d
    got = C.correlate(x, W, s, d)
    want = C.correlate_naive(x, W, s, d)
    assert got.shape == want.shape == (x.shape[0], W.shape[0]) + case.out_hw
    assert_close(got, want, C.correlate_naive(np.abs(x), np.abs(W), s, d))


@given(conv_cases(), st.integers(1, 6))
def test_correlate_rows_matches_naive(case: Case, more: int):
    """The stride-1 kernel unrolled along rows (``correlate`` takes it for deep enough
    inputs, which the cases above are not): channels repeated so that some are."""
    x, W, d = np.tile(case.x, (1, more, 1, 1)), np.tile(case.W, (1, more, 1, 1)), case.d
    got = C.correlate_rows(x, W, d)
    want = C.correlate_naive(x, W, (1, 1), d)
    assert got.shape == want.shape
    assert_close(got, want, C.correlate_naive(np.abs(x), np.abs(W), (1, 1), d))
    if C.rows_pay((1, 1), x.shape[1], W.shape[-1], *got.shape[-2:]):
        np.testing.assert_array_equal(C.correlate(x, W, (1, 1), d), got)  # the path correlate takes


@given(conv_cases(), st.integers(1, 16))
def test_correlate_stacked_matches_naive(case: Case, filters: int):
    """The kernel rows stacked in one matmul (what ``correlate_rows`` takes for few filters
    on large enough maps) against the loop, with 1-16 filters; and that correlate_rows
    takes it exactly where ``stack_pays`` says."""
    x, d = case.x, case.d
    W = np.cos(np.arange(filters * math.prod(case.W.shape[1:]))).reshape((filters,) + case.W.shape[1:])
    ho, wo = C.out_size(x.shape[-2], W.shape[-2], 1, 0, d[0]), C.out_size(x.shape[-1], W.shape[-1], 1, 0, d[1])
    got = C.correlate_stacked(C.unroll_rows(x, W.shape[-1], d[1]), W, ho, wo, d[0])
    want = C.correlate_naive(x, W, (1, 1), d)
    assert got.shape == want.shape
    assert_close(got, want, C.correlate_naive(np.abs(x), np.abs(W), (1, 1), d))
    if C.stack_pays(filters, W.shape[-2], ho, wo):
        np.testing.assert_array_equal(C.correlate_rows(x, W, d), got)


def test_stack_pays_for_few_filters_on_large_maps():
    """The rule measured: 8 filters of 3x3 on a 32x32 map stack, 32 filters or a 3x3 map do not."""
    assert C.stack_pays(8, 3, 32, 32) and C.stack_pays(16, 3, 16, 16)
    assert not C.stack_pays(32, 3, 32, 32) and not C.stack_pays(8, 3, 3, 3) and not C.stack_pays(8, 1, 32, 32)


@given(conv_cases(), st.integers(1, 6))
def test_weight_grad_rows_matches_naive(case: Case, more: int):
    """∂C/∂W from the rows the stride-1 kernel unrolls (``weight_grad`` takes it for deep
    enough inputs): channels repeated so that some are."""
    x, d = np.tile(case.x, (1, more, 1, 1)), case.d
    out = C.correlate_naive(x[:, :1], case.W[:, :1], (1, 1), d).shape  # the drawn G is for the drawn stride
    G = case.G if case.s == (1, 1) else np.cos(np.arange(math.prod(out))).reshape(out)
    got = C.weight_grad_rows(x, G, case.k, d)
    want = C.weight_grad_naive(x, G, case.k, (1, 1), d)
    assert got.shape == want.shape and got.flags.c_contiguous
    assert_close(got, want, C.weight_grad_naive(np.abs(x), np.abs(G), case.k, (1, 1), d))
    np.testing.assert_array_equal(C.weight_grad(x, G, case.k, (1, 1), d), got if C.rows_pay(
        (1, 1), x.shape[1], case.k[1], *G.shape[-2:]) else C.weight_grad(x, G, case.k, (1, 1), d,
                                                                         cols=C.im2col(x, case.k, (1, 1), d)))


@given(conv_cases())
def test_full_convolve_matches_naive(case: Case):
    in_hw = case.x.shape[-2:]  # may exceed (Ho−1)·s + extent when the stride does not tile it
    got = C.full_convolve(case.G, case.W, in_hw, case.s, case.d)
    want = C.full_convolve_naive(case.G, case.W, in_hw, case.s, case.d)
    assert got.shape == want.shape == (case.G.shape[0], case.W.shape[1]) + tuple(in_hw)
    assert_close(got, want, C.full_convolve_naive(np.abs(case.G), np.abs(case.W), in_hw, case.s, case.d))


@given(conv_cases())
def test_col2im_form_equals_the_rot180_form(case: Case):
    """What the conv layer runs (col2im of Wᵀδ) is the seed's full convolution with
    ROT180 — equal to the rot180 form and to the naive scatter loop."""
    in_hw = case.x.shape[-2:]
    got = C.full_convolve_col2im(case.G, case.W, in_hw, case.s, case.d)
    scale = C.full_convolve_naive(np.abs(case.G), np.abs(case.W), in_hw, case.s, case.d)
    assert_close(got, C.full_convolve(case.G, case.W, in_hw, case.s, case.d), scale)
    assert_close(got, C.full_convolve_naive(case.G, case.W, in_hw, case.s, case.d), scale)


@given(conv_cases())
def test_col2im_is_the_adjoint_of_im2col(case: Case):
    """<im2col(x), Y> = <x, col2im(Y)> for any Y of im2col's shape."""
    x, k, s, d = case.x, case.k, case.s, case.d
    cols = C.im2col(x, k, s, d)
    Y = np.random.default_rng(1).standard_normal(cols.shape)
    n, c = x.shape[:2]
    ho, wo = C.out_size(x.shape[2], k[0], s[0], 0, d[0]), C.out_size(x.shape[3], k[1], s[1], 0, d[1])
    back = C.col2im(Y.reshape(n, c, k[0], k[1], ho, wo), x.shape[-2:], s, d)
    lhs, rhs = np.sum(cols * Y), np.sum(x * back)
    assert abs(lhs - rhs) <= 1e-12 * (np.sum(np.abs(cols * Y)) + 1)


@given(conv_cases())
def test_weight_grad_matches_naive(case: Case):
    got = C.weight_grad(case.x, case.G, case.k, case.s, case.d)
    want = C.weight_grad_naive(case.x, case.G, case.k, case.s, case.d)
    assert got.shape == want.shape == case.W.shape
    assert_close(got, want, C.weight_grad_naive(np.abs(case.x), np.abs(case.G), case.k, case.s, case.d))


@pytest.mark.parametrize("H, Wd, k, s, d", [
    (8, 9, (3, 2), (3, 2), (1, 1)),   # (Ho−1)·s + ext = 6 < 8, 8 < 9
    (10, 7, (2, 2), (3, 2), (2, 2)),  # 9 < 10 rows; columns tile exactly (7)
    (5, 5, (1, 1), (3, 3), (1, 1)),   # 1×1 kernel, stride 3: rows/cols 1, 2 and 4 never reached
])
def test_full_convolve_untiled_input_is_zero_filled(H, Wd, k, s, d):
    rng = np.random.default_rng(0)
    rng.standard_normal((2, 2, H, Wd))  # the input: drawn only to keep W and G as they were
    W = rng.standard_normal((3, 2) + k)
    Ho, Wo = C.out_size(H, k[0], s[0], 0, d[0]), C.out_size(Wd, k[1], s[1], 0, d[1])
    reach_h = (Ho - 1) * s[0] + C.effective_kernel(k[0], d[0])
    reach_w = (Wo - 1) * s[1] + C.effective_kernel(k[1], d[1])
    assert reach_h < H or reach_w < Wd  # the case really is untiled
    G = rng.standard_normal((2, 3, Ho, Wo))
    got = C.full_convolve(G, W, (H, Wd), s, d)
    assert got.shape == (2, 2, H, Wd)
    np.testing.assert_allclose(got, C.full_convolve_naive(G, W, (H, Wd), s, d), rtol=TOL, atol=TOL)
    assert np.all(got[..., reach_h:, :] == 0) and np.all(got[..., :, reach_w:] == 0)
    # every entry of x that z reads gets a nonzero gradient (generic data)
    reached = np.zeros((H, Wd), bool)
    for i in range(Ho):
        for j in range(Wo):
            for u in range(k[0]):
                for v in range(k[1]):
                    reached[i * s[0] + u * d[0], j * s[1] + v * d[1]] = True
    assert np.all((got != 0) == reached)


# --------------------------------------------------------------------------- adjoint identity


@given(conv_cases(max_hw=16))
def test_adjoint_identity(case: Case):
    """<correlate(x, W), G> = <x, full_convolve(G, W)> = <W, weight_grad(x, G)>."""
    x, W, G, k, s, d = case.x, case.W, case.G, case.k, case.s, case.d
    forward = np.vdot(C.correlate(x, W, s, d), G)
    via_input = np.vdot(x, C.full_convolve(G, W, x.shape[-2:], s, d))
    via_weight = np.vdot(W, C.weight_grad(x, G, k, s, d))
    scale = max(1.0, np.vdot(C.correlate(np.abs(x), np.abs(W), s, d), np.abs(G)))  # Σ of |terms|
    assert abs(forward - via_input) <= TOL * scale, (forward, via_input)
    assert abs(forward - via_weight) <= TOL * scale, (forward, via_weight)


# --------------------------------------------------------------------------- rotated kernel


def full_conv2d_single(delta: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Full 2-D convolution, numpy only: ``out[m, q] = Σ δ[i, j] w[m−i, q−j]`` as a sum of
    shifted copies of δ, one per kernel tap."""
    (Ho, Wo), (kh, kw) = delta.shape, w.shape
    out = np.zeros((Ho + kh - 1, Wo + kw - 1))
    for u in range(kh):
        for v in range(kw):
            out[u : u + Ho, v : v + Wo] += w[u, v] * delta
    return out


@st.composite
def stride1_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """δ of shape (n, o, Ho, Wo) and W of shape (o, c, kh, kw), stride 1, dilation 1."""
    n, o, c = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw, Ho, Wo = (draw(st.integers(1, 4)) for _ in range(4))
    return draw(f64((n, o, Ho, Wo))), draw(f64((o, c, kh, kw)))


@given(stride1_cases())
def test_full_convolve_is_pad_then_correlate_with_rot180(case):
    delta, W = case
    kh, kw = W.shape[-2:]
    in_hw = (delta.shape[-2] + kh - 1, delta.shape[-1] + kw - 1)
    got = C.full_convolve(delta, W, in_hw)
    # written out: pad δ by k−1, slide ROT180(W) with in/out channels swapped
    delta_hat = np.pad(delta, [(0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)])
    W_rot = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    want = C.correlate_naive(delta_hat, W_rot)
    assert_close(got, want, C.correlate_naive(np.abs(delta_hat), np.abs(W_rot)))
    # and, channel by channel, the full convolution of δ with W (no flipping by hand)
    ref = np.zeros_like(got)
    for b in range(delta.shape[0]):
        for f in range(W.shape[0]):
            for ch in range(W.shape[1]):
                ref[b, ch] += full_conv2d_single(delta[b, f], W[f, ch])
    assert_close(got, ref, np.abs(want).max() + np.abs(delta).sum() * np.abs(W).max())


def test_full_convolve_single_channel_is_full_convolution():
    """1×1 channels: against ``np.convolve`` (a separable kernel convolves rows then columns)
    and against the shifted-outer-product form, on a kernel that is not symmetric."""
    rng = np.random.default_rng(1)
    delta = rng.standard_normal((4, 5))
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.25])
    W = np.outer(a, b)  # ROT180(W) != W
    got = C.full_convolve(delta[None, None], W[None, None], (6, 6))[0, 0]
    rows = np.stack([np.convolve(r, b) for r in delta])  # (4, 6)
    want = np.stack([np.convolve(col, a) for col in rows.T]).T  # (6, 6)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(got, full_conv2d_single(delta, W), rtol=TOL, atol=TOL)
    # a 1×k kernel is np.convolve of each row, exactly the 'full' mode
    w_row = np.array([[2.0, -1.0, 0.0, 4.0]])
    got_row = C.full_convolve(delta[None, None], w_row[None, None], (4, 8))[0, 0]
    np.testing.assert_allclose(got_row, np.stack([np.convolve(r, w_row[0]) for r in delta]), rtol=TOL, atol=TOL)


def _layer(in_shape, seed=0, **opts) -> L.Conv:
    return L.Conv(in_shape, np.random.default_rng(seed), **opts)


def test_convolution_mode_forward_is_true_convolution():
    """``mode: convolution`` forward, one channel, stride 1, no bias: each row against
    ``np.convolve(..., 'valid')`` with a 1×k kernel, and in general against correlation
    with ROT180(W)."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1, 1, 3, 7))
    layer = _layer((1, 3, 7), filters=1, kernel=[1, 3], bias="none", mode="convolution")
    layer.params["W"][...] = [[[[1.0, 2.0, -3.0]]]]
    z, _ = layer.forward(a)
    want = np.stack([np.convolve(r, [1.0, 2.0, -3.0], mode="valid") for r in a[0, 0]])
    np.testing.assert_allclose(z[0, 0], want, rtol=TOL, atol=TOL)
    # not a correlation (the kernel is not symmetric)
    assert not np.allclose(z[0, 0], np.stack([np.correlate(r, [1.0, 2.0, -3.0], mode="valid") for r in a[0, 0]]))


@given(conv_cases(max_hw=8), st.sampled_from(["tied", "untied", "none"]))
def test_convolution_mode_is_rot180_of_correlation_mode(case: Case, bias: str):
    """Same data through a ``convolution`` layer with W and a ``correlation`` layer with
    ROT180(W): same forward (= correlation with ROT180(W)), same δ, and ∂C/∂W of the
    convolution layer is ROT180 of the correlation layer's."""
    x = case.x
    n, c, h, w = x.shape
    o = case.W.shape[0]
    opts = dict(filters=o, kernel=list(case.k), stride=list(case.s), padding=list(case.p),
                dilation=list(case.d), bias=bias)
    conv = _layer((c, h, w), mode="convolution", **opts)
    corr = _layer((c, h, w), mode="correlation", **opts)
    conv.params["W"][...] = case.W
    corr.params["W"][...] = C.rot180(case.W)
    if bias != "none":
        corr.params["b"][...] = conv.params["b"]
    z, cache = conv.forward(x)
    z2, cache2 = corr.forward(x)
    true_conv = C.correlate_naive(C.pad(x, case.p), C.rot180(case.W), case.s, case.d)
    if bias == "tied":
        true_conv = true_conv + conv.params["b"][:, None, None]
    elif bias == "untied":
        true_conv = true_conv + conv.params["b"]
    assert z.shape == true_conv.shape == (n,) + conv.out_shape
    assert_close(z, true_conv, C.correlate_naive(C.pad(np.abs(x), case.p), np.abs(case.W), case.s, case.d) + 1)
    np.testing.assert_allclose(z, z2, rtol=TOL, atol=TOL)  # equal up to BLAS summation order
    G = np.random.default_rng(3).standard_normal(z.shape)
    d_conv, g_conv = conv.backward(G, cache)
    d_corr, g_corr = corr.backward(G, cache2)
    np.testing.assert_allclose(d_conv, d_corr, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(g_conv["W"], C.rot180(g_corr["W"]), rtol=TOL, atol=TOL)
    # ...and, when the kernel is not symmetric, not the unrotated gradient
    if not np.allclose(g_corr["W"], C.rot180(g_corr["W"])):
        assert not np.allclose(g_conv["W"], g_corr["W"])
    assert set(g_conv) == set(g_corr) == set(conv.params)
    for name in set(g_conv) - {"W"}:
        np.testing.assert_array_equal(g_conv[name], g_corr[name])


# --------------------------------------------------------------------------- layers vs finite differences


def numeric_grads(layer, a: np.ndarray, G: np.ndarray, eps: float = FD_EPS):
    """Central differences of ``sum(forward(a) · G)`` w.r.t. every entry of a and of each param."""

    def loss() -> float:
        return float(np.sum(layer.forward(a)[0] * G))

    a = a.copy()
    return central(loss, a, eps), {name: central(loss, p, eps) for name, p in layer.params.items()}


def assert_matches_fd(layer, a: np.ndarray, G: np.ndarray, eps: float = FD_EPS) -> None:
    z, cache = layer.forward(a)
    assert z.shape == (a.shape[0],) + tuple(layer.out_shape)
    d_prev, grads = layer.backward(G, cache)
    n_prev, n_grads = numeric_grads(layer, a, G, eps)
    assert d_prev.shape == a.shape
    assert set(grads) == set(layer.params)
    for name, got, want in [("input", d_prev, n_prev)] + [(k, grads[k], n_grads[k]) for k in layer.params]:
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=FD_TOL, atol=FD_TOL * max(1.0, np.abs(want).max()),
                                   err_msg=f"gradient w.r.t. {name}")


@st.composite
def conv_layer_cases(draw: st.DrawFn):
    """A tiny Conv layer (padding, stride, dilation, bias, mode) and an input that fits it:
    the input may be smaller than the kernel's extent when the padding makes up for it."""
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    k = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    hw = [draw(st.integers(max(1, C.effective_kernel(k[i], d[i]) - 2 * p[i]), 6)) for i in range(2)]
    assume(all(C.effective_kernel(k[i], d[i]) <= hw[i] + 2 * p[i] for i in range(2)))
    opts = dict(filters=o, kernel=k, stride=s, padding=p, dilation=d,
                bias=draw(st.sampled_from(["tied", "untied", "none"])),
                mode=draw(st.sampled_from(["correlation", "convolution"])))
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, c, *hw), opts, seed


@given(conv_layer_cases())
def test_conv_layer_backward_matches_finite_differences(case):
    shape, opts, seed = case
    rng = np.random.default_rng(seed)
    layer = L.Conv(shape[1:], rng, **opts)
    a = rng.uniform(-2, 2, shape)
    G = rng.uniform(-2, 2, (shape[0],) + layer.out_shape)
    assert_matches_fd(layer, a, G)


@pytest.mark.parametrize("mode", ["correlation", "convolution"])
@pytest.mark.parametrize("bias", ["tied", "untied", "none"])
def test_conv_layer_every_mode_and_bias(mode, bias):
    """Fixed, asymmetric: padding (1, 2), stride (2, 3) not tiling, dilation (2, 1)."""
    rng = np.random.default_rng(7)
    layer = L.Conv((2, 7, 8), rng, filters=3, kernel=[2, 3], stride=[2, 3], padding=[1, 2],
                   dilation=[2, 1], bias=bias, mode=mode)
    assert layer.out_shape == (3, 4, 4)
    assert ("b" in layer.params) == (bias != "none")
    if bias == "untied":
        assert layer.params["b"].shape == (3, 4, 4)
    a = rng.standard_normal((2, 2, 7, 8))
    G = rng.standard_normal((2, 3, 4, 4))
    assert_matches_fd(layer, a, G)


def pool_naive(a: np.ndarray, kind: str, k: C.Pair, s: C.Pair, delta: np.ndarray | None = None):
    """Loop pooling: forward, and (with ``delta``) the backward pass — max sends each
    window's δ to its first maximal entry (row-major), avg shares it equally."""
    n, c, H, Wd = a.shape
    Ho, Wo = (H - k[0]) // s[0] + 1, (Wd - k[1]) // s[1] + 1
    out = np.zeros((n, c, Ho, Wo))
    grad = np.zeros_like(a)
    for b in range(n):
        for ch in range(c):
            for i in range(Ho):
                for j in range(Wo):
                    r0, c0 = i * s[0], j * s[1]
                    if kind == "avg":
                        total = 0.0
                        for u in range(k[0]):
                            for v in range(k[1]):
                                total += a[b, ch, r0 + u, c0 + v]
                        out[b, ch, i, j] = total / (k[0] * k[1])
                        if delta is not None:
                            for u in range(k[0]):
                                for v in range(k[1]):
                                    grad[b, ch, r0 + u, c0 + v] += delta[b, ch, i, j] / (k[0] * k[1])
                    else:
                        best, where = -np.inf, None
                        for u in range(k[0]):
                            for v in range(k[1]):
                                if a[b, ch, r0 + u, c0 + v] > best:  # strict: the first maximum wins
                                    best, where = a[b, ch, r0 + u, c0 + v], (r0 + u, c0 + v)
                        out[b, ch, i, j] = best
                        if delta is not None:
                            grad[b, ch, where[0], where[1]] += delta[b, ch, i, j]
    return out, grad


@given(st.sampled_from(["max", "avg"]), st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
       st.data())
def test_pool_matches_naive(kind, kh, kw, sh, sw, data):
    """Overlapping (stride < size), tiling and gapped (stride > size) windows."""
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    H, Wd = data.draw(st.integers(kh, 9)), data.draw(st.integers(kw, 9))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal((n, c, H, Wd))  # continuous: no ties
    layer = L.Pool((c, H, Wd), rng, kind=kind, size=[kh, kw], stride=[sh, sw])
    z, cache = layer.forward(a)
    delta = rng.standard_normal(z.shape)
    want_z, want_g = pool_naive(a, kind, (kh, kw), (sh, sw), delta)
    assert z.shape == want_z.shape == (n,) + layer.out_shape
    np.testing.assert_allclose(z, want_z, rtol=TOL, atol=TOL)
    g, params = layer.backward(delta, cache)
    assert params == {}
    np.testing.assert_allclose(g, want_g, rtol=TOL, atol=TOL)


def test_pool_default_stride_and_max_ties_go_to_first():
    a = np.array([[[[1.0, 1.0, 0.0, 2.0],
                    [1.0, 0.0, 2.0, 2.0],
                    [5.0, 3.0, 3.0, 3.0],
                    [3.0, 5.0, 3.0, 3.0]]]])
    layer = L.Pool((1, 4, 4), None, kind="max", size=2)  # stride defaults to size
    assert layer.s == (2, 2) and layer.out_shape == (1, 2, 2)
    z, cache = layer.forward(a)
    np.testing.assert_array_equal(z[0, 0], [[1.0, 2.0], [5.0, 3.0]])
    g, _ = layer.backward(np.array([[[[10.0, 20.0], [30.0, 40.0]]]]), cache)
    np.testing.assert_array_equal(g[0, 0], [[10.0, 0.0, 0.0, 20.0],
                                            [0.0, 0.0, 0.0, 0.0],
                                            [30.0, 0.0, 40.0, 0.0],
                                            [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(pool_naive(a, "max", (2, 2), (2, 2), np.array([[[[10.0, 20.0], [30.0, 40.0]]]]))[1],
                                  g)
    # overlapping windows add up, avg shares equally
    avg = L.Pool((1, 1, 3), None, kind="avg", size=[1, 2], stride=1)
    z, cache = avg.forward(np.array([[[[1.0, 2.0, 4.0]]]]))
    np.testing.assert_array_equal(z, [[[[1.5, 3.0]]]])
    g, _ = avg.backward(np.array([[[[2.0, 4.0]]]]), cache)
    np.testing.assert_array_equal(g, [[[[1.0, 3.0, 2.0]]]])


@pytest.mark.parametrize("kind, size, stride", [("max", 2, 1), ("avg", 2, 1), ("max", 2, 3), ("avg", [3, 2], [1, 3])])
def test_pool_matches_finite_differences(kind, size, stride):
    rng = np.random.default_rng(11)
    layer = L.Pool((2, 7, 7), rng, kind=kind, size=size, stride=stride)
    a = rng.standard_normal((2, 2, 7, 7))  # generic: every window's max is isolated by ≫ eps
    G = rng.standard_normal((2,) + layer.out_shape)
    assert_matches_fd(layer, a, G, eps=1e-6)


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.booleans(), st.integers(0, 2**32 - 1))
def test_dense_matches_finite_differences(n, k, units, bias, seed):
    rng = np.random.default_rng(seed)
    layer = L.Dense((k,), rng, units=units, bias=bias)
    assert layer.params["W"].shape == (units, k) and ("b" in layer.params) == bias
    a = rng.uniform(-2, 2, (n, k))
    z, _ = layer.forward(a)
    want = np.array([[sum(layer.params["W"][j, i] * a[b, i] for i in range(k)) + (layer.params["b"][j] if bias else 0)
                      for j in range(units)] for b in range(n)])
    np.testing.assert_allclose(z, want, rtol=TOL, atol=TOL)
    assert_matches_fd(layer, a, rng.uniform(-2, 2, (n, units)))


def test_flatten_is_c_order_and_backward_inverts_it():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 4, 5))
    layer = L.Flatten((3, 4, 5), rng)
    assert layer.out_shape == (60,) and layer.params == {}
    z, cache = layer.forward(a)
    for b, c, h, w in np.ndindex(a.shape):
        assert z[b, c * 20 + h * 5 + w] == a[b, c, h, w]
    assert_matches_fd(layer, a, rng.standard_normal((2, 60)))


ACTIVATION_REFERENCE = {
    "sigmoid": lambda z, alpha: 1.0 / (1.0 + np.exp(-z)),
    "tanh": lambda z, alpha: np.tanh(z),
    "relu": lambda z, alpha: np.maximum(z, 0.0),
    "leaky_relu": lambda z, alpha: np.where(z > 0, z, alpha * z),
    "softplus": lambda z, alpha: np.log1p(np.exp(z)),
    "identity": lambda z, alpha: z,
}


def test_every_activation_has_a_reference():
    assert set(L.ACTIVATIONS) == set(ACTIVATION_REFERENCE)


@pytest.mark.parametrize("name, alpha", [(name, None) for name in L.ACTIVATIONS] + [("leaky_relu", 0.2),
                                                                                    ("leaky_relu", 1.7)])
def test_activation_value_and_derivative(name, alpha):
    rng = np.random.default_rng(9)
    z = rng.uniform(-6, 6, (3, 2, 4, 5))
    z = np.where(np.abs(z) < 1e-3, 0.5, z)  # clear of relu's kink by ≫ eps
    layer = L.Activation(z.shape[1:], rng, function=name, alpha=alpha)
    a, cache = layer.forward(z)
    want = ACTIVATION_REFERENCE[name](z, 0.01 if alpha is None else alpha)  # leaky_relu's default slope 0.01
    np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-12)
    # σ' against central differences of σ
    sigma, sigma_prime = L.ACTIVATIONS[name]
    kw = {} if alpha is None else {"alpha": alpha}
    eps = 1e-5
    numeric = (sigma(z + eps, **kw) - sigma(z - eps, **kw)) / (2 * eps)
    np.testing.assert_allclose(sigma_prime(z, **kw), numeric, rtol=FD_TOL, atol=1e-9)
    # the layer's backward is δ ⊙ σ'(z): against central differences of sum(σ(z)·G)
    G = rng.standard_normal(z.shape)
    d, params = layer.backward(G, cache)
    assert params == {}
    np.testing.assert_allclose(d, G * numeric, rtol=FD_TOL, atol=1e-9)


# --------------------------------------------------------------------------- helpers, exact


def test_dilate_exact():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_array_equal(C.dilate(x, (2, 2))[0, 0], [[1, 0, 2], [0, 0, 0], [3, 0, 4]])
    np.testing.assert_array_equal(C.dilate(x, (1, 3))[0, 0], [[1, 0, 0, 2], [3, 0, 0, 4]])
    np.testing.assert_array_equal(C.dilate(x, (3, 1))[0, 0], [[1, 2], [0, 0], [0, 0], [3, 4]])
    np.testing.assert_array_equal(C.dilate(x, (1, 1)), x)
    y = np.arange(2 * 3 * 2 * 3, dtype=float).reshape(2, 3, 2, 3)
    dy = C.dilate(y, (2, 3))
    assert dy.shape == (2, 3, 3, 7) and dy.dtype == y.dtype
    np.testing.assert_array_equal(dy[..., ::2, ::3], y)
    assert dy.sum() == y.sum()


def test_pad_and_crop_exact():
    x = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)
    p = C.pad(x, (1, 2))
    assert p.shape == (1, 1, 4, 7)
    np.testing.assert_array_equal(p[0, 0], [[0, 0, 0, 0, 0, 0, 0],
                                            [0, 0, 1, 2, 3, 0, 0],
                                            [0, 0, 4, 5, 6, 0, 0],
                                            [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(C.crop(p, (1, 2)), x)
    np.testing.assert_array_equal(C.crop(p, (1, 1))[0, 0], [[0, 1, 2, 3, 0], [0, 4, 5, 6, 0]])
    np.testing.assert_array_equal(C.pad(x, (0, 0)), x)
    np.testing.assert_array_equal(C.crop(x, (0, 0)), x)


@given(f64((2, 2, 3, 4)), st.integers(0, 3), st.integers(0, 3))
def test_crop_inverts_pad(x, ph, pw):
    p = C.pad(x, (ph, pw))
    assert p.shape == (2, 2, 3 + 2 * ph, 4 + 2 * pw)
    np.testing.assert_array_equal(C.crop(p, (ph, pw)), x)
    border = p.copy()
    border[..., ph : ph + 3, pw : pw + 4] = 0
    assert not border.any()  # only zeros added around x


def test_rot180_exact():
    W = np.arange(6.0).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(C.rot180(W)[0, 0], [[5, 4, 3], [2, 1, 0]])
    W4 = np.arange(24.0).reshape(2, 3, 2, 2)
    r = C.rot180(W4)
    for o, c, u, v in np.ndindex(W4.shape):  # w_{-x,-y}: only the spatial axes flip
        assert r[o, c, u, v] == W4[o, c, 1 - u, 1 - v]
    np.testing.assert_array_equal(C.rot180(r), W4)


@pytest.mark.parametrize("k, s, d", [((2, 2), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 2)), ((3, 1), (1, 3), (2, 1))])
def test_windows_exact(k, s, d):
    x = np.arange(2 * 2 * 7 * 8, dtype=float).reshape(2, 2, 7, 8)
    v = C.windows(x, k, s, d)
    Ho, Wo = C.out_size(7, k[0], s[0], 0, d[0]), C.out_size(8, k[1], s[1], 0, d[1])
    assert v.shape == (2, 2, Ho, Wo) + k
    for n, c, i, j, u, w in np.ndindex(v.shape):
        assert v[n, c, i, j, u, w] == x[n, c, i * s[0] + u * d[0], j * s[1] + w * d[1]]


def test_small_helpers():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(C.windows(x, (2, 2), (2, 2))[0, 0, 1, 0], [[8, 9], [12, 13]])
    assert C.pair(3) == (3, 3) and C.pair([3, 5]) == (3, 5) and C.pair((2, 1)) == (2, 1)
    assert C.effective_kernel(3, 1) == 3 and C.effective_kernel(3, 2) == 5 and C.effective_kernel(1, 3) == 1
    assert C.out_size(28, 5) == 24 and C.out_size(7, 3, 2, 1) == 4 and C.out_size(8, 3, 3) == 2
    assert C.out_size(10, 3, 1, 0, 2) == 6
