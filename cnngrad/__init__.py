"""cnngrad: prove a CNN's backpropagation right or wrong against finite differences."""
from __future__ import annotations

__version__ = "0.1.0"

from . import _malloc  # noqa: E402

_malloc.tune()  # numpy's per-pass allocations: reuse pages instead of faulting them in again

from .checker import Report, check  # noqa: E402
from .config import ConfigError, load  # noqa: E402

__all__ = ["__version__", "check", "load", "Report", "ConfigError"]
