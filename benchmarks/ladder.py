"""The speed ladder of issue 14: five nets, cnngrad in both scopes against torch's gradcheck.

    PYTHONPATH=. python benchmarks/ladder.py                 # every rung, both scopes
    PYTHONPATH=. python benchmarks/ladder.py --rungs lenet,deep --scopes layer
    PYTHONPATH=. python benchmarks/ladder.py --quick         # lenet and deep, layer scope, no full gradcheck

Each cnngrad run is a whole process (``python -m cnngrad check CONFIG --scope S``): its wall
time (start-up included), entries differenced per second and peak RSS (``os.wait4``).
``torch.autograd.gradcheck`` runs on the same function and numbers (``torch_peer``), with
one torch thread; where a full run would pass ``--gradcheck-budget`` seconds (default 120),
it is timed on a measured subset of the entries (a slice of x, the rest held constant: the
same two whole-network forward passes an entry) and extrapolated, and marked ``~``.
``--directions 1`` is timed against ``gradcheck(fast_mode=True)``: first calls (cnngrad's
check's own seconds from its JSON report in a fresh process, start-up left out as fast_mode
has none; fast_mode's first call in its process), and warm, the two alternating in one
process, WARM_REPEATS rounds, medians (this machine drifts by ±30% between processes).

The floor of a rung: the FLOPs its scope must spend — two evaluations (central differences)
of everything an entry changes, in the perturbed layer alone (layer scope) or in every layer
from it to the loss (network scope, windows growing with each layer's kernel, clipped to the
map: an entry by a border changes less) — at the
matmul rate measured here (float64, one core per worker).  Results go to
``benchmarks/results-ladder.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from cnngrad.config import load  # noqa: E402
from cnngrad.finite_diff.workers import default_workers  # noqa: E402
from cnngrad.network import Problem, build  # noqa: E402

RUNGS: dict[str, Path] = {
    "lenet": ROOT / "configs" / "lenet.yaml",
    "cifar": HERE / "ladder-cifar.yaml",
    "vgg": HERE / "ladder-vgg.yaml",
    "wide64": HERE / "ladder-wide64.yaml",
    "deep": HERE / "ladder-deep.yaml",
}


# ---------------------------------------------------------------------------- cnngrad runs

PYCACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "cnngrad-ladder-pycache"


WARM_REPEATS = 9  # warm calls timed, cnngrad's and fast_mode's (the median kept): a shared machine's
# pauses move a median of 3 by a quarter

def child_env() -> dict[str, str]:
    """This tree first on the path, and bytecode cached (``PYTHONPYCACHEPREFIX``, outside the
    tree) as for an installed package — a ``PYTHONDONTWRITEBYTECODE`` environment would
    otherwise compile every module of cnngrad at each start (~0.15 s)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def start_up(repeats: int = 5) -> float:
    """Median wall seconds of ``python -c "import cnngrad.cli"`` (the command's imports),
    after one run that writes the bytecode cache."""
    cmd = [sys.executable, "-c", "import cnngrad.cli"]
    subprocess.run(cmd, env=child_env(), cwd=str(ROOT), check=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=child_env(), cwd=str(ROOT), check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def median_run(config: Path, scope: str, workers: int, extra: list[str], timeout: float,
               repeats: int) -> dict[str, Any]:
    """``run_cnngrad`` ``repeats`` times: the run of median wall time, with every time kept."""
    runs = []
    for _ in range(repeats):
        runs.append(run_cnngrad(config, scope, workers, extra, timeout))
        if runs[-1].get("seconds") is None:  # a timeout or an error: not again
            return runs[-1]
    done = list(runs)
    done.sort(key=lambda r: r["seconds"])
    best = dict(done[len(done) // 2])
    best["all_seconds"] = [r["seconds"] for r in runs]
    best["all_check_seconds"] = [r["check_seconds"] for r in runs]
    return best


def run_cnngrad(config: Path, scope: str, workers: int, extra: list[str], timeout: float) -> dict[str, Any]:
    """One ``cnngrad check`` process: wall seconds, peak RSS (MB, from ``os.wait4``: the
    process and the workers it waited for), its verdict and the entries it differenced."""
    import tempfile

    cmd = [sys.executable, "-m", "cnngrad", "check", str(config), "--scope", scope, "--workers", str(workers),
           "--format", "json", "--max-params", "1e9", *extra]
    env = child_env()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(ROOT))
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                return {"scope": scope, "timeout": timeout, "seconds": None}
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, message = out.read(), err.read().decode(errors="replace")
    if proc.returncode not in (0, 1):
        return {"scope": scope, "error": message[-500:], "seconds": None}
    report = json.loads(text)["configs"][0]
    entries = sum(r["checked"] + r["kinks"] for r in report["records"] if r["mode"] == "entries")
    directions = sum(r["checked"] + r["kinks"] for r in report["records"] if r["mode"] == "directions")
    return {"scope": scope, "seconds": seconds, "check_seconds": report["seconds"], "passed": report["passed"],
            "entries": entries, "directions": directions, "entries_per_s": entries / seconds,
            "kinks": sum(r["kinks"] for r in report["records"]), "peak_rss_mb": usage.ru_maxrss / 1024}


# ---------------------------------------------------------------------------- gradcheck


def gradcheck_times(problem: Problem, budget: float, fast: bool, config: Path | None = None,
                    workers: int = 1) -> dict[str, Any]:
    """torch.autograd.gradcheck on the same function, one torch thread.  A slice of x is
    checked first (the rest held constant: the same two whole-network forward passes an
    entry) and its time extrapolated by entries; the full gradcheck runs only if that
    estimate fits ``budget`` seconds (else the row is marked ``extrapolated``)."""
    import torch
    from torch_peer import TorchPeer

    torch.set_num_threads(1)
    peer = TorchPeer(problem)
    leaves = peer.leaves()
    total = sum(t.numel() for t in leaves)
    out: dict[str, Any] = {"entries": total}
    if fast:  # its first call in this process (as cnngrad's check in a fresh process), then warm: the median
        # of WARM_REPEATS, each round alternating with cnngrad's --directions 1 in both scopes (``config``)
        # in this same process, so that the machine's drift (±30% here) moves both alike
        from cnngrad import check

        def fast_mode() -> bool:
            return torch.autograd.gradcheck(peer.loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True,
                                            raise_exception=False)

        scopes = ("network", "layer") if config is not None else ()
        times: dict[str, list[float]] = {"fast": [], **{scope: [] for scope in scopes}}
        oks, passed = [], {}
        for r in range(1 + WARM_REPEATS):
            t0 = time.perf_counter()
            oks.append(fast_mode())
            times["fast"].append(time.perf_counter() - t0)
            for scope in scopes:
                if r == 0:
                    check(str(config), scope=scope, directions=1, workers=workers)  # its warm-up
                t0 = time.perf_counter()
                passed[scope] = check(str(config), scope=scope, directions=1, workers=workers).passed
                times[scope].append(time.perf_counter() - t0)
        out.update(fast_first_seconds=times["fast"][0], fast_seconds=float(np.median(times["fast"][1:])),
                   fast_passed=all(oks), all_fast_seconds=times["fast"])
        out["cnngrad_warm"] = {scope: {"scope": scope, "seconds": float(np.median(times[scope][1:])),
                                       "all_seconds": times[scope][1:], "passed": passed[scope]} for scope in scopes}
    if budget <= 0:  # fast_mode only (--update-directions)
        return out
    with torch.no_grad():  # one whole-network forward, to size the measured subset
        t0 = time.perf_counter()
        for _ in range(3):
            peer.loss(*leaves)
        forward = (time.perf_counter() - t0) / 3
    m = int(min(leaves[0].numel(), max(20, min(budget, 60.0) / 8 / (2 * forward))))  # ~budget/8 s of work
    x_flat = leaves[0].detach().reshape(-1)
    rest = [t.detach() for t in leaves[1:]]

    def on_slice(sub: Any) -> Any:
        x = torch.cat([sub, x_flat[m:]]).reshape(leaves[0].shape)
        return peer.loss(x, *rest)

    sub = x_flat[:m].clone().requires_grad_(True)
    t0 = time.perf_counter()
    ok = torch.autograd.gradcheck(on_slice, (sub,), eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False)
    measured = time.perf_counter() - t0
    estimate = measured * total / m
    out.update(measured_entries=m, measured_seconds=measured, passed_subset=bool(ok))
    if estimate > budget:
        out.update(seconds=estimate, extrapolated=True)
        return out
    t0 = time.perf_counter()
    ok = torch.autograd.gradcheck(peer.loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False)
    out.update(seconds=time.perf_counter() - t0, passed=bool(ok), extrapolated=False, estimate=estimate)
    return out


def update_directions(path: Path, args: argparse.Namespace) -> None:
    """Redo the --directions 1 / fast_mode columns of a stored results file, cold and warm."""
    results = json.loads(path.read_text())
    for name, rung in results["rungs"].items():
        config = ROOT / rung["config"]
        for scope, key in (("network", "directions"), ("layer", "directions_layer")):
            if key in rung and rung[key].get("seconds") is None:
                continue  # it timed out in the full run: not again
            print(f"{name}: cnngrad --directions 1 --scope {scope} …", file=sys.stderr)
            rung[key] = median_run(config, scope, args.workers, ["--directions", "1"], args.directions_timeout,
                                   args.repeats)
        fast = gradcheck_in_child(config, 0.0, True, 600, args.workers)
        rung.setdefault("gradcheck", {}).update({k: v for k, v in fast.items() if "fast" in k})
        for scope, key in (("network", "directions"), ("layer", "directions_layer")):
            if scope in fast.get("cnngrad_warm", {}):
                rung[key + "_warm"] = fast["cnngrad_warm"][scope]
        rung["directions_load"] = os.getloadavg()
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(table_row(name, rung), file=sys.stderr)


def gradcheck_in_child(config: Path, budget: float, fast: bool, timeout: float, workers: int = 1) -> dict[str, Any]:
    """``gradcheck_times`` in its own process, so torch's memory never inflates this one
    (whose size every cnngrad child's peak RSS starts from)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gradcheck-of", str(config),
           "--gradcheck-budget", str(budget), "--workers", str(workers)] + ([] if fast else ["--no-directions"])
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=str(ROOT))
    if done.returncode != 0:
        return {"error": done.stderr.decode(errors="replace")[-500:]}
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------- floors


def matmul_rate() -> float:
    """FLOP/s of one core on a float64 matmul (the best of a few 384×384 products)."""
    from threadpoolctl import threadpool_limits

    a, b = np.random.default_rng(0).standard_normal((2, 384, 384))
    best = math.inf
    with threadpool_limits(1, user_api="blas"):
        for _ in range(7):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * 384**3 / best


def _layer_costs(problem: Problem) -> list[dict[str, Any]]:
    """Per layer: kind, input/output shape per sample, and MACs per output entry (fan-in)."""
    out, shape = [], tuple(problem.config.in_shape)
    for spec, layer in zip(problem.net.specs, problem.net.layers):
        o = spec.options
        if spec.kind == "conv":
            fan = shape[0] * int(np.prod(layer.k))
        elif spec.kind == "dense":
            fan = shape[0]
        elif spec.kind == "pool":
            fan = int(np.prod(layer.k))
        elif spec.kind == "activation":
            fan = 1
        else:
            fan = 0
        out.append({"kind": spec.kind, "in": shape, "out": tuple(layer.out_shape), "fan": fan, "opts": o,
                    "layer": layer})
        shape = tuple(layer.out_shape)
    return out


def _grow(c: dict[str, Any], h: int, w: int, channels: int) -> tuple[int, int, int]:
    """The window of c's output an input window (channels, h, w) can change."""
    if c["kind"] in ("conv", "pool"):
        layer = c["layer"]
        (kh, kw), (sh, sw) = layer.k, layer.s
        d = getattr(layer, "d", (1, 1))
        h2 = min(c["out"][1], math.ceil((h + (kh - 1) * d[0]) / sh))
        w2 = min(c["out"][2], math.ceil((w + (kw - 1) * d[1]) / sw))
        return (c["out"][0] if c["kind"] == "conv" else channels), h2, w2
    if c["kind"] == "activation":
        return channels, h, w
    return -1, -1, -1  # flatten / dense: everything


def _suffix_flops(costs: list[dict[str, Any]], start: int, window: tuple[int, int, int] | None) -> float:
    """FLOPs (2 per MAC) of layers start… for one sample, the changed part only."""
    flops, win = 0.0, window
    for c in costs[start:]:
        if win is None or win[0] < 0 or len(c["in"]) != 3:
            flops += 2 * int(np.prod(c["out"])) * c["fan"]
            win = None
            continue
        win = _grow(c, win[1], win[2], win[0])
        size = int(np.prod(c["out"])) if win[0] < 0 else win[0] * win[1] * win[2]
        flops += 2 * size * c["fan"]
    return flops


def network_floors(problem: Problem) -> dict[str, float]:
    """The network scope's FLOPs tensor by tensor ("x", "layers[l].W", …): two evaluations
    of every layer an entry changes, from its own to the loss."""
    costs, n = _layer_costs(problem), problem.config.batch
    out: dict[str, float] = {}
    for l, c in enumerate(costs):
        if l == 0:  # an input entry: one sample; what it changes, window by window, position by position
            out["x"] = 2 * n * int(c["in"][0]) * _input_flops(costs) if len(c["in"]) == 3 else \
                2 * n * int(np.prod(c["in"])) * _suffix_flops(costs, 0, None)
        for name, P in c["layer"].params.items():
            first, whole_win = _first_flops(c, name)
            rest = _suffix_flops(costs, l + 1, whole_win) if l + 1 < len(costs) else 0.0
            out[f"layers[{l}].{name}"] = 2 * P.size * n * (first + rest)
    return out


def _reach(c: dict[str, Any], lo: np.ndarray, hi: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The outputs [lo', hi'] along ``axis`` (0: rows, 1: columns) of layer c that an input
    change confined to [lo, hi] can reach, clipped to the map (an entry by a border changes less;
    a dilated kernel's window may hold a row by the border that no tap of it reads)."""
    if c["kind"] not in ("conv", "pool"):
        return lo, hi
    layer = c["layer"]
    k, s = layer.k[axis], layer.s[axis]
    p, d = getattr(layer, "p", (0, 0))[axis], getattr(layer, "d", (1, 1))[axis]
    size = c["out"][1 + axis]
    first = -((-(lo + p - (k - 1) * d)) // s)  # ceil: output i reads padded i·s … i·s + (k−1)·d
    return np.maximum(first, 0), np.minimum((hi + p) // s, size - 1)


def _input_flops(costs: list[dict[str, Any]]) -> float:
    """FLOPs (2 per MAC) of every layer for one entry of each position of one input channel,
    summed over the positions: the changed part only — a window growing with each kernel,
    clipped to the map (a corner entry of a 32x32 map changes a quarter of what a central one
    does through a conv), whole maps from the first layer that mixes them on; nothing after a
    layer no window of whose outputs reads the entry (a stride's untiled last rows).  Rows and
    columns reach apart, so a layer's sum over positions is Σ_y rows × Σ_x columns."""
    H, W = costs[0]["in"][1:]
    ly, hy = np.arange(H), np.arange(H)
    lx, hx = np.arange(W), np.arange(W)
    live_y, live_x = np.ones(H, dtype=bool), np.ones(W, dtype=bool)
    flops, channels, local = 0.0, 1, True
    for c in costs:
        if local and len(c["in"]) == 3 and c["kind"] in ("conv", "pool", "activation"):
            ly, hy = _reach(c, ly, hy, 0)
            lx, hx = _reach(c, lx, hx, 1)
            live_y, live_x = live_y & (hy >= ly), live_x & (hx >= lx)
            channels = c["out"][0] if c["kind"] == "conv" else channels
            rows, cols = np.where(live_y, hy - ly + 1, 0), np.where(live_x, hx - lx + 1, 0)
            flops += 2 * channels * c["fan"] * float(np.sum(rows)) * float(np.sum(cols))
            continue
        local = False
        flops += 2 * int(np.prod(c["out"])) * c["fan"] * int(np.sum(live_y)) * int(np.sum(live_x))
    return flops


def _first_flops(c: dict[str, Any], name: str) -> tuple[float, tuple[int, int, int] | None]:
    """A parameter entry, every sample: FLOPs in its own layer (one output channel of a
    conv W or tied b, one unit otherwise) and the window of that layer's output it moves."""
    if c["kind"] == "conv":
        return 2 * c["out"][1] * c["out"][2] * (c["fan"] if name == "W" else 1), (1, c["out"][1], c["out"][2])
    return 2 * c["fan"], None


def floors(problem: Problem) -> dict[str, float]:
    """FLOPs each scope must spend: two evaluations of what every entry changes."""
    costs, n = _layer_costs(problem), problem.config.batch
    layer = 0.0
    for l, c in enumerate(costs):
        # an input entry of layer l (δ^{l-1}): one sample; its window in layer l, clipped to the map
        layer += 2 * n * (int(c["in"][0]) * _input_flops(costs[l:l + 1]) if len(c["in"]) == 3 else
                          int(np.prod(c["in"])) * _suffix_flops(costs[l:l + 1], 0, None))
        for name, P in c["layer"].params.items():
            layer += 2 * P.size * n * _first_flops(c, name)[0]
    return {"network": sum(network_floors(problem).values()), "layer": layer}


# ---------------------------------------------------------------------------- the table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated subset of {', '.join(RUNGS)}")
    ap.add_argument("--scopes", default="layer,network", help="layer, network or both")
    ap.add_argument("--network-rungs", default="lenet,cifar,vgg,deep",
                    help="the rungs the network scope runs on (it takes tens of minutes on wide64)")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--gradcheck-budget", type=float, default=120.0,
                    help="seconds a full gradcheck may take before it is extrapolated from a subset")
    ap.add_argument("--no-gradcheck", action="store_true")
    ap.add_argument("--no-directions", action="store_true", help="skip --directions 1 vs fast_mode")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a cnngrad run is given up")
    ap.add_argument("--quick", action="store_true", help="lenet and deep, layer scope, gradcheck budget 10 s")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs of each layer-scope and --directions check (the median is kept)")
    ap.add_argument("--directions-timeout", type=float, default=120.0,
                    help="seconds before a --directions 1 run is given up (a direction that crosses a kink "
                         "falls back to every entry)")
    ap.add_argument("--output", default=str(HERE / "results-ladder.json"))
    ap.add_argument("--render", metavar="JSON", help="print the table of a stored results file and exit")
    ap.add_argument("--readme", metavar="JSON", help="print the README's table of a stored results file and exit")
    ap.add_argument("--update-directions", metavar="JSON",
                    help="redo the --directions 1 and fast_mode columns of a stored results file (cold and warm)")
    ap.add_argument("--gradcheck-of", metavar="CONFIG", help=argparse.SUPPRESS)  # the child of gradcheck_in_child
    args = ap.parse_args(argv)
    if args.gradcheck_of:
        times = gradcheck_times(build(load(args.gradcheck_of)), args.gradcheck_budget, fast=not args.no_directions,
                                config=Path(args.gradcheck_of), workers=args.workers)
        print(json.dumps(times))
        return 0
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    if args.update_directions:
        update_directions(Path(args.update_directions), args)
        return 0
    if args.readme:
        print(readme_table(json.loads(Path(args.readme).read_text())))
        return 0
    if args.quick:
        args.rungs, args.scopes, args.gradcheck_budget = "lenet,deep", "layer", 10.0
    rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        ap.error(f"unknown rungs {unknown}; known: {', '.join(RUNGS)}")
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    rate = matmul_rate()
    boot = start_up()
    print(f"matmul rate: {rate / 1e9:.2f} GFLOP/s per core; {args.workers} workers; start-up {boot:.2f} s",
          file=sys.stderr)
    results: dict[str, Any] = {"machine": {"cores": default_workers(), "workers": args.workers,
                                           "matmul_gflops_per_core": rate / 1e9, "start_up_seconds": boot,
                                           "load_before": os.getloadavg()}, "rungs": {}}
    for name in rungs:
        config = RUNGS[name]
        problem = build(load(str(config)))
        fl = floors(problem)
        rung: dict[str, Any] = {"config": str(config.relative_to(ROOT)), "scopes": {}}
        for scope in scopes:
            if scope == "network" and name not in args.network_rungs.split(","):
                continue
            print(f"{name}: cnngrad --scope {scope} …", file=sys.stderr)
            repeats = args.repeats if scope == "layer" else 1  # the network scope takes minutes on the big rungs
            r = median_run(config, scope, args.workers, [], args.timeout, repeats)
            r["floor_flops"] = fl[scope]
            r["floor_seconds"] = fl[scope] / (rate * args.workers)
            rung["scopes"][scope] = r
        if not args.no_directions:
            for scope, key in (("network", "directions"), ("layer", "directions_layer")):
                print(f"{name}: cnngrad --directions 1 --scope {scope} …", file=sys.stderr)
                rung[key] = median_run(config, scope, args.workers, ["--directions", "1"], args.directions_timeout,
                                       args.repeats)
        if not args.no_gradcheck:
            print(f"{name}: torch gradcheck …", file=sys.stderr)
            rung["gradcheck"] = gradcheck_in_child(config, args.gradcheck_budget, not args.no_directions,
                                                   10 * args.gradcheck_budget + 600, args.workers)
            for scope, key in (("network", "directions"), ("layer", "directions_layer")):
                if scope in rung["gradcheck"].get("cnngrad_warm", {}):
                    rung[key + "_warm"] = rung["gradcheck"]["cnngrad_warm"][scope]
        rung["load_after"] = os.getloadavg()
        results["rungs"][name] = rung
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")  # each rung as it is done
        print(table_row(name, rung), file=sys.stderr)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s" if x < 100 else f"{x:,.0f} s"


def table_row(name: str, rung: dict[str, Any]) -> str:
    g = rung.get("gradcheck", {})
    cells = [name, f"{g.get('entries', '')}"]
    for scope in ("layer", "network"):
        r = rung["scopes"].get(scope)
        if r is None:
            cells += ["", "", "", "", ""]
            continue
        if r.get("seconds") is None:
            cells += [f"> {r.get('timeout', 0):.0f} s (timeout)", "", "", "", ""]
            continue
        ratio = (g["seconds"] / r["seconds"]) if g.get("seconds") else None
        cells += [_s(r["seconds"]) + ("" if r.get("passed", True) else " FAIL"), f"{r.get('entries_per_s', 0):,.0f}",
                  f"{r.get('peak_rss_mb', 0):.0f} MB",
                  _times(r.get("check_seconds", r["seconds"]) / r["floor_seconds"]),
                  f"{ratio:.0f}x" if ratio else ""]
    gc = _s(g.get("seconds")) if g else ""
    if g.get("extrapolated"):
        gc = "~" + gc + f" (from {g['measured_entries']} entries)"
    elif g and not g.get("passed", True):
        gc += " FAILS"
    fast, fast_first = g.get("fast_seconds"), g.get("fast_first_seconds")
    cells.append(gc)
    # --directions 1 against fast_mode in-process both, first call against first call (the check's own
    # seconds, start-up left out) and warm against warm
    for key in ("directions", "directions_layer"):
        d, w = rung.get(key), rung.get(key + "_warm")
        if d and d.get("seconds") is None:
            cells += [f"> {d.get('timeout', 0):.0f} s (timeout)", ""]
            continue
        first, warm = (d or {}).get("check_seconds"), (w or {}).get("seconds")
        cells += [f"{_ms(first)} / {_ms(warm)}", f"{_x(fast_first, first)} / {_x(fast, warm)}"]
    cells.append(f"{_ms(fast_first)} / {_ms(fast)}")
    return "| " + " | ".join(cells) + " |"


def _times(ratio: float) -> str:
    """A ratio as shown: one decimal below 10 (0.58x was shown as 0x), none above."""
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds else "—"


def _x(peer: float | None, seconds: float | None) -> str:
    return f"{peer / seconds:.2f}x" if peer and seconds else "—"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = ("| net | entries (x + params) | layer scope | entries/s | peak RSS | vs floor | vs gradcheck "
            "| network scope | entries/s | peak RSS | vs floor | vs gradcheck | gradcheck "
            "| --directions 1 (network): first / warm | fast_mode / it | --directions 1 (layer): first / warm "
            "| fast_mode / it | fast_mode: first / warm |")
    sep = "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"
    boot = f"; start-up (import cnngrad.cli) {m['start_up_seconds']:.2f} s" if "start_up_seconds" in m else ""
    load = f"; load average {m['load_before'][0]:.1f} at the start" if "load_before" in m else ""
    lines = [f"{m['workers']} workers on {m['cores']} cores; matmul {m['matmul_gflops_per_core']:.2f} GFLOP/s a core"
             f"{boot}{load}. Times are whole processes (start-up included; the layer scope and --directions the "
             "median of the runs made); 'vs floor' is the check's own seconds over the floor's; ~ marks a "
             "gradcheck time extrapolated from the entries measured; --directions 1 and fast_mode are in-process "
             "seconds.", "", head, sep]
    lines += [table_row(name, rung) for name, rung in results["rungs"].items()]
    return "\n".join(lines)


LABELS = {"lenet": "LeNet", "cifar": "CIFAR-style, 2 conv 3x3 + relu + max pool, 3x32x32",
          "vgg": "VGG-style, 5 conv 3x3, 3x32x32", "wide64": "3x64x64, 3 conv up to 128 filters",
          "deep": "deep and narrow, 12 conv of 8 filters, 3x32x32"}


def readme_table(results: dict[str, Any]) -> str:
    """The README's table: whole-process seconds (the check's own in brackets), the ratios
    to gradcheck, and --directions 1 (both scopes) against fast_mode, in-process."""
    def ms(d: dict[str, Any] | None) -> str:
        if not d:
            return "—"
        if d.get("seconds") is None:
            return f"> {d.get('timeout', 0):.0f} s"
        return f"{d['check_seconds'] * 1000:,.0f} ms"

    def warm(d: dict[str, Any] | None) -> str:  # a decimal below 100 ms: LeNet's 7.6 against 8.9 ms showed as 8 and 9
        if not d:
            return "—"
        return f"{d['seconds'] * 1000:.1f} ms" if d["seconds"] < 0.1 else f"{d['seconds'] * 1000:,.0f} ms"

    lines = ["| net | entries (x + params) | layer scope | vs gradcheck | network scope | vs gradcheck | gradcheck "
             "| `--directions 1`, network, layer: first call | `fast_mode`: first call "
             "| `--directions 1`, network, layer: warm | `fast_mode`: warm |", "|" + "---|" * 11]
    for name, rung in results["rungs"].items():
        g = rung.get("gradcheck", {})
        cells = [LABELS.get(name, name), f"{g.get('entries', 0):,}"]
        for scope in ("layer", "network"):
            r = rung["scopes"].get(scope)
            if r is None or r.get("seconds") is None:
                cells += ["not run" if r is None else f"> {r.get('timeout', 0):.0f} s", ""]
                continue
            cells += [f"{_s(r['seconds'])} ({_s(r['check_seconds'])})" + ("" if r.get("passed", True) else " FAIL"),
                      f"{g['seconds'] / r['seconds']:,.0f}x" if g.get("seconds") else ""]
        gc = _s(g.get("seconds")) if g else ""
        cells.append(("~" + gc) if g.get("extrapolated") else gc)
        cells.append(f"{ms(rung.get('directions'))}, {ms(rung.get('directions_layer'))}")
        first, fast = g.get("fast_first_seconds"), g.get("fast_seconds")
        cells.append(f"{first * 1000:,.0f} ms" if first else "")
        cells.append(f"{warm(rung.get('directions_warm'))}, {warm(rung.get('directions_layer_warm'))}")
        cells.append(warm({"seconds": fast}) if fast else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
