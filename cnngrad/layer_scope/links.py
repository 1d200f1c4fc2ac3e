"""``LinkDifferences``: each layer alone, differenced and contracted with the δ it received.

Parameters here (``forward_perturbed`` where the layer offers it and passes its spot check,
else a real pass of the whole batch per entry), inputs in ``inputs.py``, directions below;
chunks run here or on the workers like the network scope's, with the same numbers either way.
A layer inside a block is a link too (``tree.py``); there, as in the network scope, no
shortcut but ``forward_perturbed`` (spot-checked) and ``elementwise`` is taken.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..adjoint import _norm as norm
from ..adjoint import is_linear
from ..blas import one_thread
from ..blocks import Block
from ..finite_diff import FiniteDifferences, Numeric
from ..finite_diff.inner import spot_check
from ..finite_diff.propagate import spot_check_perturbed, spot_check_windows
from ..finite_diff.shortcuts import kink_state
from ..network import pure
from ..refs import TensorRef
from .grouped import GroupedInputs
from .inputs import InputLinks, moved
from .tree import Link, Links, share

Array = np.ndarray
Run = Callable[[Array], tuple[Array, ...]]


class LinkDifferences(InputLinks, GroupedInputs):
    """Numeric gradients of each layer alone, contracted with the δ it received.

    ``fd`` holds the unperturbed pass (inputs, caches, kink states, capabilities) of the
    numeric side; ``received[l]`` is δ^l, ∂C/∂(output of layer l), of that output's shape;
    ``inner``: δ at the input of every layer inside a block (``Network.backward``'s), from
    which the δ each inner layer received follows (``tree.inner_received``)."""

    def __init__(self, fd: FiniteDifferences, received: list[Array],
                 inner: dict[tuple[int, ...], Array] | None = None) -> None:
        self.fd, self.net, self.method = fd, fd.net, fd.method
        self.inputs = fd.inputs  # every layer's input in the unperturbed pass (diagnosis reads them)
        self.links = Links(fd, received, inner)
        self.received = self.links.received
        self.fast_fallbacks: list[str] = list(fd.fast_fallbacks)
        self._spot: dict[tuple[tuple[int, ...], str], bool] = {}

    # ------------------------------------------------------------------ the targets

    def numeric(self, targets: list[tuple[TensorRef, Array]]) -> list[Numeric]:
        """Like ``FiniteDifferences.numeric``: each ref's entries at the flat indices given,
        the chunks of all of them run here or on the workers (same numbers either way)."""
        plans = [self._plan(ref) for ref, _ in targets]
        return self.fd.run_chunks(targets, [chunk for chunk, _, _ in plans], [per for _, per, _ in plans],
                                  [run for _, _, run in plans])

    def _plan(self, ref: TensorRef) -> tuple[int, int, Run]:
        """(entries a chunk, bytes of work an entry, the chunk's function) for one tensor."""
        try:
            link = self.links.at(ref.path)
        except ValueError as e:
            raise ValueError(f"{ref}: {e}") from None
        if not ref.is_delta and ref.name not in link.layer.params:
            raise ValueError(f"{ref}: the layer has no parameter {ref.name!r}")
        if ref.is_delta and isinstance(link.layer, Block):
            return self._fan_out(ref, link)
        caps, out, a, item = link.caps, link.z, link.a_prev, 16
        if not ref.is_delta:
            if caps.can("perturbed") and not caps.kink_state and self._spot_ok(ref.path, link, ref.name):
                per = out[:, 0].size * item * 4
                return self._chunk(per), per, lambda idx: self._param_perturbed(link, ref.name, idx)
            per = out.size * item * 4
            return 1, per, lambda idx: self._param_passes(link, ref.name, idx)
        if link.top:
            grouped = self.grouped_plan(ref.index)  # entries whose windows cannot overlap share a pass
            if grouped is not None:
                return grouped
        if self._windowed(ref.path, link):
            zero = np.zeros(1, dtype=int)
            wh, ww = (1, 1) if caps.can("elementwise") else link.layer.window(zero, zero, 1, 1)[2:]
            # the window, the input region it reads, unrolled (im2col) in a conv's correlate
            per = item * (a.shape[1] * wh * ww * 16 + 3 * out.shape[1] * wh * ww)
            return self._chunk(per), per, lambda idx: self._input_window(link, idx)
        if link.top and caps.per_sample and a.ndim == 2 and caps.can("input_delta") and not caps.kink_state:
            per = out.shape[1] * item * 4
            return self._chunk(per), per, lambda idx: self._input_units(link, idx)
        if caps.per_sample:
            per = (a[0].size + out[0].size) * item * 4
            return self._chunk(per), per, lambda idx: self._input_rows(link, idx)
        per = (a.size + out.size) * item * 4
        return 1, per, lambda idx: self._input_batches(link, idx)

    def at_kinks(self, ref: TensorRef, idx: Array) -> Numeric:
        """δ at the input of a layer at the flat indices ``idx`` whose stencils crossed a kink
        somewhere in the network: the layer alone, as its link differences it — where it
        offers ``"piece"`` (relu, leaky relu, max and global max pooling), held on the
        unperturbed pass's piece (``forward_on_piece``: the piece whose derivative the
        backward's masks compute), so nothing crosses; a kink the layer alone still crosses is
        marked.  Localisation's last look (``layer_scope.kinked_link``), never a row's verdict:
        the rows leave kink crossings out, as the network scope does."""
        link = self.links.at(ref.path)
        if ref.is_delta and link.base is not None and link.caps.can("piece") and link.caps.per_sample:
            if self._windowed(ref.path, link):
                out = self._input_window(link, idx, piece=True)
            else:
                out = self._input_rows(link, idx, piece=True)
            return Numeric(idx, out[0], np.zeros(len(idx), dtype=bool))
        return self.numeric([(ref, idx)])[0]

    def _fan_out(self, ref: TensorRef, link: Link) -> tuple[int, int, Run]:
        """A block's own input row: its forward feeds the input a to every path unchanged, so
        ``δ^{l-1} = Σ_p δ_p`` — numerically, the links of each path's first layer at the same
        entries, plus, for an identity path ``[]``, the merge's share of δ^l itself (exact).
        A backward that sums the paths wrongly fails here, every inner link passing."""
        block, n_paths = link.layer, len(link.layer.paths)
        firsts = [self._plan(TensorRef.delta(ref.path + (p, 0))) if block.paths[p] else None for p in range(n_paths)]
        shares = [None if block.paths[p] else share(block, p, link.delta).reshape(-1) for p in range(n_paths)]
        plans = [plan for plan in firsts if plan is not None]
        chunk = min((c for c, _, _ in plans), default=self._chunk(16))
        per = sum(w for _, w, _ in plans) or 16
        tableau = self.method.tableau is not None

        def run(idx: Array) -> tuple[Array, ...]:
            values, kinks, errors = np.zeros(len(idx)), np.zeros(len(idx), dtype=bool), np.zeros(len(idx))
            for plan, d in zip(firsts, shares):
                if plan is None:  # the identity: ∂z/∂a = I, nothing to difference
                    values = values + d[idx]  # type: ignore[index]
                    continue
                out = plan[2](idx)
                values, kinks = values + out[0], kinks | out[1]
                if tableau:
                    errors = errors + out[2]
            return (values, kinks, errors) if tableau else (values, kinks)

        return chunk, per, run

    def _chunk(self, per: int) -> int:
        return int(max(1, min(8192, self.fd.budget // max(per, 1))))

    def _windowed(self, path: tuple[int, ...], link: Link) -> bool:
        """Is the layer's input differenced a window at a time (``_input_window``): a local
        per-sample layer on (c, h, w) maps whose window shortcut passed its spot check?"""
        caps = link.caps
        local = caps.can("elementwise") or (link.top and (caps.can("window") or caps.can("region")))
        return caps.per_sample and link.a_prev.ndim == 4 and local and self._windows_ok(path, link)

    def _windows_ok(self, path: tuple[int, ...], link: Link) -> bool:
        """Does the layer's window shortcut agree with a real forward pass (the network scope's
        spot check)?  Else its input is differenced by real passes, and a fallback says so."""
        if (path, "window") not in self._spot:
            ok = link.caps.can("elementwise") or spot_check_windows(self.fd, path[0], path[0] + 1)
            self._spot[(path, "window")] = ok
            if not ok:
                self.fast_fallbacks.append(f"{link.where}: its window shortcut disagreed with a real forward pass; "
                                           f"the layer scope ran real passes for its input instead")
        return self._spot[(path, "window")]

    def _spot_ok(self, path: tuple[int, ...], link: Link, name: str) -> bool:
        if (path, name) not in self._spot:
            if link.top:
                ok = spot_check_perturbed(self.fd, path[0], name)
            else:
                ok = link.layer.params[name].flags.c_contiguous and \
                    spot_check(link.layer, link.a_prev, link.z, link.cache, name)
            self._spot[(path, name)] = ok
            if not ok:
                self.fast_fallbacks.append(f"{link.where} {name}: forward_perturbed disagreed with a real forward "
                                           f"pass; the layer scope ran real passes instead")
        return self._spot[(path, name)]

    def _param_perturbed(self, link: Link, name: str, idx: Array) -> tuple[Array, ...]:
        """``forward_perturbed``: each entry moves one output channel (unit) of z; contract
        that channel's change with δ^l there.  z is linear in the parameter (what the shortcut
        declares), so one step is run and the others scaled from it, as for a linear input."""
        layer, fd = link.layer, self.fd
        z0, delta = link.z, link.delta
        offs = np.asarray(self.method.offsets)[:, None] * fd.eps
        steps = np.broadcast_to(offs, (len(offs), len(idx)))
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        channel, values = layer.forward_perturbed(z0, link.cache, name, idx, steps[0])
        change = (values - np.moveaxis(z0[:, channel], 1, 0)).reshape(len(idx), -1)
        d = np.moveaxis(delta[:, channel], 1, 0).reshape(len(idx), -1)  # (K, n·…)
        contracted[0] = np.einsum("ki,ki->k", change, d)
        for m in range(1, len(offs)):  # Δz(s·e) = (s / s₀)·Δz(s₀·e)
            contracted[m] = contracted[0] * (steps[m] / steps[0])
        return self._finish(contracted, steps, np.zeros(len(idx), dtype=bool))

    def _param_passes(self, link: Link, name: str, idx: Array) -> tuple[Array, ...]:
        """A real forward pass of the whole batch per perturbed entry and step."""
        layer = link.layer
        z0, delta, base = link.z, link.delta, link.base
        original = layer.params[name]
        flat0 = original.reshape(-1)
        new, steps = self._steps(flat0[idx])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(idx), dtype=bool)
        a_prev = link.a_prev.astype(np.result_type(link.a_prev, new), copy=False)  # complex with a complex step
        try:
            for m in range(new.shape[0]):
                for k, j in enumerate(idx):
                    p = original.astype(new.dtype, order="C")  # a Fortran-ordered W: reshape(-1) copied, the write lost
                    p.reshape(-1)[j] = new[m, k]
                    layer.params[name] = p
                    out, cache = layer.forward(a_prev)
                    contracted[m, k] = np.sum((out - z0) * delta)
                    crossed[k] |= moved(layer, link.caps, cache, base)
        finally:
            layer.params[name] = original
        return self._finish(contracted, steps, crossed)

    # ------------------------------------------------------------------ the input

    def _lift(self, layer: object, original: Array) -> float:
        """The factor a direction's step is lifted by: 1, but for a built-in layer linear in its
        input (``adjoint.is_linear``; z = L a + c, and affine in its W and b too) a power of two
        that makes the step about the moved tensor's own norm.  Its quotient is exact at any
        step there, and at h the subtraction's rounding, ε‖z‖/h, drowned a direction whose
        derivative was small (the CIFAR rung's dense input δ, 8,192 entries: norm rel 1e-5 >
        tol, so the row went entry by entry) — as the dot-product test lifts its moves."""
        if not (pure(layer) and is_linear(layer)):
            return 1.0
        size = norm(original)
        if not 0.0 < size < np.inf:
            return 1.0
        return float(2.0 ** round(math.log2(size / self.fd.eps)))

    def directional(self, ref: TensorRef, V: Array) -> tuple[Array, Array]:
        """``⟨δ^l, (z^l(θ + h·v) − z^l(θ − h·v)) / 2h⟩`` along each row v of V (of shape
        (K, size)), a real pass of the layer on the whole batch per direction and step (h lifted
        for a built-in linear layer: ``_lift``).  A built-in linear layer (``adjoint.is_linear``:
        z affine in its input and parameters) runs the first step only and scales it to the
        others (Δz(s·v) = (s / s₀)·Δz(s₀·v)), as ``forward_perturbed`` does; a per-sample layer
        moved along its input runs every step of a direction in one pass, the moved copies of
        the batch stacked (where they fit the memory budget).

        A layer offering ``"piece"`` (relu, leaky relu, max and global max pooling) moved along
        its input is held on the unperturbed pass's piece (``forward_on_piece``), as the
        network scope holds it (``FiniteDifferences.directional``): a direction moves every
        unit, and a max-pool window of tied relu zeros was crossed by every direction; on the
        piece the quotient is the piece's derivative, the one the backward's masks compute."""
        link, fd = self.links.at(ref.path), self.fd
        layer, z0, delta, base = link.layer, link.z, link.delta, link.base
        on_piece = ref.is_delta and base is not None and link.caps.can("piece")
        original = link.a_prev if ref.is_delta else layer.params[ref.name]
        offs = np.asarray(self.method.offsets) * (fd.eps * self._lift(layer, original))
        steps = offs[:, None].repeat(len(V), axis=1)
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(V), dtype=bool)
        work = np.result_type(original, fd.work)
        # a parameter's layer runs on its input cast complex too with a complex step: ``z += b`` runs in place
        a_prev = link.a_prev.astype(work, copy=False)
        exact = pure(layer) and is_linear(layer)  # one step, scaled to the others
        # the steps stacked where their copies fit the memory budget (a call a step saves nothing on a large map)
        stacked = (ref.is_delta and link.caps.per_sample and not exact and len(offs) > 1
                   and len(offs) * (original.nbytes + z0.nbytes) * 4 <= fd.budget)
        with one_thread():
            try:
                for k, v in enumerate(V):
                    move = v.reshape(original.shape)
                    if stacked:  # every step of this direction in one pass: M moved copies of the batch
                        shifted = (original[None] + offs.reshape((-1,) + (1,) * original.ndim) * move[None]).astype(
                            work, copy=False).reshape((-1,) + original.shape[1:])
                        if on_piece and base is not None:
                            out = layer.forward_on_piece(shifted, base[np.tile(np.arange(fd.n), len(offs))])
                        else:
                            out, cache = layer.forward(shifted)
                            if base is not None:  # each copy's kink state against the unperturbed pass's
                                state = np.asarray(kink_state(layer, link.caps, cache))
                                crossed[k] = bool(np.any(state.reshape((len(offs),) + base.shape) != base))
                        change = out.reshape((len(offs),) + z0.shape) - z0
                        contracted[:, k] = np.sum((change * delta).reshape(len(offs), -1), axis=1)
                        continue
                    for m, o in enumerate(offs[:1] if exact else offs):
                        shifted = (original + o * move).astype(work, copy=False)
                        if on_piece:
                            contracted[m, k] = np.sum((layer.forward_on_piece(shifted, base) - z0) * delta)
                            continue
                        if ref.is_delta:
                            out, cache = layer.forward(shifted)
                        else:
                            layer.params[ref.name] = shifted
                            out, cache = layer.forward(a_prev)
                        contracted[m, k] = np.sum((out - z0) * delta)
                        crossed[k] |= moved(layer, link.caps, cache, base)
                    if exact:
                        contracted[1:, k] = contracted[0, k] * (offs[1:] / offs[0])
            finally:
                if not ref.is_delta:
                    layer.params[ref.name] = original
        return self._quotient(contracted, steps), crossed
