"""A max pool written by hand (non-overlapping k×k windows), with ``kink_state`` and nothing
else declared but ``per_sample``: the engine cannot hold it on its piece, nor run the
complex step through it.  ``bug: ties_all``: backward gives δ to every entry tied for the
maximum instead of the first one the forward took — wrong only where windows tie, as they do
after a nearest upsampling."""
from __future__ import annotations

import numpy as np


class TiedPool:
    per_sample = True

    def __init__(self, in_shape, rng, size=2, bug=None):
        c, h, w = in_shape
        self.k, self.bug, self.params = size, bug, {}
        self.out_shape = (c, h // size, w // size)

    def _windows(self, a):
        n, c, h, w = a.shape
        k, ho, wo = self.k, h // self.k, w // self.k
        return a[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k).transpose(0, 1, 2, 4, 3, 5).reshape(
            n, c, ho, wo, k * k)

    def forward(self, a):
        x = self._windows(a)
        return x.max(-1), (a.shape, x)

    def kink_state(self, cache):
        return cache[1].argmax(-1)

    def backward(self, delta, cache):
        shape, x = cache
        n, c, h, w = shape
        k, ho, wo = self.k, h // self.k, w // self.k
        if self.bug == "ties_all":
            routed = (x == x.max(-1, keepdims=True)) * delta[..., None]
        else:
            routed = np.zeros_like(x)
            np.put_along_axis(routed, x.argmax(-1)[..., None], delta[..., None], -1)
        out = np.zeros(shape)
        out[:, :, :ho * k, :wo * k] = routed.reshape(n, c, ho, wo, k, k).transpose(0, 1, 2, 4, 3, 5).reshape(
            n, c, ho * k, wo * k)
        return out, {}


class TiedPoolC(TiedPool):
    """The same pool, declared ``complex_safe`` (its max and argmax run on complex numbers —
    numpy orders them by real part, then imaginary): the complex step runs through it."""

    complex_safe = True
