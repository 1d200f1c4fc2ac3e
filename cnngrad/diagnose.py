"""Say where and why a backward pass is wrong.

``localise``: the first layer (in backprop order) whose own backward is wrong — its output
δ checks out, its input δ or parameter gradients do not.  ``diagnose``: the analytic result
against the numeric one under the usual bug transforms (ROT180, one flip, swapped channels,
a one-pixel shift, the border, the stride grid, a constant factor, σ' left out).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .compare import metrics
from .refs import TensorRef

Array = np.ndarray
MATCH = 1e-6  # a transform explains the mismatch when it leaves less than this (norm rel)


def _close(a: Array, b: Array) -> float:
    return metrics(a.ravel(), b.ravel()).norm_rel


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


def diagnose(analytic: Array, numeric: Array, ref: TensorRef, layer: Any, batch: int,
             numeric_out: Array | None = None) -> list[str]:
    """The bug transforms under which analytic matches numeric, as sentences (most specific
    first); ``ref`` names the tensor (a parameter, or δ at the layer's input).
    ``numeric_out``: the numeric δ at the layer's output, to spot a δ passed down unchanged;
    ``batch``: N, to name a factor of the batch size."""
    if analytic.shape != numeric.shape or not np.all(np.isfinite(numeric)):
        return []
    a, n = analytic.astype(np.float64), numeric.astype(np.float64)
    delta = ref.is_delta
    what = "δ" if delta else f"∂C/∂{ref.name}"
    found = []

    def check(candidate: Array, sentence: str) -> None:
        err = _close(a, candidate)
        if err < MATCH:
            found.append(sentence.format(what=what, err=f"{err:.0e}"))

    if a.ndim >= 2 and not delta and getattr(layer, "kind", "") in ("conv",) or \
            (a.ndim == 4 and not delta and ref.name == "W"):
        check(n[..., ::-1, ::-1], "{what} matches ROT180(numeric) to {err}: the kernel is rotated where it "
                                  "should not be (or not where it should)")
        check(n[..., ::-1, :], "{what} matches numeric flipped upside down to {err}: one axis flipped — "
                               "ROT180 flips both")
        check(n[..., :, ::-1], "{what} matches numeric flipped left-right to {err}: one axis flipped — "
                               "ROT180 flips both")
        if a.shape[0] == a.shape[1]:
            check(n.swapaxes(0, 1), "{what} matches numeric with in/out channels swapped to {err}: W[o, c] "
                                    "read as W[c, o]")
    if a.ndim == 4 and delta:
        for axis, (fwd, back) in ((2, ("down", "up")), (3, ("right", "left"))):
            size = a.shape[axis]
            if size < 3:
                continue
            for shift, name in ((1, fwd), (-1, back)):
                # analytic[i] = numeric[i + shift] wherever both exist
                mine = np.take(a, range(0, size - 1) if shift == 1 else range(1, size), axis=axis)
                theirs = np.take(n, range(1, size) if shift == 1 else range(0, size - 1), axis=axis)
                err = _close(mine, theirs)
                if err < MATCH:
                    found.append(f"δ matches the numeric δ one pixel {name} (to {err:.0e}): a one-pixel "
                                 "offset — padding or crop off by one")
    if numeric_out is not None and numeric_out.shape == a.shape:
        check(numeric_out, "δ below the layer equals the numeric δ above it to {err}: the layer passed δ down "
                           "unchanged — σ' (its ⊙ σ'(z)) is missing")
    denom = float(np.vdot(n, n))
    if denom > 0 and not found:
        alpha = float(np.vdot(a, n)) / denom
        if abs(alpha - 1) > 1e-3 and _close(a, alpha * n) < MATCH:
            hint = ""
            for k, label in ((batch, "N"), (1 / batch, "1/N")):
                if batch > 1 and abs(alpha - k) < 1e-6 * abs(k):
                    hint = f" = {label}: a batch mean where a sum belongs, or a 1/N missing or doubled"
            if abs(alpha + 1) < 1e-6:
                hint = ": the sign is flipped"
            found.append(f"{what} is {alpha:.6g} times numeric (to {_close(a, alpha * n):.0e}){hint}")
    if a.ndim >= 2 and not found:
        found += _patterns(a, n, what, layer)
    return found


def _patterns(a: Array, n: Array, what: str, layer: Any) -> list[str]:
    """Where the mismatch lies: only on the border, only off the stride grid."""
    err = np.abs(a - n)
    scale = max(float(np.max(np.abs(n))), 1e-300)
    bad = err > 1e-6 * scale
    if not bad.any():
        return []
    h, w = bad.shape[-2:]
    out = []
    for width in (1, 2):
        border = np.zeros((h, w), dtype=bool)
        border[:width], border[-width:], border[:, :width], border[:, -width:] = True, True, True, True
        if h > 2 * width and w > 2 * width and not bad[..., ~border].any():
            out.append(f"{what} is wrong only within {width} pixel{'s' if width > 1 else ''} of the border: "
                       "padding / crop handled wrong")
            break
    strides = [s for s in {getattr(layer, "s", (1, 1))[0], 2, 3} if s > 1]
    for s in sorted(strides):
        on = np.zeros((h, w), dtype=bool)
        on[::s, ::s] = True
        if not bad[..., on].any() and bad[..., ~on].any():
            out.append(f"{what} is right on the stride-{s} grid and wrong off it: the stride's zeros were "
                       "not inserted (or put in the wrong places)")
            break
    return out
