"""Measured facts about a mismatch no catalogue entry explains: where the error lives.

Everything here is counted from the numbers, none of it guessed: which entries are wrong
(an entry is wrong when |analytic − numeric| exceeds 1e-4 of the largest |numeric|, far
above difference noise), and along each axis which samples / channels / rows / columns
hold them, border against interior, how often the sign differs, and the best single factor.
"""
from __future__ import annotations

import numpy as np

from .case import Case, close

Array = np.ndarray
WRONG = 1e-4  # of max |numeric|: an entry this far off is wrong, not noisy


def _spans(idx: Array, size: int) -> str:
    """``[0, 2, 3, 4]`` -> ``"0, 2-4"``; all of them -> ``"all"``."""
    idx = np.unique(idx)
    if len(idx) == size:
        return "all"
    parts, start = [], idx[0]
    for prev, cur in zip(idx, np.append(idx[1:], -10)):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts[:6]) + (", …" if len(parts) > 6 else "")


def single_entries(c: Case) -> str | None:
    """If at most 3 entries are wrong, fewer than half of them, and setting them right leaves
    a match: say so (every entry of a 3-entry bias wrong is no "single entry" bug)."""
    err = np.abs(c.a - c.n)
    bad = err > WRONG * max(float(np.max(np.abs(c.n))), 1e-300)
    if not 0 < bad.sum() <= 3 or 2 * bad.sum() >= bad.size:
        return None
    fixed = np.where(bad, c.n, c.a)
    residual = close(fixed, c.n)
    if residual > c.tol:
        return None
    where = "; ".join(f"[{', '.join(str(int(i)) for i in np.unravel_index(k, c.a.shape))}] analytic "
                      f"{c.a.flat[k]:.6g} numeric {c.n.flat[k]:.6g}" for k in np.flatnonzero(bad))
    count = int(bad.sum())
    return (f"{c.what} has {'one wrong entry' if count == 1 else f'{count} wrong entries'} ({where}); every other "
            f"entry matches (residual {residual:.0e} with {'it' if count == 1 else 'them'} set right)")


def describe(c: Case) -> str:
    """``no known pattern`` and the measured facts."""
    a, n = c.a, c.n
    err = np.abs(a - n)
    bad = err > WRONG * max(float(np.max(np.abs(n))), 1e-300)
    facts = [f"{int(bad.sum())} of {bad.size} entries wrong"]
    if bad.any():
        axes = (["sample", "channel", "row", "column"] if c.ref.is_delta and a.ndim == 4 else
                ["sample", "feature"] if c.ref.is_delta and a.ndim == 2 else
                ["filter", "channel", "row", "column"] if a.ndim == 4 else
                ["row", "column"] if a.ndim == 2 else ["entry"])
        for axis, name in enumerate(axes[: a.ndim]):
            hit = np.flatnonzero(bad.any(axis=tuple(i for i in range(a.ndim) if i != axis)))
            facts.append(f"{'entries' if name == 'entry' else name + 's'} {_spans(hit, a.shape[axis])}")
        if a.ndim == 4 and min(a.shape[2:]) > 2:
            border = np.ones(a.shape[2:], dtype=bool)
            border[1:-1, 1:-1] = False
            facts.append(f"border {int(bad[..., border].sum())} / interior {int(bad[..., ~border].sum())}")
        sign = np.sign(a[bad]) != np.sign(n[bad])
        facts.append(f"sign differs at {int(sign.sum())} of them")
    denom = float(np.vdot(n, n))
    if denom > 0:
        alpha = float(np.vdot(a, n)) / denom
        facts.append(f"best single factor {alpha:.4g} leaves norm rel {close(a, alpha * n):.1e}")
    return f"no known pattern; measured: {'; '.join(facts)}"
