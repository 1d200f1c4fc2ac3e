"""Run jobs on forked worker processes, robustly: a dead worker is an error, never a hang.

``run_jobs(fn, jobs, workers)`` yields ``(job, fn(job))`` as results arrive, in any order.
Why not ``multiprocessing.Pool`` / ``ProcessPoolExecutor``: a worker killed with SIGKILL hangs
the first forever and breaks the second with a traceback; Ctrl-C can deadlock in
``Pool.terminate`` and makes every worker print a ``KeyboardInterrupt`` traceback.  Here:

* the parent owns the signals: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole
  process group), take SIGTERM's default (die, silently), and die with the parent
  (``PR_SET_PDEATHSIG``), so nothing outlives a killed parent (``worker``);
* one pipe each way per worker; ``fn`` is not pickled (the worker inherits it by forking),
  only jobs and results travel;
* a worker's death shows as end-of-file on its result pipe (only it holds the write end):
  the parent reaps it and raises :class:`WorkerDied` naming the job it was running;
* on any exit from the generator (results all in, an exception, Ctrl-C, ``close()``) every
  worker still alive gets SIGKILL and is reaped: no queue, no thread, nothing to join;
* workers leave with ``os._exit``: no atexit handler, no second flush of the parent's buffers,
  no traceback on stderr.

A job's exception comes back pickled and is raised in the parent.  Inside ``fn``,
:func:`send` passes a message (e.g. progress) to the parent's ``on_message(job, message)``.
``CNNGRAD_WORKER_PIDS=FILE`` appends each worker's pid to FILE when it starts (for tests
that kill one).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import worker
from .interrupt import Stop, interruptible
from .worker import send

if TYPE_CHECKING:  # multiprocessing is imported when workers are forked, not at start-up
    from multiprocessing.connection import Connection

J = TypeVar("J")
R = TypeVar("R")

PIDS_ENV = "CNNGRAD_WORKER_PIDS"


class WorkerDied(RuntimeError):
    """A worker process ended without a result: killed (by a signal, the OOM killer) or exited."""

    def __init__(self, job: Any, pid: int, status: int | None) -> None:
        self.job, self.pid, self.status = job, pid, status
        super().__init__(f"worker process {pid} died ({describe(status)}) before finishing its job")


def describe(status: int | None) -> str:
    """``waitpid``'s status in words: "killed by SIGKILL", "exit code 3"."""
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}" + (", perhaps out of memory" if sig == signal.SIGKILL else "")
    return f"exit code {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else f"status {status}"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap(requested: int, jobs: int) -> int:
    """Workers worth forking: no more than jobs to share, nor than usable cores; at least 1."""
    return max(1, min(requested, jobs, usable_cores()))


def run_jobs(fn: Callable[[J], R], jobs: Iterable[J], workers: int,
             on_message: Callable[[J, Any], None] | None = None,
             dead: Callable[[J, WorkerDied], R] | None = None) -> Iterator[tuple[J, R]]:
    """``(job, fn(job))`` for every job, as each finishes, on ``cap(workers, len(jobs))``
    forked processes (in this process when that is 1).  When a worker dies: with ``dead``,
    its job's result is ``dead(job, error)`` and a fresh worker takes its place; without,
    :class:`WorkerDied` is raised.  A job's own exception is raised as it was.  However the
    generator ends (done, an exception, Ctrl-C, ``close()``), every worker still alive is
    killed and reaped first."""
    jobs = list(jobs)
    n = cap(workers, len(jobs)) if hasattr(os, "fork") else 1
    if n <= 1:
        yield from _inline_jobs(fn, jobs, on_message)
        return
    procs: list[_Worker] = []
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for _ in range(n):
            _Worker.fork(fn, procs)  # on the list before any signal can stop us
        yield from _drive(fn, procs, jobs, on_message, dead)
    finally:
        _shutdown(procs)


def _inline_jobs(fn: Callable, jobs: list, on_message: Callable | None) -> Iterator[tuple[Any, Any]]:
    for job in jobs:
        worker._inline = (lambda m, job=job: on_message(job, m)) if on_message is not None else None
        try:
            result = fn(job)
        finally:
            worker._inline = None
        yield job, result


class _Worker:
    """One forked process: its pid, the pipe its jobs go down and the one results come up."""

    def __init__(self, pid: int, tasks: Connection, results: Connection) -> None:
        self.pid, self.tasks, self.results = pid, tasks, results
        self.job: Any = None  # the job it is running, None when idle
        self.alive = True

    @classmethod
    def fork(cls, fn: Callable, siblings: list[_Worker]) -> _Worker:
        """Fork a worker running ``fn`` on the jobs it is sent; it joins ``siblings``."""
        from multiprocessing import Pipe

        task_r, task_w = Pipe(duplex=False)
        result_r, result_w = Pipe(duplex=False)
        parent = os.getpid()
        # no signal between the fork and the worker being on the list that _shutdown kills
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                code = 1
                try:
                    for other in siblings:  # only the parent may hold the others' pipes
                        other.tasks.close()
                        other.results.close()
                    task_w.close()
                    result_r.close()
                    worker.become_worker(parent, old)
                    code = worker.serve(fn, task_r, result_w)
                finally:
                    worker.hard_exit(code)
            proc = cls(pid, task_w, result_r)
            siblings.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        task_r.close()
        result_w.close()
        _announce(pid)
        return proc


def _announce(pid: int) -> None:
    path = os.environ.get(PIDS_ENV)
    if path:
        try:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{pid}\n")
        except OSError:
            pass


def _drive(fn: Callable, procs: list[_Worker], jobs: list, on_message: Callable | None,
           dead: Callable | None) -> Iterator[tuple[Any, Any]]:
    from multiprocessing.connection import wait

    pending = list(reversed(jobs))  # pop() takes them in order
    idle = list(reversed(procs))  # the first worker takes the first job
    while True:
        while idle:
            w = idle.pop()
            try:
                _give(w, pending)
            except WorkerDied as err:
                yield err.job, _bury(w, err, dead)
                if pending:
                    idle.append(_Worker.fork(fn, procs))
        busy = {w.results: w for w in procs if w.alive and w.job is not None}
        if not busy:
            return
        for ready in wait(list(busy)):
            w = busy[ready]  # type: ignore[index]  # wait() gives back the connections it was given
            try:
                reply = w.results.recv()
            except (EOFError, OSError):  # only the worker held the write end: it is gone
                yield w.job, _bury(w, WorkerDied(w.job, w.pid, _reap(w.pid)), dead)
                if pending:
                    idle.append(_Worker.fork(fn, procs))
                continue
            if reply[0] == "msg":
                if on_message is not None:
                    on_message(w.job, reply[1])
                continue
            job, w.job = w.job, None
            if reply[0] == "err":
                error: BaseException = reply[1]
                if reply[2] and hasattr(error, "add_note"):
                    error.add_note(f"in worker process {w.pid}:\n{reply[2]}")
                raise error
            idle.append(w)
            yield job, reply[1]


def _give(w: _Worker, pending: list) -> None:
    """The next job to an idle worker, or tell it to stop."""
    if pending:
        w.job = pending.pop()
        try:
            w.tasks.send(w.job)
        except OSError:  # its end of the pipe is gone: it died
            raise WorkerDied(w.job, w.pid, _reap(w.pid)) from None
    else:
        try:
            w.tasks.send(None)
        except OSError:
            pass


def _bury(w: _Worker, err: WorkerDied, dead: Callable | None) -> Any:
    """A dead worker (reaped): off the books; its job's result, or the error raised."""
    w.alive, w.job = False, None
    w.tasks.close()
    w.results.close()
    if dead is None:
        raise err
    return dead(err.job, err)


def _reap(pid: int, patience: float = 1.0) -> int | None:
    """The exit status of a worker whose pipe closed (it is exiting); SIGKILL if it lingers."""
    deadline = time.monotonic() + patience
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    try:
        os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]
    except (ProcessLookupError, ChildProcessError):
        return None


def _shutdown(procs: list[_Worker]) -> None:
    """Kill every worker still running and reap it; signals wait until this is done."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        for w in procs:
            if w.alive:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for w in procs:
            if w.alive:
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
                w.alive = False
            w.tasks.close()
            w.results.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


__all__ = ["PIDS_ENV", "Stop", "WorkerDied", "cap", "interruptible", "run_jobs", "send", "usable_cores"]
