"""Folder b/'s mylayers.py: the same module and class name as a/'s, with the classic bug of
a batch mean where the sum over the batch belongs in ∂C/∂g."""
from __future__ import annotations

import numpy as np


class Gain:
    """z = g[c] · a; δ_in = g[c] · δ; ∂C/∂g[c] should be Σ_{n,i,j} δ ⊙ a — here (bug) the
    mean over n of the per-sample sums."""

    per_sample = True

    def __init__(self, in_shape, rng):
        self.out_shape = tuple(in_shape)
        self.params = {"g": 1.0 + rng.normal(0.0, 0.1, in_shape[0])}

    def forward(self, a):
        return a * self.params["g"][:, None, None], a

    def backward(self, delta, a):
        g = self.params["g"][:, None, None]
        return delta * g, {"g": np.mean((delta * a).sum(axis=(2, 3)), axis=0)}
