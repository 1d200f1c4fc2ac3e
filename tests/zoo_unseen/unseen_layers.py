"""Hand-written numpy layers with planted backprop bugs, written without looking at cnngrad's
diagnosis catalogue (to measure it on bugs it has never seen). ``bug: none`` is the correct
layer; any other name plants one mistake in ``backward`` only (the forward is always right).

Layers (plugins, docs/contract.md): ``UConv`` (kernel (kh, kw), stride, padding, dilation,
groups), ``UConvT`` (a transposed convolution), ``UDense``, ``UPool`` (max / avg, rectangular
and overlapping windows), ``UAct`` (sigmoid, tanh, leaky_relu, softplus).

The convolutions are written tap by tap (a loop over the kh·kw kernel taps, vectorised over
samples and pixels): the forward gathers ``ã[n, c, i·s + u·d, j·s + v·d]`` for each tap (u, v);
the backward scatters ``Σ_f W[f, c, u, v] δ[n, f, i, j]`` back to the same places, which is
the full convolution of the stride-dilated δ with ROT180(W), then crops the padding.
"""
from __future__ import annotations

import numpy as np


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if np.isscalar(x) else (int(x[0]), int(x[1]))


def _gather(a_pad: np.ndarray, kh: int, kw: int, s, d, ho: int, wo: int) -> np.ndarray:
    """Taps of a padded input: (n, c, kh, kw, ho, wo), out-of-range reads are 0."""
    n, c, hp, wp = a_pad.shape
    need_h, need_w = (kh - 1) * d[0] + (ho - 1) * s[0] + 1, (kw - 1) * d[1] + (wo - 1) * s[1] + 1
    if need_h > hp or need_w > wp:
        a_pad = np.pad(a_pad, ((0, 0), (0, 0), (0, max(0, need_h - hp)), (0, max(0, need_w - wp))))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=a_pad.dtype)
    for u in range(kh):
        for v in range(kw):
            cols[:, :, u, v] = a_pad[:, :, u * d[0]: u * d[0] + (ho - 1) * s[0] + 1: s[0],
                                     v * d[1]: v * d[1] + (wo - 1) * s[1] + 1: s[1]]
    return cols


def _scatter(dcols: np.ndarray, shape, s, d, offset=(0, 0)) -> np.ndarray:
    """The adjoint of _gather: dcols (n, c, kh, kw, ho, wo) added back into an array of ``shape``."""
    n, c, kh, kw, ho, wo = dcols.shape
    hp, wp = shape[2], shape[3]
    big = np.zeros((n, c, hp + (kh - 1) * d[0] + (ho - 1) * s[0] + 2 + offset[0],
                    wp + (kw - 1) * d[1] + (wo - 1) * s[1] + 2 + offset[1]), dtype=dcols.dtype)
    for u in range(kh):
        for v in range(kw):
            r, q = u * d[0] + offset[0], v * d[1] + offset[1]
            big[:, :, r: r + (ho - 1) * s[0] + 1: s[0], q: q + (wo - 1) * s[1] + 1: s[1]] += dcols[:, :, u, v]
    return big[:, :, :hp, :wp]


class UConv:
    """z[n, f, i, j] = Σ_{c,u,v} W[f, c, u, v] ã[n, g(f)·C/g + c, i·s + u·d, j·s + v·d] + b[f].

    W of shape (filters, C/groups, kh, kw). Backward: δ_in is the full convolution of the
    stride-dilated δ with ROT180(W), cropped by the padding; ∂W[f, c, u, v] = Σ_{n,i,j}
    δ[n, f, i, j] ã[n, c, i·s + u·d, j·s + v·d]; ∂b = Σ_{n,i,j} δ.
    """

    per_sample = True
    linear = True

    def __init__(self, in_shape, rng, *, filters, kernel=3, stride=1, padding=0, dilation=1,
                 groups=1, bug="none"):
        c, h, w = in_shape
        self.k, self.s, self.p, self.d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
        self.g, self.bug = int(groups), bug
        if c % self.g or filters % self.g:
            raise ValueError(f"groups {groups} must divide channels {c} and filters {filters}")
        self.geometry = {"op": "conv", "kernel": kernel, "stride": stride, "padding": padding,
                         "dilation": dilation, "groups": groups}
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.k, self.s, self.p, self.d
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        self.out_shape = (filters, ho, wo)
        fan_in = c // self.g * kh * kw
        self.params = {"W": rng.normal(0, fan_in ** -0.5, (filters, c // self.g, kh, kw)),
                       "b": rng.normal(0, 0.1, filters)}

    def _grouped(self, cols: np.ndarray) -> np.ndarray:
        n, c = cols.shape[:2]
        return cols.reshape(n, self.g, c // self.g, *cols.shape[2:])  # (n, g, c/g, kh, kw, ho, wo)

    def forward(self, a):
        (ph, pw) = self.p
        a_pad = np.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        _, ho, wo = self.out_shape
        cols = _gather(a_pad, *self.k, self.s, self.d, ho, wo)
        W = self.params["W"]
        Wg = W.reshape(self.g, W.shape[0] // self.g, *W.shape[1:])
        z = np.einsum("ngcuvij,gfcuv->ngfij", self._grouped(cols), Wg)
        z = z.reshape(a.shape[0], -1, ho, wo) + self.params["b"][:, None, None]
        return z, (a.shape, a_pad, cols)

    def backward(self, delta, cache):
        shape, a_pad, cols = cache
        bug, W = self.bug, self.params["W"]
        n, f, ho, wo = delta.shape
        (ph, pw), g = self.p, self.g
        dg = delta.reshape(n, g, f // g, ho, wo)
        colsg = self._grouped(cols)
        # ∂W = Σ_{n,i,j} δ ã-taps
        if bug == "dw_sample0":                       # only the first sample's term
            dW = np.einsum("gfij,gcuvij->gfcuv", dg[0], colsg[0]).reshape(W.shape)
        elif bug == "dw_reshape":                     # (c·kh·kw, f) matrix reshaped, not transposed
            M = cols.transpose(1, 2, 3, 0, 4, 5).reshape(-1, n * ho * wo) @ \
                delta.transpose(0, 2, 3, 1).reshape(n * ho * wo, f)
            dW = M.reshape(W.shape)
        elif bug == "dw_batch1":                      # δ flattened as (f, n·ho·wo) by a bare reshape
            X = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, -1)
            dW = (delta.reshape(f, -1) @ X).reshape(W.shape)
        elif bug in ("dw_dilation_twice", "dw_dilation_ignored"):  # taps read at d·d, or at 1
            dd = (self.d[0] * self.d[0], self.d[1] * self.d[1]) if bug == "dw_dilation_twice" else (1, 1)
            wrong = self._grouped(_gather(a_pad, *self.k, self.s, dd, ho, wo))
            dW = np.einsum("ngfij,ngcuvij->gfcuv", dg, wrong).reshape(W.shape)
        else:
            dW = np.einsum("ngfij,ngcuvij->gfcuv", dg, colsg).reshape(W.shape)
        if bug == "dw_rot90":
            dW = np.rot90(dW, 1, axes=(2, 3)).copy()
        elif bug == "dw_transposed":
            dW = dW.swapaxes(2, 3).copy()
        elif bug == "dw_batch_mean":
            dW = dW / n
        elif bug == "dw_tiny_scale":
            dW = dW * (1 + 1e-5)
        db = delta.sum(axis=(0, 2, 3))
        # δ_in: scatter Σ_f W[f, c, u, v] δ[n, f, i, j] back to the taps, crop the padding
        K = W
        if bug == "delta_rot90":
            K = np.rot90(W, 1, axes=(2, 3))
        elif bug == "delta_transposed":
            K = W.swapaxes(2, 3)
        Kg = K.reshape(g, f // g, *K.shape[1:])
        if bug == "delta_groups_rolled":              # group g's δ slid with group g+1's kernels
            Kg = np.roll(Kg, 1, axis=0)
        dcols = np.einsum("ngfij,gfcuv->ngcuvij", dg, Kg).reshape(n, -1, *self.k, ho, wo)
        s, d, offset = self.s, self.d, (0, 0)
        if bug == "delta_dilation_ignored":
            d = (1, 1)
        elif bug == "delta_dilation_twice":
            d = (self.d[0] * self.d[0], self.d[1] * self.d[1])
        elif bug == "delta_stride_offset":            # the stride's zeros put before each δ entry
            offset = (self.s[0] - 1, self.s[1] - 1)
        d_pad = _scatter(dcols, a_pad.shape, s, d, offset)
        h, w = shape[2], shape[3]
        if bug == "delta_crop_far_side":              # all 2p of the padding cropped from the bottom/right
            delta_in = d_pad[:, :, :h, :w]
        else:
            delta_in = d_pad[:, :, ph: ph + h, pw: pw + w]
        if bug == "delta_diag_shift":                 # one pixel down and right
            shifted = np.zeros_like(delta_in)
            shifted[:, :, 1:, 1:] = delta_in[:, :, :-1, :-1]
            delta_in = shifted
        elif bug == "delta_sample0_only":             # the loop over samples ran for the first one only
            delta_in = delta_in.copy()
            delta_in[1:] = 0
        elif bug == "delta_clipped":                  # gradient clipping inside the layer's backward
            delta_in = np.clip(delta_in, -0.002, 0.002)
        return delta_in, {"W": dW, "b": db}


class UConvT:
    """Transposed convolution: z[n, f, i·s + u·d − p, j·s + v·d − p] += Σ_c a[n, c, i, j] W[c, f, u, v].

    W of shape (C, filters, kh, kw). Backward: δ_in[n, c, i, j] = Σ_{f,u,v} W[c, f, u, v]
    δ̃[n, f, i·s + u·d, j·s + v·d] (δ̃ the padded δ: an ordinary correlation with stride s);
    ∂W[c, f, u, v] = Σ_{n,i,j} a[n, c, i, j] δ̃[n, f, i·s + u·d, j·s + v·d]; ∂b = Σ δ.
    """

    per_sample = True
    linear = True

    def __init__(self, in_shape, rng, *, filters, kernel=3, stride=2, padding=1, dilation=1, bug="none"):
        c, h, w = in_shape
        self.k, self.s, self.p, self.d, self.bug = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation), bug
        self.geometry = {"op": "conv_transpose", "kernel": kernel, "stride": stride, "padding": padding,
                         "dilation": dilation}
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.k, self.s, self.p, self.d
        self.out_shape = (filters, (h - 1) * sh - 2 * ph + dh * (kh - 1) + 1, (w - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        self.params = {"W": rng.normal(0, (c * kh * kw) ** -0.5 * 2, (c, filters, kh, kw)),
                       "b": rng.normal(0, 0.1, filters)}

    def forward(self, a):
        n, c, h, w = a.shape
        (ph, pw) = self.p
        f, ho, wo = self.out_shape
        dcols = np.einsum("ncij,cfuv->nfuvij", a, self.params["W"])
        full = _scatter(dcols, (n, f, ho + 2 * ph, wo + 2 * pw), self.s, self.d)
        z = full[:, :, ph: ph + ho, pw: pw + wo] + self.params["b"][:, None, None]
        return z, a

    def backward(self, delta, a):
        n, c, h, w = a.shape
        (ph, pw), W = self.p, self.params["W"]
        d_pad = np.pad(delta, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        taps = _gather(d_pad, *self.k, self.s, self.d, h, w)          # (n, f, kh, kw, h, w)
        K = W[:, :, ::-1, ::-1] if self.bug == "delta_rot180" else W    # a kernel rotation that does not belong
        delta_in = np.einsum("nfuvij,cfuv->ncij", taps, K)
        dW = np.einsum("ncij,nfuvij->cfuv", a, taps)
        if self.bug == "dw_one_entry":                                  # one tap's sum lost its last sample
            dW[1, 0, 2, 1] -= np.einsum("ij,ij->", a[-1, 1], taps[-1, 0, 2, 1])
        return delta_in, {"W": dW, "b": delta.sum(axis=(0, 2, 3))}


class UDense:
    """z = a Wᵀ + b, W of shape (units, in). Backward: δ_in = δ W, ∂W = δᵀ a, ∂b = Σ_n δ."""

    per_sample = True
    linear = True

    def __init__(self, in_shape, rng, *, units, bug="none"):
        (m,) = in_shape
        self.bug, self.out_shape = bug, (units,)
        self.geometry = {"op": "dense"}
        self.params = {"W": rng.normal(0, m ** -0.5, (units, m)), "b": rng.normal(0, 0.1, units)}

    def forward(self, a):
        return a @ self.params["W"].T + self.params["b"], a

    def backward(self, delta, a):
        W, bug, n = self.params["W"], self.bug, delta.shape[0]
        delta_in = delta @ W
        dW = delta.T @ a
        db = delta.sum(axis=0)
        if bug == "delta_reshape":        # Wᵀ wanted as (units, in) again: reshaped, not transposed back
            delta_in = delta @ W.T.reshape(W.shape)
        elif bug == "delta_batch_mean":   # δ averaged over the batch while ∂W sums it
            delta_in = delta_in / n
        elif bug == "delta_batch1":       # δ W summed over the batch and broadcast: right for n = 1 only
            delta_in = np.broadcast_to(delta_in.sum(axis=0), delta_in.shape).copy()
        elif bug == "delta_tiny_scale":
            delta_in = delta_in * (1 - 1e-5)
        elif bug == "db_one_entry":       # a typo: the last unit's ∂b read from the unit before
            db[-1] = delta[:, -2].sum()
        elif bug == "db_sample0":
            db = delta[0].copy()
        elif bug == "dw_batch1":          # the outer product of the batch sums: right for n = 1 only
            dW = np.outer(delta.sum(axis=0), a.sum(axis=0))
        elif bug == "dw_transposed":      # aᵀ δ where δᵀ a belongs (square W)
            dW = a.T @ delta
        return delta_in, {"W": dW, "b": db}


class UPool:
    """Max or average pooling, window (kh, kw), stride (sh, sw), no padding.

    avg: δ_in[taps of window (i, j)] += δ[i, j] / (kh·kw); max: δ[i, j] to the first maximal tap.
    """

    per_sample = True

    def __init__(self, in_shape, rng, *, kind="max", size=2, stride=None, bug="none"):
        c, h, w = in_shape
        self.kind, self.bug = kind, bug
        self.k, self.s = _pair(size), _pair(size if stride is None else stride)
        self.linear = kind == "avg"
        self.geometry = {"op": f"{kind}_pool", "kernel": size, "stride": self.s}
        self.out_shape = (c, (h - self.k[0]) // self.s[0] + 1, (w - self.k[1]) // self.s[1] + 1)
        self.params = {}

    def forward(self, a):
        _, ho, wo = self.out_shape
        taps = _gather(a, *self.k, self.s, (1, 1), ho, wo)          # (n, c, kh, kw, ho, wo)
        n, c = a.shape[:2]
        flat = taps.reshape(n, c, -1, ho, wo)
        if self.kind == "avg":
            return flat.mean(axis=2), (a.shape, None, flat)
        idx = flat.argmax(axis=2)
        return np.take_along_axis(flat, idx[:, :, None], 2)[:, :, 0], (a.shape, idx, flat)

    def kink_state(self, cache):
        return cache[1]

    def backward(self, delta, cache):
        shape, idx, flat = cache
        (kh, kw), bug = self.k, self.bug
        n, c, ho, wo = delta.shape
        if self.kind == "avg":
            div = kh * kh if bug == "avg_divisor_square" else kh * kw
            dcols = np.broadcast_to(delta[:, :, None, None] / div, (n, c, kh, kw, ho, wo))
        else:
            if bug == "max_column_major":    # argmax taken over the window read column by column
                col_major = flat.reshape(n, c, kh, kw, ho, wo).transpose(0, 1, 3, 2, 4, 5).reshape(n, c, -1, ho, wo)
                idx = col_major.argmax(axis=2)
            if bug == "max_softmax":         # a soft argmax: δ shared by softmax weights of the window
                e = np.exp(flat - flat.max(axis=2, keepdims=True))
                dflat = delta[:, :, None] * e / e.sum(axis=2, keepdims=True)
            else:
                dflat = np.zeros_like(flat)
                np.put_along_axis(dflat, idx[:, :, None], delta[:, :, None], 2)
            dcols = dflat.reshape(n, c, kh, kw, ho, wo)
        return _scatter(np.ascontiguousarray(dcols), shape, self.s, (1, 1)), {}


class UAct:
    """a = σ(z), elementwise: sigmoid, tanh, leaky_relu (slope alpha below 0), softplus.

    Backward: δ_in = δ ⊙ σ'(z).
    """

    per_sample = True
    geometry = {"op": "elementwise"}

    def __init__(self, in_shape, rng, *, function, alpha=0.01, bug="none"):
        self.function, self.alpha, self.bug = function, float(alpha), bug
        self.out_shape, self.params = tuple(in_shape), {}

    def _sigma(self, z):
        if self.function == "sigmoid":
            return 1 / (1 + np.exp(-z))
        if self.function == "tanh":
            return np.tanh(z)
        if self.function == "softplus":
            return np.logaddexp(0, z)
        if self.function == "leaky_relu":
            return np.where(z > 0, z, self.alpha * z)
        raise ValueError(f"unknown function {self.function!r}")

    def _prime(self, z):
        if self.function == "sigmoid":
            s = 1 / (1 + np.exp(-z))
            return s * (1 - s)
        if self.function == "tanh":
            return 1 - np.tanh(z) ** 2
        if self.function == "softplus":
            return 1 / (1 + np.exp(-z))
        return np.where(z > 0, 1.0, self.alpha)

    def forward(self, z):
        return self._sigma(z), z

    def kink_state(self, z):
        return z > 0 if self.function == "leaky_relu" else None

    def backward(self, delta, z):
        bug = self.bug
        if bug == "prime_at_a":           # σ' evaluated at the output a = σ(z)
            return delta * self._prime(self._sigma(z)), {}
        if bug == "wrong_side":           # the slope α put on the positive side
            return delta * np.where(z > 0, self.alpha, 1.0), {}
        if bug == "tanh_taylor":          # tanh'(z) ≈ 1 − z², its Taylor series cut after z²
            return delta * (1 - z * z), {}
        return delta * self._prime(z), {}
