"""Structural checks of every layer, before any number is differenced.

Finite differences compare one backward call with many forward calls; they assume both are
functions — same inputs, same outputs, nothing changed behind the caller's back.  A layer
that breaks this can pass a gradient check and still corrupt a real network (the next layer,
or a second backward, sees different numbers: PyTorch's gradcheck calls it "not reentrant").
So each layer l cnngrad did not write (a plugin, a torch layer) is run on its real input
a^{l-1} (the seeded x, through the layers before it) and a random δ of its output's shape
(the built-in layers are proven to pass by the tests, ``check``'s ``trusted``):

* forward, twice on a copy of a^{l-1} (a fresh one if the first call changed it): the same
  output bit for bit ("forward is not deterministic"), and the input untouched ("forward
  changes its input");
* backward(δ, cache) on a copy of δ: neither the cache (every array in its tuples, lists and
  dicts, copied before and compared after) nor δ changed ("backward changes its cache",
  "backward changes the δ it is given"), nor the layer's parameters;
* then, only if nothing was changed, backward(2δ, cache): exactly 2x the first result, bit
  for bit.  A deterministic backward linear in δ gives that exactly (scaling by 2 is exact
  in binary floating point), and the two ways a backward breaks it are the two properties
  it stands for: a second call that differs, and a constant added (weight decay folded in:
  backward(0) ≠ 0).  Where it is not 2x, each is called on its own — backward(δ) again,
  the same result bit for bit ("backward is not reentrant: …"), and backward(0, cache):
  ∂C/∂a^{l-1} = 0 and every ∂C/∂θ = 0 ("an all-zero δ gives non-zero gradients") — and
  only they fail the layer (a right backward misses 2x by rounding near underflow);
* where backward is reentrant, forward on another input (¾a^{l-1}, a^{l-1}'s entries
  reversed, −a^{l-1}, its first sample alone), then backward(δ, cache) of the first call
  again: the same result bit for bit ("backward reads state the layer keeps from its last
  forward call" — a ``self.a`` set by forward: right for
  one forward then one backward, wrong wherever a layer runs twice before its backward, as a
  shared layer does);
* last, forward on a^{l-1} again: the first output bit for bit, after all those calls ("forward
  is not deterministic: after calls on other inputs …" — a drift, or running state), which
  also puts back what the layer keeps.

Cost: up to seven forwards and six backwards per layer (eight backwards where 2δ does not give 2x), no finite
differences; the first forward and backward of a linear layer are also the adjoint test's
(``Visit``).  A layer whose
input or output is not finite is skipped: the numerical-fault report already names it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Array = np.ndarray
MAX_DEPTH = 6  # how deep into nested tuples/lists/dicts of a cache arrays are looked for


class Layer(Protocol):
    """What the structural checks call: the layer protocol (CONVENTIONS.md)."""

    params: dict[str, Array]

    def forward(self, a: Array) -> tuple[Array, Any]: ...

    def backward(self, delta: Array, cache: Any) -> tuple[Array, dict[str, Array]]: ...


class _Opaque:
    """Stands for a cache entry that is not an array or a container of them: not compared."""


_OPAQUE = _Opaque()
_VALUES = (type(None), bool, int, float, complex, str, bytes, np.generic, np.dtype, slice, range, type)  # cannot change


def _torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported: never imported here
    return torch is not None and isinstance(obj, torch.Tensor)


def snapshot(obj: Any, depth: int = 0, skip: Any = None) -> Any:
    """A deep copy of the arrays in ``obj`` and its tuples, lists, dicts and objects' attributes
    (a ``SimpleNamespace``, a dataclass: their ``__dict__``), torch tensors as arrays; values
    that cannot change (numbers, strings) as they are; ``skip`` (the layer) as itself, unlooked
    into; anything else is left out (``_OPAQUE``)."""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, _VALUES):
        return ("value", obj)
    if skip is not None and obj is skip:
        return ("skip", None)
    if depth >= MAX_DEPTH:
        return _OPAQUE
    if _torch_tensor(obj):
        try:
            return ("torch", obj.detach().cpu().numpy().copy())
        except (TypeError, RuntimeError):  # a dtype numpy has not (bfloat16)
            return _OPAQUE
    if isinstance(obj, (tuple, list)):
        return (type(obj), [snapshot(v, depth + 1, skip) for v in obj])
    if isinstance(obj, Mapping):  # a dict, or a block's params (a view of its layers')
        return (dict, {k: snapshot(v, depth + 1, skip) for k, v in obj.items()})
    if isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, type):
        return ("object", {k: snapshot(v, depth + 1, skip) for k, v in vars(obj).items()})
    return _OPAQUE


def unchanged(before: Any, now: Any) -> bool:
    """Whether ``now`` still matches its ``snapshot`` ``before``, bit for bit."""
    if before is _OPAQUE:
        return True
    if isinstance(before, np.ndarray):
        return isinstance(now, np.ndarray) and identical(before, now)
    kind, items = before
    if kind == "value":
        return type(now) is type(items) and (now is items or bool(now == items))
    if kind == "skip":
        return True
    if kind == "torch":
        again = snapshot(now) if _torch_tensor(now) else _OPAQUE
        return isinstance(again, tuple) and unchanged(items, again[1])
    if kind == "object":
        attrs = getattr(now, "__dict__", None)
        return isinstance(attrs, dict) and unchanged((dict, items), attrs)
    if not isinstance(now, Mapping if kind is dict else kind) or len(now) != len(items):
        return False
    if kind is dict:
        return set(now) == set(items) and all(unchanged(items[k], now[k]) for k in items)
    return all(unchanged(b, n) for b, n in zip(items, now))


def seen_whole(before: Any) -> bool:
    """Whether a ``snapshot`` left nothing out: only then can ``unchanged`` vouch for all of it."""
    if before is _OPAQUE:
        return False
    if isinstance(before, np.ndarray):
        return True
    kind, items = before
    if kind in ("value", "skip", "torch"):
        return True
    if kind == "object" or kind is dict:
        return all(seen_whole(v) for v in items.values())
    return all(seen_whole(v) for v in items)


def identical(a: Any, b: Any) -> bool:
    """Same shape, dtype and bytes (NaN payloads and the sign of 0 included): compared as
    unsigned integers of the widest size dividing the item size, in place (``tobytes`` made
    two copies of every array, a quarter of the structural checks' time on a wide net)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.hasobject or a.dtype.itemsize == 0:
        return a.tobytes() == b.tobytes()
    unit = next(u for u in (8, 4, 2, 1) if a.dtype.itemsize % u == 0)
    words = np.dtype(f"u{unit}")
    return bool(np.array_equal(np.ascontiguousarray(a).reshape(-1).view(words),
                               np.ascontiguousarray(b).reshape(-1).view(words)))


def _result(pair: tuple[Array, dict[str, Array]]) -> tuple[Array, dict[str, Array]]:
    """A copy of what backward returned, safe from what a later call does to its buffers."""
    delta_prev, grads = pair
    return np.array(delta_prev, copy=True), {k: np.array(v, copy=True) for k, v in grads.items()}


def _scaled(r: tuple[Array, dict[str, Array]], k: float) -> tuple[Array, dict[str, Array]]:
    return r[0] * np.asarray(k, dtype=r[0].dtype), {name: g * np.asarray(k, dtype=g.dtype) for name, g in r[1].items()}


def _same_result(r1: tuple[Array, dict[str, Array]], r2: tuple[Array, dict[str, Array]]) -> bool:
    return identical(r1[0], r2[0]) and set(r1[1]) == set(r2[1]) and all(identical(r1[1][k], r2[1][k])
                                                                        for k in r1[1])


@dataclass(frozen=True)
class Visit:
    """What the checks of one layer computed, for the adjoint test and the analytic trace to
    use: its output (a copy, where the layer was checked: a trusted one's is forward's own);
    where every check passed or the layer is trusted (``clean``), forward's cache — which
    the backward calls were seen to leave as it was — and, for a layer kept, the random δ and
    what backward returned for it (copies)."""

    out: Array
    cache: Any = None
    delta: Array | None = None
    back: tuple[Array, dict[str, Array]] | None = None
    clean: bool = False
    narrow: str = ""  # what backward returned in a narrower float than its input ("δ float32, W float32")


def check_layer(layer: Layer, a: Array, rng: np.random.Generator) -> tuple[list[str], Array | None]:
    """The reasons ``layer`` fails on its input ``a`` of shape (n, *in_shape) (none: []),
    and its output (a copy), the next layer's input; None where it is not finite."""
    why, visit = _check_layer(layer, a, rng, False)
    return why, None if visit is None else visit.out


def _check_layer(layer: Layer, a: Array, rng: np.random.Generator, keep: bool,
                 trusted: bool = False) -> tuple[list[str], Visit | None]:
    if not np.all(np.isfinite(a)):
        return [], None
    if trusted:
        return [], _first_calls(layer, a, rng, keep)
    params = snapshot(layer.params)
    a1 = a.copy()
    out, cache = layer.forward(a1)
    out = np.array(out, copy=True)  # safe from a buffer the second call reuses
    if not np.all(np.isfinite(out)):
        return [], None
    why: list[str] = []
    moved = not identical(a1, a)
    if moved:
        why.append("forward changes its input")
    out2, _ = layer.forward(a.copy() if moved else a1)  # a1 is still a, bit for bit
    if not identical(out, out2):
        why.append("forward is not deterministic: a second call on the same input gives different numbers")
    if not unchanged(params, layer.params):
        return why + ["forward changes the layer's parameters"], Visit(out)
    delta = rng.uniform(-1.0, 1.0, out.shape).astype(out.dtype)  # any random δ serves: uniform draws 4x faster
    d1 = delta.copy()
    before = snapshot(cache)
    r1 = _result(layer.backward(d1, cache))
    changed = [what for what, same in (("its cache", unchanged(before, cache)), ("the δ it is given",
                                       identical(d1, delta)), ("the layer's parameters",
                                       unchanged(params, layer.params))) if not same]
    if changed:  # a second call would differ because of it: the cause is the reason
        return why + [f"backward changes {what}" for what in changed], Visit(out)
    # the second call with 2δ: a deterministic backward linear in δ returns exactly 2·r1 (scaling
    # by 2 is exact in binary floating point), which both a call that differs and a constant
    # added (backward(0) ≠ 0) break.  Only if it does not are the two properties called one by one
    # (a correct backward can miss it by rounding near underflow: then neither fails)
    r2 = _result(layer.backward(np.multiply(delta, 2, dtype=delta.dtype), cache))
    reentrant = _same_result(_scaled(r1, 2), r2)
    if not reentrant:
        r2 = _result(layer.backward(d1, cache))  # d1 is still δ, bit for bit
        reentrant = _same_result(r1, r2)
        if not reentrant:
            why.append("backward is not reentrant: a second call on the same cache and δ gives different numbers")
        z_prev, z_grads = layer.backward(np.zeros_like(delta), cache)
        zero = {"δ": np.asarray(z_prev), **{k: np.asarray(g) for k, g in z_grads.items()}}
        nonzero = [name for name, g in zero.items() if np.any(g != 0)]
        if nonzero:
            what = "non-zero" if all(np.all(np.isfinite(zero[k])) for k in nonzero) else "non-zero or non-finite"
            why.append(f"an all-zero δ gives {what} gradients ({', '.join(nonzero)})")
    after = _keeps_state(layer, a, cache, delta, r1) if reentrant else ""  # not reentrant: differs anyway
    if after:
        why.append("backward reads state the layer keeps from its last forward call, not only its cache: "
                   f"after a forward {after}, backward(δ, cache) of the first call gives different numbers")
    # the last call: a again, after the calls above (on another input, too) — the same output, or forward
    # is not a function of its input after all (a drift, running state); and it puts back what the layer keeps
    last = np.array(layer.forward(a.copy())[0], copy=True)
    if not identical(last, out) and not any(w.startswith("forward is not deterministic") for w in why):
        why.append("forward is not deterministic: after calls on other inputs, a call on the same input gives "
                   "different numbers")
    return why, _visit(why, out, cache, delta, r1, keep, _narrow(a, r1))


def _keeps_state(layer: Layer, a: Array, cache: Any, delta: Array, r1: tuple[Array, dict[str, Array]]) -> str:
    """Whether backward reads more than its cache: forward on another input, then backward(δ,
    cache) of the first call again, which must return r1 bit for bit; "" if it does, else what
    the forward in between was ("on another input", "with other parameter values").  Four other inputs,
    until one shows it: ¾a (inside any domain star-shaped about 0 — signs kept — with every
    scale statistic moved: a norm, a max, a variance kept by the layer), a's entries in
    reverse order (the same values, every arg max moved; it may leave a domain per channel),
    −a (every sign: a count of the positive entries, a relu's mask) and its first sample
    alone (another shape: a ``self.shape`` kept for backward — which then fails, or differs).
    Where the layer's forward fails or is not finite on one, that one cannot tell; where that forward changed
    the cache's arrays (an output buffer reused from call to call and held in the cache),
    or the cache holds what a snapshot cannot see into, none can, and it says no.
    (``_check_layer``'s last forward, on a, puts back whatever the layer keeps, and such a
    buffer's numbers.)  Then a forward on a itself with every parameter at ¾ of its value (put
    back before the backward): a backward that reads W as the last forward left it, not as its
    cache holds it, passed every input above (a QA pass: the last call's W kept on the class)."""
    params = getattr(layer, "params", None) or {}
    tries: list[tuple[Array, dict[str, Array] | None, str]] = [
        (other, None, "on another input") for other in
        (a * np.asarray(0.75, a.dtype), np.ascontiguousarray(a.reshape(-1)[::-1]).reshape(a.shape), -a, a[:1])]
    if params:
        tries.append((a, {k: np.multiply(P, 0.75, dtype=np.asarray(P).dtype) for k, P in params.items()},
                      "with other parameter values"))
    for other, moved_params, what in tries:
        if moved_params is None and other.shape == a.shape and identical(other, a):
            continue
        before = snapshot(cache, skip=layer)
        if not seen_whole(before):  # what forward may change in it is out of sight
            return ""
        originals = dict(params)
        try:
            params.update(moved_params or {})
            moved = _outputs(layer, other)
        finally:
            params.update(originals)
        if isinstance(moved, Exception):  # outside its domain, perhaps: this one cannot tell
            continue
        if not unchanged(before, cache):
            return ""
        if not np.all(np.isfinite(moved[0])):
            continue
        try:
            again = _result(layer.backward(delta.copy(), cache))
        except Exception as e:  # δ of the other input's shape: backward took its shape from the layer
            if _stops(e):
                raise
            return what
        if not _same_result(r1, again):
            return what
    return ""


def per_sample_refuted(layer: Layer, a: Array, out: Array) -> str:
    """Why ``layer``'s ``per_sample`` declaration fails at its input ``a`` (of shape (n, …);
    ``out`` its output there), or "" where it holds: the differences stack perturbed copies of
    a batch, so a per-sample layer must give each sample its own output whatever batch it is
    in — of another size, in another order, beside another sample.  Five tries, each equal
    to rounding (√ε of the largest) or the reason: each sample alone and the samples reversed
    (real samples: inside any domain the layer has, so a forward that fails there fails on
    the batch's size); then the samples reversed plus one more, a mix of the first and the
    last (½(a₀ + a₋₁); ¾a₀ for one sample: inside any domain convex, or star-shaped about 0,
    and unlike every sample in the batch's order-free statistics — its max, its norm — which
    a reordered sample keeps), and that one alone: where the layer's forward fails or is not
    finite on it, it cannot tell, and says nothing; then the samples repeated to a batch the
    size the differences stack (up to 72 rows); last, the first sample beside a copy of it
    scaled by 1 + 2⁻²⁰ (the differences' perturbed copies are that near).  A forward on a
    again puts back whatever the layer keeps."""
    n = a.shape[0]
    extra = (a[:1] + a[-1:]) * np.asarray(0.5, a.dtype) if n > 1 else a[:1] * np.asarray(0.75, a.dtype)
    try:
        real = _outputs(layer, *(a[i:i + 1].copy() for i in range(n)), a[::-1].copy())
        if isinstance(real, Exception):  # a PluginError naming the layer, most often: a mask of the batch's size
            return f"its forward does not keep the batch's size: it fails on a batch of another size ({real})"
        each, reversed_ = real[:-1], real[-1]
        sizes = [one.shape[0] if one.ndim else 0 for one in each]
        if any(size != 1 for size in sizes):
            wrong = next(k for k in sizes if k != 1)
            return f"its forward does not keep the batch's size: a sample alone gives {wrong} samples"
        alone = np.concatenate(each)
        if not (_close(alone, out) and _close(reversed_, out[::-1])):
            return "a sample's output changes with the batch around it (the sample alone, or the samples reversed)"
        tried = _outputs(layer, extra.copy(), np.concatenate([a[::-1], extra]))
        if isinstance(tried, Exception) or not all(np.all(np.isfinite(t)) for t in tried):
            return ""  # outside the layer's domain, perhaps: it cannot tell
        mixed, stacked = tried
        if not _close(stacked, np.concatenate([out[::-1], mixed])):
            return ("a sample's output changes with the batch around it (the samples reversed and one more "
                    "added, a mix of two)")
        # as many rows as the differences stack (up to 72; the memory a few dozen samples take)
        big = min(72, max(2 * n, (64 << 20) // max(1, a[:1].nbytes)))
        if big > n + 1:
            rows = np.arange(big) % n
            many = _outputs(layer, a[rows])
            if isinstance(many, Exception):
                return f"its forward does not keep the batch's size: it fails on a batch of {big} ({many})"
            if not _close(many[0], out[rows]):
                return f"a sample's output changes with the batch around it (a batch of {big}, the samples repeated)"
        # last, beside a copy of itself nudged by 2⁻²⁰ — what the differences stack: a coupling that
        # only near-identical samples feel (a softmax kernel over the batch) shows only there
        twin = a[:1] * np.asarray(1 + 2.0 ** -20, a.dtype)
        tried = _outputs(layer, twin.copy(), np.concatenate([a[:1], twin]))
        if isinstance(tried, Exception) or not all(np.all(np.isfinite(t)) for t in tried):
            return ""
        nudged, pair = tried
        if not _close(pair, np.concatenate([alone[:1], nudged])):
            return "a sample's output changes beside a copy of itself nudged as the differences nudge it"
        return ""
    finally:
        layer.forward(a.copy())


def _stops(e: Exception) -> bool:
    """Whether ``e`` is a plugin's sys.exit / os._exit (a PluginError caused by no Exception):
    that stops the config, where any other error a probe meets only means it cannot tell."""
    return e.__cause__ is not None and not isinstance(e.__cause__, Exception)


def _outputs(layer: Layer, *inputs: Array) -> list[Array] | Exception:
    """Copies of ``layer``'s outputs on each input in turn, or the error its forward raised."""
    try:
        return [np.array(layer.forward(x)[0], copy=True) for x in inputs]
    except Exception as e:
        if _stops(e):
            raise
        return e


def _close(got: Array, want: Array) -> bool:
    """Equal to rounding: same shape, every entry within √ε of want's largest."""
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= np.sqrt(np.finfo(want.dtype).eps) * scale))


def _first_calls(layer: Layer, a: Array, rng: np.random.Generator, keep: bool) -> Visit | None:
    """A trusted layer's visit: its forward, and for a layer kept the backward of a random δ
    (the adjoint test's first probe) — the calls the checks would have made first."""
    out, cache = layer.forward(a)
    if not np.all(np.isfinite(out)):
        return None
    if not keep:
        return Visit(out, cache, clean=True)
    delta = rng.uniform(-1.0, 1.0, out.shape).astype(out.dtype)
    return Visit(out, cache, delta, _result(layer.backward(delta.copy(), cache)), clean=True)


def _narrow(a: Array, back: tuple[Array, dict[str, Array]]) -> str:
    """The arrays backward returned in a float narrower than its input's (float32 in a float64
    network: they carry float32's rounding, ~6e-8, which a tol of 1e-6 does not see)."""
    if a.dtype.kind != "f":
        return ""
    named = [("δ", back[0]), *back[1].items()]
    return ", ".join(f"{name} {g.dtype}" for name, g in named
                     if g.dtype.kind in "fc" and np.finfo(g.dtype).eps > np.finfo(a.dtype).eps)


def _visit(why: list[str], out: Array, cache: Any, delta: Array, back: tuple[Array, dict[str, Array]],
           keep: bool, narrow: str = "") -> Visit:
    if why:
        return Visit(out, narrow=narrow)
    if keep:
        return Visit(out, cache, delta, back, clean=True, narrow=narrow)
    return Visit(out, cache, clean=True, narrow=narrow)


def check(layers: list[Any], x: Array, kinds: list[str], seed: int, keep: Callable[[Any], bool] | None = None,
          visits: list[Visit | None] | None = None, trusted: Callable[[Any], bool] | None = None,
          refuted: list[tuple[int, str]] | None = None) -> list[str]:
    """Every layer's structural failures, as ``"layers[l] kind: reason"``, from x of shape
    (n, c, h, w) through the layers in order (layer l's input is layer l−1's output).  Run
    before the analytic pass, so that what these calls leave behind (a reused buffer) is
    overwritten by it; δ comes from a generator of its own (``seed``), so the entries drawn
    for the numbers do not change.  ``visits`` (a list) receives each layer's ``Visit``
    (None from a layer whose input is not finite on), with the cache, δ and backward result
    of the layers ``keep`` says — the adjoint test's first probe, at no cost — and every
    clean layer's cache (``Visit``): the analytic trace's forward, at no cost either.
    A layer ``trusted`` says (the checker's: every built-in layer, ``network.pure``) is not
    checked, only called as the checks would have called it first: the checks guard the
    protocol of layers cnngrad did not write, and the built-in ones are proven to pass them —
    every kind, float64 and float32, on random configs — by tests/test_structural.py.
    ``refuted`` (a list) receives ``(l, reason)`` for each layer not trusted that declares
    ``per_sample`` where ``per_sample_refuted`` finds it does not hold (not a failure: the
    declaration only buys speed; the caller withdraws it)."""
    rng = np.random.default_rng([seed, 0x5EED])
    failures: list[str] = []
    a: Array | None = x
    for i, layer in enumerate(layers):
        if a is None:  # not finite from here on: a numerical fault, reported as such
            break
        is_trusted = trusted is not None and trusted(layer)
        why, visit = _check_layer(layer, a, rng, keep is not None and keep(layer), is_trusted)
        if refuted is not None and visit is not None and not is_trusted and getattr(layer, "per_sample", False) is True:
            reason = per_sample_refuted(layer, a, visit.out)
            if reason:
                refuted.append((i, reason))
        a = None if visit is None else visit.out
        if visits is not None:
            visits.append(visit)
        failures += [f"layers[{i}] {kinds[i]}: {reason}" for reason in why]
    return failures
