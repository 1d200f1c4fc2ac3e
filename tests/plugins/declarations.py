"""Layers whose ``per_sample = True`` does not hold for the differences, though each backward
is right (``bug: null``); cnngrad must take the declaration back, not fail them — nor pass
their broken twins.

* DivN: y = a / N, N the batch's size: sample n's output depends on sample n alone, but on
  how many samples the call has, and the differences stack perturbed copies of the batch.
* CenterLiar: y = a − mean over the batch (it couples the samples), declared per_sample
  anyway; ``bug: ignore_coupling``: backward treats the mean as a constant (δ passed through).
* FixedMask: y = a ⊙ m[n], a mask drawn for each sample of a batch of 3 at construction: its
  forward fails on any other batch size; ``bug: mask_sample0``: backward applies sample 0's
  mask to every sample.
* Boost0 (not declared per_sample: right) multiplies sample 0 by 10; MaxNorm after it,
  y = a / max|a| over the whole batch, declared per_sample anyway: the batch's largest entry
  is sample 0's, so neither the samples reversed nor one of sample 0's entries reordered
  change it (a QA pass's escape); ``bug: const``: backward treats the max as a constant.
* BatchSmooth: y_n = Σ_m w_nm a_m, w = softmax_m(−‖a_n − a_m‖²/τ), τ = 1e-3, declared
  per_sample: on distinct samples the off-diagonal weights underflow to 0 (y = a), but the
  differences' perturbed copies of one sample are near enough to average.  ``bug: half``:
  backward passes down half of δ.
* BigBatch: y = a on batches of up to 3 samples, 2a on larger ones, declared per_sample (false:
  the differences stack dozens of rows); its backward is right for the real batch.
* LogScale: y = a[:, 1:] · log(a[:, :1]), per-sample indeed, with a domain per channel
  (channel 0 positive: its forward raises elsewhere; Softplus0 before it makes it so): a
  probe on the input's entries reordered leaves it, and must neither stop nor refute.
"""
from __future__ import annotations

import numpy as np


class DivN:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, a):
        return a / a.shape[0], a.shape[0]

    def backward(self, delta, n):
        return delta / n, {}


class CenterLiar:
    per_sample = True  # false: the mean couples the samples

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        return a - a.mean(axis=0, keepdims=True), None

    def backward(self, delta, cache):
        if self.bug == "ignore_coupling":
            return delta.copy(), {}
        return delta - delta.mean(axis=0, keepdims=True), {}


class FixedMask:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug
        self.mask = (rng.random((3,) + tuple(in_shape)) > 0.3) / 0.7

    def forward(self, a):
        return a * self.mask, None

    def backward(self, delta, cache):
        return delta * (self.mask[:1] if self.bug == "mask_sample0" else self.mask), {}


class Boost0:
    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, a):
        s = np.ones((a.shape[0],) + (1,) * (a.ndim - 1))
        s[0] = 10.0
        return a * s, s

    def backward(self, delta, s):
        return delta * s, {}


class MaxNorm:
    per_sample = True  # false: the max is over the batch

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params, self.bug = tuple(in_shape), {}, bug

    def forward(self, a):
        m = np.max(np.abs(a))
        return a / m, (a, m)

    def backward(self, delta, cache):
        """δ/m − (Σ δ⊙a)/m² · sign(a_k) at the arg max k (the max's own path)."""
        a, m = cache
        g = delta / m
        if self.bug != "const":
            k = np.argmax(np.abs(a))
            g.reshape(-1)[k] -= np.sum(delta * a) / m**2 * np.sign(a.reshape(-1)[k])
        return g, {}


class Softplus0:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, z):
        y = z.copy()
        y[:, :1] = np.logaddexp(0.0, z[:, :1])
        return y, z

    def backward(self, delta, z):
        g = delta.copy()
        g[:, :1] = delta[:, :1] / (1.0 + np.exp(-z[:, :1]))
        return g, {}


class LogScale:
    per_sample = True

    def __init__(self, in_shape, rng, bug=None):
        c, h, w = in_shape
        self.out_shape, self.params = (c - 1, h, w), {}

    def forward(self, a):
        if np.any(a[:, :1] <= 0):
            raise ValueError("channel 0 must be positive (a scale)")
        return a[:, 1:] * np.log(a[:, :1]), a

    def backward(self, delta, a):
        """∂/∂a_c = δ_c · log a_0 (c ≥ 1); ∂/∂a_0 = Σ_c δ_c a_c / a_0."""
        g = np.zeros_like(a)
        g[:, 1:] = delta * np.log(a[:, :1])
        g[:, :1] = np.sum(delta * a[:, 1:], axis=1, keepdims=True) / a[:, :1]
        return g, {}


class BatchSmooth:
    per_sample = True  # false: near samples are averaged

    def __init__(self, in_shape, rng, tau=1e-3, bug=None):
        self.out_shape, self.params, self.tau, self.bug = tuple(in_shape), {}, tau, bug

    def forward(self, a):
        n = a.shape[0]
        f = a.reshape(n, -1)
        logits = -((f[:, None, :] - f[None, :, :]) ** 2).sum(-1) / self.tau
        w = np.exp(logits - logits.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        return (w @ f).reshape(a.shape), (f, w)

    def backward(self, delta, cache):
        """∂/∂f = wᵀδ + Σ over the softmax: dl = w ⊙ (δ fᵀ − Σ_k w δ fᵀ), l_nm = −‖f_n − f_m‖²/τ."""
        f, w = cache
        g = delta.reshape(f.shape[0], -1)
        dw = g @ f.T
        dl = w * (dw - (w * dw).sum(1, keepdims=True))
        c = dl[:, :, None] * (f[:, None, :] - f[None, :, :]) * (-2 / self.tau)
        gf = w.T @ g + c.sum(1) - c.sum(0)
        return (gf * (0.5 if self.bug == "half" else 1.0)).reshape(delta.shape), {}


class BigBatch:
    per_sample = True  # false: a batch of more than 3 rows is doubled

    def __init__(self, in_shape, rng, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}

    def forward(self, a):
        k = 1.0 if a.shape[0] <= 3 else 2.0
        return a * k, k

    def backward(self, delta, k):
        return delta * k, {}
