"""The geometry a diagnosis may use, and the backward passes of the usual bugs built from it.

``geometry_of(layer)`` reads it from a built-in layer (conv, dense, pool, activation) or
from what a plugin declares as a class attribute ``geometry = {"op": "conv", "kernel": 3,
"stride": 2, "padding": 1, "dilation": 1}`` (ops: ``conv``, ``dense``, ``avg_pool``,
``max_pool``, ``elementwise``; sizes int or [h, w]).  Undeclared: ``None``, and only the
transforms that need no geometry are tried.

The reference operators below are the adjoints of a conv / pool forward written tap by tap
(a loop over the kh·kw taps, vectorised over samples, channels and pixels), with knobs that
reproduce a bug: another kernel, dilation, stride offset, divisor, overwrite instead of add.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray
Pair = tuple[int, int]
OPS = ("conv", "dense", "avg_pool", "max_pool", "elementwise")


def _pair(v: Any) -> Pair:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass(frozen=True)
class Geometry:
    """What a layer's backward is built from: its op and, for sliding ops, kernel (pool
    window), stride, padding, dilation, groups."""

    op: str
    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1

    @classmethod
    def declared(cls, spec: dict) -> Geometry:
        op = spec.get("op")
        if op not in OPS:
            raise ValueError(f"geometry op {op!r}; known: {', '.join(OPS)}")
        kernel = _pair(spec.get("kernel", spec.get("size", 1)))
        stride = _pair(spec.get("stride", kernel if op.endswith("pool") else 1))
        return cls(op, kernel, stride, _pair(spec.get("padding", 0)), _pair(spec.get("dilation", 1)),
                   int(spec.get("groups", 1)))


def geometry_of(layer: Any) -> Geometry | None:
    """The layer's geometry: a built-in's own, a plugin's declared ``geometry``, else None."""
    declared = getattr(layer, "geometry", None)
    if declared is None:  # a plugin behind network.PluginLayer: the user's own layer declares it
        declared = getattr(getattr(layer, "layer", None), "geometry", None)
    if isinstance(declared, dict):
        try:
            return Geometry.declared(declared)
        except (ValueError, TypeError, KeyError, IndexError):
            return None
    kind = getattr(layer, "kind", "")
    if kind == "conv" and getattr(layer, "mode", "correlation") == "correlation":
        return Geometry("conv", layer.k, layer.s, layer.p, layer.d, int(getattr(layer, "groups", 1)))
    if kind == "dense":
        return Geometry("dense")
    if kind == "pool":
        return Geometry(f"{layer.pool}_pool", layer.k, layer.s)
    if kind == "activation":
        return Geometry("elementwise")
    return None


def _rows(start: int, step: int, count: int, size: int) -> tuple[Array, Array]:
    """Positions ``start + step·i`` (i < count) and which of them fall inside [0, size)."""
    pos = start + step * np.arange(count)
    return pos, (pos >= 0) & (pos < size)


def taps(g: Geometry, in_hw: Pair, out_hw: Pair, dilation: Pair | None = None,
         offset: Pair = (0, 0)) -> Iterator[tuple[int, int, Array, Array, Array, Array]]:
    """For every tap (u, v): the padded-input rows and columns each output reads, and which
    of them exist — ``i·s + u·d + offset`` (``dilation``/``offset`` model a bug)."""
    (kh, kw), (sh, sw) = g.kernel, g.stride
    dh, dw = dilation or g.dilation
    for u in range(kh):
        rows, rok = _rows(u * dh + offset[0], sh, out_hw[0], in_hw[0])
        for v in range(kw):
            cols, cok = _rows(v * dw + offset[1], sw, out_hw[1], in_hw[1])
            yield u, v, rows, rok, cols, cok


def conv_input_grad(g: Geometry, delta: Array, W: Array, in_hw: Pair, dilation: Pair | None = None,
                    offset: Pair = (0, 0), crop: Pair | None = None) -> Array:
    """δ at a conv layer's input: ``Σ_{o,u,v} W[o,c,u,v] δ[n,o,i,j]`` added at padded input
    ``(i·s + u·d, j·s + v·d)``, then the padding cropped (``crop``: from the top/left, else
    p).  delta of shape (n, o, ho, wo), W (o, c, kh, kw) -> (n, c, *in_hw)."""
    (ph, pw) = g.padding
    hp, wp = in_hw[0] + 2 * ph, in_hw[1] + 2 * pw
    out = np.zeros((delta.shape[0], W.shape[1], hp, wp), dtype=np.result_type(delta, W))
    for u, v, rows, rok, cols, cok in taps(g, (hp, wp), delta.shape[2:], dilation, offset):
        part = np.einsum("noij,oc->ncij", delta[:, :, rok][:, :, :, cok], W[:, :, u, v])
        out[:, :, rows[rok][:, None], cols[cok][None, :]] += part
    top, left = crop if crop is not None else (ph, pw)
    return out[:, :, top: top + in_hw[0], left: left + in_hw[1]]


def conv_weight_grad(g: Geometry, a_prev: Array, delta: Array, dilation: Pair | None = None) -> Array:
    """∂C/∂W of a conv layer: ``Σ_{n,i,j} ã[n,c,i·s+u·d,j·s+v·d] δ[n,o,i,j]`` (taps outside ã
    read 0).  a_prev of shape (n, c, h, w), delta (n, o, ho, wo) -> (o, c, kh, kw)."""
    (ph, pw) = g.padding
    a_pad = np.pad(a_prev, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dW = np.zeros((delta.shape[1], a_prev.shape[1]) + g.kernel, dtype=np.result_type(a_prev, delta))
    for u, v, rows, rok, cols, cok in taps(g, a_pad.shape[2:], delta.shape[2:], dilation):
        read = a_pad[:, :, rows[rok]][:, :, :, cols[cok]]
        dW[:, :, u, v] = np.einsum("ncij,noij->oc", read, delta[:, :, rok][:, :, :, cok])
    return dW


def pool_input_grad(g: Geometry, delta: Array, a_prev: Array, route: str = "first", divisor: float | None = None,
                    overwrite: bool = False) -> Array:
    """δ at a pooling layer's input: each window's δ shared equally (``route="avg"``, divided
    by ``divisor``, default the window size) or sent to the window's maximum (``first``), its
    minimum (``argmin``), the transposed tap (``transposed``) or every entry (``every``);
    windows overlapping add up unless ``overwrite``.  delta (n, c, ho, wo) -> a_prev's shape."""
    kh, kw = g.kernel
    out = np.zeros(a_prev.shape, dtype=np.result_type(delta, a_prev))
    window = [(u, v, rows, cols) for u, v, rows, _, cols, _ in taps(g, a_prev.shape[2:], delta.shape[2:])]
    reads = np.stack([a_prev[:, :, rows][:, :, :, cols] for _, _, rows, cols in window])  # (kh·kw, n, c, ho, wo)
    if route == "avg":
        share = np.broadcast_to(delta / (divisor or kh * kw), reads.shape)
    elif route == "every":
        share = np.broadcast_to(delta, reads.shape)
    else:
        pick = np.argmin(reads, axis=0) if route == "argmin" else np.argmax(reads, axis=0)
        if route == "transposed" and kh == kw:
            pick = (pick % kw) * kw + pick // kw
        share = (np.arange(kh * kw)[:, None, None, None, None] == pick[None]) * delta[None]
    if overwrite:  # windows written in raster order, each over the last: the smallest tap wins
        for t in reversed(range(len(window))):
            _, _, rows, cols = window[t]
            out[:, :, rows[:, None], cols[None, :]] = share[t]
        return out
    for t, (_, _, rows, cols) in enumerate(window):
        out[:, :, rows[:, None], cols[None, :]] += share[t]
    return out
