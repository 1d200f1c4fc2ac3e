"""A right layer whose derivative wiggles on the scale of 1e-4, ``a = z + A·sin(ω·z)`` with
A = 1e-4, ω = 1e4 (σ' = 1 + cos(ω z) between 0 and 2; σ''' ~ Aω³ = 1e8), real arithmetic only
(the complex step cannot run through it).  Central differences at h = 1e-6 carry a truncation
of h²σ'''/6 ~ 1e-5 — past their tol — which falls 4x as h halves.  ``bug: gain``: the backward
1 + 1e-3 times too large; ``bug: tiny``: 1 + 1e-5 (under the truncation, over the tol)."""
from __future__ import annotations

import numpy as np

A, OMEGA = 1e-4, 1e4


class Wiggly:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, z):
        z = np.asarray(z.real, dtype=np.float64)  # drops an imaginary part: no complex step
        return z + A * np.sin(OMEGA * z), z

    def backward(self, delta, z):
        """δ^{l-1} = δ^l ⊙ (1 + Aω·cos(ω z))."""
        return delta * (1 + A * OMEGA * np.cos(OMEGA * z)) * {"gain": 1.001, "tiny": 1.00001}.get(self.bug, 1.0), {}
