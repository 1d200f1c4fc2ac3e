"""A right layer whose derivative wiggles on the scale of 1e-4, ``a = z + A·sin(ω·z)`` with
A = 1e-4, ω = 1e4 by default (σ' = 1 + Aω·cos(ω z), between 0 and 2; σ''' ~ Aω³ = 1e8), real
arithmetic only (the complex step cannot run through it).  Central differences at h = 1e-6
carry a truncation of h²σ'''/6 ~ 1e-5 — past their tol — which falls 4x as h halves.
``bug: gain``: the backward 1 + 1e-3 times too large; ``bug: tiny``: 1 + 1e-5 (under the
truncation, over the tol); ``shift``: the wiggle's term of σ' 1 + shift times what it is (not
"off": YAML 1.1 reads that key as false)."""
from __future__ import annotations

import numpy as np


class Wiggly:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None, A=1e-4, omega=1e4, shift=0.0):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug
        self.A, self.omega, self.shift = float(A), float(omega), float(shift)

    def forward(self, z):
        z = np.asarray(z.real, dtype=np.float64)  # drops an imaginary part: no complex step
        return z + self.A * np.sin(self.omega * z), z

    def backward(self, delta, z):
        """δ^{l-1} = δ^l ⊙ (1 + Aω·cos(ω z))."""
        wiggle = self.A * self.omega * np.cos(self.omega * z) * (1 + self.shift)
        return delta * (1 + wiggle) * {"gain": 1.001, "tiny": 1.00001}.get(self.bug, 1.0), {}
