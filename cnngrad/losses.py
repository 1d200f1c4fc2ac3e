"""Losses on the last layer's output; ``C`` is the mean of a per-sample loss.

Each loss has ``per_sample(out, y) -> (n,)``, ``gradient(out, y) -> ∂C/∂out`` (with the
1/N of the batch mean in it) and ``targets(rng, n, out_shape)`` to draw y.
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray


class MSE:
    """``C = 1/(2N) Σ_n ‖a_n − y_n‖²`` (Nielsen's quadratic cost); y ~ N(0, 1)."""

    name = "mse"

    @staticmethod
    def targets(rng: np.random.Generator, n: int, out_shape: tuple[int, ...]) -> Array:
        return rng.normal(0.0, 1.0, size=(n,) + tuple(out_shape))

    @staticmethod
    def per_sample(a: Array, y: Array) -> Array:
        diff = (a - y).reshape(a.shape[0], -1)
        return 0.5 * np.sum(diff * diff, axis=1)

    @staticmethod
    def gradient(a: Array, y: Array) -> Array:
        """``∇_a C = (a − y)/N``."""
        return (a - y) / a.shape[0]


def log_softmax(z: Array) -> Array:
    """Stable ``log softmax`` over the last axis: ``z − max − log Σ exp(z − max)``."""
    m = np.max(z.real if np.iscomplexobj(z) else z, axis=-1, keepdims=True)
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


class SoftmaxCrossEntropy:
    """``C = −(1/N) Σ_n log softmax(z_n)[y_n]``; y integer labels, out of shape (n, classes)."""

    name = "softmax_cross_entropy"

    @staticmethod
    def targets(rng: np.random.Generator, n: int, out_shape: tuple[int, ...]) -> Array:
        return rng.integers(0, out_shape[0], size=n)

    @staticmethod
    def per_sample(z: Array, y: Array) -> Array:
        return -np.take_along_axis(log_softmax(z), y[:, None], axis=1)[:, 0]

    @staticmethod
    def gradient(z: Array, y: Array) -> Array:
        """``δ^L = (softmax(z) − onehot(y))/N``."""
        g = np.exp(log_softmax(z))
        g[np.arange(z.shape[0]), y] -= 1.0
        return g / z.shape[0]


LOSSES: dict[str, type] = {"mse": MSE, "softmax_cross_entropy": SoftmaxCrossEntropy}
