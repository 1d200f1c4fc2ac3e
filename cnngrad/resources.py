"""What a check will take, estimated from the config alone before any maths, and the limits.

The model follows what the engine does (``finite_diff``), in bytes of float64 (float32
configs are differenced in float64 too; the complex step doubles every perturbed byte):

* **arrays** kept for the whole run: parameters, the input and their gradients four times
  over (network, analytic, numeric, report), every activation four times (the forward
  outputs, δ, and the engine's unperturbed inputs and caches) and every im2col copy twice;
  ``--convergence`` differences again at h/2 with a second engine (its own forward pass);
* **a chunk**: perturbed rows are run in chunks of at most ``budget`` bytes (16 MB), but never
  less than one entry's rows (a parameter of layer l: every sample, every step of the
  method, through layers l+1…) — that minimum can exceed the budget on a large network;
* ``--directions K``: K random unit directions per tensor, a (K, size) matrix and its
  normalisation copy for the largest tensor, the directions' rows chunked like entries;
* **worker processes**: a check with more than ``PARALLEL_WORK`` bytes of perturbed rows is
  shared among ``workers`` forked processes, each with a chunk of its own and the pages of
  the problem it touches; ``--jobs J`` runs J configs at once, so each gets 1/J of the limit;
* the interpreter with numpy, rich and click: about 45 MB.

Inside a block every inner layer counts: its parameters are tensors of their own (their
rows run from the block on), and a row through the block carries every inner layer's
activations and im2col copy (``row_elements``).

Depth is bounded the same way (``--max-layers``): planning and every perturbed pass are
linear in depth, but a very deep config is refused before it is even built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import config as cfg
from . import pool
from .finite_diff.workers import PARALLEL_WORK  # bytes of perturbed rows above which a check forks workers

DEFAULT_MAX_PARAMS = 10_000_000  # entries a full, entry-by-entry check may difference
DEFAULT_MAX_LAYERS = 1000  # layers a config may have before --max-layers is needed
BUDGET = 16 << 20  # bytes of perturbed rows per chunk (FiniteDifferences' memory_budget)
INTERPRETER_MB = 45.0  # RSS of `python -c "import cnngrad.cli"` is 40 MB
WORKER_MB = 30.0  # of it, what a forked worker touches again (counted in its RSS too)
ITEM = 8  # the numeric side runs in float64
OFFSETS = {"central": 2, "forward": 1, "richardson": 4, "complex": 1}  # = len(finite_diff.METHODS[m].offsets)


def available_memory_mb() -> float:
    """This machine's available memory (MemAvailable), in MB."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return 4096.0


def default_max_memory_mb() -> float:
    return available_memory_mb() / 4


def _mb(mb: float) -> str:
    """Megabytes as said back: whole ones with separators, below 10 to 2 significant digits
    (``--max-memory 0.001`` is 0.001 MB, not "0 MB")."""
    return f"{mb:,.0f}" if mb >= 10 else f"{mb:.2g}"


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def row_elements(spec: cfg.LayerSpec) -> int:
    """Entries one sample's row takes through one layer: its output three times and the
    im2col copy of a conv or pooling layer; a block, every inner layer's (nested blocks
    too) and its merged output."""
    out = _prod(spec.out_shape)
    if spec.kind == "block":
        return 3 * out + sum(row_elements(inner) for path in spec.paths for inner in path)
    cols = 0
    if spec.kind in ("conv", "pool"):
        taps = _prod(spec.options.get("kernel", spec.options.get("size", (1, 1))))
        cols = int(spec.in_shape[0]) * taps * _prod(spec.out_shape[1:])
    return 3 * out + cols


def inner_specs(spec: cfg.LayerSpec) -> list[cfg.LayerSpec]:
    """Every layer inside a block, depth-first (a nested block before its own)."""
    out = []
    for path in spec.paths:
        for inner in path:
            out += [inner] + inner_specs(inner)
    return out


def param_count(spec: cfg.LayerSpec) -> int:
    """Parameters of one built-in layer (a block's are its inner layers', counted apart; a plugin's: 0)."""
    if spec.kind in ("custom", "block"):
        return 0
    return cfg._param_count(spec.kind, spec.options, spec.in_shape, spec.out_shape)


def suffix_row_bytes(config: cfg.Config) -> list[int]:
    """``rows[l]``: bytes one sample's row takes through ``layers[l:]`` (``row_elements``
    each), for every l at once: one pass from the last layer back, linear in depth
    (``finite_diff.planning.suffix_row_bytes`` from the built network)."""
    rows = [0] * (len(config.layers) + 1)
    for l in range(len(config.layers) - 1, -1, -1):
        rows[l] = rows[l + 1] + row_elements(config.layers[l])
    return [max(r, 1) * ITEM for r in rows]


@dataclass
class Estimate:
    """What a check will take: entries and partial forward passes to difference, bytes of
    perturbed rows (``work``), processes and memory (MB, all of them together), depth."""

    params: int
    entries: int
    passes: int
    work: int
    processes: int
    memory_mb: float
    layers: int
    layer_calls: int  # forward calls of one layer on a chunk: what a deep network's time follows


def _chunks(entries: int, rows_per_entry: int, start: int, rows: list[int], in_bytes: int,
            budget: int) -> tuple[int, int]:
    """How many chunks the engine cuts a tensor into, and the bytes of the largest: as many
    entries a chunk as fit ``budget`` (at least one), a row taking ``rows[start]`` and the
    perturbed layer's output (``in_bytes``: the input of layer ``start``) a few times over
    (``finite_diff.planning.entry_bytes``)."""
    row = rows_per_entry * (rows[start] + 3 * in_bytes + 64)
    per_chunk = min(entries, max(1, budget // row))
    return -(-entries // max(per_chunk, 1)), per_chunk * row


def estimate(config: cfg.Config, samples: int | None = None, directions: int | None = None,
             method: str = "central", convergence: bool = False, workers: int | None = None,
             budget: int = BUDGET) -> Estimate:
    """What checking ``config`` will take, from its shapes alone (see the module docstring)."""
    size, n = config.size, config.batch
    m = OFFSETS.get(method, 4)
    widen = 2 if method == "complex" else 1
    rows = suffix_row_bytes(config)
    ins = [ITEM * _prod(spec.in_shape) for spec in config.layers] + [ITEM * _prod(config.layers[-1].out_shape)]
    # per tensor: entries, perturbed rows per entry and the layer they start at — an input
    # entry moves one sample (m rows), a parameter every sample (m·N rows, from layer l+1;
    # inside block l, from the block itself: the rest of its path, then layers l+1…)
    tensors = [(size["input"], m, 0)]
    for l, spec in enumerate(config.layers):
        count = param_count(spec)
        tensors += [(k, m * n, l) for k in map(param_count, inner_specs(spec)) if k]
        if count:
            tensors.append((count, m * n, l + 1))
        elif spec.kind == "custom" and l > 0:  # its δ is checked: rows from the plugin on
            tensors.append((n * _prod(spec.in_shape), m, l))
    entries = sum(k for k, _, _ in tensors)
    if directions:  # a direction moves every entry of the tensor at once: every sample
        checked = [(min(k, directions), m * n, s) for k, _, s in tensors]
    else:
        checked = [(min(k, samples) if samples else k, r, s) for k, r, s in tensors]
    work = sum(k * r * rows[s] for k, r, s in checked) * widen
    cuts = [_chunks(k, r, s, rows, ins[s], budget) for k, r, s in checked]
    chunk = max(b for _, b in cuts) * widen
    # every chunk runs the layers after its tensor's: quadratic in depth, and no way around it
    layer_calls = sum(c * (len(config.layers) - s) for (c, _), (_, _, s) in zip(cuts, checked))
    arrays = ITEM * (4 * (size["params"] + size["input"]) + 4 * size["activations"] + 2 * size["cols"])
    if convergence:
        arrays += ITEM * (size["activations"] + size["cols"])
    if directions:
        arrays += 2 * ITEM * directions * max(k for k, _, _ in tensors)
    # directions run in this process (only a failing tensor is then differenced entry by entry)
    procs = pool.cap(2 if workers is None else workers, 2**31) if work > PARALLEL_WORK and not directions else 1
    mb = 2**20
    if procs == 1:
        total = INTERPRETER_MB * mb + arrays + chunk
    else:  # the parent waits; each worker: the pages it touches (interpreter, problem) and its chunks
        shared = ITEM * (2 * size["activations"] + size["cols"])
        total = INTERPRETER_MB * mb + arrays + procs * (WORKER_MB * mb + shared + chunk)
    checked_entries = sum(k for k, _, _ in checked)
    return Estimate(size["params"], entries if not (samples or directions) else checked_entries,
                    checked_entries * m, work, procs, total / mb, len(config.layers), layer_calls)


def guard(config: cfg.Config, samples: int | None, directions: int | None, max_params: float | None,
          max_memory_mb: float | None, method: str = "central", convergence: bool = False,
          workers: int | None = None, jobs: int = 1, max_layers: int | None = None) -> Estimate:
    """Refuse, before any maths, a run over the limits: a ConfigError with the estimate and
    the flag that lifts the limit.  ``jobs`` configs run at once share the memory limit."""
    est = estimate(config, samples, directions, method, convergence, workers)
    depth_guard(config, max_layers, est)
    limit_mb = default_max_memory_mb() if max_memory_mb is None else max_memory_mb
    share = limit_mb / max(1, jobs)
    if est.memory_mb > share:
        how = []
        if directions:
            how.append(f"{directions} directions")
        if method != "central":
            how.append(f"--method {method}")
        if convergence:
            how.append("--convergence")
        if est.processes > 1:
            how.append(f"{est.processes} worker processes")
        within = (f"its share of --max-memory {_mb(limit_mb)} MB with --jobs {jobs} ({_mb(share)} MB)" if jobs > 1
                  else f"--max-memory {_mb(limit_mb)} MB")
        raise cfg.ConfigError("config", f"{config.name} needs about {est.memory_mb:,.0f} MB ({est.params:,} "
                                        f"parameters, {config.size['activations']:,} activations"
                                        + "".join(f", {h}" for h in how) + f"), more than {within}"
                                        + (" (a quarter of the available memory)" if max_memory_mb is None else "")
                                        + "; raise --max-memory to run it anyway"
                                        + (" or lower --jobs" if jobs > 1 else ""))
    cap = DEFAULT_MAX_PARAMS if max_params is None else max_params
    if est.entries > cap:
        raise cfg.ConfigError("config", f"{config.name} has {est.entries:,} entries to difference "
                                        f"({est.passes:,} partial forward passes), "
                                        f"more than --max-params {cap:,.0f}; "
                                        "check a sample (--samples N), random directions (--directions K), "
                                        "or raise --max-params")
    return est


def depth_guard(config: cfg.Config, max_layers: int | None, est: Estimate | None = None) -> None:
    """Refuse a config of more than ``max_layers`` (default DEFAULT_MAX_LAYERS) layers, with
    the estimate of what checking it would run."""
    cap = DEFAULT_MAX_LAYERS if max_layers is None else max_layers
    if len(config.layers) > cap:
        est = est or estimate(config)
        raise cfg.ConfigError("layers", f"{config.name} has {len(config.layers):,} layers, more than --max-layers "
                                        f"{cap:,} (checking it runs about {est.layer_calls:,} layer forward calls: "
                                        "every tensor's perturbed copies go through every layer after it); "
                                        "raise --max-layers to check it anyway")
