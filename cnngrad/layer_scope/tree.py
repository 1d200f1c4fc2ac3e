"""The layer scope inside blocks: every layer as a ``Link`` — its input, its output, its
cache and the δ it received — whether it is a top-level layer or one inside a block.

Inside a block (``blocks.py``) the δ a layer received is the δ at the input of the next
layer of its path (``Network.backward``'s ``inner``: ``inner[(3, 1, 1)]`` is what layer
3.1.1 passed down to 3.1.0), and for the last layer of a path the merge's share of the
block's own δ^l, as the block's *forward* defines it:

* ``add``:    ``z = Σ_p f_p(a)``, so ∂z/∂f_p = I and path p's last layer receives ``δ^l``;
* ``concat``: path p's last layer receives its channels ``δ^l[:, c_p : c_p + C_p]``.

The split is taken from the forward, not read from what ``Block.backward`` passed: a
backward that split δ^l wrongly leaves the last layer of a path with gradients that do not
match its link (as in the network scope, where that layer's rows fail).  The other half of
the merge, ``δ^{l-1} = Σ_p δ_p`` (the block's input feeds every path unchanged), is the
block's own input row: the links of each path's first layer at the same entries, plus an
identity path's share of δ^l (``LinkDifferences._fan_out``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..blocks import Block
from ..finite_diff import FiniteDifferences
from ..finite_diff.shortcuts import Capabilities, capabilities, kink_state

Array = np.ndarray
Path = tuple[int, ...]


@dataclass
class Link:
    """One layer alone, as the layer scope differences it: ``layer`` maps ``a_prev`` (its
    input, of shape (n, *in_shape)) to ``z`` (n, *out_shape) with ``cache``; ``delta`` is
    δ^l = ∂C/∂z as its backward received it (z's shape); ``base`` its kink state in that
    pass; ``top``: a top-level layer (the engine's window shortcuts and spot checks apply)."""

    where: str  # "layers[3]", "layers[3.1.0]": how fallbacks name it
    layer: Any
    a_prev: Array
    z: Array
    cache: Any
    delta: Array
    base: Array | None
    caps: Capabilities
    top: bool


def share(block: Block, p: int, delta: Array) -> Array:
    """The merge's share of the block's δ^l for path p: all of it (add), its channels (concat)."""
    return delta if block.merge == "add" else delta[:, block.splits[p]:block.splits[p + 1]]


def inner_received(layers: list[Any], received: list[Array], inner: dict[Path, Array]) -> dict[Path, Array]:
    """δ received by every layer inside a block, keyed by its index path: the next layer's
    input δ (``inner``), or the merge's share of the block's δ (``received[i]`` at the top)."""
    out: dict[Path, Array] = {}

    def walk(block: Block, at: Path, d_out: Array) -> None:
        for p, path in enumerate(block.paths):
            d = share(block, p, d_out)
            for j in range(len(path) - 1, -1, -1):
                here = at + (p, j)
                out[here] = d
                if isinstance(path[j], Block):
                    walk(path[j], here, d)
                d = inner[here]

    for i, layer in enumerate(layers):
        if isinstance(layer, Block):
            walk(layer, (i,), received[i])
    return out


class Links:
    """``at(path)``: the ``Link`` of the layer at an index path, top level or inside a block."""

    def __init__(self, fd: FiniteDifferences, received: list[Array], inner: dict[Path, Array] | None) -> None:
        self.fd = fd
        self.received = [np.asarray(d, dtype=np.result_type(d, np.float64)) for d in received]
        self.inner = {path: np.asarray(d, dtype=np.result_type(d, np.float64))
                      for path, d in inner_received(fd.net.layers, received, inner or {}).items()}
        self._links: dict[Path, Link] = {}

    def at(self, path: Path) -> Link:
        """The link of the layer at ``path``; ValueError if there is no such layer."""
        if path not in self._links:
            self._links[path] = self._make(path)
        return self._links[path]

    def _make(self, path: Path) -> Link:
        fd, layers = self.fd, self.fd.net.layers
        l = path[0]
        if not 0 <= l < len(layers):
            raise ValueError(f"layers[{l}]: no such layer in a network of {len(layers)} layers")
        if len(path) == 1:
            return Link(f"layers[{l}]", layers[l], fd.inputs[l], fd.inputs[l + 1], fd.caches[l], self.received[l],
                        fd.base_kinks[l], fd.caps[l], True)
        block, sub, where = layers[l], path[1:], "layers[" + ".".join(str(i) for i in path) + "]"
        if not isinstance(block, Block) or path not in self.inner:
            raise ValueError(f"{where}: no such layer inside a block")
        leaf = block.leaf(sub)
        cache = block.inner_cache(sub, fd.caches[l])
        caps = capabilities(leaf)
        after = sub[:-1] + (sub[-1] + 1,)  # its output is the input of the position after it
        return Link(where, leaf, block.inner_input(sub, fd.caches[l]), block.inner_input(after, fd.caches[l]),
                    cache, self.inner[path], kink_state(leaf, caps, cache), caps, False)
