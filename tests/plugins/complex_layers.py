"""Plugin layers for tests/test_honest.py: correct backwards whose forwards cannot carry an
imaginary part (np.real, a float buffer, rfft2), one that can, and two deliberate bugs.
None declares ``complex_safe``: what they can do must be probed."""
from __future__ import annotations

import numpy as np


class RealPart:
    """a = z, through np.real: right for real input, drops the imaginary part."""

    def __init__(self, in_shape, rng):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, z):
        return np.real(z).copy(), None

    def backward(self, delta, cache):
        return delta, {}


class FloatBuffer:
    """a = z, written into a float buffer (numpy warns ComplexWarning and drops Im)."""

    def __init__(self, in_shape, rng):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, z):
        out = np.empty(z.shape)
        out[...] = z
        return out, None

    def backward(self, delta, cache):
        return delta, {}


class FourierBlur:
    """a = K ⊛ z, a circular convolution of each (h, w) map with a fixed 3x3 kernel, via
    rfft2 (which refuses complex input); δ_in = the adjoint: correlation with K."""

    def __init__(self, in_shape, rng):
        c, h, w = in_shape
        self.out_shape, self.params = tuple(in_shape), {}
        k = np.zeros((h, w))
        k[:3, :3] = rng.normal(0.0, 1.0, (3, 3))
        self.K = np.fft.rfft2(k)
        self.hw = (h, w)

    def forward(self, z):
        return np.fft.irfft2(np.fft.rfft2(z) * self.K, s=self.hw), None

    def backward(self, delta, cache):
        return np.fft.irfft2(np.fft.rfft2(delta) * np.conj(self.K), s=self.hw), {}


class Scale:
    """a = s ⊙ z, one scale per channel (s of shape (C,)); ``bug: double`` returns 2·∂C/∂s."""

    def __init__(self, in_shape, rng, bug=None, init=1.0):
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {"s": init * rng.normal(1.0, 0.1, in_shape[0])}

    def forward(self, z):
        return z * self.params["s"][None, :, None, None], z

    def backward(self, delta, z):
        ds = np.sum(delta * z, axis=(0, 2, 3))
        if self.bug == "double":
            ds = 2 * ds
        return delta * self.params["s"][None, :, None, None], {"s": ds}


class RealBias:
    """a = z + b per channel, but b goes through np.real: the input keeps an imaginary part,
    the parameter does not."""

    def __init__(self, in_shape, rng):
        self.out_shape = tuple(in_shape)
        self.params = {"b": rng.normal(0.0, 0.1, in_shape[0])}

    def forward(self, z):
        return z + np.real(self.params["b"])[None, :, None, None], None

    def backward(self, delta, cache):
        return delta, {"b": delta.sum(axis=(0, 2, 3))}


class SatTanh:
    """a = tanh(k·z), saturated for large k; ``bug: identity`` passes δ down unchanged
    (a large analytic gradient where the true one is ~0)."""

    def __init__(self, in_shape, rng, k=1.0, bug=None):
        self.out_shape, self.params, self.k, self.bug = tuple(in_shape), {}, float(k), bug

    def forward(self, z):
        a = np.tanh(self.k * z)
        return a, a

    def backward(self, delta, a):
        if self.bug == "identity":
            return delta, {}
        return delta * self.k * (1 - a * a), {}


class Center:
    """a = z − mean of z over each map (h, w): a constant added to a map changes nothing, so
    a tied conv bias right before it has a true gradient of exactly 0.
    δ_in = δ − mean of δ over each map."""

    def __init__(self, in_shape, rng):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, z):
        return z - z.mean(axis=(2, 3), keepdims=True), None

    def backward(self, delta, cache):
        return delta - delta.mean(axis=(2, 3), keepdims=True), {}


class DeclaredFloatBuffer(FloatBuffer):
    """FloatBuffer that declares complex_safe (falsely): it is trusted, not probed."""

    complex_safe = True


class MildSoftsign:
    """y = a / (1 + λ|a|), dy/da = 1 / (1 + λ|a|)²; undeclared.  On complex input np.abs is the
    modulus, so its imaginary part follows 1 / (1 + λ|a|) — about λ|a| (1%) off the derivative.
    ``bug: quotient``: backward forgets the quotient rule, δ / (1 + λ|a|)."""

    per_sample = True

    def __init__(self, in_shape, rng, lam=0.01, bug=None):
        self.out_shape, self.params, self.lam, self.bug = tuple(in_shape), {}, lam, bug

    def forward(self, a):
        d = 1.0 + self.lam * np.abs(a)
        return a / d, d

    def backward(self, delta, d):
        return (delta / d if self.bug == "quotient" else delta / d ** 2), {}
