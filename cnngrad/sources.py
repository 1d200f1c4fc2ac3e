"""What a run reads: the config files it was given, the plugin modules they import, and
the names they go by — known before any maths, so an output path that would overwrite an
input, or two configs a baseline could not tell apart, are refused up front."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfg


def _custom_classes(node: Any) -> list[str]:
    """Every ``custom: {class: "module:Class"}`` in a raw config, blocks included."""
    found: list[str] = []
    if isinstance(node, dict):
        custom = node.get("custom")
        if isinstance(custom, dict) and isinstance(custom.get("class"), str):
            found.append(custom["class"])
        for value in node.values():
            found += _custom_classes(value)
    elif isinstance(node, list):
        for value in node:
            found += _custom_classes(value)
    return found


def plugin_sources(raw: Any, folder: Path | None) -> list[Path]:
    """The plugin modules a config imports from its folder: each top-level module file
    (``mylayers.py``) or package folder found there (a module found elsewhere on the path
    is not the config's own)."""
    if folder is None:
        return []
    out: list[Path] = []
    for spec in _custom_classes(raw):
        top = spec.partition(":")[0].split(".")[0]
        for candidate in (folder / f"{top}.py", folder / top):
            if (candidate.is_file() or (candidate / "__init__.py").is_file()) and candidate not in out:
                out.append(candidate)
                break
    return out


def plugin_files(raw: Any, folder: Path | None) -> list[Path]:
    """Every Python file of the config's plugin modules (a package's files included)."""
    files: list[Path] = []
    for src in plugin_sources(raw, folder):
        files += sorted(src.rglob("*.py")) if src.is_dir() else [src]
    return files


def config_folder(source: str) -> Path | None:
    """The folder of a config given as a path (None for a shipped config's name)."""
    path = Path(source)
    return path.resolve().parent if source and path.is_file() else None


@dataclass
class Inputs:
    files: list[Path] = field(default_factory=list)  # configs given as paths, their plugin modules
    names: list[tuple[str, str]] = field(default_factory=list)  # (config name, where it came from)


def survey(refs: list[str]) -> Inputs:
    """The inputs of a run over ``refs``, as far as they can be read; a config that cannot
    is left to the check itself to report."""
    found = Inputs()
    for ref in refs:
        try:
            stem, text, folder = cfg.resolve(ref)
            raw = cfg.parse_yaml(text, ref)
        except cfg.ConfigError:
            continue
        if folder is not None:
            found.files.append(Path(ref))
            found.files += plugin_files(raw, folder)
        name = raw.get("name", stem) if isinstance(raw, dict) else stem
        found.names.append((str(name), ref))
    return found
