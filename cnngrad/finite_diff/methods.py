"""The difference formulas: ``Method`` and the ``METHODS`` registry, and ``select``.

Each formula is in ``METHODS`` below: central ``(C(θ+h) − C(θ−h)) / 2h``, forward
``(C(θ+h) − C(θ)) / h``, Richardson ``(4·D(h/2) − D(h)) / 3``, Ridders' tableau (central
differences at h, h/2, … h/2^(L−1) extrapolated to h → 0 by Neville's scheme, with an error
estimate per entry) and the complex step ``Im C(θ + ih) / h``, each as the steps it takes and
how the losses there combine.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


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
    # methods with an error estimate per entry (Ridders): (c, s, c0) -> (N·∂C/∂θ, N·estimate), each (K,)
    tableau: Callable[[Array, Array, Array], tuple[Array, Array]] | None = None

    @property
    def is_complex(self) -> bool:
        return any(isinstance(o, complex) for o in self.offsets)


def _central(c: Array, s: Array) -> Array:
    return (c[0] - c[1]).sum(axis=-1) / (s[0] - s[1])


RIDDERS_LEVELS = 8  # central differences at h, h/c, … h/c^7
RIDDERS_CON = 1.5  # c: the step shrinks by this factor from one level to the next


def ridders_method(levels: int = RIDDERS_LEVELS, con: float = RIDDERS_CON, eps: float = 0.6) -> Method:
    """Ridders' method with ``levels`` steps h, h/con, …"""
    def tableau(c: Array, s: Array, c0: Array) -> tuple[Array, Array]:
        return _ridders(c, s, c0, con)

    return Method("ridders", tuple(o for i in range(levels) for o in (con ** -i, -(con ** -i))), 2 * levels,
                  lambda c, s, c0: tableau(c, s, c0)[0], "O(h^(2L)), error estimated",
                  f"Ridders: central differences at h, h/{con:g}, … h/{con:g}^{levels - 1}, extrapolated to h → 0 "
                  "(Neville's scheme) with an error estimate per entry; h large, the extrapolation removes the "
                  "truncation error", {"float64": eps, "float32": 0.5}, {"float64": 1e-6, "float32": 1e-2},
                  tableau=tableau)


def _ridders(c: Array, s: Array, c0: Array, con: float = RIDDERS_CON) -> tuple[Array, Array]:
    """Ridders' method (Numerical Recipes' dfridr, vectorised over the K entries): the
    central differences D(h/2^i) are the tableau's first column; column j removes the h^(2j)
    term, ``T[i][j] = (c^2j·T[i][j−1] − T[i−1][j−1]) / (c^2j − 1)``.  Each entry keeps the
    element whose distance to its two parents (its error estimate) is smallest over the
    whole tableau.  (dfridr also stops at the first level whose diagonal jumps by SAFE times
    that error; here that stopped too early where the h² term happens to be tiny — a tableau
    of 6 levels is cheap to finish, and rounding-dominated elements have large estimates.)"""
    levels = c.shape[0] // 2
    first = [_central(c[2 * i: 2 * i + 2], s[2 * i: 2 * i + 2]) for i in range(levels)]
    best, err = first[0].copy(), np.full(first[0].shape, np.inf)
    prev = [first[0]]
    for i in range(1, levels):
        cur, fac = [first[i]], con ** 2
        for j in range(1, i + 1):
            cur.append((fac * cur[j - 1] - prev[j - 1]) / (fac - 1.0))
            fac *= con ** 2
            errt = np.maximum(np.abs(cur[j] - cur[j - 1]), np.abs(cur[j] - prev[j - 1]))
            better = errt <= err
            best, err = np.where(better, cur[j], best), np.where(better, errt, err)
        prev = cur
    return best, err


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
    "ridders": ridders_method(),
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


def directions(rng: np.random.Generator, k: int, size: int) -> Array:
    """``k`` random unit directions in R^size, of shape (k, size): entries uniform on [−1, 1),
    each row then scaled to norm 1.  Any continuous distribution serves a check along them:
    for a wrong gradient (an error e ≠ 0), ⟨e, v⟩ = 0 has probability 0 (a Rademacher ±1
    would not do: e = (d, −d) vanishes half the time); uniform draws cost a quarter of normal
    ones here (2 ns an entry against 8), a third of a LeNet ``--directions 1`` check's draws."""
    V = rng.uniform(-1.0, 1.0, (k, size))
    V /= np.sqrt(np.einsum("ij,ij->i", V, V))[:, None]  # one pass a row: linalg.norm took 2.5x as long
    return V


def select(rng: np.random.Generator, size: int, samples: int | None) -> Array:
    """Flat indices to check: all, or ``samples`` distinct ones drawn at random, sorted."""
    if samples is None or samples >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, size=samples, replace=False))
