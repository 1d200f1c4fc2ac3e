"""The catalogue: each usual bug as the gradient it would produce, built from the true one.

A candidate is ``(sentence, predicted, mask)``: what the backward would have returned had it
made that mistake — computed from the numeric gradient (a flip, a transpose, a shift, a
zeroed region), from the layer's own geometry and the analytic δ at its output (the kernel
not rotated, dilation ignored, the stride's zeros at the wrong offset, a pool's divisor), or
from the layer's own backward run one sample at a time.  ``diagnose`` states a sentence only
when the analytic gradient equals its prediction to within the method's tolerance.

A geometry-built family is tried only after its model is verified: the correct formula on
the same δ must reproduce the numeric gradient, so a declared geometry that does not fit the
layer cannot lead to a confident, wrong sentence.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import geometry as G
from .case import Candidate, Case, Raw, close
from .convs import conv_family, conv_transpose_family
from .generic import masks_family, params_family, per_sample_family, shifts_family

Array = np.ndarray
__all__ = ["Candidate", "Case", "candidates", "close"]


def candidates(case: Case) -> Iterator[Candidate]:
    """Every catalogue entry that applies to this tensor, most specific first."""
    families: tuple[Callable[[Case], Iterator[Raw]], ...] = (
        conv_family, conv_transpose_family, _dense, _pool, _elementwise, masks_family, shifts_family, params_family,
        per_sample_family)
    for family in families:
        try:
            for cand in family(case):
                yield cand if isinstance(cand, Candidate) else Candidate(*cand)
        except (ValueError, IndexError, TypeError, KeyError, AttributeError, FloatingPointError):
            continue  # a candidate that cannot be built for this layer is no candidate


# ---------------------------------------------------------------- geometry-built families


def _dense(c: Case) -> Iterator[Raw]:
    g, W = c.geometry, getattr(c.layer, "params", {}).get("W")
    if g is None or g.op != "dense" or W is None or c.delta_out is None or not c.ref.is_delta:
        return
    W = np.asarray(W, dtype=np.float64)
    d_out = c.delta_out.reshape(c.delta_out.shape[0], -1).astype(np.float64)
    if not c.fits((d_out @ W).reshape(c.n.shape)):
        return
    if W.shape[0] == W.shape[1]:
        yield "δ is Wδ where Wᵀδ belongs: W used untransposed", (d_out @ W.T).reshape(c.n.shape), None
    else:
        yield ("δ is made with W.T.reshape(W.shape) where W belongs: a reshape where a transpose belongs",
               (d_out @ W.T.reshape(W.shape)).reshape(c.n.shape), None)


def _pool(c: Case) -> Iterator[Raw]:
    g = c.geometry
    if g is None or not g.op.endswith("_pool") or c.delta_out is None or c.a_prev is None or not c.ref.is_delta:
        return
    d_out, a_prev = c.delta_out.astype(np.float64), c.a_prev.astype(np.float64)
    (kh, kw), (sh, sw) = g.kernel, g.stride
    overlap = sh < kh or sw < kw
    if g.op == "avg_pool":
        if not c.fits(G.pool_input_grad(g, d_out, a_prev, "avg")):
            return
        divisors: dict[int, str] = {}  # the first name of a value wins: the stride² before a side
        for div, says in ((sh * sw, f"the stride² ({sh}·{sw})"), (kh * kh, f"kh² ({kh}·{kh}, the window taken as "
                          "square)"), (kw * kw, f"kw² ({kw}·{kw}, the window taken as square)"),
                          (kh, f"one side of the window ({kh})"), (kw, f"one side of the window ({kw})")):
            divisors.setdefault(div, says)
        for div, says in divisors.items():
            if div != kh * kw:
                yield (f"δ is each window's δ divided by {says} instead of the window size ({kh}·{kw})",
                       G.pool_input_grad(g, d_out, a_prev, "avg", divisor=div), None)
        yield "δ is each window's δ not divided by the window size", G.pool_input_grad(g, d_out, a_prev, "every"), None
        if overlap:
            yield ("δ is written window by window, each over the last, where overlapping windows add up "
                   f"(window {kh}x{kw}, stride {sh}x{sw})", G.pool_input_grad(g, d_out, a_prev, "avg", overwrite=True),
                   None)
        return
    if not c.fits(G.pool_input_grad(g, d_out, a_prev, "first")):
        return
    tap = ("the transposed tap of each window's maximum (offset (u, v) read as (v, u))" if kh == kw else
           f"the wrong tap of each {kh}x{kw} window: the maximum's index counted column by column (column-major) "
           "and read back row by row")
    for route, says in (("argmin", "each window's minimum"), ("transposed", tap),
                        ("every", "every entry of each window"),
                        ("avg", "each window shared equally, as in average pooling")):
        yield f"δ goes to {says} instead of its maximum", G.pool_input_grad(g, d_out, a_prev, route), None
    if overlap:
        yield ("δ is written window by window, each over the last, where overlapping windows add up "
               f"(window {kh}x{kw}, stride {sh}x{sw})", G.pool_input_grad(g, d_out, a_prev, "first", overwrite=True),
               None)


def _derivative(layer: Any, x: Array) -> Array:
    """σ'(x) of an elementwise layer by a central difference of its own forward."""
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    up, _ = layer.forward(x + h)
    down, _ = layer.forward(x - h)
    return (np.asarray(up, dtype=np.float64) - np.asarray(down, dtype=np.float64)) / (2 * h)


def _elementwise(c: Case) -> Iterator[Raw]:
    g = c.geometry
    if g is None or g.op != "elementwise" or c.delta_out is None or c.a_prev is None or not c.ref.is_delta:
        return
    z, d_out = c.a_prev.astype(np.float64), c.delta_out.astype(np.float64)
    if d_out.shape != c.n.shape or not c.fits(d_out * _derivative(c.layer, z)):
        return
    a = np.asarray(c.layer.forward(z)[0], dtype=np.float64)
    yield ("δ is δ_out ⊙ σ'(a), σ' evaluated at the output a = σ(z) instead of at z",
           d_out * _derivative(c.layer, a), None)
    yield ("δ is δ_out ⊙ σ'(−z): the slope is applied on the wrong side of 0 (e.g. leaky ReLU's α where 1 "
           "belongs)", d_out * _derivative(c.layer, -z), None)
    yield "δ is δ_out ⊙ σ'(z)²: σ' applied twice", d_out * _derivative(c.layer, z) ** 2, None
