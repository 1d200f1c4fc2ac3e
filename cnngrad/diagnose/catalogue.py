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
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from ..compare import metrics
from ..refs import TensorRef
from . import geometry as G

Array = np.ndarray


class Candidate(NamedTuple):
    """What the backward would return with this bug; compared with the analytic gradient
    (over ``mask`` if given).  ``fallback``: said only when nothing more specific matched,
    and ``predicted`` is then a model of the *true* gradient, compared with the numeric one."""

    sentence: str
    predicted: Array
    mask: Array | None = None
    fallback: bool = False


def close(a: Array, b: Array, mask: Array | None = None) -> float:
    """norm rel of a against b (over ``mask`` only, if given)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    return metrics(np.ravel(a), np.ravel(b)).norm_rel


@dataclass
class Case:
    """One failing tensor of the culprit layer and what is known around it."""

    a: Array  # analytic gradient, float64
    n: Array  # numeric gradient, float64, same shape
    ref: TensorRef
    layer: Any
    geometry: G.Geometry | None
    batch: int
    tol: float
    delta_out: Array | None = None  # analytic δ at the layer's output (the δ its backward was given)
    a_prev: Array | None = None  # the layer's input

    @property
    def what(self) -> str:
        return "δ" if self.ref.is_delta else f"∂C/∂{self.ref.name}"

    def fits(self, model: Array) -> bool:
        """The correct formula reproduces the numeric gradient: the geometry is right."""
        return model.shape == self.n.shape and close(model, self.n) <= self.tol


Raw: TypeAlias = "Candidate | tuple[str, Array, Array | None]"  # or plain (sentence, predicted, mask)


def candidates(case: Case) -> Iterator[Candidate]:
    """Every catalogue entry that applies to this tensor, most specific first."""
    families: tuple[Callable[[Case], Iterator[Raw]], ...] = (_conv, _dense, _pool, _elementwise, _masks, _shifts,
                                                             _params, _per_sample)
    for family in families:
        try:
            for cand in family(case):
                yield cand if isinstance(cand, Candidate) else Candidate(*cand)
        except (ValueError, IndexError, TypeError, KeyError, AttributeError, FloatingPointError):
            continue  # a candidate that cannot be built for this layer is no candidate


# ---------------------------------------------------------------- geometry-built families


def _conv(c: Case) -> Iterator[Raw]:
    g, W = c.geometry, getattr(c.layer, "params", {}).get("W")
    if g is None or g.op != "conv" or g.groups != 1 or W is None or c.delta_out is None or c.a_prev is None:
        return
    W, d_out, (dh, dw) = np.asarray(W, dtype=np.float64), c.delta_out.astype(np.float64), g.dilation
    if c.ref.is_delta:
        hw = c.n.shape[2:]
        if not c.fits(G.conv_input_grad(g, d_out, W, hw)):
            return
        kernels = [(W[..., ::-1, ::-1], "ROT180(W) where W belongs (or W where ROT180(W) belongs): the kernel's "
                    "rotation is wrong"),
                   (W[..., ::-1, :], "W with one axis flipped (rows): ROT180 flips both"),
                   (W[..., :, ::-1], "W with one axis flipped (columns): ROT180 flips both")]
        if W.shape[-1] == W.shape[-2]:  # a transposed or quarter-turned kernel has the same shape only if square
            kernels += [(W.swapaxes(-1, -2), "Wᵀ per kernel (W[u, v] read as W[v, u]): a transposed kernel, not a "
                         "rotated one"),
                        (np.rot90(W, 1, axes=(-2, -1)), "W rotated by 90°: rot90 where ROT180 belongs"),
                        (np.rot90(W, -1, axes=(-2, -1)), "W rotated by −90°: rot90 where ROT180 belongs")]
        for kernel, says in kernels:
            yield f"δ is the backward of a conv slid with {says}", G.conv_input_grad(g, d_out, kernel, hw), None
        if (dh, dw) != (1, 1):
            yield (f"δ is the backward with the dilation ignored (1 where the layer has {dh}x{dw})",
                   G.conv_input_grad(g, d_out, W, hw, dilation=(1, 1)), None)
        yield (f"δ is the backward with the dilation applied twice ({dh * dh}x{dw * dw} where the layer has {dh}x{dw})",
               G.conv_input_grad(g, d_out, W, hw, dilation=(dh * dh, dw * dw)), None)
        (sh, sw), (ph, pw) = g.stride, g.padding
        if (sh, sw) != (1, 1):
            yield (f"δ is the backward with the stride ignored (1 where the layer has {sh}x{sw}): the stride's zeros "
                   f"were not inserted between δ's entries", G.conv_input_grad(replace(g, stride=(1, 1)), d_out, W, hw),
                   None)
            for off in ((1, 0), (0, 1), (1, 1)):
                yield (f"δ is the backward with the stride's zeros inserted at offset {off} (stride {sh}x{sw}): "
                       f"δ placed at i·s+{off[0]} where i·s belongs", G.conv_input_grad(g, d_out, W, hw, offset=off),
                       None)
        for top in sorted({0, ph, 2 * ph}):
            for left in sorted({0, pw, 2 * pw}):
                if (top, left) != (ph, pw):
                    yield (f"δ is the backward cropped at ({top}, {left}) where the padding ({ph}, {pw}) belongs: "
                           f"padding cropped from one side", G.conv_input_grad(g, d_out, W, hw, crop=(top, left)), None)
    elif c.ref.name == "W":
        if not c.fits(G.conv_weight_grad(g, c.a_prev, d_out)):
            return
        if g.stride != (1, 1):
            yield (f"∂C/∂W is the correlation with the stride ignored (1 where the layer has {g.stride[0]}x"
                   f"{g.stride[1]}): ã read at i + u·d where i·s + u·d belongs",
                   G.conv_weight_grad(replace(g, stride=(1, 1)), c.a_prev, d_out), None)
        if (dh, dw) != (1, 1):
            yield (f"∂C/∂W is the correlation with the dilation ignored (1 where the layer has {dh}x{dw})",
                   G.conv_weight_grad(g, c.a_prev, d_out, dilation=(1, 1)), None)
        yield (f"∂C/∂W is the correlation with the dilation applied twice ({dh * dh}x{dw * dw} where the layer has "
               f"{dh}x{dw})", G.conv_weight_grad(g, c.a_prev, d_out, dilation=(dh * dh, dw * dw)), None)


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
        if sh * sw != kh * kw:
            yield (f"δ is each window's δ divided by the stride² ({sh}·{sw}) instead of the window size ({kh}·{kw})",
                   G.pool_input_grad(g, d_out, a_prev, "avg", divisor=sh * sw), None)
        yield "δ is each window's δ not divided by the window size", G.pool_input_grad(g, d_out, a_prev, "every"), None
        if overlap:
            yield ("δ is written window by window, each over the last, where overlapping windows add up "
                   f"(window {kh}x{kw}, stride {sh}x{sw})", G.pool_input_grad(g, d_out, a_prev, "avg", overwrite=True),
                   None)
        return
    if not c.fits(G.pool_input_grad(g, d_out, a_prev, "first")):
        return
    for route, says in (("argmin", "each window's minimum"), ("transposed", "the transposed tap of each window's "
                        "maximum (offset (u, v) read as (v, u))"), ("every", "every entry of each window"),
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


# ---------------------------------------------------------------- families on the numbers alone


def _masks(c: Case) -> Iterator[Raw]:
    n = c.n
    if c.ref.is_delta and c.delta_out is not None and c.delta_out.shape == n.shape:
        yield ("δ below the layer equals δ above it: the layer passed δ down unchanged — σ' (its ⊙ σ'(z)) is missing",
               c.delta_out.astype(np.float64), None)
    if c.ref.is_delta and n.ndim >= 2 and n.shape[0] > 1:
        only = np.zeros_like(n)
        only[0] = n[0]
        yield f"{c.what} is right for sample 0 and zero for the other {n.shape[0] - 1}: taken from sample 0 only", \
            only, None
        yield f"{c.what} of every sample is sample 0's: taken from sample 0 only", np.broadcast_to(n[:1], n.shape), None
    if n.ndim == 4 and c.ref.is_delta:
        h, w = n.shape[2:]
        g = c.geometry
        widths = range(1, max(1, *(g.padding if g else (1, 1))) + 1)
        for width in widths:
            if h > 2 * width and w > 2 * width:
                kept = n.copy()
                kept[..., :width, :], kept[..., -width:, :], kept[..., :width], kept[..., -width:] = 0, 0, 0, 0
                yield (f"{c.what} is the numeric one with the border zeroed: wrong only within {width} "
                       f"pixel{'s' if width > 1 else ''} of the border — padding / crop handled wrong"), kept, None
        if g is not None and g.stride != (1, 1):
            sh, sw = g.stride
            for oy in range(sh):
                for ox in range(sw):
                    on = np.zeros((h, w), dtype=bool)
                    on[oy::sh, ox::sw] = True
                    where = "" if (oy, ox) == (0, 0) else f" at offset ({oy}, {ox})"
                    grid = f"stride-{sh}" if sh == sw else f"stride-({sh}, {sw})"
                    yield (f"{c.what} is right on the {grid} grid{where} and wrong off it (zero there): the "
                           f"stride's zeros were not inserted (or put in the wrong places)"), np.where(on, n, 0.0), None


def _shifts(c: Case) -> Iterator[Raw]:
    n = c.n
    if n.ndim != 4 or not c.ref.is_delta or min(n.shape[2:]) < 3:
        return
    names = {(1, 0): "down", (-1, 0): "up", (0, 1): "right", (0, -1): "left"}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dy, dx) == (0, 0):
                continue
            shifted = np.roll(n, (-dy, -dx), axis=(2, 3))  # shifted[i] = n[i + dy]
            mask = np.zeros(n.shape, dtype=bool)
            h, w = n.shape[2:]
            mask[:, :, max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)] = True
            name = names.get((dy, dx)) or f"diagonally ({'down' if dy > 0 else 'up'}-{'right' if dx > 0 else 'left'})"
            yield (f"δ matches the numeric δ one pixel {name} (compared where both exist): a one-pixel offset — "
                   f"padding cropped from one side, or the stride's zeros at the wrong offset"), shifted, mask


def _params(c: Case) -> Iterator[Raw]:
    n, what = c.n, c.what
    if c.ref.is_delta or n.ndim < 2:
        return
    if n.ndim == 4:
        yield (f"{what} matches ROT180(numeric): the kernel is rotated where it should not be (or not where it "
               f"should)"), n[..., ::-1, ::-1], None
        yield f"{what} matches numeric flipped upside down: one axis flipped — ROT180 flips both", n[..., ::-1, :], None
        yield f"{what} matches numeric flipped left-right: one axis flipped — ROT180 flips both", n[..., :, ::-1], None
        if n.shape[2] == n.shape[3]:
            yield f"{what} matches numeric with each kernel transposed (W[u, v] as W[v, u])", n.swapaxes(2, 3), None
            yield f"{what} matches numeric rotated by 90°", np.rot90(n, 1, axes=(2, 3)), None
            yield f"{what} matches numeric rotated by −90°", np.rot90(n, -1, axes=(2, 3)), None
        if n.shape[0] == n.shape[1]:
            yield (f"{what} matches numeric with in/out channels swapped: W[o, c] read as W[c, o]",
                   n.swapaxes(0, 1), None)
    flat = n.reshape(n.shape[0], -1)
    if n.ndim == 2 and flat.shape[0] == flat.shape[1]:
        yield f"{what} matches numeric transposed: Wᵀ where W belongs", n.T, None
    elif flat.shape[0] != flat.shape[1]:
        yield (f"{what} matches numeric's transpose reshaped to W's shape: a reshape where a transpose belongs "
               f"(({flat.shape[1]}, {flat.shape[0]}) read as {n.shape})"), flat.T.reshape(n.shape), None


def _per_sample(c: Case) -> Iterator[Raw]:
    """The layer's own backward, one sample at a time: if those add up to the numeric
    gradient, the layer is right per sample and the batch is what it gets wrong."""
    layer, n = c.layer, c.n
    if not getattr(layer, "per_sample", False) or c.delta_out is None or c.a_prev is None or c.batch < 2:
        return
    parts = []
    for s in range(c.batch):
        _, cache = layer.forward(c.a_prev[s: s + 1])
        d_in, grads = layer.backward(c.delta_out[s: s + 1].copy(), cache)
        parts.append(np.asarray(d_in if c.ref.is_delta else grads[c.ref.name], dtype=np.float64))
    total = np.concatenate(parts) if c.ref.is_delta else np.sum(parts, axis=0)
    if not c.fits(total.reshape(n.shape)):
        return
    # and the same backward on the whole batch gives the analytic gradient: the two differ by the batch only
    _, cache = layer.forward(c.a_prev)
    d_in, grads = layer.backward(c.delta_out.copy(), cache)
    batched = np.asarray(d_in if c.ref.is_delta else grads[c.ref.name], dtype=np.float64)
    if batched.shape != n.shape or close(c.a, batched) > c.tol:
        return
    if not c.ref.is_delta:
        yield (f"{c.what} is sample 0's share alone: the other {c.batch - 1} samples are left out (taken from "
               f"sample 0 only)"), parts[0].reshape(n.shape), None
        yield (f"{c.what} is the last sample's share alone: the loop over samples keeps only its last pass",
               parts[-1].reshape(n.shape), None)
    yield Candidate(f"{c.what} is right for one sample at a time but wrong on a batch of {c.batch} (the layer's own "
                    f"backward, run per sample and summed, matches numeric): right only for batch size 1 — the batch "
                    f"axis is mixed in (a reshape or sum over the wrong axis)", total.reshape(n.shape), None, True)
