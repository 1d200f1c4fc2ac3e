"""Draws for the layers of modern CNNs (grouped conv, conv_transpose,
batchnorm, groupnorm, upsample, global_pool, dropout), used by ``strategies.configs`` when
``kinds`` names them, through the ``Draw`` protocol (hypothesis or numpy).  Each draws an
entry that fits the shape so far, and its output shape."""
from __future__ import annotations

from .draws import Draw

MODERN_KINDS = ("grouped_conv", "conv_transpose", "batchnorm", "groupnorm", "upsample", "global_pool", "dropout")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def modern_layer(d: Draw, kind: str, shape: tuple[int, ...], max_size: int) -> tuple[dict, tuple]:
    """An entry of ``kind`` for an input of ``shape`` (maps at most ``max_size`` a side), and
    its output shape; a kind that does not fit (a map layer on a flat input, an upsample past
    ``max_size``) becomes a batchnorm, which fits any input."""
    image = len(shape) == 3
    if kind == "batchnorm" or not image:
        return {"batchnorm": {"mode": d.choice(["train", "eval"])}}, shape
    c, h, w = shape
    if kind == "dropout":
        return {"dropout": {"rate": d.choice([0.0, 0.25, 0.5])}}, shape
    if kind == "groupnorm":
        return {"groupnorm": {"groups": d.choice(_divisors(c))}}, shape
    if kind == "global_pool":
        return {"global_pool": {"kind": d.choice(["avg", "max"])}}, (c,)
    if kind == "grouped_conv":
        groups = d.choice(_divisors(c))
        filters = groups * d.integer(1, 2)
        k = [d.integer(1, min(3, h)), d.integer(1, min(3, w))]
        return ({"conv": {"filters": filters, "kernel": k, "groups": groups}},
                (filters, h - k[0] + 1, w - k[1] + 1))
    if kind == "upsample" and 2 * max(h, w) <= max_size:
        return {"upsample": {"scale": 2, "mode": d.choice(["nearest", "bilinear"])}}, (c, 2 * h, 2 * w)
    if kind == "conv_transpose":
        k = [d.integer(1, 3), d.integer(1, 3)]
        s = [d.integer(1, 2), d.integer(1, 2)]
        size = [(n - 1) * s[i] + k[i] for i, n in enumerate((h, w))]
        if max(size) <= max_size:
            p = [d.integer(0, (size[i] - 1) // 2) for i in range(2)]
            op = [d.integer(0, s[i] - 1) for i in range(2)]
            filters = d.integer(1, 3)
            opts = {"filters": filters, "kernel": k, "stride": s, "padding": p, "output_padding": op}
            return {"conv_transpose": opts}, (filters, size[0] - 2 * p[0] + op[0], size[1] - 2 * p[1] + op[1])
    return {"batchnorm": {}}, shape
