"""Loop references of the modern layers (``layers_modern.py``, ``layers_norm.py``), written
straight from their definitions, one entry at a time — slow, obvious, and independent of the
vectorised code (``tests/test_layers13.py`` proves each pair equal).  Each returns what the
layer's forward or backward returns, for the same arguments.
"""
from __future__ import annotations

import math

import numpy as np

from . import conv as C

Array = np.ndarray
Pair = tuple[int, int]


# --------------------------------------------------------------------------- conv_transpose


def conv_transpose_forward(a: Array, W: Array, b: Array | None, s: Pair, p: Pair, op: Pair, d: Pair) -> Array:
    """``z̃[n,f, i·s+u·d, j·s+v·d] += a[n,c,i,j]·W[c,f,u,v]``, crop p, add b."""
    n, c, h, w = a.shape
    _, f, kh, kw = W.shape
    full = ((h - 1) * s[0] + C.effective_kernel(kh, d[0]) + op[0],
            (w - 1) * s[1] + C.effective_kernel(kw, d[1]) + op[1])
    zt = np.zeros((n, f) + full, dtype=np.result_type(a, W))
    for b_ in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    for o in range(f):
                        for u in range(kh):
                            for v in range(kw):
                                zt[b_, o, i * s[0] + u * d[0], j * s[1] + v * d[1]] += a[b_, ch, i, j] * W[ch, o, u, v]
    z = zt[:, :, p[0] : full[0] - p[0], p[1] : full[1] - p[1]].copy()
    if b is not None:
        z += b[None, :, None, None]
    return z


def conv_transpose_backward(a: Array, W: Array, delta: Array, s: Pair, p: Pair, d: Pair) -> tuple[Array, Array]:
    """δ^{l-1} and ∂C/∂W by the chain rule through the loop above: z[n,f,y,x] with
    ``y = i·s + u·d − p`` inside the output took ``a[n,c,i,j]·W[c,f,u,v]``."""
    n, c, h, w = a.shape
    _, f, kh, kw = W.shape
    ho, wo = delta.shape[-2:]
    da = np.zeros(a.shape, dtype=np.result_type(delta, W))
    dW = np.zeros(W.shape, dtype=np.result_type(delta, a))
    for b_ in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    for o in range(f):
                        for u in range(kh):
                            for v in range(kw):
                                y, x = i * s[0] + u * d[0] - p[0], j * s[1] + v * d[1] - p[1]
                                if 0 <= y < ho and 0 <= x < wo:
                                    da[b_, ch, i, j] += delta[b_, o, y, x] * W[ch, o, u, v]
                                    dW[ch, o, u, v] += delta[b_, o, y, x] * a[b_, ch, i, j]
    return da, dW


# --------------------------------------------------------------------------- upsample


def _source(i: int, size: int, scale: int) -> tuple[int, int, float]:
    """The two source rows of output row i (bilinear, align_corners False) and the weight of
    the second: ``y = max((i + ½)/s − ½, 0)``."""
    y = max((i + 0.5) / scale - 0.5, 0.0)
    lo = int(math.floor(y))
    return lo, min(lo + 1, size - 1), y - lo


def upsample_forward(a: Array, scale: int, mode: str) -> Array:
    n, c, h, w = a.shape
    z = np.zeros((n, c, h * scale, w * scale), dtype=a.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(h * scale):
                for j in range(w * scale):
                    if mode == "nearest":
                        z[b, ch, i, j] = a[b, ch, i // scale, j // scale]
                        continue
                    y0, y1, ly = _source(i, h, scale)
                    x0, x1, lx = _source(j, w, scale)
                    z[b, ch, i, j] = ((1 - ly) * ((1 - lx) * a[b, ch, y0, x0] + lx * a[b, ch, y0, x1])
                                      + ly * ((1 - lx) * a[b, ch, y1, x0] + lx * a[b, ch, y1, x1]))
    return z


def upsample_backward(delta: Array, scale: int, mode: str) -> Array:
    n, c, ho, wo = delta.shape
    h, w = ho // scale, wo // scale
    da = np.zeros((n, c, h, w), dtype=delta.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    g = delta[b, ch, i, j]
                    if mode == "nearest":
                        da[b, ch, i // scale, j // scale] += g
                        continue
                    y0, y1, ly = _source(i, h, scale)
                    x0, x1, lx = _source(j, w, scale)
                    da[b, ch, y0, x0] += (1 - ly) * (1 - lx) * g
                    da[b, ch, y0, x1] += (1 - ly) * lx * g
                    da[b, ch, y1, x0] += ly * (1 - lx) * g
                    da[b, ch, y1, x1] += ly * lx * g
    return da


# --------------------------------------------------------------------------- global pool


def global_pool_forward(a: Array, kind: str) -> tuple[Array, Array]:
    """z of shape (n, c) and the flat index of each channel's first maximum (max)."""
    n, c, h, w = a.shape
    z = np.zeros((n, c), dtype=a.dtype)
    arg = np.zeros((n, c), dtype=int)
    for b in range(n):
        for ch in range(c):
            best, where, total = None, 0, 0.0
            for k in range(h * w):
                v = a[b, ch, k // w, k % w]
                total += v
                if best is None or v > best:
                    best, where = v, k
            z[b, ch] = total / (h * w) if kind == "avg" else best
            arg[b, ch] = where
    return z, arg


def global_pool_backward(a: Array, delta: Array, kind: str) -> Array:
    n, c, h, w = a.shape
    _, arg = global_pool_forward(a, kind)
    da = np.zeros(a.shape, dtype=delta.dtype)
    for b in range(n):
        for ch in range(c):
            for k in range(h * w):
                if kind == "avg":
                    da[b, ch, k // w, k % w] = delta[b, ch] / (h * w)
                elif k == arg[b, ch]:
                    da[b, ch, k // w, k % w] = delta[b, ch]
    return da


# --------------------------------------------------------------------------- normalisation


def _groups_of(shape: tuple[int, ...], kind: str, groups: int) -> list[list[tuple[int, ...]]]:
    """The sets of entries normalised together, as lists of index tuples: per channel over
    (n, h, w) (batchnorm), or per sample and group of channels over (C/groups, h, w)."""
    n, c = shape[:2]
    spatial = list(np.ndindex(*shape[2:]))
    if kind == "batchnorm":
        return [[(b, ch) + sp for b in range(n) for sp in spatial] for ch in range(c)]
    cg = c // groups
    return [[(b, ch) + sp for ch in range(g * cg, (g + 1) * cg) for sp in spatial]
            for b in range(n) for g in range(groups)]


def norm_forward(x: Array, gamma: Array, beta: Array, eps: float, kind: str, groups: int = 1,
                 stats: tuple[Array, Array] | None = None) -> Array:
    """Batch norm (``kind: batchnorm``; ``stats`` = (running_mean, running_var) for eval) or
    group norm, one entry at a time."""
    z = np.zeros(x.shape, dtype=x.dtype)
    for members in _groups_of(x.shape, kind, groups):
        m = len(members)
        mu = sum(x[i] for i in members) / m
        var = sum((x[i] - mu) * (x[i] - mu) for i in members) / m
        for i in members:
            ch = i[1]
            if stats is not None:
                mu, var = stats[0][ch], stats[1][ch]
            z[i] = gamma[ch] * (x[i] - mu) / math.sqrt(var + eps) + beta[ch]
    return z


def norm_backward(x: Array, gamma: Array, delta: Array, eps: float, kind: str, groups: int = 1,
                  stats: tuple[Array, Array] | None = None) -> tuple[Array, Array, Array]:
    """δ^{l-1}, ∂C/∂γ, ∂C/∂β by the chain rule written entry by entry: with μ, σ² the set's
    own statistics, ``∂x̂_i/∂x_j = (1/σ)(1[i=j] − 1/m − x̂_i x̂_j/m)``."""
    dx = np.zeros(x.shape)
    dgamma, dbeta = np.zeros(gamma.shape), np.zeros(gamma.shape)
    for members in _groups_of(x.shape, kind, groups):
        m = len(members)
        if stats is None:
            mu = sum(x[i] for i in members) / m
            var = sum((x[i] - mu) * (x[i] - mu) for i in members) / m
        else:
            ch = members[0][1]
            mu, var = stats[0][ch], stats[1][ch]
        sigma = math.sqrt(var + eps)
        xhat = {i: (x[i] - mu) / sigma for i in members}
        for i in members:
            dgamma[i[1]] += delta[i] * xhat[i]
            dbeta[i[1]] += delta[i]
        for j in members:
            total = 0.0
            for i in members:
                if stats is not None:
                    dxhat = (i == j) / sigma
                else:
                    dxhat = ((i == j) - 1.0 / m - xhat[i] * xhat[j] / m) / sigma
                total += delta[i] * gamma[i[1]] * dxhat
            dx[j] = total
    return dx, dgamma, dbeta
