"""y = a·(1 + t·c), c = 1e-8: ∂C/∂t is ~1e-9, below what central differences resolve at
eps 1e-6 (the complex step resolves it).  ``bug: double``: backward returns 2·∂C/∂t."""
from __future__ import annotations

import numpy as np


class TinyGain:
    per_sample = True
    complex_safe = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {"t": np.array([0.3])}

    def forward(self, a):
        return a * (1 + self.params["t"][0] * 1e-8), a

    def backward(self, delta, a):
        dt = np.array([np.sum(delta * a) * 1e-8]) * (2 if self.bug == "double" else 1)
        return delta * (1 + self.params["t"][0] * 1e-8), {"t": dt}
