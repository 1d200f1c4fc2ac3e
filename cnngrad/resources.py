"""What a check will take, estimated before any maths, and the limits a run must keep."""
from __future__ import annotations

import os

from . import config as cfg

DEFAULT_MAX_PARAMS = 10_000_000  # entries a full, entry-by-entry check may difference


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


def estimate(config: cfg.Config, samples: int | None, directions: int | None) -> dict[str, float]:
    """What a check will take, before it runs: parameters, entries to difference, forward
    passes (each of the layers from the perturbed one on), and memory in MB."""
    size = config.size
    item = 8  # the numeric side runs in float64
    entries = size["params"] + size["input"]
    if directions:
        checked = 2 * directions * (len(config.layers) + 1)
    elif samples:
        checked = min(entries, samples * (2 * len(config.layers) + 1))
    else:
        checked = entries
    arrays = item * (3 * size["params"] + 3 * size["activations"] + 2 * size["cols"])
    mb = (arrays + (16 << 20) * 2 + (50 << 20)) / 2**20  # + two workers' chunks + the interpreter
    return {"params": size["params"], "entries": checked, "passes": 2 * checked, "memory_mb": mb}


def guard(config: cfg.Config, samples: int | None, directions: int | None, max_params: float | None,
          max_memory_mb: float | None) -> dict[str, float]:
    """Refuse, before any maths, a run over the limits: a ConfigError with the estimate and
    the flag that lifts the limit."""
    est = estimate(config, samples, directions)
    limit_mb = default_max_memory_mb() if max_memory_mb is None else max_memory_mb
    if est["memory_mb"] > limit_mb:
        raise cfg.ConfigError("config", f"{config.name} needs about {est['memory_mb']:,.0f} MB ({est['params']:,} "
                                        f"parameters, {config.size['activations']:,} activations), more than "
                                        f"--max-memory {limit_mb:,.0f} MB" + (" (a quarter of the available memory)"
                                                                            if max_memory_mb is None else "")
                                        + "; raise --max-memory to run it anyway")
    cap = DEFAULT_MAX_PARAMS if max_params is None else max_params
    if est["entries"] > cap:
        raise cfg.ConfigError("config", f"{config.name} has {est['entries']:,} entries to difference "
                                        f"({est['passes']:,} partial forward passes), "
                                        f"more than --max-params {cap:,.0f}; "
                                        "check a sample (--samples N), random directions (--directions K), "
                                        "or raise --max-params")
    return est
