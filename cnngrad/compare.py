"""Analytic against numeric: the error metrics of CONVENTIONS.md and the verdict.

With ``g`` analytic and ``n`` numeric over the checked entries (kink crossings left out):

* ``max_abs  = max |g − n|``
* ``max_rel  = max |g − n| / max(|g|, |n|, tiny)``
* ``norm_rel = ‖g − n‖ / (‖g‖ + ‖n‖)`` (0 where both are 0) — the verdict uses this one.

``norm_rel`` is scale-free and bounded by 1, and is not fooled by single entries near 0
(which make ``max_rel`` jump), so it is what is compared with the tolerance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .refs import TensorRef
from .resolution import Floor

Array = np.ndarray
TINY = float(np.finfo(np.float64).tiny)

# Default tolerances and steps are per method and dtype: ``finite_diff.METHODS``.  Central
# differences in float64, h = 1e-6: ~1e-12 of truncation and ~1e-10 of rounding, so correct
# gradients land near 1e-9 and real bugs (a wrong rotation, a missing σ', a factor) at
# 1e-3 … 1; tol 1e-6 sits between with orders of margin either side.


def tensor_label(tensor: str) -> str:
    """How a row's tensor is shown: a parameter's name, or "δ input" for ∂C/∂(layer input)."""
    return "δ input" if tensor == "input" else tensor


def show_tol(tol: float) -> str:
    """A tol as shown: ``1e-06``; ``2.5e-05`` or ``0.999`` where one digit would round it (a
    tol of 0.999 was shown as 1e+00); ``6.2e-12`` where three would too (--tol estimate)."""
    for text in (f"{tol:.0e}", f"{tol:.3g}"):
        if float(text) == tol:
            return text
    return f"{tol:.1e}"


@dataclass
class Metrics:
    max_abs: float
    max_rel: float
    norm_rel: float
    worst: int  # position (within the checked entries) of the largest |g − n|


SMALL = 16  # at most this many entries (a row along a few directions): Python floats, not numpy calls


def metrics(g: Array, n: Array) -> Metrics:
    """Errors of analytic g against numeric n (same shape, float64)."""
    g = np.asarray(g, dtype=np.float64).ravel()
    n = np.asarray(n, dtype=np.float64).ravel()
    if g.size == 0:
        return Metrics(0.0, 0.0, 0.0, -1)
    if g.size <= SMALL:
        return _metrics_small(g.tolist(), n.tolist())
    with np.errstate(all="ignore"):
        diff = np.abs(g - n)
        if not np.all(np.isfinite(diff)):
            bad = int(np.flatnonzero(~np.isfinite(diff))[0])
            return Metrics(float("nan"), float("nan"), float("nan"), bad)
        worst = int(np.argmax(diff))
        top = np.maximum(np.abs(g), np.abs(n))
        rel = diff / np.maximum(top, TINY)
        s = _scale(float(top.max()))
        gs, ns, ds = (g, n, g - n) if s == 1.0 else (g / s, n / s, (g - n) / s)  # the difference taken unscaled
        denom = _norm(gs) + _norm(ns)
        norm_rel = float(_norm(ds) / denom) if denom > 0 else 0.0
    return Metrics(float(diff.max()), float(rel.max()), norm_rel, worst)


def _scale(top: float) -> float:
    """What the entries are divided by before their squares are summed for norm rel (a ratio,
    the same for any scale): 1, or the largest of them where its square would overflow or
    underflow — gradients of 1e160 gave inf/inf, NaN (a QA pass), and of 1e-160 gave 0/0,
    taken as 0: a pass, whatever the error."""
    return top if top > 1e150 or 0.0 < top < 1e-150 else 1.0


def _metrics_small(g: list[float], n: list[float]) -> Metrics:
    """``metrics`` of a few entries in Python floats: the same formulas, sums taken in order
    (the dozen numpy calls of the array form cost ~20 µs a row along one direction)."""
    diff = [abs(a - b) for a, b in zip(g, n)]
    for i, d in enumerate(diff):
        if not math.isfinite(d):
            return Metrics(float("nan"), float("nan"), float("nan"), i)
    worst = max(range(len(diff)), key=diff.__getitem__)  # the first of the largest, as argmax
    top = [max(abs(a), abs(b)) for a, b in zip(g, n)]
    rel = max(d / max(t, TINY) for d, t in zip(diff, top))
    max_abs = diff[worst]
    s = _scale(max(top))
    if s != 1.0:  # the difference taken unscaled: g/s − n/s loses the digits g − n keeps
        g, n, diff = [a / s for a in g], [b / s for b in n], [d / s for d in diff]
    denom = math.sqrt(sum(a * a for a in g)) + math.sqrt(sum(b * b for b in n))
    norm_rel = math.sqrt(sum(d * d for d in diff)) / denom if denom > 0 else 0.0
    return Metrics(max_abs, float(rel), norm_rel, worst)


def _norm(v: Array) -> float:
    """‖v‖₂ by a pairwise sum, not BLAS: a threaded BLAS dot on a busy machine can take
    10 ms for 16k entries (its threads wait for each other)."""
    return float(np.sqrt(np.sum(v * v)))


@dataclass
class TensorCheck:
    """One row of the report: one tensor of one layer, named by ``ref``."""

    ref: TensorRef  # a parameter, or δ w.r.t. the layer's input
    kind: str
    shape: tuple[int, ...]
    checked: int
    kinks: int
    metrics: Metrics
    status: str  # one of STATUSES: "pass" | "fail" | "unresolved"
    tol: float
    mode: str = "entries"  # "entries": entry by entry; "directions": along random unit directions
    norm_rel_half: float | None = None  # the same entries differenced at h/2 (a convergence check)
    note: str = ""  # e.g. why a directional row became an entry-wise one
    diagnosis: list = field(default_factory=list)  # the bug transforms that explain the mismatch
    indices: Array = field(repr=False, default=None)  # type: ignore[arg-type]  # flat indices checked
    analytic: Array = field(repr=False, default=None)  # type: ignore[arg-type]  # at those indices
    numeric: Array = field(repr=False, default=None)  # type: ignore[arg-type]
    kink_mask: Array = field(repr=False, default=None)  # type: ignore[arg-type]  # which of those stencils crossed a kink
    reason: str = ""  # why the status is not norm rel against tol: every entry a kink, below the floor
    estimate: float | None = None  # Ridders: the largest per-entry error estimate (absolute), else None
    confirmed: Array = field(repr=False, default=None)  # type: ignore[arg-type]  # the complex step's values, where it confirmed a failure
    # where the complex step failed a row central differences could not resolve, and the same step
    # run in longdouble agrees or sees ~0: why that failure is the complex step's own rounding
    # (confirm.wide_look; the rounding excuse takes it when the backward's own does not apply)
    complex_rounding: str = ""
    # the same entries differenced at h/2, and whether those stencils crossed a kink (second_look)
    numeric_half: Array = field(repr=False, default=None)  # type: ignore[arg-type]
    kinks_half: Array = field(repr=False, default=None)  # type: ignore[arg-type]

    def norm_rel_of(self, num: Any) -> float:
        """Norm rel of these entries' analytic values against another difference of them
        (``num``: its ``values`` and ``kinks``), stencils that crossed a kink either time left out."""
        ok = ~(self.kink_mask | num.kinks)
        return metrics(self.analytic[ok], num.values[ok]).norm_rel

    def keep_half(self, num: Any) -> None:
        """``num``, the same entries differenced at h/2: kept — its norm rel for the convergence
        text, its values and kinks for ``confirm.extrapolated_look``."""
        self.norm_rel_half = self.norm_rel_of(num)
        self.numeric_half, self.kinks_half = np.asarray(num.values), np.asarray(num.kinks, dtype=bool)

    @property
    def tol_text(self) -> str:
        """The row's tol as shown (``show_tol``)."""
        return show_tol(self.tol)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def unresolved(self) -> bool:
        return self.status == "unresolved"

    @property
    def mismatch(self) -> bool:
        """Failed on its numbers (not because nothing could be compared): what localisation blames."""
        return self.failed and self.checked > 0

    @property
    def layer(self) -> int | str:
        """JSON ``layer``: the top-level layer index, or inside a block its path ``"3.1.0"``."""
        return self.ref.json_layer

    @property
    def tensor(self) -> str:
        """The JSON ``tensor``: the parameter's name, or "input" for a δ row (see ``ref.role``)."""
        return self.ref.tensor

    def convergence(self, order: int = 2, method: str = "") -> str:
        """What halving h did to the error, and what that means (needs ``norm_rel_half``);
        ``method``: the differences' (a complex step's remedy is its own smaller step)."""
        e1, e2 = self.metrics.norm_rel, self.norm_rel_half
        if e2 is None or self.checked == 0 or not (np.isfinite(e1) and np.isfinite(e2)):
            return ""
        if e1 == 0 or e2 == 0:
            return "exact at h and h/2"
        ratio = e1 / e2
        said = f"norm rel {e1:.1e} at h, {e2:.1e} at h/2"
        if ratio >= 2 ** order * 0.6:
            remedy = "a smaller --eps (the complex step's own is 1e-20)" if method == "complex" else \
                "a smaller --eps, or --method richardson / complex"
            return f"{said}: falls {ratio:.1f}x as h halves (order {order}: {2 ** order}x) — truncation error, " \
                   f"not a bug: use {remedy}"
        if ratio < 0.7:
            return f"{said}: grows as h shrinks — rounding error dominates: use a larger --eps"
        if ratio >= 1.5:  # shrinks, but slower than the order: not "does not shrink"
            return f"{said}: falls {ratio:.1f}x as h halves, less than order {order} would ({2 ** order}x) — " \
                   f"h too far from 0 for the order to show, a loss not smooth enough for it, or a bug"
        if self.passed:
            return f"{said}: at the rounding floor"
        if self.unresolved:
            return said
        return f"{said}: does not shrink with h — the analytic gradient is wrong, not the step"

    def worst_entry(self) -> str:
        """``analytic … numeric … at [i, j, …]`` for the largest mismatch."""
        w = self.metrics.worst
        if w < 0 or self.indices is None:
            return ""
        ok = ~self.kink_mask if self.kink_mask is not None else slice(None)
        idx = self.indices[ok][w]
        if self.mode == "directions":
            return f"analytic v·∇C {self.analytic[ok][w]:.10g} numeric {self.numeric[ok][w]:.10g} along direction {idx}"
        where = ", ".join(str(int(i)) for i in np.unravel_index(idx, self.shape))
        return f"analytic {self.analytic[ok][w]:.10g} numeric {self.numeric[ok][w]:.10g} at [{where}]"



STATUSES = ("pass", "fail", "unresolved")


def judge(ref: TensorRef, kind: str, shape: tuple[int, ...], indices: Array,
          analytic: Array, numeric: Array, kinks: Array, tol: float, mode: str = "entries",
          floor: Floor | None = None) -> TensorCheck:
    """Compare analytic and numeric at the checked entries (or directions), leaving kink
    crossings out.  The status:

    * ``"pass"``: norm rel ≤ tol, everything finite;
    * ``"fail"``: norm rel > tol (or not finite) — or no entry could be compared at all,
      every stencil having crossed a kink (nothing checked is not a pass);
    * ``"unresolved"``: norm rel > tol, but both sides are at most ``floor`` (the smallest
      gradient the differences can resolve at this loss scale): neither right nor wrong."""
    ok = ~kinks
    g, n = analytic[ok], numeric[ok]
    m = metrics(g, n)
    passed = np.isfinite(m.norm_rel) and m.norm_rel <= tol and np.all(np.isfinite(analytic))
    status, reason = ("pass" if passed else "fail"), ""
    if not ok.any() and kinks.any():
        status = "fail"
        what = "directions" if mode == "directions" else "entries"
        reason = (f"not checked: every one of its {int(kinks.sum())} {what}' stencils crossed a kink, so nothing "
                  f"was compared — use a smaller --eps, or --avoid-kinks")
    elif status == "fail" and floor is not None and floor.covers(g, n):
        status, reason = "unresolved", floor.reason(g, n)
    return TensorCheck(ref, kind, tuple(shape), int(ok.sum()), int(kinks.sum()), m, status, tol, mode,
                       indices=indices, analytic=analytic, numeric=numeric, kink_mask=kinks, reason=reason)
