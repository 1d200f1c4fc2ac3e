"""``--tol estimate``: each tensor's tolerance set by Ridders' own error estimate.

Ridders' tableau (``--method ridders``) gives, per entry, an estimate ``e_j`` of how far its
extrapolated difference may be from ``∂C/∂θ_j``.  The backward has a rounding of its own,
``r`` per entry at most (``resolution.Floor.rounding``: K·ε·G in the network's dtype, or K
times the rounding measured in ``np.longdouble``).  Over a tensor's K checked entries, with
``g`` analytic and ``n`` numeric, the two sides of a right backward can differ by about::

    bound = (‖e‖ + r·√K) / (‖g‖ + ‖n‖)                 (in norm rel, like the verdict)

and the tensor's tolerance is that bound with a margin, never below a few ε and never
above the default (the config's ``check.tol``, else the method's)::

    tol = min(default, max(FLOOR, MARGIN · bound))

So the estimate can only make a check *stricter*: a noisy or huge estimate leaves the
default, and a NaN or infinite one too.  A row without an estimate (the layer scope's
end-to-end row, along directions) keeps the default; in the layer scope each link has an
estimate of its own.  A float32 backward's rounding (ε₃₂·G an entry) enters the bound, so
its tolerances stay above what that backward can deliver (on ``smooth`` in float32: 8e-7 …
1e-4, a correct net using at most 5% of them).
"""
from __future__ import annotations

import numpy as np

Array = np.ndarray
MARGIN = 10.0  # over the estimated bound: Ridders' estimate is an estimate, not a bound
FLOOR = 8 * float(np.finfo(np.float64).eps)  # ~1.8e-15: no float64 check is stricter than a few ε
RULES = ("fixed", "estimate")


def from_estimate(analytic: Array, numeric: Array, errors: Array, rounding: float,
                  default: float) -> tuple[float, float]:
    """(the tensor's tolerance, the bound it came from) for ``analytic`` and ``numeric``
    gradients and Ridders' per-entry ``errors`` (all of shape (K,), kink crossings left
    out), the backward's rounding ``rounding`` per entry (absolute) and the ``default``
    tolerance, the ceiling.  The bound is NaN when there is nothing to bound (K = 0, or a
    non-finite side): the default stays."""
    g = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    with np.errstate(all="ignore"):
        size = float(np.sqrt(np.sum(g * g)) + np.sqrt(np.sum(n * n)))
        spread = float(np.sqrt(np.sum(e * e))) + float(rounding) * np.sqrt(g.size)
        bound = spread / size if size > 0 else float("nan")
    if g.size == 0 or not np.isfinite(bound):
        return default, float("nan")
    return float(min(default, max(FLOOR, MARGIN * bound))), bound
