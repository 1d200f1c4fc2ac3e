"""Which parameter is a conv layer's kernel, and a conv's geometry when nothing declares it.

The kernel is found by its shape, not its name (``W`` in cnngrad and the zoo, ``weight`` in
torch, ``conv.weight`` in a torch container): the 4-D parameter of shape
(out channels, in channels / groups, kh, kw) for a conv, (in channels, out channels, kh, kw)
for a transposed conv.  A layer that declares no geometry but has exactly one 4-D parameter
and 4-D input and output may still be a conv: every stride, dilation and padding (up to 3, 3,
and d·(k − 1)) that gives the layer's output size is tried, and a geometry is used only if
the correct conv formula with it reproduces the numeric gradient (``Case.fits``) — so an
inferred geometry never leads to a sentence it cannot back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import product
from typing import Any

import numpy as np

from .geometry import Geometry

Array = np.ndarray
SEARCH = 3  # strides and dilations tried when inferring a conv's geometry
MAX_TRIED = 64  # geometries verified at most


def kernel_of(layer: Any, g: Geometry, in_channels: int, out_channels: int) -> tuple[str, Array] | None:
    """(name, array) of the layer's kernel for geometry g, found by shape; None if not exactly one
    (``W`` preferred when several fit)."""
    params = getattr(layer, "params", None) or {}
    if g.op == "conv_transpose":
        want = (in_channels, out_channels) + g.kernel
    else:
        want = (out_channels, in_channels // max(g.groups, 1)) + g.kernel
    fit = [(k, v) for k, v in params.items() if np.shape(v) == want]
    if len(fit) > 1:
        fit = [(k, v) for k, v in fit if k == "W"]
    return (fit[0][0], np.asarray(fit[0][1], dtype=np.float64)) if len(fit) == 1 else None


def _axis(size: int, out: int, k: int) -> Iterator[tuple[int, int, int]]:
    """(stride, dilation, padding) giving ``out`` from ``size`` with kernel k."""
    for s, d in product(range(1, SEARCH + 1), range(1, SEARCH + 1)):
        if k == 1 and d > 1:
            continue
        for p in range(0, d * (k - 1) + 1):
            if (size + 2 * p - d * (k - 1) - 1) // s + 1 == out:
                yield s, d, p


def infer_conv(layer: Any, a_prev: Array, delta_out: Array, fits: Callable[[Geometry], bool]) -> Geometry | None:
    """A conv geometry for an undeclared layer with one 4-D parameter, verified by ``fits``
    (the correct formula with it reproduces the numeric gradient), or None."""
    quads = [np.shape(v) for v in (getattr(layer, "params", None) or {}).values() if np.ndim(v) == 4]
    if len(quads) != 1 or a_prev.ndim != 4 or delta_out.ndim != 4:
        return None
    o, cg, kh, kw = quads[0]
    c = a_prev.shape[1]
    if o != delta_out.shape[1] or cg == 0 or c % cg or o % (c // cg):
        return None
    rows = list(_axis(a_prev.shape[2], delta_out.shape[2], kh))
    cols = list(_axis(a_prev.shape[3], delta_out.shape[3], kw))
    tried = sorted(product(rows, cols), key=lambda rc: (rc[0] != rc[1], rc[0][0] + rc[1][0], rc[0][1] + rc[1][1]))
    for (sh, dh, ph), (sw, dw, pw) in tried[:MAX_TRIED]:
        g = Geometry("conv", (kh, kw), (sh, sw), (ph, pw), (dh, dw), c // cg)
        if fits(g):
            return g
    return None
