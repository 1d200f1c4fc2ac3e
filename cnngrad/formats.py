"""Machine-readable reports: JSON (versioned schema), JUnit XML, Markdown.  Pure: reports in,
a string out.  The JSON schema ships as ``cnngrad/schemas/report.schema.json``.
"""
from __future__ import annotations

import json
import math
from typing import Any
from xml.etree import ElementTree as ET

from . import __version__
from . import report as render
from .checker import Report

SCHEMA_VERSION = 1


def _num(v: float) -> float | None:
    """JSON has no NaN: a non-finite error is null (and its status is "fail")."""
    return float(v) if math.isfinite(v) else None


def records(report: Report) -> list[dict[str, Any]]:
    """One record per (config, layer, tensor), every metric and the verdict."""
    out = []
    for r in report.rows:
        out.append({
            "config": report.name, "layer": r.layer, "kind": r.kind, "tensor": r.tensor,
            "role": r.ref.role,
            "shape": list(r.shape), "mode": r.mode, "checked": r.checked, "kinks": r.kinks,
            "max_abs": _num(r.metrics.max_abs), "max_rel": _num(r.metrics.max_rel),
            "norm_rel": _num(r.metrics.norm_rel),
            "norm_rel_half_step": None if r.norm_rel_half is None else _num(r.norm_rel_half),
            "tol": r.tol, "status": r.status, "note": r.note,
            "regression": report.regressions.get((r.layer, r.tensor), ""),
            "method": report.method, "eps": report.eps, "seed": report.seed, "dtype": report.dtype,
            "cnngrad_version": __version__,
        })
    return out


def to_dict(reports: list[Report], timings: bool = True) -> dict[str, Any]:
    """The whole run.  ``timings=False`` leaves out the only fields that vary run to run."""
    configs = []
    for rep in reports:
        entry = {
            "name": rep.name, "source": rep.source, "digest": rep.digest, "passed": rep.passed,
            "return_code": rep.return_code, "error": rep.error, "method": rep.method, "eps": rep.eps,
            "tol": rep.tol, "seed": rep.seed, "dtype": rep.dtype, "fd_dtype": rep.fd_dtype,
            "directions": rep.directions, "loss": _num(rep.loss) if rep.loss is not None else None,
            "baseline": rep.baseline_note, "records": records(rep),
        }
        if timings:
            entry["seconds"] = round(rep.seconds, 4)
        configs.append(entry)
    return {"schema_version": SCHEMA_VERSION, "cnngrad_version": __version__,
            "passed": all(r.passed for r in reports), "configs": configs}


def to_json(reports: list[Report], timings: bool = True) -> str:
    return json.dumps(to_dict(reports, timings), indent=2, ensure_ascii=False) + "\n"


def to_junit(reports: list[Report]) -> str:
    """JUnit XML: a testsuite per config, a testcase per (layer, tensor); a failing tensor
    carries its metrics in <failure>, a config that could not be checked an <error>."""
    suites = ET.Element("testsuites", name="cnngrad")
    total = failures = errors = 0
    for rep in reports:
        suite = ET.SubElement(suites, "testsuite", name=rep.name)
        n_fail = n_err = 0
        if rep.error:
            case = ET.SubElement(suite, "testcase", name="config", classname=rep.name, time="0")
            ET.SubElement(case, "error", message=rep.error, type="ConfigError").text = rep.error
            n_err = 1
        for r in rep.rows:
            label = r.ref.label
            case = ET.SubElement(suite, "testcase", classname=f"{rep.name}.layers[{r.layer}].{r.kind}",
                                 name=f"layers[{r.layer}] {r.kind} {label}", time="0")
            metrics = (f"norm_rel={r.metrics.norm_rel:.3e} max_abs={r.metrics.max_abs:.3e} "
                       f"max_rel={r.metrics.max_rel:.3e} tol={r.tol:.0e} checked={r.checked} kinks={r.kinks}")
            regression = rep.regressions.get((r.layer, r.tensor))
            if not r.passed or regression:
                n_fail += 1
                message = f"{label}: " + (regression or f"norm rel {r.metrics.norm_rel:.3e} > tol {r.tol:.0e}")
                ET.SubElement(case, "failure", message=message, type="GradientMismatch").text = \
                    "\n".join(filter(None, [metrics, r.worst_entry(), r.note]))
            else:
                ET.SubElement(case, "system-out").text = metrics
        suite.set("tests", str(len(rep.rows) + (1 if rep.error else 0)))
        suite.set("failures", str(n_fail))
        suite.set("errors", str(n_err))
        suite.set("skipped", "0")
        suite.set("time", f"{rep.seconds:.3f}")
        total += len(rep.rows) + (1 if rep.error else 0)
        failures += n_fail
        errors += n_err
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def to_markdown(reports: list[Report]) -> str:
    """A summary table of the configs, then a table per config (for a CI job summary)."""
    ok = all(r.passed for r in reports)
    lines = [f"## cnngrad: {'all gradients check out' if ok else 'gradient check FAILED'}", "",
             "| config | tensors | worst norm rel | verdict | time |", "|---|---:|---:|---|---:|"]
    for rep in reports:
        worst = render.worst(rep) if rep.rows else float("nan")
        verdict = "error: " + rep.error if rep.error else ("✅ pass" if rep.passed else "❌ fail")
        lines.append(f"| {rep.name} | {len(rep.rows)} | {worst:.2e} | {verdict} | {rep.seconds:.2f} s |")
    for rep in reports:
        if not rep.rows:
            continue
        lines += ["", f"### {rep.name}", "",
                  "| layer | kind | tensor | shape | checked | max abs | max rel | norm rel | status |",
                  "|---:|---|---|---|---:|---:|---:|---:|---|"]
        for r in rep.rows:
            status = "pass" if r.passed and (r.layer, r.tensor) not in rep.regressions else "**FAIL**"
            label = r.ref.label
            lines.append(f"| {r.layer} | {r.kind} | {label} | {'x'.join(map(str, r.shape))} | {r.checked} | "
                         f"{r.metrics.max_abs:.2e} | {r.metrics.max_rel:.2e} | {r.metrics.norm_rel:.2e} | {status} |")
        for (layer, tensor), why in rep.regressions.items():
            lines.append(f"\n- layers[{layer}] {tensor}: {why}")
        if rep.baseline_note:
            lines.append(f"\n- {rep.baseline_note}")
    return "\n".join(lines) + "\n"


FORMATS = {"json": to_json, "junit": to_junit, "markdown": to_markdown}
