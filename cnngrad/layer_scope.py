"""``--scope layer``: every layer's backward checked against differences of that layer alone.

For layer l with input ``a^{l-1}``, output ``z^l`` and the δ its backward received,
``δ^l = ∂C/∂z^l`` (the analytic one, as the layers above passed it down), the numeric
gradient of a parameter entry θ_j is the layer's own forward, differenced and contracted
with that δ::

    ⟨δ^l, (z^l(θ + h·e_j) − z^l(θ − h·e_j)) / 2h⟩      against the analytic ∂C/∂θ_j

and the same for an entry of its input, against the δ^{l-1} its backward passes down.  This
is the chain rule checked link by link: each entry costs one layer (not the network above
it), a wrong backward fails at its own layer only (the layers below it pass, being right
for the δ they were given), so the culprit is named by construction.  What it does not see
— the wiring between layers and the loss's gradient — a short end-to-end check along
random directions of x covers (``end_to_end``).

Changes are carried the way the network scope carries them, where a layer declares it
(``finite_diff.shortcuts``): a parameter's perturbed output channel (``forward_perturbed``,
spot-checked against a real pass first), an input entry's window (``window``/``region``/
``elementwise``), one input unit of a dense layer (``input_delta``); else real forward
passes — one sample a row for a per-sample layer, a whole perturbed batch for one that is not.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import conv as C
from .finite_diff import FiniteDifferences, Interrupted, Numeric, workers
from .finite_diff.propagate import spot_check_perturbed, spot_check_windows
from .finite_diff.shortcuts import kink_state
from .refs import TensorRef

Array = np.ndarray
Run = Callable[[Array], tuple[Array, Array]]
END_TO_END_DIRECTIONS = 2  # random directions of x for the end-to-end check


class LinkDifferences:
    """Numeric gradients of each layer alone, contracted with the δ it received.

    ``fd`` holds the unperturbed pass (inputs, caches, kink states, capabilities) of the
    numeric side; ``received[l]`` is δ^l, ∂C/∂(output of layer l), of that output's shape."""

    def __init__(self, fd: FiniteDifferences, received: list[Array]) -> None:
        self.fd, self.net, self.method = fd, fd.net, fd.method
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
        results = [(np.empty(len(idx)), np.zeros(len(idx), dtype=bool)) for _, idx in targets]
        left = [sum(1 for j in jobs if j[0] == ti) for ti in range(len(targets))]  # chunks still to come
        try:
            with threadpool_limits(1, user_api="blas"):
                for (ti, lo, hi), (v, k) in workers.run_jobs(jobs, [run for _, _, run in plans],
                                                             [idx for _, idx in targets], work, self.fd.workers):
                    results[ti][0][lo:hi], results[ti][1][lo:hi] = v, k
                    left[ti] -= 1
                    self.fd.progress(hi - lo)
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

    # ------------------------------------------------------------------ the quotient

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

    # ------------------------------------------------------------------ parameters

    def _param_perturbed(self, l: int, name: str, idx: Array) -> tuple[Array, Array]:
        """``forward_perturbed``: each entry moves one output channel (unit) of z; contract
        that channel's change with δ^l there."""
        layer, fd = self.net.layers[l], self.fd
        z0, delta = fd.inputs[l + 1], self.received[l]
        offs = np.asarray(self.method.offsets)[:, None] * fd.eps
        steps = np.broadcast_to(offs, (len(offs), len(idx)))
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        for m in range(len(offs)):
            channel, values = layer.forward_perturbed(z0, fd.caches[l], name, idx, steps[m])
            d = np.moveaxis(delta[:, channel], 1, 0)  # (K, n, …)
            change = values - np.moveaxis(z0[:, channel], 1, 0)
            contracted[m] = np.sum((change * d).reshape(len(idx), -1), axis=1)
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
                    crossed[k] |= _moved(layer, fd.caps[l], cache, base)
        finally:
            layer.params[name] = original
        return self._quotient(contracted, steps), crossed

    # ------------------------------------------------------------------ the input

    def _input_window(self, l: int, idx: Array) -> tuple[Array, Array]:
        """A local per-sample layer: each input entry moves a window of z only; carry that
        window (``propagate.windowed``'s one-layer step) and contract it with δ^l there."""
        layer, fd, caps = self.net.layers[l], self.fd, self.fd.caps[l]
        a_prev, z0, delta, base = fd.inputs[l], fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
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
                out, cache = layer.forward(win)
                i0, j0, wh, ww = y0, x0, 1, 1
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
                out, cache = layer.forward(region)
                change = out - C.crop_at(z0, i0, j0, wh, ww, samples)
            d = C.crop_at(delta, i0, j0, wh, ww, samples)
            contracted[m] = np.sum((change * d).reshape(g, -1), axis=1)
            if base is not None and cache is not None:
                moved = kink_state(layer, caps, cache) != C.crop_at(base, i0, j0, wh, ww, samples)
                crossed |= np.any(moved.reshape(g, -1), axis=1)
        return self._quotient(contracted, steps), crossed

    def _input_units(self, l: int, idx: Array) -> tuple[Array, Array]:
        """A dense layer: one input unit moves z by ``forward_input_delta``."""
        layer, fd = self.net.layers[l], self.fd
        a_prev, delta = fd.inputs[l], self.received[l]
        per = a_prev.shape[1]
        samples, units = idx // per, idx % per
        _, steps = self._steps(a_prev[samples, units])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        for m in range(steps.shape[0]):
            change = layer.forward_input_delta(steps[m][:, None].astype(np.result_type(a_prev, fd.work)),
                                               units[:, None])
            contracted[m] = np.sum(change * delta[samples], axis=1)
        return self._quotient(contracted, steps), np.zeros(len(idx), dtype=bool)

    def _input_rows(self, l: int, idx: Array) -> tuple[Array, Array]:
        """A per-sample layer: the perturbed sample alone, one row an entry."""
        layer, fd = self.net.layers[l], self.fd
        a_prev, z0, delta, base = fd.inputs[l], fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
        per = a_prev[0].size
        samples, positions = idx // per, idx % per
        new, steps = self._steps(a_prev.reshape(fd.n, -1)[samples, positions])
        g = len(idx)
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(g, dtype=bool)
        for m in range(new.shape[0]):
            rows = a_prev.reshape(fd.n, -1)[samples].astype(new.dtype)
            rows[np.arange(g), positions] = new[m]
            out, cache = layer.forward(rows.reshape((g,) + a_prev.shape[1:]))
            contracted[m] = np.sum(((out - z0[samples]) * delta[samples]).reshape(g, -1), axis=1)
            if base is not None:
                state = kink_state(layer, fd.caps[l], cache)
                crossed |= np.any((state != base[samples]).reshape(g, -1), axis=1)
        return self._quotient(contracted, steps), crossed

    def _input_batches(self, l: int, idx: Array) -> tuple[Array, Array]:
        """A layer that is not per-sample: the whole perturbed batch, one pass an entry and step."""
        layer, fd = self.net.layers[l], self.fd
        a_prev, z0, delta, base = fd.inputs[l], fd.inputs[l + 1], self.received[l], fd.base_kinks[l]
        new, steps = self._steps(a_prev.reshape(-1)[idx])
        contracted = np.empty(steps.shape, dtype=np.result_type(steps, delta))
        crossed = np.zeros(len(idx), dtype=bool)
        for m in range(new.shape[0]):
            for k, j in enumerate(idx):
                a = a_prev.astype(new.dtype)
                a.reshape(-1)[j] = new[m, k]
                out, cache = layer.forward(a)
                contracted[m, k] = np.sum((out - z0) * delta)
                crossed[k] |= _moved(layer, fd.caps[l], cache, base)
        return self._quotient(contracted, steps), crossed

    # ------------------------------------------------------------------ along directions

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
                        moved = (original + o * v.reshape(original.shape)).astype(np.result_type(original, fd.work))
                        if ref.is_delta:
                            out, cache = layer.forward(moved)
                        else:
                            layer.params[ref.name] = moved
                            out, cache = layer.forward(fd.inputs[l])
                        contracted[m, k] = np.sum((out - z0) * delta)
                        crossed[k] |= _moved(layer, fd.caps[l], cache, base)
            finally:
                if not ref.is_delta:
                    layer.params[ref.name] = original
        return self._quotient(contracted, steps), crossed


def _moved(layer: Any, caps: Any, cache: Any, base: Array | None) -> bool:
    """Did any unit of a whole-batch pass land on the other side of a kink?"""
    if base is None:
        return False
    state = kink_state(layer, caps, cache)
    return bool(state is not None and np.any(state != base))


SCOPES = ("network", "layer")


def received_deltas(deltas: list[Array], out_delta: Array) -> list[Array]:
    """δ^l, ∂C/∂(output of layer l), as each layer's backward received it: the δ the layer
    above passed down (``deltas[l + 1]``), the loss's gradient for the last layer."""
    return list(deltas[1:]) + [out_delta]


def link_rows(rows: list, deltas: list[Array], kinds: list[str], row_type: Any) -> list:
    """The network scope's rows and δ at every inner layer boundary (each layer's input):
    in the layer scope every layer's backward is checked on everything it returns."""
    have = {row.ref for row in rows}
    rows = rows + [row_type(TensorRef.delta(l), kinds[l], deltas[l]) for l in range(1, len(deltas))
                   if TensorRef.delta(l) not in have]
    rows.sort(key=lambda row: (row.ref.path, not row.ref.is_delta))  # stable: a layer's order stays
    return rows


def end_to_end(fd: FiniteDifferences, g: Array, kind: str, rng: np.random.Generator, tol: float,
               floor: Any, k: int = END_TO_END_DIRECTIONS) -> Any:
    """∂C/∂x along ``k`` random unit directions through the whole network (2k passes for
    central differences): the links checked one by one, this ties them together — a wrong
    wiring between layers, or a wrong loss gradient, fails here and nowhere else."""
    from .compare import judge

    V = rng.standard_normal((k, g.size))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    along, kinks = fd.directional(TensorRef.delta(0), V)
    check = judge(TensorRef.delta(0), kind, g.shape, np.arange(k), V @ g.reshape(-1).astype(np.float64), along,
                  kinks, tol, mode="directions", floor=floor)
    check.note = f"end to end: ∂C/∂x along {k} random directions through the whole network and the loss"
    return check


WIRING = ("every layer's backward checks out against its own forward, but ∂C/∂x end to end does not: "
          "the wiring between the layers (which δ each backward receives) or the loss's gradient is wrong")
