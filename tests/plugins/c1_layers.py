"""A layer that is C¹ but not C²: y = a·|a|, y' = 2|a| (a kink in y' at 0, none in y).

It declares no kink state (y itself has none) and is not complex-safe (np.abs of a complex is
its modulus).  Richardson's and Ridders' large steps straddle its 0 and carry a truncation of
the order of the step that their order does not remove: they failed its right backward.
``bug: gain``: backward 1 + 1e-3 times too large.
"""
from __future__ import annotations

import numpy as np


class SignedSquare:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        return a * np.abs(a), a

    def backward(self, delta, a):
        """δ^{l-1} = δ^l ⊙ 2|a|."""
        gain = 1.001 if self.bug == "gain" else 1.0
        return delta * (2 * gain * np.abs(a)), {}
