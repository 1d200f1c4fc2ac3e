"""Pure renderers: a Report in, a rich ``Table`` or a string out.  No printing here."""
from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from .checker import Report
from .compare import TensorCheck, show_tol, tensor_label
from .config import Config
from .escape import printable
from .escape import text as safe
from .finite_diff import get_method


def _num(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.2e}"


# how each status of compare.STATUSES is shown
STATUS_TEXT = {"pass": ("PASS", "bold green"), "fail": ("FAIL", "bold red"),
               "unresolved": ("UNRESOLVED", "bold yellow")}


def status_text(row: TensorCheck) -> Text:
    """PASS / FAIL / UNRESOLVED, and the kinks skipped."""
    label, style = STATUS_TEXT[row.status]
    status = Text(label, style=style)
    if row.kinks:
        status.append(f" ({row.kinks} kink{'s' if row.kinks > 1 else ''})", style="yellow")
    return status


def table(report: Report) -> Table:
    """One row per (layer, tensor): kind, shape, entries checked, the three errors, status."""
    t = Table(title=Text("cnngrad check: ") + safe(report.name), title_justify="left", header_style="bold")
    for col, justify in (("layer", "right"), ("kind", "left"), ("tensor", "left"), ("shape", "left"),
                         ("checked", "right"), ("max abs", "right"), ("max rel", "right"),
                         ("norm rel", "right"), ("status", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    # the h/2 columns with --convergence (every row has it); failures alone get a line below
    halves = report.convergence
    if halves:
        t.add_column("at h/2", justify="right")
        t.add_column("ratio", justify="right")
    for r in report.rows:
        status = status_text(r)
        checked = f"{r.checked} dirs" if r.mode == "directions" else str(r.checked)
        cells: list[Any] = [safe(r.layer), safe(r.kind), safe(r.ref.label), "x".join(map(str, r.shape)), checked,
                 _num(r.metrics.max_abs), _num(r.metrics.max_rel), _num(r.metrics.norm_rel), status]
        if halves:
            e2 = r.norm_rel_half
            ratio = r.metrics.norm_rel / e2 if e2 else float("nan")
            cells += ["" if e2 is None else _num(e2), "" if e2 is None else f"{ratio:.1f}x"]
        t.add_row(*cells)
    return t


def failure_lines(report: Report) -> list[str]:
    """For each failing row: where, and both numbers at the worst entry (or why nothing was
    compared); indented under it, what halving h did and what the complex step said.  An
    unresolved row: why, and what would help.  Rows that passed only after a second look get
    an indented line of their own."""
    order = get_method(report.method).power
    lines = []
    for r in report.rows:
        where = f"{r.ref.place} {r.kind} {r.ref.label}"
        if r.passed:
            if r.note:
                lines.append(f"  {where}: {r.note}")
            continue
        if r.unresolved:
            lines.append(f"{where}: UNRESOLVED: {r.reason}")
        elif r.reason:  # failed without a comparison: every entry a kink
            lines.append(f"{where}: {r.reason}")
        else:
            lines.append(f"{where}: norm rel {_num(r.metrics.norm_rel)} > tol {r.tol_text}; {r.worst_entry()}")
        lines += [f"    {text}" for text in (r.convergence(order, report.method), r.note) if text]
        lines += [f"    diagnosis: {text}" for text in r.diagnosis]
    if report.localisation:
        lines.append(report.localisation)
    lines += [f"adjoint: {a.line()}" for a in report.adjoint if a.failed]
    for (layer, tensor), why in report.regressions.items():
        lines.append(f"layers[{layer}] {tensor_label(tensor)}: {why}")
    if report.baseline_note:
        lines.append(f"  baseline: {report.baseline_note}")
    lines += [f"  note: {why}" for why in report.fallbacks]
    lines += [f"numerical fault: {fault}" for fault in report.faults]
    lines += [f"structural: {why}" for why in report.structural]
    return [printable(line) for line in lines]  # names and plugin messages are data: no control characters


def adjoint_lines(report: Report, failed: bool | None = None) -> list[str]:
    """The dot-product test, one line per layer linear in its input (adjoint.py); only the
    failed (or passed) ones if ``failed`` says so — ``failure_lines`` has the failed ones."""
    return [printable(f"adjoint: {a.line()}") for a in report.adjoint if failed is None or a.failed == failed]


def worst(report: Report) -> float:
    """The largest norm rel of a report's judged rows (an unresolved row's is no verdict); NaN
    (a non-finite row) counts as the worst."""
    return max((r.metrics.norm_rel for r in report.rows if not r.unresolved), default=0.0,
               key=lambda v: np.inf if np.isnan(v) else v)


def worst_text(report: Report) -> str:
    """``worst(report)`` as shown; "—" where no row was judged (every one unresolved, or an
    error before any): 0 there read as a perfect match."""
    if all(r.unresolved for r in report.rows):
        return "—"
    return _num(worst(report))


def summary(report: Report) -> str:
    """The one-line verdict under the table."""
    n, good, unsure = len(report.rows), sum(r.passed for r in report.rows), len(report.unresolved)
    kinks = sum(r.kinks for r in report.rows)
    verdict = "PASSED" if report.passed else "FAILED"
    grew = f" ({len(report.regressions)} grew past the baseline)" if report.regressions else ""
    if unsure:
        kinked = [r for r in report.unresolved if r.reason.startswith("on its kinks")]
        below = [r for r in report.unresolved if not r.reason.startswith("on its kinks")]
        why = "; ".join(filter(None, [
            "" if not below else "below the resolution" if all(r.reason.startswith("gradients") for r in below)
            else "below the resolution or the dtype's rounding",
            "on kinks at θ itself" if kinked else ""]))
        grew += f", {unsure} unresolved ({why}{'; --strict fails them' if report.strict else ''})"
    within = f"tol {show_tol(report.tol or 0.0)}" if report.tol_rule != "estimate" else \
        f"their tol from Ridders' estimate (≤ {report.tol:.0e})"
    parts = [f"{verdict}: {good}/{n} tensors within {within}{grew}",
             f"worst norm rel {worst_text(report)}", f"loss {report.loss:.6g}",
             f"{report.method} differences" + (f" along {report.directions} directions" if report.directions else "")
             + f", eps {report.eps:.0e}, {report.dtype}"
             + (f" (numeric in {report.fd_dtype})" if report.fd_dtype != report.dtype else "")
             + f", seed {report.seed}",
             f"{report.seconds:.2f} s"]
    if kinks:
        parts.insert(2, f"{kinks} entries skipped at kinks")
    if report.structural:
        parts.insert(1, f"{len(report.structural)} structural failure{'s' if len(report.structural) > 1 else ''}")
    adjoint_failed = sum(a.failed for a in report.adjoint)
    if adjoint_failed:
        parts.insert(1, f"{adjoint_failed} adjoint test{'s' if adjoint_failed > 1 else ''} failed")
    if report.redraws:
        parts.insert(2, f"input drawn {report.redraws} more time{'s' if report.redraws > 1 else ''} to avoid kinks")
    return " · ".join(parts)


def summary_table(reports: list[Report]) -> Table:
    """One row per config: tensors, worst norm rel, verdict, time."""
    t = Table(title="cnngrad: all configs", title_justify="left", header_style="bold")
    for col, justify in (("config", "left"), ("tensors", "right"), ("worst norm rel", "right"),
                         ("verdict", "left"), ("time", "right")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rep in reports:
        if rep.error:
            t.add_row(safe(rep.name), "", "", Text("ERROR", style="bold red"), "")
            continue
        verdict = Text("PASS", style="bold green") if rep.passed else Text("FAIL", style="bold red")
        if rep.unresolved:
            verdict.append(f" ({len(rep.unresolved)} unresolved)", style="yellow")
        if rep.regressions:
            verdict.append(f" ({len(rep.regressions)} grew past baseline)", style="red")
        t.add_row(safe(rep.name), str(len(rep.rows)), worst_text(rep), verdict, f"{rep.seconds:.2f} s")
    return t


def shapes(config: Config) -> Table:
    """The inferred shape after every layer (``cnngrad validate``)."""
    t = Table(title=safe(f"{config.name}: input {config.batch}x" + "x".join(map(str, config.in_shape))),
              title_justify="left", header_style="bold")
    for col in ("layer", "kind", "options", "output"):
        t.add_column(col)
    _shape_rows(t, config.layers, 0)
    return t


def _shape_rows(t: Table, specs: list, depth: int) -> None:
    """One row per layer; a block's paths below it, indented, as a tree (``cnngrad validate``)."""
    pad = "│ " * max(depth - 1, 0) + ("├ " if depth else "")
    for s in specs:
        opts = ", ".join(f"{k}={v}" for k, v in s.options.items() if k != "init")
        if s.kind == "block":
            opts += f", {len(s.paths)} paths"
        name = ".".join(map(str, s.path))
        t.add_row(safe(pad + name), safe(s.kind), safe(opts), "x".join(map(str, s.out_shape)) or "?")
        for p, path in enumerate(s.paths):
            out = path[-1].out_shape if path else s.in_shape
            t.add_row(safe("│ " * depth + "├ " + f"{name}.{p}"), "path", "identity" if not path else
                      f"{len(path)} layer{'s' if len(path) > 1 else ''}", "x".join(map(str, out)))
            _shape_rows(t, path, depth + 2)


# --------------------------------------------------------------------------- sweep

_MARKERS = "abcdefghijklmnopqrstuvwxyz"
_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta", "bright_green")


def sweep_table(result) -> Table:
    """norm rel per tensor (rows) and step (columns); each tensor's best step in bold."""
    t = Table(title=safe(f"cnngrad sweep: {result.name} ({result.method} differences), norm rel error by step h"),
              title_justify="left", header_style="bold")
    t.add_column("tensor")
    for eps in result.eps:
        t.add_column(f"{eps:.0e}", justify="right")
    t.add_column("best h", justify="right")
    for label, row, best, verdict in zip(result.labels, result.errors, result.best_per_tensor(), result.verdicts()):
        cells = [Text(f"{v:.0e}" if np.isfinite(v) else "nan", style="bold" if e == best else "")
                 for v, e in zip(row, result.eps)]
        t.add_row(safe(label), *cells, f"{best:.0e}" if np.isfinite(best) else Text(verdict, style="bold red"))
    return t


def sweep_plot(result, height: int = 14) -> Text:
    """The error against h as a text plot, log-log: one letter a tensor (the legend below)."""
    with np.errstate(divide="ignore"):
        logs = np.log10(np.where(result.errors > 0, result.errors, np.nan))
    finite = logs[np.isfinite(logs)]
    if finite.size == 0:
        return Text("nothing to plot: every error is 0 or not finite")
    hi, lo = float(np.ceil(finite.max())), float(np.floor(finite.min()))
    if hi == lo:
        hi += 1
    width = min(max(5, len(result.labels) + 2), 10)  # a column per step, a slot per tensor in it
    grid = [[(" ", "")] * (len(result.eps) * width) for _ in range(height)]
    for t, row in enumerate(logs):
        for e, v in enumerate(row):
            if np.isfinite(v):
                r = int(round((hi - v) / (hi - lo) * (height - 1)))
                grid[r][e * width + 1 + t % (width - 1)] = (_MARKERS[t % 26], _COLOURS[t % len(_COLOURS)])
    out = Text("error (norm rel) against the step h, both log10\n", style="dim")
    for r, cells in enumerate(grid):
        level = hi - r * (hi - lo) / (height - 1)
        label = f"1e{round(level):d}" if r % 3 == 0 or r == height - 1 else ""
        out.append(f"{label:>6} │", style="dim")
        for ch, style in cells:
            out.append(ch, style=style)
        out.append("\n")
    out.append("       └" + "─" * (len(result.eps) * width) + "\n", style="dim")
    out.append("  h: 1e" + "".join(f"{round(np.log10(e)):^{width}d}" for e in result.eps) + "\n", style="dim")
    for t, (label, best, verdict) in enumerate(zip(result.labels, result.best_per_tensor(), result.verdicts())):
        out.append(f"  {_MARKERS[t % 26]}", style=_COLOURS[t % len(_COLOURS)])
        out.append(f" {printable(label)}  ({f'best h {best:.0e}' if np.isfinite(best) else verdict})\n")
    best = result.best()
    out.append(f"best step for every tensor at once: {best:.0e}" if np.isfinite(best)
               else "no best step: no tensor comes within tol at any step")
    return out


# --------------------------------------------------------------------------- heatmap

# (upper bound of the relative error, colour, cell): readable in colour and without
_HEAT = [(1e-9, "green4", "··"), (1e-7, "green3", "░░"), (1e-5, "yellow3", "▒▒"), (1e-3, "dark_orange", "▓▓"),
         (1e-1, "red3", "██"), (float("inf"), "bright_red", "██")]


def heatmap(report: Report, key_row: tuple[str, TensorCheck], max_rows: int = 24, max_cols: int = 40) -> Text:
    """Per-entry error |analytic − numeric| / max|numeric| of one tensor as coloured cells, so
    a border, stride or shift pattern shows at a glance.  A 4-D tensor shows its worst 2-D
    slice; entries not checked are dots."""
    key, row = key_row
    g = np.asarray(report.analytic[key], dtype=np.float64)
    n = np.asarray(report.numeric[key], dtype=np.float64)
    scale = np.nanmax(np.abs(n)) if np.any(np.isfinite(n)) else 1.0
    err = np.abs(g - n) / (scale if scale > 0 else 1.0)
    where = ""
    if err.ndim >= 3:
        lead = err.reshape((-1,) + err.shape[-2:])
        worst = int(np.nanargmax(np.nan_to_num(lead, nan=-1).max(axis=(1, 2))))
        idx = np.unravel_index(worst, err.shape[:-2])
        err = lead[worst]
        where = "[" + ", ".join(map(str, idx)) + ", :, :]"
    elif err.ndim == 1:
        err = err[None, :]
    h, w = err.shape
    label = row.ref.label
    out = Text(printable(f"{row.ref.place} {row.kind} {label}{where}") + ": |analytic − numeric| / max|numeric|"
               + (f" (top-left {min(h, max_rows)}x{min(w, max_cols)} of {h}x{w})" if h > max_rows or w > max_cols
                  else "") + "\n", style="bold")
    for i in range(min(h, max_rows)):
        for j in range(min(w, max_cols)):
            e = err[i, j]
            if not np.isfinite(e):
                out.append("  ")  # not checked
                continue
            _, colour, cell = next(level for level in _HEAT if e <= level[0])
            out.append(cell, style=colour)
        out.append("\n")
    out.append("scale:")
    for k, (bound, colour, cell) in enumerate(_HEAT):
        out.append(" ")
        out.append(cell, style=colour)
        out.append(f" ≤{bound:.0e}" if k < len(_HEAT) - 1 else f" >{_HEAT[-2][0]:.0e}")
    return out


# --------------------------------------------------------------------------- plain text (str(report))


def to_text(table_: Table, width: int = 160) -> str:
    """A rich table as plain text (no colour, no markup): for messages, not terminals."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False, color_system=None).print(table_)
    return buf.getvalue().rstrip("\n")


def plain(report: Report, rows: list[TensorCheck] | None = None) -> str:
    """``str(report)``: the one-line verdict, then the table rows of ``rows`` (default: the rows
    that did not pass) and what cnngrad says about them (worst entry, convergence, complex
    step, localisation, diagnosis, structural and numerical faults)."""
    import dataclasses

    if report.error:
        return printable(f"{report.name}: ERROR: {report.error}")
    shown = dataclasses.replace(report, rows=[r for r in report.rows if not r.passed] if rows is None else rows)
    parts = [printable(f"{report.name}: {summary(report)}")]
    if shown.rows:
        parts.append(to_text(table(shown)))
    parts += failure_lines(shown)
    return "\n".join(parts)
