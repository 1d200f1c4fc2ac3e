"""Hypothesis strategies that build valid cnngrad configs by construction.

Sizes are drawn in order, each bounded by what the shape so far allows (a kernel never
larger than the padded input it slides over, a pool window never larger than its input),
so every drawn config validates, and shrinking stays within valid configs.

    from hypothesis import given
    from cnngrad.strategies import configs

    @given(configs(max_layers=4))
    def test_my_backprop(raw):
        assert cnngrad.check(cnngrad.config.validate(raw)).passed
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

ACTIVATION_NAMES = ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "identity")


@st.composite
def conv_layer(draw: st.DrawFn, shape: tuple[int, int, int], max_size: int) -> tuple[dict, tuple]:
    """A conv entry that fits ``shape`` = (c, h, w), and its output shape."""
    c, h, w = shape
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    p = [draw(st.integers(0, 2 if h + 4 <= max_size else 0)), draw(st.integers(0, 2 if w + 4 <= max_size else 0))]
    # kernel extent d·(k−1)+1 must fit the padded input: k ≤ (size + 2p − 1)//d + 1
    k = [draw(st.integers(1, min(4, (h + 2 * p[0] - 1) // d[0] + 1))),
         draw(st.integers(1, min(4, (w + 2 * p[1] - 1) // d[1] + 1)))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    filters = draw(st.integers(1, 4))
    opts = {"filters": filters, "kernel": k, "stride": s, "padding": p, "dilation": d,
            "bias": draw(st.sampled_from(["tied", "untied", "none"])),
            "mode": draw(st.sampled_from(["correlation", "convolution"]))}
    out = (filters,) + tuple((n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate((h, w)))
    return {"conv": opts}, out


@st.composite
def pool_layer(draw: st.DrawFn, shape: tuple[int, int, int]) -> tuple[dict, tuple]:
    c, h, w = shape
    size = [draw(st.integers(1, min(3, h))), draw(st.integers(1, min(3, w)))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    opts = {"kind": draw(st.sampled_from(["max", "avg"])), "size": size, "stride": stride}
    return {"pool": opts}, (c, (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1)


@st.composite
def activation_layer(draw: st.DrawFn, names: Sequence[str] = ACTIVATION_NAMES) -> dict:
    name = draw(st.sampled_from(list(names)))
    if name == "leaky_relu":
        return {"activation": {"leaky_relu": draw(st.sampled_from([0.01, 0.1, 0.3]))}}
    return {"activation": name}


@st.composite
def block_layer(draw: st.DrawFn, shape: tuple[int, int, int], depth: int = 0,
                activations: Sequence[str] = ACTIVATION_NAMES) -> tuple[dict, tuple]:
    """A ``block`` entry on ``shape`` = (c, h, w): 1-3 paths of shape-keeping layers (conv
    'same', activations; a nested block while ``depth`` < 1; ``[]`` the identity), merged by
    ``add`` (every path ends with the same channels) or ``concat`` (channels add up)."""
    c, h, w = shape
    merge = draw(st.sampled_from(["add", "concat"]))
    common = draw(st.sampled_from([c, draw(st.integers(1, 4))])) if merge == "add" else None
    paths, widths = [], []
    for _ in range(draw(st.integers(1, 3))):
        filters = common if common is not None else draw(st.integers(1, 4))
        layers: list[dict] = []
        cur = (c, h, w)
        n = draw(st.integers(0 if filters == c and [] not in paths else 1, 2))  # one identity at most
        for j in range(n):
            kind = draw(st.sampled_from(["conv", "activation"] + (["block"] if depth < 1 else [])))
            if kind == "conv" or (j == 0 and filters != c):
                k = draw(st.sampled_from([1, 3]))
                layers.append({"conv": {"filters": filters, "kernel": k, "padding": k // 2,
                                        "bias": draw(st.sampled_from(["tied", "untied", "none"]))}})
                cur = (filters, h, w)
            elif kind == "activation":
                layers.append(draw(activation_layer(activations)))
            else:
                entry, cur = draw(block_layer(cur, depth + 1, activations))
                layers.append(entry)
        if cur[0] != filters:  # end on the path's channels
            layers.append({"conv": {"filters": filters, "kernel": 1}})
        paths.append(layers)
        widths.append(filters)
    out = (common if merge == "add" else sum(widths), h, w)
    return {"block": {"merge": merge, "paths": paths}}, out


@st.composite
def configs(draw: st.DrawFn, max_layers: int = 5, max_size: int = 10, max_batch: int = 3,
            dtypes: Sequence[str] = ("float64",), losses: Sequence[str] = ("mse", "softmax_cross_entropy"),
            kinds: Sequence[str] = ("conv", "activation", "pool", "block"),
            activations: Sequence[str] = ACTIVATION_NAMES) -> dict[str, Any]:
    """A raw config dict (as YAML would load it) that validates by construction.

    ``max_layers`` spatial layers drawn from ``kinds`` (``"block"`` among them draws
    residual / concat blocks, ``block_layer``), then, when the loss needs it or
    by chance, flatten and one or two dense layers.  Inputs are at most ``max_size``
    pixels a side and stay so (padding is drawn only while it keeps them there).
    """
    batch = draw(st.integers(1, max_batch))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, max_size)), draw(st.integers(3, max_size))
    shape = (c, h, w)
    layers: list[dict] = []
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(list(kinds)))
        if kind == "conv":
            entry, shape = draw(conv_layer(shape, max_size))
        elif kind == "pool":
            entry, shape = draw(pool_layer(shape))
        elif kind == "block":
            entry, shape = draw(block_layer(shape, 0, activations))
        else:
            entry = draw(activation_layer(activations))
        layers.append(entry)
    loss = draw(st.sampled_from(list(losses)))
    if loss == "softmax_cross_entropy" or draw(st.booleans()):
        layers.append({"flatten": {}})
        if draw(st.booleans()):
            layers.append({"dense": {"units": draw(st.integers(1, 6)), "bias": draw(st.booleans())}})
            layers.append(draw(activation_layer(activations)))
        layers.append({"dense": {"units": draw(st.integers(2, 5)), "bias": draw(st.booleans())}})
    return {
        "name": "hypothesis",
        "seed": draw(st.integers(0, 2**32 - 1)),
        "dtype": draw(st.sampled_from(list(dtypes))),
        "input": {"batch": batch, "channels": c, "height": h, "width": w},
        "init": draw(st.sampled_from(["lecun", "he", "xavier"])),
        "layers": layers,
        "loss": loss,
    }
