"""The resolution floor: how small a gradient the differences can still tell from zero.

A difference quotient divides a change of the loss by the step.  The loss is computed to
rounding, ``ε·S`` with ``S`` the size of the numbers it is made of (the loss itself, the
last layer's output a^L and, for MSE, the targets y); divided by the step ``h``, that leaves

    resolution = K · ε · S / h          (K = 10, a margin over the constant)

for central, forward and Richardson differences.  The complex step has no cancellation
between two losses, but the imaginary parts it carries are still added to each other and
rounded, so it resolves down to ``K · ε · S`` (as if h were 1) — far lower, not zero: a
saturated softmax (loss exactly 0, gradients ~1e-65) loses its imaginary part too.

The backward has a rounding of its own: ``K · ε · G`` in the network's dtype, G the largest
gradient entry of the network, so a float32 backward's "zero" is ~1e-6·G (a bias right before
a batch norm has a true gradient of 0) — or, larger, ``K`` times the rounding measured by
running the backward again in ``np.longdouble`` (``measured_rounding``): a train-mode batch
norm's ``1/σ`` amplifies the rounding of the terms that cancel to that 0, to hundreds of
ε·G on a small batch.  The analytic side counts as ~0 below the larger of the two.

A tensor whose analytic and numeric gradients are both at most the resolution (and that
does not agree) cannot be judged: ``compare.judge`` calls it ``unresolved``, never a pass
and never a failure.  A gradient above the resolution on either side still decides.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

Array = np.ndarray
T = TypeVar("T")
MARGIN = 10.0  # K: the rounding of a forward pass adds up over its layers
ATTAINABLE = 100.0  # a tol below this many ε of float64 is not one arithmetic can meet (``at_rounding``)


@dataclass(frozen=True)
class Floor:
    """What the differences of one check can resolve: gradients at most ``value`` (in
    max-norm over the checked entries) are indistinguishable from 0; an analytic gradient
    is, too, up to ``rounding`` (the backward's own).  ``method`` ("central differences",
    "the complex step") and ``loss`` are for the reason shown in the report."""

    value: float
    method: str
    loss: float
    rounding: float = 0.0
    # the measured part of ``rounding`` (``K·measured_rounding``), taken only when a row needs
    # it (a failing row the floor might cover): the longdouble pass costs more than a small check
    measure: Callable[[], float] | None = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, tuple[float, str, float, float]]:
        """Pickled (a report sent back by a worker) with the rounding measured, not the function."""
        return (Floor, (self.value, self.method, self.loss, self.backward_rounding()))

    def backward_rounding(self) -> float:
        """The analytic side's rounding: ``rounding``, or the measured one if larger."""
        return max(self.rounding, self.measure()) if self.measure is not None else self.rounding

    def covers(self, analytic: Array, numeric: Array) -> bool:
        """Both sides at most the resolution, and finite (a NaN is a failure, not a floor)."""
        g = np.abs(np.asarray(analytic, dtype=np.float64))
        n = np.abs(np.asarray(numeric, dtype=np.float64))
        if g.size == 0 or not (np.all(np.isfinite(g)) and np.all(np.isfinite(n))):
            return False
        if not n.max() <= self.value:
            return False
        return bool(g.max() <= self.value or g.max() <= self.backward_rounding())

    def reason(self, analytic: Array, numeric: Array) -> str:
        """Why a row is unresolved, and what would help."""
        size = max(float(np.max(np.abs(analytic))), float(np.max(np.abs(numeric))))
        magnitude = f"~{size:.0e}" if size > 0 else "0"
        if float(np.max(np.abs(analytic))) > self.value:  # the analytic side is ~0 to its own rounding
            magnitude += f" (analytic ~0 to the backward's rounding {self.backward_rounding():.0e})"
        return (f"gradients {magnitude} below the resolution {self.value:.0e} of {self.method} at "
                f"loss {self.loss:.3g}: rescale the loss / inputs, or check this layer in a non-saturated regime")


def loss_scale(loss: float, out: Array, y: Array) -> float:
    """S: the size of the numbers the loss is computed from — |C|, max |a^L| and, for
    float targets (MSE), max |y|."""
    scale = abs(float(loss)) if np.isfinite(loss) else 0.0
    with np.errstate(all="ignore"):
        a = np.abs(np.asarray(out, dtype=np.float64))
        scale += float(a.max()) if a.size and np.all(np.isfinite(a)) else 0.0
        if np.asarray(y).dtype.kind == "f" and np.asarray(y).size:
            scale += float(np.abs(np.asarray(y, dtype=np.float64)).max())
    return scale


def largest(arrays: list[Array]) -> float:
    """G: the largest finite |entry| of the network's gradients."""
    with np.errstate(all="ignore"):
        return max((_largest(a) for a in arrays if a.size), default=0.0)


def _largest(a: Array) -> float:
    """The largest finite |entry| of a non-empty ``a``: one max of |a| where it is finite (the
    rule: ``where=`` costs 3x), else again over its finite entries."""
    top = float(np.max(np.abs(a)))
    return top if np.isfinite(top) else float(np.max(np.abs(a), where=np.isfinite(a), initial=0.0))


def longdouble_is_wider() -> bool:
    """Whether ``np.longdouble`` has more digits than float64 here (x86: 11 more bits; not on
    every platform), so that a backward run in it measures float64's rounding."""
    return bool(np.finfo(np.longdouble).eps < np.finfo(np.float64).eps)


def cast_layer(layer: Any, dtype: Any) -> None:
    """In place: a layer's parameters and buffers (running statistics, dropout masks) cast to
    ``dtype`` — exactly, when it is wider.  On a copy: the network checked is left as it is."""
    for name in layer.params:
        layer.params[name] = layer.params[name].astype(dtype)
    for name in getattr(layer, "buffers", {}):
        layer.buffers[name] = layer.buffers[name].astype(dtype)


def wide_trace(net: Any, x: Array, y: Array) -> tuple[list[Array], list[dict[str, Array]],
                                                      dict[tuple[int, ...], Array]] | None:
    """The same network, x and y run in ``np.longdouble`` (11 more bits than float64 on x86):
    δ at every layer boundary, every parameter gradient, δ inside blocks — the backward's
    own arithmetic, with its rounding made smaller.  None where longdouble is no wider than
    float64 or a layer does not run in it (a plugin may not)."""
    wide_t = np.longdouble
    if not longdouble_is_wider():
        return None
    wide = copy.deepcopy(net)
    inner: dict[tuple[int, ...], Array] = {}
    try:
        for layer in wide.layers:
            cast_layer(layer, wide_t)
        with np.errstate(all="ignore"):
            _, deltas, grads, _ = wide.trace(x.astype(wide_t), y.astype(wide_t) if y.dtype.kind == "f" else y, inner)
    except Exception:  # a layer that does not take longdouble: no measurement
        return None
    return deltas, grads, inner


def measured_rounding(net: Any, x: Array, y: Array, deltas: list[Array], grads: list[dict[str, Array]],
                      wide: tuple[list[Array], list[dict[str, Array]], Any] | None = None) -> float:
    """The backward's own rounding, measured: the largest |g − g_wide| over every δ (``deltas``)
    and parameter gradient (``grads``), g_wide from ``wide_trace`` (or ``wide``, its result).
    A gradient that is 0 in truth is all rounding, so it is at most this.  0 where there is
    no wide trace."""
    wide = wide if wide is not None else wide_trace(net, x, y)
    if wide is None:
        return 0.0
    wide_deltas, wide_grads, _ = wide
    pairs = list(zip(deltas, wide_deltas))
    pairs += [(g[name], w[name]) for g, w in zip(grads, wide_grads) for name in g]
    with np.errstate(all="ignore"):
        diffs = [np.abs(np.asarray(a, dtype=np.longdouble) - np.asarray(b, dtype=np.longdouble)) for a, b in pairs]
        worst = max((float(np.max(d, where=np.isfinite(d), initial=0.0)) for d in diffs if d.size), default=0.0)
    return worst if worst <= trusted(deltas, grads) else 0.0


def trusted(deltas: list[Array], grads: list[dict[str, Array]]) -> float:
    """How far a gradient may move between the network's dtype and longdouble and still be
    called rounding: √ε·G.  More is not rounding but a backward that computes something else
    in longdouble (a dtype-dependent branch): trusting it would excuse real errors."""
    unit = float(np.finfo(np.result_type(*[g.dtype for g in deltas])).eps)
    return float(np.sqrt(unit)) * largest(deltas + [g for gr in grads for g in gr.values()])


def rounding_trust(deltas: list[Array], grads: list[dict[str, Array]], loss: float, out: Array, y: Array) -> float:
    """How far a low-precision backward may be off from its longdouble run and still be
    rounding, per entry: ``trusted`` (√ε·G), or ``K·ε·S`` with S the size of the numbers the
    loss gradient is made of (``loss_scale``): a saturated softmax's p − y, with p = 1 − 1e-9
    rounded to 1 in float32, is off by ~1e-9 from terms of size 1, however small G is."""
    unit = float(np.finfo(np.result_type(*[g.dtype for g in deltas])).eps)
    return max(trusted(deltas, grads), MARGIN * unit * loss_scale(loss, out, y))


def precision_bound(check: Any, wide: Array, tol: float, trust: float, dtype: str,
                    at64: tuple[Array, float] | None = None) -> str:
    """Why a failing row of a low-precision network (float32) is not a failure, or "".

    ``wide``: the row's analytic gradient from ``wide_trace`` (the same backward in
    longdouble); the differences are the complex step's where it confirmed the failure
    (``confirm``), else the row's.  The row is the backward's own rounding, not a wrong formula, when that
    same backward, run wide, agrees with the differences (norm rel ≤ tol) while its
    ``dtype`` result is off from the wide one by no more than rounding can (``trust``, see
    ``rounding_trust``, per entry).  A bug is in the wide run too, so it is never excused
    here — only a backward wrong in float32 alone (a dtype-dependent branch) within that
    bound would be.  "Agrees" is norm rel ≤ tol, or ``at_rounding``'s agreement at float64's
    own rounding, where ``at64`` (the same backward run in float64 on this tensor, and
    ``rounding_trust`` in float64: a saturated softmax's p − y loses ~ε64 of terms of size 1
    there too) is given: the differences are float64 arithmetic, and a gradient 0 in
    truth (a bias right before a norm that removes its mean) comes out of the complex step as
    ~1e-14, of the float64 backward as ~2e-14 and of the longdouble one as ~1e-17 — norm rel
    1 between any two, with nothing wrong; a bug widens the gap, not float64's rounding."""
    from .compare import metrics  # compare imports Floor from here
    ok = ~check.kink_mask
    if check.mode != "entries" or not ok.any():
        return ""
    w = np.asarray(wide, dtype=np.float64).reshape(-1)[check.indices][ok]
    numeric = check.numeric if check.confirmed is None else check.confirmed  # the complex step, where it ran
    g, n = check.analytic[ok], numeric[ok]
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(g))):
        return ""
    wide_rel = metrics(w, n).norm_rel
    off = float(np.max(np.abs(g - w)))
    agrees = f"norm rel {wide_rel:.1e} ≤ tol" if wide_rel <= tol else ""
    if not agrees and at64 is not None and np.all(np.isfinite(n)):
        g64 = np.asarray(at64[0], dtype=np.float64).reshape(-1)[check.indices][ok]
        # float64's rounding on this tensor: the float64 backward's, or (where that came out exact,
        # a sum that cancelled to 0 by luck) the dtype's own rounding scaled by ε64/ε_dtype
        scaled = off * float(np.finfo(np.float64).eps / np.finfo(np.dtype(dtype)).eps)
        rounding, apart = max(float(np.max(np.abs(g64 - w))), scaled), float(np.max(np.abs(n - w)))
        if apart <= MARGIN * rounding and rounding <= at64[1]:
            how = (f"the {dtype} backward's scaled by ε64/ε_{dtype}: the float64 one came out exact"
                   if scaled > float(np.max(np.abs(g64 - w))) else "the same backward's in float64")
            agrees = f"to {apart:.0e}, within {MARGIN:.0f}x float64's rounding on this tensor {rounding:.0e} ({how})"
    if not (agrees and off <= trust):
        return ""
    by = "the complex step" if check.confirmed is not None or "complex step" in check.note else "the differences"
    return (f"{dtype} rounding of the backward: the same backward run in longdouble agrees with {by} "
            f"({agrees}), its {dtype} result is off by up to {off:.1e} "
            f"(cancellation): check this layer in float64 to judge it at tol")


def at_rounding(check: Any, wide: Array, trust: float, summed: Callable[[], float] | None = None) -> str:
    """Why a failing row of a float64 network is not a failure, or "": its mismatch is no
    larger than ``MARGIN`` times what this backward's own float64 arithmetic is off, on this
    tensor, from the same backward run in longdouble (``wide``).

    A gradient a train-mode batch norm cancels to ~1e-10 is made of terms ~1e-4: its float64
    value carries ~1e-16 of rounding, and so does the complex step's, so they can be 3e-16
    apart — 2e-6 relative, above tol — with nothing wrong.  A bug is in the longdouble run
    too: it widens the mismatch, not the rounding, so it is excused only where it is no
    larger than rounding, which no difference quotient resolves anyway.  The rounding must
    look like rounding (at most ``trust``, √ε·G of the network), not a backward that computes
    something else in longdouble; and the tol must be one arithmetic can meet (at least
    ``ATTAINABLE``·ε): asked for 1e-30, a row fails at rounding, as it was asked to.

    ``summed``: for a row that is a sum the check takes itself (the layer scope's contraction
    ``⟨δ, ∂z/∂θ_j⟩``), the size of its terms (``layer_scope.contraction_size``): the complex step's
    sum is off by ~ε of it too, however lucky the backward's own rounding was; asked for only
    where the measured rounding does not cover the mismatch and the mismatch is within trust."""
    from .compare import metrics  # compare imports Floor from here
    ok = ~check.kink_mask
    if check.mode != "entries" or not ok.any() or check.tol < ATTAINABLE * float(np.finfo(np.float64).eps):
        return ""  # a tol below float64's own digits asks for a failure at rounding: it gets one
    w = np.asarray(wide, dtype=np.float64).reshape(-1)[check.indices][ok]
    numeric = check.numeric if check.confirmed is None else check.confirmed  # the complex step, where it ran
    g, n = check.analytic[ok], numeric[ok]
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(g)) and np.all(np.isfinite(n))):
        return ""
    rounding, apart = float(np.max(np.abs(g - w))), float(np.max(np.abs(g - n)))
    what = "what its float64 arithmetic is off from the same backward in longdouble on this tensor"
    if not (apart <= MARGIN * rounding and rounding <= trust):
        if summed is None or apart > MARGIN * trust:
            return ""
        rounding = max(rounding, float(np.finfo(np.float64).eps) * summed())
        what = "the rounding of the sum both take (ε of the size of its terms)"
        if not (apart <= MARGIN * rounding and rounding <= trust):
            return ""
    by = "the complex step" if check.confirmed is not None or "complex step" in check.note else "the differences"
    return (f"at the backward's own rounding: analytic and {by} differ by {apart:.0e} at most, within "
            f"{MARGIN:.0f}x {what} ({rounding:.0e}; norm rel {metrics(g, n).norm_rel:.1e}) — a cancelling "
            f"gradient, resolved to its rounding, not to tol")


def lazily(measure: Callable[[], T]) -> Callable[[], T]:
    """``measure`` run once, on the first call (``measured_rounding`` when a floor needs it)."""
    done: list[T] = []

    def once() -> T:
        if not done:
            done.append(measure())
        return done[0]
    return once


def floor(method: str, complex_step: bool, eps: float, dtype: str | np.dtype, loss: float, out: Array,
          y: Array, net_dtype: str | np.dtype = "float64", gradients: float = 0.0,
          measured: float | Callable[[], float] = 0.0) -> Floor:
    """The resolution of ``method`` (a method name; ``complex_step`` for the complex step)
    with step ``eps``, the numeric side running in ``dtype``; the backward runs in
    ``net_dtype`` and its largest gradient entry is ``gradients`` (G); ``measured``: its
    rounding as ``measured_rounding`` found it, or a function that measures it when asked."""
    unit = float(np.finfo(np.dtype(dtype)).eps)
    from .finite_diff.methods import METHODS  # a tableau (Ridders) differences down to its smallest step
    if method in METHODS and METHODS[method].tableau is not None:
        eps *= min(abs(o) for o in METHODS[method].offsets)
    scale = loss_scale(loss, out, y)
    value = MARGIN * unit * scale / (1.0 if complex_step else eps)
    label = "the complex step" if complex_step else f"{method} differences"
    if callable(measured):
        thunk = measured
        return Floor(value, label, float(loss), MARGIN * float(np.finfo(np.dtype(net_dtype)).eps) * gradients,
                     measure=lambda: MARGIN * thunk())
    rounding = MARGIN * max(float(np.finfo(np.dtype(net_dtype)).eps) * gradients, measured)
    return Floor(value, label, float(loss), rounding)
