"""Does cnngrad catch a wrong backward in a random network, and name the layer it is in?

    python benchmarks/bugs.py                              # 1,000 configs of every kind, layer scope
    python benchmarks/bugs.py --scope network --seed 2 --max-layers 7 --json /tmp/b.json
    python benchmarks/bugs.py --only 17,40 --seed 2        # some configs of a batch again

The other half of ``verdicts.py`` (which proves correct code is not failed): config i of a
batch is ``verdicts.draw(seed, i, KNOWN_KINDS)``, and one layer of it (top level or inside a
block, drawn from ``default_rng([seed, i, 1])``) gets a wrong backward on purpose — its δ^{l-1},
or one of its parameter gradients, ``SCALE`` times too large (``--bug sign``: negated; ``--bug
entry``: one entry off by a tenth of the tensor's largest).  The oracle is the bug itself:
where it is and what it changes are known by construction.  The bug lives in the class's
``backward``, switched on by a mark on the one instance (``_bug``), so the copies the check
makes of the network (float64 and longdouble passes) carry it too.

Each config is checked twice, the same way: correct, then broken.  A bug can be caught only
where it moves a row the correct check resolves (passed there, entries compared) by more than
10 tol; else it is "invisible" — a gradient ~0 scaled is still ~0, and a δ scaled where every
gradient below it is 0 in truth changes no gradient of the network (the layer scope still sees
it: its link's own row moves).  A visible bug is

* caught — the check fails and names the broken layer; in the layer scope, no other layer's
  link fails (a block's input row may: it sums its paths' first links);
* misnamed — the check fails, but the localisation names another layer;
* blamed others — named right, but another layer's link row failed too (layer scope);
* unresolved — the check exits 0, but a row the bug moved is UNRESOLVED (not PASS: it says
  it cannot tell, e.g. every stencil crossed a kink; ``--strict`` fails it);
* MISSED — the check passes: a false PASS, the worst verdict there is.

Prints a block for every config that was not caught or invisible, then the counts; writes
every record to ``--json`` (default ``benchmarks/results-bugs.json``).  Exit 1 if any bug was
missed or misnamed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from verdicts import batch, batch_options, run  # noqa: E402

import cnngrad  # noqa: E402
from cnngrad.blocks import Block  # noqa: E402
from cnngrad.config import validate  # noqa: E402
from cnngrad.network import build  # noqa: E402
from cnngrad.refs import TensorRef  # noqa: E402
from cnngrad.strategies import KNOWN_KINDS  # noqa: E402

HERE = Path(__file__).resolve().parent
SCALE = 1.1  # the broken tensor, 10% too large: far past any tol, yet a plausible slip
STATUSES = ("caught", "blamed others", "misnamed", "MISSED", "unresolved", "invisible", "traceback")


def leaves(layers: list[Any], at: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Any]]:
    """Every layer that is not a block, with its index path (inside blocks too)."""
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Block):
            for p, path in enumerate(layer.paths):
                out += leaves(path, at + (i, p)) if path else []
        else:
            out.append((at + (i,), layer))
    return out


def wrong(g: Any, kind: str, where: float) -> Any:
    """The broken tensor: ``scale`` SCALE times g; ``sign`` −g; ``entry`` g with one entry (at
    the fraction ``where`` of its flat length) off by a tenth of g's largest (of 1e-3 if g is
    0: a wrong value where the truth is 0)."""
    if kind == "scale":
        return g * SCALE
    if kind == "sign":
        return -g
    out = np.array(g, copy=True)
    flat = out.reshape(-1)
    biggest = float(np.max(np.abs(flat), initial=0.0))
    flat[int(where * flat.size)] += 0.1 * biggest if biggest > 0 else 1e-3
    return out


def break_class(cls: type) -> Any:
    """Make ``cls.backward`` return a wrong tensor for a marked instance (``_bug = (tensor,
    kind, where)``, see ``wrong``); returns the original, to put back."""
    original = cls.backward

    def backward(self: Any, delta: Any, cache: Any) -> Any:
        d, grads = original(self, delta, cache)
        bug = getattr(self, "_bug", None)
        if bug is None:
            return d, grads
        tensor, kind, where = bug
        if tensor == "input":
            return wrong(d, kind, where), grads
        return d, {**grads, tensor: wrong(grads[tensor], kind, where)}

    cls.backward = backward  # type: ignore[method-assign]
    return original


def check_one(job: tuple) -> dict[str, Any]:
    """``(index, raw, how, seed[, kind])``: config ``index``'s record, the bug ``kind``
    (default ``scale``) in a layer drawn from ``default_rng([seed, index, 1])``.  Never raises."""
    index, raw, how, seed = job[:4]
    kind = job[4] if len(job) > 4 else "scale"
    rec: dict[str, Any] = {"index": index, "dtype": raw.get("dtype", "float64")}
    t0 = time.perf_counter()
    try:
        rec.update(broken_and_checked(raw, how, np.random.default_rng([seed, index, 1]), kind))
    except Exception:
        rec.update(status="traceback", traceback=traceback.format_exc(), config=raw)
    rec["seconds"] = time.perf_counter() - t0
    return rec


def broken_and_checked(raw: dict, how: dict, rng: np.random.Generator, how_wrong: str = "scale") -> dict[str, Any]:
    """Draw the layer and tensor to break, check the config correct and broken, classify."""
    net = build(validate(raw)).net
    where = [(path, layer) for path, layer in leaves(net.layers)]
    if not where:  # blocks of identity paths only
        return {"broken": "", "kind": "", "status": "invisible", "why": "no layer to break"}
    path, layer = where[int(rng.integers(len(where)))]
    tensors = ["input"] + sorted(layer.params)
    tensor = tensors[int(rng.integers(len(tensors)))]
    at = float(rng.random())  # where an ``entry`` bug sits in the tensor
    ref = TensorRef.delta(path) if tensor == "input" else TensorRef.param(path, tensor)
    out: dict[str, Any] = {"broken": str(ref), "kind": getattr(layer, "kind", type(layer).__name__)}
    correct = cnngrad.check(raw, workers=1, **how)
    # the mark goes on the instance the check builds: patch build to mark it
    import cnngrad.checker as checker

    original_build, originals = checker.build, {}

    def marked(config: Any) -> Any:
        problem = original_build(config)
        target = problem.net.layers[path[0]]
        if len(path) > 1:
            target = target.leaf(path[1:])
        target._bug = (tensor, how_wrong, at)
        return problem

    for cls in {type(leaf) for _, leaf in where}:
        originals[cls] = break_class(cls)
    checker.build = marked
    try:
        report = cnngrad.check(raw, workers=1, **how)
    finally:
        checker.build = original_build
        for cls, fn in originals.items():
            cls.backward = fn
    changed = visible(correct, report, ref if how.get("scope") == "layer" else None)
    if not changed:
        out.update(status="invisible", why="no row the correct check resolves moves by more than 10 tol")
        if report.passed:
            return out
    culprit = ".".join(str(i) for i in path)
    named = report.culprit is not None and str(report.culprit) == culprit
    links = [r for r in report.failures if "end to end" not in r.note]
    others = [str(r.ref) for r in links if r.ref.path != path and not sums_first(r.ref, path)]
    if report.passed:  # a moved row the check could not resolve says so: not a pass
        unsure = [r for r in report.rows if str(r.ref) in changed and not r.passed]
        status = "unresolved" if unsure else "MISSED"
    elif not named:
        status = "misnamed"
    elif how.get("scope") == "layer" and others:
        status = "blamed others"
    else:
        status = "caught"
    out.update(status=status, culprit=str(report.culprit))
    if status != "caught":  # what to look at by hand
        out.update(moved=changed, localisation=report.localisation, others=others, config=raw,
                   failures=[f"{r.ref}: {r.status}, norm rel {r.metrics.norm_rel:.1e}; {r.note}"
                             for r in report.rows if not r.passed])
    return out


def visible(correct: Any, broken: Any, only: TensorRef | None = None) -> list[str]:
    """The rows the bug moves where the correct check resolves them: passed there with entries
    compared, and the broken analytic gradient at the same entries more than 10 tol of the
    correct one's largest entry away from it, and by more than rounding (1e3·ε of the largest
    gradient of the network).  ``only``: that row alone (the layer scope's broken link; the
    links above it move too, but with the δ they were handed: consistently).  None: the bug is
    invisible to this check (e.g. a δ scaled where every gradient below it is 0 in truth)."""
    before = {(r.ref, r.note.startswith("end to end")): r for r in correct.rows}
    eps = float(np.finfo(np.dtype(correct.dtype)).eps)
    scale = max((float(np.max(np.abs(r.analytic), initial=0.0)) for r in correct.rows), default=0.0)
    out = []
    for r in broken.rows:
        if only is not None and (r.ref != only or r.note.startswith("end to end")):
            continue
        r0 = before.get((r.ref, r.note.startswith("end to end")))
        if r0 is None or not r0.passed or r0.mode != "entries" or r0.checked == 0 or r.mode != "entries":
            continue
        if not np.array_equal(r.indices, r0.indices):
            continue
        ok = ~r0.kink_mask
        g0, g1 = np.asarray(r0.analytic, np.float64)[ok], np.asarray(r.analytic, np.float64)[ok]
        moved = float(np.max(np.abs(g1 - g0), initial=0.0))
        if moved > 10 * r0.tol * float(np.max(np.abs(g0), initial=0.0)) and moved > 1e3 * eps * scale:
            out.append(str(r.ref))
    return out


def sums_first(ref: TensorRef, path: tuple[int, ...]) -> bool:
    """Is ``ref`` the input row of a block that sums the layer at ``path`` as the first link of
    one of its paths (nested blocks too)?  Its row fails with that link, rightly."""
    at = len(ref.path)
    return ref.is_delta and len(path) > at and path[:at] == ref.path and all(i == 0 for i in path[at + 1::2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    batch_options(ap)
    ap.add_argument("--scope", default="layer", choices=["network", "layer"], help="check's scope (default: layer)")
    ap.add_argument("--directions", type=int, default=None, help="check's directions (default: off)")
    ap.add_argument("--bug", default="scale", choices=["scale", "sign", "entry"],
                    help="the wrong tensor: 10%% too large (default), negated, or one entry off by a tenth of its "
                         "largest")
    ap.add_argument("--json", default=str(HERE / "results-bugs.json"), help="where to write the records")
    args = ap.parse_args(argv)
    how = {"scope": args.scope} | ({"directions": args.directions} if args.directions else {})
    jobs = [(i, raw, how, args.seed, args.bug) for i, raw in batch(args, KNOWN_KINDS)]
    t0 = time.perf_counter()
    records = run(jobs, args.jobs, check_one)
    for rec in records:
        if rec["status"] not in ("caught", "invisible"):
            print(json.dumps(rec, default=str)[:3000] + "\n")
    counts = Counter(rec["status"] for rec in records)
    line = (f"{len(records)} configs, one layer's backward broken in each ({args.bug}, {args.scope} scope): "
            + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + f"; {time.perf_counter() - t0:.0f} s")
    print(line)
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    Path(args.json).write_text(json.dumps({"command": command, "summary": line, "counts": dict(counts),
                                           "configs": records}, indent=1, default=str) + "\n", encoding="utf-8")
    return 1 if counts["MISSED"] or counts["misnamed"] else 0


if __name__ == "__main__":
    sys.exit(main())
