"""Catalogue families of convolutions (and transposed ones), built from the layer's geometry.

The geometry is the declared one or, for an undeclared layer with one 4-D parameter, one
inferred from its shape (``infer.py``); the kernel is found by its shape, whatever its name
(``W``, torch's ``weight``).  A family is tried only after the correct formula with that
geometry and kernel reproduces the numeric gradient, so a geometry that does not fit the
layer cannot lead to a confident, wrong sentence.  Each candidate is the gradient a usual
bug would give: the kernel rotated / flipped / transposed / quarter-turned, the groups'
kernels mixed up, the dilation ignored or applied twice, the stride ignored or its zeros at
any offset the stride allows, the padding cropped from one side.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from . import geometry as G
from .case import Case, Raw
from .infer import infer_conv, kernel_of

Array = np.ndarray
__all__ = ["conv_family", "conv_transpose_family"]


def _kernels(W: Array) -> list[tuple[Array, str]]:
    """The usual wrong kernels in place of W (o, c, kh, kw): rotated, flipped, transposed."""
    kernels = [(W[..., ::-1, ::-1], "ROT180(W) where W belongs (or W where ROT180(W) belongs): the kernel's "
                "rotation is wrong"),
               (W[..., ::-1, :], "W with one axis flipped (rows): ROT180 flips both"),
               (W[..., :, ::-1], "W with one axis flipped (columns): ROT180 flips both")]
    if W.shape[-1] == W.shape[-2]:  # a transposed or quarter-turned kernel has the same shape only if square
        kernels += [(W.swapaxes(-1, -2), "Wᵀ per kernel (W[u, v] read as W[v, u]): a transposed kernel, not a "
                     "rotated one"),
                    (np.rot90(W, 1, axes=(-2, -1)), "W rotated by 90°: rot90 where ROT180 belongs"),
                    (np.rot90(W, -1, axes=(-2, -1)), "W rotated by −90°: rot90 where ROT180 belongs")]
    return kernels


def _conv_setup(c: Case) -> tuple[G.Geometry, Array, Array, Array] | None:
    """The conv's geometry (declared, or inferred and verified), its kernel, δ at its output
    and its input (float64) — or None if this is no conv the catalogue can model."""
    if c.delta_out is None or c.a_prev is None or c.delta_out.ndim != 4 or c.a_prev.ndim != 4:
        return None
    d_out, a_prev = c.delta_out.astype(np.float64), c.a_prev.astype(np.float64)
    cin, cout = a_prev.shape[1], d_out.shape[1]

    def correct(g: G.Geometry) -> Array | None:
        found = kernel_of(c.layer, g, cin, cout)
        if found is None:
            return None
        name, W = found
        if c.ref.is_delta:
            return (G.conv_input_grad if g.op == "conv" else G.conv_transpose_input_grad)(g, d_out, W, c.n.shape[2:])
        if c.ref.name != name:
            return None
        return G.conv_weight_grad(g, a_prev, d_out) if g.op == "conv" else \
            G.conv_transpose_weight_grad(g, a_prev, d_out)

    def fits(g: G.Geometry) -> bool:
        model = correct(g)
        return model is not None and c.fits(model)

    g = c.geometry if c.geometry is not None else infer_conv(c.layer, a_prev, d_out, fits)
    if g is None or g.op not in ("conv", "conv_transpose") or not fits(g):
        return None
    found = kernel_of(c.layer, g, cin, cout)
    return None if found is None else (g, found[1], d_out, a_prev)


def _dilation_slips(subject: str, dilation: tuple[int, int], grad: Callable[[tuple[int, int]], Array]
                    ) -> Iterator[Raw]:
    """The dilation ignored (where the layer has one) and applied twice: ``grad(dilation)`` is
    the gradient the backward would make with that dilation."""
    dh, dw = dilation
    if (dh, dw) != (1, 1):
        yield f"{subject} with the dilation ignored (1 where the layer has {dh}x{dw})", grad((1, 1)), None
    yield (f"{subject} with the dilation applied twice ({dh * dh}x{dw * dw} where the layer has {dh}x{dw})",
           grad((dh * dh, dw * dw)), None)


def conv_family(c: Case) -> Iterator[Raw]:
    setup = _conv_setup(c)
    if setup is None or setup[0].op != "conv":
        return
    g, W, d_out, a_prev = setup
    if c.ref.is_delta:
        hw = c.n.shape[2:]
        for kernel, says in _kernels(W):
            yield f"δ is the backward of a conv slid with {says}", G.conv_input_grad(g, d_out, kernel, hw), None
        if g.groups > 1:
            Wg = W.reshape(g.groups, -1, *W.shape[1:])
            for k in range(1, g.groups):
                yield (f"δ of each group is made with the kernels of the group {k} after it (groups {g.groups}): "
                       f"the groups' kernels are mixed up",
                       G.conv_input_grad(g, d_out, np.roll(Wg, k, axis=0).reshape(W.shape), hw), None)
        yield from _dilation_slips("δ is the backward", g.dilation,
                                   lambda d: G.conv_input_grad(g, d_out, W, hw, dilation=d))
        (sh, sw), (ph, pw) = g.stride, g.padding
        if (sh, sw) != (1, 1):
            yield (f"δ is the backward with the stride ignored (1 where the layer has {sh}x{sw}): the stride's zeros "
                   f"were not inserted between δ's entries", G.conv_input_grad(replace(g, stride=(1, 1)), d_out, W, hw),
                   None)
            for off in ((oy, ox) for oy in range(sh) for ox in range(sw) if (oy, ox) != (0, 0)):
                yield (f"δ is the backward with the stride's zeros inserted at offset {off} (stride {sh}x{sw}): "
                       f"δ placed at i·s+{off[0]}, j·s+{off[1]} where i·s, j·s belong",
                       G.conv_input_grad(g, d_out, W, hw, offset=off), None)
        for top in sorted({0, ph, 2 * ph}):
            for left in sorted({0, pw, 2 * pw}):
                if (top, left) != (ph, pw):
                    yield (f"δ is the backward cropped at ({top}, {left}) where the padding ({ph}, {pw}) belongs: "
                           f"padding cropped from one side", G.conv_input_grad(g, d_out, W, hw, crop=(top, left)), None)
    else:
        if g.stride != (1, 1):
            yield (f"{c.what} is the correlation with the stride ignored (1 where the layer has {g.stride[0]}x"
                   f"{g.stride[1]}): ã read at i + u·d where i·s + u·d belongs",
                   G.conv_weight_grad(replace(g, stride=(1, 1)), a_prev, d_out), None)
        yield from _dilation_slips(f"{c.what} is the correlation", g.dilation,
                                   lambda d: G.conv_weight_grad(g, a_prev, d_out, dilation=d))


def conv_transpose_family(c: Case) -> Iterator[Raw]:
    """A transposed conv: its δ is an ordinary strided correlation of δ with W (no rotation)."""
    setup = _conv_setup(c)
    if setup is None or setup[0].op != "conv_transpose":
        return
    g, W, d_out, a_prev = setup
    if c.ref.is_delta:
        hw = c.n.shape[2:]
        for kernel, says in _kernels(W):
            yield (f"δ is the transposed conv's backward (a correlation of δ with W) made with {says}",
                   G.conv_transpose_input_grad(g, d_out, kernel, hw), None)
        yield from _dilation_slips("δ is the backward", g.dilation,
                                   lambda d: G.conv_transpose_input_grad(g, d_out, W, hw, dilation=d))
        return
    yield from _dilation_slips(f"{c.what} is the correlation", g.dilation,
                               lambda d: G.conv_transpose_weight_grad(g, a_prev, d_out, dilation=d))
