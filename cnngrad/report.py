"""Pure renderers: a Report in, a rich ``Table`` or a string out.  No printing here."""
from __future__ import annotations

import numpy as np
from rich.table import Table
from rich.text import Text

from .checker import Report
from .compare import TensorCheck
from .config import Config


def _num(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.2e}"


def tensor_label(row: TensorCheck) -> str:
    return "δ input" if row.tensor == "input" else row.tensor


def table(report: Report) -> Table:
    """One row per (layer, tensor): kind, shape, entries checked, the three errors, status."""
    t = Table(title=f"cnngrad check: {report.name}", title_justify="left", header_style="bold")
    for col, justify in (("layer", "right"), ("kind", "left"), ("tensor", "left"), ("shape", "left"),
                         ("checked", "right"), ("max abs", "right"), ("max rel", "right"),
                         ("norm rel", "right"), ("status", "left")):
        t.add_column(col, justify=justify)
    # the h/2 columns with --convergence (every row has it); failures alone get a line below
    halves = report.convergence
    if halves:
        t.add_column("at h/2", justify="right")
        t.add_column("ratio", justify="right")
    for r in report.rows:
        status = Text("PASS", style="bold green") if r.passed else Text("FAIL", style="bold red")
        if r.kinks:
            status.append(f" ({r.kinks} kink{'s' if r.kinks > 1 else ''})", style="yellow")
        checked = f"{r.checked} dirs" if r.mode == "directions" else str(r.checked)
        cells = [str(r.layer), r.kind, tensor_label(r), "x".join(map(str, r.shape)), checked,
                 _num(r.metrics.max_abs), _num(r.metrics.max_rel), _num(r.metrics.norm_rel), status]
        if halves:
            e2 = r.norm_rel_half
            ratio = r.metrics.norm_rel / e2 if e2 else float("nan")
            cells += ["" if e2 is None else _num(e2), "" if e2 is None else f"{ratio:.1f}x"]
        t.add_row(*cells)
    return t


def failure_lines(report: Report) -> list[str]:
    """For each failing row: where, and both numbers at the worst entry; indented under it,
    what halving h did and what the complex step said.  Rows that passed only after a
    second look get an indented line of their own."""
    order = {"forward": 1, "richardson": 4}.get(report.method, 2)
    lines = []
    for r in report.rows:
        where = f"layers[{r.layer}] {r.kind} {tensor_label(r)}"
        if r.passed:
            if r.note:
                lines.append(f"  {where}: {r.note}")
            continue
        lines.append(f"{where}: norm rel {_num(r.metrics.norm_rel)} > tol {r.tol:.0e}; {r.worst_entry()}")
        lines += [f"    {text}" for text in (r.convergence(order), r.note) if text]
    if not np.isfinite(report.loss):
        lines.append(f"the loss is {report.loss}: the forward pass overflowed or produced NaN")
    return lines


def summary(report: Report) -> str:
    """The one-line verdict under the table."""
    n, bad = len(report.rows), len(report.failures)
    worst = max((r.metrics.norm_rel for r in report.rows), default=0.0, key=lambda v: np.inf if v != v else v)
    kinks = sum(r.kinks for r in report.rows)
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [f"{verdict}: {n - bad}/{n} tensors within tol {report.tol:.0e}",
             f"worst norm rel {_num(worst)}", f"loss {report.loss:.6g}",
             f"{report.method} differences" + (f" along {report.directions} directions" if report.directions else "")
             + f", eps {report.eps:.0e}, {report.dtype}"
             + (f" (numeric in {report.fd_dtype})" if report.fd_dtype != report.dtype else "") + f", seed {report.seed}",
             f"{report.seconds:.2f} s"]
    if kinks:
        parts.insert(2, f"{kinks} entries skipped at kinks")
    return " · ".join(parts)


def shapes(config: Config) -> Table:
    """The inferred shape after every layer (``cnngrad validate``)."""
    t = Table(title=f"{config.name}: input {config.batch}x" + "x".join(map(str, config.in_shape)),
              title_justify="left", header_style="bold")
    for col in ("layer", "kind", "options", "output"):
        t.add_column(col)
    for s in config.layers:
        opts = ", ".join(f"{k}={v}" for k, v in s.options.items() if k != "init")
        t.add_row(str(s.index), s.kind, opts, "x".join(map(str, s.out_shape)) or "?")
    return t
