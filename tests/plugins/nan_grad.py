"""y = s ⊙ a (s per channel), whose backward puts a NaN in ∂C/∂s[0] only: with --samples the
entry may go unchecked — the row must still fail (it passed, and JUnit said 0 failures while
the exit code said 1: a QA pass)."""
from __future__ import annotations

import numpy as np


class NaNGrad:
    per_sample = True

    def __init__(self, in_shape, rng):
        self.out_shape = tuple(in_shape)
        self.params = {"s": 1.0 + 0.1 * rng.standard_normal(in_shape[0])}

    def forward(self, a):
        return a * self.params["s"][:, None, None], a

    def backward(self, delta, a):
        g = (delta * a).sum(axis=(0, 2, 3))
        g[0] = np.nan
        return delta * self.params["s"][:, None, None], {"s": g}
