"""Run a whole check: build the network, backpropagate, difference, compare.

``check(config) -> Report`` is the library entry point; the CLI is a thin layer on it.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import config as cfg
from .compare import TensorCheck, judge
from .finite_diff import FiniteDifferences, get_method, select
from .network import Problem, build

Array = np.ndarray


@dataclass
class Report:
    """Rows of one config's check, and the one place its exit code is decided."""

    name: str
    rows: list[TensorCheck]
    loss: float
    eps: float
    tol: float
    method: str
    dtype: str
    seed: int
    seconds: float = 0.0
    problem: Problem | None = field(default=None, repr=False)
    analytic: dict[str, Array] = field(default_factory=dict, repr=False)
    numeric: dict[str, Array] = field(default_factory=dict, repr=False)

    @property
    def failures(self) -> list[TensorCheck]:
        return [r for r in self.rows if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures and np.isfinite(self.loss)

    @property
    def return_code(self) -> int:
        """0 every check passed, 1 a gradient check failed (CONVENTIONS.md)."""
        return 0 if self.passed else 1


def check(config: cfg.Config | str, *, eps: float | None = None, tol: float | None = None,
          samples: int | None = None, method: str | None = None, plugins: bool = False,
          progress: Callable[[int, int], None] | None = None, workers: int | None = None) -> Report:
    """Check every parameter tensor and the input δ of ``config`` (a Config, a path or
    the name of a shipped config).  ``eps``/``tol``/``samples`` default to the config's
    ``check:`` values (its ``eps`` only for its own ``method``), then to the method's step and tolerance for the dtype (``finite_diff.METHODS``).
    ``progress(done, total)`` is called as entries are finished; ``workers`` processes
    share a large check (default: up to 2), with the same numbers as one."""
    if not isinstance(config, cfg.Config):
        config = cfg.load(str(config), plugins=plugins)
    config_method = config.check.get("method", "central")
    method = method or config_method
    if eps is None:  # the config's step was chosen for the config's method, not for another
        eps = config.check["eps"] if "eps" in config.check and method == config_method \
            else get_method(method).default_eps[config.dtype]
    tol = tol if tol is not None else config.check.get("tol", get_method(method).default_tol[config.dtype])
    samples = samples if samples is not None else config.check.get("samples")
    t0 = time.perf_counter()
    problem = build(config)
    net, x, y = problem.net, problem.x, problem.y
    with np.errstate(all="ignore"):  # NaN/overflow becomes a failed row, not noise
        loss, delta_x, grads = net.gradients(x, y)
        tensors = [delta_x] + [g for gl in grads for g in gl.values()]
        total = sum(g.size if samples is None else min(samples, g.size) for g in tensors)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

        fd = FiniteDifferences(net, x, y, eps, method, progress=advance, workers=workers)
        report = Report(config.name, [], loss, eps, tol, method, config.dtype, config.seed, problem=problem)
        # (key, layer, tensor, analytic gradient, FD target), the input δ first, then layer by layer
        rows = [("input", 0, "input", delta_x, "input")] + [
            (f"layers.{i}.{name}", i, name, grads[i][name], (i, name))
            for i, layer in enumerate(net.layers) for name in layer.params]
        picks = [select(problem.rng, g.size, samples) for *_, g, _ in rows]
        numeric = fd.numeric([(target, idx) for (*_, target), idx in zip(rows, picks)])
        for (key, layer, tensor, g, _), idx, num in zip(rows, picks, numeric):
            kind = net.specs[layer].kind if net.specs[layer].kind != "custom" else type(net.layers[layer]).__name__
            report.rows.append(judge(layer, kind, tensor, g.shape, idx, g.reshape(-1)[idx].astype(np.float64),
                                     num.values, num.kinks, tol))
            full = np.full(g.size, np.nan)
            full[idx] = num.values
            report.analytic[key] = g
            report.numeric[key] = full.reshape(g.shape)
    report.seconds = time.perf_counter() - t0
    return report


def save_npz(report: Report, path: str | os.PathLike) -> None:
    """Write the run with CONVENTIONS.md's keys, atomically (a temp file, then rename)."""
    p = report.problem
    arrays: dict[str, Array] = {"x": p.x, "y": p.y, "loss": np.asarray(report.loss)}
    for i, layer in enumerate(p.net.layers):
        for name, P in layer.params.items():
            arrays[f"layers.{i}.{name}"] = P
            arrays[f"grad.layers.{i}.{name}"] = report.analytic[f"layers.{i}.{name}"]
            arrays[f"numgrad.layers.{i}.{name}"] = report.numeric[f"layers.{i}.{name}"]
    arrays["grad.input"] = report.analytic["input"]
    arrays["numgrad.input"] = report.numeric["input"]
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
