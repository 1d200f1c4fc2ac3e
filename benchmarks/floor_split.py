"""Where a rung's network-scope time goes, tensor by tensor, against its floor (issue 14).

    PYTHONPATH=. python benchmarks/floor_split.py               # the deep rung
    PYTHONPATH=. python benchmarks/floor_split.py --rung vgg

One worker, one BLAS thread, the same unperturbed pass for every tensor: each tensor's
entries differenced on their own (``FiniteDifferences.numeric``), its seconds, the FLOPs its
entries must spend (``ladder.network_floors``: two evaluations of every layer an entry
changes), that floor in seconds at the matmul rate measured in this run (``ladder.matmul_rate``)
and the ratio.  The ladder's ``vs floor`` is the whole check's seconds over the sum of these
floors on its workers; this says which tensors hold the rest — where the network scope has
room, and where it has none.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import ladder  # noqa: E402

from cnngrad import _malloc  # noqa: E402
from cnngrad.blas import one_thread  # noqa: E402
from cnngrad.config import load  # noqa: E402
from cnngrad.finite_diff import FiniteDifferences  # noqa: E402
from cnngrad.network import build  # noqa: E402
from cnngrad.refs import TensorRef  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rung", default="deep", choices=sorted(ladder.RUNGS))
    args = ap.parse_args(argv)
    _malloc.tune()  # as ``cnngrad check`` does
    problem = build(load(str(ladder.RUNGS[args.rung])))
    net = problem.net
    floors = ladder.network_floors(problem)
    rate = ladder.matmul_rate()
    fd = FiniteDifferences(net, problem.x, problem.y, float(problem.config.check.get("eps", 1e-6)), workers=1)
    refs = [("x", TensorRef.delta(0), problem.x.size)] + [
        (f"layers[{i}].{name}", TensorRef.param(i, name), P.size)
        for i, layer in enumerate(net.layers) for name, P in layer.params.items()]
    print(f"{args.rung}: one worker, matmul rate {rate / 1e9:.1f} GFLOP/s (float64, 384x384, one core)")
    print(f"{'tensor':<16} {'entries':>8} {'seconds':>8} {'floor s':>8} {'vs floor':>8}")
    total = total_floor = 0.0
    with one_thread():
        for label, ref, size in refs:
            t0 = time.perf_counter()
            fd.numeric([(ref, np.arange(size))])
            seconds = time.perf_counter() - t0
            floor = floors[label] / rate
            total, total_floor = total + seconds, total_floor + floor
            print(f"{label:<16} {size:>8,} {seconds:>8.2f} {floor:>8.2f} {seconds / floor:>7.1f}x")
    print(f"{'all':<16} {sum(s for *_, s in refs):>8,} {total:>8.2f} {total_floor:>8.2f} {total / total_floor:>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
