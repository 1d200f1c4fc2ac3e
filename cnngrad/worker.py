"""The side of ``pool`` that runs in a forked worker: signals, stdio, the job loop, send().

A worker ignores SIGINT (a terminal's Ctrl-C reaches the whole process group; the parent
decides), takes SIGTERM's default, dies with its parent (``PR_SET_PDEATHSIG``), and never
prints a traceback: a job's exception goes back to the parent, pickled.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # multiprocessing is imported when workers are forked, not at start-up
    from multiprocessing.connection import Connection

_PR_SET_PDEATHSIG = 1
# the real os._exit, taken at import: a fork made while another thread runs plugin code has
# ``plugins.no_exit``'s stand-in (which raises) in os._exit, and a worker must leave for sure
hard_exit = os._exit
_channel: Connection | None = None  # in a worker: where send() writes
_inline: Callable[[Any], None] | None = None  # in the parent running jobs itself: on_message for the job


def send(message: Any) -> None:
    """From inside a job: hand ``message`` to the parent's ``on_message(job, message)``.
    Does nothing outside ``run_jobs``."""
    if _channel is not None:
        _channel.send(("msg", message))
    elif _inline is not None:
        _inline(message)


def become_worker(parent: int, mask: Iterable[int]) -> None:
    """Signals belong to the parent; die with it; own stdio objects (another thread of the
    parent, e.g. the progress bar's, may have held their locks at the fork)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)  # glibc (find_library would spawn ldconfig)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        hard_exit(1)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): no lock to fear
            continue
        setattr(sys, name, open(os.dup(fd), "w", encoding=getattr(stream, "encoding", None) or "utf-8",
                                errors="backslashreplace", buffering=1))


def serve(fn: Callable, tasks: Connection, results: Connection) -> int:
    """The worker's loop: a job in, its result (or its exception) out, until told to stop."""
    global _channel
    _channel = results
    while True:
        try:
            job = tasks.recv()
        except (EOFError, OSError):
            return 0
        if job is None:
            return 0
        try:
            reply: tuple = ("ok", fn(job))
        except BaseException as e:  # noqa: BLE001 — everything goes back to the parent
            reply = ("err", e, traceback.format_exc())
        try:
            results.send(reply)
        except (BrokenPipeError, EOFError, OSError):
            return 0
        except Exception as e:  # the result or the exception does not pickle
            try:
                results.send(("err", RuntimeError(f"a worker's reply could not be sent back: {e!r}"),
                              reply[2] if reply[0] == "err" else ""))
            except (BrokenPipeError, EOFError, OSError):
                return 0
        finally:
            try:
                sys.stdout.flush()  # what the job printed, not what the parent had buffered (flushed before fork)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


