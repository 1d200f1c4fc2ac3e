"""Right layers whose arrays are in Fortran order, as numpy makes them (a transposed draw, a
product transposed back): writes through ``reshape(-1)`` of such an array land in a copy.

* FDense: z = a Wᵀ + b, W drawn (k, units) and transposed: stored Fortran-ordered.  The layer
  scope's perturbation of W was lost (numeric 0: "backward is wrong"); the network scope
  stopped with a traceback ("must be C-contiguous").
* TDense: z = (W aᵀ)ᵀ, a Fortran-ordered output: elementwise layers after it kept the order,
  and the layer scope failed their input rows (a batch norm's, a tanh's).
``bug: half_w``: ∂C/∂W half of what it is.
"""
from __future__ import annotations

import numpy as np


class FDense:
    per_sample = True

    def __init__(self, in_shape, rng, units=3, bug=None):
        (k,) = in_shape
        self.out_shape, self.bug = (units,), bug
        self.params = {"W": rng.normal(0, 1 / np.sqrt(k), (k, units)).T, "b": rng.normal(0, 0.1, units)}

    def forward(self, a):
        return a @ self.params["W"].T + self.params["b"], a

    def backward(self, delta, a):
        """δ^{l-1} = δ W, ∂C/∂W = δᵀ a, ∂C/∂b = Σ_n δ."""
        w = delta.T @ a * (0.5 if self.bug == "half_w" else 1.0)
        return delta @ self.params["W"], {"W": w, "b": delta.sum(0)}


class TDense(FDense):
    def forward(self, a):
        return (self.params["W"] @ a.T).T + self.params["b"], a
