"""Keep freed memory in the process instead of returning it to the OS at once.

numpy allocates im2col copies, perturbed batches and caches afresh on every pass; with
glibc's default (arrays over ~128 KiB are mmap'd and unmapped on free) every pass pays
page faults on memory it just gave back — about half the time of a LeNet
forward + backward.  Raising the mmap and trim thresholds keeps those pages for reuse.
glibc only; set CNNGRAD_NO_MALLOC_TUNING=1 to leave malloc alone.  Only the command line
calls tune(): importing cnngrad (a library) changes nothing process-wide.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def _libc() -> ctypes.CDLL:
    """The C library this process runs on (ctypes.util.find_library would spawn ldconfig)."""
    return ctypes.CDLL("libc.so.6")


def trim() -> None:
    """Give freed heap memory back to the OS (before forking workers: a smaller process
    forks faster).  glibc only; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tune(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Set glibc's mmap/trim thresholds once per process; True where it took effect."""
    global _done
    if _done or os.environ.get("CNNGRAD_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = _libc()
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    _done = bool(ok)
    return _done
