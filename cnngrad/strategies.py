"""Hypothesis strategies that build valid cnngrad configs by construction.

Sizes are drawn in order, each bounded by what the shape so far allows (a kernel never
larger than the padded input it slides over, a pool window never larger than its input),
so every drawn config validates, and shrinking stays within valid configs.  Every case of
the schema can come out: conv (stride, padding, dilation, tied/untied/no bias, correlation
or convolution), max and avg pooling, flatten, dense (with or without bias), every
activation (leaky ReLU with a drawn slope), both losses, both dtypes, every init, and
the optional keys written out or left to their defaults, ints or ``[h, w]`` pairs.

    from hypothesis import given
    from cnngrad.strategies import configs

    @given(configs(max_layers=4))
    def test_my_backprop(raw):
        assert cnngrad.check(raw).passed

``sample(rng, **same arguments)`` draws through the same builder from a numpy
``Generator`` instead, for reproducible batches (``benchmarks/verdicts.py``).

``kinds`` picks the layer kinds drawn (default: all of :data:`KINDS`); a net is its spatial
layers (conv, pool, activation), then, when flatten or dense is asked for, a flatten and
its flat layers (dense, activation).  Asking for dense alone brings the flatten it needs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .config import DTYPES, INITS
from .draws import Draw, HypothesisDraw, NumpyDraw, Rejected
from .layers import ACTIVATIONS
from .losses import LOSSES
from .property import settings  # noqa: F401  the shipped settings for property tests (no deadline)
from .strategies_modern import MODERN_KINDS, modern_layer

ACTIVATION_NAMES = tuple(ACTIVATIONS)  # sigmoid, tanh, relu, leaky_relu, softplus, identity
SPATIAL_KINDS = ("conv", "pool", "activation", "block")  # (c, h, w) -> (c', h', w')
FLAT_KINDS = ("flatten", "dense")  # flatten, then dense and activation on (features,)
KINDS = SPATIAL_KINDS + FLAT_KINDS  # what configs(kinds=...) draws by default
KNOWN_KINDS = KINDS + MODERN_KINDS  # and what it can draw when asked (strategies_modern)
MAX_KERNEL, MAX_STRIDE, MAX_DILATION, MAX_PADDING, MAX_POOL = 4, 3, 2, 2, 3
MAX_FILTERS, MAX_CHANNELS, MAX_UNITS = 4, 3, 6



def _written(d: Draw, opts: dict, key: str, value: Any, default: Any = None) -> None:
    """Put ``value`` at ``opts[key]`` as a config may write it: a pair [h, w] of equal ints
    as one int, and a value equal to the key's default sometimes left out."""
    if value == default and d.boolean():
        return
    if isinstance(value, list) and value[0] == value[1] and d.boolean():
        value = value[0]
    opts[key] = value


def conv_layer(d: Draw, shape: tuple[int, ...], max_size: int) -> tuple[dict, tuple[int, ...]]:
    """A conv entry that fits ``shape`` = (c, h, w), and its output shape (filters, ho, wo).

    Padding is drawn only while the padded input stays within ``max_size`` a side."""
    c, h, w = shape
    dil = [d.integer(1, MAX_DILATION), d.integer(1, MAX_DILATION)]
    p = [d.integer(0, MAX_PADDING if n + 2 * MAX_PADDING <= max_size else 0) for n in (h, w)]
    # the kernel's extent dil·(k−1)+1 must fit the padded input: k ≤ (size + 2p − 1)//dil + 1
    k = [d.integer(1, min(MAX_KERNEL, (n + 2 * p[i] - 1) // dil[i] + 1)) for i, n in enumerate((h, w))]
    s = [d.integer(1, MAX_STRIDE), d.integer(1, MAX_STRIDE)]
    filters = d.integer(1, MAX_FILTERS)
    opts: dict[str, Any] = {"filters": filters}
    _written(d, opts, "kernel", k)
    _written(d, opts, "stride", s, [1, 1])
    _written(d, opts, "padding", p, [0, 0])
    _written(d, opts, "dilation", dil, [1, 1])
    _written(d, opts, "bias", d.choice(["tied", "untied", "none"]), "tied")
    _written(d, opts, "mode", d.choice(["correlation", "convolution"]), "correlation")
    out = (filters,) + tuple((n + 2 * p[i] - dil[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate((h, w)))
    return {"conv": opts}, out


def pool_layer(d: Draw, shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    """A max or avg pool whose window fits ``shape`` = (c, h, w), and its output shape."""
    c, h, w = shape
    size = [d.integer(1, min(MAX_POOL, h)), d.integer(1, min(MAX_POOL, w))]
    stride = [d.integer(1, MAX_STRIDE), d.integer(1, MAX_STRIDE)]
    opts: dict[str, Any] = {}
    _written(d, opts, "kind", d.choice(["max", "avg"]), "max")
    _written(d, opts, "size", size, [2, 2])
    _written(d, opts, "stride", stride, size)  # stride defaults to the window size
    return {"pool": opts}, (c, (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1)


def activation_layer(d: Draw, names: Sequence[str] = ACTIVATION_NAMES) -> dict:
    """An activation entry, in any of the forms the schema takes (``relu``, ``{relu: null}``,
    ``{leaky_relu: 0.2}``); leaky ReLU's slope is a float in [−1, 1], 0.01 when left out."""
    name = d.choice(list(names))
    if name == "leaky_relu":
        form = d.choice(["slope", "default", "bare"])
        if form == "slope":
            return {"activation": {"leaky_relu": d.real(-1.0, 1.0)}}
        return {"activation": {"leaky_relu": None} if form == "default" else "leaky_relu"}
    return {"activation": {name: None} if d.integer(0, 3) == 0 else name}


def dense_layer(d: Draw, min_units: int = 1) -> tuple[dict, tuple[int, ...]]:
    units = d.integer(min_units, MAX_UNITS)
    opts: dict[str, Any] = {"units": units}
    _written(d, opts, "bias", d.boolean(), True)
    return {"dense": opts}, (units,)


@dataclass(frozen=True)
class Options:
    """What to draw (``configs``' arguments, checked)."""

    max_layers: int
    max_size: int
    max_batch: int
    dtypes: tuple[str, ...]
    losses: tuple[str, ...]  # only those a net of ``kinds`` can end in
    kinds: tuple[str, ...]
    activations: tuple[str, ...]
    max_dense: int
    min_dense: int


def options(max_layers: int = 5, max_size: int = 10, max_batch: int = 3,
            dtypes: Sequence[str] = ("float64",), losses: Sequence[str] = tuple(LOSSES),
            kinds: Sequence[str] = KINDS, activations: Sequence[str] = ACTIVATION_NAMES,
            max_dense: int = 2, min_dense: int = 1) -> Options:
    """Check ``configs``' arguments: unknown kinds, activations, dtypes or losses, and
    combinations no valid config has (softmax cross-entropy with neither flatten nor dense),
    raise ValueError naming what is known."""
    kinds, activations = tuple(kinds), tuple(activations)
    for what, given, known in (("kinds", kinds, KNOWN_KINDS), ("activations", activations, ACTIVATION_NAMES),
                               ("dtypes", tuple(dtypes), DTYPES), ("losses", tuple(losses), tuple(LOSSES))):
        bad = [k for k in given if k not in known]
        if bad or not (given or what == "activations"):
            why = "custom layers are your own code, not drawn; " if "custom" in bad else ""
            raise ValueError(f"configs({what}=...): {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; "
                             f"{why}known: {', '.join(known)}")
    if "activation" in kinds and not activations:
        raise ValueError("configs(activations=...): empty, but kinds has 'activation'")
    flat = any(k in kinds for k in FLAT_KINDS)
    feasible = tuple(loss for loss in losses if loss == "mse" or flat)
    if not feasible:
        raise ValueError("configs(losses=('softmax_cross_entropy',)) needs a flat output: "
                         "put 'flatten' or 'dense' in kinds")
    if min(max_layers, max_size, max_batch, max_dense) < 1 or not 0 <= min_dense <= max_dense:
        raise ValueError("configs(): max_layers, max_size, max_batch and max_dense must be >= 1, "
                         "0 <= min_dense <= max_dense")
    return Options(max_layers, max_size, max_batch, tuple(dtypes), feasible, kinds, activations, max_dense,
                   min_dense)


def configs(max_layers: int = 5, max_size: int = 10, max_batch: int = 3,
            dtypes: Sequence[str] = ("float64",), losses: Sequence[str] = tuple(LOSSES),
            kinds: Sequence[str] = KINDS, activations: Sequence[str] = ACTIVATION_NAMES,
            max_dense: int = 2, min_dense: int = 1) -> st.SearchStrategy[dict[str, Any]]:
    """A hypothesis strategy of raw config dicts (as YAML would load them) that validate by
    construction.

    Up to ``max_layers`` spatial layers drawn from ``kinds``, then — when ``kinds`` has
    flatten or dense and the loss needs it or by chance — a flatten and ``min_dense`` to
    ``max_dense`` dense layers when kinds has dense (each maybe followed by an activation).
    ``min_dense=0`` lets a net end in a bare flatten, where a one-filter conv's bias feeds a
    softmax with a gradient zero in truth: cnngrad fails that today (benchmarks/verdicts.py).
    Inputs are 1 to ``max_size`` pixels a side (padding is drawn only while it keeps them
    there), batches 1 to ``max_batch``.  ``dtypes`` defaults to float64 only; ``DTYPES`` gives float32 too.
    Bad arguments raise ValueError at once (``options``)."""
    opts = options(max_layers, max_size, max_batch, dtypes, losses, kinds, activations, max_dense, min_dense)
    return _drawn(opts)


def block_layer(d: Draw, shape: tuple[int, ...], depth: int = 0,
                activations: Sequence[str] = ACTIVATION_NAMES) -> tuple[dict, tuple[int, ...]]:
    """A ``block`` entry on ``shape`` = (c, h, w): 1-3 paths of shape-keeping layers (conv
    'same', activations; a nested block while ``depth`` < 1; ``[]`` the identity), merged by
    ``add`` (every path ends with the same channels) or ``concat`` (channels add up)."""
    c, h, w = shape
    merge = d.choice(["add", "concat"])
    common = d.choice([c, d.integer(1, 4)]) if merge == "add" else None
    paths: list[list[Any]] = []
    widths: list[int] = []
    for _ in range(d.integer(1, 3)):
        filters = common if common is not None else d.integer(1, 4)
        layers: list[Any] = []
        cur: tuple[int, ...] = (c, h, w)
        n = d.integer(0 if filters == c and [] not in paths else 1, 2)  # one identity at most
        for j in range(n):
            kind = d.choice(["conv", "activation"] + (["block"] if depth < 1 else []))
            if kind == "conv" or (j == 0 and filters != c):
                k = d.choice([1, 3])
                layers.append({"conv": {"filters": filters, "kernel": k, "padding": k // 2,
                                        "bias": d.choice(["tied", "untied", "none"])}})
                cur = (filters, h, w)
            elif kind == "activation" and activations:
                layers.append(activation_layer(d, activations))
            elif kind == "block":
                entry, cur = block_layer(d, cur, depth + 1, activations)
                layers.append(entry)
        if cur[0] != filters:  # end on the path's channels
            layers.append({"conv": {"filters": filters, "kernel": 1}})
        paths.append(layers)
        widths.append(filters)
    out = (common if common is not None else sum(widths), h, w)
    return {"block": {"merge": merge, "paths": paths}}, out


@st.composite
def _drawn(draw: st.DrawFn, opts: Options) -> dict[str, Any]:
    return build(HypothesisDraw(draw), opts)


def sample(rng: np.random.Generator, **kwargs: Any) -> dict[str, Any]:
    """One config drawn with a numpy rng through the same builder as ``configs(**kwargs)``:
    the same seed gives the same configs, whatever the hypothesis version."""
    opts = options(**kwargs)
    for _ in range(1000):
        try:
            return build(NumpyDraw(rng), opts)
        except Rejected:
            continue
    raise ValueError(f"configs{kwargs}: 1000 draws in a row gave no valid config")


def build(d: Draw, o: Options) -> dict[str, Any]:
    """One raw config, every choice taken from ``d`` in order (sizes before what they bound)."""
    spatial = [k for k in o.kinds if k in SPATIAL_KINDS + MODERN_KINDS]
    batch = d.integer(1, o.max_batch)
    c, h, w = d.integer(1, MAX_CHANNELS), d.integer(1, o.max_size), d.integer(1, o.max_size)
    shape: tuple[int, ...] = (c, h, w)
    loss = d.choice(o.losses)
    has_flat = any(k in o.kinds for k in FLAT_KINDS)
    use_flat = has_flat and (loss == "softmax_cross_entropy" or not spatial or d.boolean())
    layers: list[Any] = []
    for _ in range(d.integer(0 if use_flat else 1, o.max_layers) if spatial else 0):
        if len(shape) != 3:  # a global_pool made it flat
            break
        kind = d.choice(spatial)
        if kind == "conv":
            entry, shape = conv_layer(d, shape, o.max_size)
        elif kind == "pool":
            entry, shape = pool_layer(d, shape)
        elif kind in MODERN_KINDS:  # grouped conv, conv_transpose, batchnorm, … (strategies_modern)
            entry, shape = modern_layer(d, kind, shape, o.max_size)
        elif kind == "block":  # residual / concat blocks (block_layer)
            entry, shape = block_layer(d, shape, 0, o.activations)
        else:
            entry = activation_layer(d, o.activations)
        layers.append(entry)
    if use_flat:
        layers.append(d.choice([{"flatten": {}}, {"flatten": None}, "flatten"]))
        shape = (int(np.prod(shape)),)
        # dense alone brings its flatten, but then at least one dense follows it
        low = o.min_dense if "flatten" in o.kinds else max(1, o.min_dense)
        n_dense = d.integer(low, o.max_dense) if "dense" in o.kinds else 0
        for j in range(n_dense):
            entry, shape = dense_layer(d, 2 if j == n_dense - 1 and loss == "softmax_cross_entropy" else 1)
            layers.append(entry)
            if "activation" in o.kinds and d.boolean():
                layers.append(activation_layer(d, o.activations))
        # softmax cross-entropy needs 2 classes; without dense only the flattened map gives them
        d.require(loss != "softmax_cross_entropy" or shape[0] >= 2)
    raw: dict[str, Any] = {"name": "hypothesis", "seed": d.integer(0, 2**32 - 1)}
    _written(d, raw, "dtype", d.choice(o.dtypes), "float64")
    raw["input"] = {"batch": batch, "channels": c, "height": h, "width": w}
    init = d.choice(INITS + ("normal",))
    if init == "normal":
        raw["init"] = {"normal": d.real(0.05, 1.0)}
    else:
        _written(d, raw, "init", init, "lecun")
    raw["layers"] = layers
    _written(d, raw, "loss", loss, "mse")
    return raw
