"""One BLAS thread for a check: the context every part of cnngrad computes in.

A check's matmuls are small, and BLAS threads that wait for each other on a busy machine made a
LeNet-sized forward pass 20x slower; with one thread the numbers are also the same bit for bit
whatever the machine's load, core count or worker count.  ``threadpoolctl.threadpool_limits``
looks up the loaded BLAS libraries on every call (~0.4 ms, a third of a small
``--directions 1`` check's time when called per tensor); here the controller is kept and looked
up again only when modules were imported since (a plugin or torch may load another BLAS), and a
nested call inside one that already holds the limit costs nothing.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

_state = threading.local()
_cached: tuple[int, ThreadpoolController] | None = None


def _controller() -> ThreadpoolController:
    global _cached
    if _cached is None or _cached[0] != len(sys.modules):
        _cached = (len(sys.modules), ThreadpoolController())
    return _cached[1]


@contextmanager
def one_thread() -> Iterator[None]:
    """Limit BLAS to one thread inside the block (re-entrant; restored on leaving the outermost)."""
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    with _controller().limit(limits=1, user_api="blas"):
        _state.depth = 1
        try:
            yield
        finally:
            _state.depth = 0
