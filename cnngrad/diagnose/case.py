"""What a diagnosis works on: ``Case`` (one failing tensor and what is known around it),
``Candidate`` (a bug's predicted gradient) and ``close`` (norm rel, the yardstick)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from ..compare import metrics
from ..refs import TensorRef
from .geometry import Geometry

Array = np.ndarray


class Candidate(NamedTuple):
    """What the backward would return with this bug; compared with the analytic gradient
    (over ``mask`` if given).  ``fallback``: said only when nothing more specific matched,
    and ``predicted`` is then a model of the *true* gradient, compared with the numeric one."""

    sentence: str
    predicted: Array
    mask: Array | None = None
    fallback: bool = False


def close(a: Array, b: Array, mask: Array | None = None) -> float:
    """norm rel of a against b (over ``mask`` only, if given)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    return metrics(np.ravel(a), np.ravel(b)).norm_rel


@dataclass
class Case:
    """One failing tensor of the culprit layer and what is known around it."""

    a: Array  # analytic gradient, float64
    n: Array  # numeric gradient, float64, same shape
    ref: TensorRef
    layer: Any
    geometry: Geometry | None
    batch: int
    tol: float
    delta_out: Array | None = None  # analytic δ at the layer's output (the δ its backward was given)
    a_prev: Array | None = None  # the layer's input

    @property
    def what(self) -> str:
        return "δ" if self.ref.is_delta else f"∂C/∂{self.ref.name}"

    def fits(self, model: Array) -> bool:
        """The correct formula reproduces the numeric gradient: the geometry is right."""
        return model.shape == self.n.shape and close(model, self.n) <= self.tol


Raw: TypeAlias = "Candidate | tuple[str, Array, Array | None]"  # or plain (sentence, predicted, mask)
