"""``cnngrad sweep``: the check's error against the step h, per tensor.

Central differences have a truncation error ~h² and a rounding error ~ε/h, so on a log-log
plot the error against h is a V; its bottom is the best step.  A tensor whose error has no
V — flat across every h — has a wrong analytic gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import config as cfg
from .checker import targets, upcast
from .compare import metrics
from .complex_probe import ComplexProbe
from .finite_diff import FiniteDifferences, get_method, select
from .network import build

Array = np.ndarray
DEFAULT_STEPS = tuple(10.0 ** -k for k in range(1, 13))  # 1e-1 … 1e-12


@dataclass
class Sweep:
    """errors[t, e]: norm rel of tensor ``labels[t]`` with step ``eps[e]``."""

    name: str
    method: str
    eps: list[float]
    labels: list[str]
    errors: Array

    def best_per_tensor(self) -> list[float]:
        return [self.eps[int(np.nanargmin(row))] if np.any(np.isfinite(row)) else float("nan")
                for row in self.errors]

    def best(self) -> float:
        """The step whose worst tensor error is smallest."""
        worst = np.nanmax(np.where(np.isfinite(self.errors), self.errors, np.inf), axis=0)
        return self.eps[int(np.argmin(worst))]


def sweep(config: cfg.Config, eps_values: tuple[float, ...] = DEFAULT_STEPS, samples: int | None = None,
          method: str = "central", workers: int | None = None) -> Sweep:
    """Run the finite differences once per step on the same entries; analytic side once."""
    problem = build(config)
    net, x, y = problem.net, problem.x, problem.y
    with np.errstate(all="ignore"):
        _, deltas, grads, _ = net.trace(x, y)
        rows = targets(net, deltas, grads)
        picks = [select(problem.rng, row.grad.size, samples) for row in rows]
        fd_net, fd_x, fd_y = upcast(net, x, y) if config.dtype != "float64" else (net, x, y)
        why = ComplexProbe(fd_net, fd_x).network() if get_method(method).is_complex else ""
        if why:  # a lost imaginary part would read as a derivative
            raise cfg.ConfigError(f"method {method}: {why}")
        errors = np.full((len(rows), len(eps_values)), np.nan)
        for e, eps in enumerate(eps_values):
            fd = FiniteDifferences(fd_net, fd_x, fd_y, eps, method, workers=workers)
            for t, num in enumerate(fd.numeric([(row.ref, idx) for row, idx in zip(rows, picks)])):
                g = rows[t].grad.reshape(-1)[picks[t]].astype(np.float64)
                ok = ~num.kinks
                errors[t, e] = metrics(g[ok], num.values[ok]).norm_rel
    labels = [f"{row.ref.layer} {row.kind} {row.ref.label}" for row in rows]
    return Sweep(config.name, method, list(eps_values), labels, errors)


def save_plot(result: Sweep, path: str) -> None:
    """The V curves as an image (matplotlib, the optional ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, row in zip(result.labels, result.errors):
        ax.loglog(result.eps, np.maximum(row, 1e-18), marker="o", ms=3, label=label)
    ax.axvline(result.best(), color="grey", ls="--", lw=1, label=f"best eps {result.best():.0e}")
    ax.set_xlabel("step h")
    ax.set_ylabel("norm rel error")
    ax.set_title(f"cnngrad sweep: {result.name} ({result.method} differences)")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
