"""A network: the config's layers in order and a loss, plus the seeded draw of x and y.

Random draws, all from ``numpy.random.default_rng(config.seed)``, in this order:
each layer's parameters in layer order (W, then b), then the input x ~ N(0, 1) of shape
(batch, channels, height, width), then the targets y, then the entries to sample.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .blocks import Block
from .config import Config, LayerSpec, PluginError, instantiate
from .layers import LAYERS
from .losses import LOSSES
from .plugins import describe_exit, no_exit

Array = np.ndarray


@dataclass(frozen=True)
class Forwarded:
    """One layer's forward, already run on its input in the unperturbed pass: its output
    ``a^l`` and its cache (what ``backward`` takes back)."""

    out: Array
    cache: Any


def pure(layer: Any) -> bool:
    """Whether ``layer``'s forward is known to be a function of its input and parameters
    alone — a built-in layer, or a block of them — so that a call's output and cache can
    stand for another call's on the same input.  A user's layer (``PluginLayer``) never is:
    it may reuse a buffer, or count its calls."""
    if isinstance(layer, Block):
        return all(pure(inner) for path in layer.paths for inner in path)
    return not isinstance(layer, PluginLayer)


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

    def backward(self, delta: Array, caches: list[tuple],
                 inner: dict[tuple[int, ...], Array] | None = None) -> tuple[list[Array], list[dict[str, Array]]]:
        """Backpropagate ``δ = ∂C/∂out`` through every layer (the seed's step 4); return δ at
        every layer boundary — ``deltas[l] = ∂C/∂(input of layer l)``, as each layer passed
        it down, so ``deltas[0] = ∂C/∂x`` — and each layer's ``{name: ∂C/∂param}`` (a
        block's keyed ``"p.i.name"``, ``Block.refs``).  ``inner``, if given, receives δ at
        the input of every layer inside a block, keyed by its index path ``(3, 1, 0)``."""
        deltas: list[Array] = [None] * len(self.layers)  # type: ignore[list-item]
        grads: list[dict[str, Array]] = [{} for _ in self.layers]
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if isinstance(layer, Block):
                delta, grads[i], deeper = layer.backward_tree(delta, caches[i])
                if inner is not None:
                    inner.update({(i,) + sub: d for sub, d in deeper.items()})
            else:
                delta, grads[i] = layer.backward(delta, caches[i])
            deltas[i] = delta
        return deltas, grads

    def leaf(self, path: tuple[int, ...]) -> Any:
        """The layer at index path ``path``: ``(3,)`` top level, ``(3, 1, 0)`` inside block 3."""
        layer = self.layers[path[0]]
        return layer.leaf(path[1:]) if len(path) > 1 else layer

    def refs(self) -> list[tuple[tuple[int, ...], str, str]]:
        """Every parameter as (index path, name, key in its top-level layer's params), in
        draw order (depth-first)."""
        out = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Block):
                out += [((i,) + sub, name, key) for key, (sub, name) in layer.refs.items()]
            else:
                out += [((i,), name, name) for name in layer.params]
        return out

    def cost(self, out: Array, y: Array) -> float:
        """C: the batch mean of the per-sample loss of the last layer's output."""
        return float(np.mean(self.loss.per_sample(out, y)))

    def trace(self, x: Array, y: Array, inner: dict[tuple[int, ...], Array] | None = None,
              given: Sequence[Forwarded] = (), passes: list[Forwarded] | None = None
              ) -> tuple[float, list[Array], list[dict[str, Array]], list[Array]]:
        """One forward and one backward pass: C, δ at every layer boundary (``backward``;
        ``inner`` receives those inside blocks), every layer's parameter gradients, and
        every layer's output.  ``given``: the first layers' forwards, already run from this
        x (the structural checks' calls of ``pure`` layers), taken instead of calling them
        again; ``passes`` (a list) receives every layer's ``Forwarded``."""
        a, outputs, caches = x, [], []
        for i, layer in enumerate(self.layers):
            if i < len(given):
                a, cache = given[i].out, given[i].cache
            else:
                a, cache = layer.forward(a)
            outputs.append(a)
            caches.append(cache)
        if passes is not None:
            passes.extend(Forwarded(out, cache) for out, cache in zip(outputs, caches))
        deltas, grads = self.backward(self.loss.gradient(a, y), caches, inner)
        return self.cost(a, y), deltas, grads, outputs

    def gradients(self, x: Array, y: Array) -> tuple[float, Array, list[dict[str, Array]]]:
        """Analytic pass: loss C, ∂C/∂x and every layer's parameter gradients."""
        loss, deltas, grads, _ = self.trace(x, y)
        return loss, deltas[0], grads


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
    with np.errstate(over="ignore"):  # an init too large for float32 casts to inf: the check reports it, no warning
        layers, shape = build_layers(config.layers, config.in_shape, rng, dtype, config.seed)
    loss = LOSSES[config.loss]()
    x = rng.normal(0.0, 1.0, size=(config.batch,) + tuple(config.in_shape)).astype(dtype)
    y = loss.targets(rng, config.batch, shape)
    if config.loss == "mse":
        y = y.astype(dtype)
    return Problem(config, Network(layers, config.layers, loss), x, y, rng)


def build_layers(specs: list[LayerSpec], shape: tuple[int, ...], rng: np.random.Generator,
                 dtype: np.dtype, seed: int = 0) -> tuple[list[Any], tuple[int, ...]]:
    """The layers of ``specs`` on an input of ``shape``, drawn depth-first (a block's paths
    in order), and the output shape.  A torch layer is built under ``torch.manual_seed(seed)``."""
    layers: list[Any] = []
    for spec in specs:
        layer: Any
        if spec.kind == "custom":
            cls = spec.cls.with_seed(seed) if _is_torch(spec.cls) else spec.cls  # torch.manual_seed(seed)
            layer = PluginLayer(instantiate(spec.place, cls, shape, rng, spec.options), spec.place, shape)
        elif spec.kind == "block":
            paths = [build_layers(path, shape, rng, dtype, seed)[0] for path in spec.paths]
            layer = Block(paths, spec.options["merge"], shape, spec.out_shape)
        else:
            layer = LAYERS[spec.kind](shape, rng, dtype=dtype, **spec.options)
        layers.append(layer)
        shape = tuple(layer.out_shape)
    return layers, shape


def _is_torch(cls: Any) -> bool:
    from .torch_adapter import TorchLayer  # torch itself is imported only when such a layer is built

    return isinstance(cls, type) and issubclass(cls, TorchLayer)


class PluginLayer:
    """A user's layer behind the protocol's checks.  Each call's result is checked — forward
    returns ``(out, cache)`` with out of shape (n, *out_shape); backward returns
    ``(delta_prev, grads)`` with delta_prev of the input's shape and one gradient of the
    right shape per parameter — and whatever goes wrong is a PluginError naming the layer."""

    def __init__(self, layer: Any, place: str, in_shape: tuple[int, ...]) -> None:
        self.layer, self.place, self.in_shape = layer, place, tuple(in_shape)
        self.kind = type(layer).__name__
        self.out_shape = tuple(int(s) for s in layer.out_shape)
        # what the user's layer declares (CONVENTIONS.md), each False unless declared True;
        # a plugin offers the engine no shortcuts
        self.per_sample: bool = getattr(layer, "per_sample", False) is True
        self.complex_safe: bool = getattr(layer, "complex_safe", False) is True
        self.offers: frozenset[str] = frozenset()
        if hasattr(layer, "kink_state"):
            self.kink_state = self._kink_state

    @property
    def params(self) -> dict[str, Array]:
        return self.layer.params

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, behind ``plugins.no_exit``: an exception, ``sys.exit`` or
        ``os._exit`` in the user's code is a PluginError naming the layer (Ctrl-C passes)."""
        try:
            with no_exit():
                result = fn(*args)
        except PluginError:
            raise
        except SystemExit as e:  # sys.exit / os._exit: this config stops, the command goes on
            raise PluginError(self.place, f"{self.kind}.{what} {describe_exit(e)}") from e
        except Exception as e:  # the user's code: say which layer and what, not a traceback
            raise PluginError(self.place, f"{self.kind}.{what} raised {type(e).__name__}: {e}") from e
        if what != "kink_state" and not (isinstance(result, tuple) and len(result) == 2):
            raise PluginError(self.place, f"{self.kind}.{what} must return a pair "
                                          f"{'(out, cache)' if what == 'forward' else '(delta_prev, grads)'}, "
                                          f"got {type(result).__name__}")
        return result

    def forward(self, a: Array) -> tuple[Array, Any]:
        out, cache = self._call("forward", self.layer.forward, a)
        want = (a.shape[0],) + self.out_shape
        if np.shape(out) != want:
            raise PluginError(self.place, f"{self.kind}.forward returned shape {np.shape(out)}, expected {want}")
        # a copy: a layer may return one buffer, overwritten by its next call — and the differences keep
        # many calls' outputs at once (a wrong backward passed when every copy was the last one); in C
        # order: a Fortran-ordered output ((W @ a.T).T) passed on by elementwise layers lost the writes of
        # the layer scope's perturbations (reshape(-1) copied it)
        return np.array(out, copy=True, order="C"), cache

    def backward(self, delta: Array, cache: Any) -> tuple[Array, dict[str, Array]]:
        delta_prev, grads = self._call("backward", self.layer.backward, delta, cache)
        want = (delta.shape[0],) + self.in_shape
        if np.shape(delta_prev) != want:
            raise PluginError(self.place, f"{self.kind}.backward returned δ of shape {np.shape(delta_prev)}, "
                                          f"expected the input's {want}")
        if not isinstance(grads, dict) or set(grads) != set(self.params):
            got = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
            raise PluginError(self.place, f"{self.kind}.backward returned gradients for {got}, "
                                          f"expected one per parameter: {sorted(self.params)}")
        for name, g in grads.items():
            if np.shape(g) != self.params[name].shape:
                raise PluginError(self.place, f"{self.kind}.backward returned ∂C/∂{name} of shape {np.shape(g)}, "
                                              f"expected {self.params[name].shape}")
        grads = {k: np.array(v, copy=True, order="C") for k, v in grads.items()}
        return np.array(delta_prev, copy=True, order="C"), grads

    def _kink_state(self, cache: Any) -> Array | None:
        return self._call("kink_state", self.layer.kink_state, cache)
