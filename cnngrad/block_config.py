"""Validating a block: ``- block: {merge: add|concat, paths: [[...], []]}`` (CONVENTIONS.md).

Every path takes the block's input and is a layer list of its own, validated by
``config.layer_list`` at the index path ``(…, i, p)`` (so errors name
``layers[3].paths[1][0].conv.kernel``); ``[]`` is the identity.  ``add`` needs every
path's output shape equal; ``concat`` joins along axis 1 (channels, or features for flat
outputs) in path order and needs the other axes equal.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError, _choice, _fmt, _keys, _mapping, _show, layer_list

if TYPE_CHECKING:
    from .config import LayerSpec

MERGES = ("add", "concat")


def check_block(place: str, o: Any, in_shape: tuple[int, ...], path: tuple[int, ...], count: dict[str, int],
                init: Any, plugins: bool, folder: Path | None) -> tuple[dict, list[list[LayerSpec]], tuple[int, ...]]:
    """The block at index path ``path`` on an input of ``in_shape``: its options
    ``{"merge": …}``, each path's layer specs, and its output shape."""
    o = _mapping(place, o)
    _keys(place, o, ("merge", "paths"), ("merge", "paths"))
    merge = _choice(f"{place}.merge", o["merge"], MERGES)
    raw_paths = o["paths"]
    if not isinstance(raw_paths, list) or not raw_paths:
        raise ConfigError(f"{place}.paths", f"expected a non-empty list of paths (each a list of layers, [] for "
                                            f"the identity), got {_show(raw_paths)}")
    paths, outs = [], []
    for p, raw in enumerate(raw_paths):
        where = f"{place[:place.rindex('.')]}.paths[{p}]"
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ConfigError(where, f"expected a list of layers ([] for the identity), got {_show(raw)}")
        specs, out = layer_list(raw, in_shape, path + (p,), count, init, plugins, folder)
        paths.append(specs)
        outs.append(tuple(out))
    if merge == "add":
        for p, out in enumerate(outs[1:], 1):
            if out != outs[0]:
                raise ConfigError(f"{place}.merge", f"add needs every path's output shape equal: path 0 gives "
                                                    f"{_fmt(outs[0])}, path {p} gives {_fmt(out)}")
        return {"merge": merge}, paths, outs[0]
    for p, out in enumerate(outs[1:], 1):
        if len(out) != len(outs[0]) or out[1:] != outs[0][1:]:
            raise ConfigError(f"{place}.merge", f"concat joins along channels and needs the other axes equal: "
                                                f"path 0 gives {_fmt(outs[0])}, path {p} gives {_fmt(out)}")
    return {"merge": merge}, paths, (sum(out[0] for out in outs),) + outs[0][1:]
