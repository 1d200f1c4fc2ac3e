"""Layers that declare ``linear = True`` (z linear in its input a): the dot-product test
takes the declaration — and a parameter the layer is not linear in has nothing to say there.

* ExpScale: z = a ⊙ e^s, linear in a, not in s (right backward); ``bug: delta``: δ_in is
  1 + 1e-9 times too large — only the dot-product test sees it.
* SoftClip: y = tanh(a), right backward, but declared linear: it is not.
"""
from __future__ import annotations

import numpy as np


class ExpScale:
    linear = True
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {"s": rng.normal(0.0, 0.5, in_shape)}

    def forward(self, a):
        return a * np.exp(self.params["s"]), a

    def backward(self, delta, a):
        """δ_in = δ ⊙ e^s; ∂C/∂s = Σ_n δ ⊙ a ⊙ e^s."""
        e = np.exp(self.params["s"])
        return delta * e * (1 + 1e-9 if self.bug == "delta" else 1.0), {"s": (delta * a * e).sum(0)}


class SoftClip:
    linear = True  # false
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, a):
        y = np.tanh(a)
        return y, y

    def backward(self, delta, y):
        return delta * (1 - y * y), {}
