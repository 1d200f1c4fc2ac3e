"""Layers declaring complex_safe falsely (np.abs of a complex is its modulus: the max's
imaginary part is lost), whose backward treats the max as a constant (``bug: true``, the
default) — a QA pass found both certified:

* MaxNorm: y = a / max|a| per sample, declaring its kink state (the per-sample argmax, of shape
  (n,)); after a nearest upsampling every max ties, the probe's direction broke the ties, and
  "its kinks lie within the probe's step" let the declaration stand.
* WiggleMaxNorm: the same plus sin(K·a)/K (K = 1e5), no kink state: at the probe's step the
  real difference does not settle, and its own error's allowance swallowed the mismatch.
"""
from __future__ import annotations

import numpy as np


class _MaxNorm:
    complex_safe = True  # false
    per_sample = True
    K = 0.0

    def __init__(self, in_shape, rng, bug=True):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def _max(self, a):
        n = a.shape[0]
        flat = a.reshape(n, -1)
        idx = np.argmax(np.abs(flat), axis=1)
        return idx, np.abs(flat[np.arange(n), idx]).reshape((n,) + (1,) * (a.ndim - 1))

    def forward(self, a):
        idx, m = self._max(a)
        wiggle = np.sin(self.K * a) / self.K if self.K else 0.0
        return a / m + wiggle, (a.copy(), idx, m)

    def backward(self, d, cache):
        """δ^{l-1} = δ/m − [j = argmax] sign(a_j)·Σ(δ·a)/m² (+ δ·cos(K·a))."""
        a, idx, m = cache
        n = a.shape[0]
        dp = d / m + (d * np.cos(self.K * a) if self.K else 0.0)
        if not self.bug:
            flat = a.reshape(n, -1)
            coef = -(d * a).reshape(n, -1).sum(1) / m.reshape(-1) ** 2 * np.sign(flat[np.arange(n), idx])
            dpf = dp.reshape(n, -1).copy()
            dpf[np.arange(n), idx] += coef
            dp = dpf.reshape(a.shape)
        return dp, {}


class MaxNorm(_MaxNorm):
    def kink_state(self, cache):
        return cache[1].copy()


class WiggleMaxNorm(_MaxNorm):
    K = 1e5
