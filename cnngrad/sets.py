"""Sorted unique entries of an integer array, without ``np.unique``: in numpy 2.x its first
call imports ``numpy.ma`` (12 ms here, 4% of a LeNet ``--scope layer`` process), for a
masked-array test these arrays never need."""
from __future__ import annotations

import numpy as np

Array = np.ndarray


def unique(a: Array) -> Array:
    """``np.unique(a)``: the sorted distinct entries of a (flattened)."""
    return unique_inverse(a)[0]


def unique_inverse(a: Array) -> tuple[Array, Array]:
    """``np.unique(a, return_inverse=True)`` of a 1-d array: the distinct entries, and the
    index of each entry of a among them (``values[inverse] == a``)."""
    a = np.asarray(a).reshape(-1)
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    inverse = np.empty(len(a), dtype=np.intp)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse
