"""A train-mode batch norm written with np.var and declared ``complex_safe`` — falsely: np.var
of a complex array is real (the mean of |x − μ|²), so the variance's imaginary part, and with
it that path's derivative, is lost.  ``bug: no_var``: backward drops the x̂·mean(g·x̂) term
(the variance's path).  Its complex step "confirmed" that backward (a QA pass: a false PASS)."""
from __future__ import annotations

import numpy as np


class BN:
    complex_safe = True  # false

    def __init__(self, in_shape, rng, eps=1e-5, bug=None):
        c = in_shape[0]
        self.out_shape, self.eps, self.bug = tuple(in_shape), eps, bug
        self.params = {"gamma": 1.0 + rng.normal(0, 0.1, c), "beta": rng.normal(0, 0.1, c)}

    def forward(self, x):
        ax = (0, 2, 3)
        mu = x.mean(axis=ax, keepdims=True)
        inv = 1 / np.sqrt(np.var(x, axis=ax, keepdims=True) + self.eps)
        xh = (x - mu) * inv
        return self.params["gamma"].reshape(1, -1, 1, 1) * xh + self.params["beta"].reshape(1, -1, 1, 1), (xh, inv)

    def backward(self, d, cache):
        """δ^{l-1} = (1/σ)(g − mean g − x̂·mean(g·x̂)), g = γ·δ^l."""
        xh, inv = cache
        ax = (0, 2, 3)
        grads = {"gamma": (d * xh).sum(axis=ax), "beta": d.sum(axis=ax)}
        g = self.params["gamma"].reshape(1, -1, 1, 1) * d
        t = 0.0 if self.bug == "no_var" else xh * (g * xh).mean(axis=ax, keepdims=True)
        return inv * (g - g.mean(axis=ax, keepdims=True) - t), grads
