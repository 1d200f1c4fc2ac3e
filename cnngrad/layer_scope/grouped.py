"""Input links many entries to a pass: entries whose output windows cannot overlap share one.

A local layer moves, for an input entry at (y, x), only the outputs in its window
(``layer.window``; the entry itself for an ``elementwise`` layer).  Entries of one input
channel whose rows are ``Py`` apart and columns ``Px`` apart have disjoint windows when
``Py``/``Px`` are at least the window's reach (``period``, found from the layer's own
``window`` over every row and column): perturbed together in one pass, each window of the
change holds that entry's change alone (the others add exact zeros there), so
``⟨δ^l, Δz⟩`` summed over entry k's window is entry k's term, the same number bit for bit
as a pass of its own would give in that window.  This is the colouring of Curtis, Powell and
Reid (1974) for sparse Jacobians.  A ``channelwise`` layer (pooling, activations) lets entries
of every channel share a pass too (a window then is one output channel's).

The pass is the layer's ``forward_input_delta`` of the perturbation alone where the layer is
linear in its input (``window`` and ``input_delta``: a conv), else its real ``forward`` on the
whole perturbed batch (``region``: pooling; ``elementwise``: activations; ``reshape``: flatten,
output entry k being input entry k in C order), whose kink states are compared window by window.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..finite_diff import FiniteDifferences
from ..finite_diff.propagate import agrees
from ..finite_diff.shortcuts import kink_state
from ..sets import unique, unique_inverse

Array = np.ndarray
MAX_CHUNK = 1 << 16  # entries a chunk: one class's pass carries all of its rows at once
# entries a chunk where a class's pass is the layer's forward on the whole batch (pooling,
# activations, flatten): it costs the same for 1 entry or all, so a chunk takes the tensor
WHOLE_CHUNK = 1 << 22
ROWS_BUDGET = 32 << 20  # bytes of Δz (and its products) one forward_input_delta call may hold


def period(starts: Array, width: int) -> int:
    """The least P such that windows ``[starts[i], starts[i] + width)`` of positions P apart
    never overlap (P = the number of positions: each its own class)."""
    n = len(starts)
    if np.all(np.diff(starts) >= 0):
        for p in range(1, n):
            if np.all(starts[p:] - starts[:-p] >= width):
                return p
    return max(n, 1)


class GroupedInputs:
    """The layer scope's grouped input links, for ``LinkDifferences``."""

    fd: FiniteDifferences
    net: Any
    received: list[Array]
    _steps: Any

    def grouped_plan(self, l: int) -> tuple[int, int, Any] | None:
        """(entries a chunk, bytes of work an entry, the chunk's function) for layer l's input
        by colouring, or None where the layer does not declare what it needs."""
        caps, a, out = self.fd.caps[l], self.fd.inputs[l], self.fd.inputs[l + 1]
        if not caps.per_sample:
            return None
        if caps.can("elementwise") or caps.can("reshape"):  # output entry k is input entry k's alone
            return WHOLE_CHUNK, 16 * 4, lambda idx: self._input_grouped(l, idx, "elementwise", 1, 1)
        if a.ndim != 4 or out.ndim != 4:
            return None
        linear = caps.can("window") and caps.can("input_delta")
        if not (linear or caps.can("region")):
            return None
        layer = self.net.layers[l]
        h, w = a.shape[2:]
        i0, _, wh, _ = layer.window(np.arange(h), np.zeros(h, dtype=int), 1, 1)
        _, j0, _, ww = layer.window(np.zeros(w, dtype=int), np.arange(w), 1, 1)
        py, px = period(np.asarray(i0), wh), period(np.asarray(j0), ww)
        per = 16 * 4 * out[0].size // max(1, (h // py) * (w // px))  # one class's pass, shared by its entries
        if linear:
            if not self._input_delta_ok(l):
                return None
            return MAX_CHUNK, per, lambda idx: self._input_grouped(l, idx, "linear", py, px)
        if not self._windows_ok((l,), self.links.at((l,))):  # type: ignore[attr-defined]
            return None
        return WHOLE_CHUNK, per, lambda idx: self._input_grouped(l, idx, "forward", py, px)

    def _input_delta_ok(self, l: int) -> bool:
        """``forward_input_delta`` against a real forward pass: two entries of the first
        channel of sample 0, a step 0.5 (besides the window spot check ``_windows_ok``)."""
        if (l, "input_delta") not in self._spot:  # type: ignore[attr-defined]
            layer, a, z0 = self.net.layers[l], self.fd.inputs[l], self.fd.inputs[l + 1]
            d = np.zeros((1,) + a.shape[2:], dtype=a.dtype)
            d[0, 0, 0] = d[0, -1, -1] = 0.5
            fast = layer.forward_input_delta(d, 0)
            moved = a[:1].copy()
            moved[:, 0] += d
            real, _ = layer.forward(moved)
            self._spot[(l, "input_delta")] = agrees(z0[:1] + fast, real, z0[:1])  # type: ignore[attr-defined]
        return bool(self._spot[(l, "input_delta")]) and self._windows_ok((l,), self.links.at((l,)))  # type: ignore[attr-defined]

    def _linear_classes(self, l: int, idx: Array, change: Array, cls: Array, where: tuple) -> Array:
        """``⟨δ^l, Δz⟩`` over each entry's window for a layer linear in its input: Δz = K ⋆ (a
        class's changes) by ``forward_input_delta``, every (class, sample) of a channel a row
        of one call (rows are independent: the same numbers however many share a call)."""
        layer, n, delta = self.net.layers[l], self.fd.n, self.received[l]
        s, ch, y, x, i0, j0, wh, ww = where
        shape = self.fd.inputs[l].shape[2:]
        rows_a_call = max(1, (ROWS_BUDGET // (self.fd.inputs[l + 1][0].size * 8 * 3)))
        first = np.empty(len(idx), dtype=np.result_type(change, delta))
        for c0 in unique(ch):
            sel = np.flatnonzero(ch == c0)
            pairs, inv = unique_inverse(cls[sel] * n + s[sel])
            for r0 in range(0, len(pairs), rows_a_call):
                mine = (inv >= r0) & (inv < r0 + rows_a_call)
                k, r = sel[mine], inv[mine] - r0
                d = np.zeros((min(rows_a_call, len(pairs) - r0),) + shape, dtype=change.dtype)
                d[r, y[k], x[k]] = change[k]
                dz = layer.forward_input_delta(d, int(c0))  # (rows, o, ho, wo)
                prod = np.einsum("rohw,rohw->rhw", dz, delta[pairs[r0:r0 + len(d)] % n])  # Σ over o
                win = sliding_window_view(prod, (wh, ww), axis=(-2, -1))[r, i0[k], j0[k]]
                first[k] = np.sum(win.reshape(len(k), -1), axis=1)
        return first

    def _input_grouped(self, l: int, idx: Array, how: str, py: int, px: int) -> tuple[Array, Array]:
        """Layer l's input entries ``idx`` (flat), a pass a class of entries whose windows
        cannot overlap; each entry's ``⟨δ^l, Δz⟩`` summed over its own window."""
        layer, fd, caps = self.net.layers[l], self.fd, self.fd.caps[l]
        a_prev, z0, delta, base = fd.inputs[l], fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
        g = len(idx)
        new, steps = self._steps(a_prev.reshape(-1)[idx])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(g, dtype=bool)
        if how == "elementwise":  # every entry its own window (flat index k: z's entry k): one pass a chunk
            for m in range(new.shape[0]):
                a = a_prev.astype(new.dtype, order="C")
                a.reshape(-1)[idx] = new[m]
                out, cache = layer.forward(a)
                contracted[m] = (out.reshape(-1)[idx] - z0.reshape(-1)[idx]) * delta.reshape(-1)[idx]
                state = kink_state(layer, caps, cache) if base is not None else None
                if state is not None and base is not None:
                    crossed |= state.reshape(-1)[idx] != base.reshape(-1)[idx]
            return self._finish(contracted, steps, crossed)  # type: ignore[attr-defined]
        s, ch, y, x = np.unravel_index(idx, a_prev.shape)
        i0, j0, wh, ww = layer.window(y, x, 1, 1)
        channelwise = how == "forward" and caps.can("channelwise")
        key = ((np.zeros_like(ch) if channelwise else ch) * py + y % py) * px + x % px
        if how == "linear":
            first = self._linear_classes(l, idx, new[0] - a_prev.reshape(-1)[idx], (y % py) * px + x % px,
                                         (s, ch, y, x, i0, j0, wh, ww))
            for m in range(new.shape[0]):  # Δz(s·e) = (s / s₀)·Δz(s₀·e)
                contracted[m] = first if m == 0 else first * (steps[m] / steps[0])
            return self._finish(contracted, steps, crossed)  # type: ignore[attr-defined]
        order = np.argsort(key, kind="stable")
        cuts = np.flatnonzero(np.diff(key[order])) + 1
        for members in np.split(order, cuts):
            for m in range(new.shape[0]):  # a real pass of the whole batch with the class moved
                a = a_prev.astype(new.dtype, order="C")
                a.reshape(-1)[idx[members]] = new[m, members]
                out, cache = layer.forward(a)
                prod = (out - z0) * delta  # (n, o, ho, wo)
                at = (s[members], ch[members]) if channelwise else (s[members],)
                if not channelwise:
                    prod = np.sum(prod, axis=1)
                win = sliding_window_view(prod, (wh, ww), axis=(-2, -1))[at + (i0[members], j0[members])]
                contracted[m, members] = np.sum(win.reshape(len(members), -1), axis=1)
                state = kink_state(layer, caps, cache) if base is not None else None
                if state is not None and base is not None:
                    moved = state != base
                    if not channelwise:
                        moved = np.any(moved, axis=1)
                    hit = sliding_window_view(moved, (wh, ww), axis=(-2, -1))[at + (i0[members], j0[members])]
                    crossed[members] |= np.any(hit.reshape(len(members), -1), axis=1)
        return self._finish(contracted, steps, crossed)  # type: ignore[attr-defined]
