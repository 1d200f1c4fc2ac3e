"""The few convolution primitives cnngrad's conv layer is built from.

Every fast (vectorised numpy) primitive has a naive loop reference right beside it
(``*_naive``); ``tests/test_conv.py`` proves each pair equal.  Arrays are NCHW.

Notation (CONVENTIONS.md, the seed document):

* correlation (what frameworks call convolution)::

      z[n,o,i,j] = Σ_{c,u,v} W[o,c,u,v] · ã[n,c, i·s + u·d, j·s + v·d]

* true convolution is the same with ``ROT180(W)`` in place of ``W``.

The backward pass of a correlation layer is, exactly as in the seed,

* ``δ^{l-1} = full convolution of δ^l with W``  (= full *correlation* of δ^l with
  ``ROT180(W)``), after dilating δ^l with s−1 zeros for stride s; then crop the padding;
* ``∂C/∂W  = valid correlation of ã^{l-1} with δ^l``.

Each correlation is matmuls over unrolled windows: im2col (every kh·kw window a column) in
general, or at stride 1, where it measured faster, the windows unrolled along rows only
(``unroll_rows``: kw shifted copies, each kernel row a slice of them; ``correlate_rows``,
``weight_grad_rows``).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

Pair = tuple[int, int]


def pair(v: int | list[int] | tuple[int, int]) -> Pair:
    """``3 -> (3, 3)``, ``[3, 5] -> (3, 5)``."""
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def effective_kernel(k: int, d: int) -> int:
    """Extent of a k-tap kernel dilated by d: ``d·(k−1) + 1``."""
    return d * (k - 1) + 1


def out_size(size: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Output length ``⌊(H + 2p − d(k−1) − 1)/s⌋ + 1`` (may be ≤ 0 for a bad config)."""
    return (size + 2 * p - effective_kernel(k, d)) // s + 1


# --------------------------------------------------------------------------- helpers


def rot180(W: np.ndarray) -> np.ndarray:
    """ROT180 of the kernel: flip both spatial axes (the last two), ``w_{-x,-y}``."""
    return W[..., ::-1, ::-1]


def pad(x: np.ndarray, p: Pair) -> np.ndarray:
    """Zero-pad the last two axes by ``p = (ph, pw)`` on each side."""
    ph, pw = p
    if ph == 0 and pw == 0:
        return x
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (h + 2 * ph, w + 2 * pw), dtype=x.dtype)  # cheaper than np.pad
    out[..., ph : ph + h, pw : pw + w] = x
    return out


def crop(x: np.ndarray, p: Pair) -> np.ndarray:
    """Inverse of :func:`pad`: drop ``p = (ph, pw)`` from each side of the last two axes."""
    ph, pw = p
    h, w = x.shape[-2:]
    return x[..., ph : h - ph, pw : w - pw]


def dilate(x: np.ndarray, s: Pair) -> np.ndarray:
    """Insert ``s−1`` zeros between neighbouring entries of the last two axes.

    ``(…, h, w) -> (…, (h−1)·sh + 1, (w−1)·sw + 1)``.  For a stride-s layer, δ dilated
    this way sits on the grid of the stride-1 layer it was sampled from.
    """
    sh, sw = s
    if sh == 1 and sw == 1:
        return x
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + ((h - 1) * sh + 1, (w - 1) * sw + 1), dtype=x.dtype)
    out[..., ::sh, ::sw] = x
    return out


def windows(x: np.ndarray, k: Pair, s: Pair = (1, 1), d: Pair = (1, 1), writeable: bool = False) -> np.ndarray:
    """The receptive fields (im2col as a strided view, no copy).

    x of shape (n, c, H, W) -> view of shape (n, c, Ho, Wo, kh, kw) with
    ``view[n, c, i, j, u, v] = x[n, c, i·sh + u·dh, j·sw + v·dw]``; ``writeable`` for
    ``paste_at``, which writes through it.
    """
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    n, c, H, W = x.shape
    ho, wo = out_size(H, kh, sh, 0, dh), out_size(W, kw, sw, 0, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel (dilation {d}) does not fit a {H}x{W} map")
    s0, s1, s2, s3 = x.strides  # the view by its strides (sliding_window_view's checks cost 3x)
    return as_strided(x, (n, c, ho, wo, kh, kw), (s0, s1, s2 * sh, s3 * sw, s2 * dh, s3 * dw), writeable=writeable)


def im2col(x: np.ndarray, k: Pair, s: Pair = (1, 1), d: Pair = (1, 1)) -> np.ndarray:
    """The receptive fields unrolled into columns (a copy), the layout the matmuls use.

    x of shape (n, c, H, W) -> of shape (n, c·kh·kw, Ho·Wo), rows in (c, u, v) order,
    columns in (i, j) order.
    """
    v = windows(x, k, s, d)  # (n, c, Ho, Wo, kh, kw)
    n, c, ho, wo, kh, kw = v.shape
    return v.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)


def col2im(cols: np.ndarray, in_hw: tuple[int, int], s: Pair = (1, 1), d: Pair = (1, 1)) -> np.ndarray:
    """The adjoint of :func:`im2col`: add every column entry back where it was read from.

    cols of shape (n, c, kh, kw, Ho, Wo) -> of shape (n, c, *in_hw), entry (u, v, i, j)
    added at ``[i·sh + u·dh, j·sw + v·dw]``: one strided add of a whole (n, c, Ho, Wo)
    slab per tap (u, v) — a loop over the kh·kw taps, not the pixels.
    """
    n, c, kh, kw, ho, wo = cols.shape
    H, W = in_hw
    out = np.zeros((n, c, H, W), dtype=cols.dtype)
    for u in range(kh):
        y = u * d[0]
        for v in range(kw):
            x = v * d[1]
            out[:, :, y : y + s[0] * (ho - 1) + 1 : s[0], x : x + s[1] * (wo - 1) + 1 : s[1]] += cols[:, :, u, v]
    return out


# --------------------------------------------------------------------------- windows of rows


def crop_at(x: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int,
            rows: np.ndarray | None = None) -> np.ndarray:
    """Row g's window ``x[rows[g], :, y0[g]:y0[g]+h, x0[g]:x0[g]+w]`` for every g at once
    (``rows`` defaults to 0, 1, …).  x of shape (N, c, H, W) -> of shape (G, c, h, w), a copy.

    Where consecutive rows share a window (a chunk of entries at one or two positions, each
    a run of rows), each run is a slice of x and a take of its rows (2-4x faster than the
    gather through a window view that serves the rest)."""
    rows = np.arange(len(y0)) if rows is None else rows
    runs = _runs(y0, x0, h, w, x.shape[-2:])
    if runs is None:
        v = windows(x, (h, w))  # (N, c, H−h+1, W−w+1, h, w), a view (sliding_window_view's checks cost more)
        return v[rows, :, y0, x0]
    out = np.empty((len(y0), x.shape[1], h, w), dtype=x.dtype)
    for lo, hi, y, xx in runs:  # mode="clip": a take into ``out`` unbuffered (the rows are valid)
        np.take(x[..., y:y + h, xx:xx + w], rows[lo:hi], axis=0, out=out[lo:hi], mode="clip")
    return out


RUNS_MOST = 4  # runs of rows sharing a window that crop_at and paste_at take one by one


def _runs(y0: np.ndarray, x0: np.ndarray, h: int, w: int, hw: tuple[int, ...]
          ) -> list[tuple[int, int, int, int]] | None:
    """Consecutive rows sharing their h×w window at (y0, x0), as runs (lo, hi, y, x), if
    there are at most ``RUNS_MOST`` of them and every window lies inside a map of size hw."""
    if len(y0) == 0:
        return None
    starts = np.flatnonzero((y0[1:] != y0[:-1]) | (x0[1:] != x0[:-1]))
    if len(starts) >= RUNS_MOST:
        return None
    bounds = [0, *(starts + 1).tolist(), len(y0)]
    runs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        y, xx = int(y0[lo]), int(x0[lo])
        if not (0 <= y <= hw[0] - h and 0 <= xx <= hw[1] - w):
            return None
        runs.append((lo, hi, y, xx))
    return runs


def paste_at(x: np.ndarray, patch: np.ndarray, y0: np.ndarray, x0: np.ndarray) -> None:
    """In place: ``x[g, :, y0[g]+a, x0[g]+b] = patch[g, :, a, b]`` for every g, a, b that
    falls inside x (the rest of the patch is dropped).

    Runs of consecutive rows sharing a window inside x (``crop_at``) are written slice by
    slice; otherwise rows whose patch lies wholly inside x are written through a window view
    of x, one indexed assignment for all of them (boolean masks over every entry cost 10% of
    a deep net's check); the rest, at the borders, by ``_paste_clipped``."""
    h, w = patch.shape[-2:]
    H, W = x.shape[-2:]
    runs = _runs(y0, x0, h, w, (H, W))
    if runs is not None:
        for lo, hi, y, xx in runs:
            x[lo:hi, :, y:y + h, xx:xx + w] = patch[lo:hi]
        return
    inside = (y0 >= 0) & (y0 + h <= H) & (x0 >= 0) & (x0 + w <= W)
    if inside.all():
        windows(x, (h, w), writeable=True)[np.arange(len(y0)), :, y0, x0] = patch
        return
    some = np.flatnonzero(inside)
    if some.size:
        windows(x, (h, w), writeable=True)[some, :, y0[some], x0[some]] = patch[some]
    rest = np.flatnonzero(~inside)
    _paste_clipped(x, patch[rest], y0[rest], x0[rest], rest)


def _paste_clipped(x: np.ndarray, patch: np.ndarray, y0: np.ndarray, x0: np.ndarray, into: np.ndarray) -> None:
    """``paste_at`` entry by entry, through masks of what falls inside x; patch row g goes
    to row ``into[g]`` of x."""
    g, _, h, w = patch.shape
    H, W = x.shape[-2:]
    rows = np.broadcast_to(y0[:, None, None] + np.arange(h)[None, :, None], (g, h, w))
    cols = np.broadcast_to(x0[:, None, None] + np.arange(w)[None, None, :], (g, h, w))
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    which = np.broadcast_to(into[:, None, None], (g, h, w))
    x.transpose(0, 2, 3, 1)[which[inside], rows[inside], cols[inside]] = patch.transpose(0, 2, 3, 1)[inside]


def window_after(y0: np.ndarray, h: int, size: int, k: int, s: int = 1, p: int = 0,
                 d: int = 1, tight: bool = False) -> tuple[np.ndarray, int]:
    """The outputs of a sliding layer (kernel k, stride s, padding p, dilation d) that an
    input change confined to rows [y0, y0 + h) can reach: the window [i0, i0 + n) of its
    ``size`` outputs, n the same for every row, kept inside the map.

    Output i reads padded rows i·s … i·s + (k−1)·d, so it changes only if
    ``⌈(y0 + p − (k−1)d)/s⌉ ≤ i ≤ ⌊(y0 + p + h − 1)/s⌋`` — at most ``⌊(h − 1 + (k−1)d)/s⌋ + 1`` of them,
    the n of every window (what planning sizes memory by).  ``tight``: n only as large as the
    rows given need, each reach clipped to the map first — a change by a border reaches fewer
    outputs (a corner of a 32x32 map, through twelve 3x3 convs, 13 rows where a central entry
    reaches 25): a chunk of rows at one position carries just what it changes.
    """
    n = min(size, (h - 1 + (k - 1) * d) // s + 1)
    first = -((-(y0 + p - (k - 1) * d)) // s)  # ceil division
    if tight and len(y0):
        last = np.minimum((y0 + p + h - 1) // s, size - 1)
        n = max(1, min(n, int(np.max(last - np.maximum(first, 0))) + 1))
    return np.clip(first, 0, size - n), n


# --------------------------------------------------------------------------- correlation


# When :func:`correlate` takes :func:`correlate_rows` (stride 1): each of its kh matmuls
# contracts c·kw terms, and fewer than 15 ran slower than im2col's one matmul (3 channels,
# 3x3: 1.16x the time; 6 channels: the same; 8: 0.8x; 16: 0.7x), as did maps of fewer than
# 4 outputs (a 1x1 output: 2.6x).
ROWS_MIN_DEPTH = 15
ROWS_MIN_OUT = 4


def rows_pay(s: Pair, c: int, kw: int, ho: int, wo: int) -> bool:
    """Whether a correlation (or its ∂C/∂W) of c channels with a kernel kw wide, onto
    ho×wo outputs, is unrolled along rows only (:func:`unroll_rows`) rather than by im2col."""
    return tuple(s) == (1, 1) and c * kw >= ROWS_MIN_DEPTH and ho * wo >= ROWS_MIN_OUT


def unroll_rows(x: np.ndarray, kw: int, dw: int = 1) -> np.ndarray:
    """The stride-1 receptive fields unrolled along the width only (a copy).

    x of shape (n, c, H, W) -> of shape (n, c·kw, H·Wo), ``Wo = W − dw·(kw−1)``:
    ``rows[n, (c, v), y·Wo + j] = x[n, c, y, j + v·dw]`` for every row y of x — kw copies of
    x where im2col makes kh·kw.  Kernel row u then reads output row i from row ``i + u·dh``:
    in the flattened (y, j) axis the contiguous slice ``[u·dh·Wo, u·dh·Wo + Ho·Wo)``."""
    n, c, H, Wd = x.shape
    wo = out_size(Wd, kw, 1, 0, dw)
    s0, s1, s2, s3 = x.strides
    return as_strided(x, (n, c, kw, H, wo), (s0, s1, s3 * dw, s2, s3), writeable=False).reshape(n, c * kw, H * wo)


def correlate(x: np.ndarray, W: np.ndarray, s: Pair = (1, 1), d: Pair = (1, 1),
              cols: np.ndarray | None = None) -> np.ndarray:
    """Valid multi-channel correlation (the forward pass of a conv layer).

    x of shape (n, c, H, W), W of shape (o, c, kh, kw) -> z of shape (n, o, Ho, Wo),
    ``z[n,o,i,j] = Σ_{c,u,v} W[o,c,u,v] · x[n,c, i·sh + u·dh, j·sw + v·dw]``:
    one matmul ``W (o, c·kh·kw) @ im2col(x) (n, c·kh·kw, Ho·Wo)`` (pass ``cols`` to reuse them),
    or at stride 1, where it pays (:func:`rows_pay`), :func:`correlate_rows`.
    """
    n, o = x.shape[0], W.shape[0]
    ho, wo = out_size(x.shape[-2], W.shape[-2], s[0], 0, d[0]), out_size(x.shape[-1], W.shape[-1], s[1], 0, d[1])
    if cols is None:
        if rows_pay(s, x.shape[1], W.shape[-1], ho, wo):
            return correlate_rows(x, W, d)
        cols = im2col(x, W.shape[-2:], s, d)  # (n, c·kh·kw, Ho·Wo)
    return np.matmul(W.reshape(o, -1), cols).reshape(n, o, ho, wo)


def correlate_rows(x: np.ndarray, W: np.ndarray, d: Pair = (1, 1)) -> np.ndarray:
    """:func:`correlate` at stride 1, with the windows unrolled along the width only.

    x of shape (n, c, H, W), W of shape (o, c, kh, kw) -> z of shape (n, o, Ho, Wo):
    ``z = Σ_u W[:, :, u, :] (o, c·kw) @ rows[:, :, u·dh·Wo : u·dh·Wo + Ho·Wo]`` over the
    rows :func:`unroll_rows` makes — the same products as im2col's one matmul, summed in
    another order; a third of the bytes to copy for a 3x3 kernel (a conv of 8 channels on
    32x32 maps: 1.3x faster; 16: 1.5x).  For few filters (:func:`stack_pays`) the kh kernel
    rows go in one matmul of kh·o rows over every row of x, each kernel row's share then
    sliced out (:func:`correlate_stacked`).
    """
    n, c, H, Wd = x.shape
    o, _, kh, kw = W.shape
    dh, dw = d
    ho, wo = out_size(H, kh, 1, 0, dh), out_size(Wd, kw, 1, 0, dw)
    if ho < 1 or wo < 1:
        raise ValueError(f"a {kh}x{kw} kernel (dilation {d}) does not fit a {H}x{Wd} map")
    rows = unroll_rows(x, kw, dw)  # (n, c·kw, H·Wo)
    if stack_pays(o, kh, ho, wo):
        return correlate_stacked(rows, W, ho, wo, dh)
    z = part = None
    for u in range(kh):
        lo = u * dh * wo
        Wu = W[:, :, u, :].reshape(o, c * kw)
        if z is None:
            z = np.matmul(Wu, rows[:, :, lo:lo + ho * wo])
        else:
            part = np.matmul(Wu, rows[:, :, lo:lo + ho * wo], out=part)
            z += part
    assert z is not None
    return z.reshape(n, o, ho, wo)


# When :func:`correlate_rows` stacks its kernel rows into one matmul: a matmul of 8 rows runs
# at ~33 GFLOP/s here where one of 24 runs at ~46 (one core, OpenBLAS), which pays for the
# (H − Ho)/Ho more products it makes where the outputs are many.  Measured against kh matmuls
# of o rows, 3x3 kernels, 8-16 channels in: o = 8 on 32x32 maps 0.80-0.86x the time, 13x13
# 0.89-0.98x, 5x5 1.04-1.06x; o = 16 on 32x32 0.87-0.95x, 9x9 1.02-1.11x; o = 32 1.0-1.28x.
STACK_MAX_ROWS = 48  # kh·o
STACK_MIN_OUT = 12  # outputs a filter


def stack_pays(o: int, kh: int, ho: int, wo: int) -> bool:
    """Whether :func:`correlate_rows` runs its kh kernel rows as one matmul of kh·o rows."""
    return kh > 1 and o * kh <= STACK_MAX_ROWS and ho * wo >= STACK_MIN_OUT * o


def correlate_stacked(rows: np.ndarray, W: np.ndarray, ho: int, wo: int, dh: int = 1) -> np.ndarray:
    """:func:`correlate_rows` from its rows (of shape (n, c·kw, H·Wo)) in one matmul:
    ``Z = [W_0; …; W_{kh−1}] (kh·o, c·kw) @ rows`` gives every kernel row's products on every
    row of x, and ``z = Σ_u Z[:, u·o : (u+1)·o, u·dh·Wo : u·dh·Wo + Ho·Wo]``: the same
    products summed in the same order (bit for bit what kh matmuls gave in every shape tried
    here; ``test_conv.py`` holds it to the naive loop)."""
    o, c, kh, kw = W.shape
    n = rows.shape[0]
    Z = np.matmul(W.transpose(2, 0, 1, 3).reshape(kh * o, c * kw), rows)  # (n, kh·o, H·Wo)
    span = ho * wo
    if kh == 1:
        return Z.reshape(n, o, ho, wo)
    z = np.add(Z[:, :o, :span], Z[:, o:2 * o, dh * wo:dh * wo + span])
    for u in range(2, kh):
        z += Z[:, u * o:(u + 1) * o, u * dh * wo:u * dh * wo + span]
    return z.reshape(n, o, ho, wo)


def correlate_naive(x: np.ndarray, W: np.ndarray, s: Pair = (1, 1), d: Pair = (1, 1)) -> np.ndarray:
    """Loop reference of :func:`correlate`."""
    n, c, H, Wd = x.shape
    o, _, kh, kw = W.shape
    Ho = out_size(H, kh, s[0], 0, d[0])
    Wo = out_size(Wd, kw, s[1], 0, d[1])
    z = np.zeros((n, o, Ho, Wo), dtype=np.result_type(x, W))
    for b in range(n):
        for f in range(o):
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0
                    for ch in range(c):
                        for u in range(kh):
                            for v in range(kw):
                                acc += W[f, ch, u, v] * x[b, ch, i * s[0] + u * d[0], j * s[1] + v * d[1]]
                    z[b, f, i, j] = acc
    return z


# --------------------------------------------------------------------------- δ backward


def full_convolve(delta: np.ndarray, W: np.ndarray, in_hw: tuple[int, int], s: Pair = (1, 1),
                  d: Pair = (1, 1)) -> np.ndarray:
    """δ w.r.t. the (padded) input of a correlation layer: the seed's rotated-kernel step.

    delta of shape (n, o, Ho, Wo), W of shape (o, c, kh, kw) -> of shape (n, c, *in_hw),
    where ``in_hw`` is the padded input's (H + 2p, W + 2p).

    1. dilate δ with s−1 zeros (stride), 2. pad it by the kernel extent − 1 on each side,
    3. *correlate* it with ``ROT180(W)`` with in/out channels swapped — that is, a full
    **convolution** of δ with ``W`` (and so, for a ``mode: convolution`` layer whose
    kernel is ``ROT180(W)``, the seed's ``δ^{l+1} * ROT180(w^{l+1})``),
    4. zero-fill rows/columns the stride never reached.
    """
    kh, kw = W.shape[-2:]
    ke = (effective_kernel(kh, d[0]), effective_kernel(kw, d[1]))
    delta_hat = pad(dilate(delta, s), (ke[0] - 1, ke[1] - 1))
    W_rot = rot180(W).swapaxes(0, 1)  # (c, o, kh, kw)
    out = correlate(delta_hat, W_rot, (1, 1), d)  # (n, c, (Ho-1)s + ke, ...)
    H, Wd = in_hw
    if out.shape[-2:] != (H, Wd):  # stride did not tile the input exactly
        full = np.zeros(out.shape[:2] + (H, Wd), dtype=out.dtype)
        full[..., : out.shape[-2], : out.shape[-1]] = out
        out = full
    return out


def full_convolve_col2im(delta: np.ndarray, W: np.ndarray, in_hw: tuple[int, int], s: Pair = (1, 1),
                         d: Pair = (1, 1)) -> np.ndarray:
    """The same δ as :func:`full_convolve`, computed the other way round (one of the two
    ways of :func:`input_delta`: no padded copy of δ to unroll, nor any stride's zeros).

    Full convolution of δ with W means every δ[n,o,i,j] is spread over the window it was
    computed from, weighted by the kernel:
    ``δ_in[n,c, i·s+u·d, j·s+v·d] += W[o,c,u,v] · δ[n,o,i,j]``.  Written as two steps,
    ``cols = Wᵀ @ δ`` (of shape (n, c·kh·kw, Ho·Wo)) then ``col2im(cols)`` — and
    correlating the zero-padded δ with ROT180(W), as :func:`full_convolve` does, collects
    exactly the same products at each input pixel (``tests/test_conv.py`` proves the two,
    and the naive loop, equal).
    """
    n, o, ho, wo = delta.shape
    _, c, kh, kw = W.shape
    cols = np.matmul(W.reshape(o, -1).T, delta.reshape(n, o, -1))  # (n, c·kh·kw, Ho·Wo)
    return col2im(cols.reshape(n, c, kh, kw, ho, wo), in_hw, s, d)


def input_delta(delta: np.ndarray, W: np.ndarray, in_hw: tuple[int, int], p: Pair = (0, 0),
                s: Pair = (1, 1), d: Pair = (1, 1)) -> np.ndarray:
    """δ w.r.t. the *unpadded* input of a correlation layer (what the conv layer runs):
    ``crop(full_convolve(δ, W), p)``, with the crop folded in where that saves work.

    delta of shape (n, o, Ho, Wo), W of shape (o, c, kh, kw), ``in_hw`` the unpadded input's
    (H, W) -> of shape (n, c, H, W).

    Two ways, the cheaper one taken (both against the loop reference in ``tests/test_conv.py``):

    * stride 1, p ≤ extent − 1: the padded δ correlated with ``ROT180(W)``
      (:func:`full_convolve`), δ padded by ``extent − 1 − p`` instead of ``extent − 1`` so
      that the correlation yields the cropped rows and columns only — δ unrolled (along rows
      only where :func:`correlate` takes :func:`correlate_rows`) and matmuls, no col2im.
      Since the rows path, faster than col2im for more filters than channels too (VGG's
      16 -> 32 channels on 16x16: 274 against 426 µs; 3 -> 16 on 32x32: 197 against 237);
    * otherwise :func:`full_convolve_col2im` (``Kᵀδ``, c·kh·kw rows, then kh·kw strided adds)
      and the crop: no s−1 zeros dilating δ for a stride.
    """
    ke = (effective_kernel(W.shape[-2], d[0]), effective_kernel(W.shape[-1], d[1]))
    if tuple(s) == (1, 1) and p[0] <= ke[0] - 1 and p[1] <= ke[1] - 1:
        delta_hat = pad(delta, (ke[0] - 1 - p[0], ke[1] - 1 - p[1]))
        W_rot = np.ascontiguousarray(rot180(W).swapaxes(0, 1))  # (c, o, kh, kw)
        return correlate(delta_hat, W_rot, (1, 1), d)
    padded = (in_hw[0] + 2 * p[0], in_hw[1] + 2 * p[1])
    return crop(full_convolve_col2im(delta, W, padded, s, d), p)


def full_convolve_naive(delta: np.ndarray, W: np.ndarray, in_hw: tuple[int, int], s: Pair = (1, 1),
                        d: Pair = (1, 1)) -> np.ndarray:
    """Loop reference of :func:`full_convolve`, straight from the chain rule.

    ``∂C/∂ã[n,c,y,x] = Σ δ[n,o,i,j] W[o,c,u,v]`` over ``i·s + u·d = y, j·s + v·d = x``:
    every output scatters its δ back through the kernel taps that produced it.
    """
    n, o, Ho, Wo = delta.shape
    _, c, kh, kw = W.shape
    out = np.zeros((n, c) + tuple(in_hw), dtype=np.result_type(delta, W))
    for b in range(n):
        for f in range(o):
            for i in range(Ho):
                for j in range(Wo):
                    for ch in range(c):
                        for u in range(kh):
                            for v in range(kw):
                                out[b, ch, i * s[0] + u * d[0], j * s[1] + v * d[1]] += (
                                    delta[b, f, i, j] * W[f, ch, u, v])
    return out


# --------------------------------------------------------------------------- ∂C/∂W


def weight_grad(a_pad: np.ndarray, delta: np.ndarray, k: Pair, s: Pair = (1, 1),
                d: Pair = (1, 1), cols: np.ndarray | None = None) -> np.ndarray:
    """∂C/∂W of a correlation layer: the valid correlation of ã with δ.

    a_pad of shape (n, c, H+2p, W+2p), delta of shape (n, o, Ho, Wo) -> of shape
    (o, c, kh, kw), ``nabla_w[o,c,u,v] = Σ_{n,i,j} δ[n,o,i,j] · ã[n,c, i·s + u·d, j·s + v·d]``
    — δ (dilated by the stride) slides over ã as the kernel; summed over the batch.
    """
    n, c = a_pad.shape[:2]
    o = delta.shape[1]
    if cols is None and rows_pay(s, c, k[1], delta.shape[-2], delta.shape[-1]):
        return weight_grad_rows(a_pad, delta, k, d)
    if cols is None:
        cols = im2col(a_pad, k, s, d)  # (n, c·kh·kw, Ho·Wo), the forward pass's columns
    # (cols @ δᵀ)ᵀ per sample, summed over the batch (cols as the matmul's left operand: the
    # faster of the two orders here)
    g = np.matmul(cols, delta.reshape(n, o, -1).transpose(0, 2, 1)).sum(axis=0)  # (c·kh·kw, o)
    return np.ascontiguousarray(g.T).reshape(o, c, k[0], k[1])


def weight_grad_rows(a_pad: np.ndarray, delta: np.ndarray, k: Pair, d: Pair = (1, 1)) -> np.ndarray:
    """:func:`weight_grad` at stride 1 from the rows :func:`unroll_rows` makes: kernel row u
    of ∂C/∂W is ``Σ_n δ_n (o, Ho·Wo) @ rows_n[:, u·dh·Wo : u·dh·Wo + Ho·Wo]ᵀ``, the same
    products as the im2col form, a third of the bytes copied for a 3x3 kernel."""
    n, c = a_pad.shape[:2]
    o, ho, wo = delta.shape[1:]
    kh, kw = k
    dh, dw = d
    rows = unroll_rows(a_pad, kw, dw)  # (n, c·kw, H·Wo)
    flat = delta.reshape(n, o, ho * wo)
    g = np.empty((o, kh, c, kw), dtype=np.result_type(a_pad, delta))
    for u in range(kh):
        lo = u * dh * wo
        part = np.matmul(rows[:, :, lo:lo + ho * wo], flat.transpose(0, 2, 1))  # (n, c·kw, o)
        g[:, u] = part.sum(axis=0).T.reshape(o, c, kw)
    return np.ascontiguousarray(g.transpose(0, 2, 1, 3))


def weight_grad_naive(a_pad: np.ndarray, delta: np.ndarray, k: Pair, s: Pair = (1, 1),
                      d: Pair = (1, 1)) -> np.ndarray:
    """Loop reference of :func:`weight_grad`."""
    n, c = a_pad.shape[:2]
    _, o, Ho, Wo = delta.shape
    kh, kw = k
    g = np.zeros((o, c, kh, kw), dtype=np.result_type(a_pad, delta))
    for f in range(o):
        for ch in range(c):
            for u in range(kh):
                for v in range(kw):
                    acc = 0.0
                    for b in range(n):
                        for i in range(Ho):
                            for j in range(Wo):
                                acc += delta[b, f, i, j] * a_pad[b, ch, i * s[0] + u * d[0], j * s[1] + v * d[1]]
                    g[f, ch, u, v] = acc
    return g
