"""Running the chunks of a check: here, or on forked worker processes for a large one.

Every chunk is computed the same way wherever it runs, with one BLAS thread (the caller
limits it), so the numbers are the same bit for bit whatever the number of workers.
The processes are ``cnngrad.pool``'s: a dead worker raises ``pool.WorkerDied`` (never a
hang), Ctrl-C kills the workers at once.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from .. import _malloc, pool

Array = np.ndarray
Job = tuple[int, int, int]  # (target, first entry, end): a chunk of one target's indices
# Bytes of perturbed activations above which a check is shared among worker processes
# (below it, forking costs more than it saves); ``resources.PARALLEL_WORK`` is the same.
PARALLEL_WORK = 256 << 20


def default_workers() -> int:
    """Every core this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where
    the system has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_jobs(jobs: list[Job], fns: list[Callable[[Array], tuple[Array, Array]]], indices: list[Array],
             work: int, workers: int) -> Iterator[tuple[Job, tuple[Array, Array]]]:
    """Yield ``(job, fns[t](indices[t][lo:hi]))`` for every job ``(t, lo, hi)``: here, or —
    for a large check (``work`` bytes) — on up to ``workers`` forked processes that inherit
    the whole problem (``pool.run_jobs``)."""
    def one(job: Job) -> tuple[Array, Array]:
        ti, lo, hi = job
        return fns[ti](indices[ti][lo:hi])

    n = workers if work > PARALLEL_WORK else 1
    if n > 1:
        _malloc.trim()  # fewer pages to map into each worker
    yield from pool.run_jobs(one, jobs, n)
