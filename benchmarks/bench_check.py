"""cnngrad against torch on the same network with the same weights, in one process.

    python benchmarks/bench_check.py                 # lenet, table on stdout
    python benchmarks/bench_check.py --json out.json --runs 5 --config strided

Runs, alternating cnngrad and torch each round, and reports medians and ratios:

* full check: every parameter and input entry by central differences
  (``cnngrad.check``) vs ``torch.autograd.gradcheck`` (fast_mode=False) on the loss;
* directional: ``cnngrad.check(directions=1)`` vs ``gradcheck(fast_mode=True)``;
* analytic forward + backward: ``Network.gradients`` vs torch forward + ``backward()``;
* the whole ``cnngrad check CONFIG`` command, wall time, in a subprocess;
* peak memory of a full check (tracemalloc: numpy reports its allocations there).

Needs torch (``pip install torch==2.13.0``); it is not a cnngrad dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cnngrad  # noqa: E402
from cnngrad import config as cfg  # noqa: E402
from cnngrad.network import build  # noqa: E402

try:
    import torch
    from torch_peer import TorchPeer
except ImportError:  # pragma: no cover - the peer is optional
    torch = None


def timed(f: Callable[[], Any]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def peak_memory_mb(config: cfg.Config) -> float:
    """Peak of numpy's (and Python's) allocations during a full check in this process."""
    tracemalloc.start()
    cnngrad.check(config, workers=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def max_rss_mb(ref: str) -> float:
    """Max resident set of the `cnngrad check` command (the largest of it and its workers).
    Linux keeps a process's RSS high-water mark across fork and exec, so the command is
    started from a small intermediate interpreter, which reads its children's rusage."""
    code = ("import resource, subprocess, sys\n"
            "subprocess.run([sys.executable, '-m', 'cnngrad', 'check', sys.argv[1]], stdout=subprocess.DEVNULL)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, ref], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="lenet", help="config path or shipped name [lenet]")
    ap.add_argument("--runs", type=int, default=3, help="rounds of the full check comparison [3]")
    ap.add_argument("--fb-runs", type=int, default=200, help="rounds of forward+backward [200]")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if torch is None:
        print("torch is not installed: pip install torch==2.13.0", file=sys.stderr)
        return 2

    config = cfg.load(args.config)
    problem = build(config)
    peer = TorchPeer(problem)
    n_entries = problem.x.size + sum(p.size for l in problem.net.layers for p in l.params.values())
    leaves = peer.leaves()

    # ------------------------------------------------------------ full check vs gradcheck
    ours, theirs = [], []
    for _ in range(args.runs):
        report = None

        def run_ours() -> None:
            nonlocal report
            report = cnngrad.check(config)

        cnngrad.check(config)  # warm (caches, page tables, CPU clocks), as the 17 s gradcheck is
        ours.append(timed(run_ours))
        assert report is not None and report.passed, "cnngrad's check failed on the benchmark net"
        ok: dict[str, bool] = {}

        def run_theirs(ok: dict[str, bool] = ok) -> None:
            ok["v"] = torch.autograd.gradcheck(peer.loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=False)

        theirs.append(timed(run_theirs))
        assert ok["v"], "torch gradcheck failed on the benchmark net"

    # ------------------------------------------------------------ directional vs fast_mode
    # gradcheck's fast_mode compares one random projection u·J·v; cnngrad's --directions 1
    # compares v·∇C along one random unit direction per tensor
    dir_ours, dir_theirs = [], []
    for _ in range(max(5, args.runs)):
        cnngrad.check(config, directions=1)
        dir_ours.append(timed(lambda: cnngrad.check(config, directions=1)))
        dir_theirs.append(timed(lambda: torch.autograd.gradcheck(
            peer.loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)))

    # ------------------------------------------------------------ forward + backward
    net, x, y = problem.net, problem.x, problem.y
    fb_ours, fb_theirs = [], []
    # alternate in blocks, not call by call: each framework's idle worker threads would
    # otherwise spin against the other's on 2 cores and slow both
    block = 25
    for _ in range(max(1, args.fb_runs // block)):
        for _ in range(5):  # re-warm after the other framework's block
            net.gradients(x, y)
        fb_ours += [timed(lambda: net.gradients(x, y)) for _ in range(block)]
        for _ in range(5):
            peer.forward_backward(leaves)
        fb_theirs += [timed(lambda: peer.forward_backward(leaves)) for _ in range(block)]

    # ------------------------------------------------------------ the whole command
    ref = args.config if Path(args.config).exists() else args.config
    cli = []
    for _ in range(3):
        cli.append(timed(lambda: subprocess.run([sys.executable, "-m", "cnngrad", "check", ref],
                                                check=True, stdout=subprocess.DEVNULL)))

    results = {
        "config": config.name,
        "entries": int(n_entries),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
        "full_check_ms": {"cnngrad": median_ms(ours), "torch_gradcheck": median_ms(theirs),
                          "ratio": statistics.median(theirs) / statistics.median(ours)},
        "forward_backward_ms": {"cnngrad": median_ms(fb_ours), "torch": median_ms(fb_theirs),
                                "ratio_cnngrad_over_torch": statistics.median(fb_ours) / statistics.median(fb_theirs)},
        "cli_wall_ms": median_ms(cli),
        "peak_memory_mb": peak_memory_mb(config),
        "max_rss_mb": max_rss_mb(ref),
        "directional_ms": {"cnngrad_directions_1": median_ms(dir_ours),
                           "torch_gradcheck_fast_mode": median_ms(dir_theirs),
                           "ratio": statistics.median(dir_theirs) / statistics.median(dir_ours)},
    }

    fc, fb = results["full_check_ms"], results["forward_backward_ms"]
    print(f"{config.name}: {n_entries:,} entries (parameters + input), median of {args.runs} / {args.fb_runs} runs")
    print(f"{'what':<34}{'cnngrad':>12}{'torch':>14}{'ratio':>10}")
    print(f"{'full check (all entries)':<34}{fc['cnngrad']:>10.1f}ms{fc['torch_gradcheck']:>12.1f}ms"
          f"{fc['ratio']:>9.1f}x  (torch/cnngrad)")
    dm = results["directional_ms"]
    print(f"{'directional (1 direction/tensor)':<34}{dm['cnngrad_directions_1']:>10.1f}ms"
          f"{dm['torch_gradcheck_fast_mode']:>12.1f}ms{dm['ratio']:>9.1f}x  (torch fast_mode/cnngrad)")
    print(f"{'analytic forward+backward':<34}{fb['cnngrad']:>10.3f}ms{fb['torch']:>12.3f}ms"
          f"{fb['ratio_cnngrad_over_torch']:>9.2f}x  (cnngrad/torch)")
    print(f"{'`cnngrad check` command, wall':<34}{results['cli_wall_ms']:>10.0f}ms")
    print(f"{'peak memory of a full check':<34}{results['peak_memory_mb']:>10.1f}MB  (numpy allocations, "
          f"1 process; max RSS of the command {results['max_rss_mb']:.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
