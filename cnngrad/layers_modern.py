"""The layers of modern CNNs beside conv/pool/dense (CONVENTIONS.md, "Blocks and the layers
of modern CNNs"): ``conv_transpose``, ``upsample``, ``global_pool``, ``dropout`` here, the
normalisations in ``layers_norm.py``.  Same protocol as ``layers.py``: ``forward`` returns
``(out, cache)``, ``backward(delta, cache)`` right under it returns ``(delta_prev, {name: nabla})``;
each backward states its equation.  ``buffers``: fixed arrays the function depends on that
are not checked (a dropout mask); drawn after the params, saved by ``--save``.

Each has a loop reference in ``naive_modern.py``; ``tests/test_layers13.py`` proves them equal.
Declared capabilities: only what holds (``finite_diff/shortcuts.py``); none of them offers
the engine a shortcut but ``upsample`` (``channelwise``: each output channel is its input
channel, resampled the same way for every channel) and ``global_pool`` (``piece``: max pooling
held on the unperturbed point's maximum along a direction).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import conv as C
from .layers import BIAS_STD, _real, init_weights

if TYPE_CHECKING:
    from .finite_diff.shortcuts import Shortcut

Array = np.ndarray


class ConvTranspose:
    """Transposed convolution (``conv_transpose2d``): the adjoint of a conv layer.

    a_prev of shape (n, c, h, w) -> z of shape (n, filters, ho, wo),
    ``ho = (h − 1)·s − 2p + d·(kh − 1) + output_padding + 1``; W of shape (c, filters, kh, kw),
    b of shape (filters,).  Forward: every input entry is spread through the kernel,
    ``z̃[n,f, i·s+u·d, j·s+v·d] += a[n,c,i,j] · W[c,f,u,v]``, then p is cropped from each side
    of z̃ (output_padding rows/columns stay at the bottom/right) — the conv layer's δ step
    (``conv.full_convolve_col2im``) run forwards.  So its backward *is* the conv forward.
    """

    kind = "conv_transpose"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset()

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, filters: int,
                 kernel: Any = 3, stride: Any = 1, padding: Any = 0, output_padding: Any = 0,
                 dilation: Any = 1, bias: str = "tied", init: str | dict = "lecun",
                 dtype: Any = np.float64) -> None:
        c, h, w = self.in_shape = tuple(in_shape)
        self.k, self.s, self.p = C.pair(kernel), C.pair(stride), C.pair(padding)
        self.op, self.d, self.bias = C.pair(output_padding), C.pair(dilation), bias
        fh, fw = ((n - 1) * s + C.effective_kernel(k, d) + op
                  for n, k, s, d, op in zip((h, w), self.k, self.s, self.d, self.op))
        self.full = (fh, fw)
        self.out_shape = (filters, self.full[0] - 2 * self.p[0], self.full[1] - 2 * self.p[1])
        kk = self.k[0] * self.k[1]
        W = init_weights(rng, (c, filters) + self.k, filters * kk, c * kk, init)
        self.params = {"W": W.astype(dtype, copy=False)}
        if bias == "tied":
            self.params["b"] = rng.normal(0.0, BIAS_STD, size=(filters,)).astype(dtype)

    def forward(self, a_prev: Array) -> tuple[Array, tuple]:
        z = C.crop(C.full_convolve_col2im(a_prev, self.params["W"], self.full, self.s, self.d), self.p)
        if self.bias == "tied":
            z = z + self.params["b"][:, None, None]
        return z, (a_prev,)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """The conv forward, with the same W (of shape (c, filters, kh, kw) read as (out, in)):
        with δ̃ = δ^l zero-padded by p,

        ``δ^{l-1}[n,c,i,j] = Σ_{f,u,v} W[c,f,u,v] · δ̃[n,f, i·s+u·d, j·s+v·d]``  (a valid
        correlation with W — a true convolution with ROT180(W), the rotated kernel of the
        seed's ``δ^{l+1} * ROT180(w^{l+1})``, but here in the forward direction);
        ``∂C/∂W[c,f,u,v] = Σ_{n,i,j} a^{l-1}[n,c,i,j] · δ̃[n,f, i·s+u·d, j·s+v·d]`` (the valid
        correlation of δ̃ with a^{l-1}: a conv layer's ∂C/∂W with the roles of ã and δ swapped);
        ``∂C/∂b = Σ δ``."""
        (a_prev,) = cache
        dpad = self._padded(delta)
        delta_prev = C.correlate(dpad, self.params["W"], self.s, self.d)
        grads = {"W": C.weight_grad(dpad, a_prev, self.k, self.s, self.d)}
        if self.bias == "tied":
            grads["b"] = delta.sum(axis=(0, 2, 3))
        return delta_prev, grads

    def _padded(self, delta: Array) -> Array:
        """δ padded by p, cut to the rows and columns the input's h×w entries reach
        (output_padding may add a row no input reaches when the dilation exceeds the stride)."""
        _, h, w = self.in_shape
        reach = [(n - 1) * s + C.effective_kernel(k, d) for n, k, s, d in zip((h, w), self.k, self.s, self.d)]
        return C.pad(delta, self.p)[..., : reach[0], : reach[1]]


class Upsample:
    """Nearest or bilinear (``align_corners=False``) upsampling by an integer ``scale``,
    as ``interpolate(scale_factor=scale)``: a of shape (n, c, h, w) -> (n, c, s·h, s·w).

    Both are linear and separable: ``z = U_h · a · U_wᵀ`` per (n, c), with U of shape (s·h, h):
    nearest ``U[i, ⌊i/s⌋] = 1``; bilinear from the source coordinate
    ``y = max((i + ½)/s − ½, 0)``: ``U[i, ⌊y⌋] += 1 − λ``, ``U[i, min(⌊y⌋+1, h−1)] += λ``, λ = y − ⌊y⌋.
    """

    kind = "upsample"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"channelwise"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, scale: int = 2,
                 mode: str = "nearest", dtype: Any = np.float64) -> None:
        c, h, w = in_shape
        self.scale, self.mode = int(scale), mode
        self.out_shape = (c, h * self.scale, w * self.scale)
        self.params: dict[str, Array] = {}
        self.Uh = interpolation_matrix(h, self.scale, mode).astype(dtype)
        self.Uw = interpolation_matrix(w, self.scale, mode).astype(dtype)

    def forward(self, a: Array) -> tuple[Array, tuple]:
        return self.Uh @ a @ self.Uw.T, ()

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^{l-1} = U_hᵀ · δ^l · U_w``: each output's δ goes back to the inputs it was
        interpolated from, with the same weights (nearest: summed over each s×s block)."""
        return self.Uh.T @ delta @ self.Uw, {}


def interpolation_matrix(size: int, scale: int, mode: str) -> Array:
    """U of shape (scale·size, size): output i = Σ_k U[i, k] · input k (see ``Upsample``)."""
    i = np.arange(size * scale)
    U = np.zeros((size * scale, size))
    if mode == "nearest":
        U[i, i // scale] = 1.0
        return U
    y = np.maximum((1.0 / scale) * (i + 0.5) - 0.5, 0.0)  # PyTorch's source index, scale = 1/s
    lo = y.astype(np.intp)
    lam = y - lo
    np.add.at(U, (i, lo), 1.0 - lam)
    np.add.at(U, (i, np.minimum(lo + 1, size - 1)), lam)
    return U


class GlobalPool:
    """Global average or max pooling: a of shape (n, c, h, w) -> (n, c).
    avg ``z[n,c] = mean_{i,j} a[n,c,i,j]``; max ``z[n,c] = max_{i,j} a[n,c,i,j]`` (the first
    maximal entry in C order; a complex step follows the real part)."""

    kind = "global_pool"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"piece"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, kind: str = "avg",
                 dtype: Any = np.float64) -> None:
        self.in_shape, self.pool = tuple(in_shape), kind
        self.out_shape = (in_shape[0],)
        self.params: dict[str, Array] = {}

    def forward(self, a: Array) -> tuple[Array, tuple]:
        flat = a.reshape(a.shape[:2] + (-1,))
        if self.pool == "avg":
            return flat.mean(axis=-1), (a.shape, None)
        idx = np.argmax(_real(flat), axis=-1)  # the first maximum
        return np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0], (a.shape, idx)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """avg: ``δ^{l-1}[n,c,i,j] = δ[n,c] / (h·w)``; max: all of ``δ[n,c]`` to the first
        maximal entry of channel c, 0 elsewhere."""
        shape, idx = cache
        hw = shape[2] * shape[3]
        if self.pool == "avg":
            return np.broadcast_to((delta / hw)[..., None, None], shape).copy(), {}
        out = np.zeros(shape[:2] + (hw,), dtype=delta.dtype)
        np.put_along_axis(out, idx[..., None], delta[..., None], axis=-1)
        return out.reshape(shape), {}

    def kink_state(self, cache: tuple) -> Array | None:
        """max: which entry of each channel is the maximum, of shape (n, c)."""
        return cache[1]

    def forward_on_piece(self, a: Array, state: Array) -> Array:
        """max: each channel's entry ``state`` (the unperturbed point's argmax), of shape (n, c)."""
        flat = a.reshape(a.shape[:2] + (-1,))
        return np.take_along_axis(flat, state[..., None], axis=-1)[..., 0]


class Dropout:
    """Inverted dropout with a fixed mask: ``z = a ⊙ mask``, mask a buffer of shape
    (batch, *in_shape) of 0 (rate) and 1/(1 − rate) (1 − rate), drawn once at build.

    Not ``per_sample``: its output is sample n's input times *row n* of the mask, so a sample
    run on its own (as the per-sample shortcuts do) would need its row number; the engine
    runs whole copies of the batch through it instead."""

    kind = "dropout"
    per_sample = False
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset()

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, rate: float, batch: int,
                 dtype: Any = np.float64) -> None:
        self.out_shape, self.rate = tuple(in_shape), float(rate)
        self.params: dict[str, Array] = {}
        keep = rng.random((batch,) + self.out_shape) >= self.rate
        self.buffers = {"mask": (keep / (1.0 - self.rate)).astype(dtype)}

    def forward(self, a: Array) -> tuple[Array, tuple]:
        mask = self.buffers["mask"]
        if a.shape != mask.shape:
            raise ValueError(f"dropout: its mask is of shape {mask.shape}, the input of shape {a.shape}")
        return a * mask, ()

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^{l-1} = δ^l ⊙ mask``."""
        return delta * self.buffers["mask"], {}


def _modern() -> dict[str, type]:
    from .layers_norm import BatchNorm, GroupNorm

    return {"conv_transpose": ConvTranspose, "batchnorm": BatchNorm, "groupnorm": GroupNorm,
            "upsample": Upsample, "global_pool": GlobalPool, "dropout": Dropout}


MODERN_LAYERS: dict[str, type] = _modern()
