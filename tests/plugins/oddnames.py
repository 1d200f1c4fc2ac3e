"""A layer whose parameter is named ``input`` (CONVENTIONS.md: a parameter may have any
name): ``y = x · input[c]`` per channel (per feature on (N, F) input).  ``bug: double``
returns twice the true ∂C/∂input."""
from __future__ import annotations


class Gain:
    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {"input": 1.0 + rng.normal(0.0, 0.3, in_shape[0])}

    def _per_channel(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x):
        return x * self._per_channel(self.params["input"], x.ndim), x

    def backward(self, delta, x):
        """``δ_in = δ · input[c]``, ``∂C/∂input[c] = Σ δ · x`` over all but the channel axis."""
        axes = (0,) + tuple(range(2, delta.ndim))
        g = (delta * x).sum(axis=axes)
        if self.bug == "double":
            g = 2 * g
        return delta * self._per_channel(self.params["input"], delta.ndim), {"input": g}
