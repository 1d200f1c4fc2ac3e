"""How often does cnngrad give a wrong verdict on random valid networks?

    python benchmarks/verdicts.py                      # 1,000 configs, seed 0, 2 processes
    python benchmarks/verdicts.py --n 200 --seed 3 --jobs 1
    python benchmarks/verdicts.py --only 17,404        # rerun some configs of a batch, verbosely
    python benchmarks/verdicts.py --kinds all --scope layer --json /tmp/v.json   # every layer kind

Config i of a batch is ``cnngrad.strategies.sample(default_rng([seed, i]), dtypes=DTYPES)``:
the builder behind the hypothesis strategy ``configs()``, fed by a numpy generator, so the
same ``--seed`` gives the same configs whatever the hypothesis version or the code around it
(hypothesis' own ``@seed`` does not pin them: it mixes constants found in local source files
into its draws).  Every layer kind, activation, both losses and both dtypes are drawn.

Each config is checked with ``cnngrad.check(raw)`` and its defaults (``workers=1`` inside the
pool: the numbers are the same bit for bit).  Every built-in layer is correct, so a FAIL is a
false FAIL unless proven otherwise: for each one the network is rebuilt in PyTorch
(``benchmarks/oracle.py``) and cnngrad's analytic gradient is compared with torch autograd —
agreeing, the FAIL is false, and its worst entries are differenced again by the oracle to
say why (a kink crossing cnngrad did not see, a step too large, rounding); disagreeing, it
is a real bug in a backward pass ("true FAIL").  Anything raised other than a ConfigError is
a traceback.  Prints one block per config that did not pass, then the summary line, and
writes every record to ``benchmarks/results-verdicts.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnngrad  # noqa: E402
from cnngrad.config import ConfigError  # noqa: E402
from cnngrad.strategies import DTYPES, KINDS, KNOWN_KINDS, sample  # noqa: E402

HERE = Path(__file__).resolve().parent
# cnngrad's analytic gradient is "right" when it is this close to torch autograd in float64
# (the exact derivative): float64 backwards differ from torch only by summation order
# (~1e-15); a float32 backward by its own rounding, so also when it is within 10x of
# torch's float32 autograd's error against the same exact derivative.
RIGHT = {"float64": 1e-8, "float32": 1e-4}
EPS = {"float64": 2.2e-16, "float32": 1.2e-7}
WORST_ENTRIES = 5  # entries of a falsely failing tensor differenced again by the oracle


CHAIN_KINDS = tuple(k for k in KINDS if k != "block")


def draw(seed: int, index: int, kinds: tuple[str, ...] = CHAIN_KINDS, **sizes: int) -> dict[str, Any]:
    """Config ``index`` of batch ``seed`` (``sizes``: configs()' max_layers, max_size, max_batch).
    Chains of the seed's kinds by default: the torch oracle here rebuilds those (blocks have their
    own torch rebuild, tests/test_torch_blocks.py).  With every kind (``--kinds all``: blocks,
    norms, depthwise and transposed convolutions…) a FAIL the oracle cannot rebuild is reported
    "unverified": to be looked at by hand, never counted as a pass."""
    return sample(np.random.default_rng([seed, index]), dtypes=DTYPES, min_dense=0, kinds=kinds, **sizes)


def batch_options(ap: argparse.ArgumentParser) -> None:
    """The options that say which batch of random configs to draw and how many processes check
    it (here and in ``bugs.py``)."""
    ap.add_argument("--n", type=int, default=1000, help="configs to draw (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="config i is drawn from default_rng([seed, i])")
    ap.add_argument("--jobs", type=int, default=2, help="processes checking configs at once (default 2)")
    ap.add_argument("--only", default="", help="comma-separated indices of the batch to check (default all)")
    ap.add_argument("--max-layers", type=int, default=5, help="configs(max_layers=...) (default 5)")
    ap.add_argument("--max-size", type=int, default=10, help="configs(max_size=...) (default 10)")
    ap.add_argument("--max-batch", type=int, default=3, help="configs(max_batch=...) (default 3)")


def batch(args: argparse.Namespace, kinds: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(index, raw config) of the batch ``batch_options`` named."""
    indices = [int(i) for i in args.only.split(",") if i.strip()] if args.only else range(args.n)
    sizes = {"max_layers": args.max_layers, "max_size": args.max_size, "max_batch": args.max_batch}
    return [(i, draw(args.seed, i, kinds, **sizes)) for i in indices]


def key_of(layer: int, tensor: str) -> str:
    """A row's tensor in the oracle's keys: ``layers.{i}.{name}``, or ``delta.{i}`` (∂C/∂ the
    input of layer i, ``delta.0`` = ∂C/∂x)."""
    return f"delta.{layer}" if tensor == "input" else f"layers.{layer}.{tensor}"


def check_one(job: tuple[int, dict, dict]) -> dict[str, Any]:
    """Check one config (``check``'s keyword arguments ``how``); on a FAIL, ask the oracle.
    Never raises."""
    index, raw, how = job
    rec: dict[str, Any] = {"index": index, "dtype": raw.get("dtype", "float64")}
    t0 = time.perf_counter()
    try:
        report = cnngrad.check(raw, workers=1, **how)
    except ConfigError as e:  # the strategy promised a valid config: reported, not a traceback
        rec.update(status="config error", message=str(e), config=raw)
    except Exception:
        rec.update(status="traceback", traceback=traceback.format_exc(), config=raw)
    else:
        rec["seconds"] = time.perf_counter() - t0
        classify(rec, raw, report)
    rec.setdefault("seconds", time.perf_counter() - t0)
    return rec


def classify(rec: dict[str, Any], raw: dict, report: Any) -> None:
    rows = report.rows
    rec["kinks"] = int(sum(r.kinks for r in rows))
    rec["worst_norm_rel"] = max((float(r.metrics.norm_rel) for r in rows), default=0.0)
    rec["rescued"] = [f"layers[{r.layer}] {r.tensor}: {r.note}" for r in rows if r.passed and "complex" in r.note]
    odd = [r for r in rows if r.status not in ("pass", "fail") or (r.checked == 0 and r.kinks > 0)]
    if report.error:
        rec.update(status="config error", message=report.error, config=raw)
    elif report.passed:
        rec["status"] = "unresolved" if odd else "pass"
        if odd:
            rec.update(config=raw, rows=[row_record(r) for r in odd])
    else:
        rec.update(config=raw, faults=list(report.faults), localisation=report.localisation)
        try:
            verify(rec, raw, report)
        except Exception:
            rec.update(status="unverified", oracle_error=traceback.format_exc())


def row_record(r: Any) -> dict[str, Any]:
    return {"layer": r.layer, "kind": r.kind, "tensor": r.tensor, "status": r.status, "checked": r.checked,
            "kinks": r.kinks, "norm_rel": float(r.metrics.norm_rel), "tol": r.tol, "note": r.note,
            "norm_rel_half": r.norm_rel_half, "diagnosis": [str(d) for d in r.diagnosis]}


def verify(rec: dict[str, Any], raw: dict, report: Any) -> None:
    """Compare each failing row's analytic gradient with torch autograd; explain false FAILs."""
    from oracle import TorchNet, norm_rel  # torch only when there is something to verify

    p = report.problem
    params = {f"layers.{i}.{n}": v for i, layer in enumerate(p.net.layers) for n, v in layer.params.items()}
    exact_net = TorchNet(raw, params, p.x, p.y, "float64")
    loss, exact = exact_net.autograd()
    native = exact if rec["dtype"] == "float64" else TorchNet(raw, params, p.x, p.y, rec["dtype"]).autograd()[1]
    rec["torch_loss"], rec["loss"] = loss, float(report.loss)
    verdicts, rows = [], []
    scale = max(float(np.max(np.abs(v), initial=0.0)) for v in exact.values())
    naive: dict[str, np.ndarray] | None = None
    for r in report.failures:
        if r.mode != "entries":  # a failing direction is checked entry by entry: that row decides
            continue
        key = key_of(r.layer, r.tensor)
        g = np.asarray(r.analytic, np.float64)
        e = exact[key].reshape(-1)[r.indices]
        err, floor = norm_rel(g, e), norm_rel(native[key].reshape(-1)[r.indices], e)
        # right: as close as the dtype allows, or (a gradient zero in truth) within rounding of the scale
        right = err <= max(RIGHT[rec["dtype"]], 10 * floor) or \
            float(np.max(np.abs(g - e), initial=0.0)) <= 64 * EPS[rec["dtype"]] * scale
        row = row_record(r) | {"analytic_vs_torch": err, "torch_native_vs_exact": floor}
        if not right and raw.get("loss") == "softmax_cross_entropy":  # the loss's own rounding?
            if naive is None:
                naive = TorchNet(raw, params, p.x, p.y, rec["dtype"], stable=False).autograd()[1]
            row["analytic_vs_torch_naive_ce"] = norm_rel(g, naive[key].reshape(-1)[r.indices])
            if row["analytic_vs_torch_naive_ce"] <= RIGHT[rec["dtype"]] < err:
                row["cause"] = ("saturated softmax: 1 − p_y rounds to a multiple of ε in cnngrad's cross-entropy, "
                                "forward and backward (as in F.cross_entropy, which the analytic matches to "
                                f"{row['analytic_vs_torch_naive_ce']:.0e}); the backprop is right, the loss "
                                "loses digits")
                right = True
        row["analytic_right"] = right
        if right:
            step = report.eps if report.method != "complex" else 1e-6  # no real difference at h = 1e-20
            row["entries"] = explain(exact_net, key, r, e, step)
            row.setdefault("cause", cause(row["entries"], row, report, scale))
        rows.append(row)
        verdicts.append(right)
    if report.faults and not rows:  # inf/NaN somewhere, no row failed: is the function finite?
        verdicts.append(bool(np.isfinite(loss)) and all(np.all(np.isfinite(v)) for v in exact.values()))
    rec["rows"] = rows
    rec["status"] = "false FAIL" if all(verdicts) else "true FAIL"


def explain(net: Any, key: str, r: Any, exact: np.ndarray, h: float) -> list[dict[str, Any]]:
    """The worst entries (by |analytic − numeric|, kink crossings left out) differenced again by
    the oracle in float64 at h and h/10, with the oracle's own kink detection."""
    ok = np.flatnonzero(~r.kink_mask)
    worst = ok[np.argsort(-np.abs(r.analytic[ok] - r.numeric[ok]), kind="stable")[:WORST_ENTRIES]]
    out = []
    for w in worst:
        flat = int(r.indices[w])
        fd_h, crossed_h = net.central(key, flat, h)
        fd_small, crossed_small = net.central(key, flat, h / 10)
        out.append({"at": [int(i) for i in np.unravel_index(flat, r.shape)], "analytic": float(r.analytic[w]),
                    "numeric": float(r.numeric[w]), "torch": float(exact[w]), "torch_fd_h": fd_h,
                    "torch_crossed_kink_h": crossed_h, "torch_fd_h10": fd_small,
                    "torch_crossed_kink_h10": crossed_small})
    return out


def cause(entries: list[dict[str, Any]], row: dict[str, Any], report: Any, scale: float) -> str:
    """Why a right gradient failed, from the oracle's re-differencing of the worst entries."""
    if not entries:
        return "no entry was checked"
    dtype = report.dtype
    h = report.eps if report.method != "complex" else 1e-6  # the step explain() differenced with
    noise = EPS["float64"] * max(1.0, abs(report.loss)) / h  # ~ rounding of a central difference
    truth = max(abs(e["torch"]) for e in entries)
    if truth <= 64 * EPS["float64"] * scale:
        worst = max(abs(e["analytic"]) for e in entries)
        return (f"zero in truth: the exact gradient is 0 up to rounding ({truth:.0e}, the largest gradient of the net "
                f"is {scale:.0e}); the analytic one is its {dtype} rounding noise ({worst:.0e}), the numeric one "
                "0 or noise, and norm rel compares noise with noise")
    if truth <= noise:
        return f"below the resolution floor: every |gradient| ≤ ε·|C|/h ≈ {noise:.0e} (tiny beside the loss)"
    if any(e["torch_crossed_kink_h"] for e in entries):
        return "a stencil crossed a kink that cnngrad did not see (the oracle's kink state moved)"
    if any(abs(e["numeric"] - e["torch_fd_h"]) > 100 * noise + 1e-6 * truth for e in entries):
        return "cnngrad's difference differs from a plain central difference at the same step (engine)"
    if dtype == "float32" and row["analytic_vs_torch"] <= 10 * max(row["torch_native_vs_exact"], RIGHT[dtype]):
        return (f"float32 rounding: the float32 backward is off the exact derivative by "
                f"{row['analytic_vs_torch']:.1e}, torch's float32 autograd by {row['torch_native_vs_exact']:.1e}: "
                f"past tol {row['tol']:.0e} "
                "(cancellation amplifies float32's ε)")
    if all(abs(e["torch_fd_h10"] - e["torch"]) < 0.1 * abs(e["torch_fd_h"] - e["torch"]) for e in entries):
        return "truncation: the difference converges at h/10 (a step too large for this curvature)"
    return "rounding: the difference does not improve at h/10"


def run(jobs: list[tuple], workers: int, one: Any = None) -> list[dict[str, Any]]:
    """Every job's record (``one(job)``, default ``check_one``), ``workers`` processes at once,
    in index order."""
    one = check_one if one is None else one
    records: list[dict[str, Any]] = []
    if workers <= 1:
        for n, job in enumerate(jobs, 1):
            records.append(one(job))
            progress(n, len(jobs))
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for n, f in enumerate(as_completed(futures), 1):
                records.append(f.result())
                progress(n, len(jobs))
    return sorted(records, key=lambda rec: rec["index"])


def progress(done: int, total: int) -> None:
    if done % 50 == 0 or done == total:
        print(f"  {done}/{total} checked", file=sys.stderr, flush=True)


def show(rec: dict[str, Any]) -> str:
    lines = [f"#{rec['index']} {rec['status'].upper()} ({rec['dtype']}, {rec.get('seconds', 0):.2f} s)",
             "  config: " + json.dumps(rec.get("config"), separators=(",", ":"))]
    for key in ("message", "traceback", "oracle_error", "localisation"):
        if rec.get(key):
            lines.append(f"  {key}: " + str(rec[key]).rstrip().replace("\n", "\n    "))
    lines += [f"  fault: {f}" for f in rec.get("faults", [])]
    for row in rec.get("rows", []):
        lines.append(f"  layers[{row['layer']}] {row['kind']} {row['tensor']}: {row['status']}, norm rel "
                     f"{row['norm_rel']:.3e} (tol {row['tol']:.0e}), {row['checked']} checked, {row['kinks']} kinks")
        if "analytic_vs_torch" in row:
            lines.append(f"    analytic vs torch autograd: norm rel {row['analytic_vs_torch']:.2e} "
                         f"({'right' if row['analytic_right'] else 'WRONG'}); torch native vs exact "
                         f"{row['torch_native_vs_exact']:.2e}")
        if row.get("cause"):
            lines.append(f"    cause: {row['cause']}")
        for e in row.get("entries", []):
            lines.append(f"    at {e['at']}: analytic {e['analytic']:.10g} numeric {e['numeric']:.10g} torch "
                         f"{e['torch']:.10g} torch-fd(h) {e['torch_fd_h']:.10g}{' KINK' * e['torch_crossed_kink_h']}"
                         f" torch-fd(h/10) {e['torch_fd_h10']:.10g}")
        if row.get("note"):
            lines.append(f"    note: {row['note']}")
    return "\n".join(lines)


STATUSES = ("pass", "false FAIL", "true FAIL", "unresolved", "unverified", "traceback", "config error")


def summary(records: list[dict[str, Any]], seconds: float) -> tuple[str, dict[str, int]]:
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    line = (f"{len(records)} configs: {counts['pass']} pass, {counts['false FAIL']} false FAIL, "
            f"{counts['true FAIL']} true FAIL, {counts['unresolved']} unresolved/all-kinks, "
            f"{counts['traceback']} tracebacks, {counts['config error']} config errors")
    if counts["unverified"]:
        line += f", {counts['unverified']} FAIL unverified (oracle failed)"
    kinks = sum(r.get("kinks", 0) > 0 for r in records)
    rescued = sum(bool(r.get("rescued")) for r in records)
    line += (f"; {kinks} with kink crossings left out, {rescued} rescued by the complex step, "
             f"{sum(r['dtype'] == 'float32' for r in records)} float32; {seconds:.0f} s")
    return line, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    batch_options(ap)
    ap.add_argument("--eps", type=float, default=None, help="check's step (default: the method's)")
    ap.add_argument("--method", default=None, help="check's method (default: central)")
    ap.add_argument("--directions", type=int, default=None, help="check's directions (default: off)")
    ap.add_argument("--fd-dtype", default=None, help="check's fd_dtype: float64 (default) or native")
    ap.add_argument("--scope", default=None, choices=["network", "layer"], help="check's scope (default: network)")
    ap.add_argument("--kinds", default="chain", choices=["chain", "all"],
                    help="layer kinds drawn: the seed's chains (default; every FAIL verified by torch) or all "
                         "(a FAIL the oracle cannot rebuild is 'unverified')")
    ap.add_argument("--json", default=str(HERE / "results-verdicts.json"), help="where to write the records")
    args = ap.parse_args(argv)
    how = {k: v for k, v in (("eps", args.eps), ("method", args.method), ("directions", args.directions),
                             ("fd_dtype", args.fd_dtype), ("scope", args.scope)) if v is not None}
    kinds = KNOWN_KINDS if args.kinds == "all" else CHAIN_KINDS
    jobs = [(i, raw, how) for i, raw in batch(args, kinds)]
    t0 = time.perf_counter()
    records = run(jobs, args.jobs)
    seconds = time.perf_counter() - t0
    for rec in records:
        if rec["status"] != "pass":
            print(show(rec) + "\n")
    line, counts = summary(records, seconds)
    causes = Counter(row["cause"].split(":")[0] for rec in records if rec["status"] == "false FAIL"
                     for row in rec["rows"] if row.get("cause"))
    for why, n in causes.most_common():
        print(f"  false FAIL rows, {why}: {n}")
    print(line)
    doc = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "n": len(records), "seed": args.seed, "jobs": args.jobs, "summary": line, "counts": counts,
           "seconds": seconds, "false_fail_causes": dict(causes), "versions": versions(), "configs": records}
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"records: {args.json}", file=sys.stderr)
    return 0 if counts["pass"] + counts["unresolved"] == len(records) else 1


def versions() -> dict[str, str]:
    out = {"cnngrad": cnngrad.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main())
