"""The geometry a diagnosis may use, and the backward passes of the usual bugs built from it.

``geometry_of(layer)`` reads it from a built-in layer (conv, dense, pool, activation) or
from what a plugin declares as a class attribute ``geometry = {"op": "conv", "kernel": 3,
"stride": 2, "padding": 1, "dilation": 1}`` (ops: ``conv``, ``conv_transpose``, ``dense``,
``avg_pool``, ``max_pool``, ``elementwise``; sizes int or [h, w]; ``groups`` for conv) — on
the plugin itself, or on the torch module / Function behind the torch adapter; a torch
``nn.Conv2d`` (sub)class carries its own.  Undeclared: ``None``, and only the transforms
that need no geometry are tried (and a conv's, inferred from its kernel's shape and
verified: ``infer.py``).

The reference operators below are the adjoints of a conv / pool forward written tap by tap
(a loop over the kh·kw taps, vectorised over samples, channels and pixels), with knobs that
reproduce a bug: another kernel, dilation, stride offset, divisor, overwrite instead of add.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

Array = np.ndarray
Pair = tuple[int, int]
OPS = ("conv", "conv_transpose", "dense", "avg_pool", "max_pool", "elementwise")
TORCH_CONV = ("kernel_size", "stride", "padding", "dilation", "groups")  # what an nn.Conv2d carries


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


def _wrapped(layer: Any) -> Iterator[Any]:
    """The layer and what it wraps: a plugin behind network.PluginLayer (``.layer``), the
    torch module or Function behind the torch adapter (``.module`` / ``.function``)."""
    seen: list[Any] = []
    todo = [layer]
    while todo:
        obj = todo.pop(0)
        if obj is None or any(obj is s for s in seen):
            continue
        seen.append(obj)
        yield obj
        todo += [getattr(obj, name, None) for name in ("layer", "module", "function")]


def _torch_conv(obj: Any) -> dict | None:
    """An nn.Conv2d's own geometry (its attributes), if obj is one with zero padding."""
    values = [getattr(obj, name, None) for name in TORCH_CONV]
    if any(v is None for v in values) or isinstance(values[2], str) or \
            getattr(obj, "padding_mode", "zeros") != "zeros" or not isinstance(values[0], (tuple, list)):
        return None
    op = "conv_transpose" if getattr(obj, "transposed", False) else "conv"
    return {"op": op, **dict(zip(("kernel", "stride", "padding", "dilation", "groups"), values))}


def geometry_of(layer: Any) -> Geometry | None:
    """The layer's geometry: a built-in's own, a plugin's (or the torch module's behind it)
    declared ``geometry``, an nn.Conv2d's attributes, else None."""
    for obj in _wrapped(layer):
        declared = getattr(obj, "geometry", None)
        if not isinstance(declared, dict) and obj is not layer:
            declared = _torch_conv(obj)
        if isinstance(declared, dict):
            try:
                return Geometry.declared(declared)
            except (ValueError, TypeError, KeyError, IndexError):
                return None
    kind = getattr(layer, "kind", "")
    if kind == "conv" and getattr(layer, "mode", "correlation") == "correlation":
        return Geometry("conv", layer.k, layer.s, layer.p, layer.d, int(getattr(layer, "groups", 1)))
    if kind == "conv_transpose":
        return Geometry("conv_transpose", layer.k, layer.s, layer.p, layer.d)
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


def _grouped(x: Array, groups: int) -> Array:
    """(n, C, h, w) -> (n, groups, C/groups, h, w)."""
    return x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])


def conv_input_grad(g: Geometry, delta: Array, W: Array, in_hw: Pair, dilation: Pair | None = None,
                    offset: Pair = (0, 0), crop: Pair | None = None) -> Array:
    """δ at a conv layer's input: ``Σ_{o,u,v} W[o,c,u,v] δ[n,o,i,j]`` (o in c's group) added
    at padded input ``(i·s + u·d, j·s + v·d)``, then the padding cropped (``crop``: from the
    top/left, else p).  delta of shape (n, o, ho, wo), W (o, c/groups, kh, kw) -> (n, c, *in_hw)."""
    (ph, pw), G = g.padding, g.groups
    hp, wp = in_hw[0] + 2 * ph, in_hw[1] + 2 * pw
    out = np.zeros((delta.shape[0], G, W.shape[1], hp, wp), dtype=np.result_type(delta, W))
    d, Wg = _grouped(delta, G), W.reshape(G, W.shape[0] // G, *W.shape[1:])
    for u, v, rows, rok, cols, cok in taps(g, (hp, wp), delta.shape[2:], dilation, offset):
        part = np.einsum("ngoij,goc->ngcij", d[:, :, :, rok][..., cok], Wg[:, :, :, u, v])
        out[..., rows[rok][:, None], cols[cok][None, :]] += part
    top, left = crop if crop is not None else (ph, pw)
    return out.reshape(delta.shape[0], -1, hp, wp)[:, :, top: top + in_hw[0], left: left + in_hw[1]]


def conv_weight_grad(g: Geometry, a_prev: Array, delta: Array, dilation: Pair | None = None) -> Array:
    """∂C/∂W of a conv layer: ``Σ_{n,i,j} ã[n,c,i·s+u·d,j·s+v·d] δ[n,o,i,j]`` (c in o's group;
    taps outside ã read 0).  a_prev of shape (n, c, h, w), delta (n, o, ho, wo) -> (o, c/groups, kh, kw)."""
    (ph, pw), G = g.padding, g.groups
    a_pad = _grouped(np.pad(a_prev, ((0, 0), (0, 0), (ph, ph), (pw, pw))), G)
    d = _grouped(delta, G)
    dW = np.zeros((G, d.shape[2], a_pad.shape[2]) + g.kernel, dtype=np.result_type(a_prev, delta))
    for u, v, rows, rok, cols, cok in taps(g, a_pad.shape[3:], delta.shape[2:], dilation):
        read = a_pad[:, :, :, rows[rok]][..., cols[cok]]
        dW[..., u, v] = np.einsum("ngcij,ngoij->goc", read, d[:, :, :, rok][..., cok])
    return dW.reshape(-1, *dW.shape[2:])


def conv_transpose_input_grad(g: Geometry, delta: Array, W: Array, in_hw: Pair, dilation: Pair | None = None) -> Array:
    """δ at a transposed conv's input: the ordinary strided correlation of the padded δ,
    ``Σ_{f,u,v} W[c,f,u,v] δ̃[n,f,i·s+u·d,j·s+v·d]``.  delta (n, f, ho, wo), W (c, f, kh, kw) -> (n, c, *in_hw)."""
    (ph, pw) = g.padding
    d_pad = np.pad(delta, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((delta.shape[0], W.shape[0]) + tuple(in_hw), dtype=np.result_type(delta, W))
    for u, v, rows, rok, cols, cok in taps(g, d_pad.shape[2:], in_hw, dilation):
        read = d_pad[:, :, rows[rok]][:, :, :, cols[cok]]
        out[:, :, np.flatnonzero(rok)[:, None], np.flatnonzero(cok)[None, :]] += \
            np.einsum("nfij,cf->ncij", read, W[:, :, u, v])
    return out


def conv_transpose_weight_grad(g: Geometry, a_prev: Array, delta: Array, dilation: Pair | None = None) -> Array:
    """∂C/∂W of a transposed conv: ``Σ_{n,i,j} a[n,c,i,j] δ̃[n,f,i·s+u·d,j·s+v·d]`` — a conv's
    ∂W with the roles of input and δ exchanged.  a_prev (n, c, h, w), delta (n, f, ho, wo) -> (c, f, kh, kw)."""
    return conv_weight_grad(replace(g, groups=1), delta, a_prev, dilation)


def pool_input_grad(g: Geometry, delta: Array, a_prev: Array, route: str = "first", divisor: float | None = None,
                    overwrite: bool = False) -> Array:
    """δ at a pooling layer's input: each window's δ shared equally (``route="avg"``, divided
    by ``divisor``, default the window size) or sent to the window's maximum (``first``), its
    minimum (``argmin``), the transposed tap (``transposed``: the max's column-major index read
row-major, which is tap (v, u) on a square window) or every entry (``every``);
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
        if route == "transposed":  # the max's column-major index read row-major: for kh = kw, tap (v, u)
            pick = (pick % kw) * kh + pick // kw
        share = (np.arange(kh * kw)[:, None, None, None, None] == pick[None]) * delta[None]
    if overwrite:  # windows written in raster order, each over the last: the smallest tap wins
        for t in reversed(range(len(window))):
            _, _, rows, cols = window[t]
            out[:, :, rows[:, None], cols[None, :]] = share[t]
        return out
    for t, (_, _, rows, cols) in enumerate(window):
        out[:, :, rows[:, None], cols[None, :]] += share[t]
    return out
