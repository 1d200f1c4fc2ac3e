"""y = a ⊙ s[c]: a fixed per-channel scale, the last channel's 1e-7 (a channel nearly
switched off).  ``bug: sign``: backward flips the sign of that channel's δ — wrong by 100% on
a part of δ^{l-1} ten million times smaller than the rest, which no norm of the tensor sees."""
from __future__ import annotations

import numpy as np


class TinyChannel:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug
        self.s = np.ones(in_shape[0])
        self.s[-1] = 1e-7

    def forward(self, a):
        return a * self.s[None, :, None, None], None

    def backward(self, delta, cache):
        s = self.s.copy()
        if self.bug == "sign":
            s[-1] = -s[-1]
        return delta * s[None, :, None, None], {}
