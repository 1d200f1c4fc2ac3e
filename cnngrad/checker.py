"""Run a whole check: build the network, backpropagate, difference, compare.

``check(config) -> Report`` is the library entry point; the CLI is a thin layer on it.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import adjoint as adjoint_mod
from . import config as cfg
from . import layer_scope, resolution, structural, tolerance
from .blas import one_thread
from .blocks import Block
from .compare import TensorCheck, judge, show_tol
from .complex_probe import ComplexProbe
from .confirm import central_look, confirm_failures, extrapolated_look
from .finite_diff import FiniteDifferences, Interrupted, Numeric, get_method, select
from .finite_diff import directions as random_directions
from .localise_tree import localise_tree
from .network import Forwarded, Network, Problem, build, pure
from .output import atomic_write  # noqa: F401  re-exported: it lived here before
from .refs import TensorRef
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
    regressions: dict[tuple[int | str, str], str] = field(default_factory=dict)  # (layer, tensor) -> what grew
    baseline_note: str = ""  # e.g. the config changed since the baseline was recorded
    localisation: str = ""  # "layer 3 (conv): backward is wrong; layers 4-7 check out"
    culprit: int | str | None = None  # the layer localisation names (JSON ``localisation.layer``)
    adjoint: list[adjoint_mod.Adjoint] = field(default_factory=list)  # the dot-product test per linear layer
    redraws: int = 0  # --avoid-kinks: how many times the input was drawn again
    faults: list[str] = field(default_factory=list)  # where a pass first went non-finite (inf, NaN)
    structural: list[str] = field(default_factory=list)  # structural.check: "layers[2] X: backward changes its cache"
    interrupted: bool = False  # Ctrl-C: rows holds only the tensors finished before it
    samples: int | None = None  # entries checked per tensor (None: all), as the check was asked
    avoid_kinks: bool = False  # the input was drawn again to keep stencils off kinks
    fallbacks: list[str] = field(default_factory=list)  # where a shortcut gave way to plain passes, and why
    numeric_full: dict[str, Array] = field(default_factory=dict, repr=False)  # differenced in full to diagnose
    analytic: dict[str, Array] = field(default_factory=dict, repr=False)
    numeric: dict[str, Array] = field(default_factory=dict, repr=False)
    strict: bool = False  # --strict: an unresolved tensor fails the config too
    floor: resolution.Floor | None = field(default=None, repr=False)  # the smallest gradient the method resolves
    scope: str = "network"  # "layer": each layer alone against the δ it received (layer_scope)
    tol_rule: str = "fixed"  # "estimate": each row's tol from Ridders' estimate, at most ``tol`` (tolerance.py)

    @classmethod
    def failed_to_load(cls, source: str, message: str) -> Report:
        return cls(name=source, rows=[], loss=None, eps=None, tol=None, method="", dtype="", seed=None,
                   source=source, error=message)

    @property
    def failures(self) -> list[TensorCheck]:
        return [r for r in self.rows if r.failed]

    @property
    def unresolved(self) -> list[TensorCheck]:
        """Tensors below the resolution of the differences: neither passed nor failed."""
        return [r for r in self.rows if r.unresolved]

    @property
    def passed(self) -> bool:
        return not (self.error or self.failures or self.regressions or self.faults or self.structural
                    or (self.strict and self.unresolved) or any(a.failed for a in self.adjoint)) \
            and self.loss is not None and bool(np.isfinite(self.loss))

    @property
    def return_code(self) -> int:
        """0 every check passed, 1 a gradient check failed (or grew past its baseline; with
        --strict, or a tensor was unresolved), 2 the config could not be checked
        (CONVENTIONS.md).  An unresolved tensor alone leaves 0."""
        if self.error:
            return 2
        return 0 if self.passed else 1

    def __str__(self) -> str:
        """The summary line, then the rows that did not pass (as in the table) and what was
        found about them (localisation, diagnosis); see report.plain."""
        from .report import plain

        return plain(self)

    def assert_passed(self) -> None:
        """Raise AssertionError, with ``str(self)`` (the failing rows) as its message, unless
        the check passed (``self.passed``)."""
        if not self.passed:
            raise AssertionError(str(self))

    def write_reproducer(self, directory: str | os.PathLike) -> Path:
        """This check as a config that reproduces it, in ``directory`` (see reproducer.write)."""
        from .reproducer import write

        return write(self, directory)


# float32 networks checked against float64 differences: what is left is the float32
# backward's own rounding, ~1e-7 in norm (2e-7 the worst of 30 seeds of float32.yaml);
# real bugs stay at 1e-3 and above.
FLOAT32_AGAINST_FLOAT64_TOL = 1e-4


HIDDEN_FACTOR = 10.0  # an entry off by more than this many resolutions is not the differences' noise


def _hidden_disagreement(c: TensorCheck, floor: resolution.Floor) -> None:
    """A passing row whose norm rel hides entries that are plainly wrong — off by more than
    HIDDEN_FACTOR times the differences' resolution and by more than half their own size (a
    sign flipped on a channel a thousand times smaller than the rest) — says so in its note.
    The verdict stays norm rel's (CONVENTIONS.md); the note makes the part it cannot see
    visible (found by a QA pass: a channel at 1e-7 of the tensor with its sign flipped)."""
    if not c.passed or c.mode != "entries" or c.analytic is None or floor.value <= 0:
        return
    ok = ~c.kink_mask
    g, n = np.asarray(c.analytic, dtype=np.float64)[ok], np.asarray(c.numeric, dtype=np.float64)[ok]
    off = np.abs(g - n)
    hidden = (off > HIDDEN_FACTOR * floor.value) & (off > 0.5 * np.maximum(np.abs(g), np.abs(n)))
    if not hidden.any():
        return
    k = int(np.argmax(np.where(hidden, off, -1.0)))
    at = ", ".join(str(int(i)) for i in np.unravel_index(int(c.indices[ok][k]), c.shape))
    said = (f"passes on norm rel, yet {int(hidden.sum())} of its entries are off by more than half their size and "
            f"{HIDDEN_FACTOR:.0f}x the differences' resolution {floor.value:.0e}: analytic {g[k]:.6g} numeric "
            f"{n[k]:.6g} at [{at}] — a wrong part too small in the tensor's norm to fail it")
    c.note = "; ".join(filter(None, [c.note, said]))


def _withdraw_per_sample(layer: Any, place: str, why: str) -> str:
    """Take back a ``per_sample`` declaration that does not hold (``structural.per_sample_refuted``)
    — from a block, from its inner layers too (each shortcut of theirs stacks copies as well) —
    and the note that says so: the layer is differenced as one that couples the samples."""
    layer.per_sample = False
    for inner in (leaf for path in layer.paths for leaf in path) if isinstance(layer, Block) else ():
        if not pure(inner):
            _withdraw_per_sample(inner, place, why)
    return (f"{place} declares per_sample, but {why}: checked as coupling the samples, each perturbed copy of "
            f"the batch its own pass")


def upcast(net: Network, x: Array, y: Array) -> tuple[Network, Array, Array]:
    """A float64 copy of a float32 network (its parameters cast up exactly), x and y."""
    wide = copy.deepcopy(net)
    for layer in wide.layers:
        resolution.cast_layer(layer, np.float64)
    return wide, x.astype(np.float64), (y.astype(np.float64) if y.dtype.kind == "f" else y)


@dataclass
class Row:
    """One tensor to check: its ref (which also names its arrays: ``ref.key``), its layer's
    kind, the analytic gradient, the flat indices picked, and the verdict once judged."""

    ref: TensorRef
    kind: str
    grad: Array
    picks: Array = field(default=None, repr=False)  # type: ignore[arg-type]
    check: TensorCheck | None = None

    @property
    def verdict(self) -> TensorCheck:
        """The check, once the row has been judged."""
        if self.check is None:
            raise RuntimeError(f"{self.ref} has not been judged yet")
        return self.check

    def judge(self, numeric: Any, tol: float, indices: Array | None = None,
              floor: resolution.Floor | None = None, estimate: bool = False) -> TensorCheck:
        """This row's verdict from ``Numeric`` values at ``indices`` (default: the picks);
        ``estimate`` (``--tol estimate``): ``tol`` is the ceiling, the row's own comes from
        Ridders' estimate (``tolerance.from_estimate``)."""
        idx = self.picks if indices is None else indices
        analytic = self.grad.reshape(-1)[idx].astype(np.float64)
        errors, ok = numeric.errors, ~numeric.kinks
        note = ""
        if estimate and errors is not None and ok.any():
            ceiling = tol
            rounding = floor.rounding / resolution.MARGIN if floor is not None else 0.0
            tol, bound = tolerance.from_estimate(analytic[ok], numeric.values[ok], errors[ok], rounding, tol)
            note = (f"tol {tol:.1e} from the estimate ({tolerance.MARGIN:g}x its bound {bound:.1e}, "
                    f"at most the default {ceiling:.0e})")
        elif estimate:
            why = "every entry's stencil crossed a kink" if errors is not None else "no Ridders estimate for this row"
            note = f"{why}: the default tol {show_tol(tol)}"
        check = judge(self.ref, self.kind, self.grad.shape, idx, analytic, numeric.values, numeric.kinks, tol,
                      floor=floor)
        if errors is not None and check.checked:  # Ridders: its own error estimate, shown beside the verdict
            check.estimate = float(np.max(errors[ok]))
            size = float(np.linalg.norm(check.analytic[ok]) + np.linalg.norm(numeric.values[ok]))
            check.note = (f"Ridders error estimate: ≤ {check.estimate:.1e} per entry, "
                          f"{float(np.linalg.norm(errors[ok])) / size if size else 0.0:.1e} in norm rel")
        check.note = "; ".join(filter(None, [check.note, note]))
        return check


def targets(net: Network, deltas: list[Array], grads: list[dict[str, Array]],
            inner: dict[tuple[int, ...], Array] | None = None) -> list[Row]:
    """The rows to check, the input δ first, then layer by layer (inside a block, depth
    first; ``inner``: δ inside blocks, from ``Network.backward``).  A plugin layer also gets
    the δ at its input (``deltas[l]``)."""
    kinds = kinds_of(net)
    rows = [Row(TensorRef.delta(0), kinds[0], deltas[0])]
    plugins = {path for path, spec in walk_specs(net.specs) if spec.kind == "custom" and path != (0,)}
    by_layer: dict[int, list[tuple[tuple[int, ...], str, str]]] = {}
    for path, name, key in net.refs():
        by_layer.setdefault(path[0], []).append((path, name, key))
    for i in range(len(net.layers)):
        for path in sorted(p for p in plugins if p[0] == i and (len(p) == 1 or inner and p in inner)):
            # a plugin's backward shows in the δ it passes down
            rows.append(Row(TensorRef.delta(path), kind_at(net, path), deltas[i] if len(path) == 1 or inner is None
                            else inner[path]))
        rows += [Row(TensorRef.param(path, name), kind_at(net, path), grads[i][key])
                 for path, name, key in by_layer.get(i, [])]
    return rows


def _every_tensor(net: Network, deltas: list[Array], grads: list[dict[str, Array]],
                  inner: dict[tuple[int, ...], Array]) -> dict[TensorRef, Array]:
    """Every tensor either scope checks, by its ref: the network scope's rows, and δ at every
    layer boundary (inside blocks too) that the layer scope adds."""
    rows = layer_scope.link_rows(targets(net, deltas, grads, inner), deltas, kinds_of(net), Row, inner,
                                 lambda p: kind_at(net, p))
    return {row.ref: row.grad for row in rows}


def walk_specs(specs: list[cfg.LayerSpec]) -> list[tuple[tuple[int, ...], cfg.LayerSpec]]:
    """Every layer spec with its index path, depth-first (a block before its inner layers)."""
    out = []
    for spec in specs:
        out.append((spec.path, spec))
        for path in spec.paths:
            out += walk_specs(path)
    return out


def kind_at(net: Network, path: tuple[int, ...]) -> str:
    """The kind of the layer at index path ``path`` (a plugin's: its class name)."""
    spec = net.specs[path[0]]
    for k in range(1, len(path), 2):
        spec = spec.paths[path[k]][path[k + 1]]
    return spec.kind if spec.kind != "custom" else net.leaf(path).kind


MAX_REDRAWS = 10  # --avoid-kinks: fresh inputs tried before giving up
ALIASING = 4.0  # an entry-wise error growing this much as h halves: not rounding (2x), not truncation (1/4x)
DIAGNOSE_MAX = 200_000  # entries of a failing tensor differenced in full to diagnose it


def _received_off(report: Report, rows: list[Row], exact_links: Callable[[], Any], tol: float,
                  probe: ComplexProbe) -> None:
    """The layer blamed fails only on its parameters (its δ passes): where each of those rows,
    differenced through the layer alone at the δ it received (``⟨δ^l, ∂z^l/∂θ⟩``), agrees with its
    backward, the layer is right for the δ it was given, and that δ is off — by less than tol
    in norm (a layer above passes down δ + 1e-5·mean(δ): norm rel 3.6e-7), enough for a row
    that is ~0 in truth (a bias before a batch norm).  The blame moves to the layer above, as
    the one whose δ comes down to it (a QA pass: the right conv below was named).  The layer
    alone is differenced by the complex step (``exact_links``; central differences' rounding,
    1e-11 on a sum ~1e-5, is over tol there) — only where it is available (``probe``)."""
    culprit = report.culprit
    assert isinstance(culprit, int)
    own = [row for row in rows if len(row.ref.path) == 1 and row.ref.index == culprit]
    failing = [row for row in own if row.verdict.mismatch and row.verdict.mode == "entries"]
    if not failing or any(row.ref.is_delta for row in failing):
        return
    above = next((row for row in rows if row.ref.is_delta and row.ref.path == (culprit + 1,)), None)
    if above is None or above.verdict.mode != "entries":
        return
    if any(probe.why_not(culprit, row.ref.name) for row in failing):
        return
    with warnings.catch_warnings():  # an imaginary part dropped is no agreement
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        try:
            nums = exact_links().numeric([(row.ref, row.verdict.indices) for row in failing])
        except (TypeError, ValueError, FloatingPointError, np.exceptions.ComplexWarning):
            return
    for row, num in zip(failing, nums):
        c = row.verdict
        alone = judge(c.ref, c.kind, c.shape, c.indices, c.analytic, np.asarray(num.values, dtype=np.float64),
                      np.asarray(num.kinks, dtype=bool) | c.kink_mask, max(tol, c.tol))
        if not alone.passed:
            return
    for row in own:
        row.verdict.diagnosis = []
    names = ", ".join(f"∂C/∂{row.ref.name}" for row in failing)
    agree = "agrees" if len(failing) == 1 else "agree"
    a = above.verdict
    report.culprit = culprit + 1
    report.localisation = (
        f"layer {culprit + 1} ({a.kind}) or a layer above it: the δ it passes down is off by less than tol in norm "
        f"(norm rel {a.metrics.norm_rel:.1e} at its input), and layer {culprit} ({failing[0].verdict.kind}) below, "
        f"right for the δ it receives ({names} differenced through it alone {agree} with its backward), turns "
        f"that into {names} failing (~0 in truth, or small beside the error)")


def _localise(report: Report, net: Network, deltas: list[Array], out_delta: Array, fd: Any, rows: list[Row],
              samples: int | None, rng: np.random.Generator, tol: float,
              second_look: Callable[[list[Row]], None], inner: dict[tuple[int, ...], Array] | None = None,
              estimate: bool = False, excused: Callable[[list[Row]], None] = lambda rows: None) -> None:
    """Add δ at every inner layer boundary (``deltas``) to the rows, give them the same second
    look and rounding excuse (``excused``) as every other row (h/2, the complex step: a δ row
    failing only from truncation must not blame its layer; nor one of a float32 norm failing only
    from its own rounding), name the first layer whose own backward is wrong, and test that layer's
    failing tensors against the usual bugs (``out_delta``: ∂C/∂ the last layer's output).  With
    blocks (``inner``: δ inside them) localisation walks the tree."""
    from . import diagnose as diagnose_mod  # only a failing check gets here: imported then (start-up)
    have = {row.ref for row in rows}
    kinds = kinds_of(net)
    extra = [Row(TensorRef.delta(l), kinds[l], deltas[l]) for l in range(1, len(net.layers))
             if TensorRef.delta(l) not in have]
    extra += [Row(TensorRef.delta(path), kind_at(net, path), d) for path, d in sorted((inner or {}).items())
              if TensorRef.delta(path) not in have]  # δ at every boundary inside blocks
    for row in extra:
        row.picks = select(rng, row.grad.size, samples)
    for row, num in zip(extra, fd.numeric([(row.ref, row.picks) for row in extra])):
        row.check = row.judge(num, tol, floor=report.floor, estimate=estimate)
    second_look(extra)
    excused(extra)
    rows += extra
    # layer by layer, δ first; the sort is stable, so the order within a layer stays
    rows.sort(key=lambda row: (row.ref.path, not row.ref.is_delta))
    if inner:  # a tree: walk it
        culprit, report.localisation = localise_tree([row.verdict for row in rows], net.specs,
                                                     lambda path: kind_at(net, path))
    else:
        culprit, report.localisation = diagnose_mod.localise([row.verdict for row in rows], len(net.layers), kinds)
    report.culprit = culprit
    if culprit is None:
        return

    def full(ref: TensorRef, g: Array, c: TensorCheck) -> Array | None:
        """The whole tensor's numeric gradient: the complex step's, where it confirmed the row
        on every entry (exact: a factor of 2 reads 2, not 1.93 from differences at their
        resolution), else the differences'."""
        if c.confirmed is not None and c.indices is not None and c.indices.size == g.size:
            exact = np.empty(g.size)
            exact[c.indices] = np.real(c.confirmed)
            return exact.reshape(g.shape)
        if g.size > DIAGNOSE_MAX:
            return None
        return fd.numeric([(ref, np.arange(g.size))])[0].values.reshape(g.shape)

    for row in rows:
        c = row.verdict
        if c.layer != culprit or not c.mismatch or c.mode != "entries":
            continue
        numeric = full(row.ref, row.grad, c)
        if numeric is None:
            continue
        if isinstance(culprit, int):
            above = deltas[culprit + 1] if culprit + 1 < len(net.layers) else out_delta
            c.diagnosis = diagnose_mod.diagnose(row.grad, numeric, row.ref, fd.net.layers[culprit], out_delta.shape[0],
                                                delta_out=above, a_prev=fd.inputs[culprit], tol=c.tol)
        else:  # inside a block: the layer's own geometry, no neighbouring δ
            c.diagnosis = diagnose_mod.diagnose(row.grad, numeric, row.ref, net.leaf(row.ref.path),
                                                out_delta.shape[0], tol=c.tol)
        report.numeric_full[row.ref.key] = numeric


MORE_DRAWS = 3  # --samples: rounds of fresh entries for a tensor whose every sampled stencil crossed a kink


def _more_entries(rows: list[Row], fd: Any, rng: np.random.Generator, tol: float, floor: resolution.Floor,
                  estimate: bool) -> None:
    """``--samples``: a tensor whose sampled entries all crossed a kink had nothing compared
    (a FAIL: nothing checked is no pass).  Before that, twice as many fresh entries of it are
    differenced, up to MORE_DRAWS rounds, from the seed's own stream (same seed, same draws);
    it fails only if none of them can be compared either, or none are left."""
    for _ in range(MORE_DRAWS):
        todo = [row for row in rows if row.verdict.mode == "entries" and row.verdict.checked == 0
                and row.verdict.kinks > 0 and row.picks.size < row.grad.size]
        if not todo:
            return
        fresh = []
        for row in todo:
            rest = np.setdiff1d(np.arange(row.grad.size), row.picks)
            fresh.append(np.sort(rng.choice(rest, size=min(rest.size, 2 * row.picks.size), replace=False)))
        for row, new, num in zip(todo, fresh, fd.numeric([(row.ref, p) for row, p in zip(todo, fresh)])):
            old, first = row.verdict, row.picks.size
            picks = np.concatenate([row.picks, new])
            order = np.argsort(picks, kind="stable")
            errors = None if num.errors is None else np.concatenate([np.zeros(first), num.errors])[order]
            row.picks = picks[order]
            row.check = row.judge(Numeric(row.picks, np.concatenate([old.numeric, num.values])[order],
                                          np.concatenate([old.kink_mask, num.kinks])[order], errors),
                                  tol, floor=floor, estimate=estimate)
            row.check.note = "; ".join(filter(None, [row.check.note, (
                f"every one of the {first} sampled entries crossed a kink: {new.size} more drawn")]))


def _rounding_excused(checks: list[tuple[TensorRef, TensorCheck]], net: Network, traced_wide: Callable[[], Any],
                      reason_of: Callable[[TensorCheck, Array, bool], str],
                      own: Callable[[list[TensorRef]], dict[TensorRef, Array]] = lambda refs: {}) -> None:
    """Failing checks (each of the tensor ``ref`` names) whose mismatch is the backward's own
    rounding become unresolved, with the reason: not a failure, and never a pass.
    ``reason_of(check, wide, alone)`` says why (or "") from the tensor's gradient in the same
    backward run in longdouble: ``precision_bound`` for a float32 network, ``at_rounding`` for a
    float64 one (``resolution``) — through the whole network, or, for a check of one layer alone
    (``alone``: the layer scope's, ``own(refs)``), that layer's own backward on the δ it received.
    Else a row the complex step alone failed, whose longdouble run agrees or sees ~0, is at the
    complex step's own rounding (``TensorCheck.complex_rounding``)."""
    failing = [(ref, c) for ref, c in checks if c.mismatch]
    wide = traced_wide() if failing else None  # (δs, gradients, inner δs) in longdouble, or None
    if wide is None:
        return
    wide_rows, alone = _every_tensor(net, *wide), own([ref for ref, _ in failing])
    for ref, c in failing:
        w = alone.get(ref, wide_rows.get(ref))
        reason = (reason_of(c, w, ref in alone) if w is not None else "") or c.complex_rounding
        if reason:
            c.status, c.reason = "unresolved", reason
            c.note = "; ".join(part.replace(" and disagrees", "") for part in c.note.split("; ")
                               if not part.startswith("the complex step confirms"))


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


def check(config: cfg.Config | str | dict, *, eps: float | None = None, tol: float | str | None = None,
          samples: int | None = None, method: str | None = None, plugins: bool = False,
          progress: Callable[[int, int], None] | None = None, workers: int | None = None,
          directions: int | None = None, fd_dtype: str | None = None, convergence: bool = False,
          localize: bool = False, avoid_kinks: bool = False, max_params: float | None = None,
          max_memory_mb: float | None = None, strict: bool = False, scope: str = "network",
          max_layers: int | None = None, jobs: int = 1) -> Report:
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
    ``tol="estimate"`` (method ``ridders`` only): each tensor's tolerance comes from Ridders'
    error estimate, never above the default (``tolerance.from_estimate``).
    ``max_params`` / ``max_memory_mb``: refuse (ConfigError) a run estimated to difference
    more entries or use more memory (default 10M entries, a quarter of the available memory,
    shared by ``jobs`` configs run at once), ``max_layers``: refuse a deeper config (1000).
    ``avoid_kinks``: draw the input again (up to MAX_REDRAWS times, from the same seed's
    stream) until no checked entry's stencil crosses a ReLU or max-pool kink.
    ``progress(done, total)`` is called as work is finished (bytes of perturbed activations,
    what the time follows; ``total`` grows as more is planned); ``workers`` processes
    share a large check (default: every core this process may use), with the same numbers
    as one (bit for bit).
    ``strict``: an unresolved tensor (below the resolution of the differences) fails the
    config too.  ``scope``: ``"network"`` differences C end to end for every entry;
    ``"layer"`` differences each layer alone, contracted with the δ its backward received,
    plus a short end-to-end check (``layer_scope``; README "Scopes").
    The complex step (``method="complex"``) needs every layer to carry an
    imaginary part (``complex_probe``): else ConfigError "complex step not available for
    layer i (Class)"."""
    given = cfg.check_options({"eps": eps, "tol": tol, "samples": samples, "method": method, "plugins": plugins,
                               "workers": workers, "directions": directions, "fd_dtype": fd_dtype,
                               "convergence": convergence, "localize": localize, "avoid_kinks": avoid_kinks,
                               "max_params": max_params, "max_memory_mb": max_memory_mb, "strict": strict,
                               "scope": scope, "max_layers": max_layers, "jobs": jobs})
    eps, tol, samples, method, directions = (given[k] for k in ("eps", "tol", "samples", "method", "directions"))
    if isinstance(config, dict):
        config = cfg.validate(config, plugins=plugins)
    elif not isinstance(config, cfg.Config):
        config = cfg.load(str(config), plugins=plugins)
    fd_dtype = config.dtype if (fd_dtype or config.check.get("fd_dtype")) == "native" else "float64"
    directions = directions if directions is not None else config.check.get("directions")
    avoid_kinks = avoid_kinks or config.check.get("avoid_kinks", False)
    config_method = config.check.get("method", "central")
    method = method or config_method
    m = get_method(method)
    if eps is None:  # the config's step was chosen for the config's method, not for another
        eps = config.check["eps"] if "eps" in config.check and method == config_method else m.default_eps[fd_dtype]
    configured = config.check.get("tol")  # a number, or "estimate"
    tol_rule = "estimate" if tol == "estimate" or (tol is None and configured == "estimate") else "fixed"
    if tol_rule == "estimate":
        said = "--tol estimate" if tol == "estimate" else "check.tol: estimate"
        tol = None
        if m.tableau is None:  # said as it was asked: a config's keys for a config's tol
            needs = "--method ridders" + ("" if said.startswith("--") else " or check.method: ridders")
            raise cfg.ConfigError(f"{said} needs {needs} (the only method with an error estimate "
                                  f"per entry), not {method}")
        if directions:
            raise cfg.ConfigError(f"{said}: the estimate is per entry; drop --directions")
    if tol is None:
        tol = configured if isinstance(configured, float) else \
            FLOAT32_AGAINST_FLOAT64_TOL if config.dtype != fd_dtype else m.default_tol[config.dtype]
    samples = samples if samples is not None else config.check.get("samples")
    guard(config, samples, directions, max_params, max_memory_mb, method, convergence, workers, jobs, max_layers)
    if scope not in layer_scope.SCOPES:
        raise cfg.ConfigError(f"scope: unknown scope {scope!r}; known: {', '.join(layer_scope.SCOPES)}")
    how = Settings(eps, float(tol), samples, method, fd_dtype, directions or 0, convergence, localize, workers,
                   progress, scope, tol_rule)
    t0 = time.perf_counter()
    problem = build(config)
    if m.is_complex:
        net, x, _ = upcast(problem.net, problem.x, problem.y) if fd_dtype != config.dtype else \
            (problem.net, problem.x, problem.y)
        why = ComplexProbe(net, x).network()
        if why:
            raise cfg.ConfigError(f"method {method}: {why}; use --method central or richardson")
    # one BLAS thread throughout: a check's matmuls are small, and threads that wait for each
    # other on a busy machine made a LeNet-sized forward pass 20x slower; the analytic side
    # is then the same bit for bit whatever the machine's load or core count
    with warnings.catch_warnings(), one_thread():
        if m.is_complex:  # a layer that drops Im after all (a false complex_safe): a plugin error, exit 2
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
        report = _run(config, problem, how)
        while avoid_kinks and any(r.kinks for r in report.rows) and report.redraws < MAX_REDRAWS:
            problem.x = problem.rng.normal(0.0, 1.0, size=problem.x.shape).astype(problem.x.dtype)
            redraws = report.redraws + 1
            report = _run(config, problem, how)
            report.redraws = redraws
    report.seconds = time.perf_counter() - t0
    report.samples, report.avoid_kinks = samples, avoid_kinks
    report.strict = strict
    report.scope = scope
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
    scope: str = "network"  # or "layer": each layer alone against the δ it received (layer_scope)
    tol_rule: str = "fixed"  # or "estimate": each row's tol from Ridders' estimate, at most ``tol``


def _run(config: cfg.Config, problem: Problem, how: Settings) -> Report:
    """One pass of the check over a built problem: analytic side, numeric side, verdicts."""
    net, x, y = problem.net, problem.x, problem.y
    with np.errstate(all="ignore"):  # NaN/overflow becomes a failed row, not noise
        # first, layer by layer from x: the structural checks of the user's layers, and every
        # built-in layer's forward (trusted: the tests prove them sound), which the trace and the
        # differences' unperturbed pass then take; a float64 net's adjoint test takes its first
        # probe (and its chain) from these calls
        visits: list[structural.Visit | None] = []
        refuted: list[tuple[int, str]] = []
        broken = structural.check(net.layers, x, kinds_of(net), config.seed,
                                  keep=adjoint_mod.is_linear if config.dtype == "float64" else None, visits=visits,
                                  trusted=pure, refuted=refuted)
        withdrawn = [_withdraw_per_sample(net.layers[i], f"layers[{i}] {kinds_of(net)[i]}", why) for i, why in refuted]
        withdrawn += [f"layers[{i}] {kinds_of(net)[i]}: backward returns {v.narrow} in a {config.dtype} network: "
                      f"those gradients carry the narrower float's rounding, which the check's tol may not see"
                      for i, v in enumerate(visits) if v is not None and v.narrow]
        if config.dtype == "float64":
            adjoint_tests = adjoint_mod.check_network(net.layers, x, kinds_of(net), config.seed, visits, withdrawn)
        inner: dict[tuple[int, ...], Array] = {}  # δ at the boundaries inside blocks
        passes: list[Forwarded] = []  # the unperturbed pass, for the numeric side too
        loss, deltas, grads, outputs = net.trace(x, y, inner, given=_handed_over(net.layers, visits), passes=passes)
        del visits  # the probes go; the caches live on in passes
        report = Report(config.name, [], loss, how.eps, how.tol, how.method, config.dtype, config.seed,
                        problem=problem, fd_dtype=how.fd_dtype, directions=how.directions,
                        convergence=how.convergence, source=config.source or config.name,
                        digest=config.digest(), raw=config.raw,
                        faults=numerical_faults(outputs, kinds_of(net), loss, deltas[0], grads), structural=broken,
                        tol_rule=how.tol_rule)
        if config.dtype != "float64":  # the test in float64, on a copy
            wide = upcast(net, x, y)
            adjoint_tests = adjoint_mod.check_network(wide[0].layers, wide[1], kinds_of(net), config.seed,
                                                      notes=withdrawn)
        report.adjoint = adjoint_tests
        is_complex = get_method(how.method).is_complex
        # the complex step at a step of the user's (--eps 1e-4) carries truncation, O(h²): its failures
        # get the second look at the method's own step, as every other method's do; at that step, none
        second_step = not is_complex or how.eps > get_method("complex").default_eps[how.fd_dtype]
        biggest = resolution.largest(deltas + [g for grad in grads for g in grad.values()])
        # the same backward in longdouble, traced only if a failing row needs it (a longdouble pass:
        # the largest fixed cost of a small check): for the floor, and for a float32 row's rounding
        traced_wide = resolution.lazily(lambda: resolution.wide_trace(net, x, y))
        measured = resolution.lazily(lambda: resolution.measured_rounding(net, x, y, deltas, grads, traced_wide()))

        own_runs: dict[tuple[str, tuple[int, ...]], dict[TensorRef, Array]] = {}
        links: layer_scope.LinkDifferences | None = None  # the layer scope's: each layer alone

        def own(dtype: Any, refs: list[TensorRef]) -> dict[TensorRef, Array]:
            """The layer scope's rows of the layers ``refs`` name (top level or inside a block), as
            each layer's own backward gives them in ``dtype`` on the δ it received (what those rows
            are differences of); run once a layer, and only for rows that need it (failing ones)."""
            if links is None or dtype == np.longdouble and not resolution.longdouble_is_wider():
                return {}
            out: dict[TensorRef, Array] = {}
            for path in sorted({ref.path for ref in refs}):
                key = (np.dtype(dtype).name, path)
                if key not in own_runs:
                    # at the activations the layer scope differenced it at: the numeric side's (float64 for
                    # a float32 net), with the δ its backward received
                    own_runs[key] = layer_scope.own_backward(links.links, path, dtype)
                out.update(own_runs[key])
            return out

        def floor_of(method: str, complex_step: bool, eps: float | None = None) -> resolution.Floor:
            return resolution.floor(method, complex_step, how.eps if eps is None else eps, how.fd_dtype, loss,
                                    outputs[-1], y, config.dtype, biggest, measured)

        report.floor = floor_of(how.method, is_complex)

        def central_floor() -> resolution.Floor:
            """The resolution of central differences at their default step (``central_look``)."""
            return floor_of("central", False, get_method("central").default_eps[how.fd_dtype])
        rows = targets(net, deltas, grads, inner)
        network_refs = {row.ref for row in rows}
        if how.scope == "layer":  # every layer's input δ too
            rows = layer_scope.link_rows(rows, deltas, kinds_of(net), Row, inner, lambda p: kind_at(net, p))
        for row in rows:
            row.picks = select(problem.rng, row.grad.size, how.samples)
        numeric_side = upcast(net, x, y) if how.fd_dtype != config.dtype else (net, x, y)
        fd = FiniteDifferences(*numeric_side, how.eps, how.method, progress=how.progress, workers=how.workers,
                               base=passes if numeric_side[0] is net else None)
        del passes
        whole = fd  # the network end to end (the layer scope's end-to-end check)
        received = layer_scope.received_deltas(deltas, net.loss.gradient(outputs[-1], y))
        if how.scope == "layer":
            fd = links = layer_scope.LinkDifferences(fd, received, inner)  # type: ignore[assignment]
        if how.directions:
            for row in rows:
                g = row.grad
                V = random_directions(problem.rng, how.directions, g.size)
                along, kinks = fd.directional(row.ref, V)
                row.check = judge(row.ref, row.kind, g.shape, np.arange(how.directions),
                                  V @ g.reshape(-1).astype(np.float64, copy=False), along, kinks, how.tol,
                                  mode="directions", floor=report.floor)
        todo = [row for row in rows if row.check is None or not row.check.passed]  # entry by entry
        try:
            numeric = fd.numeric([(row.ref, row.picks) for row in todo])
        except Interrupted as stop:  # Ctrl-C: the rows finished so far travel with it
            report.rows = [row.judge(num, how.tol, floor=report.floor, estimate=how.tol_rule == "estimate")
                           for row, num in zip(todo, stop.finished) if num is not None]
            report.interrupted = True
            stop.report = report  # type: ignore[attr-defined]
            raise
        conflicted: list[TensorCheck] = []  # failed along directions, passed entry by entry
        for row, num in zip(todo, numeric):
            check = row.judge(num, how.tol, floor=report.floor, estimate=how.tol_rule == "estimate")
            if row.check is not None:
                check.note = (f"failed along {how.directions} directions "
                              f"(norm rel {row.check.metrics.norm_rel:.1e}); checked entry by entry")
                if check.passed and row.check.failed:
                    conflicted.append(check)
            row.check = check
        _more_entries(rows, fd, problem.rng, how.tol, report.floor, how.tol_rule == "estimate")

        def at_step(step: float, links_of: bool, checks: list[TensorCheck]) -> list[Numeric]:
            """The checks' entries differenced at ``step`` by the check's method: of each layer alone
            (``links_of``: the layer scope's rows), or of the network end to end."""
            d: Any = FiniteDifferences(*numeric_side, step, how.method, workers=how.workers)
            if links_of:
                d = layer_scope.LinkDifferences(d, received, inner)
            return d.numeric([(c.ref, c.indices) for c in checks])

        def halve(checks: list[TensorCheck], links_of: bool) -> None:
            """The convergence look: the same entries at h/2 (kept for ``extrapolated_look``)."""
            for c, num in zip(checks, at_step(how.eps / 2, links_of, checks)):
                c.keep_half(num)

        def aliasing_look(checks: list[TensorCheck], links_of: bool) -> None:
            """Rows that failed along random directions and passed entry by entry, differenced
            entry by entry at h/2 too: a backward that is the difference quotient at the check's
            own step (a wiggle sin(ωa) at ωh = π dropped, or scaled by sinc(ωh): a QA pass) agrees
            with every entry at h — directions move each entry by another amount and do not alias.
            Failing at h/2 by at least ALIASING times the error at h (rounding doubles it, truncation
            quarters it) fails the row, saying why; otherwise it stands, with the figure."""
            for c, num in zip(checks, at_step(how.eps / 2, links_of, checks)):
                half = c.norm_rel_of(num)
                if not half <= max(c.tol, ALIASING * c.metrics.norm_rel):
                    c.status = "fail"
                    c.note = (f"{c.note}; entry by entry it passes at h (norm rel {c.metrics.norm_rel:.1e}) but not "
                              f"at h/2 ({half:.1e}): a backward that agrees with the differences at this one step "
                              f"only, as the directions said")
                else:
                    c.note = f"{c.note}; at h/2 too (norm rel {half:.1e})"

        if conflicted:
            aliasing_look(conflicted, how.scope == "layer")

        def second_look(among: list[Row]) -> None:
            """Failing rows (every row with --convergence) again at h/2, then with the complex
            step, which has no rounding floor (``confirm``)."""
            again = [row for row in among if row.verdict.mode == "entries"
                     and (how.convergence or row.verdict.mismatch)]
            if again:  # the same entries at h/2
                halve([row.verdict for row in again], how.scope == "layer")
            if second_step:
                # the layer scope's rows are each layer alone, contracted with the δ it received — inside
                # a block too: so is their second look.  Through the network instead, a correct layer
                # below a wrong one was "confirmed" failing: the complex step of the network is the true
                # gradient, and the layer's backward was handed a wrong δ
                wrap = (lambda f: layer_scope.LinkDifferences(f, received, inner)) if how.scope == "layer" else None
                exact = floor_of("complex", True)
                groups: list[tuple[resolution.Floor, list[Row]]] = [(exact, [])]
                for row in among:
                    own_floor = link_floor(row, exact)
                    if own_floor is exact:
                        groups[0][1].append(row)
                    else:
                        groups.append((own_floor, [row]))
                for floor, part in groups:
                    if not part:
                        continue
                    checks = [row.verdict for row in part]
                    confirm_failures(checks, [row.ref for row in part], numeric_side, how.method, how.tol,
                                     how.fd_dtype, how.workers, floor, wrap=wrap)
                    for row, check in zip(part, checks):
                        row.check = check
                # where the complex step was not available: central differences at their own step
                checks = [row.verdict for row in among]
                central_look(checks, [row.ref for row in among], numeric_side, how.method, how.eps, how.tol,
                             how.fd_dtype, how.workers, central_floor(), wrap=wrap)
                for row, check in zip(among, checks):
                    row.check = check
            # still failing, with the error falling as the order says: the differences, extrapolated
            checks = [row.verdict for row in among]
            extrapolated_look(checks, how.method, how.fd_dtype, floor_of(how.method, is_complex, how.eps / 2),
                              lambda cs: at_step(2 * how.eps, how.scope == "layer", cs))
            for row, check in zip(among, checks):
                row.check = check

        term_sizes: dict[tuple[TensorRef, bytes], float | None] = {}

        def term_size(c: TensorCheck) -> float | None:
            """The largest size of the terms a layer-scope row's contraction sums at its compared
            entries (``layer_scope.contraction_size``: a pass of the layer an entry), once a row;
            None outside the layer scope or for a block's input row."""
            entries = c.indices[~c.kink_mask]
            key = (c.ref, entries.tobytes())
            if key not in term_sizes:
                size = None if links is None else layer_scope.contraction_size(links, c.ref, entries)
                term_sizes[key] = None if size is None or size.size == 0 else float(np.max(size))
            return term_sizes[key]

        def link_floor(row: Row, exact: resolution.Floor) -> resolution.Floor:
            """A layer-scope row's resolution, for the complex step of its layer alone: its
            contraction ``⟨δ, ∂z/∂θ_j⟩`` is a sum, off by ~ε of the size of its terms S_j from
            rounding (``layer_scope.contraction_size``) — the analytic gradient, the same sum,
            too.  Taken for a tiny row only (at most √ε of the network's largest gradient: the
            only kind whose sum can cancel below its rounding); ``exact`` where it is finer."""
            c = row.verdict
            if links is None or c.mode != "entries" or not (c.mismatch or c.unresolved):
                return exact
            unit = float(np.finfo(numeric_side[1].dtype).eps)
            if float(np.max(np.abs(c.analytic), initial=0.0)) > np.sqrt(unit) * biggest:
                return exact
            size = term_size(c)
            if size is None:
                return exact
            value = resolution.MARGIN * unit * size
            if not value > exact.value:
                return exact
            return dataclasses.replace(exact, value=value, method="the complex step of the layer alone (ε of the "
                                                                     "terms its contraction with δ sums)")

        second_look(rows)
        if config.dtype != "float64":
            trust = resolution.rounding_trust(deltas, grads, loss, outputs[-1], y)

            def same_in_float64() -> dict[TensorRef, tuple[Array, float]]:
                """Every row's gradient from the same backward run in float64, and how far float64's
                rounding may take it (``rounding_trust``: √ε·G, or 10·ε·S for a saturated loss)."""
                net64, x64, y64 = upcast(net, x, y)
                inner64: dict[tuple[int, ...], Array] = {}
                loss64, d64, g64, out64 = net64.trace(x64, y64, inner64)
                bound = resolution.rounding_trust(d64, g64, loss64, out64[-1], y64)
                return {ref: (g, bound) for ref, g in _every_tensor(net64, d64, g64, inner64).items()}
            float64_rows = resolution.lazily(same_in_float64)

            def excuse(c: TensorCheck, w: Array, alone: bool) -> str:
                at64 = float64_rows().get(c.ref)
                if alone:  # a layer alone: its own backward in float64 (the same bound)
                    own64 = own(np.float64, [c.ref]).get(c.ref)
                    at64 = None if own64 is None or at64 is None else (own64, at64[1])
                return resolution.precision_bound(c, w, c.tol, trust, config.dtype, at64)
        else:
            # √ε·G, or K·ε·S for a saturated loss: p − y, with p = 1 − 6e-12, loses ε of 1 (rounding_trust);
            # taken only where a row fails
            trusted = resolution.lazily(lambda: resolution.rounding_trust(deltas, grads, loss, outputs[-1], y))

            def excuse(c: TensorCheck, w: Array, alone: bool) -> str:
                return resolution.at_rounding(c, w, trusted(), (lambda: term_size(c) or 0.0) if alone else None)

        def excused(among: list[Row]) -> None:
            _rounding_excused([(row.ref, row.verdict) for row in among], net, traced_wide, excuse,
                              lambda refs: own(np.longdouble, refs))

        excused(rows)
        for row in rows:  # a non-finite analytic entry the samples left out: still this row's failure
            bad = np.flatnonzero(~np.isfinite(np.asarray(row.grad)).reshape(-1))
            if bad.size and not row.verdict.failed:
                where = ", ".join(str(int(i)) for i in np.unravel_index(bad[0], np.shape(row.grad)))
                row.verdict.status = "fail"
                row.verdict.reason = (f"the analytic gradient has inf or NaN ({bad.size} entries, the first at "
                                      f"[{where}]), not among the entries checked")
        if how.scope == "network" and config.dtype == "float64":
            for row in rows:
                _hidden_disagreement(row.verdict, report.floor)
        overflow = next((f for f in report.faults if "forward pass" in f or f.startswith("the loss")), None)
        if overflow is not None and any(not row.verdict.passed for row in rows):
            # no backward can be judged where the forward's numbers are not finite: the fault is the finding
            report.localisation = (f"not localised: {overflow} — where the forward's numbers overflow no backward "
                                   f"can be judged (smaller weights or inputs; see the numerical faults)")
        elif how.localize or any(row.verdict.mismatch for row in rows):
            _localise(report, net, deltas, net.loss.gradient(outputs[-1], y), fd, rows, how.samples, problem.rng,
                      how.tol, second_look, inner, how.tol_rule == "estimate", excused)
        if how.scope == "network" and isinstance(report.culprit, int):
            # a δ row above the culprit that checked out only where no stencil crossed a kink (tied
            # maxima above it) may hide the wrong layer: that layer alone, at those entries, says
            above = [row.verdict for row in rows if row.ref.is_delta and len(row.ref.path) == 1
                     and row.ref.index > report.culprit and (row.verdict.passed or row.verdict.checked == 0)]
            unexamined: list[TensorCheck] = []
            found = layer_scope.kinked_link(layer_scope.LinkDifferences(whole, received, inner), above, how.tol,
                                            "its δ checked out where no stencil crosses a kink, and the layers below "
                                            "it fail for the δ it passes down", unexamined)
            if found is not None:
                for row in rows:  # what was diagnosed of the layer blamed before goes with the blame
                    if row.verdict.layer == report.culprit:
                        row.verdict.diagnosis = []
                report.culprit, report.localisation = found
            elif unexamined:  # a layer above whose δ at its kinks nothing could check: it may be the one
                c = min(unexamined, key=lambda c: c.ref.path)
                seen = (f"its δ checked out only where no stencil crosses a kink ({c.kinks} entries left out), and "
                        f"there it crosses one even alone" if c.checked else
                        f"no entry of its δ could be checked (all {c.kinks} on kinks), and it crosses them even alone")
                report.localisation = (f"{report.localisation.split('; ')[0]} — or layer {c.ref.layer} ({c.kind}) "
                                       f"above it is: {seen} (it offers no piece to hold it on), so its backward at "
                                       f"its kinks is unchecked")
        if how.scope == "network" and isinstance(report.culprit, int):
            _received_off(report, rows, lambda: layer_scope.LinkDifferences(
                FiniteDifferences(*numeric_side, get_method("complex").default_eps[how.fd_dtype], "complex",
                                  workers=how.workers), received, inner), how.tol, ComplexProbe(*numeric_side[:2]))
        if not report.localisation:  # only the dot-product test saw it: it names its layer
            report.culprit, report.localisation = adjoint_mod.localise(report.adjoint)
        if how.scope == "layer":
            layer_scope.kinks_only([row.verdict for row in rows], network_refs)
        report.fallbacks = withdrawn + [note for note in fd.fast_fallbacks  # the reason, not "does not declare"
                                        if not any(note.startswith(f"layers[{i}] ") for i, _ in refuted)]
        for row in rows:
            check, g, key = row.verdict, row.grad, row.ref.key
            report.rows.append(check)
            report.analytic[key] = g
            report.numeric[key] = report.numeric_full.get(key, _numeric_of(check, g))
        if how.scope == "layer":  # the links tied together: ∂C/∂x through the whole network
            e2e = layer_scope.end_to_end(whole, deltas[0], kinds_of(net)[0], problem.rng, how.tol, report.floor,
                                         next(row.picks for row in rows if row.ref == TensorRef.delta(0)))
            if e2e.passed and e2e.mode == "entries":  # failed along its directions, passed entry by entry
                aliasing_look([e2e], False)
            if second_step:  # the same second look (complex step) as every network-scope row
                checks = [e2e]
                confirm_failures(checks, [TensorRef.delta(0)], numeric_side, how.method, how.tol, how.fd_dtype,
                                 how.workers, floor_of("complex", True))
                central_look(checks, [TensorRef.delta(0)], numeric_side, how.method, how.eps, how.tol, how.fd_dtype,
                             how.workers, central_floor())
                if checks[0].mismatch and checks[0].mode == "entries" and checks[0].confirmed is None:
                    # ∂C/∂x end to end as the network scope's row: halved, and extrapolated where that says truncation
                    halve(checks, False)
                    extrapolated_look(checks, how.method, how.fd_dtype, floor_of(how.method, is_complex, how.eps / 2),
                                      lambda cs: at_step(2 * how.eps, False, cs))
                e2e = layer_scope.as_end_to_end(checks[0], e2e)
            _rounding_excused([(TensorRef.delta(0), e2e)], net, traced_wide, excuse)  # as ∂C/∂x's own row
            report.rows.append(e2e)
            if e2e.mismatch and not report.localisation:
                assert links is not None
                _sampled_links(report, rows, links, how, excused)  # may name a link sampled along directions
                if not report.localisation:
                    unchecked: list[TensorCheck] = []
                    report.culprit, report.localisation = layer_scope.kinked_link(
                        links, [row.verdict for row in rows], how.tol,
                        "every link checks out where no stencil crosses a kink, and ∂C/∂x end to end does not",
                        unchecked) or (None, layer_scope.wiring(unchecked))
    return report


def _numeric_of(check: TensorCheck, g: Array) -> Array:
    """A row's numeric gradient in g's shape: its entries where it was checked entry by entry,
    NaN elsewhere (and everywhere for a row checked along directions)."""
    full = np.full(g.size, np.nan)
    if check.mode == "entries":
        full[check.indices] = check.numeric
    return full.reshape(g.shape)


def _sampled_links(report: Report, rows: list[Row], links: Any, how: Settings,
                   excused: Callable[[list[Row]], None]) -> None:
    """∂C/∂x end to end failed and no link did, where some links passed along random directions
    only: a sample, which misses a wrong gradient now and then (README, *Directions are a
    sample*: one wrong δ entry of a global max pool passed its one direction, and the wiring was
    blamed).  Those links are checked entry by entry before the wiring is: the first that fails
    there is named (its row replaced; float32 rounding excused as for any row)."""
    sampled = [row for row in rows if row.verdict.mode == "directions"]
    if not sampled:
        return
    for row, num in zip(sampled, links.numeric([(row.ref, row.picks) for row in sampled])):
        check = row.judge(num, how.tol, floor=report.floor)
        check.note = (f"passed along {how.directions} directions (norm rel {row.verdict.metrics.norm_rel:.1e}), but "
                      f"∂C/∂x end to end failed and no link did: checked entry by entry")
        report.rows[next(i for i, c in enumerate(report.rows) if c is row.verdict)] = check
        report.numeric[row.ref.key] = _numeric_of(check, row.grad)
        row.check = check
    excused(sampled)
    bad = [row.verdict for row in sampled if row.verdict.mismatch]
    if bad:
        c = bad[0]
        report.culprit = c.ref.json_layer
        report.localisation = (f"layer {c.ref.json_layer} ({c.kind}): its backward is not the derivative of its own "
                               f"forward — {c.ref} fails entry by entry (norm rel {c.metrics.norm_rel:.1e} > tol "
                               f"{show_tol(c.tol)}), though it passed along {how.directions} random directions; "
                               f"∂C/∂x end to end fails too")


def _handed_over(layers: list[Any], visits: list[structural.Visit | None]) -> list[Forwarded]:
    """The structural checks' first forward of each layer, from the first layer on, for as
    long as each layer is ``pure`` and passed every check (so a second call would give the
    same output and cache): the trace takes them instead of calling forward again."""
    given: list[Forwarded] = []
    for layer, visit in zip(layers, visits):
        if visit is None or not visit.clean or not pure(layer):
            break
        given.append(Forwarded(visit.out, visit.cache))
    return given


def save_npz(report: Report, path: str | os.PathLike) -> None:
    """Write the run with CONVENTIONS.md's keys, atomically (a temp file, then rename)."""
    p = report.problem
    assert p is not None, "a report without its problem (a config that failed to load) has nothing to save"
    arrays: dict[str, Array] = {"x": p.x, "y": p.y, "loss": np.asarray(report.loss)}
    for where, name, own in p.net.refs():
        key = TensorRef.param(where, name).key  # layers.{i}.{name}, inside a block layers.3.1.0.W
        arrays[key] = p.net.layers[where[0]].params[own]
        arrays[f"grad.{key}"] = report.analytic[key]
        arrays[f"numgrad.{key}"] = report.numeric[key]
    for at, _ in walk_specs(p.net.specs):  # buffers: not checked, saved (layers.{path}.{buffer})
        for name, B in getattr(p.net.leaf(at), "buffers", {}).items():
            arrays[TensorRef.param(at, name).key] = B
    x_key = TensorRef.delta(0).key  # "input": ∂C/∂x
    arrays[f"grad.{x_key}"] = report.analytic[x_key]
    arrays[f"numgrad.{x_key}"] = report.numeric[x_key]
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write(path, buf.getvalue())
