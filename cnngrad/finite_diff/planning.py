"""Planning one tensor's differences: which rows a chunk of entries becomes, and how many
entries fit a chunk of the memory budget.

* A parameter of layer l only changes layers l…, so the input of layer l is computed once
  and reused (prefix reuse).  The layer's perturbed outputs come from its
  ``forward_perturbed`` shortcut where it offers one (and it passes its spot check), else
  from a real forward pass per perturbation; the layers after it run on every perturbed
  copy of the batch of a chunk at once (``FiniteDifferences._losses``).
* δ at the input of layer l (∂C/∂x for l = 0): entry k belongs to sample ``k // size``;
  while the layers are per-sample only that sample is run, as a window while they are
  local (``propagate.windowed``), as whole copies of the batch from the first layer that
  does not declare ``per_sample`` on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..network import Network
from ..refs import TensorRef
from . import propagate
from .shortcuts import kink_state

if TYPE_CHECKING:
    from .engine import FiniteDifferences

Array = np.ndarray


@dataclass
class Plan:
    """How to difference one tensor: entries per chunk, bytes of work per entry, and the
    function that turns a chunk of flat indices into (numeric values, kink crossings);
    ``order``: the order the entries are best chunked in (a permutation of the flat indices
    given), or None for the order given."""

    chunk: int
    row_bytes: int
    run: Callable[[Array], tuple[Array, Array]]
    order: Callable[[Array], Array] | None = None


def row_bytes(net: Network, start: int, itemsize: int) -> int:
    """Bytes one sample row takes through ``layers[start:]``: activations, and the
    im2col copies that conv and pool layers make (their receptive fields, unrolled)."""
    return max(_elements(net.specs[start:], net.layers[start:]), 1) * itemsize


def _elements(specs: list, layers: list) -> int:
    """Entries one sample row takes through these layers (a block's: all of its paths')."""
    total = 0
    for spec, layer in zip(specs, layers):
        out = math.prod(layer.out_shape)  # math.prod: np.prod of a tuple costs ~3 µs, 60 of them a LeNet check
        taps = math.prod(getattr(layer, "k", (1, 1)))
        cols = int(spec.in_shape[0]) * taps * math.prod(layer.out_shape[1:]) if spec.kind in ("conv", "pool") else 0
        if spec.kind == "block":
            cols = sum(_elements(path, inner) for path, inner in zip(spec.paths, layer.paths))
        total += 3 * out + cols
    return total


def suffix_row_bytes(net: Network, itemsize: int) -> list[int]:
    """``rows[l]``: bytes one sample row takes through ``layers[l:]`` (activations, and the
    im2col copies that conv and pool layers make: their receptive fields, unrolled), for
    every l in one pass from the end — planning stays linear in depth
    (``resources.suffix_row_bytes`` is the same from the config's shapes)."""
    rows = [0] * (len(net.layers) + 1)
    for l in range(len(net.layers) - 1, -1, -1):
        spec, layer = net.specs[l], net.layers[l]
        rows[l] = rows[l + 1] + _elements([spec], [layer])  # a block counts all of its paths
    return [max(r, 1) * itemsize for r in rows]


def suffix_peak_bytes(net: Network, itemsize: int) -> list[int]:
    """``peaks[l]``: the most bytes one sample row takes in any one layer of ``layers[l:]``
    (its output a few times over and its im2col copy) — what a row holds at any moment,
    the rows going through the layers one layer at a time (``FiniteDifferences._losses``)."""
    peaks = [1] * (len(net.layers) + 1)
    for l in range(len(net.layers) - 1, -1, -1):
        peaks[l] = max(peaks[l + 1], _elements([net.specs[l]], [net.layers[l]]))
    return [p * itemsize for p in peaks]


def held_bytes(fd: FiniteDifferences, start: int) -> int:
    """Bytes a row of a chunk holds for the whole chunk: the input of layer ``start`` (the
    perturbed layer's output) a few times over, with its indices."""
    return 3 * math.prod(fd.inputs[start].shape[1:]) * fd.x.dtype.itemsize + 64


def chunk_entries(fd: FiniteDifferences, rows_per_entry: int, row_bytes: int) -> int:
    """Entries a chunk takes: as many as their rows' ``row_bytes`` fit the memory budget
    once a slice of rows on its way through the layers has its share (``slice_bytes``)."""
    room = fd.budget - min(fd.slice_bytes, fd.budget // 2)
    return max(1, room // max(1, rows_per_entry * row_bytes))


def window_bytes(fd: FiniteDifferences, start: int, end: int) -> int:
    """The most bytes a row carried as a window through ``layers[start:end]``
    (``propagate.windowed``) takes in one layer: the window's outputs a few times over and
    its receptive fields, unrolled."""
    most, h, w = 0, 1, 1
    zero = np.zeros(1, dtype=int)
    for l in range(start, end):
        layer = fd.net.layers[l]
        if not fd.caps[l].can("elementwise"):
            _, _, h, w = layer.window(zero, zero, h, w)
        taps = math.prod(getattr(layer, "k", (1, 1)))
        most = max(most, (3 * fd.inputs[l + 1].shape[1] + fd.inputs[l].shape[1] * taps) * h * w)
    return most * fd.x.dtype.itemsize


def sparse_bytes(fd: FiniteDifferences, start: int) -> int:
    """The most bytes a row carried in one channel from layer ``start`` on
    (``propagate.sparse_forward``) holds for its chunk: the channel, a few times over, while
    the layers are channel-wise; whole rows (a few times over) only from the layer linear in
    its input that ends the one-channel path — or none, when the loss comes first."""
    most, l = 0, start
    while l < len(fd.net.layers) and any(fd.caps[l].can(s) for s in ("elementwise", "channelwise", "reshape")):
        a = fd.inputs[l + 1]
        if a.ndim > 2 or not fd.caps[l].can("reshape"):  # flattened, the channel's units move
            most = max(most, 3 * (math.prod(a.shape[2:]) if a.ndim > 2 else a.shape[1]) * fd.x.dtype.itemsize + 64)
        l += 1
    if l < len(fd.net.layers):  # whole rows from here: of the input of l (or l + 1 after an input delta)
        most = max(most, held_bytes(fd, l + 1 if fd.caps[l].can("input_delta") else l))
    return most


def entry_bytes(fd: FiniteDifferences, start: int, rows_per_entry: int) -> int:
    """Bytes the rows of one entry (or direction) take from layer ``start`` on: each row its
    way through ``layers[start:]`` (``fd.row_bytes``), and the input of layer ``start`` — the
    perturbed layer's output — a few times over, with its indices.  Near the end that is most
    of it: without it the last dense W's rows went in one 100 MB chunk against a 16 MB budget."""
    return (fd.row_bytes[start] + held_bytes(fd, start)) * rows_per_entry


def plan(fd: FiniteDifferences, ref: TensorRef) -> Plan:
    """The plan for one tensor, named by its ref (inside a block: ``inner.plan_inner``)."""
    if not isinstance(ref, TensorRef):  # the old ("input", idx) / ((l, name), idx) targets
        raise TypeError(f"a finite-difference target is a TensorRef, got {ref!r}")
    if len(ref.path) > 1:  # inside a block
        from .inner import plan_inner

        return plan_inner(fd, ref)
    if not 0 <= ref.index < len(fd.net.layers):
        raise ValueError(f"{ref}: no such layer in a network of {len(fd.net.layers)} layers")
    if ref.is_delta:
        return plan_input(fd, ref.index)
    if ref.name not in fd.net.layers[ref.index].params:
        raise ValueError(f"{ref}: the layer has no parameter {ref.name!r}")
    return plan_param(fd, ref.index, ref.name)


def _chunked(fd: FiniteDifferences, start: int, rows_per_entry: int, run: Callable,
             carried: int | None = None) -> Plan:
    """A plan whose chunk holds ``carried`` bytes a row (default: its whole rows at layer
    ``start``); the layers from where whole rows start on see a slice of them at a time.
    Its work (progress, and whether to share it among workers) is ``entry_bytes``."""
    chunk = chunk_entries(fd, rows_per_entry, held_bytes(fd, start) if carried is None else carried)
    return Plan(chunk, entry_bytes(fd, start, rows_per_entry), run)


def plan_input(fd: FiniteDifferences, layer_index: int = 0) -> Plan:
    """δ at the input of layer ``layer_index`` (for 0, ∂C/∂x): its input a is perturbed
    with the layers from it on run as they are.  Entry k of a belongs to sample
    ``k // size``: only that sample is run while the layers are per-sample."""
    a_in = fd.inputs[layer_index]
    a_flat = a_in.reshape(fd.n, -1)
    per = a_flat.shape[1]
    m = len(fd.method.offsets)
    end = propagate.local_end(fd, layer_index)
    if end > layer_index and not propagate.spot_check_windows(fd, layer_index, end):
        where = "input" if layer_index == 0 else f"layers[{layer_index}].input"
        fd.fast_fallbacks.append(f"{where}: the windowed pass disagrees with whole forward passes; "
                                 f"whole rows were run instead")
        end = layer_index
    whole_batches = not fd.per_sample_from[layer_index]

    def run(idx: Array) -> tuple[Array, ...]:  # values, kinks (, error estimates)
        n_of, pos = np.divmod(idx, per)
        samples, positions = np.tile(n_of, m), np.tile(pos, m)
        theta = a_flat[n_of, pos]
        new = (theta[None, :] + fd._offsets()).astype(np.result_type(a_in, fd.work))  # (M, K)
        steps = fd._taken(new, theta)
        a, crossed = propagate.windowed(fd, layer_index, end, samples, positions, new.ravel())
        losses, crossed_after, samples = fd._losses(a, end, samples, copies=False)
        return fd._combine(losses, steps, samples, np.repeat(crossed, len(samples) // len(crossed)) | crossed_after)

    plan = _chunked(fd, end, m * (fd.n if whole_batches else 1), run,
                    carried=max(window_bytes(fd, layer_index, end), held_bytes(fd, end)))
    if end > layer_index and a_in.ndim == 4:
        plan.order = lambda idx: by_position(idx, a_in.shape)
        at_one = fd.n * a_in.shape[1]  # entries at one position: whole positions a chunk, each rows' window
        plan.chunk = plan.chunk // at_one * at_one or plan.chunk  # one run (conv.crop_at: 13 -> 12, 5% faster)
    return plan


def by_position(idx: Array, shape: tuple[int, ...]) -> Array:
    """The permutation of flat indices of an (n, c, h, w) tensor that takes them position by
    position (row, then column), every sample and channel of a position together: the rows
    of a chunk then sit at one or two positions, and their windows, clipped to the map
    (``window(…, tight=True)``), hold what those positions change — a corner entry of the
    deep rung reaches a quarter of a central one's window."""
    n, c, y, x = np.unravel_index(idx, shape)
    return np.lexsort((c, n, x, y))


def plan_param(fd: FiniteDifferences, layer_index: int, name: str) -> Plan:
    """The layer's perturbed outputs come from ``forward_perturbed`` where it offers one
    (and it passes the spot check), else from a real forward pass per perturbation; the
    layers after it run on all of a chunk's perturbed copies of the batch at once."""
    layer = fd.net.layers[layer_index]
    P = layer.params[name]
    m = len(fd.method.offsets)
    fast = fd.caps[layer_index].can("perturbed")
    if fast and not propagate.spot_check_perturbed(fd, layer_index, name):
        fd.fast_fallbacks.append(f"layers[{layer_index}].{name}: forward_perturbed disagrees with a real forward "
                                 f"pass; real forward passes were run instead")
        fast = False

    def run(idx: Array) -> tuple[Array, ...]:  # values, kinks (, error estimates)
        samples = np.tile(np.arange(fd.n), m * len(idx))
        if fast:
            steps = np.broadcast_to(fd._offsets(), (m, len(idx))).astype(np.result_type(P, fd.work))
            channel, values = layer.forward_perturbed(fd.inputs[layer_index + 1], fd.caches[layer_index], name,
                                                      np.tile(idx, m), steps.ravel())
            steps = steps.astype(np.result_type(steps, np.float64))  # exactly the steps added
            a, start, crossed = propagate.sparse_forward(fd, layer_index + 1, samples, np.repeat(channel, fd.n),
                                                         values.reshape((len(samples),) + values.shape[2:]))
        else:
            out, steps, own = forward_each(fd, layer_index, name, idx)
            a, start, crossed = out.reshape((-1,) + out.shape[2:]), layer_index + 1, np.repeat(own, fd.n)
        losses, crossed_after, samples = fd._losses(a, start, samples, copies=True)
        return fd._combine(losses, steps, samples, crossed | crossed_after)

    return _chunked(fd, layer_index + 1, m * fd.n, run,
                    carried=sparse_bytes(fd, layer_index + 1) if fast else None)


def forward_each(fd: FiniteDifferences, layer_index: int, name: str, idx: Array) -> tuple[Array, Array, Array]:
    """Perturb, run the layer on the whole batch, restore: outputs of shape (M·K, N, …), the
    steps taken (M, K), and whether the layer's own kink state moved (M·K,).  For the
    complex step the layer runs on a complex copy of the parameter, put in ``params``
    meanwhile."""
    layer: Any = fd.net.layers[layer_index]
    original = layer.params[name]
    P = original.astype(np.result_type(original, fd.work), order="C")  # a plugin's W may be Fortran-ordered
    flat = P.reshape(-1)  # a view: writing it perturbs the layer
    a_prev, base = fd.inputs[layer_index], fd.base_kinks[layer_index]
    theta = flat[idx].copy()
    new = (theta[None, :] + fd._offsets()).astype(P.dtype)
    steps = fd._taken(new, theta)
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
                own[g] = np.any(kink_state(layer, fd.caps[layer_index], cache) != base)
    finally:
        layer.params[name] = original
    return np.stack(outs), steps, own
