"""cnngrad: prove a CNN's backpropagation right or wrong against finite differences."""
from __future__ import annotations

__version__ = "0.1.0"

# No process-wide side effects on import: malloc tuning (cnngrad._malloc.tune) is the
# command line's to do, not a library's.
from .checker import Report, check  # noqa: E402
from .config import ConfigError, load  # noqa: E402

__all__ = ["__version__", "check", "check_layer", "load", "Report", "ConfigError"]


from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:  # the real signature for type checkers; at run time, __getattr__ below
    from .torch_adapter import check_layer  # noqa: F401


def __getattr__(name: str) -> Any:
    """``cnngrad.check_layer`` (torch layers) is imported on first use: never torch at import."""
    if name == "check_layer":
        from .torch_adapter import check_layer

        return check_layer
    raise AttributeError(f"module 'cnngrad' has no attribute {name!r}")
