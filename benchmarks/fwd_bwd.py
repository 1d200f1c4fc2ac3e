"""Analytic forward + backward, cnngrad against torch on the same net, weights and batch.

    PYTHONPATH=. python benchmarks/fwd_bwd.py                       # ladder VGG + the issue-size VGG
    PYTHONPATH=. python benchmarks/fwd_bwd.py configs/lenet.yaml --runs 15
    PYTHONPATH=. python benchmarks/fwd_bwd.py --coretype Haswell    # also a run with OPENBLAS_CORETYPE set

cnngrad's pass is ``net.gradients(x, y)`` (one forward and one backward, every parameter's
∂C and ∂C/∂x); torch's is ``benchmarks/torch_peer.py``'s ``forward_backward`` on the same
arrays (float64 autograd, ∂C for x and every parameter).  Before timing, the script checks
that the two agree — every gradient to 1e-10 relative to its largest entry — so the speed is
not bought with a wrong answer (it exits 1 if not).

Timing: for each thread setting (1 thread, then every core this process may use) both BLAS
libraries are set alike — numpy's OpenBLAS through ``threadpoolctl``, torch through
``torch.set_num_threads`` — and the two frameworks alternate: ``--runs`` rounds, each a few
warm-up calls then ``--block`` timed calls of one, then the same of the other.  Medians of the
per-call times; the ratio is cnngrad's median over torch's (≤ 1 means cnngrad is faster).
The machine is shared: ``uptime``'s load is printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
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

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from torch_peer import TorchPeer  # noqa: E402

from cnngrad import _malloc  # noqa: E402
from cnngrad.config import load  # noqa: E402
from cnngrad.network import Problem, build  # noqa: E402

DEFAULT = [HERE / "ladder-vgg.yaml", HERE / "vgg-issue14.yaml"]
TOLERANCE = 1e-10


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def ours(problem: Problem) -> tuple[float, list[np.ndarray]]:
    """C and [∂C/∂x, ∂C/∂θ for every parameter in layer order], from cnngrad."""
    loss, dx, grads = problem.net.gradients(problem.x, problem.y)
    return loss, [dx] + [g[name] for layer, g in zip(problem.net.layers, grads) for name in layer.params]


def agree(problem: Problem, peer: TorchPeer) -> float:
    """The largest relative difference between cnngrad's and torch's gradients; raises
    SystemExit(1) past TOLERANCE."""
    loss, mine = ours(problem)
    leaves = peer.leaves()
    c = peer.forward_backward(leaves)
    theirs = [t.grad.numpy() for t in leaves]
    worst = abs(loss - float(c.detach())) / max(1.0, abs(loss))
    names = ["x"] + [f"layers[{i}].{n}" for i, n in peer.keys]
    for name, a, b in zip(names, mine, theirs):
        scale = max(np.max(np.abs(b)), np.finfo(np.float64).tiny)
        err = float(np.max(np.abs(a - b)) / scale)
        if not err <= TOLERANCE:
            sys.exit(f"fwd_bwd: {name}: cnngrad and torch differ by {err:.3g} (relative), over {TOLERANCE}")
        worst = max(worst, err)
    return worst


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def race(problem: Problem, peer: TorchPeer, threads: int, runs: int, block: int) -> dict[str, float]:
    """Medians (seconds) of cnngrad's and torch's forward + backward, alternating, with
    ``threads`` BLAS threads for both."""
    net, x, y = problem.net, problem.x, problem.y
    leaves = peer.leaves()
    mine, theirs = [], []
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        for _ in range(runs):
            for _ in range(3):
                net.gradients(x, y)
            mine += [timed(lambda: net.gradients(x, y)) for _ in range(block)]
            for _ in range(3):
                peer.forward_backward(leaves)
            theirs += [timed(lambda: peer.forward_backward(leaves)) for _ in range(block)]
    a, b = statistics.median(mine), statistics.median(theirs)
    return {"cnngrad": a, "torch": b, "ratio": a / b}


def entries(problem: Problem) -> int:
    return int(problem.x.size + sum(p.size for layer in problem.net.layers for p in layer.params.values()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=9, help="alternating rounds (default 9)")
    ap.add_argument("--block", type=int, default=5, help="timed calls a round (default 5)")
    ap.add_argument("--threads", default="1,all", help="BLAS thread counts to time, 'all' = every core "
                                                        "(default 1,all)")
    ap.add_argument("--malloc", choices=["default", "tuned", "both"], default="both",
                    help="glibc malloc as a library user has it (default), as the cnngrad command sets it "
                         "(tuned: cnngrad._malloc.tune(), for torch too: same process), or each in its own "
                         "process (both, the default)")
    ap.add_argument("--coretype", help="afterwards, the same run again in a process with OPENBLAS_CORETYPE "
                                       "set to this (or unset, if it is set here and this is 'none')")
    args = ap.parse_args(argv)
    again = [*map(str, args.configs), "--runs", str(args.runs), "--block", str(args.block), "--threads", args.threads]
    counts = sorted({cores() if t.strip() == "all" else int(t) for t in args.threads.split(",")})
    if args.malloc == "both":
        codes = [_child([*again, "--malloc", mode], dict(os.environ)) for mode in ("default", "tuned")]
        if args.coretype:
            env = dict(os.environ)
            if args.coretype.lower() == "none":
                env.pop("OPENBLAS_CORETYPE", None)
            else:
                env["OPENBLAS_CORETYPE"] = args.coretype
            codes += [_child([*again, "--malloc", mode], env) for mode in ("default", "tuned")]
        return max(codes)
    if args.malloc == "tuned" and not _malloc.tune():
        sys.exit("fwd_bwd: could not tune malloc here (not glibc?)")

    load_avg = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\n=== malloc {args.malloc}: cores {cores()}, load average {load_avg}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"numpy {np.__version__}, torch {torch.__version__}")
    for path in args.configs:
        problem = build(load(str(path)))
        peer = TorchPeer(problem)
        err = agree(problem, peer)
        print(f"\n{path.name}: {entries(problem):,} entries, batch {problem.x.shape[0]}; "
              f"gradients agree with torch to {err:.1e} (relative, ≤ {TOLERANCE:g})")
        for threads in counts:
            r = race(problem, peer, threads, args.runs, args.block)
            print(f"  {threads} thread{'s' if threads > 1 else ' '}: cnngrad {r['cnngrad'] * 1e3:8.3f} ms   "
                  f"torch {r['torch'] * 1e3:8.3f} ms   cnngrad/torch {r['ratio']:.3g}x")
    return 0


def _child(args: list[str], env: dict[str, str]) -> int:
    sys.stdout.flush()
    return subprocess.run([sys.executable, __file__, *args], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
