"""``cnngrad sweep``: the check's error against the step h, per tensor.

Central differences have a truncation error ~h² and a rounding error ~ε/h, so on a log-log
plot the error against h is a V; its bottom is the best step.  A tensor whose error has no
V — flat across every h — has a wrong analytic gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import config as cfg
from . import resolution
from .checker import FLOAT32_AGAINST_FLOAT64_TOL, targets, upcast
from .compare import metrics, show_tol
from .complex_probe import ComplexProbe
from .finite_diff import FiniteDifferences, get_method, select
from .network import build

Array = np.ndarray
DEFAULT_STEPS = tuple(10.0 ** -k for k in range(1, 13))  # 1e-1 … 1e-12


@dataclass
class Sweep:
    """errors[t, e]: norm rel of tensor ``labels[t]`` with step ``eps[e]``; ``tol`` is what a
    check of this config would pass a tensor at."""

    name: str
    method: str
    eps: list[float]
    labels: list[str]
    errors: Array
    tol: float = 1e-6
    seed: int = 0
    dtype: str = "float64"
    # covered[t]: both sides within the resolution of the differences at the step a check would
    # take (the config's, else the method's: ``cnngrad check`` judges a row UNRESOLVED there,
    # resolution.Floor) — not at any step: at h = 1e-12 the resolution excuses ~1e-3
    covered: Array | None = None

    def verdicts(self) -> list[str]:
        """Per tensor: ``"ok"`` (some step brings it within tol); ``"unresolved"`` (no step does,
        but at the step a check would take both sides are ~0 within the differences' resolution:
        a gradient 0 in truth, a bias before a train-mode batch norm, is no error); ``"flat"`` (no step does and
        the error does not shrink with h — under 10x from the largest step to the best, over 3
        steps or more: the analytic gradient is wrong, whatever the step); ``"fails"`` (no step
        does, though the error moves with h); ``"nan"`` (nothing compared, or not finite)."""
        out = []
        for t, row in enumerate(self.errors):
            finite = row[np.isfinite(row)]
            if finite.size and finite.min() > self.tol and self.covered is not None and self.covered[t]:
                out.append("unresolved")
            elif finite.size == 0:
                out.append("nan")
            elif finite.min() <= self.tol:
                out.append("ok")
            else:
                out.append("flat" if finite.size >= 3 and finite[0] < 10 * finite.min() else "fails")
        return out

    def best_per_tensor(self) -> list[float]:
        """Each tensor's best step; NaN for a tensor no step brings within tol."""
        return [self.eps[int(np.nanargmin(row))] if v == "ok" else float("nan")
                for row, v in zip(self.errors, self.verdicts())]

    def best(self) -> float:
        """The step whose worst error is smallest, over the tensors some step brings within
        tol (a wrong gradient has no best step); NaN if there are none."""
        good = [i for i, v in enumerate(self.verdicts()) if v == "ok"]
        if not good:
            return float("nan")
        errors = self.errors[good]
        worst = np.nanmax(np.where(np.isfinite(errors), errors, np.inf), axis=0)
        return self.eps[int(np.argmin(worst))]

    def unresolved(self) -> list[str]:
        """One line per tensor no step resolves from 0 (not a failure: ``cnngrad check`` says UNRESOLVED)."""
        return [f"{label}: unresolved: both sides ~0 within the resolution of the differences at the check's "
                f"step (0 in truth, or too small to tell — as cnngrad check says)"
                for label, v in zip(self.labels, self.verdicts()) if v == "unresolved"]

    def problems(self) -> list[str]:
        """One line per tensor that no step brings within tol, saying why."""
        lines = []
        for label, row, v in zip(self.labels, self.errors, self.verdicts()):
            if v in ("ok", "unresolved"):
                continue
            low = f"{np.nanmin(row):.1e}" if np.any(np.isfinite(row)) else "nan"
            if v == "flat":
                lines.append(f"{label}: flat: the gradient is wrong (norm rel {low} at best, "
                             f"> tol {show_tol(self.tol)} at every step: the error does not shrink with h)")
            elif v == "fails":
                lines.append(f"{label}: no step within tol {show_tol(self.tol)} (best norm rel {low}): the gradient is "
                             f"wrong, or this tensor needs another method (--method complex)")
            else:
                lines.append(f"{label}: nothing compared at any step (every stencil at a kink, or not finite)")
        return lines


def sweep(config: cfg.Config, eps_values: tuple[float, ...] = DEFAULT_STEPS, samples: int | None = None,
          method: str = "central", workers: int | None = None) -> Sweep:
    """Run the finite differences once per step on the same entries; analytic side once."""
    problem = build(config)
    net, x, y = problem.net, problem.x, problem.y
    with np.errstate(all="ignore"):
        loss, deltas, grads, outputs = net.trace(x, y)
        rows = targets(net, deltas, grads)
        picks = [select(problem.rng, row.grad.size, samples) for row in rows]
        fd_net, fd_x, fd_y = upcast(net, x, y) if config.dtype != "float64" else (net, x, y)
        why = ComplexProbe(fd_net, fd_x).network() if get_method(method).is_complex else ""
        if why:  # a lost imaginary part would read as a derivative
            raise cfg.ConfigError(f"method {method}: {why}")
        errors = np.full((len(rows), len(eps_values)), np.nan)
        covered = np.zeros(len(rows), dtype=bool)
        biggest = resolution.largest([*deltas, *(g for layer in grads for g in layer.values())])
        own = config.check.get("eps") if config.check.get("method", "central") == method else None
        own = own if isinstance(own, float) else get_method(method).default_eps[
            "float64" if config.dtype == "float64" else "float32"]
        at = int(np.argmin([abs(np.log(eps / own)) for eps in eps_values]))  # the step a check would take
        for e, eps in enumerate(eps_values):
            fd = FiniteDifferences(fd_net, fd_x, fd_y, eps, method, workers=workers)
            floor = resolution.floor(method, get_method(method).is_complex, eps, fd_x.dtype, loss, outputs[-1], y,
                                     config.dtype, biggest)
            for t, num in enumerate(fd.numeric([(row.ref, idx) for row, idx in zip(rows, picks)])):
                g = rows[t].grad.reshape(-1)[picks[t]].astype(np.float64)
                ok = ~num.kinks
                errors[t, e] = metrics(g[ok], num.values[ok]).norm_rel
                if e == at:
                    covered[t] = bool(ok.any()) and floor.covers(g[ok], num.values[ok])
    labels = [f"{row.ref.layer} {row.kind} {row.ref.label}" for row in rows]
    m = get_method(method)
    tol = config.check.get("tol")  # what `cnngrad check` would pass at (with tol: estimate, at most the default)
    if not isinstance(tol, float):
        tol = FLOAT32_AGAINST_FLOAT64_TOL if config.dtype != "float64" else m.default_tol["float64"]
    return Sweep(config.name, method, list(eps_values), labels, errors, tol, config.seed, config.dtype, covered)


def figure(result: Sweep) -> Any:
    """The V curves as a matplotlib Figure (the optional ``plot`` extra): each tensor's error
    against h, the tolerance, reference slopes h² (truncation) and ε/h (rounding) through
    the lowest point, the best step; seed and dtype in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    h = np.asarray(result.eps)
    for label, row, v in zip(result.labels, result.errors, result.verdicts()):
        ax.loglog(h, np.maximum(row, 1e-18), marker="o", ms=3, label=label + (" (flat: wrong)" if v == "flat" else ""))
    ax.axhline(result.tol, color="red", ls=":", lw=1, label=f"tol {show_tol(result.tol)}")
    good = result.errors[[v == "ok" for v in result.verdicts()]]
    good = good[:, np.all(np.isfinite(good) & (good > 0), axis=0)] if good.size else good
    if good.size and len(h) >= 2:  # the slopes through the median error at each end
        order = get_method(result.method).power
        ax.loglog(h, np.median(good[:, 0]) * (h / h[0]) ** order, color="grey", ls="-.", lw=0.8,
                  label=f"slope h{'²' if order == 2 else '^' + str(order)} (truncation)")
        ax.loglog(h, np.median(good[:, -1]) * (h[-1] / h), color="grey", ls=":", lw=0.8,
                  label="slope ε/h (rounding)")
    shown = result.errors[np.isfinite(result.errors) & (result.errors > 0)]
    if shown.size:
        ax.set_ylim(max(shown.min() / 100, 1e-18), max(shown.max(), result.tol) * 10)  # the slopes run off it
    best = result.best()
    if np.isfinite(best):
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best eps {best:.0e}")
    ax.set_xlabel("step h")
    ax.set_ylabel("norm rel error")
    ax.set_title(f"cnngrad sweep: {result.name} ({result.method} differences, seed {result.seed}, {result.dtype})")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_plot(result: Sweep, path: str) -> None:
    """``figure(result)`` written to ``path`` (.png or .svg)."""
    import matplotlib.pyplot as plt

    fig = figure(result)
    fig.savefig(path)
    plt.close(fig)
