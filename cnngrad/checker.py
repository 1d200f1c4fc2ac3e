"""Run a whole check: build the network, backpropagate, difference, compare.

``check(config) -> Report`` is the library entry point; the CLI is a thin layer on it.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import config as cfg
from . import diagnose as diagnose_mod
from .compare import TensorCheck, judge, metrics
from .finite_diff import FiniteDifferences, Interrupted, get_method, select
from .network import Network, Problem, build
from .resources import guard

Array = np.ndarray


@dataclass
class Report:
    """Rows of one config's check, and the one place its exit code is decided."""

    name: str
    rows: list[TensorCheck]
    loss: float | None
    eps: float | None
    tol: float | None
    method: str
    dtype: str
    seed: int | None
    seconds: float = 0.0
    problem: Problem | None = field(default=None, repr=False)
    fd_dtype: str = "float64"  # the dtype the numeric side ran in
    directions: int = 0  # > 0: rows compare v·∇C along that many random directions
    convergence: bool = False  # every tensor differenced again at h/2
    source: str = ""  # the path or name it was given as
    digest: str = ""  # Config.digest(): what a baseline is keyed on
    raw: Any = field(default=None, repr=False)  # the config as loaded, for a reproducer
    error: str = ""  # the config could not be checked (bad config, bad plugin): exit 2
    regressions: dict[tuple[int, str], str] = field(default_factory=dict)  # (layer, tensor) -> what grew
    baseline_note: str = ""  # e.g. the config changed since the baseline was recorded
    localisation: str = ""  # "layer 3 (conv): backward is wrong; layers 4-7 check out"
    redraws: int = 0  # --avoid-kinks: how many times the input was drawn again
    faults: list[str] = field(default_factory=list)  # where a pass first went non-finite (inf, NaN)
    interrupted: bool = False  # Ctrl-C: rows holds only the tensors finished before it
    numeric_full: dict[str, Array] = field(default_factory=dict, repr=False)  # differenced in full to diagnose
    analytic: dict[str, Array] = field(default_factory=dict, repr=False)
    numeric: dict[str, Array] = field(default_factory=dict, repr=False)

    @classmethod
    def failed_to_load(cls, source: str, message: str) -> Report:
        return cls(name=source, rows=[], loss=None, eps=None, tol=None, method="", dtype="", seed=None,
                   source=source, error=message)

    @property
    def failures(self) -> list[TensorCheck]:
        return [r for r in self.rows if not r.passed]

    @property
    def passed(self) -> bool:
        return not (self.error or self.failures or self.regressions or self.faults) and bool(np.isfinite(self.loss))

    @property
    def return_code(self) -> int:
        """0 every check passed, 1 a gradient check failed (or grew past its baseline),
        2 the config could not be checked (CONVENTIONS.md)."""
        if self.error:
            return 2
        return 0 if self.passed else 1

    def write_reproducer(self, directory: str | os.PathLike) -> Path:
        """The config as a YAML file in ``directory``, with the failure and the command to
        rerun it in a comment on top; named after the config and its digest."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{self.digest}.yaml"
        raw = dict(self.raw)
        raw["seed"] = self.seed
        why = "; ".join(f"layers[{r.layer}] {r.tensor}: norm rel {r.metrics.norm_rel:.2e}" for r in self.failures) \
            or "; ".join(self.regressions.values()) or "passed"
        header = f"# cnngrad reproducer: {why}\n# rerun: cnngrad check {path}\n"
        atomic_write(path, header + yaml.safe_dump(raw, sort_keys=False))
        return path


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a file whole or not at all: a temp file beside it, then rename over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# float32 networks checked against float64 differences: what is left is the float32
# backward's own rounding, ~1e-7 in norm (2e-7 the worst of 30 seeds of float32.yaml);
# real bugs stay at 1e-3 and above.
FLOAT32_AGAINST_FLOAT64_TOL = 1e-4


def upcast(net: Network, x: Array, y: Array) -> tuple[Network, Array, Array]:
    """A float64 copy of a float32 network (its parameters cast up exactly), x and y."""
    wide = copy.deepcopy(net)
    for layer in wide.layers:
        for name in layer.params:
            layer.params[name] = layer.params[name].astype(np.float64)
    return wide, x.astype(np.float64), (y.astype(np.float64) if y.dtype.kind == "f" else y)


def key_of(layer: int, tensor: str) -> str:
    """Where a row's arrays live in Report.analytic / Report.numeric: "input" (∂C/∂x),
    "layers.{i}.{name}" (a parameter, as in the .npz), "delta.{i}" (δ at layer i's input)."""
    if tensor == "input":
        return "input" if layer == 0 else f"delta.{layer}"
    return f"layers.{layer}.{tensor}"


def targets(net: Network, deltas: list[Array], grads: list[dict[str, Array]]) -> tuple[list[tuple], list[str]]:
    """The rows to check, the input δ first, then layer by layer: (key, layer, tensor,
    analytic gradient, finite-difference target), and each row's kind for the table.  A
    plugin layer also gets the δ at its input (``deltas[l]``, from ``Network.backward``)."""
    rows = [(key_of(0, "input"), 0, "input", deltas[0], "input")]
    for i, layer in enumerate(net.layers):
        if i > 0 and net.specs[i].kind == "custom":  # a plugin's backward shows in the δ it passes down
            rows.append((key_of(i, "input"), i, "input", deltas[i], (i, "input")))
        rows += [(key_of(i, name), i, name, grads[i][name], (i, name)) for name in layer.params]
    every = kinds_of(net)  # once: per row it was quadratic in depth
    kinds = [every[layer] for _, layer, *_ in rows]
    return rows, kinds


def _confirm_failures(checks: list, rows: list, problem: tuple, how: Settings) -> None:
    """Check each failing tensor again with the complex step, which has no rounding floor.

    A real bug fails there too, and the row says the failure is confirmed.  A tensor whose
    difference quotient only drowned in rounding (tiny gradients beside a large loss) passes
    there, and its row becomes the complex step's, saying why.  Skipped for layers that cannot
    run in complex arithmetic.
    """
    failing = [r for r, c in enumerate(checks) if c.mode == "entries" and not c.passed]
    if not failing:
        return
    method, tol = how.method, how.tol
    order = get_method(method).power
    try:
        step = get_method("complex").default_eps[how.fd_dtype]
        exact = FiniteDifferences(*problem, step, "complex", workers=how.workers)
        results = exact.numeric([(rows[r][4], checks[r].indices) for r in failing])
    except (TypeError, ValueError, FloatingPointError, cfg.PluginError):  # a plugin that is real-only
        return
    for r, num in zip(failing, results):
        c = checks[r]
        redo = judge(c.layer, c.kind, c.tensor, c.shape, c.indices, c.analytic, num.values, num.kinks, tol)
        why = c.convergence(order)
        if redo.passed:
            redo.note = (f"{method} differences failed ({why or f'norm rel {c.metrics.norm_rel:.1e}'}); "
                         f"the complex step, free of rounding, agrees: norm rel {redo.metrics.norm_rel:.1e}")
            checks[r] = redo
        else:
            confirmed = f"the complex step confirms it (norm rel {redo.metrics.norm_rel:.1e})"
            c.note = "; ".join(filter(None, [c.note, confirmed]))


MAX_REDRAWS = 10  # --avoid-kinks: fresh inputs tried before giving up
DIAGNOSE_MAX = 200_000  # entries of a failing tensor differenced in full to diagnose it


def _localise(report: Report, net: Network, deltas: list[Array], out_delta: Array, fd: Any, rows: list,
              kinds: list, picks: list, checks: list, samples: int | None, rng: np.random.Generator,
              tol: float) -> None:
    """Add δ at every inner layer boundary (``deltas``) to the rows, name the first layer whose
    own backward is wrong, and test that layer's failing tensors against the usual bugs
    (``out_delta``: ∂C/∂ the last layer's output)."""
    have = {r[1] for r in rows if r[2] == "input"}
    extra = [(key_of(l, "input"), l, "input", deltas[l], (l, "input")) for l in range(1, len(net.layers))
             if l not in have]
    extra_picks = [select(rng, d.size, samples) for *_, d, _ in extra]
    for (key, l, tensor, d, target), idx, num in zip(extra, extra_picks,
                                                    fd.numeric([(e[4], i) for e, i in zip(extra, extra_picks)])):
        rows.append((key, l, tensor, d, target))
        kinds.append(kinds_of(net)[l])
        picks.append(idx)
        checks.append(judge(l, kinds[-1], tensor, d.shape, idx, d.reshape(-1)[idx].astype(np.float64),
                            num.values, num.kinks, tol))
    order = sorted(range(len(rows)), key=lambda r: (rows[r][1], rows[r][2] != "input", r))
    for seq in (rows, kinds, picks, checks):
        seq[:] = [seq[r] for r in order]
    culprit, report.localisation = diagnose_mod.localise(checks, len(net.layers), kinds_of(net))
    if culprit is None:
        return

    def full(target: Any, g: Array) -> Array | None:
        if g.size > DIAGNOSE_MAX:
            return None
        return fd.numeric([(target, np.arange(g.size))])[0].values.reshape(g.shape)

    for r, c in enumerate(checks):
        if c.layer != culprit or c.passed or c.mode != "entries":
            continue
        key, layer, tensor, g, target = rows[r]
        numeric = full(target, g)
        if numeric is None:
            continue
        above = None
        if tensor == "input":
            above = full((layer + 1, "input"), deltas[layer + 1]) if layer + 1 < len(net.layers) else out_delta
        c.diagnosis = diagnose_mod.diagnose(g, numeric, tensor, net.layers[layer], out_delta.shape[0], above)
        report.numeric_full[key] = numeric


def numerical_faults(outputs: list[Array], kinds: list[str], loss: float, delta_x: Array,
                     grads: list[dict[str, Array]]) -> list[str]:
    """Where the forward or backward pass first produced inf or NaN, named by layer."""
    faults = []
    for i, (a, kind) in enumerate(zip(outputs, kinds)):
        if not np.all(np.isfinite(a)):
            faults.append(f"layers[{i}] {kind}: the forward pass gives inf or NaN here (overflow)")
            break
    if not np.isfinite(loss):
        faults.append(f"the loss is {loss}")
    for i, (g, kind) in enumerate(zip(grads, kinds)):
        for name, arr in g.items():
            if not np.all(np.isfinite(arr)):
                faults.append(f"layers[{i}] {kind} {name}: the analytic gradient has inf or NaN")
    if not np.all(np.isfinite(delta_x)):
        faults.append("δ input: the analytic gradient has inf or NaN")
    return faults


def kinds_of(net: Network) -> list[str]:
    return [spec.kind if spec.kind != "custom" else layer.kind for spec, layer in zip(net.specs, net.layers)]


def check(config: cfg.Config | str | dict, *, eps: float | None = None, tol: float | None = None,
          samples: int | None = None, method: str | None = None, plugins: bool = False,
          progress: Callable[[int, int], None] | None = None, workers: int | None = None,
          directions: int | None = None, fd_dtype: str | None = None, convergence: bool = False,
          localize: bool = False, avoid_kinks: bool = False, max_params: float | None = None,
          max_memory_mb: float | None = None, max_layers: int | None = None, jobs: int = 1) -> Report:
    """Check every parameter tensor and the input δ of ``config`` (a Config, a path or
    the name of a shipped config).

    ``eps``/``tol``/``samples``/``method`` default to the config's ``check:`` values (its
    ``eps`` only for its own ``method``), then to the method's step and tolerance for the
    dtype (``finite_diff.METHODS``).  ``fd_dtype``: the dtype the numeric side runs in —
    ``"float64"`` (the default; a float32 network's parameters are cast up exactly, so the
    float32 backward is compared with the exact derivative of the same function) or
    ``"native"``.  ``directions=K`` compares ``v·∇C`` along K random unit directions per
    tensor instead of every entry, and checks a failing tensor entry by entry.
    ``localize``: also check δ at every layer boundary and name the first layer whose own
    backward is wrong (done anyway when a tensor fails).  ``convergence``: difference every
    tensor again at h/2 (failing tensors always are),
    to tell a wrong gradient (the error does not shrink with h) from a step-size problem.
    ``max_params`` / ``max_memory_mb``: refuse (ConfigError) a run estimated to difference
    more entries or use more memory (default 10M entries, a quarter of the available memory,
    shared by ``jobs`` configs run at once), ``max_layers``: refuse a deeper config (1000).
    ``avoid_kinks``: draw the input again (up to MAX_REDRAWS times, from the same seed's
    stream) until no checked entry's stencil crosses a ReLU or max-pool kink.
    ``progress(done, total)`` is called as work is finished (bytes of perturbed activations,
    what the time follows; ``total`` grows as more is planned); ``workers`` processes
    share a large check (default: up to 2), with the same numbers as one."""
    if isinstance(config, dict):
        config = cfg.validate(config, plugins=plugins)
    elif not isinstance(config, cfg.Config):
        config = cfg.load(str(config), plugins=plugins)
    fd_dtype = config.dtype if fd_dtype == "native" else "float64"
    config_method = config.check.get("method", "central")
    method = method or config_method
    m = get_method(method)
    if eps is None:  # the config's step was chosen for the config's method, not for another
        eps = config.check["eps"] if "eps" in config.check and method == config_method else m.default_eps[fd_dtype]
    if tol is None:
        tol = config.check.get("tol", FLOAT32_AGAINST_FLOAT64_TOL if config.dtype != fd_dtype
                               else m.default_tol[config.dtype])
    samples = samples if samples is not None else config.check.get("samples")
    guard(config, samples, directions, max_params, max_memory_mb, method, convergence, workers, jobs, max_layers)
    how = Settings(eps, tol, samples, method, fd_dtype, directions or 0, convergence, localize, workers, progress)
    t0 = time.perf_counter()
    problem = build(config)
    report = _run(config, problem, how)
    while avoid_kinks and any(r.kinks for r in report.rows) and report.redraws < MAX_REDRAWS:
        problem.x = problem.rng.normal(0.0, 1.0, size=problem.x.shape).astype(problem.x.dtype)
        redraws = report.redraws + 1
        report = _run(config, problem, how)
        report.redraws = redraws
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class Settings:
    """How to check, every default settled (``check``'s arguments)."""

    eps: float
    tol: float
    samples: int | None
    method: str
    fd_dtype: str
    directions: int
    convergence: bool
    localize: bool
    workers: int | None
    progress: Callable[[int, int], None] | None


def _run(config: cfg.Config, problem: Problem, how: Settings) -> Report:
    """One pass of the check over a built problem: analytic side, numeric side, verdicts."""
    net, x, y = problem.net, problem.x, problem.y
    with np.errstate(all="ignore"):  # NaN/overflow becomes a failed row, not noise
        loss, deltas, grads, outputs = net.trace(x, y)
        report = Report(config.name, [], loss, how.eps, how.tol, how.method, config.dtype, config.seed,
                        problem=problem, fd_dtype=how.fd_dtype, directions=how.directions,
                        convergence=how.convergence, source=config.source or config.name,
                        digest=config.digest(), raw=config.raw,
                        faults=numerical_faults(outputs, kinds_of(net), loss, deltas[0], grads))
        rows, kinds = targets(net, deltas, grads)
        picks = [select(problem.rng, g.size, how.samples) for *_, g, _ in rows]
        numeric_side = upcast(net, x, y) if how.fd_dtype != config.dtype else (net, x, y)
        fd = FiniteDifferences(*numeric_side, how.eps, how.method, progress=how.progress, workers=how.workers)

        def entry_row(r: int, num: Any) -> TensorCheck:
            _, layer, tensor, g, _ = rows[r]
            return judge(layer, kinds[r], tensor, g.shape, picks[r], g.reshape(-1)[picks[r]].astype(np.float64),
                         num.values, num.kinks, how.tol)

        checks: list[TensorCheck | None] = [None] * len(rows)
        if how.directions:
            for r, (_, layer, tensor, g, target) in enumerate(rows):
                V = problem.rng.standard_normal((how.directions, g.size))
                V /= np.linalg.norm(V, axis=1, keepdims=True)
                num, kinks = fd.directional(target, V)
                checks[r] = judge(layer, kinds[r], tensor, g.shape, np.arange(how.directions),
                                  V @ g.reshape(-1).astype(np.float64), num, kinks, how.tol, mode="directions")
        todo = [r for r, c in enumerate(checks) if c is None or not c.passed]  # entry by entry
        try:
            numeric = fd.numeric([(rows[r][4], picks[r]) for r in todo])
        except Interrupted as stop:  # Ctrl-C: the rows finished so far travel with it
            report.rows = [entry_row(r, num) for r, num in zip(todo, stop.finished) if num is not None]
            report.interrupted = True
            stop.report = report
            raise
        for r, num in zip(todo, numeric):
            row = entry_row(r, num)
            if checks[r] is not None:
                row.note = (f"failed along {how.directions} directions (norm rel {checks[r].metrics.norm_rel:.1e}); "
                            "checked entry by entry")
            checks[r] = row
        again = [r for r, c in enumerate(checks) if c.mode == "entries" and (how.convergence or not c.passed)]
        if again:  # the same entries at h/2
            half = FiniteDifferences(*numeric_side, how.eps / 2, how.method, workers=how.workers)
            for r, num in zip(again, half.numeric([(rows[r][4], checks[r].indices) for r in again])):
                c = checks[r]
                ok = ~(c.kink_mask | num.kinks)
                c.norm_rel_half = metrics(c.analytic[ok], num.values[ok]).norm_rel
        if not get_method(how.method).is_complex:
            _confirm_failures(checks, rows, numeric_side, how)
        if how.localize or any(not c.passed for c in checks):
            _localise(report, net, deltas, net.loss.gradient(outputs[-1], y), fd, rows, kinds, picks, checks,
                      how.samples, problem.rng, how.tol)
        for (key, *_, g, _), row in zip(rows, checks):
            report.rows.append(row)
            report.analytic[key] = g
            full = np.full(g.size, np.nan)
            if row.mode == "entries":
                full[row.indices] = row.numeric
            report.numeric[key] = report.numeric_full.get(key, full.reshape(g.shape))
    return report


def save_npz(report: Report, path: str | os.PathLike) -> None:
    """Write the run with CONVENTIONS.md's keys, atomically (a temp file, then rename)."""
    p = report.problem
    arrays: dict[str, Array] = {"x": p.x, "y": p.y, "loss": np.asarray(report.loss)}
    for i, layer in enumerate(p.net.layers):
        for name, P in layer.params.items():
            arrays[f"layers.{i}.{name}"] = P
            arrays[f"grad.layers.{i}.{name}"] = report.analytic[key_of(i, name)]
            arrays[f"numgrad.layers.{i}.{name}"] = report.numeric[key_of(i, name)]
    arrays["grad.input"] = report.analytic["input"]
    arrays["numgrad.input"] = report.numeric["input"]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())
