"""Running the chunks of a check: here, or on forked worker processes for a large one.

Every chunk is computed the same way wherever it runs, with one BLAS thread (the caller
limits it), so the numbers are the same bit for bit whatever the number of workers.
The processes are ``cnngrad.pool``'s: a dead worker raises ``pool.WorkerDied`` (never a
hang), Ctrl-C kills the workers at once.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from .. import _malloc, pool

Array = np.ndarray
Job = tuple[int, int, int]  # (target, first entry, end): a chunk of one target's indices
# Bytes of perturbed activations above which a check is shared among worker processes
# (below it, forking costs more than it saves); ``resources.PARALLEL_WORK`` is the same.
PARALLEL_WORK = 256 << 20
# Seconds a check eligible for workers runs here first: forking them and sending the results
# back costs ~50 ms, more than a check that ends within this time would save.  The rest is
# shared only if it is estimated (from the time per chunk so far) to take FORK_WORTH seconds
# more.  ``PARALLEL_WORK = 0`` forks at once (tests that share even a tiny check).
INLINE_FIRST = 0.1
FORK_WORTH = 0.15


def default_workers() -> int:
    """Every core this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where
    the system has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_jobs(jobs: list[Job], fns: list[Callable[[Array], tuple[Array, ...]]], indices: list[Array],
             work: int, workers: int, weights: list[int] | None = None
             ) -> Iterator[tuple[Job, tuple[Array, ...]]]:
    """Yield ``(job, fns[t](indices[t][lo:hi]))`` for every job ``(t, lo, hi)``: here, or —
    for a large check (``work`` bytes) that is still far from done after ``INLINE_FIRST``
    seconds here — the rest on up to ``workers`` forked processes that inherit the whole
    problem (``pool.run_jobs``), a few consecutive chunks of a target a trip (``trips``;
    ``weights[t]``: the work of one entry of target t).  Each chunk is computed the same way
    wherever it runs."""
    def one(job: Job) -> tuple[Array, ...]:
        ti, lo, hi = job
        return fns[ti](indices[ti][lo:hi])

    n = workers if work > PARALLEL_WORK else 1
    done, t0 = 0, time.perf_counter()
    if n > 1 and PARALLEL_WORK > 0:
        while done < len(jobs) and time.perf_counter() - t0 < INLINE_FIRST:
            yield jobs[done], one(jobs[done])
            done += 1
        left = (time.perf_counter() - t0) / max(done, 1) * (len(jobs) - done)
        n = n if left > FORK_WORTH else 1
    if n <= 1:
        yield from pool.run_jobs(one, jobs[done:], 1)
        return
    _malloc.trim()  # fewer pages to map into each worker

    def many(trip: list[Job]) -> list[tuple[Array, ...]]:
        return [one(job) for job in trip]

    for trip, results in pool.run_jobs(many, trips(jobs[done:], weights or [1] * len(fns), n), n):
        yield from zip(trip, results)


def trips(jobs: list[Job], weights: list[int], workers: int) -> list[list[Job]]:
    """The jobs in order, consecutive jobs of one target grouped into trips to a worker:
    each trip about 1/(TRIPS·workers) of the work still to come after it starts (guided
    self-scheduling) — large trips first, small ones at the end to even the workers out, and
    far fewer round trips through the pipes than chunks.  Each chunk is still computed on
    its own, so the numbers do not depend on the grouping."""
    sizes = [(hi - lo) * weights[ti] for ti, lo, hi in jobs]
    left = float(sum(sizes))
    out: list[list[Job]] = []
    share = 0.0
    for job, size in zip(jobs, sizes):
        if not out or out[-1][-1][0] != job[0] or share >= left / (TRIPS * workers):
            out.append([])
            share, left = 0.0, left - share
        out[-1].append(job)
        share += size
    return out


TRIPS = 4  # a trip takes 1/(TRIPS·workers) of the work left
