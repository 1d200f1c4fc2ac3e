"""A layer that leaves the process from inside a call, the ways a user's code can:
``how: sys`` (sys.exit), ``builtin`` (exit()), ``os`` (os._exit, looked up at call time),
``from_os`` (an ``_exit`` bound by ``from os import _exit`` when the module was imported);
``at: build | forward | backward``, on the ``after``-th forward call (1: the first).
Up to then it is the identity, which is correct."""
from __future__ import annotations

import os
import sys
from os import _exit


class Exiting:
    per_sample = True

    def __init__(self, in_shape, rng, how="sys", at="forward", after=1, code=0):
        self.out_shape, self.params = tuple(in_shape), {}
        self.how, self.at, self.after, self.code, self.calls = how, at, after, code, 0
        if at == "build":
            self._leave()

    def _leave(self):
        if self.how == "sys":
            sys.exit(self.code)
        elif self.how == "builtin":
            exit(self.code)
        elif self.how == "os":
            os._exit(self.code)
        else:
            _exit(self.code)

    def forward(self, a):
        self.calls += 1
        if self.at == "forward" and self.calls >= self.after:
            self._leave()
        return a, None

    def backward(self, delta, cache):
        if self.at == "backward":
            self._leave()
        return delta, {}
