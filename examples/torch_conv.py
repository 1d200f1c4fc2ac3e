"""A convolution with a hand-written backward, as a torch.autograd.Function — the kind of
layer cnngrad's torch adapter checks (``framework: torch``).

Forward (correlation, stride 1, padding p): ``z[n,o] = Σ_c W[o,c] ⋆ ã[n,c] + b[o]``.
Backward, the derivation's rules (δ = ∂C/∂z):

* ``δ^{l-1} = δ * ROT180(W)``, a full convolution: δ padded by k−1−p, correlated with the
  kernel rotated by 180° and its in/out channels swapped;
* ``∂C/∂W[o,c] = ã[n,c] ⋆ δ[n,o]`` (a valid correlation, summed over the batch);
* ``∂C/∂b[o] = Σ_{n,i,j} δ[n,o,i,j]``.

``bug`` plants one of the usual mistakes: ``not_rotated`` (δ^{l-1} with W where ROT180(W)
belongs), ``dw_rotated`` (∂W rotated by 180°), ``bias_mean`` (∂b averaged over the batch).

    cnngrad check examples/torch_conv.yaml --plugins          # passes
    cnngrad check examples/torch_conv_broken.yaml --plugins   # fails, layer 2 named
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Conv2dFunction(torch.autograd.Function):
    """``Conv2dFunction.apply(a, W, b, padding=0, bug=None)``: a (n, c, h, w), W (o, c, k, k), b (o,)."""

    per_sample = True  # sample n of the output depends on sample n of the input only

    @staticmethod
    def forward(ctx, a, W, b, padding=0, bug=None):
        ctx.save_for_backward(a, W)
        ctx.padding, ctx.bug = padding, bug
        return F.conv2d(a, W, b, padding=padding)

    @staticmethod
    def backward(ctx, delta):
        a, W = ctx.saved_tensors
        p, bug, k = ctx.padding, ctx.bug, W.shape[-1]
        # δ^{l-1}: the full convolution of δ with ROT180(W) (channels swapped), cropped by p
        kernel = W if bug == "not_rotated" else W.flip(-2, -1)
        delta_prev = F.conv2d(F.pad(delta, [k - 1 - p] * 4), kernel.transpose(0, 1))
        # ∂C/∂W: valid correlation of the padded input with δ, batch as the summed axis
        a_pad = F.pad(a, [p] * 4)
        dW = F.conv2d(a_pad.transpose(0, 1), delta.transpose(0, 1)).transpose(0, 1)
        if bug == "dw_rotated":
            dW = dW.flip(-2, -1)
        db = delta.sum(dim=(0, 2, 3)) / (delta.shape[0] if bug == "bias_mean" else 1)
        return delta_prev, dW, db, None, None


class Conv2d(torch.nn.Module):
    """The Function as a module: parameters ``weight`` (out, in, k, k) and ``bias`` (out,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, padding: int = 0,
                 bug: str | None = None) -> None:
        super().__init__()
        if not 0 <= padding <= kernel - 1:
            raise ValueError(f"padding must be from 0 to kernel - 1 = {kernel - 1}, got {padding}")
        bound = (in_channels * kernel * kernel) ** -0.5
        self.weight = torch.nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel).uniform_(-bound, bound))
        self.bias = torch.nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.padding, self.bug = padding, bug

    per_sample = True  # sample n of the output depends on sample n of the input only

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return Conv2dFunction.apply(a, self.weight, self.bias, self.padding, self.bug)
