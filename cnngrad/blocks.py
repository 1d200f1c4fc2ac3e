"""A block: paths of layers that all take the block's input, merged by a sum or a concat.

``- block: {merge: add|concat, paths: [[...], []]}`` (CONVENTIONS.md, "Blocks").  With
``a^{l-1}`` the block's input and ``f_p`` path p's layers in order (``[]``: the identity),

* ``add``:    ``z = Σ_p f_p(a^{l-1})``                  (ResNet: ``f(a) + a``)
* ``concat``: ``z = [f_0(a^{l-1}); f_1(a^{l-1}); …]``    along axis 1, in path order.

Backward (the chain rule over the paths, each path's own backward being the seed's step 4):

* ``add``:    every path gets the whole ``δ^l``; each passes it down its layers to
  ``δ_p = ∂C/∂(input of path p)``, and ``δ^{l-1} = Σ_p δ_p`` (the input feeds every path,
  so its δ is the sum of theirs; an identity path contributes ``δ^l`` itself).
* ``concat``: path p gets its slice ``δ^l[:, c_p : c_p + C_p]`` (``c_p`` the channels of the
  paths before it), and again ``δ^{l-1} = Σ_p δ_p``.

A parameter of an inner layer is ``params["1.0.W"]`` (the key is its index path inside
the block, then its name; ``refs[key]`` = ``((1, 0), "W")``), written through to the
inner layer, so perturbing it perturbs the layer.  A block is ``per_sample`` /
``complex_safe`` when every inner layer is, offers no shortcut, and reports the kink state
of every inner layer that has one.  ``resume`` runs the block from inside (the input of
an inner layer given), for δ at inner boundaries and for inner parameters.
"""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, ClassVar

import numpy as np

Array = np.ndarray
Path = tuple[int, ...]


def _declares(layer: Any, what: str) -> bool:
    return getattr(layer, what, False) is True


class BlockParams(MutableMapping):
    """The inner layers' parameters, keyed ``"p.i.name"`` (nested: ``"p.i.q.j.name"``)."""

    def __init__(self, block: Block) -> None:
        self.block = block

    def _home(self, key: str) -> tuple[Any, str]:
        sub, name = self.block.refs[key]
        return self.block.leaf(sub), name

    def __getitem__(self, key: str) -> Array:
        layer, name = self._home(key)
        return layer.params[name]

    def __setitem__(self, key: str, value: Array) -> None:
        layer, name = self._home(key)
        layer.params[name] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("a block's parameters cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self.block.refs)

    def __len__(self) -> int:
        return len(self.block.refs)


class Block:
    """``paths`` (lists of built layers) from an input of shape ``in_shape`` to ``out_shape``."""

    kind = "block"
    offers: ClassVar[frozenset] = frozenset()

    def __init__(self, paths: list[list[Any]], merge: str, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> None:
        self.paths, self.merge = paths, merge
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.refs: dict[str, tuple[Path, str]] = {}  # depth-first, each layer's params in order
        for p, path in enumerate(paths):
            for i, layer in enumerate(path):
                if isinstance(layer, Block):
                    for key, (sub, name) in layer.refs.items():
                        self.refs[f"{p}.{i}.{key}"] = ((p, i) + sub, name)
                else:
                    for name in layer.params:
                        self.refs[f"{p}.{i}.{name}"] = ((p, i), name)
        self.params = BlockParams(self)
        inner = [layer for path in paths for layer in path]
        self.per_sample = all(_declares(layer, "per_sample") for layer in inner)
        self.complex_safe = all(_declares(layer, "complex_safe") for layer in inner)
        widths = [path[-1].out_shape[0] if path else in_shape[0] for path in paths]
        self.splits = np.cumsum([0] + widths)  # concat: path p owns channels splits[p]:splits[p+1]

    # ------------------------------------------------------------------ the tree

    def leaf(self, sub: Path) -> Any:
        """The inner layer at index path ``sub`` (relative to the block: (p, i, …))."""
        layer = self.paths[sub[0]][sub[1]]
        return layer.leaf(sub[2:]) if len(sub) > 2 else layer

    def inner_input(self, sub: Path, cache: tuple) -> Array:
        """The input of the inner layer at ``sub`` in the pass that made ``cache``."""
        acts, caches = cache
        if len(sub) > 2:
            return self.paths[sub[0]][sub[1]].inner_input(sub[2:], caches[sub[0]][sub[1]])
        return acts[sub[0]][sub[1]]

    def inner_cache(self, sub: Path, cache: tuple) -> Any:
        acts, caches = cache
        if len(sub) > 2:
            return self.paths[sub[0]][sub[1]].inner_cache(sub[2:], caches[sub[0]][sub[1]])
        return caches[sub[0]][sub[1]]

    # ------------------------------------------------------------------ passes

    def forward(self, a: Array) -> tuple[Array, tuple]:
        """a of shape (n, *in_shape) -> (merged output (n, *out_shape), cache): the cache
        holds every path's activations ``[a, a_1, …, out]`` and its layers' caches."""
        acts, caches = [], []
        for path in self.paths:
            out, path_acts, path_caches = a, [a], []
            for layer in path:
                out, c = layer.forward(out)
                path_acts.append(out)
                path_caches.append(c)
            acts.append(path_acts)
            caches.append(path_caches)
        return self._merge([path_acts[-1] for path_acts in acts]), (acts, caches)

    def _merge(self, outs: list[Array]) -> Array:
        if self.merge == "concat":
            return np.concatenate(outs, axis=1)
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^l`` of shape (n, *out_shape) -> (``δ^{l-1} = Σ_p δ_p``, {key: ∂C/∂param})."""
        delta_prev, grads, _ = self.backward_tree(delta, cache)
        return delta_prev, grads

    def backward_tree(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array], dict[Path, Array]]:
        """``backward``, and δ at the input of every inner layer, keyed by its index path in
        the block (``(1, 0)``: the δ layer 0 of path 1 passed down)."""
        acts, caches = cache
        grads: dict[str, Array] = {}
        inner: dict[Path, Array] = {}
        delta_prev: Array | None = None
        for p, path in enumerate(self.paths):
            # add: the whole δ^l; concat: this path's slice of it
            d = delta if self.merge == "add" else delta[:, self.splits[p]:self.splits[p + 1]]
            for i in range(len(path) - 1, -1, -1):
                layer = path[i]
                if isinstance(layer, Block):
                    d, g, deeper = layer.backward_tree(d, caches[p][i])
                    inner.update({(p, i) + sub: v for sub, v in deeper.items()})
                else:
                    d, g = layer.backward(d, caches[p][i])
                grads.update({f"{p}.{i}.{name}": v for name, v in g.items()})
                inner[(p, i)] = d
            delta_prev = d if delta_prev is None else delta_prev + d  # δ^{l-1} = Σ_p δ_p
        grads = {key: grads[key] for key in self.refs}  # in the order of params
        assert delta_prev is not None  # a block has at least one path (config.block_config)
        return delta_prev, grads, inner

    def kink_state(self, cache: tuple) -> Array | None:
        """Every inner layer's kink state, flattened per sample and joined: (n, units)."""
        acts, caches = cache
        states = []
        for p, path in enumerate(self.paths):
            for i, layer in enumerate(path):
                fn = getattr(layer, "kink_state", None)
                state = fn(caches[p][i]) if callable(fn) else None
                if state is not None:
                    states.append(np.asarray(state).reshape(state.shape[0], -1))
        return np.concatenate(states, axis=1) if states else None

    # ------------------------------------------------------------------ from inside

    def resume(self, at: Path, a: Array, cache: tuple) -> tuple[Array, Array]:
        """The block's output when ``a`` — whole perturbed copies of the batch (rows
        g·N … g·N+N−1 are copy g) — is the input of the inner layer at ``at`` (``(p, i)``,
        or deeper inside a nested block; ``i`` may be the path's length: a is its output).
        The other paths keep their outputs of the pass that made ``cache``.  Returns the
        output and, per row, whether an inner unit crossed a kink on the way."""
        acts, caches = cache
        n = acts[0][0].shape[0]
        p, i = at[0], at[1]
        path = self.paths[p]
        crossed = np.zeros(a.shape[0], dtype=bool)
        if len(at) > 2:  # inside the nested block at (p, i): its output is the input of i + 1
            a, crossed = path[i].resume(at[2:], a, caches[p][i])
            i += 1
        for j in range(i, len(path)):
            a, moved = run_copies(path[j], a, n, caches[p][j])
            crossed |= moved
        g = a.shape[0] // n
        outs = [a if q == p else np.broadcast_to(acts[q][-1][None], (g,) + acts[q][-1].shape).reshape(a.shape[:1] +
                acts[q][-1].shape[1:]) for q in range(len(self.paths))]
        return self._merge(outs), crossed


def run_copies(layer: Any, a: Array, n: int, base_cache: Any) -> tuple[Array, Array]:
    """``layer`` on whole copies of a batch of n (stacked when it is per-sample, else one
    pass a copy) and, per row, whether a unit is on another side of a kink than in the
    pass that made ``base_cache``."""
    fn = getattr(layer, "kink_state", None)
    base = fn(base_cache) if callable(fn) else None
    chunks = [a] if _declares(layer, "per_sample") else [a[k:k + n] for k in range(0, a.shape[0], n)]
    outs, crossed = [], []
    for chunk in chunks:
        out, cache = layer.forward(chunk)
        outs.append(out)
        if base is not None and callable(fn):
            state = np.asarray(fn(cache)).reshape(chunk.shape[0] // n, n, -1)
            crossed.append(np.any(state != np.asarray(base).reshape(1, n, -1), axis=2).reshape(-1))
    moved = np.concatenate(crossed) if crossed else np.zeros(a.shape[0], dtype=bool)
    return np.concatenate(outs) if len(outs) > 1 else outs[0], moved


def param_key(path: tuple[int, ...], name: str) -> str:
    """Where a parameter at index path ``path`` lives in its top-level layer's ``params``:
    ``name`` for a top-level layer, ``"p.i.name"`` inside a block."""
    return ".".join([str(i) for i in path[1:]] + [name])
