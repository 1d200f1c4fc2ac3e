"""The memory estimate (``cnngrad.resources.estimate``) against the measured peak, per mode.

    python benchmarks/memory.py                  # the table on stdout
    python benchmarks/memory.py --quick          # lenet only
    python benchmarks/memory.py --json out.json

Each mode runs ``python -m cnngrad check CONFIG ...`` in a subprocess.  The peak is the largest
sum of VmRSS over the process and its worker processes, sampled every 5 ms from /proc, and at
least the process's own peak (``wait4``'s ru_maxrss, exact, taken by a small python that
forks it).  Forked workers share the
parent's pages copy-on-write; RSS counts a shared page in every process that touched it, as
the estimate does.  Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnngrad import config as cfg  # noqa: E402
from cnngrad.resources import INTERPRETER_MB, estimate  # noqa: E402

WIDE = """name: wide
input: {batch: 4, channels: 3, height: 32, width: 32}
layers:
  - conv: {filters: 16, kernel: 5, padding: 2}
  - activation: tanh
  - pool: {kind: max, size: 2}
  - conv: {filters: 16, kernel: 3, padding: 1}
  - activation: relu
  - flatten: {}
  - dense: {units: 10}
loss: softmax_cross_entropy
"""

PAGE = os.sysconf("SC_PAGE_SIZE")
MODES: list[tuple[str, list[str], dict]] = [
    ("central", [], {}),
    ("forward", ["--method", "forward"], {"method": "forward"}),
    ("richardson", ["--method", "richardson"], {"method": "richardson"}),
    ("complex", ["--method", "complex"], {"method": "complex"}),
    ("convergence", ["--convergence"], {"convergence": True}),
    ("directions 10", ["--directions", "10"], {"directions": 10}),
    ("directions 200", ["--directions", "200"], {"directions": 200}),
    ("samples 50", ["--samples", "50"], {"samples": 50}),
]


def _tree_rss(root: int, descend: bool = True) -> int:
    """Sum of VmRSS (bytes) of ``root`` and its descendants (/proc/PID/task/*/children)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{pid}/task") if descend else ():
                with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


# A small python forks the check and reports its exact peak (wait4): a child spawned straight
# from this (large) process would start its high-water mark at this process's size.
WRAP = ("import os, sys\npid = os.fork()\nif pid == 0:\n"
        "    os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status), file=sys.stderr)\n")


def measure(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak MB of the check's process tree, the check process's own peak MB, exit code)."""
    proc = subprocess.Popen([sys.executable, "-c", WRAP, "-m", "cnngrad", "check", *args, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = [0]
    done = threading.Event()

    def sample() -> None:  # the wrapper's descendants, not the wrapper
        while not done.wait(0.005):
            peak[0] = max(peak[0], _tree_rss(proc.pid) - _tree_rss(proc.pid, descend=False))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, stderr = proc.communicate()
    done.set()
    t.join()
    own_kb, code = map(int, stderr.split()[-2:])
    own = own_kb / 1024
    return max(peak[0] / 2**20, own), own, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lenet only")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    opts = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wide = Path(tmp) / "wide.yaml"
        wide.write_text(WIDE)
        configs = ["lenet"] if opts.quick else ["lenet", str(wide)]
        runs = [(c, label, argv, kw) for c in configs for label, argv, kw in MODES]
        if not opts.quick:
            runs.append((str(wide), "--jobs 2 (2 configs)", ["--jobs", "2"], {"jobs": 2}))
        for ref, label, argv, kw in runs:
            config = cfg.load(ref)
            jobs = kw.pop("jobs", 1)
            est = estimate(config, **kw).memory_mb
            refs = [ref, "lenet"] if jobs > 1 else [ref]
            if jobs > 1:  # the parent, and each worker one config (its own chunks, no workers of its own)
                est = INTERPRETER_MB + sum(estimate(cfg.load(r), workers=1).memory_mb for r in refs)
            peak, own, code = measure([*refs, *argv, "--max-memory", "1e6"], env)
            rows.append({"config": config.name, "mode": label, "estimate_mb": round(est, 1),
                         "peak_mb": round(peak, 1), "own_peak_mb": round(own, 1), "ratio": round(est / peak, 2),
                         "exit": code})
            print(f"{config.name:<7} {label:<22} estimate {est:8.1f} MB   peak {peak:8.1f} MB "
                  f"(parent {own:7.1f})   estimate/peak {est / peak:5.2f}   exit {code}", flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2) + "\n")
    bad = [r for r in rows if not 0.5 <= r["ratio"] <= 2.0]
    if bad:
        print(f"{len(bad)} modes outside 2x: " + ", ".join(f"{r['config']} {r['mode']}" for r in bad))


if __name__ == "__main__":
    main()
