"""Normalisation layers: ``batchnorm`` (train and eval) and ``groupnorm`` (CONVENTIONS.md).

Both compute ``x̂ = (x − μ)/√(σ² + eps)`` over some axes and ``z = γ ⊙ x̂ + β`` per channel,
γ, β of shape (C,) (gamma ~ 1 + N(0, 0.1²), beta ~ N(0, 0.1²)).  When μ and σ² (biased) are
statistics of the very entries being normalised, the backward goes through them too:
with ``g = γ ⊙ δ`` and means over the normalised set of M entries,

    δ^{l-1} = (1/√(σ² + eps)) · (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))

(the ``− mean(g)`` term is μ's path, the last one σ²'s);  ``∂C/∂γ = Σ δ ⊙ x̂``,
``∂C/∂β = Σ δ`` over everything but the channel.  σ² is written ``mean(xc·xc)`` (not
``|xc|²``), so a complex step keeps its imaginary part.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from .finite_diff.shortcuts import Shortcut

Array = np.ndarray
STD = 0.1  # gamma − 1, beta and running_mean ~ N(0, 0.1²)


def _channel(v: Array, ndim: int) -> Array:
    """A per-channel vector of shape (C,), broadcastable against (n, C, …)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _normalise(x: Array, axes: tuple[int, ...], eps: float) -> tuple[Array, Array]:
    """x̂ and 1/√(σ² + eps), μ and the biased σ² over ``axes`` (kept)."""
    xc = x - x.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)
    return xc * inv, inv


def _through_stats(g: Array, xhat: Array, inv: Array, axes: tuple[int, ...]) -> Array:
    """``(1/σ)·(g − mean(g) − x̂·mean(g·x̂))``: δ through x̂ when μ, σ² are its own statistics."""
    return inv * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))


def _affine_params(rng: np.random.Generator, c: int, dtype: Any) -> dict[str, Array]:
    gamma = 1.0 + rng.normal(0.0, STD, size=(c,))
    beta = rng.normal(0.0, STD, size=(c,))
    return {"gamma": gamma.astype(dtype), "beta": beta.astype(dtype)}


class BatchNorm:
    """Batch normalisation per channel over (n, h, w) of an (n, C, h, w) input, or per
    feature over n of an (n, C) input, as ``torch.nn.functional.batch_norm``.

    ``mode: train``: μ, σ² are the batch's statistics (biased variance); the buffers are
    neither used nor updated.  It couples the samples, so it is *not* ``per_sample``.
    ``mode: eval``: μ, σ² are the buffers ``running_mean`` ~ N(0, 0.1²) and ``running_var``
    ~ U(0.5, 1.5) (drawn after gamma, beta): an affine map of each entry, ``per_sample``."""

    kind = "batchnorm"
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset()

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, mode: str = "train",
                 eps: float = 1e-5, dtype: Any = np.float64) -> None:
        c = in_shape[0]
        self.out_shape, self.mode, self.eps = tuple(in_shape), mode, float(eps)
        self.per_sample = mode == "eval"
        self.params = _affine_params(rng, c, dtype)
        self.buffers = {"running_mean": rng.normal(0.0, STD, size=(c,)).astype(dtype),
                        "running_var": rng.uniform(0.5, 1.5, size=(c,)).astype(dtype)}

    @staticmethod
    def _axes(ndim: int) -> tuple[int, ...]:
        return (0,) + tuple(range(2, ndim))

    def forward(self, x: Array) -> tuple[Array, tuple]:
        if self.mode == "train":
            xhat, inv = _normalise(x, self._axes(x.ndim), self.eps)
        else:
            inv = 1.0 / np.sqrt(_channel(self.buffers["running_var"], x.ndim) + self.eps)
            xhat = (x - _channel(self.buffers["running_mean"], x.ndim)) * inv
        out = _channel(self.params["gamma"], x.ndim) * xhat + _channel(self.params["beta"], x.ndim)
        return out, (xhat, inv)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """train: ``δ^{l-1} = (1/σ)(g − mean(g) − x̂·mean(g·x̂))``, g = γδ, means over (n, h, w);
        eval: ``δ^{l-1} = γ·δ/√(running_var + eps)`` (the statistics are constants);
        both: ``∂C/∂γ = Σ_{n,h,w} δ·x̂``, ``∂C/∂β = Σ_{n,h,w} δ``."""
        xhat, inv = cache
        axes = self._axes(delta.ndim)
        grads = {"gamma": (delta * xhat).sum(axis=axes), "beta": delta.sum(axis=axes)}
        g = _channel(self.params["gamma"], delta.ndim) * delta
        if self.mode == "eval":
            return g * inv, grads
        return _through_stats(g, xhat, inv, axes), grads


class GroupNorm:
    """Group normalisation, as ``torch.nn.functional.group_norm``: x of shape (n, C, h, w),
    per sample over each group's (C/groups, h, w) (contiguous groups of channels), then
    ``γ[c]·x̂ + β[c]``.  Per-sample (each sample its own statistics)."""

    kind = "groupnorm"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset()

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, groups: int,
                 eps: float = 1e-5, dtype: Any = np.float64) -> None:
        self.out_shape, self.groups, self.eps = tuple(in_shape), int(groups), float(eps)
        self.params = _affine_params(rng, in_shape[0], dtype)

    def forward(self, x: Array) -> tuple[Array, tuple]:
        xg = x.reshape(x.shape[0], self.groups, -1)  # (n, G, C/G·h·w)
        xhat, inv = _normalise(xg, (2,), self.eps)
        xhat = xhat.reshape(x.shape)
        out = _channel(self.params["gamma"], x.ndim) * xhat + _channel(self.params["beta"], x.ndim)
        return out, (xhat, inv)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """Per sample and group (means over its C/groups·h·w entries), g = γδ:
        ``δ^{l-1} = (1/σ)(g − mean(g) − x̂·mean(g·x̂))``; ``∂C/∂γ = Σ_{n,h,w} δ·x̂``,
        ``∂C/∂β = Σ_{n,h,w} δ``."""
        xhat, inv = cache
        n = delta.shape[0]
        grads = {"gamma": (delta * xhat).sum(axis=(0, 2, 3)), "beta": delta.sum(axis=(0, 2, 3))}
        g = (_channel(self.params["gamma"], delta.ndim) * delta).reshape(n, self.groups, -1)
        return _through_stats(g, xhat.reshape(n, self.groups, -1), inv, (2,)).reshape(delta.shape), grads
