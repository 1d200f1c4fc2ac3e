"""Load a YAML config, validate every key, infer every layer's shape — before any maths.

Every problem raises :class:`ConfigError` with one line naming its place
(``layers[2].conv.kernel: 5x5 kernel does not fit a 4x4 input (after padding 0)``).
"""
from __future__ import annotations

import copy
import datetime
import difflib
import errno
import functools
import json
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import conv as C
from .layers import ACTIVATIONS
from .losses import LOSSES
from .plugins import PluginImportError, describe_exit, load_class, no_exit
from .refs import TensorRef

DTYPES = ("float64", "float32")
FD_METHODS = ("central", "forward", "richardson", "ridders", "complex")  # = finite_diff.METHODS (a test says so)
INITS = ("lecun", "he", "xavier")
FRAMEWORKS = ("numpy", "torch")  # custom layers: the plugin protocol itself, or torch_adapter
MAX_CONFIG_BYTES = 1 << 20
# A sanity bound on what a config may describe (entries of all activations of one batch,
# of all parameters): beyond it numbers overflow int32 indexing.  What a run may actually
# use is decided later, against --max-memory and --max-params (checker.guard).
MAX_ELEMENTS = 2**31 - 1
SEED_MAX = 2**63 - 1  # one rule for `seed:` and --seed: what numpy's generators take, and JSON keeps


class ConfigError(ValueError):
    """A bad config; ``str()`` is the one-line message, place first."""

    def __init__(self, place: str, message: str | None = None) -> None:
        text = place if message is None else f"{place}: {message}" if place else message
        super().__init__(" ".join(text.split("\n")))  # one line, whatever a key or plugin said
        self.place = place if message is not None else ""  # e.g. "layers[2].conv.kernel" (config_errors)


class PluginError(ConfigError):
    """A plugin layer broke the protocol (raised, returned the wrong shape or keys): exit 2."""


@dataclass
class LayerSpec:
    """One entry of ``layers:``, validated: constructor options and inferred shapes."""

    index: int
    kind: str  # key in the layer registry ("conv", …) or "custom"
    options: dict[str, Any]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    cls: Any = None  # a plugin's class (kind "custom")
    path: tuple[int, ...] = ()  # index path (3,) or, inside a block, (3, 1, 0); default (index,)
    paths: list[list[LayerSpec]] = field(default_factory=list)  # a block's paths (kind "block")

    def __post_init__(self) -> None:
        self.path = tuple(self.path) or (self.index,)

    @property
    def place(self) -> str:
        """``layers[3].conv``, or inside a block ``layers[3].paths[1][0].conv``."""
        return f"{TensorRef(self.path, 'param').place}.{self.kind}"


@dataclass
class Config:
    name: str
    seed: int
    dtype: str
    batch: int
    in_shape: tuple[int, ...]
    init: Any
    layers: list[LayerSpec]
    loss: str
    check: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    raw: Any = None  # the mapping as loaded, for hashing and reproducers
    size: dict[str, int] = field(default_factory=dict)  # params, activations, im2col entries (batch included)

    def digest(self) -> str:
        """A hash of what the config says (with the seed in force): baselines key on it."""
        import hashlib  # here, not at start-up: only baselines hash

        text = json.dumps({"config": self.raw, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- YAML


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"line {key_node.start_mark.line + 1}", "a mapping key must be a plain value") from None
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}", f"duplicate key {key!r}")
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_aliases(self: Any, parent: Any, index: Any) -> Any:
    """Refuse ``*alias`` references: a config never needs them, and nested ones expand
    exponentially ("billion laughs") when anything walks the result."""
    if self.check_event(yaml.events.AliasEvent):
        event = self.peek_event()
        raise ConfigError(f"line {event.start_mark.line + 1}",
                          f"YAML aliases (*{event.anchor}) are not allowed in a config; write the value out")
    return yaml.composer.Composer.compose_node(self, parent, index)


_UniqueKeyLoader.compose_node = _no_aliases  # type: ignore[method-assign]
# YAML 1.1 reads `1e-6` (no dot) as a string; read it as the float everyone means (YAML 1.2)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))

_FastLoader: Any = None
if getattr(yaml, "__with_libyaml__", False):  # libyaml's parser, the same safe constructors and resolvers
    class _FastLoader(yaml.CSafeLoader):  # type: ignore[no-redef]
        """``_UniqueKeyLoader`` on libyaml's parser (which composes in C: aliases and depth are
        refused by ``_refuse_aliases_and_depth`` first, instead of ``_no_aliases``)."""

        yaml_constructors = _UniqueKeyLoader.yaml_constructors
        yaml_implicit_resolvers = _UniqueKeyLoader.yaml_implicit_resolvers


MAX_NESTING = 100  # a config is a few levels deep; libyaml's composer recurses in C (a crash, not an error)


def _refuse_aliases_and_depth(text: str, where: str) -> None:
    """One pass over libyaml's events (a tenth of a load): an ``*alias`` is refused as
    ``_no_aliases`` refuses it, and nesting deeper than ``MAX_NESTING`` before the C composer,
    which recurses without a limit, can overflow the stack on it."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"line {event.start_mark.line + 1}" if event.start_mark else where,
                              f"YAML aliases (*{event.anchor}) are not allowed in a config; write the value out")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = f"line {event.start_mark.line + 1}: " if event.start_mark else ""
                raise ConfigError(where, f"{line}nested too deeply to be a config: more than {MAX_NESTING} YAML "
                                         f"levels (a block in a block takes 4: about 24 blocks deep at most)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _load_fast(text: str, where: str) -> Any:
    """The same document through libyaml's parser and composer (7x faster than the pure-Python
    ones), after ``_refuse_aliases_and_depth``."""
    _refuse_aliases_and_depth(text, where)
    loader = _FastLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, where: str = "config") -> Any:
    """The document in ``text`` (safe YAML: no aliases, no python/* tags), a fresh copy each
    call: the same text is parsed once a process (``_parsed``; a warm check re-reads its
    config: 0.2 ms of a LeNet check's 8 was the parse)."""
    return copy.deepcopy(_parsed(text, where))


@functools.lru_cache(maxsize=64)
def _parsed(text: str, where: str) -> Any:
    """``parse_yaml``'s parse, kept by text (an error is raised again each time, not kept)."""
    try:
        if _FastLoader is not None:
            try:
                return _load_fast(text, where)
            except yaml.YAMLError:  # not valid: the pure-Python loader says why in more words ('\t')
                pass
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no python/* tags
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(where, "nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(where, f"not valid YAML{line}: {problem}") from None


# --------------------------------------------------------------------------- shipped configs


def shipped_configs() -> dict[str, Any]:
    """name -> resource of the configs shipped inside the package."""
    from importlib import resources  # here: with its tempfile and zipfile, 5 ms a process a path never needs

    root = resources.files("cnngrad") / "configs"
    return {p.name[:-5]: p for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")}


def resolve(ref: str) -> tuple[str, str, Path | None]:
    """A path or a shipped config's name -> (name, text, folder of the file or None)."""
    path = Path(ref)
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(ref, "is a symlink loop (too many levels of symbolic links)") from None
    if path.is_dir():
        raise ConfigError(ref, "is a directory, not a config file")
    if path.exists() and not path.is_file():
        raise ConfigError(ref, "is not a regular file")
    if path.is_file():
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(ref, f"file is larger than {MAX_CONFIG_BYTES} bytes")
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(ref, "not a text file (not UTF-8)") from None
        except OSError as e:
            raise ConfigError(ref, f"cannot read: {e.strerror}") from None
        return path.stem, text, path.resolve().parent
    shipped = shipped_configs()
    stem = ref[:-5] if ref.endswith(".yaml") else ref
    if stem in shipped and "/" not in ref:
        return stem, shipped[stem].read_text(encoding="utf-8"), None
    raise ConfigError(ref, f"no such file, nor a shipped config{_did_you_mean(stem, shipped)} "
                           f"(shipped: {', '.join(shipped)})")


def load(ref: str, plugins: bool = False) -> Config:
    """Read, parse and validate the config at path ``ref`` (or the shipped one named ``ref``)."""
    name, text, folder = resolve(ref)
    return validate(parse_yaml(text, ref), default_name=name, plugins=plugins, folder=folder, source=ref)


# --------------------------------------------------------------------------- checkers


def _did_you_mean(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _mapping(place: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(place, f"expected a mapping, got {_show(v)}")
    return v


def _keys(place: str, d: dict, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    for k in d:
        if k not in allowed:
            key = k if isinstance(k, str) and k.isidentifier() else repr(k)
            raise ConfigError(f"{place}.{key}" if place else key,
                              f"unknown key{_did_you_mean(k, allowed)}; allowed: {', '.join(allowed)}")
    for k in required:
        if k not in d:
            raise ConfigError(place or "config", f"missing required key {k!r}")


def _show(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (dict, list)):
        return f"a {'mapping' if isinstance(v, dict) else 'list'}"
    if isinstance(v, (datetime.date, datetime.time)):  # YAML reads 2001-01-01 as a date
        return f"a {type(v).__name__} ({v.isoformat()})"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(place: str, v: Any, minimum: int = 1, maximum: int = 1 << 31) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(place, f"expected an integer >= {minimum}, got {_show(v)}")
    if v < minimum or v > maximum:
        raise ConfigError(place, f"expected an integer from {minimum} to {maximum}, got {v}")
    return v


def seed_value(place: str, v: Any) -> int:
    """A seed, in the one range the config's `seed:` and the CLI's --seed share."""
    return _int(place, v, 0, SEED_MAX)


def _float(place: str, v: Any, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(place, f"expected a number, got {_show(v)}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")) or (positive and v <= 0):
        raise ConfigError(place, f"expected a {'positive ' if positive else ''}finite number, got {v}")
    return v


TOL_BELOW = 1.0  # norm rel ‖g − n‖ / (‖g‖ + ‖n‖) is at most 1: a tol of 1 or more passes any gradient


def _tol(place: str, v: Any) -> float | str:
    """A tol: "estimate", or a finite number in (0, 1)."""
    if v == "estimate":
        return "estimate"
    tol = _float(place, v)
    if tol >= TOL_BELOW:
        raise ConfigError(place, f"expected a number below 1, got {tol:g}: norm rel is at most 1, "
                                 "so a tol of 1 or more passes any gradient")
    return tol


def _choice(place: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        hint = _did_you_mean(v, choices) if isinstance(v, str) else ""
        raise ConfigError(place, f"unknown value {_show(v)}{hint}; choose one of {', '.join(choices)}")
    return v


def _plain(v: Any) -> Any:
    """A numpy integer or float as Python's own (``numbers`` knows them: no numpy import here);
    a string that reads as a number, as the command line reads it ("1e-6", "100")."""
    if isinstance(v, str) and v not in ("all", "estimate"):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return v
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cnngrad.check`` held to the rules the command line and the
    config's ``check:`` apply (ConfigError naming the argument, e.g. ``samples: expected an
    integer from 1 …``): a library call must not get through with what the CLI refuses —
    ``samples=0`` checked nothing and passed, ``tol=inf`` (or 1: norm rel is at most 1) passed
    any gradient.  None is the default everywhere; returns ``options`` with ``samples="all"``
    read as None."""
    out = {k: _plain(v) for k, v in options.items()}
    for name in ("eps", "max_params", "max_memory_mb"):
        if out.get(name) is not None:
            out[name] = _float(name, out[name])
    if out.get("tol") is not None:
        out["tol"] = _tol("tol", out["tol"])
    if out.get("samples") == "all":
        out["samples"] = None
    for name in ("samples", "directions", "workers", "jobs", "max_layers"):
        if out.get(name) is not None:  # directions=0: off, as the report records it
            out[name] = _int(name, out[name], 0 if name == "directions" else 1)
    for name, choices in (("method", FD_METHODS), ("fd_dtype", ("float64", "native")), ("scope", ("network", "layer"))):
        if out.get(name) is not None:
            out[name] = _choice(name, out[name], choices)
    for name in ("plugins", "convergence", "localize", "avoid_kinks", "strict"):
        if name in out and not isinstance(out[name], bool):
            raise ConfigError(name, f"expected True or False, got {_show(out[name])}")
    return out


def _pair(place: str, v: Any, minimum: int) -> tuple[int, int]:
    """An int, or a list [h, w] of two ints."""
    if isinstance(v, list):
        if len(v) != 2:
            raise ConfigError(place, f"expected an integer or a list [h, w] of two, got a list of {len(v)}")
        return _int(f"{place}[0]", v[0], minimum), _int(f"{place}[1]", v[1], minimum)
    n = _int(place, v, minimum)
    return n, n


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _param_count(kind: str, o: dict, in_shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    if kind == "conv":
        bias = {"tied": out[0], "untied": _prod(out), "none": 0}[o["bias"]]
        return out[0] * (in_shape[0] // o.get("groups", 1)) * _prod(o["kernel"]) + bias
    if kind == "dense":
        return out[0] * in_shape[0] + (out[0] if o["bias"] else 0)
    return param_count(kind, o, in_shape, out)


def _fmt(p: tuple[int, ...]) -> str:
    return "x".join(str(i) for i in p)


# --------------------------------------------------------------------------- layers


def _conv(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o)
    _keys(place, o, ("filters", "kernel", "stride", "padding", "dilation", "bias", "mode", "groups"),
          ("filters", "kernel"))
    if len(in_shape) != 3:
        raise ConfigError(place, f"needs an input of shape (channels, height, width), got {_fmt(in_shape)}")
    opts: dict[str, Any] = {
        "filters": _int(f"{place}.filters", o["filters"]),
        "kernel": _pair(f"{place}.kernel", o["kernel"], 1),
        "stride": _pair(f"{place}.stride", o.get("stride", 1), 1),
        "padding": _pair(f"{place}.padding", o.get("padding", 0), 0),
        "dilation": _pair(f"{place}.dilation", o.get("dilation", 1), 1),
        "bias": _choice(f"{place}.bias", o.get("bias", "tied"), ("tied", "untied", "none")),
        "mode": _choice(f"{place}.mode", o.get("mode", "correlation"), ("correlation", "convolution")),
    }
    if "groups" in o:  # grouped / depthwise (config_modern)
        opts["groups"] = conv_groups(place, o, in_shape[0], opts["filters"])
    _, h, w = in_shape
    (kh, kw), (ph, pw), (dh, dw) = opts["kernel"], opts["padding"], opts["dilation"]
    eh, ew = C.effective_kernel(kh, dh), C.effective_kernel(kw, dw)
    if eh > h + 2 * ph or ew > w + 2 * pw:
        dil = f" dilated by {_fmt(opts['dilation'])} (extent {eh}x{ew})" if (dh, dw) != (1, 1) else ""
        raise ConfigError(f"{place}.kernel", f"{kh}x{kw} kernel{dil} does not fit a {h}x{w} input "
                                             f"(after padding {_fmt(opts['padding']) if ph != pw else ph})")
    ho = C.out_size(h, kh, opts["stride"][0], ph, dh)
    wo = C.out_size(w, kw, opts["stride"][1], pw, dw)
    return opts, (opts["filters"], ho, wo)


def _activation(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    names = tuple(ACTIVATIONS)
    if isinstance(o, dict):
        if len(o) != 1:
            raise ConfigError(place, "expected a name, or a mapping of one name to its parameter, "
                                     "e.g. {leaky_relu: 0.01}")
        ((fn, param),) = o.items()
        fn = _choice(place, fn, names)
        if fn != "leaky_relu":
            if param not in (None, {}):
                raise ConfigError(f"{place}.{fn}", "takes no parameter")
            return {"function": fn}, in_shape
        alpha = 0.01 if param is None else _float(f"{place}.leaky_relu", param, positive=False)
        return {"function": fn, "alpha": alpha}, in_shape
    return {"function": _choice(place, o, names)}, in_shape


def _pool(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o if o is not None else {})
    _keys(place, o, ("kind", "size", "stride"))
    if len(in_shape) != 3:
        raise ConfigError(place, f"needs an input of shape (channels, height, width), got {_fmt(in_shape)}")
    size = _pair(f"{place}.size", o.get("size", 2), 1)
    opts: dict[str, Any] = {"kind": _choice(f"{place}.kind", o.get("kind", "max"), ("max", "avg")), "size": size,
            "stride": _pair(f"{place}.stride", o["stride"], 1) if "stride" in o else size}
    c, h, w = in_shape
    if size[0] > h or size[1] > w:
        raise ConfigError(f"{place}.size", f"{_fmt(size)} window does not fit a {h}x{w} input")
    return opts, (c, C.out_size(h, size[0], opts["stride"][0]), C.out_size(w, size[1], opts["stride"][1]))


def _flatten(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    if o not in (None, {}):
        raise ConfigError(place, f"takes no options, write `- flatten: {{}}`; got {_show(o)}")
    return {}, (_prod(in_shape),)


def _dense(place: str, o: Any, in_shape: tuple[int, ...]) -> tuple[dict, tuple[int, ...]]:
    o = _mapping(place, o)
    _keys(place, o, ("units", "bias"), ("units",))
    if len(in_shape) != 1:
        raise ConfigError(place, f"needs a flat input, got shape {_fmt(in_shape)}: put `- flatten: {{}}` before it")
    bias = o.get("bias", True)
    if not isinstance(bias, bool):
        raise ConfigError(f"{place}.bias", f"expected true or false, got {_show(bias)}")
    return {"units": _int(f"{place}.units", o["units"]), "bias": bias}, (o["units"],)


def instantiate(place: str, cls: Any, in_shape: tuple[int, ...], rng: Any, options: dict) -> Any:
    """Build a plugin layer; whatever it raises (SystemExit and os._exit included: see
    plugins.no_exit), or an unusable out_shape, is a PluginError."""
    name = getattr(cls, "__name__", str(cls))
    try:
        with no_exit():
            layer = cls(tuple(in_shape), rng, **options)
            out_shape = tuple(int(s) for s in layer.out_shape)
            if not isinstance(layer.params, dict):
                raise TypeError("params must be a dict of arrays")
    except SystemExit as e:
        raise PluginError(place, f"plugin {name} {describe_exit(e)} while being built") from e
    except Exception as e:  # user code: say which layer, not a traceback
        raise PluginError(place, f"plugin {name} failed to build: {type(e).__name__}: {e}") from e
    if not out_shape or any(s <= 0 for s in out_shape):
        raise PluginError(place, f"plugin {name} has an unusable out_shape {out_shape}")
    return layer


def _custom(place: str, o: Any, in_shape: tuple[int, ...], plugins: bool, folder: Path | None) -> tuple:
    o = _mapping(place, o)
    if not plugins:
        raise ConfigError(place, "names code to import; run with --plugins to allow it")
    spec = o.get("class")
    framework = _choice(f"{place}.framework", o.get("framework", "numpy"), FRAMEWORKS)
    if framework == "torch":  # before the import: a torch plugin module imports torch
        from . import torch_adapter
        try:
            torch_adapter.require_torch()
        except torch_adapter.TorchUnavailable as e:
            raise ConfigError(f"{place}.framework", str(e)) from None
    if isinstance(spec, type) or (framework == "torch" and torch_adapter.is_torch_layer(spec)):
        cls = spec  # the Python API (a mapping config): the class, or a torch module, itself
    elif not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{place}.class", f"expected \"module.path:ClassName\", got {_show(spec)}")
    else:
        try:  # the file beside the config, one module per file (plugins.py)
            cls = load_class(spec, folder)
        except PluginImportError as e:  # never a traceback
            raise ConfigError(f"{place}.class", f"cannot import {spec}: {e}") from None
    if framework == "torch":
        try:
            cls = torch_adapter.adapter(cls)
        except TypeError as e:
            raise ConfigError(f"{place}.class", f"framework torch: {e}") from None
    options = {k: v for k, v in o.items() if k not in ("class", "framework")}
    import numpy as np  # a throwaway build, only to learn the plugin's out_shape

    out_shape = tuple(instantiate(place, cls, in_shape, np.random.default_rng(0), options).out_shape)
    return options, cls, out_shape


_LAYER_CHECKS = {"conv": _conv, "activation": _activation, "pool": _pool, "flatten": _flatten, "dense": _dense}
# the layers of modern CNNs (conv_transpose, batchnorm, …), checked in their own module
from .config_modern import MODERN_CHECKS, conv_groups, param_count  # noqa: E402

_LAYER_CHECKS.update(MODERN_CHECKS)
LAYER_KINDS = tuple(_LAYER_CHECKS) + ("custom", "block")


def layer_list(entries: list, shape: tuple[int, ...], prefix: tuple[int, ...], count: dict[str, int], init: Any,
               plugins: bool, folder: Path | None) -> tuple[list[LayerSpec], tuple[int, ...]]:
    """Validate a list of layers (``layers:``, or a block's path at index path ``prefix``)
    on an input of ``shape``: their specs and the output shape.  ``count`` adds up the
    activations, parameters and im2col entries (batch included) of all of them."""
    specs: list[LayerSpec] = []
    batch = count["batch"]
    for i, entry in enumerate(entries):
        path = prefix + (i,)
        place = TensorRef(path, "param").place
        if isinstance(entry, str) and entry in LAYER_KINDS:
            entry = {entry: None}
        if isinstance(entry, str):
            raise ConfigError(place, f"unknown layer kind {_show(entry)}{_did_you_mean(entry, LAYER_KINDS)}; "
                                     f"known: {', '.join(LAYER_KINDS)}")
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(place, f"expected a mapping of one layer kind ({', '.join(LAYER_KINDS)}) "
                                     f"to its options, got {_show(entry)}")
        ((kind, opts),) = entry.items()
        if kind not in LAYER_KINDS:
            raise ConfigError(place, f"unknown layer kind {_show(kind)}{_did_you_mean(kind, LAYER_KINDS)}; "
                                     f"known: {', '.join(LAYER_KINDS)}")
        place = f"{place}.{kind}"
        if kind == "custom":
            options, cls, out = _custom(place, opts, shape, plugins, folder)
            specs.append(LayerSpec(path[0], kind, options, shape, out, cls, path))
        elif kind == "block":
            from .block_config import check_block  # noqa: PLC0415  (it calls back into layer_list)

            options, paths, out = check_block(place, opts, shape, path, count, init, plugins, folder)
            specs.append(LayerSpec(path[0], kind, options, shape, out, None, path, paths))
        else:
            options, out = _LAYER_CHECKS[kind](place, opts, shape)
            if kind in ("conv", "dense", "conv_transpose"):
                options["init"] = init
            if kind == "dropout":  # its mask has a row per sample
                options["batch"] = batch
            if any(s <= 0 for s in out):
                raise ConfigError(place, f"output shrinks to nothing ({_fmt(out)}) from a {_fmt(shape)} input")
            specs.append(LayerSpec(path[0], kind, options, shape, out, None, path))
            count["params"] += _param_count(kind, options, shape, out)
            if kind in ("conv", "pool"):
                taps = _prod(options["kernel"] if kind == "conv" else options["size"])
                count["cols"] += batch * shape[0] * taps * _prod(out[1:])
        count["activations"] += batch * _prod(out)
        if count["activations"] > MAX_ELEMENTS or count["params"] > MAX_ELEMENTS:
            what = "activations" if count["activations"] > MAX_ELEMENTS else "parameters"
            raise ConfigError(place, f"network too large: more than {MAX_ELEMENTS:,} {what} up to this layer")
        shape = out
    return specs, shape


# --------------------------------------------------------------------------- the whole config


def validate(raw: Any, default_name: str = "config", plugins: bool = False, folder: Path | None = None,
             source: str = "") -> Config:
    """Check a parsed config and infer the shape after every layer."""
    if raw is None:
        raise ConfigError("config", "is empty; it needs at least `input:` and `layers:`")
    top = _mapping("config", raw)
    _keys("", top, ("name", "seed", "dtype", "input", "init", "layers", "loss", "check"), ("input", "layers"))
    name = top.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ConfigError("name", f"expected a non-empty string, got {_show(name)}")
    seed = seed_value("seed", top.get("seed", 0))
    dtype = _choice("dtype", top.get("dtype", "float64"), DTYPES)

    inp = _mapping("input", top["input"])
    _keys("input", inp, ("batch", "channels", "height", "width"), ("batch", "channels", "height", "width"))
    batch = _int("input.batch", inp["batch"], 1, 1 << 16)
    in_shape = tuple(_int(f"input.{k}", inp[k], 1, 1 << 16) for k in ("channels", "height", "width"))
    shape: tuple[int, ...] = in_shape

    init = top.get("init", "lecun")
    if isinstance(init, dict):
        _keys("init", init, ("normal",), ("normal",))
        init = {"normal": _float("init.normal", init["normal"])}
    else:
        init = _choice("init", init, INITS)

    layers_raw = top["layers"]
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ConfigError("layers", f"expected a non-empty list of layers, got {_show(layers_raw)}")
    activations = batch * _prod(in_shape)
    if activations > MAX_ELEMENTS:
        raise ConfigError("input", f"too large: {batch}x{_fmt(in_shape)} is more than {MAX_ELEMENTS:,} entries")
    count = {"activations": activations, "params": 0, "cols": 0, "batch": batch}
    specs, shape = layer_list(layers_raw, shape, (), count, init, plugins, folder)
    activations, n_params, n_cols = count["activations"], count["params"], count["cols"]

    loss = _choice("loss", top.get("loss", "mse"), tuple(LOSSES))
    if loss == "softmax_cross_entropy" and shape and (len(shape) != 1 or shape[0] < 2):
        raise ConfigError("loss", f"softmax_cross_entropy needs a flat output of at least 2 classes, got "
                                  f"shape {_fmt(shape)}: end the network with flatten and dense")

    check = top.get("check")
    check = _mapping("check", {} if check is None else check)
    _keys("check", check, ("eps", "samples", "tol", "method", "directions", "fd_dtype", "avoid_kinks"))
    chk: dict[str, Any] = {}
    if "method" in check:
        chk["method"] = _choice("check.method", check["method"], FD_METHODS)
    if "eps" in check:
        chk["eps"] = _float("check.eps", check["eps"])
    if "tol" in check:
        chk["tol"] = _tol("check.tol", check["tol"])  # "estimate": tolerance.py
    if "samples" in check and check["samples"] != "all":
        chk["samples"] = _int("check.samples", check["samples"])
    if "directions" in check:
        chk["directions"] = _int("check.directions", check["directions"])
    if "fd_dtype" in check:
        chk["fd_dtype"] = _choice("check.fd_dtype", check["fd_dtype"], ("float64", "native"))
    if "avoid_kinks" in check:
        if not isinstance(check["avoid_kinks"], bool):
            raise ConfigError("check.avoid_kinks", f"expected true or false, got {_show(check['avoid_kinks'])}")
        chk["avoid_kinks"] = check["avoid_kinks"]
    size = {"params": n_params, "activations": activations, "cols": n_cols, "input": batch * _prod(in_shape)}
    return Config(name, seed, dtype, batch, in_shape, init, specs, loss, chk, source, raw, size)
