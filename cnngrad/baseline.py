"""Baselines: the errors a run had, to fail a later run whose errors grew.

A gradient that degrades (a backward pass made a little wrong, a numerically worse
formula) can stay under the tolerance; against a baseline it shows as growth.  Entries are
keyed by config name, layer and tensor, and carry the config's digest: a config that
changed since is reported, not compared.
"""
from __future__ import annotations

import json
import math
from typing import Any

from . import __version__
from .checker import Report

BASELINE_VERSION = 1
DEFAULT_FACTOR = 10.0
# errors this small are rounding noise whatever the baseline says: growth is measured
# from at least this floor, so 1e-17 -> 1e-15 is not a "100x regression"
FLOOR = 1e-14


class DuplicateName(ValueError):
    """Two configs of one baseline share a name: one would silently replace the other."""


def duplicates(named: list[tuple[str, str]]) -> None:
    """Refuse two (name, source) pairs with the same name, naming both sources."""
    seen: dict[str, str] = {}
    for name, source in named:
        if name in seen:
            raise DuplicateName(f"two configs are named {name!r}: {seen[name]} and {source}; "
                                "a baseline keys on the name, give each its own `name:`")
        seen[name] = source


def record(reports: list[Report]) -> dict[str, Any]:
    """The worst errors per (config, layer, tensor) of these reports."""
    configs = {}
    duplicates([(rep.name, rep.source) for rep in reports if not rep.error])
    for rep in reports:
        if rep.error:
            continue
        configs[rep.name] = {
            "digest": rep.digest, "method": rep.method, "eps": rep.eps, "fd_dtype": rep.fd_dtype,
            **({"scope": rep.scope} if rep.scope != "network" else {}),
            "tensors": {f"{r.layer}.{r.tensor}": {"norm_rel": _finite(r.metrics.norm_rel),
                                                   "max_abs": _finite(r.metrics.max_abs)} for r in rep.rows},
        }
    return {"baseline_version": BASELINE_VERSION, "cnngrad_version": __version__, "configs": configs}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def compare(report: Report, baseline: dict[str, Any], factor: float = DEFAULT_FACTOR) -> None:
    """Mark on ``report`` every tensor whose norm rel grew past ``factor`` times its
    baseline (``report.regressions``), or why it was not compared (``baseline_note``)."""
    entry = baseline.get("configs", {}).get(report.name)
    if report.error:
        return
    if entry is None:
        report.baseline_note = f"{report.name} is not in the baseline: not compared"
        return
    if entry.get("digest") != report.digest:
        report.baseline_note = (f"{report.name} changed since the baseline was recorded (digest "
                                f"{entry.get('digest')} -> {report.digest}): not compared; record it again")
        return
    how = (entry.get("method"), entry.get("eps"), entry.get("fd_dtype"))
    if entry.get("scope", "network") != report.scope:  # the scopes' errors are not comparable
        report.baseline_note = (f"{report.name} was recorded with --scope {entry.get('scope', 'network')}; this run "
                                f"used --scope {report.scope}: not compared")
        return
    if how != (report.method, report.eps, report.fd_dtype):
        report.baseline_note = (f"{report.name} was recorded with method {how[0]}, eps {how[1]}, numeric "
                                f"{how[2]}; this run used {report.method}, {report.eps}, {report.fd_dtype}: "
                                "not compared")
        return
    for r in report.rows:
        old = entry["tensors"].get(f"{r.layer}.{r.tensor}")
        if old is None:
            continue
        was, now = old.get("norm_rel"), r.metrics.norm_rel
        if was is None or not math.isfinite(now):
            continue
        growth = now / max(was, FLOOR)
        if now > FLOOR and growth > factor:
            report.regressions[(r.layer, r.tensor)] = (
                f"norm rel grew {growth:.0f}x over the baseline ({was:.2e} -> {now:.2e}; "
                f"the limit is {factor:g}x), though still {'under' if r.passed else 'over'} tol {r.tol_text}")


def schema() -> dict[str, Any]:
    """The baseline file's JSON schema (shipped as cnngrad/schemas/baseline.schema.json)."""
    from importlib import resources  # here: 5 ms a process that reads no baseline never needs

    text = (resources.files("cnngrad") / "schemas" / "baseline.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def load(path: str) -> dict[str, Any]:
    """A baseline file, read and checked against its schema; ValueError (one line, the
    place in the file first) if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise ValueError("not a text file (not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON at line {e.lineno}: {e.msg}") from None
    except RecursionError:
        raise ValueError("nested too deeply to be a baseline") from None
    problem = _invalid(data, schema(), "")
    if problem:
        raise ValueError(f"not a cnngrad baseline (version {BASELINE_VERSION}): {problem}")
    return data


_TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "string": (str,), "null": (type(None),),
                                       "number": (int, float)}


def _invalid(value: Any, rule: dict[str, Any], where: str) -> str:
    """The first way ``value`` breaks ``rule`` (the subset of JSON Schema the baseline
    schema uses), as "place: problem"; "" when it conforms."""
    place = where or "the file"
    if "const" in rule and value != rule["const"]:
        return f"{place}: expected {rule['const']!r}, got {json.dumps(value)[:40]}"
    types = rule.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if isinstance(value, bool) or not isinstance(value, tuple(c for t in names for c in _TYPES[t])):
            return f"{place}: expected {' or '.join(names)}, got {type(value).__name__} {json.dumps(value)[:40]}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{place}: expected a finite number, got {value}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in rule and value < rule["minimum"]:
            return f"{place}: expected a number >= {rule['minimum']}, got {value}"
        if "exclusiveMinimum" in rule and value <= rule["exclusiveMinimum"]:
            return f"{place}: expected a number > {rule['exclusiveMinimum']}, got {value}"
    if isinstance(value, dict):
        for key in rule.get("required", ()):
            if key not in value:
                return f"{place}: missing {key!r}"
        props, extra = rule.get("properties", {}), rule.get("additionalProperties", True)
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if key in props:
                sub = props[key]
            elif extra is False:
                return f"{inner}: unknown key; allowed: {', '.join(props)}"
            elif isinstance(extra, dict):
                sub = extra
            else:
                continue
            problem = _invalid(item, sub, inner)
            if problem:
                return problem
    return ""
