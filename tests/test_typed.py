"""`mypy cnngrad` is clean (configured in pyproject.toml; .ci/run runs it too)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean_and_ci_runs_it() -> None:
    assert "\nmypy cnngrad\n" in (ROOT / ".ci" / "run").read_text()
    pytest.importorskip("mypy")
    if not shutil.which("mypy") and not os.environ.get("CI"):
        pytest.skip("mypy not installed")
    result = subprocess.run([sys.executable, "-m", "mypy", "cnngrad"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
