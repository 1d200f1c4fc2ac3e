"""The layer scope's input links: δ^{l-1} of one layer, entry by entry, contracted with δ^l.

Each way a change of an input entry is carried through the one layer (``LinkDifferences``
picks one by what the layer declares): a window (``window`` / ``region`` / ``elementwise``),
one unit of a dense layer (``input_delta``), the perturbed sample alone (``per_sample``), or
the whole perturbed batch (a layer that is not per-sample).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import conv as C
from ..finite_diff import FiniteDifferences
from ..finite_diff.shortcuts import kink_state
from .tree import Link

Array = np.ndarray


class InputLinks:
    """δ at a layer's input, for ``LinkDifferences`` (which supplies what is declared here);
    each method takes the layer's ``Link`` (``tree.py``): top level or inside a block."""

    fd: FiniteDifferences
    net: Any
    method: Any  # finite_diff.Method

    def _steps(self, base: Array) -> tuple[Array, Array]:
        """The perturbed values ``base + o·h`` per offset o, of shape (M, K), and the steps
        the dtype actually took (float64, complex128 for the complex step)."""
        offs = np.asarray(self.method.offsets)[:, None] * self.fd.eps
        new = (base[None, :] + offs).astype(np.result_type(base, self.fd.work))
        wide = np.result_type(new, np.float64)
        return new, new.astype(wide) - base.astype(wide)[None, :]

    def _quotient(self, contracted: Array, steps: Array) -> Array:
        """⟨δ, Δz⟩ per offset and entry, of shape (M, K) -> the method's quotient (K,)."""
        return self.method.combine(contracted[:, :, None], steps, np.zeros((contracted.shape[1], 1)))

    def _finish(self, contracted: Array, steps: Array, crossed: Array) -> tuple[Array, ...]:
        """(quotient, kinks) per entry — and, for a method with an error estimate per entry
        (Ridders), the estimates: (K,) each."""
        if self.method.tableau is not None:
            values, errors = self.method.tableau(contracted[:, :, None], steps, np.zeros((contracted.shape[1], 1)))
            return values, crossed, errors
        return self._quotient(contracted, steps), crossed

    # ------------------------------------------------------------------ the input

    def _input_window(self, link: Link, idx: Array, piece: bool = False) -> tuple[Array, ...]:
        """A local per-sample layer: each input entry moves a window of z only; carry that
        window (``propagate.windowed``'s one-layer step) and contract it with δ^l there.
        ``piece``: a layer offering it is held on the unperturbed pass's piece
        (``forward_on_piece``): nothing crosses a kink."""
        layer, fd, caps = link.layer, self.fd, link.caps
        a_prev, z0, delta, base = link.a_prev, link.z, link.delta, link.base
        per = a_prev[0].size
        samples, positions = idx // per, idx % per
        ch, y0, x0 = np.unravel_index(positions, a_prev.shape[1:])
        new, steps = self._steps(a_prev.reshape(fd.n, -1)[samples, positions])
        g = len(idx)
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(g, dtype=bool)
        for m in range(new.shape[0]):
            win = a_prev[samples, :, y0, x0][:, :, None, None].astype(new.dtype)  # (G, c, 1, 1)
            win[np.arange(g), ch, 0, 0] = new[m]
            cache = None
            if caps.can("elementwise"):
                i0, j0, wh, ww = y0, x0, 1, 1
                if piece:
                    assert base is not None
                    out = layer.forward_on_piece(win, C.crop_at(base, y0, x0, 1, 1, samples))
                else:
                    out, cache = layer.forward(win)
                change = out - C.crop_at(z0, i0, j0, 1, 1, samples)
            elif caps.can("window"):  # linear in its input (declared): z moves by window_delta
                i0, j0, wh, ww = layer.window(y0, x0, 1, 1)
                if m > 0:  # Δz(s·e) = (s / s₀)·Δz(s₀·e): the first step's window, scaled
                    contracted[m] = contracted[0] * (steps[m] / steps[0])
                    continue
                change = layer.window_delta(win - C.crop_at(a_prev, y0, x0, 1, 1, samples), y0, x0, i0, j0, wh, ww)
            else:  # pooling: re-run the layer on the region its window of outputs reads
                i0, j0, wh, ww = layer.window(y0, x0, 1, 1)
                ry, rx, rh, rw = layer.region(i0, j0, wh, ww)
                region = C.crop_at(a_prev, ry, rx, rh, rw, samples).astype(new.dtype)
                C.paste_at(region, win, y0 - ry, x0 - rx)
                if piece:
                    assert base is not None
                    out = layer.forward_on_piece(region, C.crop_at(base, i0, j0, wh, ww, samples))
                else:
                    out, cache = layer.forward(region)
                change = out - C.crop_at(z0, i0, j0, wh, ww, samples)
            d = C.crop_at(delta, i0, j0, wh, ww, samples)
            contracted[m] = np.sum((change * d).reshape(g, -1), axis=1)
            if base is not None and cache is not None:
                state = kink_state(layer, caps, cache)
                if state is not None:
                    crossed |= np.any((state != C.crop_at(base, i0, j0, wh, ww, samples)).reshape(g, -1), axis=1)
        return self._finish(contracted, steps, crossed)

    def _input_units(self, link: Link, idx: Array) -> tuple[Array, ...]:
        """A dense layer: one input unit moves z by ``forward_input_delta``."""
        layer, fd = link.layer, self.fd
        a_prev, delta = link.a_prev, link.delta
        per = a_prev.shape[1]
        samples, units = idx // per, idx % per
        _, steps = self._steps(a_prev[samples, units])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        for m in range(steps.shape[0]):
            change = layer.forward_input_delta(steps[m][:, None].astype(np.result_type(a_prev, fd.work)),
                                               units[:, None])
            contracted[m] = np.sum(change * delta[samples], axis=1)
        return self._finish(contracted, steps, np.zeros(len(idx), dtype=bool))

    def _input_rows(self, link: Link, idx: Array, piece: bool = False) -> tuple[Array, ...]:
        """A per-sample layer: the perturbed sample alone, one row an entry (``piece``: held
        on the unperturbed pass's piece, as ``_input_window``)."""
        layer, fd = link.layer, self.fd
        a_prev, z0, delta, base = link.a_prev, link.z, link.delta, link.base
        per = a_prev[0].size
        samples, positions = idx // per, idx % per
        new, steps = self._steps(a_prev.reshape(fd.n, -1)[samples, positions])
        g = len(idx)
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(g, dtype=bool)
        for m in range(new.shape[0]):
            rows = a_prev.reshape(fd.n, -1)[samples].astype(new.dtype)
            rows[np.arange(g), positions] = new[m]
            if piece:
                assert base is not None
                out = layer.forward_on_piece(rows.reshape((g,) + a_prev.shape[1:]), base[samples])
            else:
                out, cache = layer.forward(rows.reshape((g,) + a_prev.shape[1:]))
            contracted[m] = np.sum(((out - z0[samples]) * delta[samples]).reshape(g, -1), axis=1)
            if base is not None and not piece:
                state = kink_state(layer, link.caps, cache)
                crossed |= np.any((state != base[samples]).reshape(g, -1), axis=1)
        return self._finish(contracted, steps, crossed)

    def _input_batches(self, link: Link, idx: Array) -> tuple[Array, ...]:
        """A layer that is not per-sample: the whole perturbed batch, one pass an entry and step."""
        layer = link.layer
        a_prev, z0, delta, base = link.a_prev, link.z, link.delta, link.base
        new, steps = self._steps(a_prev.reshape(-1)[idx])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(idx), dtype=bool)
        for m in range(new.shape[0]):
            for k, j in enumerate(idx):
                a = a_prev.astype(new.dtype, order="C")  # C order: reshape(-1) a view, the write lands
                a.reshape(-1)[j] = new[m, k]
                out, cache = layer.forward(a)
                contracted[m, k] = np.sum((out - z0) * delta)
                crossed[k] |= moved(layer, link.caps, cache, base)
        return self._finish(contracted, steps, crossed)

    # ------------------------------------------------------------------ along directions


def moved(layer: Any, caps: Any, cache: Any, base: Array | None) -> bool:
    """Did any unit of a whole-batch pass land on the other side of a kink?"""
    if base is None:
        return False
    state = kink_state(layer, caps, cache)
    return bool(state is not None and np.any(state != base))
