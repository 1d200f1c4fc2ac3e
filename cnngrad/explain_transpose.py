"""``cnngrad explain`` on a ``conv_transpose`` layer: its forward is a conv layer's backward
(the full convolution with the rotated kernel), so its backward is the conv forward.

Pure: returns rich renderables for the CLI to print.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Group
from rich.text import Text

from . import conv as C
from . import naive_modern as naive
from .config import Config
from .explain import matrix
from .layers_modern import ConvTranspose


def explain_transpose(config: Config, layer_index: int, size: int = 3) -> Group:
    """Step by step, for one channel, a ``size``×``size`` input and small integers: the forward
    as the full convolution of the (stride-dilated) input with w — sliding ROT180(w) — and the
    backward as the plain correlation with w, checked against the layer and the loops."""
    o = config.layers[layer_index].options
    (kh, kw), (sh, sw), (ph, pw) = o["kernel"], o["stride"], o["padding"]
    (oph, opw), (dh, dw) = o["output_padding"], o["dilation"]
    h = w = max(2, min(size, 4))
    rng = np.random.default_rng(0)
    layer = ConvTranspose((1, h, w), rng, filters=1, kernel=[kh, kw], stride=[sh, sw], padding=[ph, pw],
                          output_padding=[oph, opw], dilation=[dh, dw], bias="none")
    layer.params["W"][...] = rng.integers(-3, 4, size=layer.params["W"].shape)
    W = layer.params["W"][0, 0]
    a = rng.integers(-2, 3, size=(1, 1, h, w)).astype(float)
    z, cache = layer.forward(a)
    delta = rng.integers(-2, 3, size=z.shape).astype(float)
    ke = (C.effective_kernel(kh, dh), C.effective_kernel(kw, dw))
    spread = C.pad(C.dilate(a, (sh, sw)), (ke[0] - 1, ke[1] - 1))
    spread = np.pad(spread, [(0, 0), (0, 0), (0, oph), (0, opw)])  # output_padding: bottom/right
    full = C.correlate(spread, C.rot180(layer.params["W"]).swapaxes(0, 1), (1, 1), (dh, dw))
    forward = C.crop(full, (ph, pw))
    dpad = C.pad(delta, (ph, pw))
    backward, grads = layer.backward(delta, cache)
    loop_in, loop_w = naive.conv_transpose_backward(a, layer.params["W"], delta, (sh, sw), (ph, pw), (dh, dw))
    ok = (np.allclose(forward, z) and np.allclose(backward, loop_in) and np.allclose(grads["W"], loop_w)
          and np.allclose(z, naive.conv_transpose_forward(a, layer.params["W"], None, (sh, sw), (ph, pw),
                                                           (oph, opw), (dh, dw))))
    steps: list[Any] = [Text(
        f"layers[{layer_index}]: conv_transpose {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw}, output_padding "
        f"{oph}x{opw}, dilation {dh}x{dw} — shown for one channel, a {h}x{w} input and small integers.\n",
        style="bold")]
    steps.append(Text("1. Forward. Every a^l_{x,y} spreads w over the output: z̃_{x·s+u, y·s+v} += a^l_{x,y} w_{u,v}. "
                      "That is a conv layer's backward step run forwards: the full convolution of a^l (dilated by the "
                      "stride, padded by the kernel extent − 1) with w — slide ROT180(w) over it."))
    steps.append(matrix("w", W))
    steps.append(matrix("ROT180(w)  (the rotated kernel slid in the forward)", C.rot180(W)))
    steps.append(matrix("a^l", a[0, 0]))
    steps.append(matrix("a^l dilated and padded" + (f" (+{oph}x{opw} output_padding at the bottom/right)"
                                                    if (oph, opw) != (0, 0) else ""), spread[0, 0]))
    steps.append(matrix(f"z^{{l+1}}: the full convolution, cropped by the padding {ph}x{pw}", forward[0, 0]))
    steps.append(Text("2. Backward. ∂C/∂a^l_{x,y} = Σ_{u,v} δ^{l+1}_{x·s+u, y·s+v} w_{u,v}: the conv *forward* — "
                      "δ^{l+1}, padded by p, correlated with w itself (no rotation: the forward's ROT180 and the "
                      "backward's cancel). ∂C/∂w_{u,v} = Σ a^l_{x,y} δ̃^{l+1}_{x·s+u, y·s+v}: a conv layer's ∂C/∂w "
                      "with the roles of a and δ swapped."))
    steps.append(matrix("δ^{l+1} = ∂C/∂z^{l+1}", delta[0, 0]))
    steps.append(matrix(f"δ^{{l+1}} padded by {ph}x{pw}", dpad[0, 0]))
    steps.append(matrix("slide w (not rotated) over it, stride " + f"{sh}x{sw}", W))
    steps.append(matrix("δ^l = w ⋆ δ̃^{l+1} (the conv forward)", backward[0, 0]))
    steps.append(matrix("∂C/∂w", grads["W"][0, 0]))
    steps.append(Text(("✓ equal to the layer's forward and backward and to the loops over every entry" if ok else
                       "✗ differs from the layer: a bug"), style="bold green" if ok else "bold red"))
    return Group(*steps)
