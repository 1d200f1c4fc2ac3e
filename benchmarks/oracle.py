"""An independent oracle for a cnngrad check: the network rebuilt in PyTorch from the raw
config (read here from CONVENTIONS.md's defaults, not through cnngrad's validator) and the
check's own parameter, input and target arrays.

Used by ``benchmarks/verdicts.py`` to tell whether a FAIL is a real one (cnngrad's analytic
gradient disagrees with torch autograd) or a false one, and why the differences went wrong:

* ``autograd``: ∂C/∂(every parameter, x, and the input of every layer), in float64 from the
  parameters cast up exactly (the exact derivative of the same function), or in the
  network's own dtype (to compare a float32 backward with another float32 backward);
* ``central``: (C(θ+h) − C(θ−h)) / ((θ+h) − (θ−h)) of one entry, in float64, with the
  kink state (ReLU sign masks, max-pool argmaxes) at θ, θ+h and θ−h, so a stencil that
  crossed a kink shows whether or not cnngrad saw it.

Needs torch; nothing of cnngrad's layer, network or loss code is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
Array = np.ndarray
DTYPE = {"float64": torch.float64, "float32": torch.float32}


def pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def entries(raw: dict) -> list[tuple[str, dict]]:
    """``layers:`` as (kind, options with every default of CONVENTIONS.md filled in)."""
    out = []
    for e in raw["layers"]:
        kind, o = (e, None) if isinstance(e, str) else next(iter(e.items()))
        if kind == "conv":
            o = {"filters": o["filters"], "kernel": pair(o["kernel"]), "stride": pair(o.get("stride", 1)),
                 "padding": pair(o.get("padding", 0)), "dilation": pair(o.get("dilation", 1)),
                 "bias": o.get("bias", "tied"), "mode": o.get("mode", "correlation")}
        elif kind == "activation":
            name, param = (o, None) if isinstance(o, str) else next(iter(o.items()))
            o = {"fn": name, "alpha": 0.01 if param is None else float(param)}
        elif kind == "pool":
            o = o or {}
            size = pair(o.get("size", 2))
            o = {"kind": o.get("kind", "max"), "size": size, "stride": pair(o.get("stride", size))}
        elif kind == "dense":
            o = {"units": o["units"], "bias": o.get("bias", True)}
        elif kind == "flatten":
            o = {}
        else:
            raise NotImplementedError(kind)
        out.append((kind, o))
    return out


def param_names(kind: str, o: dict) -> list[str]:
    if kind == "conv":
        return ["W"] + ([] if o["bias"] == "none" else ["b"])
    if kind == "dense":
        return ["W"] + (["b"] if o["bias"] else [])
    return []


@dataclass
class Pass:
    loss: torch.Tensor
    inputs: list[torch.Tensor]  # the input of every layer (inputs[0] is x)
    kinks: list[Any]  # per layer: a ReLU's sign mask, a max pool's argmax, or None


class TorchNet:
    """The config's network as a function of (parameters, x) in torch, ``dtype`` float64 or
    the config's own."""

    def __init__(self, raw: dict, params: dict[str, Array], x: Array, y: Array, dtype: str = "float64",
                 stable: bool = True) -> None:
        self.layers = entries(raw)
        self.stable = stable  # cross-entropy without cancellation (or as F.cross_entropy has it)
        self.loss_name = raw.get("loss", "mse")
        self.dtype = DTYPE[dtype]
        self.params = {k: torch.tensor(np.asarray(v, dtype=np.float64), dtype=self.dtype) for k, v in params.items()}
        expected = {f"layers.{i}.{n}" for i, (kind, o) in enumerate(self.layers) for n in param_names(kind, o)}
        assert set(self.params) == expected, (sorted(self.params), sorted(expected))
        self.x = torch.tensor(np.asarray(x, dtype=np.float64), dtype=self.dtype)
        int_y = self.loss_name == "softmax_cross_entropy"
        self.y = torch.tensor(y, dtype=torch.int64 if int_y else self.dtype)

    def run(self, params: dict[str, torch.Tensor], a: torch.Tensor, start: int = 0, keep: bool = False) -> Pass:
        """Layers ``start…`` on ``a`` (the input of layer ``start``), then the loss."""
        inputs, kinks = [], []
        for i, (kind, o) in enumerate(self.layers[start:], start):
            if keep and a.requires_grad:
                a.retain_grad()
            inputs.append(a)
            state = None
            if kind == "conv":
                W = params[f"layers.{i}.W"]
                if o["mode"] == "convolution":
                    W = torch.flip(W, dims=(-2, -1))  # ROT180(W): a true convolution
                a = F.conv2d(a, W, stride=o["stride"], padding=o["padding"], dilation=o["dilation"])
                if o["bias"] == "tied":
                    a = a + params[f"layers.{i}.b"][None, :, None, None]
                elif o["bias"] == "untied":
                    a = a + params[f"layers.{i}.b"][None]
            elif kind == "activation":
                fn = o["fn"]
                if fn in ("relu", "leaky_relu"):
                    state = (a > 0).detach().clone()
                if fn == "leaky_relu":
                    a = F.leaky_relu(a, negative_slope=o["alpha"])
                elif fn == "softplus":
                    a = F.softplus(a, beta=1.0, threshold=1e9)  # exact log(1 + e^z), no linear cut-off
                elif fn != "identity":
                    a = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[fn](a)
            elif kind == "pool":
                if o["kind"] == "max":
                    a, idx = F.max_pool2d(a, o["size"], stride=o["stride"], return_indices=True)
                    state = idx.detach().clone()
                else:
                    a = F.avg_pool2d(a, o["size"], stride=o["stride"])
            elif kind == "flatten":
                a = a.reshape(a.shape[0], -1)
            elif kind == "dense":
                a = a @ params[f"layers.{i}.W"].T
                if f"layers.{i}.b" in params:
                    a = a + params[f"layers.{i}.b"]
            kinks.append(state)
        n = a.shape[0]
        if self.loss_name == "mse":
            loss = 0.5 * ((a - self.y) ** 2).reshape(n, -1).sum() / n
        else:
            loss = cross_entropy(a, self.y) if self.stable else F.cross_entropy(a, self.y)
        return Pass(loss, inputs, kinks)

    def autograd(self) -> tuple[float, dict[str, Array]]:
        """C and its gradients, keyed ``layers.{i}.{name}`` and ``delta.{i}`` (∂C/∂ the input
        of layer i; ``delta.0`` is ∂C/∂x), in this net's dtype."""
        leaves = {k: v.clone().requires_grad_(True) for k, v in self.params.items()}
        x = self.x.clone().requires_grad_(True)
        p = self.run(leaves, x, keep=True)
        p.loss.backward()
        grads = {k: t.grad.detach().numpy().astype(np.float64) for k, t in leaves.items()}
        for i, a in enumerate(p.inputs):
            grads[f"delta.{i}"] = (a.grad.detach().numpy().astype(np.float64) if a.grad is not None
                                   else np.zeros(tuple(a.shape)))
        return float(p.loss.detach()), grads

    def base_inputs(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.run(self.params, self.x).inputs

    def central(self, key: str, flat: int, h: float) -> tuple[float, bool]:
        """The central difference of C in one entry of ``key`` (a parameter ``layers.i.name``
        or ``delta.i``, the input of layer i), divided by the step the dtype took, and
        whether its stencil crossed a kink (a unit's state at θ+h or θ−h differs from θ)."""
        is_delta = key.startswith("delta.")
        start = int(key.split(".")[1]) if is_delta else 0
        with torch.no_grad():
            base = self.base_inputs()[start] if is_delta else self.params[key]
            losses, states, taken = [], [], []
            for sign in (1.0, -1.0, 0.0):
                t = base.clone().reshape(-1)
                t[flat] = t[flat] + sign * h
                taken.append(float(t[flat]))
                t = t.reshape(base.shape)
                out = self.run(self.params, t, start) if is_delta else self.run({**self.params, key: t}, self.x)
                losses.append(float(out.loss))
                states.append(out.kinks)
        crossed = any(s0 is not None and not (torch.equal(s0, sp) and torch.equal(s0, sm))
                      for sp, sm, s0 in zip(*states))
        return (losses[0] - losses[1]) / (taken[0] - taken[1]), crossed


def cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``−(1/N) Σ_n log softmax(z_n)[y_n]`` written without cancellation, so that a saturated
    softmax (loss ~1e-15) keeps its digits, and so do its gradients:
    ``ℓ_n = log(1 + Σ_{k≠y} exp(z_k − z_y)) = logaddexp(0, logsumexp_{k≠y}(z_k − z_y))``.
    (``F.cross_entropy`` rounds ``1 − p_y`` to a multiple of ε there, as cnngrad does.)"""
    d = z - z.gather(1, y[:, None])
    others = d.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
    lse = torch.logsumexp(others, dim=1)
    return torch.logaddexp(torch.zeros_like(lse), lse).mean()


def norm_rel(g: Array, n: Array) -> float:
    g, n = np.asarray(g, np.float64).ravel(), np.asarray(n, np.float64).ravel()
    denom = np.linalg.norm(g) + np.linalg.norm(n)
    return float(np.linalg.norm(g - n) / denom) if denom > 0 else 0.0
