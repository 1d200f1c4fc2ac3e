"""What property tests of your own need beside ``cnngrad.strategies.configs``.

``settings``: hypothesis settings for tests that run ``cnngrad.check`` on drawn configs —
no deadline (a check's time grows with the drawn sizes: a deadline turns a large example
into a spurious ``DeadlineExceeded``, and a flaky one), and ``too_slow`` / ``data_too_large``
not treated as errors.  Use it as a decorator, or load the profile it is registered as::

    from cnngrad.property import settings           # @settings above @given(...)
    @hypothesis.settings(settings, max_examples=50)  # the same, with more of your own
    hypothesis.settings.load_profile("cnngrad")     # or for a whole suite (conftest.py)

(hypothesis' defaults otherwise: 100 examples, its example database.)

Reproducers from a property test: ``Report.write_reproducer(dir)`` called while hypothesis
runs a test keeps, per test and folder, only the file written last — which, after
shrinking, is the shrunk failure (hypothesis runs it once more at the end) — instead of one
file per failing example tried (``forget_earlier``).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck
from hypothesis import settings as _settings

settings = _settings(_settings.get_profile("default"), deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_settings.register_profile("cnngrad", settings)

# (test, folder) -> what this process wrote there for the test's examples, to remove
_WRITTEN: dict[tuple[int, str], list[Path]] = {}


def _current_test() -> Any:
    """The hypothesis test running now (its wrapped function), or None outside one."""
    if "hypothesis" not in sys.modules:
        return None
    from hypothesis.control import current_build_context, currently_in_test_context

    if not currently_in_test_context():
        return None
    return getattr(current_build_context(), "wrapped_test", None) or current_build_context()


def forget_earlier(folder: Path, written: Path) -> None:
    """Inside a hypothesis test: remove what earlier examples of the same test wrote into
    ``folder`` (``written``: a file or a folder this call wrote, kept).  Outside: nothing."""
    test = _current_test()
    if test is None:
        return
    key = (id(test), str(folder.resolve()))
    keep = written.resolve()
    for old in _WRITTEN.pop(key, []):
        if old == keep:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    _WRITTEN[key] = [keep]
