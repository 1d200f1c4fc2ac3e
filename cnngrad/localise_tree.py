"""Localisation over a network with blocks: the first layer, in backprop order, whose own
backward is wrong — its output δ checks out, its input δ or its parameter gradients do not.

The walk follows the tree: from the last top-level layer down; a block whose output δ
checks out is entered, each of its paths walked the same way (the output δ of a path's
last layer is the block's, which checks out); a block whose paths all check out but whose
input δ does not is blamed itself (its merge: the sum of the paths' δ).  The sentence names
the culprit by its index path and what checks out after it:
"layer 3.0.1 (conv): backward is wrong; path 3.1 and layers 4-6 check out".
For a network without blocks this is ``diagnose.localise``, sentence for sentence.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Path = tuple[int, ...]


def _dotted(path: Path) -> str:
    return ".".join(str(i) for i in path)


def _span(chain: list[Any], lo: int) -> str:
    """``layer X`` or ``layers X-Y`` for chain[lo:]; "" if empty."""
    if lo >= len(chain):
        return ""
    first, last = _dotted(chain[lo].path), _dotted(chain[-1].path)
    return f"layer {first}" if lo == len(chain) - 1 else f"layers {first}-{last}"


def localise_tree(rows: list, specs: list[Any], kind_of: Callable[[Path], str]) -> tuple[int | str | None, str]:
    """``rows``: TensorChecks (``.ref.path``, ``.ref.is_delta``, ``.mismatch``); ``specs``:
    the config's top-level LayerSpecs (a block's in ``.paths``).  Returns the culprit as
    JSON names a layer (its index, or ``"3.0.1"``) and the sentence, or (None, "")."""
    bad: set[Path] = {r.ref.path for r in rows if r.mismatch}
    delta_ok = {r.ref.path: not r.mismatch for r in rows if r.ref.is_delta}  # unresolved: no blame

    def clean(spec: Any) -> bool:
        n = len(spec.path)
        return not any(p[:n] == spec.path for p in bad)

    def walk(chain: list[Any], out_ok: bool) -> list[tuple[list[Any], int]] | None:
        """The culprit's trail: (chain, index) from the outermost level in, or None."""
        for j in range(len(chain) - 1, -1, -1):
            spec = chain[j]
            if not (out_ok if j == len(chain) - 1 else delta_ok.get(chain[j + 1].path, True)):
                continue
            if spec.kind == "block":
                for path in spec.paths:
                    found = walk(path, True)
                    if found:
                        return [(chain, j)] + found
            if spec.path in bad:
                return [(chain, j)]
        return None

    trail = walk(specs, True)
    if trail is None:
        return None, ""
    chain, j = trail[-1]
    culprit = chain[j]
    parts = []
    for level in range(len(trail) - 1, -1, -1):
        chain, j = trail[level]
        if level < len(trail) - 1:  # the block we came out of: its other paths that check out
            block = chain[j]
            inside = trail[level + 1][0]
            parts += [f"path {_dotted(path[0].path[:-1])}" for path in block.paths
                      if path and path is not inside and clean_path(path, clean)]
        if span := _span(chain, j + 1):
            parts.append(span)
    name = _dotted(culprit.path)
    head = f"layer {name} ({kind_of(culprit.path)}): backward is wrong; "
    if not parts:
        return _json(culprit.path), head + "it is the last layer"
    singular = len(parts) == 1 and not parts[0].startswith("layers ")
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return _json(culprit.path), head + f"{said} {'checks' if singular else 'check'} out"


def clean_path(path: list[Any], clean: Callable[[Any], bool]) -> bool:
    return all(clean(spec) for spec in path)


def _json(path: Path) -> int | str:
    return path[0] if len(path) == 1 else _dotted(path)
