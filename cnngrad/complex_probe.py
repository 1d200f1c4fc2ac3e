"""Can the complex step run through a layer?  Declared, or shown by a probe — never assumed.

The complex step ``Im C(θ + ih) / h`` is only right if every layer from the perturbed one
on carries the imaginary part.  A layer that writes into a float buffer, calls ``np.real``
or ``rfft2``, drops it: the imaginary part of the loss is then 0 or wrong, and reading that
as a derivative would "confirm" anything.  So a layer is usable when

* it is a built-in layer (they declare ``complex_safe = True``, and the suite proves it), or
* a probe shows it — for a user's layer that declares ``complex_safe = True`` (CONVENTIONS.md,
  "Layers of your own") too: a declaration is shown before it is used, and stands unshown
  only where the probe cannot tell (the output does not move along its direction).  The
  probe: forward on its real input ``a + i·h·v`` (v random, h = 1e-20) gives a complex,
  finite output whose real part is the real forward's to rounding and whose imaginary part,
  divided by h, is nonzero and matches a real central difference along v to that
  difference's own error (estimated from a second one at 2t) and 1e-8 of its size;
  the same for each parameter, perturbed the same way.

A numpy ComplexWarning (turned into an error here), a TypeError or anything else the layer
raises on complex input means: not available.  The probe draws from its own generator,
never the check's, so the check's numbers stay the same bit for bit.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import PluginError
from .finite_diff.shortcuts import capabilities, kink_state
from .network import Network, PluginLayer

Array = np.ndarray
STEP = 1e-20  # the imaginary step of the probe
NOTHING_MOVED = "its output does not move along a random direction here"
KINKED = "its kinks lie within the probe's step here, so the probe cannot show it keeps an imaginary part"
KINKED_WHOLE = "its kinks lie within the probe's step here and its kink state is not its output's, unit by " \
    "unit, so the probe cannot show it keeps an imaginary part"
UNSETTLED = "its real differences along the probe do not settle at any step tried, so the probe cannot show it " \
    "keeps an imaginary part"
SETTLED = 0.1  # a real difference whose own error is below this share of it can hold the imaginary part to it
AGREE = 1e-8  # beyond the real difference's own error (estimated from a second step): a forward that
# turns |a| into a modulus (y = a / (1 + 0.01|a|)) carries an imaginary part 1% off the derivative, and
# at the former 1e-2 its complex step "confirmed" a wrong backward


def declares(layer: object) -> bool:
    """Does the layer (or, behind a PluginLayer, the user's class) declare complex_safe?"""
    inner = layer.layer if isinstance(layer, PluginLayer) else layer
    return getattr(layer, "complex_safe", False) is True or getattr(inner, "complex_safe", False) is True


def trusted(layer: object) -> bool:
    """A built-in layer's declaration is taken (the test suite proves each); a user's is shown
    first, as its ``linear = True`` is: a batch norm declared complex_safe that takes np.var
    (a real mean of |x − μ|² on complex input) lost the variance's derivative, and its complex
    step "confirmed" a backward missing that term (a QA pass: a false PASS).  A block is
    trusted when every layer inside it is."""
    from .blocks import Block

    if isinstance(layer, PluginLayer):
        return False
    if isinstance(layer, Block):
        return all(trusted(inner) for path in layer.paths for inner in path)
    return declares(layer)


def class_name(layer: object) -> str:
    return layer.kind if isinstance(layer, PluginLayer) else type(layer).__name__


def carries(fn: Callable[[Array], Array], base: Array, rng: np.random.Generator,
            states: Callable[[Array], Array | None] | None = None) -> str:
    """Whether ``fn`` keeps an imaginary part put on ``base``: "" if it does, else why not.
    ``states``: the layer's kink state at an input (it declares ``kink_state``): where the
    real difference along v crosses a kink the imaginary part cannot be held to it (a tied max
    pool) — it is held to it on the units that crossed none (a state of the output's shape),
    and the probe says it cannot tell (``KINKED``) only where no unit is left to compare."""
    v = rng.standard_normal(base.shape)
    real_dtype = np.result_type(base.dtype, np.float32)
    unit = float(np.finfo(real_dtype).eps)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        try:
            f0 = np.asarray(fn(base))
            fc = np.asarray(fn(base + 1j * STEP * v.astype(real_dtype)))
        except Exception as e:  # a plugin that is real-only: any error on complex input
            cause = e.__cause__ if isinstance(e, PluginError) and e.__cause__ is not None else e
            return f"its forward raised {type(cause).__name__} on complex input"
        if not np.iscomplexobj(fc):
            return "its forward returns a real array for complex input (np.real, a float buffer?)"
        if not (np.all(np.isfinite(fc)) and np.all(np.isfinite(f0))):
            return "its forward is not finite on complex input"
        scale = float(np.max(np.abs(f0), initial=0.0)) + 1.0
        if np.max(np.abs(fc.real - f0), initial=0.0) > np.sqrt(unit) * scale:
            return "the real part of its complex output is not its real output"
        t0 = unit ** (1 / 3) * (1.0 + float(np.max(np.abs(base), initial=0.0)))
        for t in (t0, t0 / 16, t0 / 256):  # the first step whose real difference settles (its own error small)
            up, down = np.asarray(fn(base + t * v), dtype=np.float64), np.asarray(fn(base - t * v), dtype=np.float64)
            d_real = (up - down) / (2 * t)
            up2, down2 = np.asarray(fn(base + 2 * t * v), dtype=np.float64), np.asarray(fn(base - 2 * t * v),
                                                                                       dtype=np.float64)
            own_error = 10 * np.linalg.norm((up2 - down2) / (4 * t) - d_real)  # truncation, 4x at 2t: ≥ 3x its own
            if own_error <= SETTLED * np.linalg.norm(d_real):
                break
        d_imag = fc.imag.astype(np.float64) / STEP
    gap = np.linalg.norm(d_imag - d_real)
    allowed = 10 * unit * np.linalg.norm(f0.astype(np.float64)) / t + own_error  # the real difference's error
    if not np.any(d_imag):
        if np.linalg.norm(d_real) <= allowed:
            return f"{NOTHING_MOVED}, so the probe cannot show it keeps an imaginary part (declare " \
                   "complex_safe = True if it does)"
        return "its forward drops the imaginary part (np.real, a float buffer, rfft2?)"
    if own_error > SETTLED * np.linalg.norm(d_real) and np.linalg.norm(d_real) > allowed - own_error:
        # the real difference does not settle at any step tried (sin(1e5·a)/1e5): its allowance would
        # swallow any mismatch — a false complex_safe passed so (a QA pass)
        return UNSETTLED
    if not gap <= AGREE * (np.linalg.norm(d_real) + np.linalg.norm(d_imag)) + allowed:
        s0 = None if states is None else states(base)
        if states is not None and s0 is not None:
            held = np.ones(np.shape(s0), dtype=bool)  # units on the same side of their kinks all along
            for k in (1, -1, 2, -2):
                held &= np.asarray(states(base + k * t * v)) == s0
            if held.all():
                return "its imaginary part does not follow the derivative"
            if held.shape != d_imag.shape:  # no unit to hold apart: it cannot tell, and a declaration
                return KINKED_WHOLE             # does not stand on that (a per-sample argmax, a QA pass)
            if not held.any():
                return KINKED
            # the units that crossed no kink along the probe: there the imaginary part must follow (a layer
            # with a relu and a real np.var had dodged the probe wherever one of its units sat near 0)
            part = np.linalg.norm((d_imag - d_real)[held])
            size = np.linalg.norm(d_real[held]) + np.linalg.norm(d_imag[held])
            return "" if part <= AGREE * size + allowed else "its imaginary part does not follow the derivative"
        return "its imaginary part does not follow the derivative"
    return ""


class ComplexProbe:
    """Which layers of ``net`` (on input x) can carry the complex step, probed once each."""

    def __init__(self, net: Network, x: Array) -> None:
        self.net, self.x = net, x
        self._inputs: list[Array] = [x]
        self._said: dict[tuple[int, str | None], str] = {}

    def _input(self, i: int) -> Array:
        while len(self._inputs) <= i:
            self._inputs.append(self.net.layers[len(self._inputs) - 1].forward(self._inputs[-1])[0])
        return self._inputs[i]

    def why_not(self, i: int, param: str | None = None) -> str:
        """Why layer i cannot carry an imaginary part on its input (``param`` None) or on
        that parameter; "" if it can (declared, or shown by the probe)."""
        key = (i, param)
        if key not in self._said:
            layer = self.net.layers[i]
            rng = np.random.default_rng([i, 0 if param is None else 1 + sorted(layer.params).index(param)])
            if trusted(layer):
                self._said[key] = ""
                return ""
            caps = capabilities(layer)
            if param is None:
                states = None if not caps.kink_state else lambda a: kink_state(layer, caps, layer.forward(a)[1])
                why = carries(lambda a: layer.forward(a)[0], self._input(i), rng, states)
            else:
                run = self._with_param(i, param, cache=True)
                states = None if not caps.kink_state else lambda P: kink_state(layer, caps, run(P)[1])
                why = carries(lambda P: run(P)[0], layer.params[param], rng, states)
            if why and declares(layer):  # a declaration the probe cannot refute (nothing moved, kinks) stands
                why = "" if why.startswith(NOTHING_MOVED) or why == KINKED else f"declared complex_safe, but {why}"
            self._said[key] = why
        return self._said[key]

    def _with_param(self, i: int, name: str, cache: bool = False) -> Callable[[Array], Any]:
        """Layer i's forward on its input with parameter ``name`` set to P: its output, or
        (``cache``) the output and the cache."""
        layer, a = self.net.layers[i], self._input(i)

        def run(P: Array) -> Any:
            original = layer.params[name]
            layer.params[name] = P
            try:
                out = layer.forward(a)
            finally:
                layer.params[name] = original
            return out if cache else out[0]

        return run

    def unavailable(self, start: int, param: str | None = None) -> str:
        """For a tensor of layer ``start`` (a parameter, or δ at its input with ``param``
        None): "complex step not available for layer i (Class): why" for the first layer on
        its way to the loss that cannot carry the imaginary part, or ""."""
        for i in range(start, len(self.net.layers)):
            why = self.why_not(i, param if i == start else None)
            if why:
                return f"complex step not available for layer {i} ({class_name(self.net.layers[i])}): {why}"
        return ""

    def network(self) -> str:
        """The same sentence for the first layer that cannot carry it on its input or on
        any of its parameters (``--method complex`` needs every one), or ""."""
        for i, layer in enumerate(self.net.layers):
            for param in [None, *layer.params]:
                why = self.why_not(i, param)
                if why:
                    return f"complex step not available for layer {i} ({class_name(layer)}): {why}"
        return ""
