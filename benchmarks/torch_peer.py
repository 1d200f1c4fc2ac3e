"""The same network in PyTorch (an optional peer for the benchmarks, never a dependency).

Built from a cnngrad ``Problem`` — its validated layer specs and its very parameter
arrays — so both frameworks compute the same function on the same numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnngrad.network import Problem


def _act(spec_opts: dict, z: torch.Tensor) -> torch.Tensor:
    fn = spec_opts["function"]
    if fn == "leaky_relu":
        return F.leaky_relu(z, spec_opts.get("alpha", 0.01))
    if fn == "softplus":
        return F.softplus(z, threshold=1e9)
    if fn == "identity":
        return z
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[fn](z)


class TorchPeer:
    """``loss(x, *params)`` as a pure function of torch tensors, for gradcheck and timing."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        net = problem.net
        self.keys: list[tuple[int, str]] = [(i, n) for i, l in enumerate(net.layers) for n in l.params]
        dtype = torch.float64 if problem.x.dtype == np.float64 else torch.float32
        self.x = torch.tensor(problem.x, dtype=dtype)
        self.params = [torch.tensor(net.layers[i].params[n], dtype=dtype) for i, n in self.keys]
        self.y = torch.tensor(problem.y)
        self.loss_name = problem.config.loss

    def loss(self, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        p = {key: t for key, t in zip(self.keys, params)}
        a = x
        for i, spec in enumerate(self.problem.net.specs):
            o = spec.options
            if spec.kind == "conv":
                W = p[(i, "W")]
                if o["mode"] == "convolution":
                    W = torch.flip(W, dims=(-2, -1))
                a = F.conv2d(a, W, stride=o["stride"], padding=o["padding"], dilation=o["dilation"])
                if o["bias"] == "tied":
                    a = a + p[(i, "b")][None, :, None, None]
                elif o["bias"] == "untied":
                    a = a + p[(i, "b")][None]
            elif spec.kind == "activation":
                a = _act(o, a)
            elif spec.kind == "pool":
                pool = F.max_pool2d if o["kind"] == "max" else F.avg_pool2d
                a = pool(a, o["size"], stride=o["stride"])
            elif spec.kind == "flatten":
                a = a.reshape(a.shape[0], -1)
            elif spec.kind == "dense":
                a = a @ p[(i, "W")].T
                if (i, "b") in p:
                    a = a + p[(i, "b")]
            else:
                raise NotImplementedError(spec.kind)
        n = a.shape[0]
        if self.loss_name == "mse":
            return 0.5 * ((a - self.y) ** 2).reshape(n, -1).sum() / n
        return F.cross_entropy(a, self.y)

    def leaves(self) -> list[torch.Tensor]:
        return [t.clone().requires_grad_(True) for t in [self.x, *self.params]]

    def forward_backward(self, leaves: list[torch.Tensor]) -> Any:
        for t in leaves:
            t.grad = None
        c = self.loss(*leaves)
        c.backward()
        return c
