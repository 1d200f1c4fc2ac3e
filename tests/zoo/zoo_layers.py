"""The zoo: layers written the way a user writes them (own numpy, the plugin protocol), each
with an optional bug from the families backprop code gets wrong.  ``bug: null`` is the
correct twin.  tests/test_zoo.py proves every twin right and every bug wrong against PyTorch
autograd, then checks that cnngrad catches, locates and explains each bug.

Each class declares ``geometry`` (what a diagnosis may build on), ``per_sample`` and
``complex_safe`` (its forward keeps the imaginary part) — CONVENTIONS.md, "Layers of your own".
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def correlate(x, K, s=1, d=1):
    """z[n,o,i,j] = Σ_{c,u,v} K[o,c,u,v] · x[n,c,i·s+u·d,j·s+v·d] (valid, stride s, dilation d)."""
    k = K.shape[-1]
    span = d * (k - 1) + 1
    win = sliding_window_view(x, (span, span), axis=(2, 3))[:, :, ::s, ::s, ::d, ::d]
    return np.einsum("ncijuv,ocuv->noij", win, K), win


class ZooConv:
    """Conv (correlation), square kernel k, stride s, padding p, dilation d, tied bias.

    δ_in = full convolution of δ (stride zeros inserted) with ROT180(W), padding cropped;
    ∂C/∂W = valid correlation of the padded input with δ; ∂C/∂b = Σ δ."""

    per_sample = True
    complex_safe = True
    linear = True  # in its input: cnngrad runs the adjoint test ⟨L u, v⟩ = ⟨u, Lᵀ v⟩ on it

    def __init__(self, in_shape, rng, *, filters=3, kernel=3, stride=1, padding=0, dilation=1, bug=None):
        c, h, w = in_shape
        self.k, self.s, self.p, self.d, self.bug = kernel, stride, padding, dilation, bug
        span = dilation * (kernel - 1) + 1
        self.out_shape = (filters, (h + 2 * padding - span) // stride + 1, (w + 2 * padding - span) // stride + 1)
        self.params = {"W": rng.normal(0, 1 / np.sqrt(c * kernel * kernel), (filters, c, kernel, kernel)),
                       "b": rng.normal(0, 0.1, filters)}
        self.geometry = {"op": "conv", "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}

    def forward(self, a):
        p = self.p
        a_pad = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
        z, _ = correlate(a_pad, self.params["W"], self.s, self.d)
        return z + self.params["b"][:, None, None], a_pad

    def backward(self, delta, a_pad):
        W, k, s, p, d, bug = self.params["W"], self.k, self.s, self.p, self.d, self.bug
        n, o, ho, wo = delta.shape
        hp, wp = a_pad.shape[2:]
        # ∂C/∂W: correlate the padded input with δ
        dd = d * d if bug == "dw_dilation_twice" else d
        span = dd * (k - 1) + 1
        ws = 1 if bug == "dw_stride_ignored" else s
        win = sliding_window_view(np.pad(a_pad, ((0, 0), (0, 0), (0, span), (0, span))), (span, span),
                                  axis=(2, 3))[:, :, :(ho - 1) * ws + 1:ws, :(wo - 1) * ws + 1:ws, ::dd, ::dd]
        if bug == "dw_sample0":
            dW = np.einsum("cijuv,oij->ocuv", win[0], delta[0])
        elif bug == "dw_reshape":             # (c·k·k, o) reshaped where it should be transposed
            cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, -1)
            dW = (cols.T @ delta.transpose(0, 2, 3, 1).reshape(n * ho * wo, o)).reshape(W.shape)
        elif bug == "dw_batch1":              # δ laid out as (o, n·ho·wo) by a reshape: right for n = 1 only
            cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(-1, n * ho * wo)
            dW = (delta.reshape(o, -1) @ cols.T).reshape(W.shape)
        else:
            dW = np.einsum("ncijuv,noij->ocuv", win, delta)
        if bug == "dw_rotated":
            dW = dW[:, :, ::-1, ::-1]
        elif bug == "dw_one_entry":           # the flat loop stops one entry short
            dW = dW.copy()
            dW.reshape(-1)[-1] = 0.0
        db = delta.sum(axis=(2, 3)).mean(axis=0) if bug == "db_mean" else delta.sum(axis=(0, 2, 3))
        # δ_in: stride zeros between δ's entries, pad by the kernel's span − 1, correlate with ROT180(W)
        if bug == "delta_stride_offset":      # zeros after each entry instead of between
            dil = np.zeros((n, o, ho * s, wo * s))
            dil[:, :, s - 1::s, s - 1::s] = delta
        else:
            dil = np.zeros((n, o, (ho - 1) * s + 1, (wo - 1) * s + 1))
            dil[:, :, ::s, ::s] = delta
        K = {"delta_not_rotated": W, "delta_one_flip": W[:, :, ::-1, :],
             "delta_transposed_kernel": W[:, :, ::-1, ::-1].transpose(0, 1, 3, 2),
             "delta_rot90": np.rot90(W, 1, axes=(2, 3))}.get(bug, W[:, :, ::-1, ::-1])
        dk = 1 if bug == "delta_dilation_ignored" else d
        e = dk * (k - 1)
        full, _ = correlate(np.pad(dil, ((0, 0), (0, 0), (e, e), (e, e))), K.transpose(1, 0, 2, 3), 1, dk)
        grown = np.zeros((n, W.shape[1], max(hp, full.shape[2]), max(wp, full.shape[3])))
        grown[:, :, :full.shape[2], :full.shape[3]] = full
        top = 2 * p if bug == "delta_crop_one_side" else p  # crop all of the padding from the top/left
        delta_in = grown[:, :, top:top + hp - 2 * p, top:top + wp - 2 * p]
        if bug == "delta_batch_mean":
            delta_in = delta_in / n
        elif bug == "delta_tiny_scale":
            delta_in = delta_in * (1 + 1e-5)
        elif bug == "delta_channels_reversed":
            delta_in = delta_in[:, ::-1]
        return delta_in, {"W": dW, "b": db}


class ZooDense:
    """z = a Wᵀ + b, W of shape (units, in).  δ_in = δ W; ∂C/∂W = δᵀ a; ∂C/∂b = Σ_n δ."""

    per_sample = True
    complex_safe = True
    linear = True
    geometry = {"op": "dense"}

    def __init__(self, in_shape, rng, *, units, bug=None):
        (k,) = in_shape
        self.out_shape, self.bug = (units,), bug
        self.params = {"W": rng.normal(0, 1 / np.sqrt(k), (units, k)), "b": rng.normal(0, 0.1, units)}

    def forward(self, a):
        return a @ self.params["W"].T + self.params["b"], a

    def backward(self, delta, a):
        W, bug, n = self.params["W"], self.bug, delta.shape[0]
        delta_in = delta @ (W.T if bug == "delta_w_not_transposed" else W)
        if bug == "delta_leaks_input":       # an activity penalty's gradient added to the wrong tensor
            delta_in = delta_in + 1e-2 * a
        dW = {"dw_reshape": lambda: (a.T @ delta).reshape(W.shape),
              "dw_sample0": lambda: np.outer(delta[0], a[0]),
              "dw_batch1": lambda: delta.reshape(-1, n) @ a.reshape(n, -1),
              "dw_batch_mean": lambda: delta.T @ a / n,
              "dw_doubled": lambda: 2 * delta.T @ a,
              "dw_weight_decay": lambda: delta.T @ a + 1e-3 * W}.get(bug, lambda: delta.T @ a)()
        return delta_in, {"W": dW, "b": delta.sum(axis=0)}


class ZooPool:
    """Max or average pooling, square window k, stride s, no padding."""

    per_sample = True
    complex_safe = True

    def __init__(self, in_shape, rng, *, kind="max", size=2, stride=None, bug=None):
        c, h, w = in_shape
        self.kind, self.k, self.s, self.bug = kind, size, stride or size, bug
        self.out_shape = (c, (h - size) // self.s + 1, (w - size) // self.s + 1)
        self.params = {}
        self.geometry = {"op": f"{kind}_pool", "kernel": size, "stride": self.s}
        self.linear = kind == "avg"

    def forward(self, a):
        win = sliding_window_view(a, (self.k, self.k), axis=(2, 3))[:, :, ::self.s, ::self.s]
        flat = win.reshape(win.shape[:4] + (-1,))
        if self.kind == "avg":
            return flat.mean(axis=-1), (a.shape, None)
        arg = np.argmax(flat.real, axis=-1)  # the first maximal entry
        z = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
        if self.bug == "max_abs":            # the backward routes to the largest |a| instead
            arg = np.argmax(np.abs(flat.real), axis=-1)
        return z, (a.shape, arg)

    def backward(self, delta, cache):
        shape, arg = cache
        k, s, bug = self.k, self.s, self.bug
        n, c, ho, wo = delta.shape
        if self.kind == "avg":
            share = np.broadcast_to((delta / (s * s if bug == "avg_divisor_stride" else k * k))[..., None, None],
                                    delta.shape + (k, k))
        elif bug == "max_every_entry":
            share = np.broadcast_to(delta[..., None, None], delta.shape + (k, k))
        else:
            u, v = (arg % k, arg // k) if bug == "max_transposed" else (arg // k, arg % k)
            share = np.zeros(delta.shape + (k, k))
            ii = np.indices(delta.shape)
            share[ii[0], ii[1], ii[2], ii[3], u, v] = delta
        out = np.zeros(shape)
        for i in range(ho):       # window by window: overlapping windows add up
            for j in range(wo):
                if bug in ("avg_overlap_overwrite", "max_overlap_overwrite"):
                    out[:, :, i * s:i * s + k, j * s:j * s + k] = share[:, :, i, j]
                else:
                    out[:, :, i * s:i * s + k, j * s:j * s + k] += share[:, :, i, j]
        return out, {}


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class ZooAct:
    """a = σ(z) elementwise (sigmoid, tanh or leaky ReLU with slope alpha); δ_in = δ ⊙ σ'(z)."""

    per_sample = True
    complex_safe = True
    geometry = {"op": "elementwise"}

    def __init__(self, in_shape, rng, *, function="tanh", alpha=0.1, bug=None):
        self.out_shape, self.params = tuple(in_shape), {}
        self.function, self.alpha, self.bug = function, alpha, bug

    def forward(self, z):
        if self.function == "sigmoid":
            return _sigmoid(z), z
        if self.function == "tanh":
            return np.tanh(z), z
        return np.where(z.real > 0, z, self.alpha * z), z

    def backward(self, delta, z):
        bug = self.bug
        if bug == "no_sigma_prime":
            return delta, {}
        if bug == "sigma_prime_sample0":     # σ'(z) of the first sample, broadcast to all
            z = np.broadcast_to(z[:1], z.shape)
        if bug == "sigma_prime_at_a":        # σ' evaluated at the output a, not at z
            z = self.forward(z)[0]
        if self.function == "sigmoid":
            s = _sigmoid(z)
            return delta * s * (1 - s), {}
        if self.function == "tanh":
            if bug == "tanh_prime_unsquared":
                return delta * (1 - np.tanh(z)), {}
            return delta * (1 - np.tanh(z) ** 2), {}
        slope = np.where(z > 0, self.alpha, 1.0) if bug == "leaky_wrong_side" else np.where(z > 0, 1.0, self.alpha)
        return delta * slope, {}
