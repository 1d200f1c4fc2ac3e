"""A network: the config's layers in order and a loss, plus the seeded draw of x and y.

Random draws, all from ``numpy.random.default_rng(config.seed)``, in this order:
each layer's parameters in layer order (W, then b), then the input x ~ N(0, 1) of shape
(batch, channels, height, width), then the targets y, then the entries to sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import Config, LayerSpec, instantiate
from .layers import LAYERS
from .losses import LOSSES

Array = np.ndarray


class Network:
    """``layers[0] … layers[L-1]`` then the loss. Holds parameters, never activations."""

    def __init__(self, layers: list[Any], specs: list[LayerSpec], loss: Any) -> None:
        self.layers, self.specs, self.loss = layers, specs, loss

    def forward(self, a: Array, start: int = 0) -> tuple[Array, list[tuple]]:
        """Run ``layers[start:]`` on a (the input of layer ``start``); return the output
        and every layer's cache.  Each layer's input is ``a^{l-1}``; it returns z or a."""
        caches = []
        for layer in self.layers[start:]:
            a, cache = layer.forward(a)
            caches.append(cache)
        return a, caches

    def backward(self, delta: Array, caches: list[tuple]) -> tuple[Array, list[dict[str, Array]]]:
        """Backpropagate ``δ = ∂C/∂out`` through every layer (the seed's step 4);
        return ∂C/∂x and each layer's ``{name: ∂C/∂param}``."""
        grads: list[dict[str, Array]] = [{} for _ in self.layers]
        for i in range(len(self.layers) - 1, -1, -1):
            delta, grads[i] = self.layers[i].backward(delta, caches[i])
        return delta, grads

    def losses(self, out: Array, y: Array, groups: int = 1) -> Array:
        """Loss of each of ``groups`` stacked copies of the batch: out holds groups·N samples,
        group-major; returns of shape (groups,).  With groups=1, ``[C]``."""
        n = y.shape[0]
        y_rep = np.broadcast_to(y, (groups,) + y.shape).reshape((groups * n,) + y.shape[1:])
        return self.loss.per_sample(out, y_rep).reshape(groups, n).mean(axis=1)

    def gradients(self, x: Array, y: Array) -> tuple[float, Array, list[dict[str, Array]]]:
        """Analytic pass: loss C, ∂C/∂x and every layer's parameter gradients."""
        out, caches = self.forward(x)
        delta_x, grads = self.backward(self.loss.gradient(out, y), caches)
        return float(self.losses(out, y)[0]), delta_x, grads


@dataclass
class Problem:
    """A built network with its seeded input and targets."""

    config: Config
    net: Network
    x: Array
    y: Array
    rng: np.random.Generator


def build(config: Config) -> Problem:
    """Instantiate every layer (drawing its parameters), then x and y, from the seed."""
    rng = np.random.default_rng(config.seed)
    dtype = np.dtype(config.dtype)
    layers = []
    shape: tuple[int, ...] = config.in_shape
    for spec in config.layers:
        if spec.kind == "custom":
            layer = instantiate(spec.place, spec.cls, shape, rng, spec.options)
        else:
            layer = LAYERS[spec.kind](shape, rng, dtype=dtype, **spec.options)
        layers.append(layer)
        shape = tuple(layer.out_shape)
    loss = LOSSES[config.loss]()
    x = rng.normal(0.0, 1.0, size=(config.batch,) + tuple(config.in_shape)).astype(dtype)
    y = loss.targets(rng, config.batch, shape)
    if config.loss == "mse":
        y = y.astype(dtype)
    return Problem(config, Network(layers, config.layers, loss), x, y, rng)
