"""Train-mode batch norm written the way a user writes it (own numpy, the plugin protocol),
with the classic bug as an option: ``bug: constant_stats`` treats the batch mean and
variance as constants in backward.  It does not declare ``per_sample`` (its samples are
coupled through the batch statistics), so cnngrad must not assume it."""
from __future__ import annotations

import numpy as np


class BatchNorm:
    """``y = γ·(x − μ)/√(σ² + eps) + β`` per channel over (N, H, W) (per feature over N on
    (N, F) input); μ and σ² the batch mean and biased variance, as
    ``torch.nn.functional.batch_norm(training=True)``.  Params gamma, beta of shape (C,)."""

    def __init__(self, in_shape, rng, eps=1e-5, bug=None):
        c = in_shape[0]
        self.out_shape, self.eps, self.bug = tuple(in_shape), eps, bug
        self.params = {"gamma": 1.0 + rng.normal(0.0, 0.1, c), "beta": rng.normal(0.0, 0.1, c)}

    @staticmethod
    def _axes(a):
        return (0,) + tuple(range(2, a.ndim))

    def _per_channel(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x):
        axes = self._axes(x)
        mu = x.mean(axis=axes, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(axis=axes, keepdims=True)  # biased; xc·xc keeps a complex step's part
        inv = 1.0 / np.sqrt(var + self.eps)
        xhat = xc * inv
        out = self._per_channel(self.params["gamma"], x.ndim) * xhat + self._per_channel(self.params["beta"], x.ndim)
        return out, (xhat, inv)

    def backward(self, delta, cache):
        """``∂C/∂γ = Σ δ·x̂``, ``∂C/∂β = Σ δ``; with ``g = γ·δ``:
        ``δ_in = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))`` (means over the normalised axes)."""
        xhat, inv = cache
        axes = self._axes(delta)
        grads = {"gamma": (delta * xhat).sum(axis=axes), "beta": delta.sum(axis=axes)}
        g = self._per_channel(self.params["gamma"], delta.ndim) * delta
        if self.bug == "constant_stats":  # μ and σ² treated as constants: only the direct path
            return g * inv, grads
        delta_in = inv * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
        return delta_in, grads
