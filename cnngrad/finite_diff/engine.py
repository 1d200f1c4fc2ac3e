"""``FiniteDifferences``: the unperturbed pass, the rows run from a layer on, the quotient.

Rows of perturbed activations are run through ``layers[start:]`` by ``_losses``.  A row is
either one sample on its own (an input entry x[n, …] reaches sample n only, while every
layer is ``per_sample``) or part of a whole perturbed copy of the batch (rows ``g·N … g·N+N−1``
are copy g).  A layer that does not declare ``per_sample`` (batch norm) sees each copy as
its own forward pass, and single-sample rows become whole copies before it (the other
samples as in the unperturbed pass, which they are up to there).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..adjoint import is_linear
from ..blas import one_thread
from ..network import Forwarded, Network, pure
from ..refs import TensorRef
from . import planning, workers
from . import workers as _workers
from .methods import get_method
from .shortcuts import capabilities, kink_state

Array = np.ndarray
# Bytes one layer's working set on a slice of rows may take (``_losses``): what stays in
# a core's share of the cache — a conv of 8 channels ran 3x faster per row on 4 rows than on 64.
SLICE_BYTES = 4 << 20


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``numeric``: ``finished[t]`` is target t's result if all of it was
    done, else None."""

    def __init__(self, finished: list) -> None:
        super().__init__("interrupted")
        self.finished = finished


@dataclass
class Numeric:
    """Numeric ∂C/∂θ at the checked flat indices, and which stencils crossed a kink."""

    indices: Array
    values: Array
    kinks: Array
    errors: Array | None = None  # the method's error estimate per entry (Ridders), else None


class FiniteDifferences:
    """Numeric gradients of one problem ``(net, x, y)`` with step h and a ``Method``.

    ``progress(done, planned)`` is called after each chunk with the work finished and the
    work planned so far, in bytes of perturbed activations (what a chunk's time follows:
    an entry of the input δ costs far more than one of the last bias).
    ``workers`` processes share the chunks of a large check (default: every core this
    process may use); ``memory_budget`` bounds one chunk's perturbed batch and its activations.
    ``base``: the unperturbed pass of exactly this net on this x, already run (every layer's
    ``Forwarded``, as the analytic trace leaves them), instead of running it again.
    Every chunk is computed the same way wherever it runs, with one BLAS thread, so the
    numbers are the same bit for bit whatever the number of workers.  ``fast_fallbacks``
    says, one sentence each, where a shortcut was not taken and plain passes ran instead.
    """

    def __init__(self, net: Network, x: Array, y: Array, eps: float, method: str = "central",
                 memory_budget: int = 16 << 20, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None, base: Sequence[Forwarded] | None = None) -> None:
        self.net, self.x, self.y, self.eps = net, x, y, eps
        self.method = get_method(method)
        # the dtype perturbed values live in: complex for the complex step
        self.work = np.result_type(x.dtype, np.complex64) if self.method.is_complex else x.dtype
        self.budget = memory_budget
        self.workers = workers if workers is not None else _workers.default_workers()
        self.progress = progress or (lambda done, planned: None)
        self.work_done = self.work_planned = 0
        self.n = x.shape[0]
        self.caps = [capabilities(layer) for layer in net.layers]
        # the unperturbed pass: every layer's input and output, caches, kink states, ℓ_n(θ)
        self.inputs, self.caches = [x], []
        a = x
        for i, layer in enumerate(net.layers):
            a, cache = (base[i].out, base[i].cache) if base is not None else layer.forward(a)
            self.inputs.append(a)
            self.caches.append(cache)
        self.c0 = net.loss.per_sample(a, y)  # (N,)
        self.base_kinks = [kink_state(l, c, cache) for l, c, cache in zip(net.layers, self.caps, self.caches)]
        self.fast_fallbacks: list[str] = [
            f"layers[{i}] {getattr(layer, 'kind', type(layer).__name__)} does not declare per_sample: "
            f"each perturbed copy of the batch ran through it as its own pass, whole batches throughout"
            for i, (layer, c) in enumerate(zip(net.layers, self.caps)) if not c.per_sample]
        self.row_bytes = planning.suffix_row_bytes(net, x.dtype.itemsize)  # per start layer, once
        self.peak_bytes = planning.suffix_peak_bytes(net, x.dtype.itemsize)  # one layer's most, per start
        self.slice_bytes = SLICE_BYTES
        self.per_sample_from = [True] * (len(net.layers) + 1)  # [l]: layers l… all per_sample (one pass too)
        for l in range(len(net.layers) - 1, -1, -1):
            self.per_sample_from[l] = self.per_sample_from[l + 1] and self.caps[l].per_sample

    # ------------------------------------------------------------------ rows to losses

    def _losses(self, a: Array, start: int, samples: Array, copies: bool, on_piece: bool = False
                ) -> tuple[Array, Array, Array]:
        """ℓ of every row of a (the input of layer ``start``), row r being a perturbed copy of
        sample ``samples[r]``: alone (``copies`` False) or within whole copies of the batch.
        Returns the per-row losses, whether any unit of the row crossed a kink, and the rows'
        samples (more rows than given if single samples had to become whole copies).

        The rows go through the layers a slice at a time, as many as one layer's working set
        (``peak_bytes``) fits ``slice_bytes`` — a slice stays in cache; each row is computed
        the same whatever the slice (rows are independent, copies of the batch kept whole).

        ``on_piece``: a layer offering ``"piece"`` runs ``forward_on_piece`` at the unperturbed
        point's kink state (nothing to cross there); other layers' crossings count as ever."""
        step = self._slice_rows(start, copies)
        if a.shape[0] <= step:
            return self._losses_slice(a, start, samples, copies, on_piece)
        parts = [self._losses_slice(a[lo:lo + step], start, samples[lo:lo + step], copies, on_piece)
                 for lo in range(0, a.shape[0], step)]
        return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]

    def _slice_rows(self, start: int, copies: bool) -> int:
        """Rows of a slice from layer ``start`` on: a multiple of N for copies of the batch
        that a layer not ``per_sample`` sees whole; a single-sample row that becomes a whole
        copy there counts N times."""
        rows = max(1, min(self.slice_bytes, self.budget) // self.peak_bytes[start])
        if self.per_sample_from[start]:
            return rows
        return max(1, rows // self.n) * (self.n if copies else 1)

    def _losses_slice(self, a: Array, start: int, samples: Array, copies: bool, on_piece: bool = False
                      ) -> tuple[Array, Array, Array]:
        crossed = np.zeros(a.shape[0], dtype=bool)
        for l in range(start, len(self.net.layers)):
            layer, caps, base = self.net.layers[l], self.caps[l], self.base_kinks[l]
            if on_piece and base is not None and caps.can("piece"):
                a = layer.forward_on_piece(a, base[samples])
                continue
            if caps.per_sample:
                cache = None  # the last layer's cache goes before this one's is made
                a, cache = layer.forward(a)
                state = kink_state(layer, caps, cache) if base is not None else None
            else:
                if not copies:
                    a, crossed, samples = self._as_copies(l, a, crossed, samples)
                    copies = True
                a, state = self._each_copy(l, a)
            if base is not None:
                crossed |= np.any((state != base[samples]).reshape(a.shape[0], -1), axis=1)
        return self.net.loss.per_sample(a, self.y[samples]), crossed, samples

    def _as_copies(self, l: int, a: Array, crossed: Array, samples: Array) -> tuple[Array, Array, Array]:
        """Single-sample rows at the input of layer l -> whole copies of the batch there, the
        other samples unperturbed (the layers before l are per-sample)."""
        g, n, base = a.shape[0], self.n, self.inputs[l]
        full = np.repeat(base[None].astype(np.result_type(a, base)), g, axis=0)
        full[np.arange(g), samples] = a
        return full.reshape((g * n,) + base.shape[1:]), np.repeat(crossed, n), np.tile(np.arange(n), g)

    def _each_copy(self, l: int, a: Array) -> tuple[Array, Array | None]:
        """Layer l on each copy of the batch in a (rows g·N … g·N+N−1), one pass a copy."""
        layer, caps, n = self.net.layers[l], self.caps[l], self.n
        outs: list[Array] = []
        states: list[Array] = []
        for g in range(a.shape[0] // n):
            out, cache = layer.forward(a[g * n:(g + 1) * n])
            outs.append(out)
            state = kink_state(layer, caps, cache) if self.base_kinks[l] is not None else None
            if state is not None:
                states.append(state)
        return np.concatenate(outs), (np.concatenate(states) if states else None)

    def _combine(self, losses: Array, steps: Array, samples: Array, crossed: Array) -> tuple[Array, ...]:
        """losses/crossed of shape (M·K·S,) for M steps, K entries, S samples each -> (K,)
        values and kinks (and, for a method with an error estimate, the estimates)."""
        m, k = steps.shape
        c = losses.astype(np.result_type(losses, np.float64)).reshape(m, k, -1)
        c0 = self.c0.astype(np.float64)[samples].reshape(m, k, -1)[0]
        kinks = np.asarray(crossed.reshape(m, k, -1).any(axis=(0, 2)))
        if self.method.tableau is not None:
            values, errors = self.method.tableau(c, steps, c0)
            return values / self.n, kinks, errors / self.n
        return self.method.combine(c, steps, c0) / self.n, kinks

    def _offsets(self) -> Array:
        return np.asarray(self.method.offsets)[:, None] * self.eps  # (M, 1), complex for the complex step

    def _taken(self, new: Array, theta: Array) -> Array:
        """The steps the dtype actually took: ``(θ + o·h) − θ`` in float64 (complex128)."""
        wide = np.result_type(new, np.float64)
        return new.astype(wide) - theta.astype(wide)[None, :]

    # ------------------------------------------------------------------ entry by entry

    def input(self, indices: Array) -> Numeric:
        """∂C/∂x at flat indices of x."""
        return self.numeric([(TensorRef.delta(0), indices)])[0]

    def param(self, layer_index: int, name: str, indices: Array) -> Numeric:
        """∂C/∂θ for entries of ``layers[layer_index].params[name]``."""
        return self.numeric([(TensorRef.param(layer_index, name), indices)])[0]

    def numeric(self, targets: list[tuple[TensorRef, Array]]) -> list[Numeric]:
        """Numeric gradients of several tensors, each a ``TensorRef`` (a parameter, or δ at
        the input of a layer; ``TensorRef.delta(0)`` is ∂C/∂x) and the flat indices to
        difference.  Their chunks all go to the workers together."""
        with one_thread():  # the spot checks too: one thread, as the chunks
            plans = [planning.plan(self, ref) for ref, _ in targets]
        # the cheapest tensors first: a check cut short (Ctrl-C) has the most rows to show
        order = sorted(range(len(targets)), key=lambda t: len(targets[t][1]) * plans[t].row_bytes)
        # each tensor's entries in the order its plan chunks them best, given back in theirs
        perms = [None if p.order is None else p.order(np.asarray(idx)) for p, (_, idx) in zip(plans, targets)]
        chunked = [(ref, idx if perm is None else np.asarray(idx)[perm]) for (ref, idx), perm in zip(targets, perms)]

        def back(num: Numeric | None, idx: Array, perm: Array | None) -> Numeric | None:
            if num is None or perm is None:
                return num
            inv = np.empty_like(perm)
            inv[perm] = np.arange(len(perm))
            return Numeric(idx, num.values[inv], num.kinks[inv], None if num.errors is None else num.errors[inv])

        try:
            done = self.run_chunks(chunked, [p.chunk for p in plans], [p.row_bytes for p in plans],
                                   [p.run for p in plans], order)
        except Interrupted as stop:
            stop.finished = [back(num, idx, perm) for num, (_, idx), perm in zip(stop.finished, targets, perms)]
            raise
        return [back(num, idx, perm) for num, (_, idx), perm in zip(done, targets, perms)]  # type: ignore[misc]

    def run_chunks(self, targets: list[tuple[TensorRef, Array]], chunks: list[int], row_bytes: list[int],
                   runs: list[Callable[[Array], tuple[Array, ...]]], order: list[int] | None = None
                   ) -> list[Numeric]:
        """Every target's entries, ``chunks[t]`` a chunk (``row_bytes[t]`` bytes of work an
        entry; ``runs[t]`` maps a chunk's flat indices to (values, kinks[, errors])), target by
        target in ``order``, here or on the workers — the same numbers either way, one BLAS
        thread each.  Progress is reported in bytes of work; Ctrl-C raises ``Interrupted`` with
        the targets finished so far.  The network scope's engine and the layer scope's links
        share it."""
        order = list(range(len(targets))) if order is None else order
        jobs = [(ti, lo, min(lo + chunks[ti], len(targets[ti][1])))
                for ti in order for lo in range(0, len(targets[ti][1]), chunks[ti])]
        work = sum(len(idx) * b for (_, idx), b in zip(targets, row_bytes))
        self.work_planned += work
        results = [(np.empty(len(idx)), np.zeros(len(idx), dtype=bool), np.full(len(idx), np.nan))
                   for _, idx in targets]
        left = [sum(1 for j in jobs if j[0] == ti) for ti in range(len(targets))]  # chunks still to come
        try:
            with one_thread():  # same numbers with 1 worker or many
                for (ti, lo, hi), out in workers.run_jobs(jobs, runs, [idx for _, idx in targets], work,
                                                          self.workers, weights=row_bytes):
                    results[ti][0][lo:hi], results[ti][1][lo:hi] = out[0], out[1]
                    if len(out) > 2:  # Ridders: an error estimate per entry
                        results[ti][2][lo:hi] = out[2]
                    left[ti] -= 1
                    self.work_done += (hi - lo) * row_bytes[ti]
                    self.progress(self.work_done, self.work_planned)
        except KeyboardInterrupt:
            finished = [Numeric(idx, v, k, self._errors(e)) if n == 0 else None
                        for (_, idx), (v, k, e), n in zip(targets, results, left)]
            raise Interrupted(finished) from None
        return [Numeric(idx, v, k, self._errors(e)) for (_, idx), (v, k, e) in zip(targets, results)]

    def _errors(self, e: Array) -> Array | None:
        return e if self.method.tableau is not None else None

    # ------------------------------------------------------------------ along directions

    def directional(self, ref: TensorRef, V: Array) -> tuple[Array, Array]:
        """``v·∇C`` along each row v of V (of shape (K, size)), by the method's formula along
        v: ``(C(θ + h·v) − C(θ − h·v)) / 2h`` for central differences — 2 forward passes a
        direction (of the layers from the tensor's on), as many directions a batch as the
        memory budget holds.  Returns (K,) derivatives and whether each direction's stencil
        crossed a kink.

        A layer offering ``"piece"`` (relu, leaky relu, max and global max pooling) is held on
        the unperturbed point's piece (``_losses``'s ``on_piece``): a direction moves every
        unit at once, and one of the 10⁵ relu units within h of its kink spoiled the whole
        direction; on the piece the quotient tends to the piece's derivative, which is ∇C·v
        whenever no unit sits exactly on a kink — the analytic backward's own assumption (its
        masks are the same piece's).  A plugin's kinks still count as crossed."""
        if len(ref.path) > 1:  # inside a block
            from .inner import directional

            with one_thread():
                return directional(self, ref, V)
        start = ref.index if ref.is_delta else ref.index + 1
        per_direction = planning.entry_bytes(self, start, len(self.method.offsets) * self.n)
        chunk = max(1, self.budget // per_direction)
        values, kinks = [], []
        with one_thread():
            for lo in range(0, len(V), chunk):
                v, k = self._directional(ref, V[lo:lo + chunk], start)[:2]
                values.append(v)
                kinks.append(k)
        return np.concatenate(values), np.concatenate(kinks)

    def _directional(self, ref: TensorRef, V: Array, start: int) -> tuple[Array, ...]:
        m, k = len(self.method.offsets), len(V)
        losses, crossed, samples = self._losses(self._moved(ref, V, start), start, np.tile(np.arange(self.n), m * k),
                                                copies=True, on_piece=True)
        return self._combine(losses, np.broadcast_to(self._offsets(), (m, k)), samples, crossed)

    def _moved(self, ref: TensorRef, V: Array, start: int) -> Array:
        """The input of layer ``start`` for each step (M) and direction (K) of ``ref`` moved
        along V: M·K whole copies of the batch, of shape (M·K·N, …)."""
        m, k = len(self.method.offsets), len(V)
        offs = self._offsets()  # (M, 1)
        if ref.is_delta:  # whole copies of the batch with the input of layer ``start`` moved
            base = self.inputs[start]
            moved = base.reshape(1, 1, -1) + (offs[:, :, None] * V[None]).reshape(m, k, -1)
            return moved.astype(np.result_type(base.dtype, self.work)).reshape((-1,) + base.shape[1:])
        layer = self.net.layers[ref.index]
        original = layer.params[ref.name]
        a_prev = self.inputs[ref.index]  # complex too when the step is: ``z += b`` runs in place
        a_prev = a_prev.astype(np.result_type(a_prev, self.work), copy=False)
        # a built-in layer linear in its input is affine in its parameters (``adjoint.is_linear``):
        # one pass a direction, the other steps' outputs z₀ + (o / o₀)·(z(θ + o₀h·v) − z₀)
        affine = pure(layer) and is_linear(layer) and m > 1
        outs: list[list[Array]] = [[] for _ in range(m)]
        try:
            for ki in range(k):
                for mi in range(1 if affine else m):
                    layer.params[ref.name] = (original + offs[mi, 0] * V[ki].reshape(original.shape)).astype(
                        np.result_type(original, self.work), copy=False)
                    outs[mi].append(layer.forward(a_prev)[0])
                if affine:
                    z0 = self.inputs[ref.index + 1]
                    change = outs[0][ki] - z0
                    for mi in range(1, m):
                        outs[mi].append(z0 + float(offs[mi, 0] / offs[0, 0]) * change)  # a float: float32 stays
        finally:
            layer.params[ref.name] = original
        return np.concatenate([out for per_step in outs for out in per_step])
