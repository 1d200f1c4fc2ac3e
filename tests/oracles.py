"""Oracles the tests write themselves, independent of cnngrad's finite-difference engine."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def central(f: Callable[[], float], theta: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """∂f/∂θ by a plain loop of central differences, (f(θ + h e_k) − f(θ − h e_k)) / 2h,
    θ changed in place and restored; of θ's shape."""
    out = np.empty(theta.size)
    flat = theta.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = f()
        flat[k] = old - h
        down = f()
        flat[k] = old
        out[k] = (up - down) / (2 * h)
    return out.reshape(theta.shape)
