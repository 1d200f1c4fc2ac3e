"""Layers whose backward is right the first time it is called and still breaks the network:
each ``bug`` below, and ``bug: null`` its correct twin.  Finite differences compare one
backward call with many forwards, so only the structural checks see these.

* TanhCache, ``bug: cache_in_place``: backward squares the cached a in place (saves a copy),
  so a second backward — or anything else holding that cache — sees 1 − a² for a.
* TanhDelta, ``bug: delta_in_place``: backward multiplies the δ it is given in place and
  returns it, so the caller's δ (the layer above's ∂C/∂input) changes.
* GainAccumulate, ``bug: accumulate``: ∂C/∂g is added into a buffer kept on the layer and
  the buffer returned, so every call adds the last one's gradient again.  (Its twin with
  ``reuse_buffer: true`` overwrites that buffer and returns it: correct, and must pass.)
* DropoutRedraw, ``bug: redraw``: draws a fresh mask on every forward (the correct twin
  draws one, when built): forward is not a function of its input.
* GainDecay, ``bug: decay``: a weight decay λ·g folded into ∂C/∂g: not a gradient of C,
  and an all-zero δ gives non-zero gradients.
* TanhLast, ``bug: last_forward``: backward reads a = tanh(z) from the layer (set by the
  last forward) instead of its cache.
* TanhDrift, ``bug: drift``: forward drifts from its third call on: two calls agree.
* NormState, ``bug: state_norm``: y = a / ‖a‖ over the whole batch; backward reads ‖a‖ from
  the layer (set by the last forward): a's entries reordered keep it, a scaled a does not.
* ActiveGain, ``bug: self_state``: y = a·(1 + k/size), k the count of a's positive entries
  (the whole batch's); backward reads the gain from the layer: ¾a and a reordered keep it,
  −a does not.
* MeanPool, ``bug: state``: a global average pool whose backward takes the input's shape from
  the layer (``self.shape``, set by every forward): every probe of the same shape keeps it,
  a batch of one sample does not.
* GainLastW, ``bug: last_w``: y = g ⊙ a per channel; backward reads g as the last forward
  left it on the layer, not as the cache holds it: every probe on another input keeps it, a
  forward with other parameter values does not (a QA pass found it in a torch Function).
* TanhBuffer (correct, as ``reuse_buffer`` is): tanh into one output buffer reused from call
  to call, held in its cache by a ``SimpleNamespace``, a tuple or a torch tensor — what a
  later forward does to it is seen, so it is not taken for state the layer keeps.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class TanhCache:
    """a = tanh(z); δ_in = δ ⊙ (1 − a²)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, z):
        a = np.tanh(z)
        return a, (a.copy(),)

    def backward(self, delta, cache):
        (a,) = cache
        if self.bug == "cache_in_place":
            np.multiply(a, a, out=a)
            return delta * (1 - a), {}
        return delta * (1 - a * a), {}


class TanhDelta:
    """a = tanh(z); δ_in = δ ⊙ (1 − a²)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, z):
        a = np.tanh(z)
        return a, a

    def backward(self, delta, a):
        if self.bug == "delta_in_place":
            delta *= 1 - a * a
            return delta, {}
        return delta * (1 - a * a), {}


class GainAccumulate:
    """z = g[c] · a; δ_in = g[c] · δ; ∂C/∂g[c] = Σ_{n,i,j} δ ⊙ a."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None, reuse_buffer=False):
        self.out_shape, self.bug, self.reuse = tuple(in_shape), bug, reuse_buffer
        self.params = {"g": 1.0 + rng.normal(0.0, 0.1, in_shape[0])}
        self.grad_g = np.zeros(in_shape[0])

    def forward(self, a):
        return a * self.params["g"][:, None, None], a

    def backward(self, delta, a):
        dg = (delta * a).sum(axis=(0, 2, 3))
        if self.bug == "accumulate":
            self.grad_g += dg
            dg = self.grad_g
        elif self.reuse:  # correct: the buffer is overwritten, and returned (callers copy if they keep it)
            self.grad_g[...] = dg
            dg = self.grad_g
        return delta * self.params["g"][:, None, None], {"g": dg}


class DropoutRedraw:
    """a = m ⊙ z / (1 − rate) with a 0/1 mask m of the per-sample shape, drawn when built;
    δ_in = m ⊙ δ / (1 − rate)."""

    per_sample = True

    def __init__(self, in_shape, rng, rate=0.5, bug=None):
        self.out_shape, self.params, self.rate, self.bug = tuple(in_shape), {}, rate, bug
        self.rng = np.random.default_rng(7)
        self.mask = self._mask(self.out_shape)

    def _mask(self, shape):
        return (self.rng.random(shape) >= self.rate) / (1 - self.rate)

    def forward(self, z):
        mask = self._mask(z.shape) if self.bug == "redraw" else self.mask
        return z * mask, mask

    def backward(self, delta, mask):
        return delta * mask, {}


class GainDecay:
    """z = g[c] · a; δ_in = g[c] · δ; ∂C/∂g[c] = Σ_{n,i,j} δ ⊙ a (+ λ·g with the bug)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None, decay=0.01):
        self.out_shape, self.bug, self.decay = tuple(in_shape), bug, decay
        self.params = {"g": 1.0 + rng.normal(0.0, 0.1, in_shape[0])}

    def forward(self, a):
        return a * self.params["g"][:, None, None], a

    def backward(self, delta, a):
        dg = (delta * a).sum(axis=(0, 2, 3))
        if self.bug == "decay":
            dg = dg + self.decay * self.params["g"]
        return delta * self.params["g"][:, None, None], {"g": dg}


class TanhLast:
    """a = tanh(z); δ_in = δ ⊙ (1 − a²), with a from the cache (``bug: last_forward``: from
    ``self.a``, which every forward sets — right for one forward then its backward, wrong for a
    layer run twice before its backward, as a layer shared by two places of a network is)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, z):
        self.a = np.tanh(z)
        return self.a, self.a.copy()

    def backward(self, delta, a):
        if self.bug == "last_forward":
            a = self.a
        return delta * (1 - a * a), {}


class TanhDrift:
    """a = tanh(z); ``bug: drift``: from its third call on, forward adds 1e-9 per call — two
    calls agree, later ones do not (a counter, a running statistic)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug, self.calls = tuple(in_shape), {}, bug, 0

    def forward(self, z):
        self.calls += 1
        a = np.tanh(z)
        if self.bug == "drift" and self.calls >= 3:
            a = a + 1e-9 * self.calls
        return a, a.copy()

    def backward(self, delta, a):
        return delta * (1 - a * a), {}


class NormState:
    """y = a / ‖a‖ (one norm, the whole batch's); δ_in = (δ − y ⟨δ, y⟩) / ‖a‖, with ‖a‖ from the
    cache (``bug: state_norm``: from ``self.norm``, which every forward sets)."""

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        self.norm = np.sqrt(np.sum(a * a))
        return a / self.norm, (a.copy(), self.norm)

    def backward(self, delta, cache):
        a, norm = cache
        if self.bug == "state_norm":
            norm = self.norm
        y = a / norm
        return (delta - y * np.sum(delta * y)) / norm, {}


class TanhBuffer:
    """a = tanh(z) into one buffer reused by every call, held in the cache by ``holder``
    (namespace, tuple, torch); δ_in = δ ⊙ (1 − a²)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None, holder="namespace"):
        self.out_shape, self.params, self.holder, self.buffer = tuple(in_shape), {}, holder, None

    def forward(self, z):
        if self.buffer is None or self.buffer.shape != z.shape:
            self.buffer = np.empty_like(z)
        np.tanh(z, out=self.buffer)
        if self.holder == "torch":
            import torch
            return self.buffer.copy(), torch.from_numpy(self.buffer)
        return self.buffer, (self.buffer,) if self.holder == "tuple" else SimpleNamespace(a=self.buffer)

    def backward(self, delta, cache):
        a = cache.numpy() if self.holder == "torch" else cache[0] if self.holder == "tuple" else cache.a
        return delta * (1 - a * a), {}


class TanhBufferCoupled(TanhBuffer):
    """TanhBuffer without ``per_sample`` (so each perturbed copy of the batch is its own call,
    the outputs kept side by side); ``bug: detached``: backward passes down an all-zero δ."""

    per_sample = False

    def __init__(self, in_shape, rng, bug=None, holder="namespace"):
        super().__init__(in_shape, rng, holder=holder)
        self.bug = bug

    def backward(self, delta, cache):
        g = super().backward(delta, cache)[0]
        return (np.zeros_like(g) if self.bug == "detached" else g), {}


class ActiveGain:
    """y = a·g, g = 1 + (number of positive entries)/size, piecewise constant in a: δ_in = g·δ
    (g from the cache; ``bug: self_state``: from ``self.gain``, set by every forward)."""

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        self.gain = 1.0 + np.count_nonzero(a > 0) / a.size
        return a * self.gain, self.gain

    def backward(self, delta, gain):
        return delta * (self.gain if self.bug == "self_state" else gain), {}


class MeanPool:
    """y[n, c] = mean over (h, w) of a[n, c]; δ_in = δ / (h·w) spread over each map — the shape
    from the cache (``bug: state``: from ``self.shape``, set by every forward)."""

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = (in_shape[0], 1, 1), {}, bug

    def forward(self, a):
        self.shape = a.shape
        return a.mean(axis=(2, 3), keepdims=True), a.shape

    def backward(self, delta, shape):
        shape = self.shape if self.bug == "state" else shape
        return np.broadcast_to(delta / (shape[2] * shape[3]), shape).copy(), {}


class GainLastW:
    """y = g ⊙ a, g one gain per channel; δ_in = δ ⊙ g, ∂C/∂g = Σ δ ⊙ a, g from the cache
    (``bug: last_w``: from ``self.g_last``, which every forward sets)."""

    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.bug = tuple(in_shape), bug
        self.params = {"g": 1.0 + 0.1 * rng.standard_normal(in_shape[0])}

    def forward(self, a):
        g = self.params["g"].copy()
        self.g_last = g
        return a * g[:, None, None], (a, g)

    def backward(self, delta, cache):
        a, g = cache
        if self.bug == "last_w":
            g = self.g_last
        return delta * g[:, None, None], {"g": (delta * a).sum(axis=(0, 2, 3))}
