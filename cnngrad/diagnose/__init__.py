"""Say where and why a backward pass is wrong.

``localise``: the first layer (in backprop order) whose own backward is wrong — its output
δ checks out, its input δ or parameter gradients do not.  ``diagnose``: the catalogue of
usual bugs (``catalogue.py``: flips and rotations of W in δ and ∂W, transposes and reshapes,
one-pixel and diagonal shifts, dilation and stride offsets from the layer's own geometry,
pool divisors and routes, σ' at the wrong place, samples left out, factors) — a sentence is
stated only when the analytic gradient equals that bug's prediction to within the method's
tolerance, the residual said in the line.  Otherwise: ``no known pattern`` and measured
facts (``facts.py``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..refs import TensorRef
from .catalogue import Case, candidates, close
from .facts import describe, single_entries
from .geometry import Geometry, geometry_of

__all__ = ["diagnose", "localise", "Geometry", "geometry_of", "NO_PATTERN"]

Array = np.ndarray
NO_PATTERN = "no known pattern"


def localise(rows: list, n_layers: int, kinds: list[str]) -> tuple[int | None, str]:
    """The first layer whose own backward is wrong and a line saying so, or (None, "")."""
    by_layer: dict[int, list] = {}
    for r in rows:
        by_layer.setdefault(r.layer, []).append(r)
    delta_ok = {r.layer: not r.mismatch for r in rows if r.ref.is_delta}  # unresolved: no blame
    for l in range(n_layers - 1, -1, -1):
        out_ok = l == n_layers - 1 or delta_ok.get(l + 1, True)
        own_ok = all(not r.mismatch for r in by_layer.get(l, []))
        if out_ok and not own_ok:
            after = f"layers {l + 1}-{n_layers - 1} check out" if l + 1 < n_layers - 1 else \
                f"layer {l + 1} checks out" if l + 1 == n_layers - 1 else "it is the last layer"
            return l, f"layer {l} ({kinds[l]}): backward is wrong; {after}"
    return None, ""


def diagnose(analytic: Array, numeric: Array, ref: TensorRef, layer: Any, batch: int, *,
             delta_out: Array | None = None, a_prev: Array | None = None, tol: float = 1e-6) -> list[str]:
    """Sentences saying why ``analytic`` (of the layer's tensor ``ref``) differs from
    ``numeric`` — each a catalogue entry whose prediction the analytic gradient matches to
    ``tol`` (norm rel, the residual said) — or one ``no known pattern; measured: …`` line.
    ``delta_out``: the analytic δ at the layer's output (of shape (N, *out_shape)), the δ its
    backward was given; ``a_prev``: the layer's input (N, *in_shape); ``batch``: N."""
    if analytic.shape != numeric.shape or not (np.all(np.isfinite(numeric)) and np.all(np.isfinite(analytic))):
        return [f"{NO_PATTERN}; analytic or numeric gradient is not finite"]
    case = Case(analytic.astype(np.float64), numeric.astype(np.float64), ref, layer, geometry_of(layer), batch, tol,
                delta_out, a_prev)
    a, n, what = case.a, case.n, case.what
    if not np.any(a) and np.any(n):
        return [f"{what} is exactly zero everywhere: the backward never writes it"]
    found, fallback = [], []
    with np.errstate(all="ignore"):
        for cand in candidates(case):
            if cand.predicted.shape != n.shape or not np.any(cand.predicted):
                continue
            if cand.fallback:
                fallback.append(f"{cand.sentence} (residual {close(cand.predicted, n):.0e})")
                continue
            residual = close(a, cand.predicted, cand.mask)
            if residual <= tol and close(cand.predicted, n, cand.mask) > tol:
                found.append(f"{cand.sentence} (residual {residual:.0e})")
        if not found:
            found += _scale(case)
        if not found:
            one = single_entries(case)
            found += [one] if one else fallback
    return found or [describe(case)]


def _scale(c: Case) -> list[str]:
    """The analytic gradient is a constant times the numeric one: name the factor if the
    batch size, the sign, or the layer's window / stride explains it."""
    a, n = c.a, c.n
    denom = float(np.vdot(n, n))
    if denom == 0:
        return []
    alpha = float(np.vdot(a, n)) / denom
    residual = close(a, alpha * n)
    if residual > c.tol or close(alpha * n, n) <= c.tol:
        return []
    names = {"N": float(c.batch), "1/N": 1 / c.batch, "−1 (the sign is flipped)": -1.0, "2": 2.0, "1/2": 0.5}
    if c.delta_out is not None and c.delta_out.ndim == 4 and not c.ref.is_delta:  # a conv's bias or weights
        hw = int(np.prod(c.delta_out.shape[2:]))
        names[f"1/(N·H·W) = 1/{c.batch * hw}: a mean over the batch and the {hw} output positions where a sum "
              f"belongs"] = 1 / (c.batch * hw)
        names[f"1/(H·W) = 1/{hw}: a mean over the {hw} output positions where a sum belongs"] = 1 / hw
    g = c.geometry
    if g is not None and g.op.endswith("_pool"):
        window, stride2 = g.kernel[0] * g.kernel[1], g.stride[0] * g.stride[1]
        names[f"window/stride² = {window}/{stride2}: the divisor is the stride² instead of the window size"] = \
            window / stride2
        names[f"{window} = the window size: the division by it is missing"] = float(window)
    hint = ""
    for label, k in names.items():
        if (c.batch > 1 or "N" not in label) and k != 1 and abs(alpha - k) <= 1e-6 * abs(k):
            hint = f" = {label}" + (": a batch mean where a sum belongs, or a 1/N missing or doubled"
                                    if label in ("N", "1/N") else "")
            if label in ("N", "1/N") and c.batch == 2:  # 2 = N is a coincidence as often as not
                hint += " — or, the batch being 2, any factor of 2 (a term counted twice, δ routed to two tied entries)"
            break
    if not hint and abs(alpha - 1) < 1e-2:
        hint = f" (1 {'+' if alpha > 1 else '−'} {abs(alpha - 1):.1e}): a small scale error"
    return [f"{c.what} is {alpha:.8g} times numeric{hint} (residual {residual:.0e})"]
