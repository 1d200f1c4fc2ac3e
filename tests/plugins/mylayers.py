"""Layers written the way a user writes them (own numpy, the plugin protocol), each with an
optional deliberate bug: ``bug: null`` is the correct twin."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Conv2D:
    """z = W ⋆ pad(a) + b, square kernel k, stride s, padding p."""

    def __init__(self, in_shape, rng, *, filters, kernel=3, stride=1, padding=0, bug=None):
        c, h, w = in_shape
        self.k, self.s, self.p, self.bug = kernel, stride, padding, bug
        self.geometry = {"op": "conv", "kernel": kernel, "stride": stride, "padding": padding}  # for diagnoses
        ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
        self.out_shape = (filters, ho, wo)
        self.params = {"W": rng.normal(0, 1 / np.sqrt(c * kernel * kernel), (filters, c, kernel, kernel)),
                       "b": rng.normal(0, 0.1, filters)}

    def _windows(self, a_pad):
        v = sliding_window_view(a_pad, (self.k, self.k), axis=(2, 3))
        return v[:, :, :: self.s, :: self.s]  # (n, c, ho, wo, k, k)

    def forward(self, a):
        a_pad = np.pad(a, ((0, 0), (0, 0), (self.p, self.p), (self.p, self.p)))
        z = np.einsum("ncijuv,ocuv->noij", self._windows(a_pad), self.params["W"]) + self.params["b"][:, None, None]
        return z, (a.shape, a_pad)

    def backward(self, delta, cache):
        shape, a_pad = cache
        W = self.params["W"]
        dW = np.einsum("ncijuv,noij->ocuv", self._windows(a_pad), delta)
        db = delta.sum(axis=(0, 2, 3))
        # δ_in: dilate δ by the stride, pad by k−1, correlate with ROT180(W), channels swapped
        n, o, ho, wo = delta.shape
        dil = np.zeros((n, o, (ho - 1) * self.s + 1, (wo - 1) * self.s + 1))
        dil[:, :, :: self.s, :: self.s] = delta
        full = np.pad(dil, ((0, 0), (0, 0), (self.k - 1, self.k - 1), (self.k - 1, self.k - 1)))
        v = sliding_window_view(full, (self.k, self.k), axis=(2, 3))
        d_pad = np.einsum("noijuv,ocuv->ncij", v, W[:, :, ::-1, ::-1])
        hp, wp = a_pad.shape[2:]
        out = np.zeros(a_pad.shape)
        out[:, :, : d_pad.shape[2], : d_pad.shape[3]] = d_pad[:, :, :hp, :wp]
        p, h, w = self.p, shape[2], shape[3]
        delta_in = out[:, :, p : p + h, p : p + w]
        if self.bug == "dw_rotated":          # ∂W by a true convolution where a correlation belongs
            dW = dW[:, :, ::-1, ::-1]
        elif self.bug == "dw_one_flip":       # "rotated" by flipping a single axis
            dW = dW[:, :, ::-1, :]
        elif self.bug == "dw_swapped":        # W[o, c] and W[c, o] mixed up
            dW = dW.swapaxes(0, 1)
        elif self.bug == "bias_batch_mean":   # the batch mean where the sum belongs
            db = delta.sum(axis=(2, 3)).mean(axis=0)
        elif self.bug == "crop_off_by_one":   # the padding cropped one pixel too far down
            delta_in = out[:, :, p + 1 : p + 1 + h, p : p + w]
        elif self.bug == "border_zeroed":     # the border of δ thrown away
            delta_in = delta_in.copy()
            delta_in[:, :, [0, -1], :] = 0
            delta_in[:, :, :, [0, -1]] = 0
        elif self.bug == "stride_grid_only":  # δ spread only to each window's first tap
            keep = np.zeros_like(delta_in)
            keep[:, :, :: self.s, :: self.s] = delta_in[:, :, :: self.s, :: self.s]
            delta_in = keep
        return delta_in, {"W": dW, "b": db}


class Tanh:
    """a = tanh(z); δ_in = δ ⊙ (1 − a²)."""

    geometry = {"op": "elementwise"}  # lets a diagnosis evaluate σ' where a bug would

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, z):
        a = np.tanh(z)
        return a, a

    def backward(self, delta, a):
        if self.bug == "no_sigma_prime":
            return delta, {}
        return delta * (1 - a * a), {}


class Broken:
    """Breaks the protocol itself, as ``how`` says."""

    def __init__(self, in_shape, rng, how="raise"):
        self.out_shape, self.how = tuple(in_shape), how
        self.params = {"g": np.ones(1)}

    def forward(self, a):
        if self.how == "raise":
            raise RuntimeError("boom in forward")
        if self.how == "shape":
            return a[:, :1], None
        return a * self.params["g"][0], a

    def backward(self, delta, a):
        if self.how == "keys":
            return delta * self.params["g"][0], {"gain": np.sum(delta * a)}
        return delta * self.params["g"][0], {"g": np.array([np.sum(delta * a)])}
