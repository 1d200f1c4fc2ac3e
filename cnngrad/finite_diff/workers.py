"""Running the chunks of a check: here, or on forked worker processes for a large one.

Every chunk is computed the same way wherever it runs, with one BLAS thread (the caller
limits it), so the numbers are the same bit for bit whatever the number of workers.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import _malloc

Array = np.ndarray
Job = tuple[int, int, int]  # (target, first entry, end): a chunk of one target's indices
# Bytes of perturbed activations above which a check is shared among worker processes
# (below it, forking costs more than it saves).
PARALLEL_WORK = 256 << 20
_STATE: Any = None  # (chunk functions, index arrays), inherited by forked workers


def _work(job: Job) -> tuple[Job, tuple[Array, Array]]:
    """A worker's task: one chunk of one tensor, by the functions the parent planned."""
    fns, indices = _STATE
    ti, lo, hi = job
    return job, fns[ti](indices[ti][lo:hi])


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
    for a large check (``work`` bytes), where the system can fork — on ``workers`` forked
    processes that inherit the whole problem."""
    global _STATE
    if workers > 1 and len(jobs) > 1 and work > PARALLEL_WORK and "fork" in multiprocessing.get_all_start_methods():
        _STATE = (fns, indices)
        _malloc.trim()  # fewer pages to map into each worker
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                yield from pool.imap_unordered(_work, jobs)
        finally:
            _STATE = None
    else:
        for ti, lo, hi in jobs:
            yield (ti, lo, hi), fns[ti](indices[ti][lo:hi])
