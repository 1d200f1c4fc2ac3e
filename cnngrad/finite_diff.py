"""Finite differences of the scalar loss C, entry by entry.

For an entry θ of a parameter of layer l, only layers l… see the change, so the input of
layer l (``a^{l-1}``) is computed once and reused; and many perturbed copies of the
batch — one per (entry, step) — are stacked into a single batch for layers l+1…, each
copy's loss taken apart again (``Network.losses(groups=…)``).  The result is the same as
perturbing, running the whole network and restoring, one entry at a time.

Each step is taken as the difference the dtype can actually represent
(``(θ + h) − θ``, not ``h``), so the quotient has no representation error in its divisor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .network import Network

Array = np.ndarray

# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A difference formula: the steps (multiples of h) at which C is evaluated, and how
    the losses there combine into ∂C/∂θ."""

    name: str
    offsets: tuple[float, ...]
    # (per-sample losses (M, K, N), actual steps (M, K), per-sample losses at θ (N,)) -> (K,)
    combine: Callable[[Array, Array, Array], Array]
    order: str
    doc: str


METHODS: dict[str, Method] = {
    "central": Method("central", (1.0, -1.0),
                      lambda c, s, c0: (c[0] - c[1]).mean(axis=-1) / (s[0] - s[1]), "O(h²)",
                      "(C(θ+h) − C(θ−h)) / 2h"),
    "forward": Method("forward", (1.0,),
                      lambda c, s, c0: (c[0] - c0).mean(axis=-1) / s[0], "O(h)",
                      "(C(θ+h) − C(θ)) / h"),
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


def _kink_states(net: Network, start: int, caches: list[tuple]) -> list[Array | None]:
    states = []
    for layer, cache in zip(net.layers[start:], caches):
        fn = getattr(layer, "kink_state", None)
        states.append(fn(cache) if fn is not None else None)
    return states


def _crossed(base: list[Array | None], states: list[Array | None], groups: int) -> Array:
    """(groups,) bool: did any unit's kink state differ from the unperturbed one's?"""
    crossed = np.zeros(groups, dtype=bool)
    for b, s in zip(base, states):
        if b is not None and s is not None:
            crossed |= np.any(s.reshape(groups, -1) != b.reshape(1, -1), axis=1)
    return crossed


class FiniteDifferences:
    """Numeric gradients of one problem ``(net, x, y)`` with step h and a ``Method``."""

    def __init__(self, net: Network, x: Array, y: Array, eps: float, method: str = "central",
                 memory_budget: int = 128 << 20) -> None:
        self.net, self.x, self.y, self.eps = net, x, y, eps
        self.method = get_method(method)
        self.budget = memory_budget
        # the unperturbed pass: every layer's input, caches, kink states, C(θ)
        self.inputs = [x]
        self.caches = []
        a = x
        for layer in net.layers:
            a, cache = layer.forward(a)
            self.inputs.append(a)
            self.caches.append(cache)
        self.c0 = net.loss.per_sample(a, y)  # (N,): ℓ_n at θ
        self.base_kinks = _kink_states(net, 0, self.caches)

    def _chunk(self, start: int) -> int:
        """How many perturbed copies of the batch fit the memory budget at once."""
        per_copy = sum(a[:1].nbytes for a in self.inputs[start:]) * self.x.shape[0]
        # im2col views are copied by matmul: allow for the largest receptive-field blow-up
        taps = max([int(np.prod(getattr(l, "k", (1, 1)))) for l in self.net.layers[start:]] + [1])
        return max(1, int(self.budget // (per_copy * (2 + taps))))

    def _suffix(self, a: Array, start: int, groups: int) -> tuple[Array, Array]:
        """Per-sample losses (groups, N) and kink crossings (groups,) of ``groups`` stacked
        batches.  Differences are taken per sample before the batch mean, so a sample the
        perturbation does not reach contributes an exact 0 instead of rounding noise."""
        out, caches = self.net.forward(a, start)
        crossed = _crossed(self.base_kinks[start:], _kink_states(self.net, start, caches), groups)
        y_rep = np.broadcast_to(self.y, (groups,) + self.y.shape).reshape((-1,) + self.y.shape[1:])
        return self.net.loss.per_sample(out, y_rep).reshape(groups, -1), crossed

    def _steps(self, theta: Array) -> tuple[Array, Array]:
        """Perturbed values θ + o·h (M, K) in θ's dtype and the steps actually taken."""
        offs = np.asarray(self.method.offsets)[:, None]
        values = (theta[None, :] + offs * self.eps).astype(theta.dtype)
        return values, values.astype(np.float64) - theta.astype(np.float64)[None, :]

    def input(self, indices: Array) -> Numeric:
        """∂C/∂x at flat indices of x: perturbed copies of x through the whole network."""
        return self._run(self.x.reshape(-1), indices, 0, self._perturb_input)

    def _perturb_input(self, idx: Array, values: Array) -> tuple[Array, Array]:
        groups = values.size
        xb = np.broadcast_to(self.x, (groups,) + self.x.shape).copy()
        xb.reshape(groups, -1)[np.arange(groups), np.tile(idx, values.shape[0])] = values.ravel()
        return xb.reshape((-1,) + self.x.shape[1:]), np.zeros(groups, dtype=bool)

    def param(self, layer_index: int, name: str, indices: Array) -> Numeric:
        """∂C/∂θ for entries of ``layers[layer_index].params[name]``: layer l re-run once
        per perturbation on its cached input, the layers after it on all of them at once."""
        layer = self.net.layers[layer_index]
        P = layer.params[name]
        if not P.flags.c_contiguous:
            raise ValueError(f"layers[{layer_index}].params[{name!r}] must be C-contiguous to be perturbed")
        flat = P.reshape(-1)  # a view: writing it perturbs the layer's own array
        a_prev = self.inputs[layer_index]
        kink_fn = getattr(layer, "kink_state", None)
        base = self.base_kinks[layer_index]

        def perturb(idx: Array, values: Array) -> tuple[Array, Array]:
            outs, own = [], np.zeros(values.size, dtype=bool)
            for g, (m, k) in enumerate(np.ndindex(*values.shape)):
                old = flat[idx[k]]
                flat[idx[k]] = values[m, k]
                try:
                    out, cache = layer.forward(a_prev)
                finally:
                    flat[idx[k]] = old
                outs.append(out)
                if kink_fn is not None and base is not None:
                    own[g] = np.any(kink_fn(cache) != base)
            return np.concatenate(outs), own

        return self._run(flat, indices, layer_index + 1, perturb)

    def _run(self, theta_flat: Array, indices: Array, start: int,
             perturb: Callable[[Array, Array], tuple[Array, Array]]) -> Numeric:
        """Evaluate C at every step of every index, chunk by chunk, and combine."""
        m = len(self.method.offsets)
        k_max = max(1, self._chunk(start) // m)
        values_out = np.empty(len(indices), dtype=np.float64)
        kinks = np.zeros(len(indices), dtype=bool)
        for lo in range(0, len(indices), k_max):
            idx = indices[lo : lo + k_max]
            values, steps = self._steps(theta_flat[idx])
            batch, own = perturb(idx, values)
            losses, crossed = self._suffix(batch, start, values.size)
            c = losses.astype(np.float64).reshape(m, len(idx), -1)
            values_out[lo : lo + len(idx)] = self.method.combine(c, steps, self.c0.astype(np.float64))
            kinks[lo : lo + len(idx)] = (crossed | own).reshape(m, -1).any(axis=0)
        return Numeric(indices, values_out, kinks)
