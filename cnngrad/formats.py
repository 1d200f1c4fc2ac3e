"""Machine-readable reports: JSON (versioned schema), JUnit XML, Markdown.  Pure: reports in,
a string out.  The JSON schema ships as ``cnngrad/schemas/report.schema.json``.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from . import __version__
from .checker import Report
from .escape import markdown as md
from .escape import xml

SCHEMA_VERSION = 2  # 2: diagnosis, localisation, adjoint; method ridders


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
            "tol": r.tol, "status": r.status, "note": "; ".join(filter(None, [r.reason, r.note])),
            "regression": report.regressions.get((r.layer, r.tensor), ""),
            "diagnosis": list(r.diagnosis),
            "error_estimate": None if r.estimate is None else _num(r.estimate),
            "method": report.method, "eps": report.eps, "seed": report.seed, "dtype": report.dtype,
            "cnngrad_version": __version__,
        })
    return out


def localisation(report: Report) -> dict[str, Any] | None:
    """The blamed layer, as JSON: ``{"layer", "kind", "text"}``, or None."""
    if report.culprit is None or not report.localisation:
        return None
    kind = report.localisation.split("(", 1)[1].split(")", 1)[0] if "(" in report.localisation else ""
    return {"layer": report.culprit, "kind": kind, "text": report.localisation}


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
            "structural": list(rep.structural),
            "localisation": localisation(rep),
        }
        entry["adjoint"] = [a.record() for a in getattr(rep, "adjoint", None) or []]  # [] where none ran
        if timings:
            entry["seconds"] = round(rep.seconds, 4)
        configs.append(entry)
    return {"schema_version": SCHEMA_VERSION, "cnngrad_version": __version__,
            "passed": all(r.passed for r in reports), "configs": configs}


def to_json(reports: list[Report], timings: bool = True) -> str:
    text = json.dumps(to_dict(reports, timings), indent=2, ensure_ascii=False) + "\n"
    # JSON escapes C0 controls itself; DEL, C1 (a CSI) and bidi overrides as \uXXXX too
    return re.sub("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", lambda m: f"\\u{ord(m.group()):04x}", text)


def to_junit(reports: list[Report]) -> str:
    """JUnit XML: a testsuite per config, a testcase per (layer, tensor); a failing tensor
    carries its metrics in <failure>, an unresolved one its reason in <skipped> (in <failure>
    with --strict, which fails it), a config that could not be checked an <error>; a numerical
    fault is a <failure> of its own: the XML fails whenever the exit code does."""
    from xml.etree import ElementTree as ET  # here, not at start-up

    suites = ET.Element("testsuites", name="cnngrad")
    total = failures = errors = skipped = 0
    for rep in reports:
        suite = ET.SubElement(suites, "testsuite", name=rep.name)
        n_fail = n_err = n_skip = 0
        if rep.error:
            case = ET.SubElement(suite, "testcase", name="config", classname=rep.name, time="0")
            ET.SubElement(case, "error", message=rep.error, type="ConfigError").text = rep.error
            n_err = 1
        for r in rep.rows:
            label = r.ref.label
            case = ET.SubElement(suite, "testcase", classname=f"{rep.name}.{r.ref.place}.{r.kind}",
                                 name=f"{r.ref.place} {r.kind} {label}", time="0")
            metrics = (f"norm_rel={r.metrics.norm_rel:.3e} max_abs={r.metrics.max_abs:.3e} "
                       f"max_rel={r.metrics.max_rel:.3e} tol={r.tol_text} checked={r.checked} kinks={r.kinks}")
            regression = rep.regressions.get((r.layer, r.tensor))
            if r.unresolved and not regression and not rep.strict:
                n_skip += 1
                ET.SubElement(case, "skipped", message=f"{label}: unresolved: {r.reason}").text = \
                    "\n".join(filter(None, [metrics, r.note]))
            elif not r.passed or regression:
                n_fail += 1
                message = f"{label}: " + (regression or (f"unresolved, which --strict fails: {r.reason}"
                                                         if r.unresolved else r.reason)
                                          or f"norm rel {r.metrics.norm_rel:.3e} > tol {r.tol_text}")
                located = rep.localisation if rep.culprit == r.layer else ""
                ET.SubElement(case, "failure", message=message, type="GradientMismatch").text = \
                    "\n".join(filter(None, [metrics, r.worst_entry(), r.note, located,
                                             *(f"diagnosis: {d}" for d in r.diagnosis)]))
            else:
                ET.SubElement(case, "system-out").text = metrics
        for why in rep.structural:  # a layer that is not a function (structural.py)
            case = ET.SubElement(suite, "testcase", classname=rep.name, name=f"structural {why}", time="0")
            ET.SubElement(case, "failure", message=why, type="StructuralFailure").text = why
        n_fail += len(rep.structural)
        broken = [a for a in rep.adjoint if a.failed]  # a backward that is not the adjoint of its forward
        for a in broken:
            case = ET.SubElement(suite, "testcase", classname=f"{rep.name}.layers[{a.ref.layer}].{a.kind}",
                                 name=f"layers[{a.ref.layer}] {a.kind} adjoint", time="0")
            ET.SubElement(case, "failure", message=f"adjoint rel {a.worst:.3e} > tol {a.tol:.0e}",
                          type="AdjointMismatch").text = a.line()
        n_fail += len(broken)
        # what else fails the config: a numerical fault (a non-finite pass), or anything the exit code
        # counts that no testcase above carries — the XML never says green where the exit code says red
        extra = [f"numerical fault: {fault}" for fault in rep.faults]
        if rep.return_code == 1 and not extra and n_fail == 0:
            extra = ["the check failed (see the report)"]
        for why in extra:
            case = ET.SubElement(suite, "testcase", classname=rep.name, name=why.split(":")[0], time="0")
            ET.SubElement(case, "failure", message=why, type="CheckFailure").text = why
        n_fail += len(extra)
        tests = len(rep.rows) + len(rep.structural) + len(broken) + len(extra) + (1 if rep.error else 0)
        suite.set("tests", str(tests))
        suite.set("failures", str(n_fail))
        suite.set("errors", str(n_err))
        suite.set("skipped", str(n_skip))
        suite.set("time", f"{rep.seconds:.3f}")
        total += tests
        failures += n_fail
        errors += n_err
        skipped += n_skip
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    for element in suites.iter():  # names and messages are data: XML 1.0 forbids most control characters
        element.text = element.text and xml(element.text)
        for key, value in element.attrib.items():
            element.set(key, xml(value))
    suites.set("skipped", str(skipped))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def to_markdown(reports: list[Report]) -> str:
    """A summary table of the configs, then a table per config (for a CI job summary)."""
    from .report import worst_text  # rich's renderers: loaded for the formats that show them

    ok = all(r.passed for r in reports)
    lines = [f"## cnngrad: {'all gradients check out' if ok else 'gradient check FAILED'}", "",
             "| config | tensors | worst norm rel | verdict | time |", "|---|---:|---:|---|---:|"]
    for rep in reports:
        worst_rel = worst_text(rep)
        verdict = "error: " + md(rep.error) if rep.error else ("✅ pass" if rep.passed else "❌ fail")
        if rep.unresolved and not rep.error:
            verdict += f" ({len(rep.unresolved)} unresolved)"
        lines.append(f"| {md(rep.name)} | {len(rep.rows)} | {worst_rel} | {verdict} | {rep.seconds:.2f} s |")
    for rep in reports:
        if not rep.rows:
            continue
        lines += ["", f"### {md(rep.name)}", "",
                  "| layer | kind | tensor | shape | checked | max abs | max rel | norm rel | status |",
                  "|---:|---|---|---|---:|---:|---:|---:|---|"]
        for r in rep.rows:
            status = "**FAIL**" if r.failed or (r.layer, r.tensor) in rep.regressions else \
                "UNRESOLVED" if r.unresolved else "pass"
            label = md(r.ref.label)
            lines.append(f"| {md(r.layer)} | {md(r.kind)} | {label} | {'x'.join(map(str, r.shape))} | {r.checked} | "
                         f"{r.metrics.max_abs:.2e} | {r.metrics.max_rel:.2e} | {r.metrics.norm_rel:.2e} | {status} |")
        for r in rep.rows:
            if r.reason:
                lines.append(f"\n- {md(r.ref.place)} {md(r.ref.label)}: {md(r.reason)}")
        for (layer, tensor), why in rep.regressions.items():
            lines.append(f"\n- layers[{md(layer)}] {md(tensor)}: {md(why)}")
        if rep.localisation:
            lines.append(f"\n- localisation: {md(rep.localisation)}")
        for r in rep.rows:
            lines += [f"\n- layers[{md(r.layer)}] {md(r.ref.label)} diagnosis: {md(d)}" for d in r.diagnosis]
        lines += [f"\n- adjoint: {md(a.line())}" for a in getattr(rep, "adjoint", [])]
        if rep.baseline_note:
            lines.append(f"\n- {md(rep.baseline_note)}")
        lines += [f"\n- structural: {md(why)}" for why in rep.structural]
    return "\n".join(lines) + "\n"


FORMATS = {"json": to_json, "junit": to_junit, "markdown": to_markdown}
