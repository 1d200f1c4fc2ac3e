"""PyTorch layers inside a cnngrad network: ``custom: {class: "mod:Layer", framework: torch}``.

:func:`adapter` turns an ``nn.Module`` (a class, or an instance from the Python API) or an
``autograd.Function`` subclass into a class with the plugin protocol (CONVENTIONS.md, "Layers
of your own"), so everything else — kinks, localisation, diagnosis, reports — is unchanged:

* built as ``Class(**options)`` under ``torch.manual_seed(config seed)`` (the global torch
  generator is restored afterwards: ``torch.random.fork_rng``); an instance is deep-copied.
  Its ``named_parameters()`` are the layer's parameters, names as torch gives them
  (``conv.weight``); the copy is cast to float64 and runs on the CPU.
* a Function runs as ``Fn.apply(x, *params, **options)``; its parameters are none, or
  declared with the option ``params: {name: shape}`` (drawn from a torch generator seeded
  with the config seed: N(0, 1/fan_in), fan_in = prod(shape[1:]); 1-D ones N(0, 0.1²)).
* forward: ``z = layer(a)`` in float64 on copies of a and of the parameters (``params``
  is read at every call: the finite differences replace its arrays), the graph kept in the
  cache; the output is cast back to a's dtype.
* backward: ``(∂C/∂a, {name: ∂C/∂θ}) = torch.autograd.grad(z, (a, θ…), δ, retain_graph=True)``
  on the cached graph — the layer's own ``backward`` is what runs — so a second call on the
  same cache gives the same numbers; an input the graph does not reach gets zeros.  The
  cache shows the saved input and parameters as arrays sharing memory with the tensors,
  and δ is handed to torch without a copy, so a backward that writes into them is caught
  by the structural checks.
* declares ``complex_safe = False`` (complex input is refused, so the complex step is
  not taken through it), ``per_sample`` only if the module or Function declares it, and
  ``kink_state`` if it defines ``kink_state(x) -> array`` of shape (n, …) (x the
  layer's input, a float64 tensor of shape (n, *in_shape); the module's parameters hold the
  values of that call; a Function's is called as ``kink_state(x, *params)``) saying which
  side of each ReLU / max-pool kink every unit is on — and for the stock kinked modules
  (``nn.MaxPool1d/2d/3d``, ``nn.AdaptiveMaxPool1d/2d/3d``, ``nn.ReLU``, ``nn.LeakyReLU``,
  ``nn.ReLU6``, ``nn.Hardtanh``: ``stock_kinks``) by what they are.

torch runs with one intra-op thread during these calls (restored after), so the numbers are
the same bit for bit whether the differences run here or on forked workers.  torch is
imported only when a torch layer is built: ``import cnngrad`` never imports it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

Array = np.ndarray
INSTALL = "pip install 'cnngrad[torch]'"


class TorchUnavailable(ImportError):
    """torch cannot be imported; the message says how to install it."""


def require_torch() -> Any:
    """The torch module, or TorchUnavailable saying ``pip install 'cnngrad[torch]'``."""
    try:
        import torch
    except ImportError as e:
        raise TorchUnavailable(f"framework torch needs PyTorch, which cannot be imported ({e}): {INSTALL}") from None
    return torch


def is_function(target: Any) -> bool:
    torch = require_torch()
    return isinstance(target, type) and issubclass(target, torch.autograd.Function)


def is_torch_layer(target: Any) -> bool:
    """An nn.Module (class or instance) or an autograd.Function subclass."""
    torch = require_torch()
    return is_function(target) or isinstance(target, torch.nn.Module) or (
        isinstance(target, type) and issubclass(target, torch.nn.Module))


def adapter(target: Any) -> type[TorchLayer]:
    """The plugin-protocol class for ``target``, named after it (rows show that name)."""
    if not is_torch_layer(target):
        raise TypeError(f"{target!r} is not an nn.Module (class or instance) nor an autograd.Function subclass")
    name = target.__name__ if isinstance(target, type) else type(target).__name__
    return type(name, (TorchLayer,), {"target": target, "__module__": __name__})


@contextmanager
def _one_thread(torch: Any) -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _tensor(torch: Any, a: Array, grad: bool = False) -> Any:
    """A float64 tensor copy of ``a`` (a leaf that requires grad when ``grad``)."""
    if np.iscomplexobj(a):
        raise TypeError("a torch layer runs in real float64 only (complex input refused)")
    return torch.tensor(np.asarray(a), dtype=torch.float64).requires_grad_(grad)


def _shared(torch: Any, a: Array) -> Any:
    """δ as a float64 tensor, without a copy where it can share a's memory."""
    a = np.asarray(a)
    if a.dtype == np.float64 and a.flags.writeable and all(s >= 0 for s in a.strides):
        return torch.from_numpy(a)
    return torch.tensor(a, dtype=torch.float64)


def _write_back(copy: Array, original: Any) -> None:
    """Where torch's copy of an array changed, change the array too (if it can be written)."""
    if isinstance(original, np.ndarray) and original.flags.writeable and copy.shape == original.shape \
            and not np.array_equal(copy, original, equal_nan=True):
        np.copyto(original, copy.astype(original.dtype, copy=False))


class _Graph:
    """What forward leaves for backward: the leaves, the output, the input's dtype."""

    def __init__(self, x: Any, params: dict[str, Any], out: Any, dtype: np.dtype) -> None:
        self.x, self.params, self.out, self.dtype = x, params, out, dtype


class TorchLayer:
    """A torch module or Function with the plugin protocol (module docstring).
    ``forward(a)`` with a of shape (n, *in_shape) -> (z of shape (n, *out_shape), cache);
    ``backward(δ, cache)`` -> (∂C/∂a of a's shape, {name: ∂C/∂θ})."""

    target: ClassVar[Any]
    seed: ClassVar[int] = 0
    complex_safe = False

    @classmethod
    def with_seed(cls, seed: int) -> type[TorchLayer]:
        """This class, built under ``torch.manual_seed(seed)`` (the config's seed)."""
        return type(cls.__name__, (cls,), {"seed": int(seed), "__module__": __name__})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, **options: Any) -> None:
        torch = require_torch()
        target, self.in_shape = type(self).target, tuple(in_shape)
        self.function = target if is_function(target) else None
        self.module: Any = None
        self.options: dict[str, Any] = {}
        if self.function is not None:
            shapes = options.pop("params", None) or {}
            if not isinstance(shapes, dict):
                raise TypeError("params: expected a mapping {name: shape}")
            self.options = options
            g = torch.Generator().manual_seed(type(self).seed)
            self.params = {str(k): _draw(torch, g, v) for k, v in shapes.items()}
            declared: Any = self.function
        else:
            if isinstance(target, torch.nn.Module):
                if options:
                    raise TypeError(f"an already built module takes no options, got {sorted(options)}")
                module = copy.deepcopy(target)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(type(self).seed)
                    module = target(**options)
            self.module = module.to(device="cpu", dtype=torch.float64)
            self.params = {k: p.detach().numpy().copy() for k, p in self.module.named_parameters()}
            declared = self.module
        self._in_place = False  # whether forward needs ``x * 1`` (``_run``)
        with torch.random.fork_rng(devices=[]):  # the stream forward draws from (``_run``)
            torch.manual_seed(type(self).seed)
            self._rng = torch.get_rng_state()
        self.per_sample = getattr(declared, "per_sample", False) is True
        self._stock = None if self.module is None else stock_kinks(torch, self.module)
        if callable(getattr(declared, "kink_state", None)) or self._stock is not None:
            self.kink_state = self._kink_state
        probe = np.random.default_rng(0).standard_normal((2,) + self.in_shape)
        out, _ = self.forward(probe)
        self.out_shape = tuple(int(s) for s in out.shape[1:])

    def _run(self, x: Any, params: dict[str, Any]) -> Any:
        """The target on x, on a random stream of its own: a module that draws (dropout in
        training mode) must not move the user's global torch generator (a QA pass).  A module
        that works in place on its input (``nn.ReLU(inplace=True)``) cannot take the leaf
        itself ("a leaf Variable that requires grad is being used in an in-place operation":
        it was refused, a QA pass): it gets ``x * 1``, as gradcheck's users give it — only it,
        so that what a Function saves of x is x (the cache shows it: a backward writing into
        it is caught)."""
        torch = require_torch()
        user = torch.get_rng_state()
        torch.set_rng_state(self._rng)
        try:
            try:
                return self._apply(x * 1 if self._in_place else x, params)
            except RuntimeError as e:
                if self._in_place or "leaf Variable that requires grad" not in str(e):
                    raise
                self._in_place = True
                return self._apply(x * 1, params)
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(user)

    def _apply(self, x: Any, params: dict[str, Any]) -> Any:
        if self.function is not None:
            return self.function.apply(x, *params.values(), **self.options)
        return require_torch().func.functional_call(self.module, params, (x,))

    def forward(self, a: Array) -> tuple[Array, tuple]:
        """z = layer(a), by torch in float64; the cache is (a, {name: θ}, graph), the
        arrays sharing memory with the graph's leaves."""
        torch = require_torch()
        x = _tensor(torch, a, grad=True)
        params = {k: _tensor(torch, v, grad=True) for k, v in self.params.items()}
        with _one_thread(torch), torch.enable_grad():
            out = self._run(x, params)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"forward must return one tensor, got {type(out).__name__}")
        # what forward wrote into its input (``x.data.mul_``) or its parameters (``W.data.add_``) lands in
        # torch's copies: written back, the structural checks see it as they do in a numpy layer's (a QA pass)
        _write_back(x.detach().numpy(), a)
        for k, p in params.items():
            _write_back(p.detach().numpy(), self.params[k])
        graph = _Graph(x, params, out, np.asarray(a).dtype)
        cache = (x.detach().numpy(), {k: p.detach().numpy() for k, p in params.items()}, graph)
        return out.detach().numpy().astype(graph.dtype, copy=True), cache

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """(∂C/∂a, {name: ∂C/∂θ}) = torch.autograd.grad(z, (a, θ…), grad_outputs=δ) on the
        cached graph (retained: backward may be called again on the same cache)."""
        torch, graph = require_torch(), cache[2]
        leaves = [graph.x, *graph.params.values()]
        grads: list[Any] = [None] * len(leaves)
        if graph.out.requires_grad:
            given = _shared(torch, delta)
            with _one_thread(torch):
                grads = list(torch.autograd.grad(graph.out, leaves, grad_outputs=given,
                                                 retain_graph=True, allow_unused=True))
            if not np.shares_memory(given.numpy(), delta):  # δ was copied (float32): a write into it shows
                _write_back(given.numpy(), delta)  # as it would have in float64 (the structural checks see it)
        arrays = [np.zeros(leaf.shape) if g is None else g.detach().numpy() for leaf, g in zip(leaves, grads)]
        delta_prev = arrays[0].astype(graph.dtype, copy=True)
        return delta_prev, {k: g.astype(graph.dtype, copy=True) for k, g in zip(graph.params, arrays[1:])}

    def _kink_state(self, cache: tuple) -> Array:
        """The target's ``kink_state`` at the cached input and parameters: a Function's as
        ``kink_state(x, *params)``; a module's as ``kink_state(x)``, its parameters set first."""
        torch, graph = require_torch(), cache[2]
        params = {k: p.detach() for k, p in graph.params.items()}
        with _one_thread(torch), torch.no_grad():
            if self.function is not None:
                state = self.function.kink_state(graph.x.detach(), *params.values())
            elif self._stock is not None:  # a stock module's kinks, by what it is (``stock_kinks``)
                state = self._stock(graph.x.detach())
            else:
                for name, p in self.module.named_parameters():  # our copy: set to the perturbed values
                    p.copy_(params[name])
                state = self.module.kink_state(graph.x.detach())
        return state.numpy() if isinstance(state, torch.Tensor) else np.asarray(state)


def stock_kinks(torch: Any, module: Any) -> Any:
    """``x -> kink state`` for a stock torch module of exactly a kinked kind (not a subclass,
    whose forward may differ), else None: max pooling's argmax indices (``return_indices``),
    which side of 0 (and of the upper clip) a ReLU / leaky ReLU / ReLU6 / Hardtanh unit is on.
    Undeclared, a correct nn.MaxPool2d after a ReLU was failed and blamed: the ReLU's exact
    zeros tie in its windows, and central differences straddled the ties (a QA pass)."""
    nn, F = torch.nn, torch.nn.functional
    m, kind = module, type(module)
    pools = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}
    adaptive = {nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d,
                nn.AdaptiveMaxPool3d: F.adaptive_max_pool3d}
    if kind in pools:
        return lambda x: pools[kind](x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
                                     return_indices=True)[1]
    if kind in adaptive:
        return lambda x: adaptive[kind](x, m.output_size, return_indices=True)[1]
    if kind in (nn.ReLU, nn.LeakyReLU):
        return lambda x: x > 0
    if kind is nn.ReLU6:
        return lambda x: (x > 0).to(torch.int8) + (x > 6).to(torch.int8)
    if kind is nn.Hardtanh:
        return lambda x: (x > m.min_val).to(torch.int8) + (x > m.max_val).to(torch.int8)
    return None


def _draw(torch: Any, g: Any, shape: Any) -> Array:
    """A declared parameter: its values (a tensor or array, from the Python API), or drawn for
    a ``shape``: N(0, 1/fan_in), fan_in = prod(shape[1:]); 1-D: N(0, 0.1²)."""
    if isinstance(shape, (np.ndarray, torch.Tensor)):
        return np.array(shape.detach().cpu() if isinstance(shape, torch.Tensor) else shape, dtype=np.float64)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise TypeError(f"a parameter's shape must be a list of positive integers, got {shape!r}")
    scale = 0.1 if len(dims) == 1 else 1 / math.sqrt(math.prod(dims[1:]))
    return (torch.randn(dims, generator=g, dtype=torch.float64) * scale).numpy()


def check_layer(layer: Any, input_shape: tuple[int, ...], *, batch: int = 2, seed: int = 0, loss: str = "mse",
                options: dict[str, Any] | None = None, params: dict[str, Any] | None = None, classes: int = 4,
                **check_options: Any) -> Any:
    """Check a torch layer's backward inside a small random network; returns the ``Report``.

    ``layer``: an ``nn.Module`` instance (checked with its own parameter values), an
    ``nn.Module`` subclass (built as ``layer(**options)`` under ``torch.manual_seed(seed)``)
    or an ``autograd.Function`` subclass (run as ``layer.apply(x, *params, **options)``;
    ``params`` maps each parameter's name to its shape, or to its values).
    ``input_shape``: one sample's, (channels, height, width) or (features,); x of shape
    (batch, *input_shape) ~ N(0, 1) from ``seed``.  ``loss``: ``"mse"`` — the layer alone,
    ``C = 1/(2N) Σ_n ‖z_n − y_n‖²`` with random targets y; ``"softmax_cross_entropy"`` —
    the layer, then flatten and a dense head of ``classes`` units.  ``check_options``: as
    ``cnngrad.check`` (eps, tol, method, samples, directions, localize, …)."""
    require_torch()
    from . import checker

    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"input_shape: expected (channels, height, width) or (features,), got {input_shape!r}")
    spec: dict[str, Any] = {"class": layer, "framework": "torch", **(options or {})}
    if params is not None:
        spec["params"] = params
    layers: list[Any] = [{"custom": spec}]
    if len(shape) == 1:  # x of shape (n, F, 1, 1), flattened to (n, F) for the layer
        shape, layers = (shape[0], 1, 1), ["flatten", *layers]
    if loss == "softmax_cross_entropy":
        layers += ["flatten", {"dense": {"units": classes}}]
    name = layer.__name__ if isinstance(layer, type) else type(layer).__name__
    raw = {"name": f"check_layer({name})", "seed": seed, "loss": loss, "layers": layers,
           "input": {"batch": batch, "channels": shape[0], "height": shape[1], "width": shape[2]}}
    return checker.check(raw, plugins=True, **check_options)
