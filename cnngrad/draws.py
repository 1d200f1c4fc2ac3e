"""Where a config builder's choices come from: hypothesis (examples shrink) or a seeded numpy
generator (the same draws for the same seed).  ``cnngrad.strategies`` builds configs on
either through the :class:`Draw` protocol."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

T = TypeVar("T")


class Draw(Protocol):
    """Where the builder's choices come from: hypothesis (shrinkable) or a seeded numpy rng."""

    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def boolean(self) -> bool: ...
    def real(self, lo: float, hi: float) -> float: ...
    def require(self, condition: bool) -> None: ...


class HypothesisDraw:
    """Draw through hypothesis, inside an ``@st.composite``: examples shrink."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(list(options)))

    def boolean(self) -> bool:
        return self._draw(st.booleans())

    def real(self, lo: float, hi: float) -> float:
        return self._draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False))

    def require(self, condition: bool) -> None:
        assume(condition)


class Rejected(Exception):
    """A numpy draw ended in a combination no valid config has; draw again."""


class NumpyDraw:
    """Draw from ``numpy.random.Generator``: the same configs for the same seed, whatever
    the hypothesis version or the code around it (hypothesis mixes constants found in local
    source files into its draws, so ``@seed`` alone does not pin them)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi, endpoint=True))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def boolean(self) -> bool:
        return bool(self.rng.integers(2))

    def real(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def require(self, condition: bool) -> None:
        if not condition:
            raise Rejected
