"""Built-in layers: each ``forward`` returns ``(out, cache)``; ``backward(delta, cache)``
sits right under it and returns ``(delta_prev, {name: nabla})``.

Every layer follows the plugin protocol of CONVENTIONS.md ("Layers of your own")::

    __init__(in_shape, rng, **options);  out_shape;  params;  forward;  backward

No layer keeps state between calls: perturbing an entry of ``params`` in place is all a
finite-difference check needs.  Arrays are NCHW, shapes in docstrings are per batch.

Optional: ``kink_state(cache)`` returns, per sample, which side of a non-differentiable
point each unit is on (relu's sign mask, a max-pool window's argmax); the checker uses it
to tell a stencil that crossed a kink from a wrong gradient.

Declared, as CONVENTIONS.md lets a layer declare: every built-in layer is ``per_sample``
(sample n of the output depends on sample n of the input only) and ``complex_safe`` (its
arithmetic keeps an imaginary part; relu and max follow the real part), and ``offers`` the
finite-difference shortcuts it implements (``finite_diff.shortcuts.Shortcuts``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from . import conv as C
from . import grouped as GC

if TYPE_CHECKING:
    from .finite_diff.shortcuts import Shortcut

Array = np.ndarray


# --------------------------------------------------------------------------- init


def init_weights(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
                 init: str | dict) -> Array:
    """Draw W: lecun N(0, 1/fan_in), he N(0, 2/fan_in), xavier N(0, 2/(fan_in+fan_out)),
    ``{normal: σ}`` N(0, σ²)."""
    if isinstance(init, dict):
        std = float(init["normal"])
    else:
        std = {"lecun": np.sqrt(1.0 / fan_in), "he": np.sqrt(2.0 / fan_in),
               "xavier": np.sqrt(2.0 / (fan_in + fan_out))}[init]
    return rng.standard_normal(size=shape) * std  # bit for bit normal(0, std): 0 + std·z, 15% faster


BIAS_STD = 0.1  # biases ~ N(0, 0.1²)


# --------------------------------------------------------------------------- conv


class Conv:
    """2-D convolution layer, weighted input ``z^l`` from ``a^{l-1}``.

    a_prev of shape (n, c, h, w) -> z of shape (n, filters, ho, wo);
    ``W`` of shape (filters, c, kh, kw); ``b`` of shape (filters,) (``bias: tied``),
    (filters, ho, wo) (``untied``, the seed's ``b_{x,y}``) or absent (``none``).
    ``mode: correlation``: ``z = W ⋆ ã + b``;  ``mode: convolution``: ``z = ROT180(W) ⋆ ã + b
    = W * ã + b`` (the seed's true convolution).
    ``groups``: W of shape (filters, c/groups, kh, kw), filter o reading only its own
    contiguous group of channels (``grouped.py``; ``groups: c`` is depthwise).
    """

    kind = "conv"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"perturbed", "input_delta", "window"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, filters: int,
                 kernel: Any = 3, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 bias: str = "tied", mode: str = "correlation", init: str | dict = "lecun",
                 groups: int = 1, dtype: Any = np.float64) -> None:
        c, h, w = self.in_shape = tuple(in_shape)
        self.groups = int(groups)
        self.k, self.s, self.p, self.d = C.pair(kernel), C.pair(stride), C.pair(padding), C.pair(dilation)
        self.mode, self.bias = mode, bias
        ho = C.out_size(h, self.k[0], self.s[0], self.p[0], self.d[0])
        wo = C.out_size(w, self.k[1], self.s[1], self.p[1], self.d[1])
        self.out_shape = (filters, ho, wo)
        cg = c // self.groups
        fan_in, fan_out = cg * self.k[0] * self.k[1], filters * self.k[0] * self.k[1]
        self.params = {"W": init_weights(rng, (filters, cg) + self.k, fan_in, fan_out, init).astype(dtype, copy=False)}
        if bias == "tied":
            self.params["b"] = rng.normal(0.0, BIAS_STD, size=(filters,)).astype(dtype)
        elif bias == "untied":
            self.params["b"] = rng.normal(0.0, BIAS_STD, size=(filters, ho, wo)).astype(dtype)

    def _kernel(self) -> Array:
        """The kernel actually slid over the input: W, or ROT180(W) for a true convolution."""
        W = self.params["W"]
        return C.rot180(W) if self.mode == "convolution" else W

    def _dense(self) -> Array:
        """The slid kernel as an ungrouped one, of shape (filters, c, kh, kw) (zero outside
        each filter's group; the kernel itself when groups is 1): what the shortcuts use."""
        K = self._kernel()
        return K if self.groups == 1 else GC.dense_kernel(K, self.groups, self.in_shape[0])

    def forward(self, a_prev: Array) -> tuple[Array, tuple]:
        """``z = K ⋆ ã + b``: ã's windows unrolled and multiplied by K (``conv.correlate``: one
        im2col and one matmul, or at stride 1 kw shifted copies and kh matmuls).  The cache is
        ``(ã,)`` only: the windows are unrolled again by the backward, which is cheaper
        than holding them — the memory of every layer's columns at once is what made a
        forward + backward slow (fresh pages on every pass)."""
        a_pad = C.pad(a_prev, self.p)  # ã^{l-1}
        if self.groups == 1:  # conv.correlate: at stride 1 unrolled along rows only
            z = C.correlate(a_pad, self._kernel(), self.s, self.d)
        else:
            z = GC.correlate(C.im2col(a_pad, self.k, self.s, self.d), self._kernel(), self.groups,
                             self.out_shape[1:])
        if self.bias == "tied":
            z += self.params["b"][:, None, None]
        elif self.bias == "untied":
            z += self.params["b"]
        return z, (a_pad,)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^{l-1} = δ^l * ROT180(w^l)`` (full convolution; for ``correlation`` mode the
        kernel slid is W itself, so this is the full convolution of δ with W), cropped by
        the padding; ``∂C/∂W = ã^{l-1} ⋆ δ^l`` (valid correlation; ROT180 of it in
        ``convolution`` mode: the seed's ``δ * σ(ROT180(z^{l-1}))``); ``∂C/∂b = Σ δ``.
        Grouped: the same, each group of filters with its own channels (``grouped.py``)."""
        (a_pad,) = cache
        if self.groups == 1:
            nabla_w = C.weight_grad(a_pad, delta, self.k, self.s, self.d)
            # the full convolution, cropped (conv.input_delta: padded δ ⋆ ROT180(K), or col2im of Kᵀδ)
            in_hw = (a_pad.shape[-2] - 2 * self.p[0], a_pad.shape[-1] - 2 * self.p[1])
            delta_prev = C.input_delta(delta, self._kernel(), in_hw, self.p, self.s, self.d)
        else:
            nabla_w = GC.weight_grad(C.im2col(a_pad, self.k, self.s, self.d), delta, self.groups, self.k)
            full = GC.full_convolve(delta, self._kernel(), self.groups, a_pad.shape[-2:], self.s, self.d)
            delta_prev = C.crop(full, self.p)
        grads = {"W": C.rot180(nabla_w) if self.mode == "convolution" else nabla_w}
        if self.bias == "tied":
            grads["b"] = delta.sum(axis=(0, 2, 3))
        elif self.bias == "untied":
            grads["b"] = delta.sum(axis=0)
        return delta_prev, grads

    def forward_perturbed(self, z: Array, cache: tuple, name: str, indices: Array,
                          steps: Array) -> tuple[Array, Array]:
        """z for G perturbations ``θ_g = θ + steps[g]·e_{indices[g]}`` at once.  Each moves one
        output channel only; returns that channel per g, of shape (G,), and its new values,
        of shape (G, n, ho, wo).  z is linear in W and b, so ``z(θ_g) = z + steps[g]·∂z/∂θ``:
        W[o,c,u,v] adds ``steps[g]·ã[:, c, i·s+u·d, j·s+v·d]`` to channel o (tap u,v of the
        slid kernel: ROT180'd in convolution mode); b adds ``steps[g]`` where it is added."""
        t = steps[:, None, None, None]
        if name == "W":
            o, c, u, v = np.unravel_index(indices, self.params["W"].shape)
            if self.mode == "convolution":
                u, v = self.k[0] - 1 - u, self.k[1] - 1 - v
            c = c + (o // (self.out_shape[0] // self.groups)) * self.params["W"].shape[1]  # the input channel
            cols = C.windows(cache[0], self.k, self.s, self.d)  # (n, c, ho, wo, kh, kw), a view
            return o, z[:, o].swapaxes(0, 1) + t * cols[:, c, :, :, u, v]
        if self.bias == "tied":
            return indices, z[:, indices].swapaxes(0, 1) + t
        o, i, j = np.unravel_index(indices, self.params["b"].shape)
        values = z[:, o].swapaxes(0, 1).astype(np.result_type(z, steps))  # (G, n, ho, wo), a copy
        values[np.arange(len(indices)), :, i, j] += steps[:, None]
        return o, values

    def forward_input_delta(self, delta: Array, channel: int) -> Array:
        """How z moves when input channel ``channel`` moves by delta (of shape (m, h, w)):
        z is linear in its input, ``Δz = K[:, channel] ⋆ pad(Δ)``, of shape (m, filters, ho, wo)."""
        K = self._dense()[:, channel : channel + 1]
        return C.correlate(C.pad(delta[:, None], self.p), K, self.s, self.d)

    def window(self, y0: Array, x0: Array, h: int, w: int, tight: bool = False) -> tuple[Array, Array, int, int]:
        """The output window (i0, j0, wh, ww) an input change inside the h×w windows at
        (y0, x0) can reach (``conv.window_after``; ``tight``: no larger than these rows need)."""
        i0, wh = C.window_after(y0, h, self.out_shape[1], self.k[0], self.s[0], self.p[0], self.d[0], tight)
        j0, ww = C.window_after(x0, w, self.out_shape[2], self.k[1], self.s[1], self.p[1], self.d[1], tight)
        return i0, j0, wh, ww

    def window_delta(self, delta: Array, y0: Array, x0: Array, i0: Array, j0: Array, wh: int,
                     ww: int) -> Array:
        """How z moves in its wh×ww window at (i0, j0) when the input moves by delta (of
        shape (G, c, h, w)) inside the window at (y0, x0), and nowhere else.  z is linear in
        its input: ``Δz = K ⋆ Δ`` over just the padded input rows and columns the window reads."""
        rh = (wh - 1) * self.s[0] + (self.k[0] - 1) * self.d[0] + 1
        rw = (ww - 1) * self.s[1] + (self.k[1] - 1) * self.d[1] + 1
        region = np.zeros((len(y0), delta.shape[1], rh, rw), dtype=delta.dtype)
        C.paste_at(region, delta, y0 + self.p[0] - i0 * self.s[0], x0 + self.p[1] - j0 * self.s[1])
        return C.correlate(region, self._dense(), self.s, self.d)


# --------------------------------------------------------------------------- activations


def _real(a: Array) -> Array:
    """The real part, where the complex step makes a complex; branches (relu, max) follow it."""
    return a.real if np.iscomplexobj(a) else a


def _tail(z: Array, scale: float) -> tuple[Array, Array]:
    """``(Re z ≥ 0, e^(−scale·|z|))``, with |z| continued analytically (``z`` or ``−z`` by
    the sign of Re z), so complex-safe; never overflows, and the small side keeps all its
    digits (``1 + tanh z`` or ``1 − a`` near saturation keeps only a few)."""
    pos = _real(z) >= 0
    return pos, np.exp(-scale * np.where(pos, z, -z))


def _sigmoid(z: Array) -> Array:
    """``σ(z) = 1/(1 + e^−z)``, as ``e^z/(1 + e^z)`` where Re z < 0: relative accuracy on
    both sides (a tiny σ is exact, not ``1 + tanh`` to a few digits)."""
    pos, e = _tail(z, 1.0)
    return np.where(pos, 1.0 / (1.0 + e), e / (1.0 + e))


def _sigmoid_prime(z: Array) -> Array:
    """``σ'(z) = σ(z)(1 − σ(z)) = e^−|z| / (1 + e^−|z|)²`` — from z, not from a = σ(z): with
    a ≈ 1, ``a(1 − a)`` keeps only the digits of 1 − a (3 of them at z ≈ 30)."""
    _, e = _tail(z, 1.0)
    return e / (1.0 + e) ** 2


def _tanh_prime(z: Array) -> Array:
    """``tanh'(z) = 1 − tanh²z = sech²z = 4e^−2|z| / (1 + e^−2|z|)²``, exact near saturation."""
    _, e = _tail(z, 2.0)
    return 4.0 * e / (1.0 + e) ** 2


def _softplus(z: Array) -> Array:
    """``log(1 + e^z)``, stable: logaddexp for real z; for complex z (which logaddexp does
    not take) the same split, ``z + log1p(e^−z)`` where Re z > 0, else ``log1p(e^z)``."""
    if not np.iscomplexobj(z):
        return np.logaddexp(0.0, z)
    pos = z.real > 0
    return np.where(pos, z + np.log1p(np.exp(np.where(pos, -z, 0))), np.log1p(np.exp(np.where(pos, 0, z))))


def _relu(z: Array) -> Array:
    """``max(z, 0)`` as ``z · [Re z > 0]``: one multiply by the mask (a NaN stays NaN, as
    ``where(z > 0, z, 0·z)`` had it); complex z keeps its imaginary part where Re z > 0."""
    if np.iscomplexobj(z):
        return np.where(z.real > 0, z, 0.0 * z)
    return np.multiply(z, z > 0)


# name -> (σ, σ'), each with the parameter (leaky_relu's slope) as keyword
ACTIVATIONS: dict[str, tuple[Callable[..., Array], Callable[..., Array]]] = {
    "sigmoid": (lambda z: _sigmoid(z), lambda z: _sigmoid_prime(z)),
    "tanh": (np.tanh, lambda z: _tanh_prime(z)),
    "relu": (lambda z: _relu(z), lambda z: (_real(z) > 0).astype(z.dtype)),
    "leaky_relu": (lambda z, alpha=0.01: np.where(_real(z) > 0, z, alpha * z),
                   lambda z, alpha=0.01: np.where(_real(z) > 0, 1.0, alpha).astype(z.dtype)),
    "softplus": (lambda z: _softplus(z), lambda z: _sigmoid(z)),
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
}
KINKED = {"relu", "leaky_relu"}


class Activation:
    """``a^l = σ(z^l)``, elementwise; any in_shape, out_shape = in_shape."""

    kind = "activation"
    per_sample = True
    complex_safe = True
    # each output entry depends on the same input entry only (so each channel on its own);
    # relu and leaky relu held on a piece
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"elementwise", "channelwise", "piece"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, function: str,
                 alpha: float | None = None, dtype: Any = np.float64) -> None:
        self.out_shape = tuple(in_shape)
        self.params: dict[str, Array] = {}
        self.function = function
        self._kw = {} if alpha is None else {"alpha": alpha}
        self.sigma, self.sigma_prime = ACTIVATIONS[function]

    def forward(self, z: Array) -> tuple[Array, tuple]:
        a = self.sigma(z, **self._kw)
        return a, (z, a)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^l = δ_a ⊙ σ'(z^l)`` — the seed's Hadamard factor, σ' evaluated at z (see
        ``_sigmoid_prime``: from a, a saturated σ' loses its digits)."""
        z, _ = cache
        if self.function == "relu":  # σ' is the mask [Re z > 0]: multiply by it, no float copy of it
            return np.multiply(delta, _real(z) > 0, dtype=np.result_type(delta, z)), {}
        return delta * self.sigma_prime(z, **self._kw), {}

    def kink_state(self, cache: tuple) -> Array | None:
        return _real(cache[0]) > 0 if self.function in KINKED else None

    def forward_on_piece(self, z: Array, state: Array) -> Array:
        """σ on the piece ``state`` (``Re z > 0`` there) names, past the kink too: relu
        ``z·[state]``, leaky relu ``z`` or ``α·z`` — ``forward``'s own formulas with its mask
        replaced by ``state``."""
        if self.function == "relu":
            return np.multiply(z, state, dtype=z.dtype)
        return np.where(state, z, self._kw.get("alpha", 0.01) * z)


# --------------------------------------------------------------------------- pooling


@functools.lru_cache(maxsize=64)
def _window_index(n: int, c: int, H: int, W: int, k: C.Pair, s: C.Pair) -> tuple[Array, Array]:
    """Where pooling windows sit in a flattened (n, c, H, W) map: each window's first entry,
    of shape (n, c, ho, wo), and tap t's offset from it, of shape (kh·kw,) — so window w's
    tap t is entry ``corners[w] + offsets[t]``.  Read-only (shared between calls)."""
    ho, wo = C.out_size(H, k[0], s[0]), C.out_size(W, k[1], s[1])
    corners = (np.arange(n * c)[:, None, None] * (H * W) + np.arange(ho)[:, None] * (s[0] * W)
               + np.arange(wo) * s[1]).reshape(n, c, ho, wo)
    offsets = (np.arange(k[0])[:, None] * W + np.arange(k[1])).reshape(-1)
    corners.setflags(write=False)
    offsets.setflags(write=False)
    return corners, offsets


class Pool:
    """Max or average pooling, no padding. a of shape (n, c, h, w) -> (n, c, ho, wo)."""

    kind = "pool"
    per_sample = True
    complex_safe = True
    # each output channel depends on the same input channel only, each window on its region;
    # max pooling held on a piece
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"channelwise", "region", "piece"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, kind: str = "max",
                 size: Any = 2, stride: Any = None, dtype: Any = np.float64) -> None:
        c, h, w = in_shape
        self.pool, self.k = kind, C.pair(size)
        self.s = C.pair(stride) if stride is not None else self.k
        self.out_shape = (c, C.out_size(h, self.k[0], self.s[0]), C.out_size(w, self.k[1], self.s[1]))
        self.params: dict[str, Array] = {}

    def _taps(self, a: Array):
        """Each tap (u, v) of every window at once: ``a[..., i·s+u, j·s+v]`` for all (i, j),
        a strided slice of shape (n, c, ho, wo)."""
        (kh, kw), (sh, sw) = self.k, self.s
        ho, wo = C.out_size(a.shape[-2], kh, sh), C.out_size(a.shape[-1], kw, sw)
        for u in range(kh):
            for v in range(kw):
                yield u * kw + v, a[:, :, u : u + sh * (ho - 1) + 1 : sh, v : v + sw * (wo - 1) + 1 : sw]

    def forward(self, a: Array) -> tuple[Array, tuple]:
        if self.pool == "avg":
            taps = self._taps(a)
            z = next(taps)[1].copy()
            for _, tap in taps:
                z += tap
            z /= self.k[0] * self.k[1]
            return z, (a.shape, None)
        # the running max, in place, and the tap of each window's first maximum (a byte: fewer
        # bytes to move than intp, the pass is bound by its strided reads); complex: by the real
        # part (np.maximum would order by the imaginary part too)
        complex_ = np.iscomplexobj(a)
        taps = self._taps(a)
        z = next(taps)[1].copy()
        idx = np.zeros(z.shape, dtype=np.uint8 if self.k[0] * self.k[1] < 256 else np.intp)
        for t, tap in taps:
            better = _real(tap) > _real(z)  # ties keep the first maximal entry
            if complex_:
                np.copyto(z, tap, where=better)
            else:
                np.maximum(z, tap, out=z)  # a NaN in the window: the output is NaN (torch's max_pool2d too)
            idx[better] = t
        return z, (a.shape, idx)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """avg: each window's δ shared equally, ``δ/(kh·kw)``; max: all of it to the
        window's (first) maximum, ``δ · [argmax = tap]`` at each tap.  Overlapping windows
        add up.  A loop over the kh·kw taps, each one strided slab of the input's shape."""
        shape, idx = cache
        kh, kw = self.k
        share = delta / (kh * kw) if self.pool == "avg" else None
        overlap = self.s[0] < kh or self.s[1] < kw
        out = np.zeros(shape, dtype=delta.dtype)
        for t, tap in self._taps(out):  # writable strided views of out
            if share is not None:
                tap += share
            elif overlap:
                tap += np.multiply(delta, idx == t)
            else:  # each input entry in one window at most: written once
                np.multiply(delta, idx == t, out=tap)
        return out, {}

    def kink_state(self, cache: tuple) -> Array | None:
        return cache[1]

    def forward_on_piece(self, a: Array, state: Array) -> Array:
        """max: each window's entry at tap ``state`` (the argmax ``forward`` found at the
        unperturbed point), whatever the window's maximum now is; of shape (n, c, ho, wo)."""
        n, c, H, W = a.shape
        corners, offsets = _window_index(n, c, H, W, self.k, self.s)
        flat = offsets[state]  # one gather of every window's entry, instead of a pass a tap
        flat += corners
        return np.take(np.ascontiguousarray(a).reshape(-1), flat)

    def window(self, y0: Array, x0: Array, h: int, w: int, tight: bool = False) -> tuple[Array, Array, int, int]:
        """The output window an input change inside the h×w windows at (y0, x0) can reach
        (``tight``: no larger than these rows need)."""
        i0, wh = C.window_after(y0, h, self.out_shape[1], self.k[0], self.s[0], tight=tight)
        j0, ww = C.window_after(x0, w, self.out_shape[2], self.k[1], self.s[1], tight=tight)
        return i0, j0, wh, ww

    def region(self, i0: Array, j0: Array, wh: int, ww: int) -> tuple[Array, Array, int, int]:
        """The input rows and columns the outputs in the wh×ww window at (i0, j0) read."""
        return i0 * self.s[0], j0 * self.s[1], (wh - 1) * self.s[0] + self.k[0], (ww - 1) * self.s[1] + self.k[1]


# --------------------------------------------------------------------------- flatten, dense


class Flatten:
    """(n, c, h, w) -> (n, c·h·w), C order."""

    kind = "flatten"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"reshape"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, dtype: Any = np.float64) -> None:
        self.in_shape = tuple(in_shape)
        self.out_shape = (int(np.prod(in_shape)),)
        self.params: dict[str, Array] = {}

    def forward(self, a: Array) -> tuple[Array, tuple]:
        return a.reshape(a.shape[0], -1), ()

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        return delta.reshape((delta.shape[0],) + self.in_shape), {}


class Dense:
    """``z = W a + b``: a_prev of shape (n, k) -> z of shape (n, units); W (units, k)."""

    kind = "dense"
    per_sample = True
    complex_safe = True
    offers: ClassVar[frozenset[Shortcut]] = frozenset({"perturbed", "input_delta"})

    def __init__(self, in_shape: tuple[int, ...], rng: np.random.Generator, *, units: int,
                 bias: bool = True, init: str | dict = "lecun", dtype: Any = np.float64) -> None:
        (k,) = in_shape
        self.out_shape = (units,)
        self.params = {"W": init_weights(rng, (units, k), k, units, init).astype(dtype, copy=False)}
        if bias:
            self.params["b"] = rng.normal(0.0, BIAS_STD, size=(units,)).astype(dtype)

    def forward(self, a_prev: Array) -> tuple[Array, tuple]:
        z = a_prev @ self.params["W"].T
        if "b" in self.params:
            z = z + self.params["b"]
        return z, (a_prev,)

    def backward(self, delta: Array, cache: tuple) -> tuple[Array, dict[str, Array]]:
        """``δ^{l-1} = (W)ᵀ δ``, ``∂C/∂W = δ (a^{l-1})ᵀ``, ``∂C/∂b = δ`` (summed over the batch)."""
        (a_prev,) = cache
        grads = {"W": delta.T @ a_prev}
        if "b" in self.params:
            grads["b"] = delta.sum(axis=0)
        return delta @ self.params["W"], grads

    def forward_perturbed(self, z: Array, cache: tuple, name: str, indices: Array,
                          steps: Array) -> tuple[Array, Array]:
        """G perturbations at once, each moving one unit of z: the unit, of shape (G,), and
        its new values, of shape (G, n).  W[j,k] adds ``steps[g]·a[:, k]`` to unit j, b[j]
        adds ``steps[g]`` (z is linear in both)."""
        if name == "W":
            j, k = np.unravel_index(indices, self.params["W"].shape)
            return j, z[:, j].T + steps[:, None] * cache[0][:, k].T
        return indices, z[:, indices].T + steps[:, None]

    def forward_input_delta(self, delta: Array, units: Array) -> Array:
        """How z moves when input units move by delta (of shape (m, B)): ``Δz = Δ Wᵀ[units]``,
        of shape (m, out units).  ``units`` of shape (B,) for every row, or (m, B) per row."""
        W = self.params["W"]
        if units.ndim == 1:
            return delta @ W[:, units].T
        return np.einsum("mb,mbo->mo", delta, W.T[units])


LAYERS: dict[str, type] = {"conv": Conv, "activation": Activation, "pool": Pool,
                           "flatten": Flatten, "dense": Dense}

# the layers of modern CNNs (conv_transpose, batchnorm, …): built on init_weights above
from .layers_modern import MODERN_LAYERS  # noqa: E402

LAYERS.update(MODERN_LAYERS)
