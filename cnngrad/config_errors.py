"""Every error of a config at once, for ``cnngrad validate`` (a config with three mistakes:
three lines).

``config.validate`` stops at the first problem.  This wraps it without changing it: after
each error, the part it names is set aside (a top-level key dropped so its default applies,
a ``check:`` entry dropped, the batch size set to 1) and the config validated again.  An
error in ``input:`` or in a layer leaves the shapes after it unknown, so each later layer is
then validated on its own, against a large probe input of each rank: an error both probes
give (an unknown key, a bad value) is reported; one that depends on the unknown shape is
not — never an error that fixing the first would make go away.  ``custom:`` layers after
that point are not imported.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from . import config as cfg
from .losses import LOSSES

MAX_ERRORS = 100
TOP_DEFAULTED = ("name", "seed", "dtype", "init", "loss")  # dropping one leaves its default
# (input, layers before the probed one): a (C, H, W) input and a flat one
PROBE_INPUTS: tuple[tuple[dict[str, int], list[dict]], ...] = (
    ({"batch": 1, "channels": 8, "height": 512, "width": 512}, []),
    ({"batch": 1, "channels": 1, "height": 1, "width": 1 << 16}, [{"flatten": {}}]),
)
DUMMY_INPUT = {"batch": 1, "channels": 1, "height": 1, "width": 1}
_LAYER = re.compile(r"^layers\[(\d+)\]")


def errors_of(ref: str, plugins: bool = False) -> list[str]:
    """Every error of the config at path ``ref`` (or the shipped one named so); [] if valid."""
    try:
        name, text, folder = cfg.resolve(ref)
        raw = cfg.parse_yaml(text, ref)
    except cfg.ConfigError as e:
        return [str(e)]
    return all_errors(raw, default_name=name, plugins=plugins, folder=folder, source=ref)


def all_errors(raw: Any, default_name: str = "config", plugins: bool = False, folder: Path | None = None,
               source: str = "") -> list[str]:
    """Every error ``config.validate`` finds in ``raw``, one line each, in the order found."""
    raw = copy.deepcopy(raw)
    errors: list[str] = []
    alone: list[tuple[int, Any]] = []  # layers validated on their own: the shape before them is unknown
    while len(errors) < MAX_ERRORS:
        try:
            cfg.validate(raw, default_name=default_name, plugins=plugins, folder=folder, source=source)
            break
        except cfg.ConfigError as e:
            if str(e) in errors:  # set aside, yet again: never loop
                break
            errors.append(str(e))
            if not _set_aside(raw, e, alone):
                break
    for index, entry in alone:
        why = _alone(index, entry)
        if why:
            errors.append(why)
    return errors


def _set_aside(raw: Any, e: cfg.ConfigError, alone: list[tuple[int, Any]]) -> bool:
    """Change ``raw`` so that validating it again goes past ``e``; False where it cannot."""
    place = getattr(e, "place", "")
    if not isinstance(raw, dict) or not place or place.startswith("line "):
        return False
    if place == "config":  # a missing required key
        if "input" not in raw and "'input'" in str(e):
            _unknown_shapes(raw, 0, 0, alone)
            raw["input"] = dict(DUMMY_INPUT)
            return True
        return False
    top = re.split(r"[.\[]", place, maxsplit=1)[0]
    if top in TOP_DEFAULTED:
        raw.pop(top, None)
        return True
    if top == "check":
        check = raw.get("check")
        key = place.split(".", 2)[1] if "." in place else None
        matched = [k for k in check if key in (str(k), repr(k))] if key and isinstance(check, dict) else []
        for k in matched:
            del check[k]  # type: ignore[union-attr]
        if not matched:
            raw.pop("check", None)
        return True
    if top == "input":
        inp = raw.get("input")
        if place == "input.batch" and isinstance(inp, dict):
            inp["batch"] = 1
            return True
        _unknown_shapes(raw, 0, 0, alone)
        raw["input"] = dict(DUMMY_INPUT)
        return True
    m = _LAYER.match(place)
    if m and isinstance(raw.get("layers"), list):
        _unknown_shapes(raw, int(m.group(1)), int(m.group(1)) + 1, alone)
        return True
    if top in raw and top not in ("input", "layers"):  # an unknown top-level key
        raw.pop(top)
        return True
    for k in list(raw):  # an unknown key shown as repr (not an identifier)
        if repr(k) == place:
            raw.pop(k)
            return True
    return False


def _unknown_shapes(raw: dict, keep: int, start: int, alone: list[tuple[int, Any]]) -> None:
    """The shapes from layer ``keep`` on are unknown: keep the layers before it (they
    validated), set layers ``start``… aside to be validated on their own (layer ``keep``
    itself, when it is the one that failed, is not), and stop the loss from judging an
    output shape that is not the network's."""
    layers = raw.get("layers")
    if not isinstance(layers, list):
        return
    alone += [(i, entry) for i, entry in enumerate(layers) if i >= start]
    raw["layers"] = layers[:keep] or [{"flatten": {}}]
    if raw.get("loss", "mse") in LOSSES:  # a valid name: judge it, not the truncated network's shape
        raw["loss"] = "mse"


def _alone(index: int, entry: Any) -> str:
    """The error of layer ``index`` validated on its own, if it has one whatever its input."""
    if isinstance(entry, dict) and "custom" in entry:
        return ""  # would import code; its options are the plugin's to judge
    found = []
    for inp, before in PROBE_INPUTS:
        try:
            cfg.validate({"input": inp, "layers": [*before, entry]})
            return ""
        except cfg.ConfigError as e:
            place = getattr(e, "place", "")
            m = _LAYER.match(place)
            if not m or int(m.group(1)) != len(before):
                return ""  # not this layer's error (the probe's): say nothing
            found.append((place, f"layers[{index}]" + str(e)[m.end():]))
    (p1, e1), (p2, e2) = found
    if e1 == e2:
        return e1
    if len(p1) != len(p2):  # one probe got past the input's rank to an option: that option is wrong
        return e1 if len(p1) > len(p2) else e2
    return ""
