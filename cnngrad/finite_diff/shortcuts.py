"""What a layer declares, and the shortcuts the built-in layers offer the engine.

CONVENTIONS.md ("Layers of your own"): cnngrad assumes of a layer only what it declares,
and undeclared means the safe, general case.  ``capabilities(layer)`` reads the
declarations, in this one place, into a ``Capabilities``:

* ``per_sample``: sample n of the output depends on sample n of the input only.  Then
  perturbed copies of a batch may be stacked into one batch, and an input entry x[n, …]
  may be differenced by running sample n alone.  Without it each perturbed copy of the
  batch is its own forward pass through the layer.
* ``complex_safe``: forward and backward keep the imaginary part of a complex array.
* ``kink_state``: the layer says which side of each non-differentiable point a unit is on.
* ``offers``: the ``Shortcuts`` it implements (built-in layers only; a plugin offers none).

The engine calls a shortcut only when the layer declares it in ``offers`` and is
``per_sample``: every shortcut carries one sample's change on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

Array = np.ndarray

Shortcut = Literal["perturbed", "input_delta", "window", "region", "elementwise", "channelwise", "reshape", "piece"]
# each shortcut -> the Shortcuts methods a layer offering it implements
REQUIRES: dict[Shortcut, tuple[str, ...]] = {
    "perturbed": ("forward_perturbed",), "input_delta": ("forward_input_delta",),
    "window": ("window", "window_delta"), "region": ("window", "region"),
    "elementwise": (), "channelwise": (), "reshape": (), "piece": ("forward_on_piece",),
}
SHORTCUTS: tuple[Shortcut, ...] = tuple(REQUIRES)


class Shortcuts(Protocol):
    """The shortcuts a layer may offer; ``offers`` names those it implements:

    * ``"perturbed"``: ``forward_perturbed`` — z for many one-entry parameter changes at once,
      each moving one output channel (z linear in the parameter);
    * ``"input_delta"``: ``forward_input_delta`` — how z moves when an input channel (or a
      set of input units) moves (z linear in its input);
    * ``"window"``: ``window`` and ``window_delta`` — an input change inside a window moves z
      only inside ``window(...)``, by ``window_delta(...)`` (z linear and local in its input);
      ``window(..., tight=True)``: no larger than the rows given need (clipped to the map),
      else the size every window takes (what planning sizes memory by);
    * ``"region"``: ``window`` and ``region`` — a local layer re-run on the input region a
      window of outputs reads (pooling);
    * ``"elementwise"``: each output entry depends on the same input entry only;
    * ``"channelwise"``: each output channel depends on the same input channel only;
    * ``"reshape"``: the output is the input reshaped (flatten), C order;
    * ``"piece"``: ``forward_on_piece`` — the forward on the piece of the input space where
      ``kink_state`` is ``state`` (relu: ``z·mask``; max pooling: the entry ``idx`` names),
      extended past the kinks: equal to ``forward`` wherever ``kink_state`` of its cache is
      ``state``, smooth everywhere.  Along a direction the engine holds such a layer on the
      unperturbed point's piece (``FiniteDifferences.directional``).
    """

    offers: ClassVar[frozenset[Shortcut]]

    def forward_perturbed(self, z: Array, cache: Any, name: str, indices: Array,
                          steps: Array) -> tuple[Array, Array]: ...

    def forward_input_delta(self, delta: Array, where: Any) -> Array: ...

    def window(self, y0: Array, x0: Array, h: int, w: int, tight: bool = False) -> tuple[Array, Array, int, int]: ...

    def window_delta(self, delta: Array, y0: Array, x0: Array, i0: Array, j0: Array, wh: int,
                     ww: int) -> Array: ...

    def region(self, i0: Array, j0: Array, wh: int, ww: int) -> tuple[Array, Array, int, int]: ...

    def forward_on_piece(self, a: Array, state: Array) -> Array: ...


@dataclass(frozen=True)
class Capabilities:
    """What one layer declares (all off unless declared)."""

    per_sample: bool = False
    complex_safe: bool = False
    kink_state: bool = False
    offers: frozenset[Shortcut] = frozenset()

    def can(self, shortcut: Shortcut) -> bool:
        """The layer offers ``shortcut`` and is per-sample, which every shortcut relies on."""
        return self.per_sample and shortcut in self.offers


def capabilities(layer: Any) -> Capabilities:
    """The declarations of ``layer``: its ``per_sample``, ``complex_safe`` and ``offers``
    class attributes and whether it has ``kink_state`` — each off when absent."""
    offers = frozenset(getattr(layer, "offers", frozenset()))
    unknown = offers - set(SHORTCUTS)
    if unknown:
        raise ValueError(f"{type(layer).__name__}.offers: unknown shortcuts {sorted(unknown)}; "
                         f"known: {', '.join(SHORTCUTS)}")
    missing = sorted({m for s in offers for m in REQUIRES[s] if not callable(getattr(layer, m, None))})
    if missing:
        raise ValueError(f"{type(layer).__name__}.offers {sorted(offers)} but does not implement {missing}")
    return Capabilities(per_sample=getattr(layer, "per_sample", False) is True,
                        complex_safe=getattr(layer, "complex_safe", False) is True,
                        kink_state=callable(getattr(layer, "kink_state", None)),
                        offers=offers)


def kink_state(layer: Any, caps: Capabilities, cache: Any) -> Array | None:
    """Which side of each kink every unit is on, for a layer that declares ``kink_state``."""
    return layer.kink_state(cache) if caps.kink_state else None
