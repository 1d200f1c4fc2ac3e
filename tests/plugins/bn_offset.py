"""A train-mode batch norm whose δ carries a tiny per-channel offset, k·mean_c(δ^l) (``bug:
offset``; in truth every channel of that δ sums to 0): its δ row passes at norm rel ~3.6e-7
(k = 1e-5), while the bias of the conv below — 0 in truth — fails at norm rel 1.  The conv is
right for the δ it receives; the localisation had named it (a QA pass)."""
from __future__ import annotations

import numpy as np


class BN:
    def __init__(self, in_shape, rng, eps=1e-5, bug=None, k=1e-5):
        c = in_shape[0]
        self.eps, self.bug, self.k, self.out_shape = eps, bug, k, tuple(in_shape)
        self.params = {"gamma": 1.0 + rng.normal(0, 0.1, c), "beta": rng.normal(0, 0.1, c)}

    def forward(self, x):
        ax = (0, 2, 3)
        xc = x - x.mean(axis=ax, keepdims=True)
        inv = 1 / np.sqrt((xc * xc).mean(axis=ax, keepdims=True) + self.eps)
        xh = xc * inv
        return self.params["gamma"].reshape(1, -1, 1, 1) * xh + self.params["beta"].reshape(1, -1, 1, 1), (xh, inv)

    def backward(self, d, cache):
        """δ^{l-1} = (1/σ)(g − mean g − x̂·mean(g·x̂)), g = γ·δ^l."""
        xh, inv = cache
        ax = (0, 2, 3)
        grads = {"gamma": (d * xh).sum(axis=ax), "beta": d.sum(axis=ax)}
        g = self.params["gamma"].reshape(1, -1, 1, 1) * d
        out = inv * (g - g.mean(axis=ax, keepdims=True) - xh * (g * xh).mean(axis=ax, keepdims=True))
        if self.bug == "offset":
            out = out + self.k * d.mean(axis=ax, keepdims=True)
        return out, grads
