"""``LinkDifferences``: each layer alone, differenced and contracted with the δ it received.

Parameters here (``forward_perturbed`` where the layer offers it and passes its spot check,
else a real pass of the whole batch per entry), inputs in ``inputs.py``, directions below;
chunks run here or on the workers like the network scope's, with the same numbers either way.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from ..finite_diff import FiniteDifferences, Interrupted, Numeric, workers
from ..finite_diff.propagate import spot_check_perturbed, spot_check_windows
from ..refs import TensorRef
from .grouped import GroupedInputs
from .inputs import InputLinks, moved

Array = np.ndarray
Run = Callable[[Array], tuple[Array, Array]]


class LinkDifferences(InputLinks, GroupedInputs):
    """Numeric gradients of each layer alone, contracted with the δ it received.

    ``fd`` holds the unperturbed pass (inputs, caches, kink states, capabilities) of the
    numeric side; ``received[l]`` is δ^l, ∂C/∂(output of layer l), of that output's shape."""

    def __init__(self, fd: FiniteDifferences, received: list[Array]) -> None:
        self.fd, self.net, self.method = fd, fd.net, fd.method
        self.inputs = fd.inputs  # every layer's input in the unperturbed pass (diagnosis reads them)
        self.received = [np.asarray(d, dtype=np.result_type(d, np.float64)) for d in received]
        self.fast_fallbacks: list[str] = list(fd.fast_fallbacks)
        self._spot: dict[tuple[int, str], bool] = {}

    # ------------------------------------------------------------------ the targets

    def numeric(self, targets: list[tuple[TensorRef, Array]]) -> list[Numeric]:
        """Like ``FiniteDifferences.numeric``: each ref's entries at the flat indices given,
        the chunks of all of them run here or on the workers (same numbers either way)."""
        plans = [self._plan(ref) for ref, _ in targets]
        jobs = [(ti, lo, min(lo + chunk, len(idx))) for ti, ((_, idx), (chunk, _, _)) in enumerate(zip(targets, plans))
                for lo in range(0, len(idx), chunk)]
        work = sum(len(idx) * per for (_, idx), (_, per, _) in zip(targets, plans))
        self.fd.work_planned += work
        results = [(np.empty(len(idx)), np.zeros(len(idx), dtype=bool)) for _, idx in targets]
        left = [sum(1 for j in jobs if j[0] == ti) for ti in range(len(targets))]  # chunks still to come
        try:
            with threadpool_limits(1, user_api="blas"):
                for (ti, lo, hi), (v, k) in workers.run_jobs(jobs, [run for _, _, run in plans],
                                                             [idx for _, idx in targets], work, self.fd.workers):
                    results[ti][0][lo:hi], results[ti][1][lo:hi] = v, k
                    left[ti] -= 1
                    self.fd.work_done += (hi - lo) * plans[ti][1]
                    self.fd.progress(self.fd.work_done, self.fd.work_planned)
        except KeyboardInterrupt:
            finished = [Numeric(idx, v, k) if n == 0 else None for (_, idx), (v, k), n in zip(targets, results, left)]
            raise Interrupted(finished) from None
        return [Numeric(idx, v, k) for (_, idx), (v, k) in zip(targets, results)]

    def _plan(self, ref: TensorRef) -> tuple[int, int, Run]:
        """(entries a chunk, bytes of work an entry, the chunk's function) for one tensor."""
        if len(ref.path) != 1 or not 0 <= ref.index < len(self.net.layers):
            raise ValueError(f"{ref}: no such layer in a network of {len(self.net.layers)} layers")
        l = ref.index
        caps, fd = self.fd.caps[l], self.fd
        out = fd.inputs[l + 1]
        item = 16
        if not ref.is_delta:
            if caps.can("perturbed") and not caps.kink_state and self._spot_ok(l, ref.name):
                per = out[:, 0].size * item * 4
                return self._chunk(per), per, lambda idx: self._param_perturbed(l, ref.name, idx)
            per = out.size * item * 4
            return 1, per, lambda idx: self._param_passes(l, ref.name, idx)
        a = fd.inputs[l]
        grouped = self.grouped_plan(l)  # entries whose windows cannot overlap share a pass
        if grouped is not None:
            return grouped
        if caps.per_sample and a.ndim == 4 and (caps.can("window") or caps.can("region") or caps.can("elementwise")) \
                and self._windows_ok(l):
            zero = np.zeros(1, dtype=int)
            wh, ww = (1, 1) if caps.can("elementwise") else self.net.layers[l].window(zero, zero, 1, 1)[2:]
            # the window, the input region it reads, unrolled (im2col) in a conv's correlate
            per = item * (a.shape[1] * wh * ww * 16 + 3 * out.shape[1] * wh * ww)
            return self._chunk(per), per, lambda idx: self._input_window(l, idx)
        if caps.per_sample and a.ndim == 2 and caps.can("input_delta") and not caps.kink_state:
            per = out.shape[1] * item * 4
            return self._chunk(per), per, lambda idx: self._input_units(l, idx)
        if caps.per_sample:
            per = (a[0].size + out[0].size) * item * 4
            return self._chunk(per), per, lambda idx: self._input_rows(l, idx)
        per = (a.size + out.size) * item * 4
        return 1, per, lambda idx: self._input_batches(l, idx)

    def _chunk(self, per: int) -> int:
        return int(max(1, min(8192, self.fd.budget // max(per, 1))))

    def _windows_ok(self, l: int) -> bool:
        """Does layer l's window shortcut agree with a real forward pass (the network scope's
        spot check)?  Else its input is differenced by real passes, and a fallback says so."""
        if (l, "window") not in self._spot:
            ok = self.fd.caps[l].can("elementwise") or spot_check_windows(self.fd, l, l + 1)
            self._spot[(l, "window")] = ok
            if not ok:
                self.fast_fallbacks.append(f"layers[{l}]: its window shortcut disagreed with a real forward pass; "
                                           f"the layer scope ran real passes for its input instead")
        return self._spot[(l, "window")]

    def _spot_ok(self, l: int, name: str) -> bool:
        if (l, name) not in self._spot:
            ok = spot_check_perturbed(self.fd, l, name)
            self._spot[(l, name)] = ok
            if not ok:
                self.fast_fallbacks.append(f"layers[{l}] {name}: forward_perturbed disagreed with a real forward pass; "
                                      f"the layer scope ran real passes instead")
        return self._spot[(l, name)]

    def _param_perturbed(self, l: int, name: str, idx: Array) -> tuple[Array, Array]:
        """``forward_perturbed``: each entry moves one output channel (unit) of z; contract
        that channel's change with δ^l there.  z is linear in the parameter (what the shortcut
        declares), so one step is run and the others scaled from it, as for a linear input."""
        layer, fd = self.net.layers[l], self.fd
        z0, delta = fd.inputs[l + 1], self.received[l]
        offs = np.asarray(self.method.offsets)[:, None] * fd.eps
        steps = np.broadcast_to(offs, (len(offs), len(idx)))
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        channel, values = layer.forward_perturbed(z0, fd.caches[l], name, idx, steps[0])
        change = (values - np.moveaxis(z0[:, channel], 1, 0)).reshape(len(idx), -1)
        d = np.moveaxis(delta[:, channel], 1, 0).reshape(len(idx), -1)  # (K, n·…)
        contracted[0] = np.einsum("ki,ki->k", change, d)
        for m in range(1, len(offs)):  # Δz(s·e) = (s / s₀)·Δz(s₀·e)
            contracted[m] = contracted[0] * (steps[m] / steps[0])
        return self._quotient(contracted, steps), np.zeros(len(idx), dtype=bool)

    def _param_passes(self, l: int, name: str, idx: Array) -> tuple[Array, Array]:
        """A real forward pass of the whole batch per perturbed entry and step."""
        layer, fd = self.net.layers[l], self.fd
        z0, delta, base = fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
        original = layer.params[name]
        flat0 = original.reshape(-1)
        new, steps = self._steps(flat0[idx])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(idx), dtype=bool)
        try:
            for m in range(new.shape[0]):
                for k, j in enumerate(idx):
                    p = original.astype(new.dtype)
                    p.reshape(-1)[j] = new[m, k]
                    layer.params[name] = p
                    out, cache = layer.forward(fd.inputs[l])
                    contracted[m, k] = np.sum((out - z0) * delta)
                    crossed[k] |= moved(layer, fd.caps[l], cache, base)
        finally:
            layer.params[name] = original
        return self._quotient(contracted, steps), crossed

    # ------------------------------------------------------------------ the input

    def directional(self, ref: TensorRef, V: Array) -> tuple[Array, Array]:
        """``⟨δ^l, (z^l(θ + h·v) − z^l(θ − h·v)) / 2h⟩`` along each row v of V (of shape
        (K, size)), a real pass of the layer on the whole batch per direction and step."""
        l = ref.index
        layer, fd = self.net.layers[l], self.fd
        z0, delta, base = fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
        original = fd.inputs[l] if ref.is_delta else layer.params[ref.name]
        offs = np.asarray(self.method.offsets) * fd.eps
        steps = np.broadcast_to(offs[:, None], (len(offs), len(V)))
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(V), dtype=bool)
        with threadpool_limits(1, user_api="blas"):
            try:
                for m, o in enumerate(offs):
                    for k, v in enumerate(V):
                        shifted = (original + o * v.reshape(original.shape)).astype(np.result_type(original, fd.work))
                        if ref.is_delta:
                            out, cache = layer.forward(shifted)
                        else:
                            layer.params[ref.name] = shifted
                            out, cache = layer.forward(fd.inputs[l])
                        contracted[m, k] = np.sum((out - z0) * delta)
                        crossed[k] |= moved(layer, fd.caps[l], cache, base)
            finally:
                if not ref.is_delta:
                    layer.params[ref.name] = original
        return self._quotient(contracted, steps), crossed
