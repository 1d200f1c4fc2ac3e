"""``cnngrad explain``: why the kernel is rotated, shown on a tiny example of a conv layer.

Everything here is pure: it returns rich renderables for the CLI to print.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from . import conv as C
from .config import Config, ConfigError
from .layers import Conv

Array = np.ndarray


def matrix(title: str, m: Array, fmt: str = "{:g}") -> Group:
    """A 2-D array as a small boxed grid under its title."""
    t = Table(show_header=False, padding=(0, 1))
    for _ in range(m.shape[1]):
        t.add_column(justify="right")
    for row in m:
        t.add_row(*(fmt.format(v + 0.0) for v in row))  # + 0.0: no "-0"
    return Group(Text(title, style="bold"), t)


def explain(config: Config, layer_index: int, size: int = 5) -> Group:
    """Step by step, for one channel and a ``size``×``size`` input with small integers: the
    forward correlation, W and ROT180(W), δ^{l+1} dilated and padded, and the full
    convolution that gives δ^l — checked against the layer's own backward and the loop."""
    if not 0 <= layer_index < len(config.layers):
        raise ConfigError("--layer", f"{layer_index} is not a layer index (0 … {len(config.layers) - 1})")
    spec = config.layers[layer_index]
    if spec.kind == "conv_transpose":  # its backward is the conv forward (explain_transpose)
        from .explain_transpose import explain_transpose

        return explain_transpose(config, layer_index, size)
    if spec.kind != "conv":
        convs = [s.index for s in config.layers if s.kind == "conv"]
        article = "an" if spec.kind[0] in "aeiou" else "a"
        raise ConfigError(f"layers[{layer_index}]", f"is {article} {spec.kind} layer; explain shows a conv layer "
                                                   f"(conv layers here: {', '.join(map(str, convs)) or 'none'})")
    o = spec.options
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = o["kernel"], o["stride"], o["padding"], o["dilation"]
    h = max(size, C.effective_kernel(kh, dh) - 2 * ph)
    w = max(size, C.effective_kernel(kw, dw) - 2 * pw)
    rng = np.random.default_rng(0)
    layer = Conv((1, h, w), rng, filters=1, kernel=[kh, kw], stride=[sh, sw], padding=[ph, pw],
                 dilation=[dh, dw], bias="none", mode=o["mode"])
    layer.params["W"][...] = rng.integers(-3, 4, size=layer.params["W"].shape)
    a = rng.integers(-2, 3, size=(1, 1, h, w)).astype(float)
    z, cache = layer.forward(a)
    delta = rng.integers(-2, 3, size=z.shape).astype(float)
    W = layer.params["W"][0, 0]
    K = layer._kernel()[0, 0]
    conv_mode = o["mode"] == "convolution"
    ke = (C.effective_kernel(kh, dh), C.effective_kernel(kw, dw))
    dilated = C.dilate(delta, (sh, sw))
    padded = C.pad(dilated, (ke[0] - 1, ke[1] - 1))
    a_pad = C.pad(a, (ph, pw))
    full = C.full_convolve(delta, layer._kernel(), a_pad.shape[-2:], (sh, sw), (dh, dw))
    delta_prev = C.crop(full, (ph, pw))
    backward, grads = layer.backward(delta, cache)
    naive = C.crop(C.full_convolve_naive(delta, layer._kernel(), a_pad.shape[-2:], (sh, sw), (dh, dw)), (ph, pw))
    ok = np.allclose(delta_prev, backward) and np.allclose(delta_prev, naive)

    steps: list[Any] = [Text(
        f"layers[{layer_index}]: conv {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}, dilation {dh}x{dw}, "
        f"mode {o['mode']} — shown for one channel, a {h}x{w} input and small integers.\n", style="bold")]
    steps.append(Text("1. Forward. " + (
        "A true convolution: z^{l+1} = w * a^l = ROT180(w) ⋆ a^l — the kernel slid over the input is ROT180(w)."
        if conv_mode else
        "z^{l+1} = w ⋆ a^l (a correlation: what frameworks call convolution) — the kernel slid is w itself.")))
    steps.append(matrix("w^{l+1}", W))
    steps.append(matrix("ROT180(w^{l+1})  (w_{-x,-y}: both axes flipped)", C.rot180(W)))
    steps.append(matrix(f"a^l, zero-padded by {ph}x{pw}", a_pad[0, 0]))
    steps.append(matrix("z^{l+1}", z[0, 0]))
    steps.append(Text("2. Backward. " + (
        "Each z^{l+1}_{x',y'} = Σ w_{a,b} a^l_{x'-a, y'-b}, so ∂C/∂a^l_{x,y} = Σ δ^{l+1}_{x',y'} w_{x'-x, y'-y}: "
        "the seed's δ^{l+1} * ROT180(w) — slide w itself over the padded δ." if conv_mode else
        "Each z^{l+1}_{x',y'} = Σ w_{a,b} a^l_{x'+a, y'+b}, so ∂C/∂a^l_{x,y} = Σ δ^{l+1}_{x',y'} w_{x-x', y-y'}: "
        "a full convolution of δ^{l+1} with w — slide ROT180(w) over the padded δ. (The seed's layers are "
        "true convolutions, whose kernel is ROT180(w); the rotations cancel there.)")))
    steps.append(matrix("δ^{l+1} = ∂C/∂z^{l+1}", delta[0, 0]))
    if (sh, sw) != (1, 1):
        steps.append(matrix(f"δ^{{l+1}} dilated: {sh - 1}x{sw - 1} zeros between entries (the stride)", dilated[0, 0]))
    steps.append(matrix(f"padded by the kernel extent − 1 = {ke[0] - 1}x{ke[1] - 1} on each side", padded[0, 0]))
    slid = C.rot180(K)
    steps.append(matrix("slide ROT180 of the forward's kernel over it"
                        + (" = ROT180(ROT180(w)) = w" if conv_mode else " = ROT180(w)")
                        + (f", its taps {dh}x{dw} apart (the dilation)" if (dh, dw) != (1, 1) else ""), slid))
    steps.append(matrix("the full convolution: δ w.r.t. the padded input", full[0, 0]))
    steps.append(matrix(f"δ^l: cropped by the padding {ph}x{pw} (then ⊙ σ'(z^l) in the activation layer)",
                        delta_prev[0, 0]))
    steps.append(matrix("∂C/∂w = a^l ⋆ δ^{l+1} (valid correlation)" + (", then ROT180" if conv_mode else ""),
                        grads["W"][0, 0]))
    steps.append(Text(("✓ equal to the layer's backward and to the loop over every (x', y')" if ok else
                       "✗ differs from the layer's backward: a bug"), style="bold green" if ok else "bold red"))
    return Group(*steps)
