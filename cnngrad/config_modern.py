"""Config checks of the layers of modern CNNs (CONVENTIONS.md, "Blocks and the layers of
modern CNNs"): ``conv_transpose``, ``batchnorm``, ``groupnorm``, ``upsample``,
``global_pool``, ``dropout``, and conv's ``groups``.  Each check takes (place, options,
in_shape) and returns (constructor options, out_shape), or raises a one-line ConfigError
naming the place (``layers[2].conv_transpose.output_padding: ...``; a rule between values that
a JSON Schema cannot state says "does not fit", like the shape rules); ``config.py`` keeps
them in its ``_LAYER_CHECKS`` registry.
"""
from __future__ import annotations

from typing import Any

from . import conv as C
from .config import ConfigError, _choice, _float, _fmt, _int, _keys, _mapping, _pair, _prod, _show


def _image(place: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ConfigError(place, f"needs an input of shape (channels, height, width), got {_fmt(in_shape)}")
    c, h, w = in_shape
    return c, h, w


def conv_groups(place: str, o: dict, channels: int, filters: int) -> int:
    """conv's ``groups`` (default 1): must divide both the input channels and the filters."""
    groups = _int(f"{place}.groups", o.get("groups", 1))
    if channels % groups or filters % groups:
        raise ConfigError(f"{place}.groups", f"{groups} does not fit: the groups must divide both the {channels} "
                                             f"input channels and the {filters} filters")
    return groups


def _conv_transpose(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o)
    _keys(place, o, ("filters", "kernel", "stride", "padding", "output_padding", "dilation", "bias"),
          ("filters", "kernel"))
    _, h, w = _image(place, in_shape)
    opts: dict[str, Any] = {
        "filters": _int(f"{place}.filters", o["filters"]),
        "kernel": _pair(f"{place}.kernel", o["kernel"], 1),
        "stride": _pair(f"{place}.stride", o.get("stride", 1), 1),
        "padding": _pair(f"{place}.padding", o.get("padding", 0), 0),
        "output_padding": _pair(f"{place}.output_padding", o.get("output_padding", 0), 0),
        "dilation": _pair(f"{place}.dilation", o.get("dilation", 1), 1),
        "bias": _choice(f"{place}.bias", o.get("bias", "tied"), ("tied", "none")),
    }
    for axis in range(2):
        op, s, d = opts["output_padding"][axis], opts["stride"][axis], opts["dilation"][axis]
        if op >= max(s, d):
            raise ConfigError(f"{place}.output_padding", f"{op} does not fit: it must be smaller than the stride "
                                                         f"({s}) or the dilation ({d}) of its axis")
    k, s, p, op, d = (opts[key] for key in ("kernel", "stride", "padding", "output_padding", "dilation"))
    out = tuple((n - 1) * s[i] + C.effective_kernel(k[i], d[i]) + op[i] - 2 * p[i] for i, n in enumerate((h, w)))
    if out[0] <= 0 or out[1] <= 0:
        full = f"{out[0] + 2 * opts['padding'][0]}x{out[1] + 2 * opts['padding'][1]}"
        raise ConfigError(f"{place}.padding", f"padding {_fmt(opts['padding'])} does not fit: it crops the whole "
                                              f"{full} output")
    return opts, (opts["filters"], out[0], out[1])


def _eps(place: str, o: dict) -> float:
    return _float(f"{place}.eps", o.get("eps", 1e-5))


def _batchnorm(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o if o is not None else {})
    _keys(place, o, ("mode", "eps"))
    if len(in_shape) not in (1, 3):
        raise ConfigError(place, f"needs an input of shape (channels, height, width) or (features,), "
                                 f"got {_fmt(in_shape)}")
    return {"mode": _choice(f"{place}.mode", o.get("mode", "train"), ("train", "eval")),
            "eps": _eps(place, o)}, in_shape


def _groupnorm(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o)
    _keys(place, o, ("groups", "eps"), ("groups",))
    c, _, _ = _image(place, in_shape)
    groups = _int(f"{place}.groups", o["groups"])
    if c % groups:
        raise ConfigError(f"{place}.groups", f"{groups} does not fit: the groups must divide the {c} input channels")
    return {"groups": groups, "eps": _eps(place, o)}, in_shape


def _upsample(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o if o is not None else {})
    _keys(place, o, ("scale", "mode"))
    c, h, w = _image(place, in_shape)
    scale = _int(f"{place}.scale", o.get("scale", 2), 1, 1 << 10)
    mode = _choice(f"{place}.mode", o.get("mode", "nearest"), ("nearest", "bilinear"))
    return {"scale": scale, "mode": mode}, (c, h * scale, w * scale)


def _global_pool(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o if o is not None else {})
    _keys(place, o, ("kind",))
    c, _, _ = _image(place, in_shape)
    return {"kind": _choice(f"{place}.kind", o.get("kind", "avg"), ("avg", "max"))}, (c,)


def _dropout(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o)
    _keys(place, o, ("rate",), ("rate",))
    rate = _float(f"{place}.rate", o["rate"], positive=False)
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{place}.rate", f"expected a rate from 0 up to (not including) 1, got {_show(o['rate'])}")
    return {"rate": rate}, in_shape  # validate() adds the batch: the mask is of shape (batch, *in_shape)


MODERN_CHECKS = {"conv_transpose": _conv_transpose, "batchnorm": _batchnorm, "groupnorm": _groupnorm,
                 "upsample": _upsample, "global_pool": _global_pool, "dropout": _dropout}


def param_count(kind: str, o: dict, in_shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    """Parameters of a modern layer (0 for those without)."""
    if kind == "conv_transpose":
        return in_shape[0] * out[0] * _prod(o["kernel"]) + (out[0] if o["bias"] == "tied" else 0)
    if kind in ("batchnorm", "groupnorm"):
        return 2 * in_shape[0]
    return 0
