"""Grouped (and depthwise) convolution: the conv primitives of ``conv.py`` with ``groups``.

The C input channels and F filters are cut into ``groups`` contiguous blocks (PyTorch's
``conv2d(groups=…)``): filter o belongs to group ``g = o // (F/groups)`` and reads only the
channels ``g·Cg … (g+1)·Cg − 1``, ``Cg = C/groups``; ``W`` is of shape (F, Cg, kh, kw).
``groups = C`` (and F a multiple of C) is the depthwise convolution.

Written with the derivation's notation, per group g (o, c in the group's own blocks)::

    z[n,o,i,j]      = Σ_{c,u,v} W[o,c,u,v] · ã[n, g·Cg + c, i·s+u·d, j·s+v·d]
    δ^{l-1}          = full convolution of δ^l with W, group by group (cropped by the padding)
    ∂C/∂W[o,c,u,v]  = Σ_{n,i,j} δ[n,o,i,j] · ã[n, g·Cg + c, i·s+u·d, j·s+v·d]

— the ungrouped formulas of ``conv.py`` with a block-diagonal kernel (``dense_kernel``).
Each vectorised function has its loop reference (``*_naive``) beside it; ``tests/test_layers13.py``
proves each pair equal.
"""
from __future__ import annotations

import numpy as np

from . import conv as C

Array = np.ndarray
Pair = tuple[int, int]


def dense_kernel(W: Array, groups: int, channels: int) -> Array:
    """The grouped kernel W (of shape (F, Cg, kh, kw)) as the ungrouped one it equals:
    of shape (F, C, kh, kw), zero outside each filter's own group of channels."""
    f, cg, kh, kw = W.shape
    fg = f // groups
    dense = np.zeros((groups, fg, groups, cg, kh, kw), dtype=W.dtype)
    g = np.arange(groups)
    dense[g, :, g] = W.reshape(groups, fg, cg, kh, kw)
    return dense.reshape(f, channels, kh, kw)


def correlate(cols: Array, W: Array, groups: int, out_hw: tuple[int, int]) -> Array:
    """Grouped valid correlation from the forward's columns.

    cols of shape (n, C·kh·kw, Ho·Wo) (``conv.im2col``, rows in (c, u, v) order, so the
    groups are contiguous row blocks), W of shape (F, Cg, kh, kw) -> z of shape (n, F, Ho, Wo):
    one batched matmul ``W_g (F/G, Cg·kh·kw) @ cols_g (Cg·kh·kw, Ho·Wo)`` over the groups."""
    n = cols.shape[0]
    f = W.shape[0]
    cg = cols.reshape(n, groups, -1, cols.shape[-1])
    wg = W.reshape(groups, f // groups, -1)
    return np.matmul(wg[None], cg).reshape((n, f) + tuple(out_hw))


def full_convolve(delta: Array, W: Array, groups: int, in_hw: tuple[int, int], s: Pair = (1, 1),
                  d: Pair = (1, 1)) -> Array:
    """δ w.r.t. the padded input: each group's δ spread back through its own kernel,
    ``cols_g = W_gᵀ @ δ_g`` then ``col2im`` — the full convolution of δ with W, group by group.
    delta of shape (n, F, Ho, Wo) -> of shape (n, C, *in_hw)."""
    n, f, ho, wo = delta.shape
    _, cg, kh, kw = W.shape
    wg = W.reshape(groups, f // groups, -1)  # (G, F/G, Cg·kh·kw)
    cols = np.matmul(wg.transpose(0, 2, 1)[None], delta.reshape(n, groups, f // groups, -1))
    return C.col2im(cols.reshape(n, groups * cg, kh, kw, ho, wo), in_hw, s, d)


def weight_grad(cols: Array, delta: Array, groups: int, k: Pair) -> Array:
    """∂C/∂W: per group, the valid correlation of that group's channels of ã with δ, summed
    over the batch.  cols of shape (n, C·kh·kw, Ho·Wo), delta of shape (n, F, Ho, Wo) ->
    of shape (F, Cg, kh, kw)."""
    n, f = delta.shape[:2]
    cg = cols.reshape(n, groups, -1, cols.shape[-1])  # (n, G, Cg·kh·kw, P)
    dg = delta.reshape(n, groups, f // groups, -1)  # (n, G, F/G, P)
    g = np.matmul(dg, cg.transpose(0, 1, 3, 2)).sum(axis=0)  # (G, F/G, Cg·kh·kw)
    return g.reshape(f, -1, k[0], k[1])


# --------------------------------------------------------------------------- loop references


def correlate_naive(a_pad: Array, W: Array, groups: int, s: Pair = (1, 1), d: Pair = (1, 1)) -> Array:
    """Loop reference of :func:`correlate`, on the padded input of shape (n, C, H, W)."""
    n, c, H, Wd = a_pad.shape
    f, cg, kh, kw = W.shape
    ho, wo = C.out_size(H, kh, s[0], 0, d[0]), C.out_size(Wd, kw, s[1], 0, d[1])
    z = np.zeros((n, f, ho, wo), dtype=np.result_type(a_pad, W))
    for b in range(n):
        for o in range(f):
            g = o // (f // groups)
            for i in range(ho):
                for j in range(wo):
                    for ch in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                z[b, o, i, j] += W[o, ch, u, v] * a_pad[b, g * cg + ch, i * s[0] + u * d[0],
                                                                          j * s[1] + v * d[1]]
    return z


def full_convolve_naive(delta: Array, W: Array, groups: int, in_hw: tuple[int, int], s: Pair = (1, 1),
                        d: Pair = (1, 1)) -> Array:
    """Loop reference of :func:`full_convolve`: ``∂C/∂ã[n, g·Cg+c, y, x] = Σ δ[n,o,i,j] W[o,c,u,v]``
    over the filters o of group g and ``i·s + u·d = y, j·s + v·d = x``."""
    n, f, ho, wo = delta.shape
    _, cg, kh, kw = W.shape
    out = np.zeros((n, groups * cg) + tuple(in_hw), dtype=np.result_type(delta, W))
    for b in range(n):
        for o in range(f):
            g = o // (f // groups)
            for i in range(ho):
                for j in range(wo):
                    for ch in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                out[b, g * cg + ch, i * s[0] + u * d[0], j * s[1] + v * d[1]] += (
                                    delta[b, o, i, j] * W[o, ch, u, v])
    return out


def weight_grad_naive(a_pad: Array, delta: Array, groups: int, k: Pair, s: Pair = (1, 1),
                      d: Pair = (1, 1)) -> Array:
    """Loop reference of :func:`weight_grad`."""
    n, c = a_pad.shape[:2]
    _, f, ho, wo = delta.shape
    cg = c // groups
    g_w = np.zeros((f, cg) + tuple(k), dtype=np.result_type(a_pad, delta))
    for o in range(f):
        g = o // (f // groups)
        for ch in range(cg):
            for u in range(k[0]):
                for v in range(k[1]):
                    for b in range(n):
                        for i in range(ho):
                            for j in range(wo):
                                g_w[o, ch, u, v] += delta[b, o, i, j] * a_pad[b, g * cg + ch, i * s[0] + u * d[0],
                                                                             j * s[1] + v * d[1]]
    return g_w
