"""Finite differences of the scalar loss C, entry by entry, many entries per pass.

Six things make a full check cheap without changing what is computed:

* **Prefix reuse.** A parameter of layer l only changes layers l…, so the input of layer
  l (``a^{l-1}``) is computed once and reused.
* **Batched perturbations.** The perturbed copies of the batch, one per (entry, step),
  are stacked into a single batch for the layers after l, in chunks sized to a memory
  budget; the losses are taken apart per copy again.  Perturbing an input entry x[n, …]
  reaches sample n only, so only that sample is run.
* **Linear layers.** For conv and dense, z is linear in W and b, so the perturbed
  ``z(θ + t·e_k) = z(θ) + t·∂z/∂θ_k`` is written down directly (``forward_perturbed``)
  instead of re-running the layer; each run spot-checks that against a real forward
  pass with the parameter changed, and falls back to real forward passes if they differ.
* **One channel.** Such a perturbation moves one output channel only; activations and
  pooling see just that channel, and the next linear layer adds its response to the
  change to its unperturbed output (``_sparse_forward``, ``forward_input_delta``).
* **Windows.** An input entry reaches only a window of each map through conv, pooling and
  activations; only the window is carried until a layer mixes the whole map (``_windowed``).
* **Worker processes.** A large check's chunks are shared among forked processes, with
  one BLAS thread each, so the numbers are the same bit for bit as in one process.

The quotient uses the step the dtype actually took, and differences are taken per sample
before the batch mean, so a sample the perturbation does not reach adds an exact zero.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import _malloc, pool
from . import conv as C
from .network import Network

Array = np.ndarray
# Bytes of perturbed activations above which a check is shared among worker processes
# (below it, forking costs more than it saves).
PARALLEL_WORK = 256 << 20


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``numeric``: ``finished[t]`` is target t's result if all of it was
    done, else None."""

    def __init__(self, finished: list) -> None:
        super().__init__("interrupted")
        self.finished = finished


@dataclass
class Plan:
    """How to difference one tensor: entries per chunk, bytes of work per entry, and the
    function that turns a chunk of flat indices into (numeric values, kink crossings)."""

    chunk: int
    row_bytes: int
    run: Callable[[Array], tuple[Array, Array]]

# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A difference formula: the steps (multiples of h, complex for the complex step) at
    which C is evaluated, how the losses there combine into ∂C/∂θ, its error order, and
    its default step per dtype (the one that balances truncation against rounding)."""

    name: str
    offsets: tuple[complex, ...]
    power: int  # the error falls as h^power: what halving h should do to it
    # (per-sample losses (M, K, S), steps taken (M, K), losses at θ (K, S)) -> N·∂C/∂θ (K,)
    combine: Callable[[Array, Array, Array], Array]
    order: str
    doc: str
    default_eps: dict[str, float]
    # on norm rel; well above each formula's error with its default step, far below a bug's
    default_tol: dict[str, float]

    @property
    def is_complex(self) -> bool:
        return any(isinstance(o, complex) for o in self.offsets)


def _central(c: Array, s: Array) -> Array:
    return (c[0] - c[1]).sum(axis=-1) / (s[0] - s[1])


METHODS: dict[str, Method] = {
    "central": Method("central", (1.0, -1.0), 2, lambda c, s, c0: _central(c, s), "O(h²)",
                      "(C(θ+h) − C(θ−h)) / 2h; best h ≈ ε^(1/3)", {"float64": 1e-6, "float32": 1e-2},
                      {"float64": 1e-6, "float32": 1e-2}),
    "forward": Method("forward", (1.0,), 1, lambda c, s, c0: (c[0] - c0).sum(axis=-1) / s[0], "O(h)",
                      "(C(θ+h) − C(θ)) / h; best h ≈ ε^(1/2)", {"float64": 1e-8, "float32": 1e-3},
                      {"float64": 1e-5, "float32": 5e-2}),
    "richardson": Method("richardson", (1.0, -1.0, 0.5, -0.5), 4,
                         lambda c, s, c0: (4.0 * _central(c[2:], s[2:]) - _central(c[:2], s[:2])) / 3.0,
                         "O(h⁴)", "(4·D(h/2) − D(h)) / 3 with D the central difference; best h ≈ ε^(1/5)",
                         {"float64": 5e-3, "float32": 5e-2}, {"float64": 1e-6, "float32": 1e-2}),
    "complex": Method("complex", (1j,), 2, lambda c, s, c0: c[0].imag.sum(axis=-1) / s[0].imag,
                      "O(h²), no cancellation",
                      "Im C(θ + ih) / h: no difference of nearly equal numbers, so h can be tiny; "
                      "the forward pass runs in complex arithmetic", {"float64": 1e-20, "float32": 1e-20},
                      {"float64": 1e-9, "float32": 1e-2}),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def select(rng: np.random.Generator, size: int, samples: int | None) -> Array:
    """Flat indices to check: all, or ``samples`` distinct ones drawn at random, sorted."""
    if samples is None or samples >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=samples, replace=False))


# --------------------------------------------------------------------------- the engine


@dataclass
class Numeric:
    """Numeric ∂C/∂θ at the checked flat indices, and which stencils crossed a kink."""

    indices: Array
    values: Array
    kinks: Array


def _kink_state(layer: Any, cache: tuple) -> Array | None:
    fn = getattr(layer, "kink_state", None)
    return fn(cache) if fn is not None else None


def _suffix_row_bytes(net: Network, itemsize: int) -> list[int]:
    """``rows[l]``: bytes one sample row takes through ``layers[l:]`` (activations, and the
    im2col copies that conv and pool layers make: their receptive fields, unrolled), for
    every l in one pass from the end — planning stays linear in depth."""
    rows = [0] * (len(net.layers) + 1)
    for l in range(len(net.layers) - 1, -1, -1):
        spec, layer = net.specs[l], net.layers[l]
        out = math.prod(layer.out_shape)
        cols = int(spec.in_shape[0]) * math.prod(getattr(layer, "k", (1, 1))) * math.prod(layer.out_shape[1:]) \
            if spec.kind in ("conv", "pool") else 0
        rows[l] = rows[l + 1] + 3 * out + cols
    return [max(r, 1) * itemsize for r in rows]


class FiniteDifferences:
    """Numeric gradients of one problem ``(net, x, y)`` with step h and a ``Method``.

    ``progress(done, planned)`` is called after each chunk with the work finished and the
    work planned so far, in bytes of perturbed activations (what a chunk's time follows:
    an entry of the input δ costs far more than one of the last bias).
    ``workers`` processes share the chunks of a large check (default: one per core, at
    most 2); ``memory_budget`` bounds one chunk's perturbed batch and its activations.
    Every chunk is computed the same way wherever it runs, with one BLAS thread, so the
    numbers are the same bit for bit whatever the number of workers.
    """

    def __init__(self, net: Network, x: Array, y: Array, eps: float, method: str = "central",
                 memory_budget: int = 16 << 20, progress: Callable[[int, int], None] | None = None,
                 workers: int | None = None) -> None:
        self.net, self.x, self.y, self.eps = net, x, y, eps
        self.method = get_method(method)
        # the dtype perturbed values live in: complex for the complex step
        self.work = np.result_type(x.dtype, np.complex64) if self.method.is_complex else x.dtype
        self.budget = memory_budget
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        self.progress = progress or (lambda done, planned: None)
        self.work_done = self.work_planned = 0
        self.n = x.shape[0]
        # the unperturbed pass: every layer's input and output, caches, kink states, ℓ_n(θ)
        self.inputs, self.caches = [x], []
        a = x
        for layer in net.layers:
            a, cache = layer.forward(a)
            self.inputs.append(a)
            self.caches.append(cache)
        self.c0 = net.loss.per_sample(a, y)  # (N,)
        self.base_kinks = [_kink_state(l, c) for l, c in zip(net.layers, self.caches)]
        self.fast_fallbacks: list[str] = []  # tensors whose forward_perturbed failed its spot check
        self.row_bytes = _suffix_row_bytes(net, x.dtype.itemsize)  # per start layer, once

    # ------------------------------------------------------------------ shared pieces

    def _losses(self, a: Array, start: int, samples: Array) -> tuple[Array, Array]:
        """ℓ of every row of a (the input of layer ``start``), row r being a perturbed copy
        of sample ``samples[r]``; and whether any unit of the row crossed a kink."""
        crossed = np.zeros(a.shape[0], dtype=bool)
        for layer, base in zip(self.net.layers[start:], self.base_kinks[start:]):
            a, cache = layer.forward(a)
            if base is not None:
                state = _kink_state(layer, cache)
                crossed |= np.any((state != base[samples]).reshape(a.shape[0], -1), axis=1)
        return self.net.loss.per_sample(a, self.y[samples]), crossed

    def _combine(self, losses: Array, steps: Array, samples: Array, crossed: Array) -> tuple[Array, Array]:
        """losses/crossed of shape (M·K·S,) for M steps, K entries, S samples each -> (K,)."""
        m, k = steps.shape
        c = losses.astype(np.result_type(losses, np.float64)).reshape(m, k, -1)
        c0 = self.c0.astype(np.float64)[samples].reshape(m, k, -1)[0]
        values = self.method.combine(c, steps, c0) / self.n
        return values, crossed.reshape(m, k, -1).any(axis=(0, 2))

    def _offsets(self) -> Array:
        return np.asarray(self.method.offsets)[:, None] * self.eps  # (M, 1), complex for the complex step

    def _taken(self, new: Array, theta: Array) -> Array:
        """The steps the dtype actually took: ``(θ + o·h) − θ`` in float64 (complex128)."""
        wide = np.result_type(new, np.float64)
        return new.astype(wide) - theta.astype(wide)[None, :]

    # ------------------------------------------------------------------ the input

    def input(self, indices: Array) -> Numeric:
        """∂C/∂x at flat indices of x."""
        return self.numeric([("input", indices)])[0]

    def param(self, layer_index: int, name: str, indices: Array) -> Numeric:
        """∂C/∂θ for entries of ``layers[layer_index].params[name]``."""
        return self.numeric([((layer_index, name), indices)])[0]

    def numeric(self, targets: list[tuple[Any, Array]]) -> list[Numeric]:
        """Numeric gradients of several tensors: each target is ``("input", indices)``,
        ``((layer_index, name), indices)`` or, for δ at the input of a layer,
        ``((layer_index, "input"), indices)``.  Their chunks all go to the workers together."""
        plans = [self._plan_input() if t == "input" else self._plan_input(t[0]) if t[1] == "input"
                 else self._plan_param(*t) for t, _ in targets]
        # the cheapest tensors first: a check cut short (Ctrl-C) has the most rows to show
        order = sorted(range(len(targets)), key=lambda t: len(targets[t][1]) * plans[t].row_bytes)
        jobs = [(ti, lo, min(lo + plans[ti].chunk, len(targets[ti][1])))
                for ti in order for lo in range(0, len(targets[ti][1]), plans[ti].chunk)]
        work = sum(len(idx) * plan.row_bytes for (_, idx), plan in zip(targets, plans))
        self.work_planned += work
        results = [(np.empty(len(idx)), np.zeros(len(idx), dtype=bool)) for _, idx in targets]
        left = [sum(1 for j in jobs if j[0] == ti) for ti in range(len(targets))]  # chunks still to come
        try:
            with threadpool_limits(1, user_api="blas"):  # same numbers with 1 worker or many
                for (ti, lo, hi), (v, k) in self._run_jobs(jobs, [p.run for p in plans], targets, work):
                    results[ti][0][lo:hi], results[ti][1][lo:hi] = v, k
                    left[ti] -= 1
                    self.work_done += (hi - lo) * plans[ti].row_bytes
                    self.progress(self.work_done, self.work_planned)
        except KeyboardInterrupt:
            finished = [Numeric(idx, v, k) if n == 0 else None for (_, idx), (v, k), n in zip(targets, results, left)]
            raise Interrupted(finished) from None
        return [Numeric(idx, v, k) for (_, idx), (v, k) in zip(targets, results)]

    def directional(self, target: Any, V: Array) -> tuple[Array, Array]:
        """``v·∇C`` along each row v of V (of shape (K, size)), by the method's formula along
        v: ``(C(θ + h·v) − C(θ − h·v)) / 2h`` for central differences — 2 forward passes a
        direction (of the layers from the tensor's on), all K directions in one batch.
        Returns (K,) derivatives and whether each direction's stencil crossed a kink."""
        m, k = len(self.method.offsets), len(V)
        offs = self._offsets()  # (M, 1)
        samples = np.tile(np.arange(self.n), m * k)
        if target == "input":
            moved = self.x.reshape(1, 1, -1) + (offs[:, :, None] * V[None]).reshape(m, k, -1)
            a = moved.astype(self.work).reshape((-1,) + self.x.shape[1:])
            start = 0
        else:
            layer_index, name = target
            layer = self.net.layers[layer_index]
            original = layer.params[name]
            outs = []
            try:
                for mi in range(m):
                    for ki in range(k):
                        layer.params[name] = (original + offs[mi, 0] * V[ki].reshape(original.shape)).astype(
                            np.result_type(original, self.work))
                        outs.append(layer.forward(self.inputs[layer_index])[0])
            finally:
                layer.params[name] = original
            a = np.concatenate(outs)
            start = layer_index + 1
        with threadpool_limits(1, user_api="blas"):
            losses, crossed = self._losses(a, start, samples)
        steps = np.broadcast_to(offs, (m, k))
        return self._combine(losses, steps, samples, crossed)

    def _run_jobs(self, jobs: list, fns: list, targets: list, work: int) -> Iterator:
        """Yield ``(job, result)`` for every job: here, or — for a large check — on up to
        ``workers`` forked processes that inherit the whole problem (``pool.run_jobs``: a
        dead worker raises ``pool.WorkerDied``, Ctrl-C kills the workers at once)."""
        def one(job: tuple[int, int, int]) -> tuple[Array, Array]:
            ti, lo, hi = job
            return fns[ti](targets[ti][1][lo:hi])

        workers = self.workers if work > PARALLEL_WORK else 1
        if workers > 1:
            _malloc.trim()  # fewer pages to map into each worker
        yield from pool.run_jobs(one, jobs, workers)

    def _plan_input(self, layer_index: int = 0) -> Plan:
        """δ at the input of layer ``layer_index`` (for 0, ∂C/∂x): its input a is perturbed
        with the layers from it on run as they are.  Entry k of a belongs to sample
        ``k // size``: only that sample is run.  While the layers are local (conv, pooling,
        activations) the change stays in a small window, and only the window is carried
        (``_windowed``: a linear layer adds its response to the change, pooling re-pools
        the window's region); from the first layer that mixes everything on, whole rows."""
        a_in = self.inputs[layer_index]
        a_flat = a_in.reshape(self.n, -1)
        per = a_flat.shape[1]
        m = len(self.method.offsets)
        end = self._local_end(layer_index)
        if end > layer_index and not self._spot_check_windows(layer_index, end):
            self.fast_fallbacks.append("input" if layer_index == 0 else f"layers[{layer_index}].input")
            end = layer_index

        def run(idx: Array) -> tuple[Array, Array]:
            n_of, pos = np.divmod(idx, per)
            samples, positions = np.tile(n_of, m), np.tile(pos, m)
            theta = a_flat[n_of, pos]
            new = (theta[None, :] + self._offsets()).astype(np.result_type(a_in, self.work))  # (M, K)
            steps = self._taken(new, theta)
            a, crossed = self._windowed(layer_index, end, samples, positions, new.ravel())
            losses, crossed_after = self._losses(a, end, samples)
            return self._combine(losses, steps, samples, crossed | crossed_after)

        return self._plan(end, m, run)

    def _local_end(self, start: int) -> int:
        """Where carrying a window stops paying: the first layer from ``start`` on that mixes a
        whole map (not conv, pooling or an activation on a (c, h, w) input), or whose output
        window would cover more than half its map (recomputing it whole is then cheaper)."""
        end, h, w = start, 1, 1
        zero = np.zeros(1, dtype=int)
        for layer in self.net.layers[start:]:
            if self.inputs[end].ndim != 4 or not (hasattr(layer, "window_delta") or hasattr(layer, "region")
                                                  or getattr(layer, "elementwise", False)):
                break
            if not getattr(layer, "elementwise", False):
                _, _, h, w = layer.window(zero, zero, h, w)
                if h * w > 0.5 * np.prod(layer.out_shape[1:]):
                    break
            end += 1
        return end

    def _windowed(self, start: int, end: int, samples: Array, positions: Array,
                  values: Array) -> tuple[Array, Array]:
        """Rows g = sample ``samples[g]`` of the input of layer ``start`` with entry
        ``positions[g]`` set to ``values[g]``, carried through layers start … end−1 as a
        window that holds every entry the change can reach; returns whole rows of the input
        of layer ``end`` and whether any unit crossed a kink on the way."""
        g = len(samples)
        base_in = self.inputs[start]
        crossed = np.zeros(g, dtype=bool)
        dtype = np.result_type(base_in, values)
        if end == start:
            a = base_in.reshape(self.n, -1)[samples].astype(dtype)
            a[np.arange(g), positions] = values
            return a.reshape((g,) + base_in.shape[1:]), crossed
        ch, y0, x0 = np.unravel_index(positions, base_in.shape[1:])
        win = base_in[samples, :, y0, x0][:, :, None, None].astype(dtype)  # (G, c, 1, 1): the moved pixel
        win[np.arange(g), ch, 0, 0] = values
        h = w = 1
        for l in range(start, end):
            layer, a_prev, base = self.net.layers[l], self.inputs[l], self.base_kinks[l]
            if getattr(layer, "elementwise", False):
                out, cache = layer.forward(win)
                i0, j0, wh, ww = y0, x0, h, w
            elif hasattr(layer, "window_delta"):  # linear: z moves by K ⋆ (the change)
                i0, j0, wh, ww = layer.window(y0, x0, h, w)
                delta = win - C.crop_at(a_prev, y0, x0, h, w, samples)
                out = C.crop_at(self.inputs[l + 1], i0, j0, wh, ww, samples) + \
                    layer.window_delta(delta, y0, x0, i0, j0, wh, ww)
                cache = None
            else:  # pooling: re-pool the region the window's outputs read
                i0, j0, wh, ww = layer.window(y0, x0, h, w)
                ry, rx, rh, rw = layer.region(i0, j0, wh, ww)
                region = C.crop_at(a_prev, ry, rx, rh, rw, samples).astype(dtype)
                C.paste_at(region, win, y0 - ry, x0 - rx)
                out, cache = layer.forward(region)
            if base is not None and cache is not None:
                moved = _kink_state(layer, cache) != C.crop_at(base, i0, j0, wh, ww, samples)
                crossed |= np.any(moved.reshape(g, -1), axis=1)
            win, y0, x0, h, w = out, i0, j0, wh, ww
        a = self.inputs[end][samples].astype(np.result_type(self.inputs[end], win))
        C.paste_at(a, win, y0, x0)
        return a, crossed

    def _plan_param(self, layer_index: int, name: str) -> Plan:
        """The layer's perturbed outputs come from ``forward_perturbed`` where it has one
        (and it passes the spot check), else from a real forward pass per perturbation;
        the layers after it run on all of a chunk's perturbed copies of the batch at once."""
        layer = self.net.layers[layer_index]
        P = layer.params[name]
        if not P.flags.c_contiguous:
            raise ValueError(f"layers[{layer_index}].params[{name!r}] must be C-contiguous to be perturbed")
        m = len(self.method.offsets)
        fast = getattr(layer, "forward_perturbed", None)
        if fast is not None and not self._spot_check(layer_index, name):
            self.fast_fallbacks.append(f"layers[{layer_index}].{name}")
            fast = None

        def run(idx: Array) -> tuple[Array, Array]:
            samples = np.tile(np.arange(self.n), m * len(idx))
            if fast is not None:
                steps = np.broadcast_to(self._offsets(), (m, len(idx))).astype(np.result_type(P, self.work))
                channel, values = fast(self.inputs[layer_index + 1], self.caches[layer_index], name,
                                       np.tile(idx, m), steps.ravel())
                steps = steps.astype(np.result_type(steps, np.float64))  # exactly the steps added
                a, start, crossed = self._sparse_forward(layer_index + 1, samples, np.repeat(channel, self.n),
                                                         values.reshape((len(samples),) + values.shape[2:]))
            else:
                out, steps, own = self._forward_each(layer_index, name, idx)
                a, start, crossed = out.reshape((-1,) + out.shape[2:]), layer_index + 1, np.repeat(own, self.n)
            losses, crossed_after = self._losses(a, start, samples)
            return self._combine(losses, steps, samples, crossed | crossed_after)

        return self._plan(layer_index + 1, m * self.n, run)

    def _sparse_forward(self, start: int, samples: Array, channel: Array, values: Array) -> tuple[Array, int, Array]:
        """Carry rows that differ from the unperturbed pass in one channel only.

        Row r is sample ``samples[r]`` of the input of layer ``start`` with channel
        ``channel[r]`` replaced by ``values[r]`` (a map (h, w), or one unit of a flat input).
        Channel-wise layers (activations, pooling) only need that channel; a layer linear in
        its input (conv, dense) adds the response to the change to its unperturbed output
        (``forward_input_delta``).  Returns whole rows of the input of some layer l ≥ start,
        l, and whether a unit crossed a kink on the way.
        """
        rows = np.arange(len(samples))
        crossed = np.zeros(len(samples), dtype=bool)
        units = None if values.ndim > 1 else channel[:, None]  # flat input: the units that moved
        if units is not None:
            values = values[:, None]
        for l in range(start, len(self.net.layers)):
            layer, base_in, base = self.net.layers[l], self.inputs[l], self.base_kinks[l]
            flat = base_in.ndim == 2
            if flat and getattr(layer, "elementwise", False) or not flat and getattr(layer, "channelwise", False):
                out, cache = layer.forward(values if flat else values[:, None])
                values = out if flat else out[:, 0]
                if base is not None:
                    state = _kink_state(layer, cache)
                    was = base[samples[:, None], units] if flat else base[samples, channel]
                    crossed |= np.any((state if flat else state[:, 0]).reshape(len(rows), -1)
                                      != was.reshape(len(rows), -1), axis=1)
            elif not flat and getattr(layer, "kind", None) == "flatten":
                hw = values.shape[1] * values.shape[2]
                units = channel[:, None] * hw + np.arange(hw)
                values = values.reshape(len(rows), hw)
            elif hasattr(layer, "forward_input_delta"):
                out = self.inputs[l + 1][samples].astype(np.result_type(values, base_in))
                if flat and units.shape[1] == 1:  # one unit a row: a gather, no grouping
                    out += layer.forward_input_delta(values - base_in[samples[:, None], units], units)
                    return out, l + 1, crossed
                for c in np.unique(channel):  # rows moved in the same channel share the product
                    sel = np.flatnonzero(channel == c)
                    if flat:
                        delta = values[sel] - base_in[samples[sel][:, None], units[sel]]
                        out[sel] += layer.forward_input_delta(delta, units[sel[0]])
                    else:
                        out[sel] += layer.forward_input_delta(values[sel] - base_in[samples[sel], c], int(c))
                return out, l + 1, crossed
            else:
                break
        else:
            l = len(self.net.layers)
        # whole rows: the unperturbed ones with the moved channel
        a = self.inputs[l][samples].astype(np.result_type(values, self.inputs[l]))
        if units is not None:
            a.reshape(len(rows), -1)[rows[:, None], units] = values
        else:
            a[rows, channel] = values
        return a, l, crossed

    def _plan(self, start: int, rows_per_entry: int, run: Callable) -> Plan:
        # a row also holds the input of layer ``start`` (the perturbed layer's output) a few
        # times over, and its indices: near the end that is most of it (the last dense W's
        # rows would otherwise go in one 100 MB chunk against a 16 MB budget)
        held = 3 * int(np.prod(self.inputs[start].shape[1:])) * self.x.dtype.itemsize + 64
        row_bytes = (self.row_bytes[start] + held) * rows_per_entry
        return Plan(max(1, self.budget // row_bytes), row_bytes, run)

    def _forward_each(self, layer_index: int, name: str, idx: Array) -> tuple[Array, Array, Array]:
        """Perturb, run the layer, restore: outputs of shape (M·K, N, …), the steps taken
        (M, K), and whether the layer's own kink state moved (M·K,).  For the complex step
        the layer runs on a complex copy of the parameter, put in ``params`` meanwhile."""
        layer = self.net.layers[layer_index]
        original = layer.params[name]
        P = original.astype(np.result_type(original, self.work))
        flat = P.reshape(-1)  # a view: writing it perturbs the layer
        a_prev, base = self.inputs[layer_index], self.base_kinks[layer_index]
        theta = flat[idx].copy()
        new = (theta[None, :] + self._offsets()).astype(P.dtype)
        steps = self._taken(new, theta)
        outs, own = [], np.zeros(new.size, dtype=bool)
        layer.params[name] = P
        try:
            for g, (mi, k) in enumerate(np.ndindex(*new.shape)):
                flat[idx[k]] = new[mi, k]
                try:
                    out, cache = layer.forward(a_prev)
                finally:
                    flat[idx[k]] = theta[k]
                outs.append(out)
                if base is not None:
                    own[g] = np.any(_kink_state(layer, cache) != base)
        finally:
            layer.params[name] = original
        return np.stack(outs), steps, own

    def _agrees(self, fast: Array, real: Array, z0: Array) -> bool:
        """Equal to rounding: within √ε of the magnitudes involved."""
        scale = np.max(np.abs(real)) + np.max(np.abs(z0)) + 1.0
        return bool(np.all(np.abs(fast - real) <= np.sqrt(np.finfo(real.dtype).eps) * scale))

    def _spot_check_windows(self, start: int, end: int) -> bool:
        """The windowed pass against whole forward passes of the perturbed samples, at the
        first, a middle and the last entry of the input of layer ``start``, step 0.5."""
        a_flat = self.inputs[start].reshape(self.n, -1)
        samples = np.array([0, self.n // 2, self.n - 1])
        positions = np.array([0, a_flat.shape[1] // 2, a_flat.shape[1] - 1])
        values = a_flat[samples, positions] + np.asarray(0.5, dtype=a_flat.dtype)
        windowed, _ = self._windowed(start, end, samples, positions, values)
        real, _ = self._windowed(start, start, samples, positions, values)
        for layer in self.net.layers[start:end]:
            real, _ = layer.forward(real)
        return self._agrees(windowed, real, self.inputs[end])

    def _spot_check(self, layer_index: int, name: str) -> bool:
        """Does ``forward_perturbed`` agree with a real forward pass with the parameter
        changed?  Checked on the first and last entry with a step of 0.5."""
        layer = self.net.layers[layer_index]
        flat = layer.params[name].reshape(-1)
        idx = np.unique([0, flat.size - 1])
        steps = np.full(len(idx), 0.5, dtype=flat.dtype)
        z0 = self.inputs[layer_index + 1]
        channel, values = layer.forward_perturbed(z0, self.caches[layer_index], name, idx, steps)
        fast = np.broadcast_to(z0, (len(idx),) + z0.shape).copy()
        fast[np.arange(len(idx)), :, channel] = values
        for g, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + steps[g]
            try:
                real, _ = layer.forward(self.inputs[layer_index])
            finally:
                flat[i] = old
            if not self._agrees(fast[g], real, z0):
                return False
        return True
