"""A tensor the check compares, named by a value: ``TensorRef(path, role, name)``.

``path`` is the layer's index path in the config — ``(3,)`` for ``layers[3]``, ``(3, 1, 0)``
for layer 0 of path 1 of the block at index 3 (CONVENTIONS.md, "Blocks") — ``role`` says
whether the tensor is one of the layer's parameters (``"param"``) or the δ that its
backward passes down, ``∂C/∂(input of the layer)`` (``"delta"``), and ``name`` is the
parameter's name (any name, ``"input"`` included: a parameter is never taken for a δ).

One ref names a row everywhere: the engine's targets, the checker's rows, the renderers,
``Report.analytic`` / ``Report.numeric`` and the ``.npz`` keys of ``--save``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["param", "delta"]


@dataclass(frozen=True, order=True)
class TensorRef:
    """One tensor of one layer: a parameter, or δ at the layer's input."""

    path: tuple[int, ...]
    role: Role
    name: str = "input"

    @classmethod
    def param(cls, layer: int | tuple[int, ...], name: str) -> TensorRef:
        return cls(_path(layer), "param", name)

    @classmethod
    def delta(cls, layer: int | tuple[int, ...] = 0) -> TensorRef:
        """δ at the input of ``layer``; ``delta(0)`` is ∂C/∂x."""
        return cls(_path(layer), "delta", "input")

    @property
    def is_delta(self) -> bool:
        return self.role == "delta"

    @property
    def is_input(self) -> bool:
        """∂C/∂x: δ below the first layer."""
        return self.is_delta and all(i == 0 for i in self.path) and len(self.path) == 1

    @property
    def index(self) -> int:
        """The top-level layer index (the first element of the path)."""
        return self.path[0]

    @property
    def layer(self) -> str:
        """The layer's dotted path: ``"3"``, ``"3.1.0"``."""
        return ".".join(str(i) for i in self.path)

    @property
    def json_layer(self) -> int | str:
        """``layer`` in JSON reports: the index for a top-level layer, else the dotted path."""
        return self.path[0] if len(self.path) == 1 else self.layer

    @property
    def place(self) -> str:
        """Where the layer stands in the config, as error messages name it:
        ``layers[3]``, ``layers[3].paths[1][0]``."""
        place = f"layers[{self.path[0]}]"
        rest = self.path[1:]
        while rest:
            place += f".paths[{rest[0]}]" + (f"[{rest[1]}]" if len(rest) > 1 else "")
            rest = rest[2:]
        return place

    @property
    def key(self) -> str:
        """Where its arrays live (``Report.analytic``/``numeric``, ``--save``): ``"input"``
        (∂C/∂x), ``"delta.{layer}"`` (δ at an inner boundary), ``"layers.{layer}.{name}"``."""
        if self.is_delta:
            return "input" if self.is_input else f"delta.{self.layer}"
        return f"layers.{self.layer}.{self.name}"

    @property
    def label(self) -> str:
        """How a row's tensor is shown: the parameter's name, or ``δ input``."""
        return "δ input" if self.is_delta else self.name

    @property
    def tensor(self) -> str:
        """The JSON ``tensor`` field: the parameter's name, or ``"input"`` for a δ row."""
        return "input" if self.is_delta else self.name

    def __str__(self) -> str:
        return f"{self.place} {self.label}"


def _path(layer: int | tuple[int, ...]) -> tuple[int, ...]:
    return (int(layer),) if isinstance(layer, int) else tuple(int(i) for i in layer)
