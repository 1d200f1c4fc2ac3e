"""A right tanh that drops the imaginary part of its input (a cast to float64): the complex
step cannot run through it.  ``bug: gain``: backward 1 + 1e-3 times too large; ``bug:
tiny``: 1 + 1e-5 (norm rel 5e-6: over central differences' tol, under forward ones')."""
from __future__ import annotations

import numpy as np


class RealTanh:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        y = np.tanh(np.asarray(a.real, dtype=np.float64))
        return y, y

    def backward(self, delta, y):
        """δ^{l-1} = δ^l ⊙ (1 − a²)."""
        return delta * (1 - y * y) * {"gain": 1.001, "tiny": 1.00001}.get(self.bug, 1.0), {}
