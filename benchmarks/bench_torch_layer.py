"""``cnngrad.check_layer`` against ``torch.autograd.gradcheck`` on the same torch layer.

    python benchmarks/bench_torch_layer.py                   # LeNet's first conv, 3 runs
    python benchmarks/bench_torch_layer.py --preset small --runs 1 --json out.json

The layer is examples/torch_conv.py's ``Conv2d``: an ``autograd.Function`` with a hand-written
backward.  Both tools check every entry of the input and of both parameters, in float64:

* cnngrad: ``check_layer(module, input_shape, batch=N)`` — the layer alone under a mean
  squared error, central differences of the scalar loss (one forward per perturbation),
  one backward; the whole report (structural checks, kinks, resolution) included;
* gradcheck (``fast_mode=False``): the full Jacobian — a forward per perturbation and a
  backward per output entry;
* and the cheap modes: ``check_layer(directions=4)`` against ``gradcheck(fast_mode=True)``.

Runs alternate the tools; medians and the ratio gradcheck / cnngrad are printed.  cnngrad
runs torch with one intra-op thread (same numbers on any worker); gradcheck too by default
(``--threads N`` to change it), so that the ratio compares the methods, not the threads.
Needs torch (``pip install 'cnngrad[torch]'``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import cnngrad

ROOT = Path(__file__).resolve().parent.parent
PRESETS = {  # input (c, h, w), filters, kernel, padding, batch
    "lenet": ((1, 28, 28), 6, 5, 0, 2),  # LeNet's first layer
    "small": ((3, 8, 8), 4, 3, 1, 2),
    "tiny": ((1, 4, 4), 2, 3, 1, 2),  # for the test that runs this script
}


def example() -> Any:
    spec = importlib.util.spec_from_file_location("torch_conv_example", ROOT / "examples" / "torch_conv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def timed(fn: Any) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process (steadier on a busy machine), result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="lenet")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for gradcheck (cnngrad's torch calls use 1); default 1")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape, filters, kernel, padding, batch = PRESETS[args.preset]
    ex = example()
    torch.manual_seed(0)
    layer = ex.Conv2d(shape[0], filters, kernel, padding)
    x = torch.randn((batch,) + shape, dtype=torch.float64, requires_grad=True)
    W = layer.weight.detach().double().requires_grad_(True)
    b = layer.bias.detach().double().requires_grad_(True)

    def fn(x_: torch.Tensor, W_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        return ex.Conv2dFunction.apply(x_, W_, b_, padding)

    tools = {
        "cnngrad full": lambda: cnngrad.check_layer(layer, shape, batch=batch).passed,
        "gradcheck full": lambda: torch.autograd.gradcheck(fn, (x, W, b), fast_mode=False),
        "cnngrad directions=4": lambda: cnngrad.check_layer(layer, shape, batch=batch, directions=4).passed,
        "gradcheck fast_mode": lambda: torch.autograd.gradcheck(fn, (x, W, b), fast_mode=True),
    }
    times: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(args.runs):
        for name, run in tools.items():
            seconds, cpu_seconds, ok = timed(run)
            if ok is not True:
                raise SystemExit(f"{name} did not pass the correct layer")
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
    med = {name: statistics.median(t) for name, t in times.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    result = {
        "preset": args.preset, "input": [batch, *shape], "filters": filters, "kernel": kernel, "padding": padding,
        "runs": args.runs, "median_seconds": med, "median_cpu_seconds": med_cpu,
        "ratio_full": med["gradcheck full"] / med["cnngrad full"],
        "ratio_fast": med["gradcheck fast_mode"] / med["cnngrad directions=4"],
        "ratio_full_cpu": med_cpu["gradcheck full"] / med_cpu["cnngrad full"],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"layer: Conv2d (autograd.Function), input {batch}x{'x'.join(map(str, shape))}, "
          f"{filters} filters {kernel}x{kernel}, padding {padding}; median of {args.runs} runs")
    for name, seconds in med.items():
        print(f"  {name:22s} {seconds:8.3f} s wall {med_cpu[name]:8.3f} s cpu")
    print(f"ratio gradcheck / cnngrad: full {result['ratio_full']:.1f}x (cpu {result['ratio_full_cpu']:.1f}x), "
          f"fast modes {result['ratio_fast']:.1f}x "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads for gradcheck)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
