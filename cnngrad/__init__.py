"""cnngrad: prove a CNN's backpropagation right or wrong against finite differences."""
from __future__ import annotations

__version__ = "0.1.0"

# No process-wide side effects on import: malloc tuning (cnngrad._malloc.tune) is the
# command line's to do, not a library's.
from .checker import Report, check  # noqa: E402
from .config import ConfigError, load  # noqa: E402

__all__ = ["__version__", "check", "load", "Report", "ConfigError"]
