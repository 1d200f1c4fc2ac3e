"""Torch convolutions with a hand-written backward (an autograd.Function), their kernel named
``weight`` as torch names it, behind cnngrad's torch adapter (``framework: torch``).

Forward ``z = conv2d(a, weight, bias, stride, padding)``; backward, the derivation's rules:
``δ_prev = conv2d_input(δ)`` (the full convolution of the stride-dilated δ with ROT180(weight),
cropped by the padding) and ``∂C/∂weight = conv2d_weight(a, δ)`` (the correlation of ã with δ).
``bug`` plants one mistake: ``not_rotated`` (δ_prev with the kernel rotated the wrong way),
``rot90`` (δ_prev with the kernel turned by 90°), ``dw_transposed`` (each ∂weight kernel
transposed).  Three ways to carry the geometry: ``Conv`` declares none (cnngrad infers it
from the kernel's shape and checks it), ``DeclaredConv`` declares ``geometry``, ``NNConv`` is
an ``nn.Conv2d`` (its own attributes); ``Wrapped`` holds an NNConv as ``conv`` (the
parameter is then ``conv.weight``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ConvFn(torch.autograd.Function):
    """``ConvFn.apply(a, weight, bias, stride, padding, bug)``."""

    @staticmethod
    def forward(ctx, a, weight, bias, stride=1, padding=0, bug="none"):
        ctx.save_for_backward(a, weight)
        ctx.stride, ctx.padding, ctx.bug = stride, padding, bug
        return F.conv2d(a, weight, bias, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, delta):
        a, weight = ctx.saved_tensors
        s, p, bug = ctx.stride, ctx.padding, ctx.bug
        kernel = weight
        if bug == "not_rotated":
            kernel = weight.flip(-2, -1)
        elif bug == "rot90":
            kernel = weight.rot90(1, (-2, -1))
        delta_prev = torch.nn.grad.conv2d_input(a.shape, kernel, delta, stride=s, padding=p)
        dW = torch.nn.grad.conv2d_weight(a, weight.shape, delta, stride=s, padding=p)
        if bug == "dw_transposed":
            dW = dW.transpose(-1, -2)
        return delta_prev, dW, delta.sum(dim=(0, 2, 3)), None, None, None


class Conv(torch.nn.Module):
    """Parameters ``weight`` (out, in, k, k) and ``bias`` (out,); no geometry declared."""

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 0,
                 bug: str = "none") -> None:
        super().__init__()
        bound = (in_channels * kernel * kernel) ** -0.5
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.conv_stride, self.conv_padding, self.bug = stride, padding, bug

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return ConvFn.apply(a, self.weight, self.bias, self.conv_stride, self.conv_padding, self.bug)


class DeclaredConv(Conv):
    """Conv declaring its geometry for diagnoses."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 0,
                 bug: str = "none") -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding, bug)
        self.geometry = {"op": "conv", "kernel": kernel, "stride": stride, "padding": padding}


class NNConv(torch.nn.Conv2d):
    """An nn.Conv2d whose backward is the hand-written one."""

    per_sample = True

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, padding: int = 0,
                 bug: str = "none") -> None:
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=padding)
        self.bug = bug

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return ConvFn.apply(a, self.weight, self.bias, self.stride, self.padding, self.bug)


class Wrapped(torch.nn.Module):
    """An NNConv held as ``conv``: the parameters are ``conv.weight`` and ``conv.bias``."""

    per_sample = True

    def __init__(self, **options) -> None:
        super().__init__()
        self.conv = NNConv(**options)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv(a)
