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
"""
from __future__ import annotations


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
