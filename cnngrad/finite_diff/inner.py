"""Differences of tensors inside a block: a parameter of an inner layer, or δ at its input.

The block is one layer of the top-level chain, so prefix reuse still holds there: the
input of block l is computed once.  Inside it, the perturbed tensor's own layer runs on
its unperturbed input (a real forward pass per perturbation, whole batch), then
``Block.resume`` carries the result through the rest of its path, the other paths keep
their unperturbed outputs, the paths merge, and the layers after the block run on every
perturbed copy of the batch (``FiniteDifferences._losses``).  No shortcut is taken inside
a block: each step is a real forward pass of the layers involved.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..blocks import Block
from ..refs import TensorRef
from .propagate import agrees
from .shortcuts import capabilities, kink_state

if TYPE_CHECKING:
    from .engine import FiniteDifferences
    from .planning import Plan

Array = np.ndarray


def _home(fd: FiniteDifferences, ref: TensorRef) -> tuple[int, Block, tuple[int, ...], Any]:
    """(top-level index, the block, the path inside it, the inner layer) of ``ref``."""
    i, sub = ref.index, ref.path[1:]
    block = fd.net.layers[i] if 0 <= i < len(fd.net.layers) else None
    if not isinstance(block, Block):
        raise ValueError(f"{ref}: layers[{i}] is not a block")
    try:
        leaf = block.leaf(sub)
    except (IndexError, TypeError):
        raise ValueError(f"{ref}: no such layer in the block at layers[{i}]") from None
    if not ref.is_delta and ref.name not in leaf.params:
        raise ValueError(f"{ref}: the layer has no parameter {ref.name!r}")
    return i, block, sub, leaf


def _after(sub: tuple[int, ...]) -> tuple[int, ...]:
    """The position right after the inner layer at ``sub`` (its output is that input)."""
    return sub[:-1] + (sub[-1] + 1,)


def _own_kinks(leaf: Any, cache: Any, base: Any) -> bool:
    """Did the leaf's own kink state (as it declares one: ``shortcuts.kink_state``) move?"""
    if base is None:
        return False
    state = kink_state(leaf, capabilities(leaf), cache)
    return state is not None and bool(np.any(np.asarray(state) != np.asarray(base)))


def perturbed_outputs(fd: FiniteDifferences, leaf: Any, name: str, a_prev: Array, base_cache: Any,
                      values: list[Array]) -> tuple[Array, Array]:
    """``leaf`` run on its input ``a_prev`` once with each parameter value in ``values`` put in
    ``params[name]`` (then restored): outputs stacked (len·N, …), and whether its own kink
    state moved, per output (len,)."""
    original = leaf.params[name]
    base = kink_state(leaf, capabilities(leaf), base_cache)
    # complex too when the values are (the complex step): ``z += b`` runs in place, into z of a_prev's dtype
    a_prev = a_prev.astype(np.result_type(a_prev, *values), copy=False)
    outs, own = [], np.zeros(len(values), dtype=bool)
    try:
        for g, value in enumerate(values):
            leaf.params[name] = value
            out, cache = leaf.forward(a_prev)
            outs.append(out)
            own[g] = _own_kinks(leaf, cache, base)
    finally:
        leaf.params[name] = original
    return np.concatenate(outs), own


def fast_outputs(leaf: Any, z0: Array, cache: Any, name: str, idx: Array, steps: Array) -> Array:
    """The leaf's outputs for one-entry changes ``steps`` of ``params[name]`` at flat ``idx``,
    written down by its ``forward_perturbed`` (z linear in the parameter): (len·N, …)."""
    channel, values = leaf.forward_perturbed(z0, cache, name, idx, steps)
    out = np.repeat(z0[None].astype(np.result_type(z0, values)), len(idx), axis=0)
    out[np.arange(len(idx)), :, channel] = values
    return out.reshape((-1,) + z0.shape[1:])


def spot_check(leaf: Any, a_prev: Array, z0: Array, cache: Any, name: str) -> bool:
    """``fast_outputs`` against real forward passes, first and last entry, step 0.5."""
    P = leaf.params[name]
    idx = np.array([0] if P.size == 1 else [0, P.size - 1])
    steps = np.full(len(idx), 0.5, dtype=P.dtype)
    fast = fast_outputs(leaf, z0, cache, name, idx, steps).reshape((len(idx),) + z0.shape)
    values = []
    for g, k in enumerate(idx):
        value = P.copy()
        value.reshape(-1)[k] += steps[g]
        values.append(value)
    real, _ = perturbed_outputs_plain(leaf, name, a_prev, values)
    return all(agrees(fast[g], real[g * len(z0):(g + 1) * len(z0)], z0) for g in range(len(idx)))


def perturbed_outputs_plain(leaf: Any, name: str, a_prev: Array, values: list[Array]) -> tuple[Array, None]:
    original, outs = leaf.params[name], []
    try:
        for value in values:
            leaf.params[name] = value
            outs.append(leaf.forward(a_prev)[0])
    finally:
        leaf.params[name] = original
    return np.concatenate(outs), None


def plan_inner(fd: FiniteDifferences, ref: TensorRef) -> Plan:
    """The plan for a tensor inside a block (``ref.path`` longer than one index)."""
    from .planning import _chunked

    i, block, sub, leaf = _home(fd, ref)
    cache, n, m = fd.caches[i], fd.n, len(fd.method.offsets)
    a_in = block.inner_input(sub, cache)

    def finish(a: Array, crossed: Array, steps: Array) -> tuple[Array, ...]:  # (values, kinks[, errors])
        samples = np.tile(np.arange(n), a.shape[0] // n)
        losses, after, samples = fd._losses(a, i + 1, samples, copies=True)
        return fd._combine(losses, steps, samples, crossed | after)

    if ref.is_delta:
        per = a_in[0].size

        def run(idx: Array) -> tuple[Array, ...]:
            n_of, pos = np.divmod(idx, per)
            theta = a_in.reshape(n, -1)[n_of, pos]
            new = (theta[None, :] + fd._offsets()).astype(np.result_type(a_in, fd.work))  # (M, K)
            rows = np.repeat(a_in[None].astype(new.dtype), new.size, axis=0)  # (M·K, N, …)
            rows.reshape(new.size, n, -1)[np.arange(new.size), np.tile(n_of, m), np.tile(pos, m)] = new.ravel()
            a, crossed = block.resume(sub, rows.reshape((-1,) + a_in.shape[1:]), cache)
            return finish(a, crossed, fd._taken(new, theta))
    else:
        original = leaf.params[ref.name]
        leaf_cache = block.inner_cache(sub, cache)
        z0 = block.inner_input(_after(sub), cache)  # the leaf's unperturbed output
        caps = capabilities(leaf)
        fast = caps.can("perturbed") and original.flags.c_contiguous
        if fast and not spot_check(leaf, a_in, z0, leaf_cache, ref.name):
            fd.fast_fallbacks.append(f"{ref.place}.{ref.name}: forward_perturbed disagrees with a real forward "
                                     f"pass; real forward passes were run instead")
            fast = False

        def run(idx: Array) -> tuple[Array, ...]:
            if fast:  # z linear in the parameter: written down, no kink of its own to cross
                steps = np.broadcast_to(fd._offsets(), (m, len(idx))).astype(np.result_type(original, fd.work))
                out = fast_outputs(leaf, z0, leaf_cache, ref.name, np.tile(idx, m), steps.ravel())
                a, crossed = block.resume(_after(sub), out, cache)
                return finish(a, crossed, steps.astype(np.result_type(steps, np.float64)))
            P = original.astype(np.result_type(original, fd.work))
            theta = P.reshape(-1)[idx].copy()
            new = (theta[None, :] + fd._offsets()).astype(P.dtype)  # (M, K)
            values = []
            for mi, k in np.ndindex(*new.shape):
                value = P.copy()
                value.reshape(-1)[idx[k]] = new[mi, k]
                values.append(value)
            out, own = perturbed_outputs(fd, leaf, ref.name, a_in, leaf_cache, values)
            a, crossed = block.resume(_after(sub), out, cache)
            return finish(a, crossed | np.repeat(own, n), fd._taken(new, theta))

    return _chunked(fd, i, m * n, run, carried=fd.peak_bytes[i])  # the block runs the chunk's rows at once


def directional(fd: FiniteDifferences, ref: TensorRef, V: Array) -> tuple[Array, Array]:
    """``v·∇C`` along each row of V for a tensor inside a block (``FiniteDifferences.directional``)."""
    from .planning import row_bytes

    i, block, sub, leaf = _home(fd, ref)
    cache, n, m = fd.caches[i], fd.n, len(fd.method.offsets)
    a_in = block.inner_input(sub, cache)
    chunk = max(1, fd.budget // (row_bytes(fd.net, i, fd.x.dtype.itemsize) * m * n))
    offs = fd._offsets()  # (M, 1)
    values_out, kinks_out = [], []
    for lo in range(0, len(V), chunk):
        W = V[lo:lo + chunk]
        k = len(W)
        if ref.is_delta:
            moved = a_in.reshape(1, 1, -1) + (offs[:, :, None] * W[None]).reshape(m, k, -1)
            a = moved.astype(np.result_type(a_in.dtype, fd.work)).reshape((-1,) + a_in.shape[1:])
            a, crossed = block.resume(sub, a, cache)
        else:
            original = leaf.params[ref.name]
            values = [(original + offs[mi, 0] * W[ki].reshape(original.shape)).astype(
                np.result_type(original, fd.work)) for mi in range(m) for ki in range(k)]
            out, own = perturbed_outputs(fd, leaf, ref.name, a_in, block.inner_cache(sub, cache), values)
            a, crossed = block.resume(_after(sub), out, cache)
            crossed |= np.repeat(own, n)
        losses, after, samples = fd._losses(a, i + 1, np.tile(np.arange(n), m * k), copies=True)
        v, kk = fd._combine(losses, np.broadcast_to(offs, (m, k)), samples, crossed | after)[:2]  # Ridders: + errors
        values_out.append(v)
        kinks_out.append(kk)
    return np.concatenate(values_out), np.concatenate(kinks_out)
