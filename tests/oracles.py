"""Oracles the tests write themselves, independent of cnngrad's finite-difference engine."""
from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

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


PLUGINS = Path(__file__).resolve().parent / "plugins"


def plugin_config(tmp_path, module: str, custom: str, *, seed: int = 0,
                  shape: str = "{batch: 3, channels: 3, height: 9, width: 10}",
                  before: tuple[str, ...] = ("conv: {filters: 3, kernel: 3}",),
                  after: tuple[str, ...] = ("activation: tanh", "flatten: {}", "dense: {units: 4}")) -> str:
    """A config around one plugin layer of tests/plugins/``module``.py (copied beside it):
    ``before`` layers, ``custom: {custom}``, ``after`` layers, softmax cross-entropy; its path."""
    (tmp_path / f"{module}.py").write_text((PLUGINS / f"{module}.py").read_text())
    path = tmp_path / f"{module}_{zlib.crc32(custom.encode()):08x}.yaml"
    layers = "".join(f"  - {spec}\n" for spec in (*before, f"custom: {{{custom}}}", *after))
    path.write_text(f"seed: {seed}\ninput: {shape}\nlayers:\n{layers}loss: softmax_cross_entropy\n")
    return str(path)
