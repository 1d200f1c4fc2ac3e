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


def custom_layer(path):
    """The one ``custom`` layer of a config file (plugins loaded) as the network holds it, and
    its input shape; ``.layer`` is the user's own object behind it."""
    from cnngrad import config as cfg
    from cnngrad.network import build

    net = build(cfg.load(str(path), plugins=True)).net
    (i,) = [i for i, spec in enumerate(net.specs) if spec.kind == "custom"]
    return net.layers[i], net.layers[i].in_shape


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / (‖a‖ + ‖b‖), 0 for two zeros."""
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b) + 1e-300))
