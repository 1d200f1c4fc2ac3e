"""``--scope layer``: every layer's backward checked against differences of that layer alone.

For layer l with input ``a^{l-1}``, output ``z^l`` and the δ its backward received,
``δ^l = ∂C/∂z^l`` (the analytic one, as the layers above passed it down), the numeric
gradient of a parameter entry θ_j is the layer's own forward, differenced and contracted
with that δ::

    ⟨δ^l, (z^l(θ + h·e_j) − z^l(θ − h·e_j)) / 2h⟩      against the analytic ∂C/∂θ_j

and the same for an entry of its input, against the δ^{l-1} its backward passes down.  This
is the chain rule checked link by link: each entry costs one layer (not the network above
it), a wrong backward fails at its own layer only (the layers below it pass, being right
for the δ they were given), so the culprit is named by construction.  What it does not see
— the wiring between layers and the loss's gradient — a short end-to-end check along
random directions of x covers (``end_to_end``).

Inside a block every layer is a link of its own, against the δ it received (``tree.py``);
the block's own input row sums its paths' first links, which checks its merge
(``δ^{l-1} = Σ_p δ_p``).

Changes are carried the way the network scope carries them, where a layer declares it
(``finite_diff.shortcuts``): a parameter's perturbed output channel (``forward_perturbed``,
spot-checked against a real pass first), an input entry's window (``window``/``region``/
``elementwise``), one input unit of a dense layer (``input_delta``); else real forward
passes — one sample a row for a per-sample layer, a whole perturbed batch for one that is not.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..blocks import Block
from ..finite_diff import FiniteDifferences, Numeric, directions
from ..refs import TensorRef
from ..resolution import cast_layer
from .links import LinkDifferences
from .tree import Links, share

Array = np.ndarray
END_TO_END_DIRECTIONS = 2  # random directions of x for the end-to-end check
__all__ = ["LinkDifferences", "SCOPES", "received_deltas", "link_rows", "end_to_end", "as_end_to_end",
           "kinks_only", "WIRING", "own_backward", "kinked_link", "contraction_size"]

SCOPES = ("network", "layer")


def received_deltas(deltas: list[Array], out_delta: Array) -> list[Array]:
    """δ^l, ∂C/∂(output of layer l), as each layer's backward received it: the δ the layer
    above passed down (``deltas[l + 1]``), the loss's gradient for the last layer."""
    return list(deltas[1:]) + [out_delta]


def own_backward(links: Links, path: tuple[int, ...], dtype: Any) -> dict[TensorRef, Array]:
    """The backward of the layer at ``path`` (top level or inside a block) alone, run in
    ``dtype`` (longdouble, float64) on its link's input and the δ it received, both cast
    exactly: what the layer scope's rows of that layer are differences of — the layer alone,
    at that δ — with less rounding.  Its δ at the input (``TensorRef.delta(path)``) and its
    parameters' gradients.  A block: its own input row, ``Σ_p`` of each path's first layer's
    (an identity path: the merge's share of the block's δ), as ``LinkDifferences`` differences
    it.  Empty for a layer that does not run in ``dtype`` (a plugin may not)."""
    link = links.at(path)
    if isinstance(link.layer, Block):
        total: Array | None = None
        for p, inner in enumerate(link.layer.paths):
            first = path + (p, 0)
            part = own_backward(links, first, dtype).get(TensorRef.delta(first)) if inner else \
                share(link.layer, p, link.delta).astype(dtype)
            if part is None:
                return {}
            total = part if total is None else total + part
        return {} if total is None else {TensorRef.delta(path): total}
    wide = copy.deepcopy(link.layer)
    try:
        cast_layer(wide, dtype)
        with np.errstate(all="ignore"):
            _, cache = wide.forward(np.asarray(link.a_prev).astype(dtype))
            delta, grads = wide.backward(np.asarray(link.delta).astype(dtype), cache)
    except Exception:  # noqa: BLE001 - a plugin that does not run in dtype: no wide value, no excuse
        return {}
    return {TensorRef.delta(path): np.asarray(delta),
            **{TensorRef.param(path, name): np.asarray(g) for name, g in grads.items()}}


def link_rows(rows: list, deltas: list[Array], kinds: list[str], row_type: Any,
              inner: dict[tuple[int, ...], Array] | None = None, kind_at: Any = None) -> list:
    """The network scope's rows and δ at every inner layer boundary (each layer's input,
    inside blocks too: ``inner``, each named by ``kind_at(path)``): in the layer scope every
    layer's backward is checked on everything it returns."""
    have = {row.ref for row in rows}
    rows = rows + [row_type(TensorRef.delta(l), kinds[l], deltas[l]) for l in range(1, len(deltas))
                   if TensorRef.delta(l) not in have]
    rows += [row_type(TensorRef.delta(path), kind_at(path), d) for path, d in sorted((inner or {}).items())
             if TensorRef.delta(path) not in have]
    rows.sort(key=lambda row: (row.ref.path, not row.ref.is_delta))  # stable: a layer's order stays
    return rows


def end_to_end(fd: FiniteDifferences, g: Array, kind: str, rng: np.random.Generator, tol: float,
               floor: Any, picks: Array, k: int = END_TO_END_DIRECTIONS) -> Any:
    """∂C/∂x along ``k`` random unit directions through the whole network (2k passes for
    central differences): the links checked one by one, this ties them together — a wrong
    wiring between layers, or a wrong loss gradient, fails here and nowhere else.  A
    direction whose derivative is small drowns in rounding (the loss's ~ε·C/h); so, as with
    ``--directions``, a failure is checked again entry by entry at ``picks`` through the
    whole network (the network scope's check of ∂C/∂x), and that is the row's verdict."""
    from ..compare import judge

    V = directions(rng, k, g.size)
    along, kinks = fd.directional(TensorRef.delta(0), V)
    check = judge(TensorRef.delta(0), kind, g.shape, np.arange(k), V @ g.reshape(-1).astype(np.float64, copy=False),
                  along, kinks, tol, mode="directions", floor=floor)
    what = "end to end: ∂C/∂x through the whole network and the loss"
    if check.passed:
        check.note = f"{what}, along {k} random directions"
        return check
    num = fd.numeric([(TensorRef.delta(0), picks)])[0]
    entries = judge(TensorRef.delta(0), kind, g.shape, picks, g.reshape(-1)[picks].astype(np.float64), num.values,
                    num.kinks, tol, floor=floor)
    entries.note = (f"{what}: failed along {k} random directions (norm rel {check.metrics.norm_rel:.1e}); "
                    f"checked entry by entry")
    return entries


def kinks_only(checks: list, network_refs: set[TensorRef]) -> None:
    """An inner δ that only the layer scope checks, every one of whose stencils crossed a
    kink (ties in a max pool's windows, e.g. of relu zeros or of a padded border): nothing
    could be compared, so it is UNRESOLVED — not a failure of a tensor the network scope
    would not have checked at all (the layers around it are still checked against it)."""
    for c in checks:
        if c.ref not in network_refs and c.failed and c.checked == 0 and c.kinks > 0:
            c.status = "unresolved"
            c.reason = (f"not checked: every one of its {c.kinks} entries' stencils crossed a kink (an inner δ the "
                        f"network scope does not check); --avoid-kinks or a smaller --eps may resolve it")


def kinked_link(links: LinkDifferences, checks: list, tol: float, why: str,
                unexamined: list | None = None) -> tuple[int | str, str] | None:
    """Rows of δ with entries left out for crossing a kink (a relu at 0, tied maxima of a max
    pool: their stencils cross one, in the layer or above it) can hide a wrong backward — in
    the layer scope when only ∂C/∂x end to end fails (else the wiring is blamed), in the
    network scope above the layer localisation named.  Their layers alone are differenced at
    those entries (``LinkDifferences.at_kinks``: a layer with a kink of its own on the
    unperturbed pass's piece, the derivative its backward's masks compute); the first in
    backprop order that disagrees is named (``why`` says what was seen first), with its worst
    entry.  None if none does; then ``unexamined`` (a list) receives the rows whose layer
    alone crossed a kink at every one of those entries too (a plugin's kinks: it cannot be
    held on its piece) — what the localisation cannot vouch for."""
    from ..compare import metrics

    suspects = []
    for c in checks:
        if c.mode != "entries" or not c.ref.is_delta or not np.any(c.kink_mask) or "end to end" in c.note:
            continue
        found = links.at_kinks(c.ref, c.indices[c.kink_mask])
        clear = ~np.asarray(found.kinks, dtype=bool)  # entries the layer alone does not cross a kink at
        if not clear.any():
            if unexamined is not None:
                unexamined.append(c)
            continue
        num = Numeric(found.indices[clear], np.asarray(found.values)[clear], np.zeros(int(clear.sum()), dtype=bool))
        g = np.asarray(c.analytic, dtype=np.float64)[c.kink_mask][clear]
        if metrics(g, num.values).norm_rel > max(tol, c.tol):
            suspects.append((c, g, num))
    if not suspects:
        return None
    c, g, num = max(suspects, key=lambda s: s[0].ref.path)
    worst = int(np.argmax(np.abs(g - num.values)))
    at = tuple(int(i) for i in np.unravel_index(int(num.indices[worst]), c.shape))
    culprit = c.ref.path[0] if len(c.ref.path) == 1 else c.ref.layer
    return culprit, (f"layer {c.ref.layer} ({c.kind}): backward is wrong at its kinks — {why}; differenced alone "
                     f"(a kink of its own held on the unperturbed pass's piece, the derivative its backward's masks "
                     f"compute), its δ at the {len(g)} entries left out for a kink disagrees (norm rel "
                     f"{metrics(g, num.values).norm_rel:.1e}): analytic {g[worst]:.6g} numeric "
                     f"{num.values[worst]:.6g} at {list(at)}")


def contraction_size(links: LinkDifferences, ref: TensorRef, idx: Array) -> Array | None:
    """``S_j = Σ_i |δ_i · ∂z_i/∂θ_j|`` for each flat index j of ``ref``: the size of the terms a
    link row's ``⟨δ, ∂z/∂θ_j⟩`` sums (a real pass of the layer alone per entry, at a step of
    1e-6 of the entry's size) — any sum of them, the backward's or the differences', is off by
    ~ε·S_j from rounding alone, which no difference quotient resolves.  None for a block's
    own input row (its paths' first links are summed)."""
    link = links.links.at(ref.path)
    layer = link.layer
    if isinstance(layer, Block):
        return None
    original = link.a_prev if ref.is_delta else layer.params[ref.name]
    # one entry moved at a time; C order, so that writes through ``flat`` land
    moved = np.array(original, dtype=np.result_type(original, np.float64), copy=True, order="C")
    flat = moved.reshape(-1)
    out = np.empty(len(idx))
    if not ref.is_delta:
        layer.params[ref.name] = moved
    try:
        with np.errstate(all="ignore"):
            for k, j in enumerate(idx):
                old = flat[j]
                h = 1e-6 * max(1.0, abs(float(old)))
                flat[j] = old + h
                z = layer.forward(moved if ref.is_delta else link.a_prev)[0]
                flat[j] = old
                out[k] = float(np.sum(np.abs((np.asarray(z) - link.z) * link.delta))) / h
    finally:
        if not ref.is_delta:
            layer.params[ref.name] = original
    return out


def as_end_to_end(check: Any, first: Any) -> Any:
    """``check`` (the complex step's second look at the end-to-end row ``first``, or
    ``first`` itself) marked as the end-to-end row."""
    if check is not first and "end to end" not in check.note:
        check.note = f"{first.note}; {check.note}"
    return check


WIRING = ("every layer's backward checks out against its own forward, but ∂C/∂x end to end does not: "
          "the wiring between the layers (which δ each backward receives) or the loss's gradient is wrong")


def wiring(unchecked: list) -> str:
    """The localisation when only ∂C/∂x end to end fails: the wiring (``WIRING``) — unless a
    layer's δ at its kinks could not be checked at all (``kinked_link``'s ``unexamined``: it
    crosses them even alone, a plugin with no piece to hold it on; ties at θ after a nearest
    upsampling, say), which is then named first: "every layer checks out" would not be true
    (a QA pass: a max pool's backward wrong only at ties was put down to the wiring)."""
    if not unchecked:
        return WIRING
    c = max(unchecked, key=lambda c: c.ref.path)  # the first in backprop order
    seen = (f"its δ checked out only where no stencil crosses a kink ({c.kinks} entries left out), and there it "
            f"crosses one even alone" if c.checked else
            f"no entry of its δ could be checked (all {c.kinks} on kinks), and it crosses them even alone")
    return (f"every link checks out where it could be checked, but ∂C/∂x end to end does not: layer {c.ref.layer} "
            f"({c.kind}) is the likeliest — {seen} (it offers no piece to hold it on), so its backward at its kinks "
            f"is unchecked; else the wiring between the layers (which δ each backward receives) or the loss's "
            f"gradient is wrong")
