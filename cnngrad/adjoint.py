"""The adjoint (dot-product) test of every layer linear in its input: no step, no noise.

For a layer whose output is ``z = L a + c`` (conv, dense, average pooling, flatten, and any
layer that declares ``linear = True``), its backward applied to v must be ``Lᵀ v``, so

    ⟨L u, v⟩ = ⟨u, Lᵀ v⟩   for every u (the layer's input shape) and v (its output shape),

with ``L u = z(a + u) − z(a)`` at the layer's input a (u scaled up first where that move is
tiny beside z: ``_lifted``).  Both sides are a few BLAS sums: they agree to
rounding (~1e-16 of ``‖L u‖·‖v‖``), while a rotated kernel, a transposed W or a wrong
divisor moves them apart at O(1e-2 … 1) — a proof either way, with no finite-difference
noise.  The same holds for each parameter the output is linear in (conv and dense W, b):
``⟨z(P + U) − z(P), v⟩ = ⟨U, ∂C/∂P given δ = v⟩``.

Two probes, shared by the layer's tensors: v random, and w = Σ_T L_T U_T plus a random vector
(its left side holds ‖L_T U_T‖² > 0, and it reaches directions off L's range), each one backward
call.  (The δ^l the analytic pass handed the layer, whose backward is already run, would save a
call; it lies in a small subspace — the network's few outputs spread back — and missed twice as
many one-entry slips near tol as a random δ: a QA pass, 200 seeds.)  The error is
``|lhs − rhs| / (‖L u‖·‖v‖ + ‖u‖·‖Lᵀ v‖)``, scale-free, the worst of the two probes.  Cost per
linear layer: one forward per tensor and one more, two backwards (the network's other layers:
one forward, to carry the input on) — or, from the structural checks' calls (``check_network``'s
``visits``), one forward a tensor and one backward, the chain carried by their outputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .refs import TensorRef
from .structural import Visit

Array = np.ndarray
TOL = 1e-11  # rounding leaves ~1e-16; a wrong backward leaves 1e-3 … 1
LIFT = 2.0 ** 10  # a move more than this much smaller than z is lifted (``_lifted``): ε·2^10 ≪ TOL
MAX_LIFT_NORM = 1000  # a lifted probe's norm stays below 2^1000 (weights of 1e-300 under a bias need ~2^990)
LINEAR = 1e-8  # z(a + 2U) − z(a) against 2·(z(a + U) − z(a)), relative: a declared linearity, shown
LINEAR_KINDS = {"conv", "dense", "flatten", "conv_transpose", "upsample"}


def is_linear(layer: Any) -> bool:
    """Linear in its input: declared ``linear = True``, or a built-in linear kind (average
    pooling included; max pooling and activations are not)."""
    inner = getattr(layer, "layer", layer)  # a plugin behind network.PluginLayer
    if getattr(inner, "linear", False) is True or getattr(layer, "linear", False) is True:
        return True
    kind = getattr(layer, "kind", "")
    if kind in ("pool", "global_pool"):
        return getattr(layer, "pool", getattr(layer, "mode", "")) == "avg"
    return kind in LINEAR_KINDS


@dataclass
class Adjoint:
    """The dot-product test of one linear layer: its input, then each parameter."""

    ref: TensorRef  # δ at the layer's input: the layer
    kind: str
    lhs: float
    rhs: float
    rel: float
    params: dict[str, float] = field(default_factory=dict)  # the same error for each parameter
    tol: float = TOL
    untested: list[str] = field(default_factory=list)  # parameters z is not linear in: no test for them

    @property
    def worst(self) -> float:
        return max([self.rel, *self.params.values()], key=lambda v: np.inf if np.isnan(v) else v)

    @property
    def failed(self) -> bool:
        return not self.worst <= self.tol

    @property
    def finite(self) -> bool:
        """Its numbers could be taken: no inf or NaN (an overflowing net's are not; the numerical
        faults say where), so a failure says the backward is wrong."""
        return bool(np.isfinite(self.worst))

    def line(self) -> str:
        extra = "".join(f", ∂{k} {v:.1e}" for k, v in self.params.items()) + "".join(
            f", ∂{k} not tested (z is not linear in it)" for k in self.untested)
        verdict = ("FAIL: the backward is not the adjoint of the forward" if self.finite else
                   "FAIL: cannot be taken (the numbers overflow, or a move stays below the output's rounding)"
                   ) if self.failed else "PASS"
        return (f"layers[{self.ref.layer}] {self.kind}: ⟨L u, v⟩ = {self.lhs:.12g}, ⟨u, Lᵀ v⟩ = {self.rhs:.12g}, "
                f"rel {self.rel:.1e}{extra} (tol {self.tol:.0e}) {verdict}")

    def record(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {"layer": self.ref.json_layer, "kind": self.kind, "lhs": num(self.lhs), "rhs": num(self.rhs),
                "rel": num(self.worst), "tol": self.tol, "status": "fail" if self.failed else "pass"}


def _error(lhs: float, rhs: float, sizes: tuple[float, float, float, float]) -> float:
    """``|lhs − rhs| / (‖Lu‖·‖w‖ + ‖u‖·‖Lᵀw‖)`` (``sizes`` those four norms); taken in logs
    where a product nears overflow or underflow: the products of norms overflowed where each
    was ~1e154 and both sides of the test finite and equal (a net of weights of 1e153:
    "cannot be taken", a QA pass)."""
    if not all(math.isfinite(v) for v in (lhs, rhs, *sizes)):  # overflow: nothing to judge
        return float("nan")
    diff = abs(lhs / 2 - rhs / 2)  # halves: the difference of two finite numbers stays finite
    denom = sizes[0] * sizes[1] + sizes[2] * sizes[3]
    if 1e-280 < denom < 1e280 and diff < 1e300:  # no product near overflow or underflow: at once
        return 2 * diff / denom
    terms = [math.log(a) + math.log(b) for a, b in (sizes[:2], sizes[2:]) if a > 0 and b > 0]
    if diff == 0 or not terms:
        return 0.0
    top = max(terms)
    return math.exp(math.log(diff) + math.log(2) - top) / sum(math.exp(t - top) for t in terms)


@dataclass
class _Move:
    """A tensor's move: ``U`` (lifted), ``Lu = L U``, whether it showed (``_lifted``), and the
    norms of both, taken once (a LeNet check takes ~80 of them; they were ~170)."""

    U: Array
    Lu: Array
    shown: bool
    size_u: float
    size_lu: float


@dataclass
class _Pair:
    """A probe w and its backward (δ, {name: ∂}), with ‖w‖ taken once for every tensor."""

    w: Array
    back: tuple[Array, dict[str, Array]]
    size_w: float


def _probe(move: _Move, name: str, pairs: list[_Pair]) -> tuple[float, float, float]:
    """⟨L u, w⟩, ⟨u, Lᵀ w⟩ of the first pair, and the worst error of them all: NaN (cannot be
    taken) where the move never showed (``_lifted``) and backward says it should."""
    errors: list[float] = []
    first: tuple[float, float] = (0.0, 0.0)
    for k, pair in enumerate(pairs):
        LTw = pair.back[0] if name == "" else pair.back[1][name]
        lhs, rhs = float(np.vdot(move.Lu, pair.w)), float(np.vdot(move.U, LTw))
        unseen = not move.shown and rhs != 0.0
        errors.append(float("nan") if unseen else
                      _error(lhs, rhs, (move.size_lu, pair.size_w, move.size_u, _norm(LTw))))
        first = (lhs, rhs) if k == 0 else first
    return first[0], first[1], max(errors, key=lambda e: np.inf if np.isnan(e) else e)


def _norm(x: Array) -> float:
    """‖x‖₂ without overflow or underflow in the squares (a probe lifted to 2^500, say): the
    sum of squares at once where it lies far from both (einsum, one pass, no copy, no BLAS
    threads: 2.3x faster, ~200 norms a LeNet check), else scaled by the largest entry.
    Not finite exactly where an entry of x is not (inf or NaN)."""
    flat = x.reshape(-1)
    squares = float(np.einsum("i,i->", flat, flat)) if x.dtype.kind == "f" else np.nan
    if 1e-200 < squares < 1e300:
        return math.sqrt(squares)
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return m * float(np.linalg.norm(x / m)) if 0.0 < m < np.inf else m


def _lifted(move: Callable[[Array], Array], U: Array, big: float) -> _Move:
    """``s·U, L(s·U)`` (a ``_Move``), ``L U = move(U)`` = z(… + U) − z(…), s a power of two that lifts
    ‖L(sU)‖ to about ‖z‖ (``big``) where the move is over LIFT times smaller: the subtraction loses
    ε·‖z‖, so a move far below z (tiny weights under a large bias, a parameter whose input is
    ~0) would leave rounding's error in the test, not the backward's.  Where the move rounds
    to nothing at all (weights of 1e-40 under a bias of 0.1; an input or a parameter so large
    that adding U leaves it as it was) its size is not known: U is lifted by 2^64 until it
    shows, then to z's size.  z is linear in the tensor, so any scale serves; a power of two
    keeps sU exact; ‖sU‖ stays below 2^MAX_LIFT_NORM, so no product of the test overflows.
    A move that never shows is left as it was, and said so (False): the tensor does not reach
    z, or its move stays below z's rounding — a test that cannot be taken where backward
    says it does reach z; so is one lifted as far as that bound lets it and still so far below
    z that the subtraction's rounding (ε·‖z‖) is over a tenth of TOL of it.  One more forward
    a lift (one or two, most often; none where the move is z's size already)."""
    Lu = first = move(U)
    size_u = _norm(U)
    small = first_small = _norm(Lu)  # not finite exactly where an entry of Lu is not (``_norm``)
    if not (math.isfinite(big) and big > 0.0 and 0.0 < size_u < np.inf and math.isfinite(small)):
        return _Move(U, Lu, True, size_u, small)
    s = 1.0
    for _ in range(MAX_LIFT_NORM // 64 + 2):
        if small > 0.0 and big <= LIFT * small:
            break
        room = MAX_LIFT_NORM - int(np.ceil(np.log2(s * size_u)))  # ‖sU‖ ≤ 2^MAX_LIFT_NORM
        k = min(room, int(np.log2(big / small)) if small > 0.0 else 64)
        if k <= 0:
            break
        lifted = move(U * (s * 2.0 ** k))
        size = _norm(lifted)
        if not math.isfinite(size):
            break
        s, Lu, small = s * 2.0 ** k, lifted, size
    if not small > 0.0:
        return _Move(U, first, False, size_u, first_small)  # nothing shows: the unlifted move, as it was
    sU = U if s == 1.0 else U * s
    size_su = size_u if s == 1.0 else _norm(sU)
    # lifted as far as the bound lets it and still far below z (an input of 1e307): the subtraction's
    # rounding, ε·‖z‖, is not small beside the move — a test of it would judge that rounding
    return _Move(sU, Lu, not float(np.finfo(np.float64).eps) * big > TOL / 10 * small, size_su, small)


def _not_linear(move: Callable[[Array], Array], moved: _Move) -> bool:
    """Whether z is plainly not linear in the tensor ``move`` moves (``moved``: U, L U): L(2U) ≠ 2·L(U) beyond
    rounding (``LINEAR``) — a user's ``linear = True`` that does not hold (tanh), or a
    parameter z is not linear in (a scale e^s, a weight norm), where the test has nothing to say."""
    L2 = move(2.0 * moved.U)
    size = _norm(L2)
    return not (np.all(np.isfinite(L2)) and _norm(L2 - 2.0 * moved.Lu) <= LINEAR * size)


def check_layer(layer: Any, a: Array, rng: np.random.Generator, ref: TensorRef, kind: str,
                given: Visit | None = None, trusted: bool = True) -> tuple[Adjoint | str, Array]:
    """The dot-product test of ``layer`` at input ``a`` (of shape (N, *in_shape)), float64,
    and the layer's output there (the next layer's input).

    Every tensor T (the input, each parameter) gets its ``L_T U_T`` (the output's move for a
    random move ``U_T`` of T alone: ``z(a + U) − z(a)`` for the input, ``z(P + U) − z(P)`` for
    a parameter), and both probes come from two backward calls at a's cache: ``w = v`` random,
    and ``w = Σ_T L_T U_T + r``, r random (then each left side ⟨L_T U_T, w⟩ holds ‖L_T U_T‖²).  A layer
    linear in its input has the same Lᵀ at every input, so a's cache serves the input's
    probes too.  ``given``: the structural checks' forward at a, their random δ as v and
    backward's result for it (``structural.Visit``), so only the second probe is called.
    ``trusted`` False (a user's layer: its ``linear = True`` is a declaration) first shows z
    linear in each tensor (``_not_linear``): where it is not in its input, the reason comes
    back instead of a test; a parameter it is not linear in is left out (``Adjoint.untested``)."""
    shared = given if given is not None and given.back is not None and given.delta is not None else None
    with np.errstate(all="ignore"):
        if shared is not None:
            out_a, cache_a = shared.out, shared.cache
        else:
            out_a, cache_a = layer.forward(a)
            out_a = np.array(out_a, copy=True)  # safe from a buffer a later call reuses
        u = rng.uniform(-1.0, 1.0, a.shape)  # any random probe serves: uniform draws 4x faster
        big = _norm(out_a)

        def move_input(U: Array) -> Array:
            return layer.forward(a + U)[0] - out_a

        moves = {"": _lifted(move_input, u, big)}  # tensor -> its move
        if not trusted and _not_linear(move_input, moves[""]):
            return "z(a + 2u) − z(a) is not twice z(a + u) − z(a)", out_a
        untested: list[str] = []
        for name, P in list(layer.params.items()):

            def move(U: Array, name: str = name, P: Array = P) -> Array:
                layer.params[name] = P + U
                try:
                    return layer.forward(a)[0] - out_a
                finally:
                    layer.params[name] = P

            moves[name] = _lifted(move, rng.uniform(-1.0, 1.0, P.shape), big)
            if not trusted and _not_linear(move, moves[name]):
                del moves[name]
                untested.append(name)
        v: Any
        back_v: Any
        if shared is not None:
            v, back_v = shared.delta, shared.back
        else:
            v = rng.uniform(-1.0, 1.0, out_a.shape)
            back_v = layer.backward(v.copy(), cache_a)
        w = moves[""].Lu.copy()  # Σ_T L_T U_T
        for m in list(moves.values())[1:]:  # in the dict's order: the same sum every run
            w += m.Lu
        size = _norm(w)
        if 0.0 < size < np.inf:  # to about 1, by a power of two (exact): ⟨L_T U_T, w⟩ ~ ‖z‖² overflowed where
            np.ldexp(w, -math.frexp(size)[1], out=w)  # z ~1e154 (weights of 1e153, a QA pass), and any w serves
        # plus a random r of its size: w then reaches every direction of the output, not only the
        # range of L (a backward wrong only off that range, as an upsampling's that takes 4x a
        # block's first δ for its sum, is seen here whatever the first probe is)
        r = rng.uniform(-1.0, 1.0, w.shape)
        size_r = _norm(r)
        if 0.0 < size_r < np.inf and math.isfinite(size):
            w += np.ldexp(r, -math.frexp(size_r)[1], out=r)
        # a built-in layer's backward leaves its δ as it was (tests/test_structural.py): no copy to keep w
        pairs = [_Pair(v, back_v, _norm(v)), _Pair(w, layer.backward(w if trusted else w.copy(), cache_a), _norm(w))]
        lhs, rhs, rel = _probe(moves[""], "", pairs)
        params = {name: _probe(m, name, pairs)[2] for name, m in moves.items() if name}
    return Adjoint(ref, kind, lhs, rhs, rel, params, untested=untested), out_a


def check_network(layers: list, x: Array, kinds: list[str], seed: int,
                  visits: list[Visit | None] | None = None, notes: list[str] | None = None) -> list[Adjoint]:
    """The test for every linear layer of a float64 network, at the inputs x (of shape
    (N, *in_shape)) gives each layer.  ``visits``: what ``structural.check`` computed on the
    same layers from the same x (each layer's output, and the first probe where it kept it).
    A user's layer declares its linearity: shown first (``check_layer``'s ``trusted``); where it
    does not hold, ``notes`` (a list) receives why, and the layer has no test."""
    from .network import pure

    rng = np.random.default_rng([seed, 0xAD])  # its own stream: the check's draws stay as they were
    found, a = [], x
    for i, layer in enumerate(layers):
        visit = visits[i] if visits is not None and i < len(visits) else None
        if is_linear(layer):
            test, a = check_layer(layer, a, rng, TensorRef.delta(i), kinds[i], visit, trusted=pure(layer))
            if isinstance(test, str):
                if notes is not None:
                    notes.append(f"layers[{i}] {kinds[i]} declares linear = True, but {test}: no dot-product test")
                continue
            found.append(test)
        else:
            a = visit.out if visit is not None else layer.forward(a)[0]
    return found


def localise(found: list[Adjoint]) -> tuple[int | str | None, str]:
    """The culprit and localisation sentence when only the dot-product test failed (the
    differences resolved nothing wrong): each failing layer is wrong on its own — the test
    needs no other layer — so the first is named and every one listed."""
    bad = [a for a in found if a.failed and a.finite]  # an overflow blames no backward
    if not bad:
        return None, ""
    named = ", ".join(f"{a.ref.json_layer} ({a.kind})" for a in bad)
    return bad[0].ref.json_layer, (f"layer {named}: backward is not the adjoint of the forward (dot-product "
                                   f"test rel {bad[0].worst:.1e} > {bad[0].tol:.0e}), below what the "
                                   f"differences resolve")
