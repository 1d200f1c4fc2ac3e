"""Ctrl-C and SIGTERM stop a run the same way: the finished part reported, exit 130 / 143."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stop:
    """Which signal stopped a run (0: none yet); see :func:`interruptible`."""

    def __init__(self) -> None:
        self.signum = 0

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def interruptible() -> Iterator[Stop]:
    """SIGINT and SIGTERM both raise KeyboardInterrupt in the main thread, so a run stops the
    same way whichever came (workers killed, the finished part reported); ``Stop.signum``
    says which.  Outside the main thread, nothing changes."""
    stop = Stop()

    def on_signal(signum: int, frame: Any) -> None:
        stop.signum = stop.signum or signum
        raise KeyboardInterrupt

    try:
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        old = {}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
