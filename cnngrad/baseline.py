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


def record(reports: list[Report]) -> dict[str, Any]:
    """The worst errors per (config, layer, tensor) of these reports."""
    configs = {}
    for rep in reports:
        if rep.error:
            continue
        configs[rep.name] = {
            "digest": rep.digest, "method": rep.method, "eps": rep.eps, "fd_dtype": rep.fd_dtype,
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
                f"the limit is {factor:g}x), though still {'under' if r.passed else 'over'} tol {r.tol:.0e}")


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("baseline_version") != BASELINE_VERSION:
        raise ValueError(f"not a cnngrad baseline (version {BASELINE_VERSION})")
    return data
