"""relu(batch norm(a)) in one layer, the norm's variance by np.var (real on complex input),
declared complex_safe — falsely — and declaring its relu's kinks.  ``bug: no_var``: backward
drops the variance's term.  Wherever one of its units sat within the probe's step of 0, the
declared kink let the false declaration stand, and the complex step "confirmed" the bug."""
from __future__ import annotations

import numpy as np


class NormRelu:
    complex_safe = True  # false

    def __init__(self, in_shape, rng, eps=1e-5, bug=None):
        c = in_shape[0]
        self.out_shape, self.eps, self.bug = tuple(in_shape), eps, bug
        self.params = {"gamma": 1.0 + rng.normal(0, 0.1, c), "beta": rng.normal(0, 0.1, c)}

    def forward(self, x):
        ax = (0, 2, 3)
        inv = 1 / np.sqrt(np.var(x, axis=ax, keepdims=True) + self.eps)
        xh = (x - x.mean(axis=ax, keepdims=True)) * inv
        z = self.params["gamma"].reshape(1, -1, 1, 1) * xh + self.params["beta"].reshape(1, -1, 1, 1)
        return np.where(z.real > 0, z, 0), (xh, inv, z)

    def kink_state(self, cache):
        return cache[2].real > 0

    def backward(self, d, cache):
        """δ_z = δ ⊙ [z > 0]; δ^{l-1} = (1/σ)(g − mean g − x̂·mean(g·x̂)), g = γ·δ_z."""
        xh, inv, z = cache
        ax = (0, 2, 3)
        dz = d * (z.real > 0)
        grads = {"gamma": (dz * xh).sum(axis=ax), "beta": dz.sum(axis=ax)}
        g = self.params["gamma"].reshape(1, -1, 1, 1) * dz
        t = 0.0 if self.bug == "no_var" else xh * (g * xh).mean(axis=ax, keepdims=True)
        return inv * (g - g.mean(axis=ax, keepdims=True) - t), grads
