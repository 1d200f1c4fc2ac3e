"""A second look at a failing or unresolved tensor: the complex step, where it is available;
central differences at their own step, where it is not.

Central (forward, Richardson) differences cancel two nearly equal losses; the complex step
``Im C(θ + ih) / h`` does not, so it sees gradients far below their rounding floor.  It is
only used where every layer from the perturbed one on carries an imaginary part
(``complex_probe``); a lost imaginary part is never read as a confirmation.  Its imaginary
part still carries rounding: a row it alone fails is looked at once more in longdouble
(``wide_look``), and where that agrees (or sees ~0) the row says why its failure may be that
rounding (``TensorCheck.complex_rounding``: the rounding excuse's last resort).

Where the complex step is not available, a row that Richardson's or Ridders' differences (or
central ones at a step other than their own) failed is looked at once more by central
differences at their default step (``central_look``): those methods' large steps reach where
a layer is not smooth enough for their extrapolation (y = a·|a|, C¹ but not C² at 0, is off by
up to the step itself within a step of 0), and failed a right backward.

A row still failing whose error fell as the method's order says when h halved — truncation,
a derivative that varies on the scale of the step — is judged once more on its differences at
h and h/2 extrapolated to h → 0, where those at 2h show the extrapolation settled
(``extrapolated_look``); central differences' failures in ``central_look`` get the same look.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .blocks import param_key
from .compare import TensorCheck, judge, metrics
from .complex_probe import ComplexProbe
from .config import PluginError
from .finite_diff import FiniteDifferences, get_method
from .network import Network
from .refs import TensorRef
from .resolution import Floor

Array = np.ndarray


# the row's entries times the network's activation entries a longdouble complex step may carry
# (no BLAS in longdouble: ~1 s at this size)
WIDE_LOOK_ENTRIES = 20_000_000


def wide_look(problem: tuple[Network, Array, Array], step: float, target: TensorRef, c: TensorCheck,
              wrap: Callable[[FiniteDifferences], Any] | None, floor: Floor, tol: float) -> TensorCheck | None:
    """The complex step again in longdouble (``np.clongdouble``, the network cast exactly), for a
    row central differences could not resolve and the float64 complex step failed: its
    imaginary part carries rounding too — through a normalization of a nearly constant channel,
    7e-15 of it on a gradient 0 in truth, past its resolution (``MARGIN``·ε of the loss's size).
    The row's verdict against the longdouble step, judged at a resolution as much finer as its
    ε; None where longdouble is no wider, the row and network too large for it (``WIDE_LOOK_ENTRIES``),
    or a layer does not run in it.  A real bug is as wrong in longdouble: it still fails."""
    from .resolution import cast_layer, longdouble_is_wider

    net, x, y = problem
    if not longdouble_is_wider():
        return None
    wide_net = copy.deepcopy(net)
    try:
        for layer in wide_net.layers:
            cast_layer(layer, np.longdouble)
        y_wide = y.astype(np.longdouble) if y.dtype.kind == "f" else y
        fd: Any = FiniteDifferences(wide_net, x.astype(np.longdouble), y_wide, step, "complex", workers=1)
        if len(c.indices) * sum(a.size for a in fd.inputs) > WIDE_LOOK_ENTRIES:
            return None
        if wrap is not None:
            fd = wrap(fd)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            num = fd.numeric([(target, c.indices)])[0]
    except (TypeError, ValueError, FloatingPointError, PluginError, np.exceptions.ComplexWarning):
        return None
    finer = float(np.finfo(np.longdouble).eps / np.finfo(np.float64).eps)
    # the analytic side gets no rounding allowance here: ~0 is ~0 at longdouble's resolution
    wide_floor = dataclasses.replace(floor, value=floor.value * finer, rounding=0.0, measure=None)
    return judge(c.ref, c.kind, c.shape, c.indices, c.analytic, np.asarray(num.values, dtype=np.float64),
                 num.kinks, tol, floor=wide_floor)


def _differences(problem: tuple[Network, Array, Array], step: float, method: str, workers: int | None,
                 wrap: Callable[[FiniteDifferences], Any] | None) -> Any:
    """The differences of the network at ``step`` by ``method`` — or, wrapped, of what the
    rows are differences of (the layer scope's: each layer alone)."""
    fd: Any = FiniteDifferences(*problem, step, method, workers=workers)
    return fd if wrap is None else wrap(fd)


def start_of(target: TensorRef) -> tuple[int, str | None]:
    """The layer a row's perturbation enters, and the parameter perturbed (None for a δ)."""
    return target.index, None if target.is_delta else param_key(target.path, target.name)


def _nothing(c: TensorCheck) -> bool:
    """Failed because every stencil crossed a kink: nothing compared.  The complex step moves
    no real part, so it crosses no kink the backward's branches follow (``Re z > 0``, the
    argmax of the real parts), and compares them — the derivative at θ itself; not where θ
    sits on a kink where the layer's branch follows the imaginary part (``_other_side``)."""
    return c.failed and c.checked == 0 and c.kinks > 0


def _other_side(problem: tuple[Network, Array, Array], step: float, rows: list[tuple[TensorRef, Array]],
                workers: int | None, wrap: Callable[[FiniteDifferences], Any] | None) -> list[Array]:
    """Which of each row's entries the complex step at −ih finds kinked, for rows whose every
    central stencil crossed a kink.  θ + ih moves no real part, so a layer whose branches
    follow real parts (``Re z > 0``; the argmax of the real parts) keeps the branch the
    forward chose, on both sides.  A layer that compares complex numbers as numpy orders them
    — real part, then imaginary — does not: at a tie (a max pool after a nearest upsampling)
    θ + ih makes the perturbed entry the max, a one-sided derivative, and a backward routing
    δ to every tied entry matched it (a QA pass).  θ − ih makes it lose: those entries show as
    kinks from one side or the other, and are compared by neither."""
    fd = _differences(problem, -step, "complex", workers, wrap)
    return [np.asarray(num.kinks, dtype=bool) for num in fd.numeric(rows)]


def confirm_failures(checks: list[TensorCheck], targets: list[TensorRef], problem: tuple[Network, Array, Array],
                     method: str, tol: float, fd_dtype: str, workers: int | None, floor: Floor,
                     wrap: Callable[[FiniteDifferences], Any] | None = None) -> None:
    """Check each failing or unresolved tensor (``checks[r]``, differenced at ``targets[r]``)
    again with the complex step, which has no rounding floor of ``method``'s differences
    (``floor``: its own, far lower).

    Only where every layer from the perturbed one on can carry an imaginary part (declared
    ``complex_safe``, or shown by ``complex_probe``); elsewhere the row says "complex step
    not available for layer i (Class)" and keeps its status.  A real bug fails there too,
    and the row says the failure is confirmed.  A tensor whose difference quotient only
    drowned in rounding passes there, and its row becomes the complex step's, saying why.
    An unresolved tensor stays so if the complex step cannot resolve it either.

    ``wrap``: what the rows are differences of, given the complex step's differences of the
    network — the layer scope's rows are each layer alone (``LinkDifferences``), and their
    second look is too.
    """
    todo = [r for r, c in enumerate(checks) if c.mode == "entries" and (c.mismatch or c.unresolved or _nothing(c))]
    if not todo:
        return
    order = get_method(method).power
    probe = ComplexProbe(problem[0], problem[1])
    usable, kinked = [], []
    for r in todo:
        why = probe.unavailable(*start_of(targets[r]))
        if why:  # never a confirmation from a lost imaginary part
            checks[r].note = "; ".join(filter(None, [checks[r].note, why]))
            if _nothing(checks[r]):
                kinked.append(r)
        else:
            usable.append(r)
    if kinked:
        _on_kinks_at_theta(checks, targets, kinked, problem, fd_dtype, workers, wrap)
    if not usable:
        return
    try:
        step = get_method("complex").default_eps[fd_dtype]
        exact = _differences(problem, step, "complex", workers, wrap)
        with warnings.catch_warnings():  # an imaginary part dropped on a path the probe missed
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            results = exact.numeric([(targets[r], checks[r].indices) for r in usable])
        nothing_rows = [k for k, r in enumerate(usable) if _nothing(checks[r])]
        if nothing_rows:
            at_theta = _other_side(problem, step, [(targets[usable[k]], checks[usable[k]].indices)
                                                   for k in nothing_rows], workers, wrap)
            for k, on in zip(nothing_rows, at_theta):
                results[k] = dataclasses.replace(results[k], kinks=np.asarray(results[k].kinks, dtype=bool) | on)
    except (TypeError, ValueError, FloatingPointError, PluginError, np.exceptions.ComplexWarning) as e:
        # the probe missed a real-only path
        for r in usable:
            checks[r].note = "; ".join(filter(None, [checks[r].note, f"complex step not available: {e}"]))
        return
    for r, num in zip(usable, results):
        c = checks[r]
        redo = judge(c.ref, c.kind, c.shape, c.indices, c.analytic, num.values, num.kinks, min(tol, c.tol),
                     floor=floor)  # the row's own tol: --tol estimate's may be stricter than ``tol``
        why = c.convergence(order, method)
        nothing = _nothing(c)
        first = c.reason.split(": ")[0] if c.unresolved else \
            f"every stencil of {method} differences crossed a kink" if nothing else \
            f"{method} differences failed ({why or f'norm rel {c.metrics.norm_rel:.1e}'})"
        if nothing and redo.checked == 0:  # units on their kinks at θ itself: no derivative to check there
            c.status = "unresolved"
            c.reason = (f"on its kinks: every one of its {c.kinks} entries sits on a kink at θ itself (ties, a max "
                        "over equal entries), where there is no derivative to check — central differences cross "
                        "it, and the complex step, at +ih and −ih, picks a side")
        elif redo.passed:  # "does not shrink with h — the gradient is wrong" was not so (far from h → 0): what
            said_bug = "gradient is wrong" in why or why.endswith("or a bug")
            if said_bug and not (c.unresolved or nothing):  # halving h measured, no more
                first = f"{method} differences failed ({why.split(': ')[0]})"
            how = f"the complex step at its own step {step:.0e}" if method == "complex" else \
                "the complex step, free of rounding,"
            redo.note = f"{first}; {how} agrees: norm rel {redo.metrics.norm_rel:.1e}"
            checks[r] = redo
        elif redo.failed and c.failed and not nothing:
            confirmed = (f"the complex step confirms it (norm rel {redo.metrics.norm_rel:.1e})"
                         if np.isfinite(redo.metrics.norm_rel) else "the complex step is not finite either")
            c.note = "; ".join(filter(None, [c.note, confirmed]))
            c.confirmed = num.values
        elif redo.failed:  # unresolved by central differences, resolved and wrong by the complex step
            redo.note = f"{first}; the complex step resolves it and disagrees: norm rel {redo.metrics.norm_rel:.1e}"
            redo.confirmed = num.values  # its numbers are the complex step's: the diagnosis takes them
            wide = wide_look(problem, step, targets[r], c, wrap, floor, min(tol, c.tol))
            if wide is not None and not wide.failed:  # the step's own rounding: run in longdouble it says so
                redo.complex_rounding = (
                    f"at the complex step's own rounding: it gives ~{np.max(np.abs(num.values)):.0e} (norm rel "
                    f"{redo.metrics.norm_rel:.1e}); run in longdouble it gives ~{np.max(np.abs(wide.numeric)):.0e}, "
                    + (f"agreeing with the backward (norm rel {wide.metrics.norm_rel:.1e})" if wide.passed else
                       "as the backward ~0 — 0 in truth, or too small to tell"))
            checks[r] = redo
        elif c.unresolved:
            c.note = "; ".join(filter(None, [c.note, f"the complex step gives ~0 too (below its resolution "
                                                      f"{floor.value:.0e}): both zero up to rounding — 0 in truth, "
                                                      f"or too small to tell (a bias right before a train-mode "
                                                      f"batch norm is 0 in truth)"]))
        else:  # central differences saw more than rounding, the complex step and the backward see ~0
            redo.note = f"{first}; the complex step and the backward both give ~0"
            checks[r] = redo


def central_look(checks: list[TensorCheck], targets: list[TensorRef], problem: tuple[Network, Array, Array],
                 method: str, eps: float, tol: float, fd_dtype: str, workers: int | None, floor: Floor,
                 wrap: Callable[[FiniteDifferences], Any] | None = None) -> None:
    """Rows still failing by value after ``confirm_failures`` (the complex step not available,
    so not confirmed) again with central differences at their default step, when ``method``
    is not already that.  At a step much smaller than theirs (--eps 1e-9) rounding swamps a
    right gradient (ε·C/h is 1e-7 there); Richardson and Ridders extrapolate from steps of
    5e-3 … 0.6 and assume the loss smooth (C⁴ and more) between them; a layer that is only C¹ there (a·|a|, a
    softplus of |a|) leaves a truncation of the order of the step, which their order does not
    remove, and which is no bug.  A row central differences pass becomes theirs, saying so; a
    row they fail too keeps its failure, with their figure.  They are the default check: a
    backward they pass is one ``cnngrad check`` passes without a --method."""
    step = get_method("central").default_eps[fd_dtype]
    if method == "complex" or method == "central" and eps == step:
        return
    todo = [r for r, c in enumerate(checks) if c.mode == "entries" and c.mismatch and c.confirmed is None]
    if not todo:
        return
    results = _differences(problem, step, "central", workers, wrap).numeric(
        [(targets[r], checks[r].indices) for r in todo])
    central_tol = get_method("central").default_tol[fd_dtype]
    looked: list[tuple[int, TensorCheck]] = []
    for r, num in zip(todo, results):
        c = checks[r]
        # at central differences' own tol too: forward differences' 1e-5 passed a backward 5e-6 off (a QA pass)
        redo = judge(c.ref, c.kind, c.shape, c.indices, c.analytic, num.values, num.kinks,
                     min(tol, c.tol, central_tol), floor=floor)
        said = f"central differences at their own step {step:.0e}"
        if redo.passed:
            redo.note = "; ".join(filter(None, [
                f"{method} differences at step {eps:.0e} failed (norm rel {c.metrics.norm_rel:.1e})", c.note,
                f"{said} agree: norm rel {redo.metrics.norm_rel:.1e} — what failed was the larger step's error "
                f"(a truncation its order does not remove where the loss is not smooth enough, or a kink crossed "
                f"unseen), not the backward"]))
            checks[r] = redo
        elif redo.failed:
            c.note = "; ".join(filter(None, [c.note, f"{said} fail too (norm rel {redo.metrics.norm_rel:.1e})"]))
            if redo.mismatch:
                looked.append((r, redo))
    if looked:  # central differences' failures get the look a plain check's do: h/2, then extrapolated
        _central_extrapolated(checks, targets, looked, problem, method, eps, step, fd_dtype, workers, floor, wrap)


def _central_extrapolated(checks: list[TensorCheck], targets: list[TensorRef], looked: list[tuple[int, TensorCheck]],
                          problem: tuple[Network, Array, Array], method: str, eps: float, step: float, fd_dtype: str,
                          workers: int | None, floor: Floor, wrap: Callable[[FiniteDifferences], Any] | None) -> None:
    """The rows central differences at their own step failed too, in ``central_look``: halved
    and extrapolated (``extrapolated_look``), as a plain check's failing rows are — a right
    layer whose derivative wiggles on the scale of the step, which the plain check passes by
    that look, failed under --method richardson, ridders or --eps 1e-4 (a QA pass)."""
    redos = [redo for _, redo in looked]
    where = {id(redo): targets[r] for r, redo in looked}
    halves = _differences(problem, step / 2, "central", workers, wrap).numeric(
        [(targets[r], redo.indices) for r, redo in looked])
    for redo, num in zip(redos, halves):
        redo.keep_half(num)
    extrapolated_look(redos, "central", fd_dtype, floor, lambda cs: _differences(
        problem, 2 * step, "central", workers, wrap).numeric([(where[id(c)], c.indices) for c in cs]))
    for (r, first), redo in zip(looked, redos):
        if redo is not first and redo.passed:
            c = checks[r]
            redo.note = "; ".join(filter(None, [
                f"{method} differences at step {eps:.0e} failed (norm rel {c.metrics.norm_rel:.1e})", c.note,
                redo.note]))
            checks[r] = redo


TINY = 1e-6  # of central differences' own step: a stencil that still crosses a kink at it sits on one


def _on_kinks_at_theta(checks: list[TensorCheck], targets: list[TensorRef], rows: list[int],
                       problem: tuple[Network, Array, Array], fd_dtype: str, workers: int | None,
                       wrap: Callable[[FiniteDifferences], Any] | None) -> None:
    """Rows whose every stencil crossed a kink, where the complex step is not available to say
    whether their entries sit on one at θ itself (a stock nn.MaxPool2d after a nearest
    upsampling: every window a tie — it FAILed, "nothing compared", a QA pass): central
    differences again at a step a million times smaller.  A kink within that of θ is one at θ
    for any step a check could take: where every entry still crosses one, the row is
    UNRESOLVED — on its kinks, where there is no derivative to check — as where the complex
    step says so (``confirm_failures``)."""
    step = get_method("central").default_eps[fd_dtype] * TINY
    fd = _differences(problem, step, "central", workers, wrap)
    for r, num in zip(rows, fd.numeric([(targets[r], checks[r].indices) for r in rows])):
        c = checks[r]
        if np.all(np.asarray(num.kinks, dtype=bool)):
            c.status = "unresolved"
            c.reason = (f"on its kinks: every one of its {c.kinks} entries sits on a kink at θ itself (ties, a max "
                        f"over equal entries): central differences cross it at a step of {step:.0e} too, and the "
                        "complex step is not available to compare anything there")


# the error falling at least this share of 2^order as h halves: truncation's signature (a wrong
# backward's error stays as it is, ratio ~1), where extrapolating from h and h/2 is worth a look
TRUNCATION_SHARE = 0.75
# an extrapolation that has not settled, off by at most WITHIN_OWN times its own error (R(2h)'s
# estimate of it), that error at most UNSETTLED_MOST tols: UNRESOLVED — a right layer at ωh = 0.3
# (7.3e-6 off, its own error 7.2e-6) FAILED and was blamed under a note saying "not a bug" (a QA
# pass); where that error is larger (ωh ~ 1: 4.9e-4) a backward tuned to R(h) could hide in it,
# and the row keeps its failure
WITHIN_OWN = 2.0
UNSETTLED_MOST = 100.0


def extrapolated_look(checks: list[TensorCheck], method: str, fd_dtype: str, floor: Floor,
                      double: Callable[[list[TensorCheck]], list[Any]]) -> None:
    """Rows still failing by value (no complex step confirmed them) whose error fell about
    2^p-fold as h halved (order p: truncation, not a bug's fixed offset) — a right layer whose
    derivative varies on the scale of the step (``a + 1e-4·sin(1e4·a)``: h²σ‴/6 ~ 1e-5 at
    h = 1e-6), which the complex step cannot reach — judged again on Richardson's extrapolation
    ``R(h) = (2^p·D(h/2) − D(h)) / (2^p − 1)``: the h^p term cancels, a bug's offset does not.
    Only where it has settled: ``R(2h)``, from the differences at 2h (``double``: their
    ``Numeric`` for the rows given) and h, tells how far R(h) still is from the limit — the next
    term, h^(p+1) for forward differences, h^(p+2) for the symmetric ones, falls 2^(p+1)- or
    2^(p+2)-fold from 2h to h, so ``‖R(2h) − R(h)‖ / (2^(p+k) − 1)`` is R(h)'s own error, and
    must be within tol too.  Where ωh ~ 1 the extrapolation keeps a factor
    (4·sinc(½) − sinc(1))/3 ≈ 0.998 on the wiggle, and a backward wrong by just that passed on
    R(h) alone (a QA pass); a step of h/4 instead drowned forward differences' R in rounding.
    Judged at central differences' own tol where the row's is looser (as ``central_look``):
    forward differences' 1e-5, extrapolated, passed a backward 5e-6 off that a plain check
    fails.  A row it passes says so; one it fails says it too."""
    p = get_method(method).power
    jump = 1 if method == "forward" else 2  # the order of the term after h^p: odd ones cancel in a symmetric stencil
    central_tol = get_method("central").default_tol[fd_dtype]
    todo: list[int] = []
    for r, c in enumerate(checks):
        if not (c.mismatch and c.mode == "entries" and c.numeric_half is not None and c.confirmed is None):
            continue
        e1, e2 = c.metrics.norm_rel, c.norm_rel_half
        if e2 is not None and np.isfinite(e1) and np.isfinite(e2) and e2 > 0 and e1 / e2 >= TRUNCATION_SHARE * 2 ** p:
            todo.append(r)
    if not todo:
        return
    doubles = double([checks[r] for r in todo])

    def extrapolate(coarse: Array, fine: Array) -> Array:
        with np.errstate(all="ignore"):
            return (2 ** p * np.asarray(fine, dtype=np.float64) - np.asarray(coarse, dtype=np.float64)) / (2 ** p - 1)

    for r, d in zip(todo, doubles):
        c = checks[r]
        kinks = c.kink_mask | c.kinks_half | np.asarray(d.kinks, dtype=bool)
        tol = min(c.tol, central_tol)
        fine = extrapolate(c.numeric, c.numeric_half)
        redo = judge(c.ref, c.kind, c.shape, c.indices, c.analytic, fine, kinks, tol, floor=floor)
        ok = ~kinks
        unsettled = metrics(fine[ok], extrapolate(d.values, c.numeric)[ok]).norm_rel / (2 ** (p + jump) - 1)
        e1, e2 = c.metrics.norm_rel, float(c.norm_rel_half or 0.0)  # both finite, e2 > 0: chosen so above
        said = (f"{method} differences failed (norm rel {e1:.1e} at h, {e2:.1e} at h/2: falls {e1 / e2:.1f}x as "
                f"h halves, order {p}: truncation)")
        both = f"norm rel {redo.metrics.norm_rel:.1e}, settled to {unsettled:.1e} (from 2h)"
        if redo.passed and unsettled <= tol:
            agree = f"extrapolated (Richardson: the h^{p} term cancels) they agree: {both}"
            redo.note = "; ".join(filter(None, [c.note, f"{said}; {agree}"]))
            checks[r] = redo
        elif unsettled > tol and redo.metrics.norm_rel <= WITHIN_OWN * unsettled <= WITHIN_OWN * UNSETTLED_MOST * tol:
            # off by no more than the extrapolation's own error, which is small: what the differences can resolve
            c.status = "unresolved"
            c.reason = (f"truncation: {method} differences fall {e1 / e2:.1f}x as h halves, and extrapolated "
                        f"(Richardson) they are {redo.metrics.norm_rel:.1e} off — within their own error, "
                        f"{unsettled:.1e}, as R(2h) shows (the derivative varies on the scale of the step): neither "
                        f"right nor wrong at this step — a smaller --eps can resolve it")
        else:
            c.note = "; ".join(filter(None, [c.note, f"extrapolated (Richardson) they still disagree or do not "
                                                     f"settle: {both}"]))
